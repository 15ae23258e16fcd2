#include "client/verdictctl/input.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/duration.h"

namespace verdictd::cli {

std::vector<BatchItem> ParseBatchInput(absl::string_view text,
                                       absl::string_view default_user_agent) {
  std::vector<BatchItem> items;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') {
      continue;
    }
    BatchItem item;
    item.line = line_number;
    const size_t comma = line.find(',');
    if (comma == absl::string_view::npos) {
      item.ip = std::string(line);
      item.user_agent = std::string(default_user_agent);
    } else {
      item.ip = std::string(absl::StripAsciiWhitespace(line.substr(0, comma)));
      item.user_agent = std::string(absl::StripAsciiWhitespace(line.substr(comma + 1)));
    }
    items.push_back(std::move(item));
  }
  return items;
}

absl::StatusOr<absl::Time> ParseTimeArg(absl::string_view text, absl::Time now) {
  absl::string_view relative = text;
  if (absl::ConsumePrefix(&relative, "-")) {
    absl::StatusOr<absl::Duration> ago = ParseDuration(relative);
    if (!ago.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", text, "\" is not a relative time (examples: -24h, -7d, -90m)"));
    }
    return now - *ago;
  }
  absl::Time t;
  std::string error;
  if (absl::ParseTime(absl::RFC3339_full, text, &t, &error)) {
    return t;
  }
  if (absl::ParseTime("%Y-%m-%d", text, absl::UTCTimeZone(), &t, &error)) {
    return t;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "\"", text,
      "\" is not a time (RFC 3339 like 2026-11-27T10:00:00Z, a date like 2026-11-27, or relative "
      "like -24h or -7d)"));
}

std::string StripOneNewline(std::string text) {
  if (absl::EndsWith(text, "\r\n")) {
    text.resize(text.size() - 2);
  } else if (absl::EndsWith(text, "\n")) {
    text.resize(text.size() - 1);
  }
  return text;
}

}  // namespace verdictd::cli
