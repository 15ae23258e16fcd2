#ifndef VERDICTD_CLIENT_VERDICTCTL_INPUT_H_
#define VERDICTD_CLIENT_VERDICTCTL_INPUT_H_

// Parsing of verdictctl's operands: batch input, times and durations. No I/O, no gRPC.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace verdictd::cli {

// One line of batch input.
struct BatchItem {
  std::string ip;          // as written (trimmed); the server validates it
  std::string user_agent;  // from the line, else the default
  int line = 0;            // 1-based line number, for messages
};

// Parses batch input: one item per line, either `IP` or `IP,USER_AGENT` (the first comma splits,
// so the user agent may contain commas). Surrounding whitespace and a trailing CR are removed;
// blank lines and lines whose first non-blank character is `#` are skipped. Lines without a user
// agent get `default_user_agent`. Never fails: bad IPs are reported by the server per item.
std::vector<BatchItem> ParseBatchInput(absl::string_view text,
                                       absl::string_view default_user_agent);

// Parses a point in time for --since/--until:
//   RFC 3339 (`2026-11-27T10:00:00Z`, `2026-11-27T10:00:00.5+01:00`),
//   a UTC date (`2026-11-27`, meaning its midnight), or
//   a relative `-DURATION` (`-24h`, `-7d`, `-90m`), meaning `now` minus that duration.
// INVALID_ARGUMENT otherwise.
absl::StatusOr<absl::Time> ParseTimeArg(absl::string_view text, absl::Time now);

// Strips one trailing "\n" (or "\r\n") from a key read from stdin; the rest is kept verbatim.
std::string StripOneNewline(std::string text);

}  // namespace verdictd::cli

#endif  // VERDICTD_CLIENT_VERDICTCTL_INPUT_H_
