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

// A team's share in a reservation: its callers (the caller reserving among them) and its clicks
// per calendar month (UTC), shared by them.
struct TeamBudget {
  std::string team;
  std::vector<std::string> callers;
  int64_t monthly_budget = 0;  // 0: unlimited
};

// Counts billed clicks per caller per calendar month (UTC) to enforce budgets, and per
// allowance period to report what is left of the plan. A team's clicks are its callers' clicks
// (whoever is in the team now), but never fewer than the store last counted for it. Thread-safe.
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

  enum class Reservation { kReserved, kCallerBudgetSpent, kTeamBudgetSpent };
  // Reserves one click for `caller` (and its team, when `team` is given); refused when the
  // caller's `monthly_budget` (> 0) or the team's is already spent. Both are checked and counted
  // under one lock, so concurrent reservations never overshoot either.
  Reservation Reserve(const std::string& caller, int64_t monthly_budget,
                      const TeamBudget* team = nullptr);
  // Reserve without a team: whether it was reserved.
  bool TryReserve(const std::string& caller, int64_t monthly_budget) {
    return Reserve(caller, monthly_budget) == Reservation::kReserved;
  }
  // Returns a reservation whose request never left. Forgets the teams' store counts too (see
  // ForgetTeamCounts): one of them may hold the refunded click.
  void Refund(const std::string& caller);
  int64_t SpentThisMonth(const std::string& caller);
  // The billed clicks of `team`'s callers this month (at least as many as last observed).
  int64_t TeamSpentThisMonth(const std::string& team, const std::vector<std::string>& callers);
  // The store counted `month_clicks` billed clicks for `caller` this month across every process
  // sharing it: the count never goes below that.
  void Observe(const std::string& caller, int64_t month_clicks);
  // The same for a team: the store counted `month_clicks` for its callers together.
  void ObserveTeam(const std::string& team, int64_t month_clicks);
  // Drops every team's store count, so that a team's clicks are its callers' sum again: after
  // the callers' counts were read from the store (they then include every process's clicks),
  // after a refund, and when membership changes. A count only ever rises, so one that no longer
  // holds (a click given back, a caller moved out) would otherwise refuse the team until the
  // month ends.
  void ForgetTeamCounts();
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
  // counts[name] is at least month_clicks for this month from now on.
  void RaiseLocked(absl::flat_hash_map<std::string, CallerMonth>& counts, const std::string& name,
                   int64_t month_clicks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t TeamSpentLocked(const std::string& team, const std::vector<std::string>& callers,
                          absl::CivilMonth month) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AllowanceOptions options_;
  const Clock& clock_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, CallerMonth> callers_ ABSL_GUARDED_BY(mu_);
  // The store's last count per team (ObserveTeam, after every claim of a team member), until
  // ForgetTeamCounts: a floor under the callers' sum, which misses the clicks of other processes
  // until their callers are observed. The store enforces the budgets; this only refuses early
  // what it would refuse.
  absl::flat_hash_map<std::string, CallerMonth> team_floor_ ABSL_GUARDED_BY(mu_);
  absl::Time period_start_ ABSL_GUARDED_BY(mu_);
  absl::Time period_end_ ABSL_GUARDED_BY(mu_);
  int64_t period_clicks_ ABSL_GUARDED_BY(mu_) = 0;
  bool exhausted_upstream_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time next_probe_ ABSL_GUARDED_BY(mu_);
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_SPEND_TRACKER_H_
