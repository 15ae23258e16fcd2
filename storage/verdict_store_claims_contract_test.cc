// The contract suite, continued: single-flight claims, budgets reserved with them, the flight
// listener and named leases (VerdictStore::ClaimClick, SetFlightListener, TryLease). Leases run
// on the store's time: the test's FakeClock for an embedded store, the database's clock for a
// shared one, so a test that waits for a lease to run out both advances the fake clock and
// lets real time pass.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/verdict_store.h"
#include "storage/verdict_store_contract_test.h"

namespace verdictd {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;
using namespace std::string_literals;
using namespace store_test;

using Kind = ClaimResult::Kind;

ClickClaim MakeClaim(std::string key, std::string caller = "alice", std::string owner = "r1",
                     absl::Duration lease = absl::Minutes(1), int64_t budget = 0) {
  ClickClaim c;
  c.caller = std::move(caller);
  c.ip = "192.0.2.10";
  c.requested_at = kT0;
  c.flight_key = std::move(key);
  c.owner = std::move(owner);
  c.lease = lease;
  c.monthly_budget = budget;
  return c;
}

absl::StatusOr<ClaimResult> ClaimSync(VerdictStore& store, ClickClaim claim) {
  Waiter<absl::StatusOr<ClaimResult>> waiter;
  store.ClaimClick(std::move(claim), waiter.Callback());
  return waiter.Wait();
}

absl::StatusOr<bool> TryLeaseSync(VerdictStore& store, std::string name, std::string owner,
                                  absl::Duration lease) {
  Waiter<absl::StatusOr<bool>> waiter;
  store.TryLease(std::move(name), std::move(owner), lease, waiter.Callback());
  return waiter.Wait();
}

ClickCompletion Completed(ClickOutcome outcome) {
  ClickCompletion c;
  c.outcome = outcome;
  c.http_status = outcome == ClickOutcome::kVerdict ? 200 : 0;
  if (outcome == ClickOutcome::kVerdict) {
    c.verdict = MakeVerdict("192.0.2.10", kT0 + absl::Milliseconds(3));
  }
  return c;
}

int64_t ClicksOf(const VerdictStore::ClickCounts& counts, absl::string_view caller) {
  for (const auto& [who, n] : counts) {
    if (who == caller) {
      return n;
    }
  }
  return 0;
}

// Records the flight endings a store reports.
class RecordingListener : public FlightListener {
 public:
  void OnFlightEnded(const std::string& key) override {
    absl::MutexLock lock(&mu_);
    ended_.push_back(key);
  }
  void OnFlightsMayHaveEnded() override {}

  // Waits (real time: the store's threads deliver) until `key` was reported.
  bool WaitFor(const std::string& key, absl::Duration timeout = absl::Seconds(10)) {
    auto seen = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const std::string& k : ended_) {
        if (k == key) {
          return true;
        }
      }
      return false;
    };
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&seen), timeout);
  }
  std::vector<std::string> ended() {
    absl::MutexLock lock(&mu_);
    return ended_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> ended_ ABSL_GUARDED_BY(mu_);
};

// Claims `claim` until it is granted, moving `clock` past the lease each time (and letting real
// time pass, for a store on the database's clock), for at most 10 s.
absl::StatusOr<ClaimResult> ClaimOnceLeaseRunsOut(VerdictStore& store, FakeClock& clock,
                                                  const ClickClaim& claim) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  for (;;) {
    absl::StatusOr<ClaimResult> result = ClaimSync(store, claim);
    if (!result.ok() || result->kind != Kind::kFlightHeld || absl::Now() > give_up) {
      return result;
    }
    clock.Advance(result->lease_left + absl::Milliseconds(1));
    absl::SleepFor(absl::Milliseconds(20));
  }
}

TEST_P(VerdictStoreContractTest, ClaimBeginsABilledClickAndHoldsItsKey) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<ClaimResult> first = ClaimSync(*store, MakeClaim("k1"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->kind, Kind::kBegun);
  EXPECT_GT(first->click_id, 0);

  // Another owner (or the same one) asking for the key while the claim holds is told to wait,
  // and nothing is written for it.
  for (const char* owner : {"r2", "r1"}) {
    absl::StatusOr<ClaimResult> second = ClaimSync(*store, MakeClaim("k1", "bob", owner));
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_EQ(second->kind, Kind::kFlightHeld);
    EXPECT_GT(second->lease_left, absl::ZeroDuration());
    EXPECT_LE(second->lease_left, absl::Minutes(1));
  }
  // Another key is another flight.
  absl::StatusOr<ClaimResult> other = ClaimSync(*store, MakeClaim("k2", "bob"));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->kind, Kind::kBegun);
  EXPECT_NE(other->click_id, first->click_id);

  absl::StatusOr<VerdictStore::ClickCounts> clicks = ClicksSinceSync(*store, kT0 - absl::Hours(1));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_THAT(*clicks, ElementsAre(Pair("alice", 1), Pair("bob", 1)));
}

TEST_P(VerdictStoreContractTest, CompletionReleasesTheClaimAndTellsTheListener) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  RecordingListener listener;
  store->SetFlightListener(&listener);
  // Keys are bytes: an IP with a user agent may hold anything.
  const std::string key = "198.51.100.7\0ua\xff\n"s;
  for (ClickOutcome outcome :
       {ClickOutcome::kVerdict, ClickOutcome::kUpstreamError, ClickOutcome::kNotSent}) {
    absl::StatusOr<ClaimResult> claim = ClaimSync(*store, MakeClaim(key));
    ASSERT_TRUE(claim.ok()) << claim.status();
    ASSERT_EQ(claim->kind, Kind::kBegun) << static_cast<int>(outcome);
    ASSERT_TRUE(CompleteClickSync(*store, claim->click_id, Completed(outcome)).ok());
    EXPECT_TRUE(listener.WaitFor(key)) << static_cast<int>(outcome);
  }
  // Released every time: the next claim was granted each round, and is now.
  absl::StatusOr<ClaimResult> again = ClaimSync(*store, MakeClaim(key, "bob", "r2"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->kind, Kind::kBegun);
  // A click begun without a claim releases nothing.
  absl::StatusOr<int64_t> plain = BeginClickSync(*store, "carol", "192.0.2.10", kT0);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(CompleteClickSync(*store, *plain, Completed(ClickOutcome::kUpstreamError)).ok());
  absl::StatusOr<ClaimResult> still = ClaimSync(*store, MakeClaim(key, "carol", "r3"));
  ASSERT_TRUE(still.ok()) << still.status();
  EXPECT_EQ(still->kind, Kind::kFlightHeld);
  store->SetFlightListener(nullptr);
}

TEST_P(VerdictStoreContractTest, AnExpiredClaimIsTakenOverAndTheOldOwnerCannotReleaseIt) {
  FakeClock clock(kT0);
  std::unique_ptr<VerdictStore> store = Open(&clock);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<ClaimResult> dead =
      ClaimSync(*store, MakeClaim("k", "alice", "dead", absl::Milliseconds(300)));
  ASSERT_TRUE(dead.ok()) << dead.status();
  ASSERT_EQ(dead->kind, Kind::kBegun);

  absl::StatusOr<ClaimResult> heir =
      ClaimOnceLeaseRunsOut(*store, clock, MakeClaim("k", "bob", "heir", absl::Minutes(1)));
  ASSERT_TRUE(heir.ok()) << heir.status();
  ASSERT_EQ(heir->kind, Kind::kBegun);
  EXPECT_NE(heir->click_id, dead->click_id);

  // The presumed-dead owner comes back and completes: its ledger row is completed, but the
  // claim is the heir's and stays.
  ASSERT_TRUE(CompleteClickSync(*store, dead->click_id, Completed(ClickOutcome::kVerdict)).ok());
  absl::StatusOr<ClaimResult> third = ClaimSync(*store, MakeClaim("k", "carol", "third"));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->kind, Kind::kFlightHeld);
  // Both clicks are billed: nobody knows whether the first request reached ClickPatrol.
  absl::StatusOr<VerdictStore::ClickCounts> clicks = ClicksSinceSync(*store, kT0 - absl::Hours(1));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_THAT(*clicks, ElementsAre(Pair("alice", 1), Pair("bob", 1)));
}

TEST_P(VerdictStoreContractTest, ConcurrentClaimsOfOneKeyGrantExactlyOne) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();  // a second process on the same data
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  constexpr int kClaimants = 24;
  std::atomic<int> begun{0};
  std::atomic<int> held{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClaimants; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<ClaimResult> r = ClaimSync(
          i % 2 == 0 ? *a : *b, MakeClaim("one key", absl::StrCat("c", i), absl::StrCat("r", i)));
      if (!r.ok()) {
        ++failed;
      } else if (r->kind == Kind::kBegun) {
        ++begun;
      } else if (r->kind == Kind::kFlightHeld) {
        ++held;
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(begun.load(), 1);
  EXPECT_EQ(held.load(), kClaimants - 1);
  absl::StatusOr<VerdictStore::ClickCounts> clicks = ClicksSinceSync(*a, kT0 - absl::Hours(1));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(clicks->size(), 1u);
}

TEST_P(VerdictStoreContractTest, BudgetIsReservedWithTheClaimAndNeverOvershot) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  // A click of last month does not count against this month's budget.
  const absl::Time last_month = kT0 - absl::Hours(24 * 40);
  ClickClaim old = MakeClaim("old", "alice", "r1", absl::Minutes(1), 10);
  old.requested_at = last_month;
  absl::StatusOr<ClaimResult> old_claim = ClaimSync(*a, old);
  ASSERT_TRUE(old_claim.ok()) << old_claim.status();
  ASSERT_EQ(old_claim->kind, Kind::kBegun);

  constexpr int kClaims = 30;
  constexpr int64_t kBudget = 7;
  std::atomic<int> begun{0};
  std::atomic<int> spent{0};
  std::atomic<int> other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClaims; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<ClaimResult> r =
          ClaimSync(i % 2 == 0 ? *a : *b,
                    MakeClaim(absl::StrCat("key", i), "alice", "r", absl::Minutes(1), kBudget));
      if (r.ok() && r->kind == Kind::kBegun) {
        ++begun;
        EXPECT_GE(r->month_clicks, 1);
        EXPECT_LE(r->month_clicks, kBudget);
      } else if (r.ok() && r->kind == Kind::kBudgetSpent) {
        ++spent;
        EXPECT_EQ(r->month_clicks, kBudget);
      } else {
        ++other;
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  EXPECT_EQ(begun.load(), kBudget);
  EXPECT_EQ(spent.load(), kClaims - kBudget);
  EXPECT_EQ(other.load(), 0);

  // Another caller has its own budget; no budget means no limit.
  absl::StatusOr<ClaimResult> bob =
      ClaimSync(*a, MakeClaim("bob key", "bob", "r", absl::Minutes(1), 1));
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_EQ(bob->kind, Kind::kBegun);
  EXPECT_EQ(bob->month_clicks, 1);
  absl::StatusOr<ClaimResult> unlimited = ClaimSync(*a, MakeClaim("free key", "alice"));
  ASSERT_TRUE(unlimited.ok()) << unlimited.status();
  EXPECT_EQ(unlimited->kind, Kind::kBegun);
}

TEST_P(VerdictStoreContractTest, ANotSentClickGivesItsBudgetBack) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<ClaimResult> first =
      ClaimSync(*store, MakeClaim("k1", "alice", "r", absl::Minutes(1), 1));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->kind, Kind::kBegun);
  absl::StatusOr<ClaimResult> refused =
      ClaimSync(*store, MakeClaim("k2", "alice", "r", absl::Minutes(1), 1));
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(refused->kind, Kind::kBudgetSpent);
  EXPECT_EQ(refused->month_clicks, 1);
  ASSERT_TRUE(CompleteClickSync(*store, first->click_id, Completed(ClickOutcome::kNotSent)).ok());
  absl::StatusOr<ClaimResult> after =
      ClaimSync(*store, MakeClaim("k2", "alice", "r", absl::Minutes(1), 1));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->kind, Kind::kBegun);
}

TEST_P(VerdictStoreContractTest, AHeldFlightIsReportedBeforeASpentBudget) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<ClaimResult> spend =
      ClaimSync(*store, MakeClaim("mine", "alice", "r", absl::Minutes(1), 1));
  ASSERT_TRUE(spend.ok() && spend->kind == Kind::kBegun);
  absl::StatusOr<ClaimResult> bobs = ClaimSync(*store, MakeClaim("shared", "bob"));
  ASSERT_TRUE(bobs.ok() && bobs->kind == Kind::kBegun);
  // alice could not pay, but she need not: bob's flight will answer her.
  absl::StatusOr<ClaimResult> join =
      ClaimSync(*store, MakeClaim("shared", "alice", "r2", absl::Minutes(1), 1));
  ASSERT_TRUE(join.ok()) << join.status();
  EXPECT_EQ(join->kind, Kind::kFlightHeld);
}

// `claim` with its caller's clicks counting against the team budget of `team`.
ClickClaim WithTeam(ClickClaim claim, std::string team, std::vector<std::string> callers,
                    int64_t team_budget) {
  claim.team = std::move(team);
  claim.team_callers = std::move(callers);
  claim.team_monthly_budget = team_budget;
  return claim;
}

TEST_P(VerdictStoreContractTest, TeamBudgetIsSharedByItsCallersAndNeverOvershot) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::vector<std::string> team = {"alice", "bob"};
  // A click of last month does not count against this month's team budget.
  ClickClaim old = WithTeam(MakeClaim("old", "bob"), "ops", team, 10);
  old.requested_at = kT0 - absl::Hours(24 * 40);
  absl::StatusOr<ClaimResult> old_claim = ClaimSync(*a, old);
  ASSERT_TRUE(old_claim.ok()) << old_claim.status();
  ASSERT_EQ(old_claim->kind, Kind::kBegun);
  EXPECT_EQ(old_claim->team_month_clicks, 1);

  constexpr int kClaims = 32;
  constexpr int kThreads = 8;
  constexpr int64_t kTeamBudget = 10;
  absl::Mutex mu;
  std::vector<int64_t> begun_counts;  // team_month_clicks of each begun claim
  int spent = 0;
  int other = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kClaims; i += kThreads) {
        // Alternating the team's two callers, and the two processes.
        ClickClaim claim =
            WithTeam(MakeClaim(absl::StrCat("key", i), team[i % 2]), "ops", team, kTeamBudget);
        absl::StatusOr<ClaimResult> r = ClaimSync((i / 2) % 2 == 0 ? *a : *b, std::move(claim));
        absl::MutexLock lock(&mu);
        if (r.ok() && r->kind == Kind::kBegun) {
          begun_counts.push_back(r->team_month_clicks);
        } else if (r.ok() && r->kind == Kind::kTeamBudgetSpent) {
          ++spent;
          EXPECT_EQ(r->team_month_clicks, kTeamBudget);
        } else {
          ++other;
        }
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  // One at a time, each begun claim saw the ones before it: 1, 2, ..., 10 in some order.
  std::sort(begun_counts.begin(), begun_counts.end());
  std::vector<int64_t> one_to_budget;
  for (int64_t n = 1; n <= kTeamBudget; ++n) {
    one_to_budget.push_back(n);
  }
  EXPECT_EQ(begun_counts, one_to_budget);
  EXPECT_EQ(spent, kClaims - kTeamBudget);
  EXPECT_EQ(other, 0);
  absl::StatusOr<VerdictStore::ClickCounts> clicks = ClicksSinceSync(*a, kT0 - absl::Hours(24));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(ClicksOf(*clicks, "alice") + ClicksOf(*clicks, "bob"), kTeamBudget);

  // Without a team budget the team's callers are not limited by it.
  absl::StatusOr<ClaimResult> free_claim = ClaimSync(*b, MakeClaim("free key", "alice"));
  ASSERT_TRUE(free_claim.ok()) << free_claim.status();
  EXPECT_EQ(free_claim->kind, Kind::kBegun);
  EXPECT_EQ(free_claim->team_month_clicks, 0);
}

TEST_P(VerdictStoreContractTest, ANotSentClickGivesItsTeamBudgetBack) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const std::vector<std::string> team = {"alice", "bob"};
  absl::StatusOr<ClaimResult> first =
      ClaimSync(*store, WithTeam(MakeClaim("k1", "alice"), "ops", team, 1));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->kind, Kind::kBegun);
  EXPECT_EQ(first->team_month_clicks, 1);
  absl::StatusOr<ClaimResult> refused =
      ClaimSync(*store, WithTeam(MakeClaim("k2", "bob"), "ops", team, 1));
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(refused->kind, Kind::kTeamBudgetSpent);
  EXPECT_EQ(refused->team_month_clicks, 1);
  ASSERT_TRUE(CompleteClickSync(*store, first->click_id, Completed(ClickOutcome::kNotSent)).ok());
  absl::StatusOr<ClaimResult> after =
      ClaimSync(*store, WithTeam(MakeClaim("k2", "bob"), "ops", team, 1));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->kind, Kind::kBegun);
  EXPECT_EQ(after->team_month_clicks, 1);
}

TEST_P(VerdictStoreContractTest, ACallerBudgetIsReportedBeforeATeamBudget) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const std::vector<std::string> team = {"alice", "bob"};
  absl::StatusOr<ClaimResult> spend = ClaimSync(
      *store, WithTeam(MakeClaim("k1", "alice", "r", absl::Minutes(1), 1), "ops", team, 1));
  ASSERT_TRUE(spend.ok()) << spend.status();
  ASSERT_EQ(spend->kind, Kind::kBegun);
  EXPECT_EQ(spend->month_clicks, 1);
  EXPECT_EQ(spend->team_month_clicks, 1);
  // Both of alice's budgets are spent: hers is reported.
  absl::StatusOr<ClaimResult> alice = ClaimSync(
      *store, WithTeam(MakeClaim("k2", "alice", "r", absl::Minutes(1), 1), "ops", team, 1));
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->kind, Kind::kBudgetSpent);
  EXPECT_EQ(alice->month_clicks, 1);
  // bob has budget of his own left, but not his team.
  absl::StatusOr<ClaimResult> bob =
      ClaimSync(*store, WithTeam(MakeClaim("k2", "bob", "r", absl::Minutes(1), 5), "ops", team, 1));
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_EQ(bob->kind, Kind::kTeamBudgetSpent);
  EXPECT_EQ(bob->month_clicks, 0);
  EXPECT_EQ(bob->team_month_clicks, 1);
  // A held flight comes before the team's budget: alice's flight will answer bob.
  absl::StatusOr<ClaimResult> join = ClaimSync(
      *store, WithTeam(MakeClaim("k1", "bob", "r2", absl::Minutes(1), 5), "ops", team, 1));
  ASSERT_TRUE(join.ok()) << join.status();
  EXPECT_EQ(join->kind, Kind::kFlightHeld);
  // The refused claims wrote nothing.
  absl::StatusOr<VerdictStore::ClickCounts> clicks = ClicksSinceSync(*store, kT0 - absl::Hours(1));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_THAT(*clicks, ElementsAre(Pair("alice", 1)));
}

TEST_P(VerdictStoreContractTest, OnlyTheTeamsCallersCountTowardItsBudget) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  // Callers of open mode may be named with any printable ASCII: quotes, backslashes, commas,
  // braces, blanks, even NULL, none of which may change whom a backend counts.
  const std::string odd = R"(o"d\d, {x} NULL)";
  // Not of the team: carol, a caller whose name is a prefix of a teammate's, the odd name with
  // its backslash doubled (as an escaping gone wrong would read it) and "null".
  for (const std::string& outsider : {std::string("carol"), std::string("alic"),
                                      std::string(R"(o"d\\d, {x} NULL)"), std::string("null")}) {
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<ClaimResult> r =
          ClaimSync(*store, MakeClaim(absl::StrCat(outsider, "-", i), outsider));
      ASSERT_TRUE(r.ok() && r->kind == Kind::kBegun) << outsider;
    }
  }
  // Named twice, a caller is still counted once; "nobody" never clicked.
  const std::vector<std::string> team = {"alice", odd, "alice", "NULL", "nobody"};
  int64_t expected = 0;
  for (const std::string& caller : {odd, std::string("alice"), std::string("NULL"), odd}) {
    absl::StatusOr<ClaimResult> r =
        ClaimSync(*store, WithTeam(MakeClaim(absl::StrCat("t", expected), caller), "ops", team, 4));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->kind, Kind::kBegun) << caller;
    EXPECT_EQ(r->team_month_clicks, ++expected) << caller;
  }
  for (const std::string& caller : {std::string("alice"), std::string("NULL"), odd}) {
    absl::StatusOr<ClaimResult> refused =
        ClaimSync(*store, WithTeam(MakeClaim("t-last", caller), "ops", team, 4));
    ASSERT_TRUE(refused.ok()) << refused.status();
    EXPECT_EQ(refused->kind, Kind::kTeamBudgetSpent) << caller;
    EXPECT_EQ(refused->team_month_clicks, 4) << caller;
  }
  // Another team counts its own callers only.
  absl::StatusOr<ClaimResult> carol =
      ClaimSync(*store, WithTeam(MakeClaim("t5", "carol"), "support", {"carol", "dave"}, 3));
  ASSERT_TRUE(carol.ok()) << carol.status();
  EXPECT_EQ(carol->kind, Kind::kBegun);
  EXPECT_EQ(carol->team_month_clicks, 3);  // carol's two clicks, and this one
}

// A claim that says what its claimant read (newer_than) is told of a verdict stored since, in
// the claim's own atomic step, and writes nothing: the claimant answers with it.
TEST_P(VerdictStoreContractTest, AClaimFindsAVerdictStoredSinceItsClaimantRead) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const Verdict stored = MakeVerdict("192.0.2.10", kT0 + absl::Seconds(1), "ua", "other");
  Append(*store, stored);
  absl::StatusOr<VerdictStore::ClickCounts> before = ClicksSinceSync(*store, kT0 - absl::Hours(1));
  ASSERT_TRUE(before.ok()) << before.status();

  ClickClaim knew_none = MakeClaim("k", "alice", "r1", absl::Minutes(1), /*budget=*/1);
  knew_none.newer_than = absl::InfinitePast();
  absl::StatusOr<ClaimResult> landed = ClaimSync(*store, knew_none);
  ASSERT_TRUE(landed.ok()) << landed.status();
  ASSERT_EQ(landed->kind, Kind::kVerdictLanded);
  ASSERT_TRUE(landed->landed.has_value());
  EXPECT_EQ(landed->landed->checked_at, stored.checked_at);
  EXPECT_EQ(landed->landed->caller, "other");
  EXPECT_EQ(landed->landed->assessment.score, Score::kSuspicious);

  // By user agent when one is given: none is stored for this one.
  ClickClaim other_ua = knew_none;
  other_ua.flight_key = "k-ua";
  other_ua.user_agent = "curl/8";
  absl::StatusOr<ClaimResult> begun_ua = ClaimSync(*store, other_ua);
  ASSERT_TRUE(begun_ua.ok()) << begun_ua.status();
  EXPECT_EQ(begun_ua->kind, Kind::kBegun);
  // A verdict landed is reported before a spent budget (alice's one click is spent now) ...
  ClickClaim with_ua = knew_none;
  with_ua.user_agent = "ua";
  absl::StatusOr<ClaimResult> landed_ua = ClaimSync(*store, with_ua);
  ASSERT_TRUE(landed_ua.ok()) << landed_ua.status();
  EXPECT_EQ(landed_ua->kind, Kind::kVerdictLanded);
  // ... and after a held flight: the holder is about to store a newer one.
  ClickClaim held = knew_none;
  held.flight_key = "k-ua";
  absl::StatusOr<ClaimResult> held_result = ClaimSync(*store, held);
  ASSERT_TRUE(held_result.ok()) << held_result.status();
  EXPECT_EQ(held_result->kind, Kind::kFlightHeld);

  // The verdict it read is not news, and without newer_than nothing is looked for.
  ClickClaim knew_it = MakeClaim("k", "bob");
  knew_it.newer_than = stored.checked_at;
  absl::StatusOr<ClaimResult> begun = ClaimSync(*store, knew_it);
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_EQ(begun->kind, Kind::kBegun);
  absl::StatusOr<ClaimResult> unasked = ClaimSync(*store, MakeClaim("k2", "carol"));
  ASSERT_TRUE(unasked.ok()) << unasked.status();
  EXPECT_EQ(unasked->kind, Kind::kBegun);

  // The landed claims wrote nothing: only the three begun ones are clicks.
  absl::StatusOr<VerdictStore::ClickCounts> after = ClicksSinceSync(*store, kT0 - absl::Hours(1));
  ASSERT_TRUE(after.ok()) << after.status();
  for (const char* caller : {"alice", "bob", "carol"}) {
    EXPECT_EQ(ClicksOf(*after, caller), ClicksOf(*before, caller) + 1) << caller;
  }
}

// Two processes answer the same cold IPs as the engine does: claim; told held, wait and claim
// again; begun, complete with a verdict; landed, done. Each IP costs exactly one click, however
// the claims and completions interleave: a claim after another's completion finds its verdict.
TEST_P(VerdictStoreContractTest, ClaimantsThatClaimAgainAfterAHeldFlightPayOncePerKey) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  constexpr int kKeys = 12;
  constexpr int kClaimantsPerKey = 4;
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClaimantsPerKey; ++t) {
    threads.emplace_back([&, t] {
      VerdictStore& store = t % 2 == 0 ? *a : *b;
      for (int k = 0; k < kKeys; ++k) {
        const std::string ip = absl::StrCat("198.51.100.", k);
        ClickClaim claim = MakeClaim(ip, absl::StrCat("c", t), absl::StrCat("r", t));
        claim.ip = ip;
        claim.newer_than = absl::InfinitePast();
        const absl::Time give_up = absl::Now() + absl::Seconds(20);
        for (;;) {
          absl::StatusOr<ClaimResult> r = ClaimSync(store, claim);
          if (!r.ok() || absl::Now() > give_up) {
            ++failed;
            break;
          }
          if (r->kind == Kind::kVerdictLanded) {
            break;
          }
          if (r->kind == Kind::kBegun) {
            ClickCompletion done = Completed(ClickOutcome::kVerdict);
            done.verdict->ip = ip;
            if (!CompleteClickSync(store, r->click_id, std::move(done)).ok()) {
              ++failed;
            }
            break;
          }
          if (r->kind != Kind::kFlightHeld) {
            ++failed;
            break;
          }
          absl::SleepFor(absl::Milliseconds(1));
        }
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  EXPECT_EQ(failed.load(), 0);
  absl::StatusOr<VerdictStore::ClickCounts> clicks = ClicksSinceSync(*a, kT0 - absl::Hours(1));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  int64_t total = 0;
  for (const auto& [caller, n] : *clicks) {
    total += n;
  }
  EXPECT_EQ(total, kKeys) << "one click per key";
}

absl::Status SetAllowanceMarkSync(VerdictStore& store, AllowanceMark mark) {
  Waiter<absl::Status> waiter;
  store.SetAllowanceMark(mark, waiter.Callback());
  return waiter.Wait();
}

// One process is told the allowance is exhausted and marks it; every process's claims honour
// the mark: refused, except one probe per interval among all of them, until it runs out or is
// cleared.
TEST_P(VerdictStoreContractTest, TheAllowanceMarkRefusesClaimsButOneProbePerInterval) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const absl::Duration interval = absl::Minutes(10);
  ASSERT_TRUE(SetAllowanceMarkSync(*a, AllowanceMark{kT0 + absl::Hours(1), kT0 + interval}).ok());
  auto claim_at = [&](VerdictStore& store, std::string key, absl::Time at,
                      absl::Duration probe_interval) {
    ClickClaim c = MakeClaim(std::move(key));
    c.requested_at = at;
    c.allowance_probe_interval = probe_interval;
    return ClaimSync(store, c);
  };
  absl::StatusOr<ClaimResult> refused = claim_at(*b, "k1", kT0, interval);
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_EQ(refused->kind, Kind::kAllowanceExhausted);
  EXPECT_EQ(refused->allowance.exhausted_until, kT0 + absl::Hours(1));
  EXPECT_EQ(refused->allowance.next_probe, kT0 + interval);
  absl::StatusOr<VerdictStore::ClickCounts> none = ClicksSinceSync(*a, kT0 - absl::Hours(1));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty()) << "a refused claim writes nothing";
  // A claim that does not ask is not refused.
  absl::StatusOr<ClaimResult> unasked = claim_at(*b, "k0", kT0, absl::ZeroDuration());
  ASSERT_TRUE(unasked.ok()) << unasked.status();
  EXPECT_EQ(unasked->kind, Kind::kBegun);

  // The probe is due: the first claim (of either process) is it, the next waits an interval.
  const absl::Time due = kT0 + interval;
  absl::StatusOr<ClaimResult> probe = claim_at(*a, "k2", due, interval);
  ASSERT_TRUE(probe.ok()) << probe.status();
  EXPECT_EQ(probe->kind, Kind::kBegun);
  absl::StatusOr<ClaimResult> after = claim_at(*b, "k3", due + absl::Seconds(1), interval);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->kind, Kind::kAllowanceExhausted);
  EXPECT_EQ(after->allowance.next_probe, due + interval);

  // It runs out at exhausted_until ...
  absl::StatusOr<ClaimResult> period_over = claim_at(*b, "k4", kT0 + absl::Hours(1), interval);
  ASSERT_TRUE(period_over.ok()) << period_over.status();
  EXPECT_EQ(period_over->kind, Kind::kBegun);
  // ... or when cleared.
  ASSERT_TRUE(SetAllowanceMarkSync(*b, AllowanceMark{kT0 + absl::Hours(1), due + interval}).ok());
  absl::StatusOr<ClaimResult> again = claim_at(*a, "k5", due + absl::Seconds(2), interval);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->kind, Kind::kAllowanceExhausted);
  ASSERT_TRUE(SetAllowanceMarkSync(*b, AllowanceMark{}).ok());
  absl::StatusOr<ClaimResult> cleared = claim_at(*a, "k5", due + absl::Seconds(3), interval);
  ASSERT_TRUE(cleared.ok()) << cleared.status();
  EXPECT_EQ(cleared->kind, Kind::kBegun);
}

TEST_P(VerdictStoreContractTest, InvalidClaimsAndLeasesAreAnsweredThroughTheCallback) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(ClaimSync(*store, MakeClaim("")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClaimSync(*store, MakeClaim("k", "alice", "r", absl::ZeroDuration())).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClaimSync(*store, MakeClaim("k", "alice", "r", absl::Minutes(1), -1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A team budget needs a team, and the team's callers must include the claim's.
  EXPECT_EQ(ClaimSync(*store, WithTeam(MakeClaim("k"), "ops", {"alice"}, -1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClaimSync(*store, WithTeam(MakeClaim("k"), "", {"alice"}, 5)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClaimSync(*store, WithTeam(MakeClaim("k"), "ops", {"bob"}, 5)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClaimSync(*store, WithTeam(MakeClaim("k"), "ops", {}, 5)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TryLeaseSync(*store, "", "r", absl::Minutes(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TryLeaseSync(*store, "prune", "", absl::Minutes(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TryLeaseSync(*store, "prune", "r", absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing was written for them: the key is free.
  absl::StatusOr<ClaimResult> ok = ClaimSync(*store, MakeClaim("k"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->kind, Kind::kBegun);
}

TEST_P(VerdictStoreContractTest, ANamedLeaseHasOneHolderUntilItRunsOut) {
  FakeClock clock(kT0);
  std::unique_ptr<VerdictStore> a = Open(&clock);
  ASSERT_NE(a, nullptr);
  EXPECT_THAT(TryLeaseSync(*a, "prune", "r1", absl::Milliseconds(300)), true);
  EXPECT_THAT(TryLeaseSync(*a, "prune", "r1", absl::Milliseconds(300)), true);  // renewed
  EXPECT_THAT(TryLeaseSync(*a, "prune", "r2", absl::Minutes(1)), false);
  EXPECT_THAT(TryLeaseSync(*a, "other chore", "r2", absl::Minutes(1)), true);
  // Once r1 stops renewing, r2 gets it, and r1 no longer does.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  absl::StatusOr<bool> taken = false;
  while (taken.ok() && !*taken && absl::Now() < give_up) {
    clock.Advance(absl::Milliseconds(301));
    absl::SleepFor(absl::Milliseconds(20));
    taken = TryLeaseSync(*a, "prune", "r2", absl::Minutes(1));
  }
  EXPECT_THAT(taken, true);
  EXPECT_THAT(TryLeaseSync(*a, "prune", "r1", absl::Minutes(1)), false);
}

}  // namespace
}  // namespace verdictd
