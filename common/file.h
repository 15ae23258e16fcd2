#ifndef VERDICTD_COMMON_FILE_H_
#define VERDICTD_COMMON_FILE_H_

#include <string>

#include "absl/status/statusor.h"

namespace verdictd {

// The whole contents of the file at `path`; NOT_FOUND "cannot read PATH: <reason>" when it
// cannot be opened or read. For small files (certificates, keys, inputs a user names).
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace verdictd

#endif  // VERDICTD_COMMON_FILE_H_
