// End-to-end: single flight, stale answers, the circuit breaker, retry safety, address policy,
// cache_only, the upstream concurrency bound, cache keys and per-score freshness — with the real
// verdictd binary, a SQLite file in a temp dir and the simulated ClickPatrol over loopback HTTP.
//
// The simulator counts every request to "/" (what ClickPatrol would bill), so "exactly N
// simulator requests" is the assertion that matters most here: clicks cost money.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::HasSubstr;

constexpr char kToken[] = "cp_CoalescingToken_41b7";

// CheckIp with an explicit max_age (seconds) and/or cache_only.
grpc::Status CheckWith(pb::VerdictService::Stub& stub, const std::string& ip,
                       std::optional<int64_t> max_age_seconds, bool cache_only,
                       pb::CheckIpResponse* response, const std::string& caller = "e2e") {
  pb::CheckIpRequest request;
  request.set_ip(ip);
  if (max_age_seconds.has_value()) {
    request.mutable_max_age()->set_seconds(*max_age_seconds);
  }
  request.set_cache_only(cache_only);
  return stub.CheckIp(CallerContext(caller).get(), request, response);
}

// A loopback port that nothing listens on: bound by the OS, then released. (Another process
// could grab it in between; on a test machine that is vanishingly rare.)
int ClosedLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

class CoalescingTest : public ::testing::Test {
 protected:
  // Restarts verdictd (same database) with `flags`.
  void StartVerdictd(std::vector<std::string> flags = {}) {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(dir_, sim_->url(), kToken, std::move(flags));
  }
  // Restarts the simulator with `flags`; verdictd must be (re)started after this.
  void StartSimulator(std::vector<std::string> flags) {
    verdictd_.reset();
    sim_.reset();
    // The old simulator's port file would otherwise be read as the new one's.
    std::remove(dir_.File("sim.port").c_str());
    sim_ = std::make_unique<Simulator>(dir_, kToken, std::move(flags));
  }
  void SetSimRules(const std::string& rules) {
    httplib::Client client("127.0.0.1", sim_->port());
    client.set_read_timeout(10);
    httplib::Result result = client.Post("/_sim/rules", rules, "text/plain");
    ASSERT_TRUE(result);
    ASSERT_EQ(result->status, 200) << result->body;
  }
  int64_t Clicks(const std::string& where = "1") {
    return QueryInt(verdictd_->db_path(),
                    absl::StrCat("SELECT count(*) FROM clicks WHERE ", where));
  }

  TempDir dir_;
  std::unique_ptr<Simulator> sim_ = std::make_unique<Simulator>(dir_, kToken);
  std::unique_ptr<Verdictd> verdictd_;
};

// --- Single flight -------------------------------------------------------------------------

TEST_F(CoalescingTest, ConcurrentCallersShareOneClick) {
  StartSimulator({"--latency=500ms"});
  StartVerdictd();
  constexpr int kCallers = 32;
  const std::string ip = "11.4.4.4";

  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int i = 0; i < kCallers; ++i) {
    stubs.push_back(verdictd_->NewStub());
  }
  std::vector<grpc::Status> statuses(kCallers);
  std::vector<pb::CheckIpResponse> responses(kCallers);
  std::vector<std::string> callers(kCallers);
  absl::BlockingCounter ready(kCallers);
  absl::Notification go;
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    callers[i] = absl::StrCat("caller-", i);
    threads.emplace_back([&, i] {
      // Connect first, so the timed part is only the checks themselves. 32 connections opened
      // at once on a loaded 2-core machine: a connect attempt can fail transiently (seen once in
      // dozens of runs), so the warm-up waits for the channel to be ready.
      pb::GetServerInfoResponse info;
      std::unique_ptr<grpc::ClientContext> warm_context = CallerContext(callers[i]);
      warm_context->set_wait_for_ready(true);
      const grpc::Status warm = stubs[i]->GetServerInfo(warm_context.get(), {}, &info);
      EXPECT_TRUE(warm.ok()) << warm.error_message();
      ready.DecrementCount();
      go.WaitForNotification();
      statuses[i] = CheckIp(*stubs[i], ip, &responses[i], callers[i]);
    });
  }
  ready.Wait();
  const absl::Time start = absl::Now();
  go.Notify();
  for (std::thread& t : threads) {
    t.join();
  }
  const absl::Duration wall = absl::Now() - start;
  RecordProperty("wall_ms", static_cast<int>(absl::ToInt64Milliseconds(wall)));

  int spent = 0;
  std::string spender;
  for (int i = 0; i < kCallers; ++i) {
    SCOPED_TRACE(callers[i]);
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(responses[i].source(), pb::SOURCE_UPSTREAM);
    EXPECT_EQ(responses[i].verdict().ip(), ip);
    if (responses[i].click_spent()) {
      ++spent;
      spender = callers[i];
    }
  }
  EXPECT_EQ(spent, 1) << "exactly one caller pays";
  for (int i = 0; i < kCallers; ++i) {
    SCOPED_TRACE(callers[i]);
    // The same verdict: one ClickPatrol answer, not 32 that happen to agree.
    EXPECT_EQ(responses[i].verdict().score(), responses[0].verdict().score());
    EXPECT_EQ(responses[i].verdict().checked_at().seconds(),
              responses[0].verdict().checked_at().seconds());
    EXPECT_EQ(responses[i].verdict().checked_at().nanos(),
              responses[0].verdict().checked_at().nanos());
    EXPECT_EQ(responses[i].verdict().caller(), spender) << "the verdict names who paid for it";
  }
  // Sequential calls would take 32 x 500 ms; shared ones take one latency plus overhead.
  EXPECT_LT(wall, absl::Milliseconds(1000)) << absl::FormatDuration(wall);
  EXPECT_EQ(sim_->Requests(), 1);
  EXPECT_EQ(Clicks(), 1);
  EXPECT_EQ(QueryText(verdictd_->db_path(), "SELECT caller FROM clicks"), spender);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM verdicts"), 1);
}

TEST_F(CoalescingTest, BatchOfOneIpInManySpellingsSpendsOneClick) {
  StartVerdictd();
  pb::CheckBatchRequest batch;
  for (int i = 0; i < 100; ++i) {
    batch.add_items()->set_ip(i % 3 == 0 ? "::ffff:11.5.5.5" : "11.5.5.5");
  }
  pb::CheckBatchResponse response;
  ASSERT_TRUE(verdictd_->stub().CheckBatch(CallerContext("batcher").get(), batch, &response).ok());
  ASSERT_EQ(response.results_size(), 100);
  int spent = 0;
  for (int i = 0; i < 100; ++i) {
    SCOPED_TRACE(i);
    ASSERT_TRUE(response.results(i).has_result()) << response.results(i).error().message();
    const pb::CheckIpResponse& r = response.results(i).result();
    EXPECT_EQ(r.verdict().ip(), "11.5.5.5");
    EXPECT_EQ(r.verdict().score(), response.results(0).result().verdict().score());
    spent += r.click_spent() ? 1 : 0;
  }
  EXPECT_EQ(spent, 1);
  EXPECT_EQ(sim_->Requests(), 1);
  EXPECT_EQ(Clicks(), 1);
}

// --- Stale answers ---------------------------------------------------------------------------

TEST_F(CoalescingTest, StaleVerdictOnServerErrorUnlessDisabled) {
  StartVerdictd();
  pb::CheckIpResponse fresh;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &fresh).ok());
  sim_->Configure({{"mode", "5xx"}});

  pb::CheckIpResponse stale;
  grpc::Status status = CheckWith(verdictd_->stub(), "1.1.1.1", 0, false, &stale);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(stale.source(), pb::SOURCE_STALE);
  EXPECT_EQ(stale.verdict().score(), fresh.verdict().score());
  EXPECT_EQ(stale.verdict().checked_at().seconds(), fresh.verdict().checked_at().seconds());
  EXPECT_TRUE(stale.click_spent()) << "the failed request was sent, so it was billed";
  EXPECT_EQ(sim_->Requests(), 2);

  // Same database, stale answers off: the failure shows.
  StartVerdictd({"--stale_if_error=0"});
  pb::CheckIpResponse r;
  status = CheckWith(verdictd_->stub(), "1.1.1.1", 0, false, &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(sim_->Requests(), 3);
  EXPECT_EQ(Clicks("outcome=2"), 2);
}

// --- Circuit breaker -------------------------------------------------------------------------

// The same behaviour with an injected clock (exact open/half-open/closed transitions) is a unit
// test in server/engine/engine_test.cc; this one proves the flags reach the engine and that an open
// breaker really keeps requests off the wire.
TEST_F(CoalescingTest, CircuitBreakerOpensFailsFastAndRecovers) {
  StartVerdictd({"--breaker_failures=3", "--breaker_open_for=1s"});
  sim_->Configure({{"mode", "5xx"}});
  pb::CheckIpResponse r;
  // Taken before the failure that opens the breaker, so the breaker opened after it and
  // "recovered at least open_for later" needs no slack.
  absl::Time before_open;
  for (int i = 1; i <= 3; ++i) {
    before_open = absl::Now();
    const grpc::Status status = CheckIp(verdictd_->stub(), absl::StrCat("11.6.0.", i), &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  }
  EXPECT_EQ(sim_->Requests(), 3);

  grpc::Status status = CheckIp(verdictd_->stub(), "11.6.0.4", &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("circuit breaker"));
  EXPECT_EQ(sim_->Requests(), 3) << "an open breaker sends nothing";

  // ClickPatrol recovers; the breaker lets a probe through once open_for has passed.
  sim_->Configure({{"mode", "ok"}});
  // Until a check gets through; the assertion after it says what was last seen.
  WaitUntil(
      "a check to get through the breaker",
      [&] {
        status = CheckIp(verdictd_->stub(), "11.6.0.5", &r);
        return status.ok();
      },
      [&](bool ok) {
        if (!ok) {
          EXPECT_THAT(status.error_message(), HasSubstr("circuit breaker"));
        }
        return ok;
      },
      absl::Seconds(10), absl::Milliseconds(50));
  const absl::Duration recovered_after = absl::Now() - before_open;
  RecordProperty("recovered_after_ms",
                 static_cast<int>(absl::ToInt64Milliseconds(recovered_after)));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_GE(recovered_after, absl::Seconds(1)) << "the breaker stayed open for open_for";
  EXPECT_EQ(sim_->Requests(), 4) << "only the probe reached ClickPatrol while open";

  for (int i = 6; i <= 7; ++i) {
    status = CheckIp(verdictd_->stub(), absl::StrCat("11.6.0.", i), &r);
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_EQ(sim_->Requests(), 6);
}

// --- Retries never re-send a request that reached ClickPatrol --------------------------------

TEST_F(CoalescingTest, ServerErrorIsNotRetried) {
  StartVerdictd({"--breaker_failures=0"});
  sim_->Configure({{"mode", "5xx"}});
  pb::CheckIpResponse r;
  for (int i = 1; i <= 3; ++i) {
    const std::string ip = absl::StrCat("11.7.0.", i);
    const grpc::Status status = CheckIp(verdictd_->stub(), ip, &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_EQ(sim_->Requests(), i) << ip;
  }
  EXPECT_EQ(Clicks(), 3);
  EXPECT_EQ(Clicks("outcome=2"), 3);
}

TEST_F(CoalescingTest, TimeoutIsNotRetried) {
  StartVerdictd({"--breaker_failures=0", "--upstream_timeout=300ms"});
  sim_->Configure({{"mode", "hang"}});
  pb::CheckIpResponse r;
  const absl::Time start = absl::Now();
  const grpc::Status status = CheckIp(verdictd_->stub(), "11.7.1.1", &r);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_EQ(sim_->Requests(), 1);
  EXPECT_EQ(Clicks("outcome=2"), 1);
  EXPECT_EQ(Clicks(), 1);
}

TEST_F(CoalescingTest, ResetMidBodyIsNotRetried) {
  StartVerdictd({"--breaker_failures=0"});
  // A first answer leaves a keep-alive connection for the failing request to reuse, as in
  // production; a client that silently retries on a reused connection would show up here.
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "11.7.2.1", &r).ok());
  sim_->Configure({{"mode", "reset"}});
  for (int i = 2; i <= 3; ++i) {
    const grpc::Status status = CheckIp(verdictd_->stub(), absl::StrCat("11.7.2.", i), &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_EQ(sim_->Requests(), i);
  }
  EXPECT_EQ(Clicks("outcome=2"), 2);
}

TEST_F(CoalescingTest, ConnectionRefusedIsRetriedAndNotBilled) {
  const int port = ClosedLoopbackPort();
  verdictd_ = std::make_unique<Verdictd>(dir_, absl::StrCat("http://127.0.0.1:", port, "/"), kToken,
                                         std::vector<std::string>{"--upstream_attempts=3"});
  pb::CheckIpResponse r;
  const grpc::Status status = CheckIp(verdictd_->stub(), "11.7.3.1", &r, "refused");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(Clicks(), 3) << "every attempt is in the ledger";
  EXPECT_EQ(Clicks("outcome=3"), 3) << "as not sent";

  pb::GetUsageRequest request;
  request.set_caller("refused");
  pb::GetUsageResponse usage;
  const grpc::Status usage_status =
      verdictd_->stub().GetUsage(CallerContext("refused").get(), request, &usage);
  ASSERT_TRUE(usage_status.ok()) << usage_status.error_message();
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).caller(), "refused");
  EXPECT_EQ(usage.callers(0).clicks(), 0) << "connect failures are not billed";
  EXPECT_EQ(usage.callers(0).upstream_errors(), 0);
  EXPECT_EQ(usage.callers(0).requests(), 1);
}

// --- Address policy and cache_only -----------------------------------------------------------

TEST_F(CoalescingTest, NonPublicAddressesAreRefusedUnlessAllowed) {
  StartVerdictd();
  for (const char* ip :
       {"10.0.0.1", "127.0.0.1", "192.168.0.1", "100.64.0.1", "169.254.1.1", "224.0.0.1", "0.0.0.0",
        "::1", "fe80::1", "fc00::1", "2001:db8::1", "198.51.100.7"}) {
    SCOPED_TRACE(ip);
    pb::CheckIpResponse r;
    const grpc::Status status = CheckIp(verdictd_->stub(), ip, &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  }
  EXPECT_EQ(sim_->Requests(), 0);
  EXPECT_EQ(Clicks(), 0);

  StartVerdictd({"--allow_non_public"});
  pb::CheckIpResponse r;
  const grpc::Status status = CheckIp(verdictd_->stub(), "10.0.0.1", &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(sim_->Requests(), 1);
}

TEST_F(CoalescingTest, CacheOnlyNeverSpends) {
  StartVerdictd();
  pb::CheckIpResponse r;
  grpc::Status status = CheckWith(verdictd_->stub(), "9.9.9.9", std::nullopt, true, &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_EQ(sim_->Requests(), 0);

  ASSERT_TRUE(CheckIp(verdictd_->stub(), "9.9.9.9", &r).ok());
  EXPECT_EQ(sim_->Requests(), 1);
  status = CheckWith(verdictd_->stub(), "9.9.9.9", std::nullopt, true, &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_FALSE(r.click_spent());

  // max_age=0 makes every stored verdict too old, and cache_only forbids asking.
  status = CheckWith(verdictd_->stub(), "9.9.9.9", 0, true, &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_EQ(sim_->Requests(), 1);
  EXPECT_EQ(Clicks(), 1);
}

// --- Upstream concurrency bound --------------------------------------------------------------

TEST_F(CoalescingTest, UpstreamConcurrencyIsBounded) {
  StartSimulator({"--latency=200ms"});
  StartVerdictd({"--upstream_concurrency=4"});
  pb::CheckBatchRequest batch;
  for (int i = 1; i <= 40; ++i) {
    batch.add_items()->set_ip(absl::StrCat("11.8.0.", i));
  }
  pb::CheckBatchResponse response;
  ASSERT_TRUE(verdictd_->stub().CheckBatch(CallerContext().get(), batch, &response).ok());
  ASSERT_EQ(response.results_size(), 40);
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(response.results(i).has_result())
        << i << ": " << response.results(i).error().message();
    EXPECT_EQ(response.results(i).result().source(), pb::SOURCE_UPSTREAM);
  }
  const nlohmann::json stats = sim_->Stats();
  EXPECT_EQ(stats.at("requests").get<int64_t>(), 40);
  const int64_t max_in_flight = stats.at("max_in_flight").get<int64_t>();
  RecordProperty("max_in_flight", static_cast<int>(max_in_flight));
  RecordProperty("connections", static_cast<int>(stats.at("connections").get<int64_t>()));
  EXPECT_LE(max_in_flight, 4);
  EXPECT_GE(max_in_flight, 2) << "requests did run concurrently";
  // Keep-alive: connections are reused, not opened per request (40 would mean no reuse).
  EXPECT_LE(stats.at("connections").get<int64_t>(), 6);
}

// --- Cache keys and freshness ----------------------------------------------------------------

TEST_F(CoalescingTest, CacheKeyIpUserAgentSeparatesUserAgents) {
  StartVerdictd({"--cache_key=ip_user_agent"});
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "e2e", "agent-A").ok());
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "e2e", "agent-B").ok());
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(r.verdict().user_agent(), "agent-B");
  EXPECT_EQ(sim_->Requests(), 2);

  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "e2e", "agent-A").ok());
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_EQ(r.verdict().user_agent(), "agent-A");
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "e2e", "agent-B").ok());
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_EQ(r.verdict().user_agent(), "agent-B");
  EXPECT_EQ(sim_->Requests(), 2);
}

TEST_F(CoalescingTest, PerScoreMaxAgeRefreshesFakeOnly) {
  ASSERT_NO_FATAL_FAILURE(SetSimRules("8.8.8.8 Fake\n1.1.1.1 Safe\n"));
  StartVerdictd({"--max_age=24h", "--max_age_fake=0"});
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r).ok());
  EXPECT_EQ(r.verdict().score(), pb::SCORE_FAKE);
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &r).ok());
  EXPECT_EQ(r.verdict().score(), pb::SCORE_SAFE);
  EXPECT_EQ(sim_->Requests(), 2);

  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM) << "a Fake verdict is never fresh here";
  EXPECT_TRUE(r.click_spent());
  EXPECT_EQ(sim_->Requests(), 3);
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_EQ(sim_->Requests(), 3);
}

}  // namespace
}  // namespace verdictd::testing
