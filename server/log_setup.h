#ifndef VERDICTD_SERVER_LOG_SETUP_H_
#define VERDICTD_SERVER_LOG_SETUP_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace verdictd {

// Sends spdlog's default logger to stderr, as text lines or one JSON object per line
// (`format` "text" or "json"), at `level` (trace, debug, info, warn, error).
absl::Status SetUpLogging(absl::string_view format, absl::string_view level);

}  // namespace verdictd

#endif  // VERDICTD_SERVER_LOG_SETUP_H_
