// End-to-end PostgreSQL outage under load: while the database is down, replicas report
// NOT_SERVING, fail misses with UNAVAILABLE without sending anything (a click without a durable
// ledger row would be lost money), and keep answering hits from their hot caches; once it is
// back they recover on their own, without a restart.

#include <signal.h>

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_fixture.h"
#include "tests/e2e/ops_fixture.h"
#include "tests/support/harness.h"

namespace verdictd::testing::cluster {
namespace {

using Stub = pb::VerdictService::Stub;

// What the load saw in one phase of the outage.
struct PhaseCounts {
  int64_t hits_ok = 0;
  int64_t hits_failed = 0;
  int64_t misses_ok = 0;
  int64_t misses_unavailable = 0;
  int64_t misses_other = 0;  // any other failure
  std::string first_hit_failure;
  std::string first_miss_failure;
};

enum Phase {
  kUp = 0,         // before the stop
  kStopping = 1,   // stop issued, not yet seen by health (anything may happen; not asserted)
  kDown = 2,       // NOT_SERVING seen on every replica and nothing in flight upstream
  kStarting = 3,   // start issued, not yet recovered (not asserted)
  kRecovered = 4,  // SERVING and a miss answered on every replica
  kPhases = 5,
};

TEST_F(ClusterTest, PostgresOutageFailsMissesServesHotHitsAndRecovers) {
  constexpr int kReplicas = 2;
  constexpr int kHot = 8;
  constexpr int kLoadThreads = 4;
  ASSERT_NO_FATAL_FAILURE(StartSimulator({"--latency=20ms"}));
  ASSERT_NO_FATAL_FAILURE(StartReplicas(kReplicas));
  std::vector<std::shared_ptr<grpc::Channel>> health;
  for (int r = 0; r < kReplicas; ++r) {
    health.push_back(ops::PlainChannel(replica(r).port()));
    ASSERT_TRUE(ops::WaitForHealth(health[r], ops::kServing, absl::Seconds(10)));
  }

  // Hot IPs: paid for once, then in every replica's hot cache (the other replica read it from
  // the database).
  for (int i = 0; i < kHot; ++i) {
    for (int r = 0; r < kReplicas; ++r) {
      pb::CheckIpResponse response;
      const grpc::Status status = CheckIp(replica(r).stub(), PublicIp(64, i), &response, "warm");
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(response.source(), r == 0 ? pb::SOURCE_UPSTREAM : pb::SOURCE_CACHE);
    }
  }
  ASSERT_EQ(sim().Requests(), kHot);

  std::atomic<int> phase{kUp};
  std::atomic<bool> stop{false};
  std::atomic<int> next_miss{0};
  absl::Mutex mu;
  std::array<PhaseCounts, kPhases> counts;
  std::vector<std::thread> load;
  for (int t = 0; t < kLoadThreads; ++t) {
    load.emplace_back([&, t] {
      std::unique_ptr<Stub> stub = replica(t % kReplicas).NewStub();
      for (int k = 0; !stop.load(); ++k) {
        pb::CheckIpResponse hit_response;
        const int before_hit = phase.load();
        const grpc::Status hit = CheckIp(*stub, PublicIp(64, k % kHot), &hit_response, "load");
        const int after_hit = phase.load();
        const std::string miss_ip = PublicIp(65, next_miss.fetch_add(1));
        pb::CheckIpResponse miss_response;
        const int before_miss = phase.load();
        const grpc::Status miss = CheckIp(*stub, miss_ip, &miss_response, "load");
        const int after_miss = phase.load();
        absl::MutexLock lock(&mu);
        // A call is counted in a phase only if it began and ended in it.
        if (before_hit == after_hit) {
          PhaseCounts& c = counts[before_hit];
          if (hit.ok() && hit_response.source() == pb::SOURCE_CACHE) {
            ++c.hits_ok;
          } else if (c.hits_failed++ == 0) {
            c.first_hit_failure =
                absl::StrCat("replica ", t % kReplicas, ": ", hit.error_code(), " ",
                             hit.error_message(), " source ", hit_response.source());
          }
        }
        if (before_miss == after_miss) {
          PhaseCounts& c = counts[before_miss];
          if (miss.ok()) {
            ++c.misses_ok;
          } else if (miss.error_code() == grpc::StatusCode::UNAVAILABLE) {
            ++c.misses_unavailable;
          } else {
            ++c.misses_other;
          }
          if (!miss.ok() && c.first_miss_failure.empty()) {
            c.first_miss_failure = absl::StrCat(miss_ip, " on replica ", t % kReplicas, ": ",
                                                miss.error_code(), " ", miss.error_message());
          }
        }
      }
    });
  }
  auto count_of = [&](int p, int64_t PhaseCounts::*field) {
    absl::MutexLock lock(&mu);
    return counts[p].*field;
  };
  auto stop_load = [&] {
    stop = true;
    for (std::thread& t : load) {
      t.join();
    }
    load.clear();
  };
  // Joined however the test ends (an ASSERT returns early).
  struct JoinOnExit {
    std::function<void()> join;
    ~JoinOnExit() { join(); }
  } join_on_exit{stop_load};
  ASSERT_TRUE(WaitUntil(
      "misses answered under load", [&] { return count_of(kUp, &PhaseCounts::misses_ok); },
      [](int64_t n) { return n >= 20; }, absl::Seconds(15)));

  phase = kStopping;
  const absl::Status stopped = pg().Stop();
  ASSERT_TRUE(stopped.ok()) << stopped;
  for (int r = 0; r < kReplicas; ++r) {
    EXPECT_TRUE(ops::WaitForHealth(health[r], ops::kNotServing, absl::Seconds(10)))
        << "replica " << r;
  }
  // Requests that left before the stop are counted when they arrive; let them finish so that
  // the count is final.
  EXPECT_TRUE(WaitUntil(
      "no request in flight at the simulator", [&] { return sim().InFlight(); },
      [](int64_t n) { return n == 0; }, absl::Seconds(5)));
  const int64_t requests_when_down = sim().Requests();
  phase = kDown;

  // While it is down: misses fail with nothing sent; hits are served from memory.
  for (int r = 0; r < kReplicas; ++r) {
    SCOPED_TRACE(absl::StrCat("replica ", r));
    pb::CheckIpResponse response;
    const grpc::Status miss = CheckIp(replica(r).stub(), PublicIp(66, r), &response, "probe");
    EXPECT_EQ(miss.error_code(), grpc::StatusCode::UNAVAILABLE) << miss.error_message();
    const grpc::Status hit = CheckIp(replica(r).stub(), PublicIp(64, 0), &response, "probe");
    ASSERT_TRUE(hit.ok()) << hit.error_code() << " " << hit.error_message();
    EXPECT_EQ(response.source(), pb::SOURCE_CACHE);
  }
  EXPECT_TRUE(WaitUntil(
      "misses refused under load while the database is down",
      [&] { return count_of(kDown, &PhaseCounts::misses_unavailable); },
      [](int64_t n) { return n >= 20; }, absl::Seconds(10)));
  EXPECT_EQ(sim().Requests(), requests_when_down) << "a miss was sent while the database was down";
  EXPECT_EQ(sim().InFlight(), 0);

  phase = kStarting;
  const absl::Time restart = absl::Now();
  const absl::Status started = pg().Start();
  ASSERT_TRUE(started.ok()) << started;
  for (int r = 0; r < kReplicas; ++r) {
    const WaitResult<int> up = ops::WaitForHealth(health[r], ops::kServing, absl::Seconds(15));
    EXPECT_TRUE(up) << "replica " << r;
    RecordProperty(absl::StrCat("serving_again_ms_replica_", r),
                   static_cast<int>(absl::ToInt64Milliseconds(absl::Now() - restart)));
  }
  for (int r = 0; r < kReplicas; ++r) {
    int n = 0;
    grpc::Status last;
    EXPECT_TRUE(WaitUntil(
        absl::StrCat("a miss answered by replica ", r),
        [&] {
          pb::CheckIpResponse response;
          last = CheckIp(replica(r).stub(), PublicIp(67, r * 1000 + n++), &response, "probe");
          return last.ok();
        },
        absl::Seconds(15), absl::Milliseconds(100)))
        << last.error_code() << " " << last.error_message();
  }
  phase = kRecovered;
  EXPECT_TRUE(WaitUntil(
      "misses answered under load after the restart",
      [&] { return count_of(kRecovered, &PhaseCounts::misses_ok); },
      [](int64_t n) { return n >= 20; }, absl::Seconds(15)));
  stop_load();

  for (int p = 0; p < kPhases; ++p) {
    SCOPED_TRACE(absl::StrCat("phase ", p));
    const PhaseCounts& c = counts[p];
    RecordProperty(absl::StrCat("phase_", p),
                   absl::StrCat(c.hits_ok, " hits, ", c.misses_ok, " misses ok, ",
                                c.misses_unavailable, " unavailable, ", c.misses_other, " other"));
    // The hot cache needs no database, whatever state it is in.
    EXPECT_EQ(c.hits_failed, 0) << c.first_hit_failure;
  }
  EXPECT_EQ(counts[kUp].misses_unavailable + counts[kUp].misses_other, 0)
      << "misses failed before the outage: " << counts[kUp].first_miss_failure;
  EXPECT_EQ(counts[kDown].misses_ok, 0);
  EXPECT_EQ(counts[kDown].misses_other, 0) << counts[kDown].first_miss_failure;
  EXPECT_GT(counts[kDown].misses_unavailable, 0);
  EXPECT_EQ(counts[kRecovered].misses_unavailable + counts[kRecovered].misses_other, 0)
      << "misses failed after recovery: " << counts[kRecovered].first_miss_failure;

  // Recovered without a restart: the same processes.
  for (int r = 0; r < kReplicas; ++r) {
    EXPECT_EQ(kill(replica(r).pid(), 0), 0) << "replica " << r << " is gone";
    EXPECT_EQ(replica(r).Wait(absl::ZeroDuration()).status().code(),
              absl::StatusCode::kDeadlineExceeded)
        << "replica " << r << " exited";
  }

  // A flight whose completion could not be written (the database went away under it) must not
  // keep its IP claimed after the recovery: asked again, the IP is answered within seconds, not
  // after the rest of its lease (41 s by default).
  const std::string stranded =
      SqlText("SELECT ip FROM clicks WHERE outcome = 0 ORDER BY id LIMIT 1");
  RecordProperty("pending_clicks", static_cast<int>(SqlInt("SELECT count(*) FROM clicks "
                                                           "WHERE outcome = 0")));
  if (!stranded.empty()) {
    for (int r = 0; r < kReplicas; ++r) {
      SCOPED_TRACE(absl::StrCat(stranded, " (its click pending since the outage) on replica ", r));
      grpc::ClientContext context;
      context.AddMetadata("x-caller", "after");
      context.set_deadline(ops::DeadlineIn(absl::Seconds(5)));
      pb::CheckIpRequest request;
      request.set_ip(stranded);
      pb::CheckIpResponse response;
      const grpc::Status status = replica(r).stub().CheckIp(&context, request, &response);
      EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
    }
  }

  // Single flight works again across replicas (claims and notifications on new connections).
  sim().Configure({{"latency_ms", 500}});
  const int64_t before = sim().Requests();
  const std::string cold = PublicIp(68, 1);
  std::vector<std::unique_ptr<Stub>> stubs;
  for (int i = 0; i < 6; ++i) {
    stubs.push_back(replica(i % kReplicas).NewStub());
  }
  std::vector<grpc::Status> statuses(stubs.size());
  std::vector<pb::CheckIpResponse> responses(stubs.size());
  RunTogether(
      static_cast<int>(stubs.size()), [&](int i) { WarmUp(*stubs[i], "together"); },
      [&](int i) { statuses[i] = CheckIp(*stubs[i], cold, &responses[i], "together"); });
  int spent = 0;
  for (size_t i = 0; i < stubs.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    spent += responses[i].click_spent() ? 1 : 0;
  }
  EXPECT_EQ(spent, 1);
  EXPECT_EQ(sim().Requests(), before + 1);

  // Every request ClickPatrol received has a ledger row.
  EXPECT_TRUE(WaitUntil(
      "no request in flight at the simulator", [&] { return sim().InFlight(); },
      [](int64_t n) { return n == 0; }, absl::Seconds(5)));
  const int64_t requests = sim().Requests();
  const int64_t billed = SqlInt("SELECT count(*) FROM clicks WHERE outcome != 3");
  EXPECT_GE(billed, requests) << "a request left without a ledger row";
  RecordProperty("simulator_requests", static_cast<int>(requests));
  RecordProperty("ledger_billed", static_cast<int>(billed));
  ExpectLedgerConsistent();
}

}  // namespace
}  // namespace verdictd::testing::cluster
