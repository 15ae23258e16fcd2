#include "storage/store_support.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace verdictd {
namespace store_support {

int64_t CeilUnixMicros(absl::Time t) {
  const int64_t us = absl::ToUnixMicros(t);
  return us != std::numeric_limits<int64_t>::max() && absl::FromUnixMicros(us) < t ? us + 1 : us;
}

std::optional<PageBounds> NewestFirstPage(absl::Time since, absl::Time until,
                                          std::optional<absl::Time> after_time, int64_t after_id) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  PageBounds page;
  page.since_us = CeilUnixMicros(since);
  page.until_us = CeilUnixMicros(until);
  page.cursor_us = kMax;
  page.cursor_id = kMax;
  if (after_time.has_value()) {
    page.cursor_us = absl::ToUnixMicros(*after_time);
    page.cursor_id = after_id;
    // Start the index scan at the cursor instead of filtering every newer entry on each page.
    if (page.cursor_us < page.until_us) {
      page.until_us = page.cursor_us + 1;
    }
  }
  if (page.since_us >= page.until_us) {
    return std::nullopt;
  }
  return page;
}

std::optional<PageBounds> HistoryPage(const HistoryQuery& query) {
  return query.after.has_value()
             ? NewestFirstPage(query.since, query.until, query.after->checked_at, query.after->id)
             : NewestFirstPage(query.since, query.until, std::nullopt, 0);
}

std::optional<PageBounds> LedgerPage(const ClickQuery& query) {
  return query.after.has_value()
             ? NewestFirstPage(query.since, query.until, query.after->requested_at, query.after->id)
             : NewestFirstPage(query.since, query.until, std::nullopt, 0);
}

std::optional<DayRange> UsageDays(absl::Time since, absl::Time until) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  const absl::CivilDay first = std::max(absl::ToCivilDay(since, utc), kEpochDay);
  const absl::CivilDay last =
      std::min(absl::ToCivilDay(until - absl::Microseconds(1), utc), kLastDay);
  if (first > last) {
    return std::nullopt;
  }
  return DayRange{DayNumber(first), DayNumber(last)};
}

ClicksSinceSplit SplitClicksSince(absl::Time since) {
  const int64_t since_us = CeilUnixMicros(since);
  const int64_t since_day = DayOfMicros(since_us);
  ClicksSinceSplit split;
  split.first_whole_day = since_day;
  const int64_t remainder = since_us % kMicrosPerDay;  // has since_us's sign
  if (remainder != 0) {
    split.first_whole_day = since_day + 1;
    split.partial_first = since_us;
    // Microseconds from since_us to its day's last one; the last day int64 reaches ends past
    // INT64_MAX.
    const int64_t to_day_end =
        kMicrosPerDay - 1 - (remainder < 0 ? remainder + kMicrosPerDay : remainder);
    split.partial_last = since_us > std::numeric_limits<int64_t>::max() - to_day_end
                             ? std::numeric_limits<int64_t>::max()
                             : since_us + to_day_end;
  }
  return split;
}

absl::Status FillRandom(std::string& out) {
  size_t filled = 0;
  while (filled < out.size()) {
    const ssize_t n = getrandom(out.data() + filled, out.size() - filled, 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return absl::InternalError(
          absl::StrCat("getrandom failed: ", std::generic_category().message(errno)));
    }
    filled += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status CheckSecretRequest(const std::string& name, size_t bytes) {
  if (name.empty()) {
    return absl::InvalidArgumentError("secret name is empty");
  }
  if (bytes == 0 || bytes > kMaxSecretBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("secret size must be 1..", kMaxSecretBytes, " bytes, got ", bytes));
  }
  return absl::OkStatus();
}

void FinishSecret(absl::StatusOr<std::optional<std::string>> stored, const std::string& name,
                  size_t bytes, const VerdictStore::ReadCallback<std::string>& done) {
  if (!stored.ok()) {
    done(stored.status());
    return;
  }
  if (!stored->has_value()) {
    done(absl::InternalError(absl::StrCat("secret \"", name, "\" vanished after writing it")));
    return;
  }
  if ((*stored)->size() != bytes) {
    done(absl::FailedPreconditionError(absl::StrCat("stored secret \"", name, "\" has ",
                                                    (*stored)->size(), " bytes, not ", bytes)));
    return;
  }
  done(**std::move(stored));
}

std::string EncodeAllowanceMark(const AllowanceMark& mark) {
  return absl::StrCat(absl::ToUnixMicros(mark.exhausted_until), " ",
                      absl::ToUnixMicros(mark.next_probe));
}

std::optional<AllowanceMark> DecodeAllowanceMark(absl::string_view value) {
  const std::vector<absl::string_view> parts = absl::StrSplit(value, ' ');
  int64_t until_us = 0;
  int64_t probe_us = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &until_us) ||
      !absl::SimpleAtoi(parts[1], &probe_us)) {
    return std::nullopt;
  }
  AllowanceMark mark;
  mark.exhausted_until = absl::FromUnixMicros(until_us);
  mark.next_probe = absl::FromUnixMicros(probe_us);
  return mark;
}

AllowanceStep DecideAllowance(const std::optional<AllowanceMark>& mark, absl::Time requested_at) {
  if (!mark.has_value() || requested_at >= mark->exhausted_until) {
    return AllowanceStep::kProceed;
  }
  return requested_at >= mark->next_probe ? AllowanceStep::kProbe : AllowanceStep::kRefuse;
}

AllowanceMark ProbeTaken(AllowanceMark mark, absl::Time requested_at, absl::Duration interval) {
  mark.next_probe = requested_at + interval;
  return mark;
}

absl::Status CheckTeamBudget(const ClickClaim& claim) {
  if (claim.team_monthly_budget < 0) {
    return absl::InvalidArgumentError("ClaimClick: team_monthly_budget must not be negative");
  }
  if (claim.team_monthly_budget == 0) {
    return absl::OkStatus();
  }
  if (claim.team.empty()) {
    return absl::InvalidArgumentError("ClaimClick: a team budget needs a team");
  }
  if (std::find(claim.team_callers.begin(), claim.team_callers.end(), claim.caller) ==
      claim.team_callers.end()) {
    return absl::InvalidArgumentError("ClaimClick: team_callers must name the claim's caller");
  }
  return absl::OkStatus();
}

std::vector<std::string> DistinctTeamCallers(const ClickClaim& claim) {
  std::vector<std::string> callers = claim.team_callers;
  std::sort(callers.begin(), callers.end());
  callers.erase(std::unique(callers.begin(), callers.end()), callers.end());
  return callers;
}

}  // namespace store_support
}  // namespace verdictd
