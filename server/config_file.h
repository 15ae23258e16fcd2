#ifndef VERDICTD_SERVER_CONFIG_FILE_H_
#define VERDICTD_SERVER_CONFIG_FILE_H_

// A JSON configuration file for absl flags: `{"listen": "0.0.0.0:50051", "max_age": "12h"}`.
//
// Each key names a flag, each value is what `--key=value` would say. main() applies the file
// before absl::ParseCommandLine, so flags given on the command line override the file.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace verdictd {

// Reads the JSON object in `path` and sets, for each key, the absl flag of that name. Only flags
// defined in a source file whose name ends with `owner_file_suffix` (a whole path component,
// e.g. "verdictd_main.cc") may be set, so a file cannot reach flags of libraries (gRPC, absl).
// Values: JSON strings as-is, numbers as their decimal text, booleans as true/false; arrays,
// objects and null are errors. The ClickPatrol token is never accepted ("token",
// "clickpatrol_token"), nor are the flags that control flag parsing itself ("config",
// "flagfile", "fromenv", "tryfromenv", "undefok", "help*").
//
// Every key is checked before any flag is set; a value the flag itself rejects may leave earlier
// keys applied (callers exit on error). Errors are INVALID_ARGUMENT and name the file and key.
absl::Status ApplyConfigFile(const std::string& path, absl::string_view owner_file_suffix);

// Finds `--config=FILE` or `--config FILE` (also with one dash) in argv before absl parses it.
// Returns "" when there is none, the last one when given more than once (as absl does), and
// INVALID_ARGUMENT for `--config` without a file name. Scanning stops at "--".
absl::StatusOr<std::string> FindConfigFlag(int argc, char** argv);

}  // namespace verdictd

#endif  // VERDICTD_SERVER_CONFIG_FILE_H_
