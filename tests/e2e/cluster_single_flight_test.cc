// End-to-end single flight across replicas: several verdictd processes on one PostgreSQL send
// ClickPatrol at most one request per IP, whichever replica each caller asks, share the
// answer, keep one set of usage counters, and take over a flight whose owner was killed once
// its lease has run out.
//
// "Exactly N simulator requests" is the assertion that matters: every request is a paid click.

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_fixture.h"
#include "tests/support/harness.h"

namespace verdictd::testing::cluster {
namespace {

using Stub = pb::VerdictService::Stub;

// --- A Zipf trace over three replicas ------------------------------------------------------

TEST_F(ClusterTest, ZipfTraceSpendsOneClickPerDistinctIp) {
  constexpr int kReplicas = 3;
  constexpr int kCallers = 64;
  constexpr int kChecks = 3000;
  constexpr int kAddresses = 400;
  constexpr int kChannelsPerReplica = 8;
  constexpr int64_t kAllowance = 1'000'000;
  ASSERT_NO_FATAL_FAILURE(StartSimulator({"--latency=100ms"}));
  ASSERT_NO_FATAL_FAILURE(
      StartReplicas(kReplicas, {absl::StrCat("--monthly_allowance=", kAllowance)}));

  const std::vector<int> trace = ZipfTrace(kChecks, kAddresses, 1.0, /*seed=*/20261202);
  const std::set<int> distinct(trace.begin(), trace.end());
  RecordProperty("distinct_ips", static_cast<int>(distinct.size()));
  // Check j goes to replica j % 3 and is asked by caller j % 64: every caller's checks go round
  // the replicas (64 % 3 == 1), so each caller's usage is counted by all three.
  auto replica_of = [](int j) { return j % kReplicas; };
  auto caller_of = [](int j) { return absl::StrCat("zipf-", j % kCallers); };

  std::vector<std::vector<std::unique_ptr<Stub>>> stubs(kReplicas);
  for (int r = 0; r < kReplicas; ++r) {
    for (int k = 0; k < kChannelsPerReplica; ++k) {
      stubs[r].push_back(replica(r).NewStub());
      WarmUp(*stubs[r].back(), "warm-up");
    }
  }
  std::vector<grpc::Status> statuses(kChecks);
  std::vector<pb::CheckIpResponse> responses(kChecks);
  const absl::Time start = absl::Now();
  RunTogether(
      kCallers, [](int) {},
      [&](int c) {
        for (int j = c; j < kChecks; j += kCallers) {
          statuses[j] = CheckIp(*stubs[replica_of(j)][c % kChannelsPerReplica],
                                PublicIp(60, trace[j]), &responses[j], caller_of(j));
        }
      });
  RecordProperty("wall_ms", static_cast<int>(absl::ToInt64Milliseconds(absl::Now() - start)));

  int failed = 0;
  std::string first_failure;
  std::map<int, int> spender;  // rank -> the check that paid for it
  std::map<int, int> paid_more;
  std::vector<int> owned_by_replica(kReplicas);
  for (int j = 0; j < kChecks; ++j) {
    if (!statuses[j].ok()) {
      if (failed++ == 0) {
        first_failure =
            absl::StrCat("check ", j, " (", PublicIp(60, trace[j]), " on replica ", replica_of(j),
                         "): ", statuses[j].error_code(), " ", statuses[j].error_message());
      }
      continue;
    }
    EXPECT_EQ(responses[j].verdict().ip(), PublicIp(60, trace[j]));
    if (responses[j].click_spent()) {
      if (!spender.emplace(trace[j], j).second) {
        ++paid_more[trace[j]];
      }
      ++owned_by_replica[replica_of(j)];
    }
  }
  ASSERT_EQ(failed, 0) << "every answer ok; first failure: " << first_failure;
  EXPECT_EQ(spender.size(), distinct.size()) << "one caller paid for each distinct IP";
  EXPECT_TRUE(paid_more.empty()) << paid_more.size() << " IPs were paid for more than once, e.g. "
                                 << PublicIp(60, paid_more.begin()->first);
  for (int r = 0; r < kReplicas; ++r) {
    // The trace is spread, so every replica owned flights: the single flight really was shared.
    EXPECT_GT(owned_by_replica[r], 0) << "replica " << r;
    RecordProperty(absl::StrCat("clicks_by_replica_", r), owned_by_replica[r]);
  }

  // Everyone asking about an IP got the verdict its one click produced.
  int differing = 0;
  std::string first_difference;
  for (int j = 0; j < kChecks; ++j) {
    auto paid = spender.find(trace[j]);
    if (paid == spender.end()) {
      continue;
    }
    ::testing::AssertionResult same =
        SameMessage(responses[paid->second].verdict(), responses[j].verdict());
    if (!same && differing++ == 0) {
      first_difference =
          absl::StrCat("check ", j, " on replica ", replica_of(j), " vs check ", paid->second,
                       " on replica ", replica_of(paid->second), ": ", same.message());
    }
  }
  EXPECT_EQ(differing, 0) << "answers differ from the verdict that was paid for; first: "
                          << first_difference;

  // ClickPatrol saw each distinct IP exactly once.
  const nlohmann::json stats = sim().Stats();
  EXPECT_EQ(stats.at("requests").get<int64_t>(), static_cast<int64_t>(distinct.size()));
  int asked_twice = 0;
  for (const auto& [ip, n] : stats.at("by_ip").items()) {
    asked_twice += n.get<int64_t>() != 1 ? 1 : 0;
  }
  EXPECT_EQ(asked_twice, 0);
  EXPECT_EQ(stats.at("by_ip").size(), distinct.size());
  EXPECT_EQ(SqlInt("SELECT count(*) FROM clicks"), static_cast<int64_t>(distinct.size()));
  EXPECT_EQ(SqlInt("SELECT count(*) FROM verdicts"), static_cast<int64_t>(distinct.size()));
  ExpectLedgerConsistent();

  // What each caller did, as the callers saw it.
  std::map<std::string, pb::CallerUsage> expected;
  std::map<std::string, int64_t> cache_answers;
  for (int j = 0; j < kChecks; ++j) {
    pb::CallerUsage& e = expected[caller_of(j)];
    e.set_caller(caller_of(j));
    e.set_requests(e.requests() + 1);
    e.set_clicks(e.clicks() + (responses[j].click_spent() ? 1 : 0));
    cache_answers[caller_of(j)] += responses[j].source() == pb::SOURCE_CACHE ? 1 : 0;
  }

  // Usage counters are flushed by each replica in the background (every second) into the
  // shared database: once every request is counted, every replica reports the same numbers.
  std::vector<pb::GetUsageResponse> usage(kReplicas);
  auto observe = [&]() -> absl::StatusOr<std::string> {
    std::string seen;
    for (int r = 0; r < kReplicas; ++r) {
      usage[r].Clear();
      const grpc::Status status = UsageOfEveryone(replica(r).stub(), &usage[r]);
      if (!status.ok()) {
        return absl::InternalError(
            absl::StrCat("GetUsage on replica ", r, ": ", status.error_message()));
      }
      absl::StrAppend(&seen, r == 0 ? "" : ", ", "replica ", r, ": ", Totals(usage[r]).requests(),
                      " requests ", Totals(usage[r]).cache_hits(), " hits");
    }
    return seen;
  };
  // Settled once the per-caller counters agree; the whole answers are compared after.
  auto settled = [&](const std::string&) {
    for (int r = 0; r < kReplicas; ++r) {
      pb::GetUsageResponse first = usage[0];
      pb::GetUsageResponse other = usage[r];
      first.clear_allowance();
      other.clear_allowance();
      if (Totals(usage[r]).requests() != kChecks || !SameMessage(first, other)) {
        return false;
      }
    }
    return true;
  };
  EXPECT_TRUE(WaitUntil("every replica to report the same usage of all 3000 checks", observe,
                        settled, absl::Seconds(10), absl::Milliseconds(200)));
  for (int r = 0; r < kReplicas; ++r) {
    SCOPED_TRACE(absl::StrCat("replica ", r));
    EXPECT_TRUE(SameMessage(usage[0], usage[r])) << "replicas disagree on usage";
    ASSERT_EQ(usage[r].callers_size(), kCallers);
    for (const pb::CallerUsage& got : usage[r].callers()) {
      SCOPED_TRACE(got.caller());
      const pb::CallerUsage& want = expected[got.caller()];
      EXPECT_EQ(got.requests(), want.requests());
      EXPECT_EQ(got.clicks(), want.clicks());
      EXPECT_EQ(got.upstream_errors(), 0);
      // Answers that shared another caller's flight are not hits from the store.
      EXPECT_LE(got.cache_hits(), cache_answers[got.caller()]);
    }
    const pb::CallerUsage total = Totals(usage[r]);
    EXPECT_EQ(total.clicks(), static_cast<int64_t>(distinct.size()));
    EXPECT_GT(total.cache_hits(), 0);
    // The plan's allowance is the cluster's: every replica counts every replica's clicks.
    EXPECT_EQ(usage[r].allowance().monthly_allowance(), kAllowance);
    EXPECT_EQ(usage[r].allowance().clicks_used(), static_cast<int64_t>(distinct.size()));
    EXPECT_EQ(usage[r].allowance().clicks_left(),
              kAllowance - static_cast<int64_t>(distinct.size()));
  }
}

// --- One cold IP, everyone at once ---------------------------------------------------------

TEST_F(ClusterTest, ConcurrentCallersOnEveryReplicaShareOneClick) {
  constexpr int kReplicas = 3;
  constexpr int kCallers = 32;
  // Not a multiple of the waiters' fallback poll (1 s), so that being woken by the
  // notification and by the poll are told apart.
  constexpr absl::Duration kLatency = absl::Milliseconds(1500);
  ASSERT_NO_FATAL_FAILURE(StartSimulator({"--latency=1500ms"}));
  ASSERT_NO_FATAL_FAILURE(StartReplicas(kReplicas));
  const std::string ip = PublicIp(61, 7);

  std::vector<std::unique_ptr<Stub>> stubs;
  std::vector<std::string> callers;
  for (int i = 0; i < kCallers; ++i) {
    stubs.push_back(replica(i % kReplicas).NewStub());
    callers.push_back(absl::StrCat("caller-", i));
  }
  std::vector<grpc::Status> statuses(kCallers);
  std::vector<pb::CheckIpResponse> responses(kCallers);
  std::vector<absl::Duration> took(kCallers);
  RunTogether(
      kCallers, [&](int i) { WarmUp(*stubs[i], callers[i]); },
      [&](int i) {
        const absl::Time start = absl::Now();
        statuses[i] = CheckIp(*stubs[i], ip, &responses[i], callers[i]);
        took[i] = absl::Now() - start;
      });

  RecordProperty(
      "slowest_ms",
      static_cast<int>(absl::ToInt64Milliseconds(*std::max_element(took.begin(), took.end()))));
  int spender = -1;
  int spent = 0;
  for (int i = 0; i < kCallers; ++i) {
    SCOPED_TRACE(absl::StrCat(callers[i], " on replica ", i % kReplicas));
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_code() << " " << statuses[i].error_message();
    if (responses[i].click_spent()) {
      ++spent;
      spender = i;
    }
  }
  EXPECT_EQ(sim().Requests(), 1);
  ASSERT_EQ(spent, 1) << "exactly one caller pays";
  for (int i = 0; i < kCallers; ++i) {
    SCOPED_TRACE(absl::StrCat(callers[i], " on replica ", i % kReplicas));
    // The same verdict, field for field: one ClickPatrol answer, not three that agree.
    EXPECT_TRUE(SameMessage(responses[spender].verdict(), responses[i].verdict()));
    EXPECT_EQ(responses[i].verdict().caller(), callers[spender]) << "it names who paid";
    // verdict.proto: SOURCE_UPSTREAM "asked ClickPatrol for this request (or shared a concurrent
    // request)" - also when the request was another replica's.
    EXPECT_EQ(responses[i].source(), pb::SOURCE_UPSTREAM);
    // Waiters on the other replicas are woken by the notification when the verdict lands, not
    // by their fallback poll (every second: it would answer them at 2 s) or the lease (41 s).
    // Under a sanitizer only the lease is ruled out.
    EXPECT_LT(took[i], kLatency + (kSanitized ? absl::Seconds(5) : absl::Milliseconds(450)))
        << absl::FormatDuration(took[i]);
  }
  EXPECT_EQ(SqlInt("SELECT count(*) FROM clicks"), 1);
  EXPECT_EQ(SqlText("SELECT convert_from(caller, 'UTF8') FROM clicks"), callers[spender]);
  EXPECT_EQ(SqlInt("SELECT count(*) FROM verdicts"), 1);
  ExpectLedgerConsistent();

  // Afterwards every replica answers it from the store.
  for (int r = 0; r < kReplicas; ++r) {
    SCOPED_TRACE(absl::StrCat("replica ", r));
    pb::CheckIpResponse again;
    ASSERT_TRUE(CheckIp(replica(r).stub(), ip, &again, "later").ok());
    EXPECT_EQ(again.source(), pb::SOURCE_CACHE);
    EXPECT_FALSE(again.click_spent());
    EXPECT_TRUE(SameMessage(responses[spender].verdict(), again.verdict()));
  }
  EXPECT_EQ(sim().Requests(), 1);
}

// --- A miss that waited for an upstream slot ------------------------------------------------

// A miss that finds nothing in the store but must queue for an upstream slot claims its key only
// when the slot frees. If another replica landed the verdict meanwhile (and released its claim),
// the claim succeeds: the miss must still not pay for the IP again.
TEST_F(ClusterTest, QueuedMissDoesNotPayForAVerdictAnotherReplicaLanded) {
  ASSERT_NO_FATAL_FAILURE(StartSimulator({"--latency=500ms"}));
  const std::string blocker = PublicIp(70, 1);
  const std::string ip = PublicIp(70, 2);
  // The blocker holds replica 1's only upstream slot until its 3 s timeout.
  ASSERT_NO_FATAL_FAILURE(SetSimRules(blocker + " error=hang\n"));
  ASSERT_NO_FATAL_FAILURE(StartReplicas(
      2, {"--upstream_concurrency=1", "--upstream_timeout=3s", "--upstream_connect_timeout=200ms",
          "--upstream_attempts=1", "--breaker_failures=0"}));
  std::unique_ptr<Stub> a = replica(0).NewStub();
  std::unique_ptr<Stub> b = replica(1).NewStub();
  std::unique_ptr<Stub> b2 = replica(1).NewStub();
  auto in_flight_is = [&](int64_t want) {
    return WaitUntil(
        absl::StrCat(want, " requests in flight at the simulator"),
        [&] { return sim().InFlight(); }, [want](int64_t n) { return n == want; },
        absl::Seconds(10), absl::Milliseconds(5));
  };

  grpc::Status blocker_status;
  pb::CheckIpResponse blocker_response;
  grpc::Status owner_status;
  pb::CheckIpResponse owner_response;
  grpc::Status queued_status;
  pb::CheckIpResponse queued_response;
  ThreadGroup threads;
  threads.Start([&] { blocker_status = CheckIp(*b, blocker, &blocker_response, "blocker"); });
  ASSERT_TRUE(in_flight_is(1));
  // Replica 0 pays for `ip`: its claim is held from here until its verdict lands (500 ms).
  threads.Start([&] { owner_status = CheckIp(*a, ip, &owner_response, "owner"); });
  ASSERT_TRUE(in_flight_is(2));
  // Replica 1 is asked for `ip` while the verdict is on its way: nothing in the store yet, and
  // no free slot, so the miss queues (unclaimed) behind the blocker.
  threads.Start([&] { queued_status = CheckIp(*b2, ip, &queued_response, "queued"); });
  threads.Join();

  ASSERT_TRUE(owner_status.ok()) << owner_status.error_message();
  EXPECT_TRUE(owner_response.click_spent());
  EXPECT_EQ(blocker_status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << "the blocker was to time out: " << blocker_status.error_message();
  ASSERT_TRUE(queued_status.ok()) << queued_status.error_code() << " "
                                  << queued_status.error_message();
  EXPECT_FALSE(queued_response.click_spent())
      << "paid again for a verdict that replica 0 had landed while this miss waited for a slot";
  EXPECT_TRUE(SameMessage(owner_response.verdict(), queued_response.verdict()));
  const nlohmann::json stats = sim().Stats();
  EXPECT_EQ(stats.at("by_ip").value(ip, int64_t{0}), 1) << ip << " was sent to ClickPatrol twice";
  EXPECT_EQ(SqlInt(absl::StrCat("SELECT count(*) FROM clicks WHERE ip = '", ip, "'")), 1);
  ExpectLedgerConsistent();
}

// --- The owner of a flight is killed ---------------------------------------------------------

TEST_F(ClusterTest, FlightOfAKilledOwnerIsTakenOverAfterItsLease) {
  constexpr absl::Duration kLease = absl::Seconds(7);
  ASSERT_NO_FATAL_FAILURE(StartSimulator());
  const std::string ip = PublicIp(62, 1);
  // The owner's request hangs until its client goes away: the kill lands while it is in flight.
  ASSERT_NO_FATAL_FAILURE(SetSimRules(ip + " error=hang\n"));
  // The server requires a lease above the whole upstream exchange + 5 s (here 200 ms connect +
  // 1 s, one attempt: 6.2 s), so that only a dead owner ever loses it. The owner is killed
  // well within its 1 s upstream timeout.
  ASSERT_NO_FATAL_FAILURE(StartReplicas(
      3, {"--flight_lease=7s", "--upstream_timeout=1s", "--upstream_connect_timeout=200ms",
          "--upstream_attempts=1", "--breaker_failures=0"}));
  std::unique_ptr<Stub> a = replica(0).NewStub();
  std::unique_ptr<Stub> b = replica(1).NewStub();
  std::unique_ptr<Stub> c = replica(2).NewStub();

  struct Waiter {
    Stub* stub = nullptr;
    std::string caller;
    grpc::Status status;
    pb::CheckIpResponse response;
    absl::Time answered_at;
  };
  std::vector<Waiter> waiters(2);
  waiters[0].stub = b.get();
  waiters[0].caller = "waiter-b";
  waiters[1].stub = c.get();
  waiters[1].caller = "waiter-c";
  grpc::Status owner_status;
  pb::CheckIpResponse owner_response;
  ThreadGroup threads;
  ThreadGroup owner;
  owner.Start([&] { owner_status = CheckIp(*a, ip, &owner_response, "owner"); });
  // The claim and the pending ledger row are committed before the request leaves, so from here
  // the lease is running.
  ASSERT_TRUE(WaitUntil(
      "the owner's request in flight at the simulator", [&] { return sim().InFlight(); },
      [](int64_t n) { return n == 1; }, absl::Seconds(10), absl::Milliseconds(5)));
  const absl::Time in_flight_at = absl::Now();
  for (Waiter& w : waiters) {
    threads.Start([&w, &ip] {
      w.status = CheckIp(*w.stub, ip, &w.response, w.caller);
      w.answered_at = absl::Now();
    });
  }
  // Whether the waiters' checks reach their replicas before or just after the kill, they find
  // the dead owner's claim held until its lease runs out.
  replica(0).Crash();
  owner.Join();
  ASSERT_FALSE(owner_status.ok())
      << "the owner answered before it was killed (its upstream timeout ran out first?)";

  // The hanging request notices that its client has gone; only then are the rules cleared, so
  // that the takeover's request (a lease later) gets a verdict.
  ASSERT_TRUE(WaitUntil(
      "the dead owner's request to end at the simulator", [&] { return sim().InFlight(); },
      [](int64_t n) { return n == 0; }, absl::Seconds(10), absl::Milliseconds(10)));
  ASSERT_NO_FATAL_FAILURE(SetSimRules(""));
  ASSERT_LT(absl::Now() - in_flight_at, kLease - absl::Milliseconds(500))
      << "too slow to clear the rules before the lease ran out";
  threads.Join();

  int taker = -1;
  for (int i = 0; i < 2; ++i) {
    Waiter& w = waiters[i];
    SCOPED_TRACE(w.caller);
    ASSERT_TRUE(w.status.ok()) << w.status.error_code() << " " << w.status.error_message();
    const absl::Duration waited = w.answered_at - in_flight_at;
    RecordProperty(absl::StrCat(w.caller, "_ms"),
                   static_cast<int>(absl::ToInt64Milliseconds(waited)));
    // Not before the lease (the claim was taken a little before in_flight_at), and not long
    // after it.
    EXPECT_GE(waited, kLease - absl::Milliseconds(300)) << absl::FormatDuration(waited);
    EXPECT_LT(waited, kLease + absl::Seconds(3)) << absl::FormatDuration(waited);
    EXPECT_EQ(w.response.verdict().ip(), ip);
    EXPECT_EQ(w.response.source(), pb::SOURCE_UPSTREAM);
    if (w.response.click_spent()) {
      EXPECT_EQ(taker, -1) << "both waiters paid";
      taker = i;
    }
  }
  ASSERT_NE(taker, -1) << "one waiter took the flight over and paid for it";
  EXPECT_TRUE(
      SameMessage(waiters[taker].response.verdict(), waiters[1 - taker].response.verdict()));
  EXPECT_EQ(waiters[1 - taker].response.verdict().caller(), waiters[taker].caller);

  // Two requests: the dead owner's (nobody knows whether ClickPatrol answered it, so it stays
  // billed) and the takeover's.
  EXPECT_EQ(sim().Requests(), 2);
  const int64_t billed = SqlInt("SELECT count(*) FROM clicks WHERE outcome != 3");
  EXPECT_GE(billed, sim().Requests()) << "a request left without a ledger row";
  EXPECT_EQ(billed, 2);
  EXPECT_EQ(SqlText("SELECT string_agg(convert_from(caller, 'UTF8') || ':' || outcome, ',' "
                    "ORDER BY caller) FROM clicks"),
            absl::StrCat("owner:0,", waiters[taker].caller, ":1"))
      << "the dead owner's row stays pending (billed), the taker's has its verdict";
  EXPECT_EQ(SqlInt("SELECT count(*) FROM verdicts"), 1);
  ExpectLedgerConsistent();

  // The survivors serve it from the store, and count the dead owner's click as billed.
  for (int r = 1; r <= 2; ++r) {
    SCOPED_TRACE(absl::StrCat("replica ", r));
    pb::CheckIpResponse again;
    ASSERT_TRUE(CheckIp(replica(r).stub(), ip, &again, "later").ok());
    EXPECT_EQ(again.source(), pb::SOURCE_CACHE);
    pb::GetUsageResponse usage;
    ASSERT_TRUE(UsageOfEveryone(replica(r).stub(), &usage).ok());
    std::map<std::string, int64_t> clicks;
    for (const pb::CallerUsage& u : usage.callers()) {
      clicks[u.caller()] = u.clicks();
    }
    EXPECT_EQ(clicks["owner"], 1);
    EXPECT_EQ(clicks[waiters[taker].caller], 1);
    EXPECT_EQ(clicks[waiters[1 - taker].caller], 0);
  }
  EXPECT_EQ(sim().Requests(), 2);
}

}  // namespace
}  // namespace verdictd::testing::cluster
