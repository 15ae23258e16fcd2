#include "common/duration.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/quote.h"

namespace verdictd {
namespace {

absl::Status NotADuration(absl::string_view text) {
  return absl::InvalidArgumentError(
      absl::StrCat(QuoteForError(text),
                   " is not a non-negative duration (examples: 7d, 24h, 90s, 1h30m, 250ms)"));
}

}  // namespace

absl::StatusOr<absl::Duration> ParseDuration(absl::string_view text) {
  if (text.empty() || text.size() > 64) {
    return NotADuration(text);
  }
  absl::string_view days_text = text;
  if (absl::ConsumeSuffix(&days_text, "d")) {
    int64_t days = 0;
    if (days_text.empty() || days_text[0] == '+' || days_text[0] == '-' ||
        !absl::SimpleAtoi(days_text, &days) || days > 1'000'000) {
      return NotADuration(text);
    }
    return absl::Hours(24) * days;
  }
  absl::Duration d;
  if (absl::StrContains(text, ' ') || !absl::ParseDuration(text, &d) || d < absl::ZeroDuration() ||
      d == absl::InfiniteDuration()) {
    return NotADuration(text);
  }
  return d;
}

std::string DurationToString(absl::Duration d) {
  const absl::Duration day = absl::Hours(24);
  absl::Duration rem;
  const int64_t days = absl::IDivDuration(d, day, &rem);
  if (days > 0 && rem == absl::ZeroDuration()) {
    return absl::StrCat(days, "d");
  }
  return absl::FormatDuration(d);
}

}  // namespace verdictd
