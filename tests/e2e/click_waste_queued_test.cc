// End-to-end: queued misses that become useless before they are sent stay unsent: when the
// circuit breaker opens, when ClickPatrol says the allowance is exhausted, and when the caller
// gives up (a batch past its deadline, a cancelled check). The real verdictd binary, a SQLite
// file in a temp dir and the simulated ClickPatrol over loopback.

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/e2e/click_waste_fixture.h"

namespace verdictd::testing::click_waste {
namespace {

// --- the circuit breaker opens while a batch's misses are queued ---------------------------------

// ClickPatrol fails every request. The breaker opens after 5 consecutive failures; the misses
// still queued behind the 4 upstream slots must then be refused when their turn comes, not sent
// into the known failure. Bound: the 5 failures that open it plus the requests already in flight
// when it opened (at most upstream_concurrency): 9 of 200.
TEST_F(ClickWasteTest, OpenBreakerStopsTheQueuedMissesOfABatch) {
  constexpr int kConcurrency = 4;
  constexpr int kBreakerFailures = 5;
  constexpr int kItems = 200;
  Verdictd verdictd(dir_, sim_.url(), kToken,
                    {absl::StrCat("--upstream_concurrency=", kConcurrency),
                     absl::StrCat("--breaker_failures=", kBreakerFailures)});
  sim_.Configure({{"mode", "5xx"}, {"latency_ms", 100}});

  pb::CheckBatchResponse response;
  const absl::Time start = absl::Now();
  const grpc::Status status = verdictd.stub().CheckBatch(ContextFor(absl::Seconds(30)).get(),
                                                         ColdBatch(20, 0, kItems), &response);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), kItems);

  const int64_t requests = sim_.Requests();
  int refused_by_breaker = 0;
  for (int i = 0; i < kItems; ++i) {
    SCOPED_TRACE(absl::StrCat("item ", i, " (", ColdIp(20, i), ")"));
    const pb::CheckBatchResult& item = response.results(i);
    ASSERT_TRUE(item.has_error()) << "no verdict can come from a failing ClickPatrol";
    EXPECT_EQ(ItemCode(item), grpc::StatusCode::UNAVAILABLE) << item.error().message();
    if (absl::StrContains(item.error().message(), "circuit breaker")) {
      ++refused_by_breaker;
    }
  }
  RecordProperty("requests", static_cast<int>(requests));
  RecordProperty("took_ms", static_cast<int>(absl::ToInt64Milliseconds(took)));
  std::printf("[ measured ] breaker: %lld of %d misses sent, %d refused by the breaker, in %s\n",
              static_cast<long long>(requests), kItems, refused_by_breaker,
              absl::FormatDuration(took).c_str());

  EXPECT_GE(requests, kBreakerFailures) << "the breaker opens only after its failures";
  EXPECT_LE(requests, kBreakerFailures + kConcurrency)
      << "misses queued when the breaker opened were sent anyway";
  EXPECT_EQ(refused_by_breaker, kItems - requests) << "every unsent miss names the breaker";
  // Sending all 200 at 4 at a time would take 200 / 4 x 100 ms = 5 s.
  EXPECT_LT(took, absl::Seconds(3));

  WaitForNoPendingRows(verdictd.db_path());
  EXPECT_EQ(SpentRows(verdictd.db_path()), sim_.Requests());
  EXPECT_EQ(LedgerRows(verdictd.db_path()), sim_.Requests())
      << "a miss refused before sending leaves no ledger row";
}

// --- ClickPatrol says the allowance is exhausted -----------------------------------------------

// The simulator answers 10 verdicts, then HTTP 402. From the first 402 on, misses still queued
// must be refused RESOURCE_EXHAUSTED without a request. Bound: the 10 verdicts, the requests in
// flight when the first 402 arrived (at most upstream_concurrency), and one for a dispatch racing
// that answer: 15 of 200. The breaker is off, so it cannot be what stops the sending.
TEST_F(ClickWasteTest, ExhaustedAllowanceStopsTheQueuedMissesOfABatch) {
  constexpr int kConcurrency = 4;
  constexpr int kAllowance = 10;
  constexpr int kItems = 200;
  Verdictd verdictd(
      dir_, sim_.url(), kToken,
      {absl::StrCat("--upstream_concurrency=", kConcurrency), "--breaker_failures=0"});
  sim_.Configure({{"mode", "ok"}, {"latency_ms", 100}, {"allowance", kAllowance}});

  pb::CheckBatchResponse response;
  const grpc::Status status = verdictd.stub().CheckBatch(ContextFor(absl::Seconds(30)).get(),
                                                         ColdBatch(21, 0, kItems), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), kItems);

  const nlohmann::json stats = sim_.Stats();
  const int64_t requests = stats.at("requests").get<int64_t>();
  const int64_t verdicts = stats.at("verdicts").get<int64_t>();
  int answered = 0;
  int exhausted = 0;
  for (int i = 0; i < kItems; ++i) {
    SCOPED_TRACE(absl::StrCat("item ", i, " (", ColdIp(21, i), ")"));
    const pb::CheckBatchResult& item = response.results(i);
    if (item.has_result()) {
      ++answered;
      EXPECT_EQ(item.result().source(), pb::SOURCE_UPSTREAM);
      EXPECT_TRUE(item.result().click_spent());
      continue;
    }
    EXPECT_EQ(ItemCode(item), grpc::StatusCode::RESOURCE_EXHAUSTED) << item.error().message();
    ++exhausted;
  }
  RecordProperty("requests", static_cast<int>(requests));
  std::printf("[ measured ] allowance: %lld of %d misses sent (%lld verdicts), %d refused\n",
              static_cast<long long>(requests), kItems, static_cast<long long>(verdicts),
              exhausted);

  EXPECT_EQ(verdicts, kAllowance);
  EXPECT_EQ(answered, kAllowance) << "each verdict ClickPatrol gave reached its item";
  EXPECT_EQ(exhausted, kItems - kAllowance);
  EXPECT_LE(requests, kAllowance + kConcurrency + 1)
      << "misses queued after ClickPatrol said 402 were sent anyway";

  WaitForNoPendingRows(verdictd.db_path());
  EXPECT_EQ(SpentRows(verdictd.db_path()), sim_.Requests());
  EXPECT_EQ(LedgerRows(verdictd.db_path()), sim_.Requests())
      << "a miss refused before sending leaves no ledger row";
}

// --- the caller gives up -------------------------------------------------------------------------

// A batch of 200 cold IPs with a 0.5 s deadline against a ClickPatrol that takes 1 s: the 4 sent
// at once are billed whatever happens, but once the deadline passes nobody can read the other
// 196 answers, so they must never be sent. Sending on regardless would add 4 requests a second
// (12 in the 3 s watched here); the bound allows 2 x upstream_concurrency for slack.
TEST_F(ClickWasteTest, AbandonedBatchStopsSpendingAtItsDeadline) {
  constexpr int kConcurrency = 4;
  constexpr int kItems = 200;
  Verdictd verdictd(dir_, sim_.url(), kToken,
                    {absl::StrCat("--upstream_concurrency=", kConcurrency)});
  Connect(verdictd.stub());
  sim_.Configure({{"latency_ms", 1000}});

  pb::CheckBatchResponse response;
  const grpc::Status status = verdictd.stub().CheckBatch(ContextFor(absl::Milliseconds(500)).get(),
                                                         ColdBatch(22, 0, kItems), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  const int64_t at_deadline = sim_.Requests();
  EXPECT_GE(at_deadline, 1);
  EXPECT_LE(at_deadline, kConcurrency);

  // Not a poll: the 3 s during which nothing more may be sent (what the test is about).
  absl::SleepFor(absl::Seconds(3));
  const int64_t after_deadline = sim_.Requests() - at_deadline;
  RecordProperty("requests_at_deadline", static_cast<int>(at_deadline));
  RecordProperty("requests_after_deadline", static_cast<int>(after_deadline));
  std::printf(
      "[ measured ] abandoned batch: %lld requests by the deadline, %lld in the 3 s after\n",
      static_cast<long long>(at_deadline), static_cast<long long>(after_deadline));
  EXPECT_LE(after_deadline, 2 * kConcurrency)
      << "misses of a batch whose caller had gone were still sent";

  // The requests in flight at the deadline complete (their verdicts are paid for and stored).
  WaitForNoPendingRows(verdictd.db_path());
  EXPECT_EQ(PendingRows(verdictd.db_path()), 0);
  EXPECT_EQ(SpentRows(verdictd.db_path()), sim_.Requests());
  EXPECT_EQ(LedgerRows(verdictd.db_path()), sim_.Requests())
      << "a dropped miss leaves no ledger row";
}

// One queued CheckIp whose caller cancels: with one upstream slot held by a hanging request, the
// second miss waits; the caller cancels it; when the slot frees (the first request times out
// after 1 s) the cancelled miss must be dropped, not sent.
TEST_F(ClickWasteTest, CancelledQueuedCheckIsNeverSent) {
  Verdictd verdictd(dir_, sim_.url(), kToken,
                    {"--upstream_concurrency=1", "--upstream_timeout=1s"});
  std::unique_ptr<pb::VerdictService::Stub> first_stub = verdictd.NewStub();
  std::unique_ptr<pb::VerdictService::Stub> second_stub = verdictd.NewStub();
  Connect(*first_stub);
  Connect(*second_stub);
  sim_.Configure({{"mode", "hang"}});
  const std::string holder_ip = ColdIp(23, 1);
  const std::string cancelled_ip = ColdIp(23, 2);

  grpc::Status holder_status;
  std::unique_ptr<grpc::ClientContext> context = ContextFor(absl::Seconds(10));
  grpc::Status cancelled_status;
  std::vector<std::thread> threads;
  JoinAll join(threads);
  threads.emplace_back([&] {
    pb::CheckIpRequest request;
    request.set_ip(holder_ip);
    pb::CheckIpResponse response;
    holder_status = first_stub->CheckIp(ContextFor(absl::Seconds(10)).get(), request, &response);
  });
  ASSERT_TRUE(WaitUntil(
      "1 request in flight at ClickPatrol", [&] { return SimInFlight(); },
      [](int64_t in_flight) { return in_flight == 1; }, absl::Seconds(5), absl::Milliseconds(5)))
      << "the first request never reached ClickPatrol";

  threads.emplace_back([&] {
    pb::CheckIpRequest request;
    request.set_ip(cancelled_ip);
    pb::CheckIpResponse response;
    cancelled_status = second_stub->CheckIp(context.get(), request, &response);
  });
  // Not a poll: nothing outside verdictd shows a queued miss, so this gives the second miss the
  // time to arrive and queue behind the slot before it is cancelled.
  absl::SleepFor(absl::Milliseconds(300));
  context->TryCancel();
  threads[1].join();
  EXPECT_EQ(cancelled_status.error_code(), grpc::StatusCode::CANCELLED)
      << cancelled_status.error_message();

  threads[0].join();  // the hanging request times out after --upstream_timeout=1s
  EXPECT_EQ(holder_status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << holder_status.error_message();
  // Not a poll: proves a negative. A slot passed to the dropped miss would send within this.
  absl::SleepFor(absl::Milliseconds(500));
  const nlohmann::json stats = sim_.Stats();
  EXPECT_EQ(stats.at("requests").get<int64_t>(), 1);
  EXPECT_FALSE(stats.at("by_ip").contains(cancelled_ip)) << "the cancelled miss was sent";
  WaitForNoPendingRows(verdictd.db_path());
  EXPECT_EQ(QueryInt(verdictd.db_path(), "SELECT count(*) FROM clicks WHERE ip = ?1", cancelled_ip),
            0);
  EXPECT_EQ(SpentRows(verdictd.db_path()), 1);
  EXPECT_EQ(LedgerRows(verdictd.db_path()), 1);
}

}  // namespace
}  // namespace verdictd::testing::click_waste
