#include "server/engine/spend_tracker.h"

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

absl::Time Utc(int y, int m, int d, int hh = 0) {
  return absl::FromCivil(absl::CivilSecond(y, m, d, hh, 0, 0), absl::UTCTimeZone());
}

TEST(SpendTrackerTest, BudgetsAreReservedRefundedAndResetMonthly) {
  FakeClock clock(Utc(2026, 11, 30, 23));
  SpendTracker spend(AllowanceOptions{}, clock, {{"team-a", 4}}, 4);
  EXPECT_EQ(spend.SpentThisMonth("team-a"), 4) << "loaded from the ledger";
  EXPECT_TRUE(spend.TryReserve("team-a", 5));
  EXPECT_FALSE(spend.TryReserve("team-a", 5)) << "5 of 5 spent";
  EXPECT_TRUE(spend.TryReserve("team-b", 0)) << "0: no budget";
  spend.Refund("team-a");  // its request never left
  EXPECT_EQ(spend.SpentThisMonth("team-a"), 4);
  EXPECT_TRUE(spend.TryReserve("team-a", 5));
  clock.Set(Utc(2026, 12, 1, 0));
  EXPECT_EQ(spend.SpentThisMonth("team-a"), 0) << "a new month";
  EXPECT_TRUE(spend.TryReserve("team-a", 1));
  EXPECT_FALSE(spend.TryReserve("team-a", 1));
}

TEST(SpendTrackerTest, ATeamBudgetIsSharedByItsCallersAndResetMonthly) {
  FakeClock clock(Utc(2026, 11, 30, 22));
  SpendTracker spend(AllowanceOptions{}, clock, {{"ads", 2}, {"web", 1}, {"other", 50}}, 53);
  const TeamBudget team{"growth", {"ads", "web"}, 5};
  using R = SpendTracker::Reservation;
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", team.callers), 3) << "ads 2 + web 1";
  EXPECT_EQ(spend.Reserve("ads", 0, &team), R::kReserved);
  EXPECT_EQ(spend.Reserve("web", 0, &team), R::kReserved);
  EXPECT_EQ(spend.Reserve("web", 0, &team), R::kTeamBudgetSpent) << "5 of 5 spent by the team";
  EXPECT_EQ(spend.Reserve("ads", 0, &team), R::kTeamBudgetSpent);
  EXPECT_EQ(spend.SpentThisMonth("web"), 2) << "a refused reservation counts nothing";
  EXPECT_EQ(spend.Reserve("other", 0, nullptr), R::kReserved) << "other is in no team";
  // The caller's own budget is checked first, and names the caller.
  EXPECT_EQ(spend.Reserve("ads", 3, &team), R::kCallerBudgetSpent);
  spend.Refund("web");  // a request that never left gives the team its click back
  EXPECT_EQ(spend.Reserve("ads", 0, &team), R::kReserved);
  // The store's count for the team (other processes' clicks) is a floor under the sum.
  const TeamBudget big{"growth", {"ads", "web"}, 10};
  spend.ObserveTeam("growth", 9);
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", big.callers), 9);
  EXPECT_EQ(spend.Reserve("web", 0, &big), R::kReserved);
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", big.callers), 9) << "sum 6 stays under the floor";
  spend.ObserveTeam("growth", 10);
  EXPECT_EQ(spend.Reserve("web", 0, &big), R::kTeamBudgetSpent);
  clock.Set(Utc(2026, 12, 1, 0));
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", big.callers), 0) << "a new month";
  EXPECT_EQ(spend.Reserve("web", 0, &team), R::kReserved);
}

// The store's count for a team only ever rises, so it must be dropped whenever it may no longer
// hold; else the team would stay refused until the month ends.
TEST(SpendTrackerTest, ATeamsStoreCountIsForgottenOnARefundASyncOrAMove) {
  FakeClock clock(Utc(2026, 12, 10));
  SpendTracker spend(AllowanceOptions{}, clock, {{"ads", 5}, {"web", 4}}, 9);
  const TeamBudget team{"growth", {"ads", "web"}, 10};
  using R = SpendTracker::Reservation;
  // The engine's sequence for a click that never left: reserved, claimed (the store counts it:
  // 10 of 10), then not sent and given back.
  ASSERT_EQ(spend.Reserve("ads", 0, &team), R::kReserved);
  spend.ObserveTeam("growth", 10);
  EXPECT_EQ(spend.Reserve("web", 0, &team), R::kTeamBudgetSpent) << "10 of 10 while it is out";
  spend.Refund("ads");
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", team.callers), 9);
  EXPECT_EQ(spend.Reserve("web", 0, &team), R::kReserved) << "the click given back is free again";
  // Another process's count, then a sync of every caller's count from the store.
  spend.ObserveTeam("growth", 10);
  spend.Observe("ads", 5);
  spend.Observe("web", 4);  // the store says 9: the other process's last click was not sent
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", team.callers), 10) << "web's own reservation";
  spend.Refund("web");
  spend.ObserveTeam("growth", 10);
  spend.ForgetTeamCounts();
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", team.callers), 9);
  // A caller moved out of the team (a reload) takes its clicks with it.
  spend.ObserveTeam("growth", 9);
  spend.ForgetTeamCounts();
  const TeamBudget smaller{"growth", {"ads"}, 10};
  EXPECT_EQ(spend.TeamSpentThisMonth("growth", smaller.callers), 5);
  EXPECT_EQ(spend.Reserve("ads", 0, &smaller), R::kReserved);
}

TEST(SpendTrackerTest, AllowanceCountsClicksPerPeriodFromTheResetDay) {
  FakeClock clock(Utc(2026, 11, 20));
  AllowanceOptions options;
  options.monthly_allowance = 10;
  options.reset_day = 15;
  SpendTracker spend(options, clock, {}, 3);
  AllowanceStatus status = spend.Allowance();
  EXPECT_EQ(status.period_start, Utc(2026, 11, 15));
  EXPECT_EQ(status.period_end, Utc(2026, 12, 15));
  EXPECT_EQ(status.clicks_used, 3);
  EXPECT_EQ(status.clicks_left, 7);
  ASSERT_TRUE(spend.TryReserve("team-a", 0));
  EXPECT_EQ(spend.Allowance().clicks_left, 6);
  clock.Set(Utc(2026, 12, 15));
  status = spend.Allowance();
  EXPECT_EQ(status.period_start, Utc(2026, 12, 15));
  EXPECT_EQ(status.clicks_used, 0);
  EXPECT_EQ(status.clicks_left, 10);
}

// WouldAllowUnderAllowance answers for a miss that will wait in a queue: it never uses up the
// probe that AllowUnderAllowance lets through once per interval while ClickPatrol says the
// allowance is exhausted.
TEST(SpendTrackerTest, ExhaustionLetsOneProbePerIntervalAndPeekingUsesNone) {
  FakeClock clock(Utc(2026, 11, 27, 12));
  AllowanceOptions options;
  options.exhausted_probe_interval = absl::Minutes(10);
  SpendTracker spend(options, clock, {}, 0);
  EXPECT_TRUE(spend.WouldAllowUnderAllowance());
  spend.MarkUpstreamExhausted();
  EXPECT_TRUE(spend.Allowance().exhausted_upstream);
  EXPECT_FALSE(spend.WouldAllowUnderAllowance());
  EXPECT_FALSE(spend.AllowUnderAllowance());
  clock.Advance(absl::Minutes(10));
  EXPECT_TRUE(spend.WouldAllowUnderAllowance());
  EXPECT_TRUE(spend.WouldAllowUnderAllowance()) << "peeking twice uses nothing";
  EXPECT_TRUE(spend.AllowUnderAllowance()) << "the probe";
  EXPECT_FALSE(spend.WouldAllowUnderAllowance()) << "the next one is 10 minutes away";
  EXPECT_FALSE(spend.AllowUnderAllowance());
  spend.MarkUpstreamAvailable();  // the probe got a verdict
  EXPECT_TRUE(spend.AllowUnderAllowance());
  EXPECT_FALSE(spend.Allowance().exhausted_upstream);
}

TEST(SpendTrackerTest, ExhaustionEndsWithThePeriod) {
  FakeClock clock(Utc(2026, 11, 30, 23));
  AllowanceOptions options;
  options.exhausted_probe_interval = absl::Hours(24);
  SpendTracker spend(options, clock, {}, 0);
  spend.MarkUpstreamExhausted();
  EXPECT_FALSE(spend.AllowUnderAllowance());
  clock.Set(Utc(2026, 12, 1, 0));
  EXPECT_TRUE(spend.WouldAllowUnderAllowance()) << "a new period starts with a new allowance";
  EXPECT_TRUE(spend.AllowUnderAllowance());
}

}  // namespace
}  // namespace verdictd
