#ifndef VERDICTD_COMMON_DURATION_H_
#define VERDICTD_COMMON_DURATION_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace verdictd {

// Parses a non-negative duration such as "24h", "90s", "1h30m", "250ms" or "7d" (days are
// accepted in addition to absl::ParseDuration's units). INVALID_ARGUMENT otherwise.
absl::StatusOr<absl::Duration> ParseDuration(absl::string_view text);

// Formats like absl::FormatDuration, but whole days as "7d".
std::string DurationToString(absl::Duration d);

}  // namespace verdictd

#endif  // VERDICTD_COMMON_DURATION_H_
