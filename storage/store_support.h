#ifndef VERDICTD_STORAGE_STORE_SUPPORT_H_
#define VERDICTD_STORAGE_STORE_SUPPORT_H_

// What every backend computes the same way, because the contract (verdict_store.h) defines it:
// days as UTC day numbers, the split of ClicksSince into whole days and a partial one, Usage's
// clamped day range, and Secret's checks. SQL-free; each backend binds the numbers to its own
// statements.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace store_support {

inline constexpr int64_t kMicrosPerDay = int64_t{86'400'000'000};
inline constexpr absl::CivilDay kEpochDay(1970, 1, 1);
// Usage's day range is clamped to these, so that infinite bounds mean every day.
inline constexpr absl::CivilDay kLastDay(9999, 12, 31);
// Secret sizes accepted; a secret is a key, not a payload.
inline constexpr size_t kMaxSecretBytes = 1024;

// The first whole microsecond at or after `t` (ToUnixMicros rounds down), so that "t <= x" and
// "x < t" hold for stored microseconds exactly when they hold for the times. Saturates for
// infinite times.
int64_t CeilUnixMicros(absl::Time t);
// Days since 1970-01-01 (UTC), as the stores keep them.
inline int64_t DayNumber(absl::CivilDay day) { return day - kEpochDay; }
// The UTC day number of a stored microsecond: floor division, so that times before 1970 fall on
// their own day rather than on day 0 (SQLite's migration to version 3 computes the same in SQL).
inline int64_t DayOfMicros(int64_t us) {
  return us / kMicrosPerDay - (us % kMicrosPerDay < 0 ? 1 : 0);
}

// One newest-first page over a (time, id) index, as History and Clicks read it: the stored
// microseconds in [since_us, until_us), where until_us is already lowered to just past the
// cursor so that the index scan starts there, and the cursor (cursor_us, cursor_id) that drops
// the entries of its microsecond already returned (INT64_MAX, INT64_MAX for the first page).
struct PageBounds {
  int64_t since_us = 0;
  int64_t until_us = 0;
  int64_t cursor_us = 0;
  int64_t cursor_id = 0;
};
// nullopt when the page is empty whatever is stored.
std::optional<PageBounds> NewestFirstPage(absl::Time since, absl::Time until,
                                          std::optional<absl::Time> after_time, int64_t after_id);
std::optional<PageBounds> HistoryPage(const HistoryQuery& query);
std::optional<PageBounds> LedgerPage(const ClickQuery& query);

// Usage's days, [first_day, last_day], or nullopt for an empty range.
struct DayRange {
  int64_t first_day = 0;
  int64_t last_day = 0;
};
std::optional<DayRange> UsageDays(absl::Time since, absl::Time until);

// ClicksSince from `since`: whole days from first_whole_day on come from the per-day counters,
// the rest of since's day from the ledger, [partial_first, partial_last] in microseconds; that
// range is empty (first > last) when since is a midnight, as month and allowance periods are.
struct ClicksSinceSplit {
  int64_t first_whole_day = 0;
  int64_t partial_first = 1;
  int64_t partial_last = 0;
};
ClicksSinceSplit SplitClicksSince(absl::Time since);

// Fills `out` from the kernel's CSPRNG (getrandom(2), blocking only until it is seeded at boot).
absl::Status FillRandom(std::string& out);
// Secret's argument checks: INVALID_ARGUMENT for an empty name or a size outside 1..1024.
absl::Status CheckSecretRequest(const std::string& name, size_t bytes);
// Answers Secret with `stored`, the secret named `name` as read, checked against `bytes`.
// Called only once a secret exists (stored or just written), so a missing one is an error.
void FinishSecret(absl::StatusOr<std::optional<std::string>> stored, const std::string& name,
                  size_t bytes, const VerdictStore::ReadCallback<std::string>& done);

// The allowance mark is a meta row of this name; its value is EncodeAllowanceMark's.
inline constexpr char kAllowanceMarkName[] = "allowance_mark";
std::string EncodeAllowanceMark(const AllowanceMark& mark);
// nullopt for a value that is not one (the mark is then taken as absent).
std::optional<AllowanceMark> DecodeAllowanceMark(absl::string_view value);

// What a claim with an allowance_probe_interval does about the stored mark (nullopt: none).
enum class AllowanceStep {
  kProceed,  // no mark, or it ran out
  kRefuse,   // the mark holds and the probe is not due: kAllowanceExhausted
  kProbe,    // the mark holds and the probe is due: begin, and store ProbeTaken(...)
};
AllowanceStep DecideAllowance(const std::optional<AllowanceMark>& mark, absl::Time requested_at);
// The mark after a claim at requested_at became the probe.
AllowanceMark ProbeTaken(AllowanceMark mark, absl::Time requested_at, absl::Duration interval);

// ClaimClick's checks of the team budget's arguments: INVALID_ARGUMENT for a negative
// team_monthly_budget, or a positive one with an empty team or with team_callers not naming
// claim.caller.
absl::Status CheckTeamBudget(const ClickClaim& claim);
// The callers whose billed clicks count against the claim's team budget: team_callers, each
// once, sorted (bytewise).
std::vector<std::string> DistinctTeamCallers(const ClickClaim& claim);

}  // namespace store_support
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_STORE_SUPPORT_H_
