// End-to-end click ledger across crashes: verdictd killed (SIGKILL) with requests on the wire
// still has a ledger row for every request ClickPatrol received, and counts pending ones as
// billed.

#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::audit {
namespace {

TEST(CrashTest, LedgerCoversEveryRequestAcrossKills) {
  constexpr int kTrials = 3;
  constexpr int kMisses = 40;
  TempDir dir;
  // Half a second upstream: the kill lands while requests are on the wire.
  Simulator sim(dir, kToken, {"--latency=500ms"});
  auto verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
  const std::string db = verdictd->db_path();
  int64_t pending_before = 0;
  int64_t billed_before = 0;
  int64_t requests_before = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
    for (int i = 0; i < 4; ++i) {
      stubs.push_back(verdictd->NewStub());
    }
    std::vector<grpc::Status> statuses(kMisses);
    std::vector<std::thread> threads;
    for (int i = 0; i < kMisses; ++i) {
      threads.emplace_back([&, i] {
        pb::CheckIpResponse response;
        statuses[i] = CheckIp(*stubs[i % stubs.size()], absl::StrCat("11.3", trial, ".0.", i + 1),
                              &response, "crash");
      });
    }
    ASSERT_TRUE(WaitUntil(
        "a request in flight at the simulator", [&] { return sim.InFlight(); },
        [](int64_t in_flight) { return in_flight > 0; }, absl::Seconds(10), absl::Milliseconds(10)))
        << "no request reached the simulator";
    verdictd->Crash();
    for (std::thread& thread : threads) {
      thread.join();
    }
    int answered = 0;
    for (const grpc::Status& status : statuses) {
      answered += status.ok() ? 1 : 0;
    }
    EXPECT_LT(answered, kMisses) << "the kill came too late to test anything";
    // Requests that left before the kill are counted the moment they arrive; wait for the
    // simulator to finish with them so that the count is final.
    ASSERT_TRUE(WaitUntil(
        "no request in flight at the simulator", [&] { return sim.InFlight(); },
        [](int64_t in_flight) { return in_flight == 0; }, absl::Seconds(10),
        absl::Milliseconds(10)));
    const int64_t requests = sim.Requests();

    verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
    EXPECT_EQ(QueryText(db, "PRAGMA integrity_check"), "ok");
    const int64_t billed = QueryInt(db, "SELECT count(*) FROM clicks WHERE outcome != 3");
    const int64_t pending = QueryInt(db, "SELECT count(*) FROM clicks WHERE outcome = 0");
    EXPECT_GE(billed, requests) << "a request left without a ledger row";
    EXPECT_GE(billed - billed_before, requests - requests_before)
        << "a request of this trial left without a ledger row";
    EXPECT_GT(requests, requests_before);
    EXPECT_GT(pending, pending_before) << "the in-flight requests left no pending rows";
    pending_before = pending;
    billed_before = billed;
    requests_before = requests;

    // Pending clicks are billed clicks: GetUsage counts them.
    pb::GetUsageResponse usage;
    grpc::Status status = OpenUsageSinceEpoch(verdictd->stub(), "crash", &usage);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(usage.callers_size(), 1);
    EXPECT_EQ(usage.callers(0).clicks(), billed);

    // The restarted server works and did not resend anything by itself.
    EXPECT_EQ(sim.Requests(), requests);
    std::cout << "trial " << trial << ": answered " << answered << ", simulator requests "
              << requests << ", ledger clicks " << billed << ", pending " << pending << "\n";
  }
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd->stub(), "9.9.9.9", &r, "crash").ok());
  EXPECT_TRUE(r.click_spent());
}

}  // namespace
}  // namespace verdictd::testing::audit
