#include "server/engine/spend_tracker.h"

#include <algorithm>

namespace verdictd {
namespace {

absl::CivilMonth MonthOf(absl::Time t) {
  return absl::CivilMonth(absl::ToCivilSecond(t, absl::UTCTimeZone()));
}

}  // namespace

SpendTracker::SpendTracker(AllowanceOptions options, const Clock& clock,
                           const std::vector<std::pair<std::string, int64_t>>& month_clicks,
                           int64_t period_clicks)
    : options_(options), clock_(clock) {
  const absl::Time now = clock_.Now();
  const absl::CivilMonth month = MonthOf(now);
  absl::MutexLock lock(&mu_);
  for (const auto& [caller, clicks] : month_clicks) {
    callers_[caller] = CallerMonth{month, clicks};
  }
  std::tie(period_start_, period_end_) = Period(now, options_.reset_day);
  period_clicks_ = period_clicks;
}

absl::Time SpendTracker::MonthStart(absl::Time now) {
  return absl::FromCivil(MonthOf(now), absl::UTCTimeZone());
}

std::pair<absl::Time, absl::Time> SpendTracker::Period(absl::Time now, int reset_day) {
  const absl::CivilDay today(absl::ToCivilSecond(now, absl::UTCTimeZone()));
  absl::CivilMonth month(today);
  if (today.day() < reset_day) {
    month -= 1;
  }
  const absl::CivilDay start(month.year(), month.month(), reset_day);
  const absl::CivilMonth next = month + 1;
  const absl::CivilDay end(next.year(), next.month(), reset_day);
  return {absl::FromCivil(start, absl::UTCTimeZone()), absl::FromCivil(end, absl::UTCTimeZone())};
}

void SpendTracker::RollPeriodLocked(absl::Time now) {
  if (now >= period_end_ || now < period_start_) {
    std::tie(period_start_, period_end_) = Period(now, options_.reset_day);
    period_clicks_ = 0;
    exhausted_upstream_ = false;
  }
}

int64_t SpendTracker::TeamSpentLocked(const std::string& team,
                                      const std::vector<std::string>& callers,
                                      absl::CivilMonth month) {
  int64_t spent = 0;
  for (const std::string& caller : callers) {
    auto it = callers_.find(caller);
    if (it != callers_.end() && it->second.month == month) {
      spent += it->second.spent;
    }
  }
  auto floor = team_floor_.find(team);
  if (floor != team_floor_.end() && floor->second.month == month) {
    spent = std::max(spent, floor->second.spent);
  }
  return spent;
}

SpendTracker::Reservation SpendTracker::Reserve(const std::string& caller, int64_t monthly_budget,
                                                const TeamBudget* team) {
  const absl::Time now = clock_.Now();
  const absl::CivilMonth month = MonthOf(now);
  absl::MutexLock lock(&mu_);
  RollPeriodLocked(now);
  CallerMonth& entry = callers_[caller];
  if (entry.month != month) {
    entry = CallerMonth{month, 0};
  }
  if (monthly_budget > 0 && entry.spent >= monthly_budget) {
    return Reservation::kCallerBudgetSpent;
  }
  if (team != nullptr && team->monthly_budget > 0 &&
      TeamSpentLocked(team->team, team->callers, month) >= team->monthly_budget) {
    return Reservation::kTeamBudgetSpent;
  }
  ++entry.spent;
  ++period_clicks_;
  return Reservation::kReserved;
}

void SpendTracker::Refund(const std::string& caller) {
  absl::MutexLock lock(&mu_);
  auto it = callers_.find(caller);
  if (it != callers_.end() && it->second.spent > 0) {
    --it->second.spent;
  }
  period_clicks_ = std::max<int64_t>(0, period_clicks_ - 1);
  team_floor_.clear();
}

int64_t SpendTracker::SpentThisMonth(const std::string& caller) {
  const absl::CivilMonth month = MonthOf(clock_.Now());
  absl::MutexLock lock(&mu_);
  auto it = callers_.find(caller);
  if (it == callers_.end() || it->second.month != month) {
    return 0;
  }
  return it->second.spent;
}

void SpendTracker::RaiseLocked(absl::flat_hash_map<std::string, CallerMonth>& counts,
                               const std::string& name, int64_t month_clicks) {
  const absl::CivilMonth month = MonthOf(clock_.Now());
  CallerMonth& entry = counts[name];
  if (entry.month != month) {
    entry = CallerMonth{month, 0};
  }
  entry.spent = std::max(entry.spent, month_clicks);
}

void SpendTracker::Observe(const std::string& caller, int64_t month_clicks) {
  absl::MutexLock lock(&mu_);
  RaiseLocked(callers_, caller, month_clicks);
}

int64_t SpendTracker::TeamSpentThisMonth(const std::string& team,
                                         const std::vector<std::string>& callers) {
  const absl::CivilMonth month = MonthOf(clock_.Now());
  absl::MutexLock lock(&mu_);
  return TeamSpentLocked(team, callers, month);
}

void SpendTracker::ObserveTeam(const std::string& team, int64_t month_clicks) {
  absl::MutexLock lock(&mu_);
  RaiseLocked(team_floor_, team, month_clicks);
}

void SpendTracker::ForgetTeamCounts() {
  absl::MutexLock lock(&mu_);
  team_floor_.clear();
}

void SpendTracker::ObservePeriod(int64_t period_clicks) {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  RollPeriodLocked(now);
  period_clicks_ = std::max(period_clicks_, period_clicks);
}

void SpendTracker::MarkUpstreamExhausted() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  RollPeriodLocked(now);
  exhausted_upstream_ = true;
  next_probe_ = now + options_.exhausted_probe_interval;
}

void SpendTracker::ObserveUpstreamExhausted(absl::Time next_probe) {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  RollPeriodLocked(now);
  exhausted_upstream_ = true;
  next_probe_ = next_probe;
}

bool SpendTracker::MarkUpstreamAvailable() {
  absl::MutexLock lock(&mu_);
  const bool was = exhausted_upstream_;
  exhausted_upstream_ = false;
  return was;
}

bool SpendTracker::AllowUnderAllowance() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  RollPeriodLocked(now);
  if (!exhausted_upstream_) {
    return true;
  }
  if (now >= next_probe_) {
    next_probe_ = now + options_.exhausted_probe_interval;
    return true;
  }
  return false;
}

bool SpendTracker::WouldAllowUnderAllowance() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  RollPeriodLocked(now);
  return !exhausted_upstream_ || now >= next_probe_;
}

AllowanceStatus SpendTracker::Allowance() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  RollPeriodLocked(now);
  AllowanceStatus s;
  s.monthly_allowance = options_.monthly_allowance;
  s.clicks_used = period_clicks_;
  s.clicks_left = options_.monthly_allowance > 0
                      ? std::max<int64_t>(0, options_.monthly_allowance - period_clicks_)
                      : 0;
  s.period_start = period_start_;
  s.period_end = period_end_;
  s.exhausted_upstream = exhausted_upstream_;
  return s;
}

}  // namespace verdictd
