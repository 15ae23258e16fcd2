#ifndef VERDICTD_SERVER_ENGINE_SPEND_TRACKER_H_
#define VERDICTD_SERVER_ENGINE_SPEND_TRACKER_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace verdictd {

struct AllowanceOptions {
  // The plan's clicks per period; 0: unknown (nothing is reported as left). Default: 0.
  int64_t monthly_allowance = 0;
  // Day of the month (1-28, UTC) on which ClickPatrol resets the allowance. Default: 1.
  int reset_day = 1;
  // While ClickPatrol says the allowance is exhausted, one request per this interval is let
  // through to notice an early top-up. Default: 10 min.
  absl::Duration exhausted_probe_interval = absl::Minutes(10);
};

struct AllowanceStatus {
  int64_t monthly_allowance = 0;
  int64_t clicks_used = 0;
  int64_t clicks_left = 0;
  absl::Time period_start;
  absl::Time period_end;
  bool exhausted_upstream = false;
};

// Counts billed clicks per caller per calendar month (UTC) to enforce budgets, and per
// allowance period to report what is left of the plan. Thread-safe.
//
// A click is reserved before its request is sent (so concurrent misses cannot overshoot a
// budget) and refunded only if the request provably never left.
class SpendTracker {
 public:
  // `month_clicks`: clicks per caller since the start of the current month; `period_clicks`:
  // clicks since the start of the current allowance period (both from the ledger at start-up).
  SpendTracker(AllowanceOptions options, const Clock& clock,
               const std::vector<std::pair<std::string, int64_t>>& month_clicks,
               int64_t period_clicks);

  // The start of the current calendar month and allowance period, for loading the counts above.
  static absl::Time MonthStart(absl::Time now);
  static std::pair<absl::Time, absl::Time> Period(absl::Time now, int reset_day);

  // Reserves one click for `caller`; false when `monthly_budget` (> 0) is already spent.
  bool TryReserve(const std::string& caller, int64_t monthly_budget);
  // Returns a reservation whose request never left.
  void Refund(const std::string& caller);
  int64_t SpentThisMonth(const std::string& caller);
  // The store counted `month_clicks` billed clicks for `caller` this month across every process
  // sharing it: the count never goes below that.
  void Observe(const std::string& caller, int64_t month_clicks);
  // The same for the clicks of the current allowance period, every caller's.
  void ObservePeriod(int64_t period_clicks);

  // ClickPatrol said the allowance is exhausted: refuse misses until the period ends.
  void MarkUpstreamExhausted();
  // Another process sharing the store was told so; its next probe is due at next_probe.
  void ObserveUpstreamExhausted(absl::Time next_probe);
  // A verdict arrived: the allowance is evidently not exhausted. Whether it was marked so.
  bool MarkUpstreamAvailable();
  // Whether a miss may be sent with respect to the allowance (true, except while exhausted,
  // when one probe per interval is let through).
  bool AllowUnderAllowance();
  // Whether AllowUnderAllowance() would say yes now, without using up a probe.
  bool WouldAllowUnderAllowance();
  AllowanceStatus Allowance();

 private:
  struct CallerMonth {
    absl::CivilMonth month;
    int64_t spent = 0;
  };
  void RollPeriodLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AllowanceOptions options_;
  const Clock& clock_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, CallerMonth> callers_ ABSL_GUARDED_BY(mu_);
  absl::Time period_start_ ABSL_GUARDED_BY(mu_);
  absl::Time period_end_ ABSL_GUARDED_BY(mu_);
  int64_t period_clicks_ ABSL_GUARDED_BY(mu_) = 0;
  bool exhausted_upstream_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time next_probe_ ABSL_GUARDED_BY(mu_);
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_SPEND_TRACKER_H_
