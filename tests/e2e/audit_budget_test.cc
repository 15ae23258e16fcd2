// End-to-end per-caller monthly budgets: concurrent misses never overshoot a budget, a spent
// budget stops misses only (hits are still served), and a restart does not refill it.

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::audit {
namespace {

class BudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keys_path_ = dir_.File("api_keys");
    WriteFile(keys_path_, KeysFileLine("capped", kCappedKey, "10") + KeysFileLine("free", kFreeKey),
              0600);
    StartVerdictd();
  }
  void StartVerdictd() {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(
        dir_, sim_.url(), kToken, std::vector<std::string>{"--api_keys_file=" + keys_path_});
  }

  TempDir dir_;
  // Latency so that the concurrent misses really overlap at the budget check.
  Simulator sim_{dir_, kToken, {"--latency=50ms"}};
  std::string keys_path_;
  std::unique_ptr<Verdictd> verdictd_;
};

TEST_F(BudgetTest, ConcurrentMissesNeverOvershootTheBudget) {
  constexpr int kThreads = 32;
  constexpr int kPerThread = 4;
  constexpr int kBudget = 10;
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int i = 0; i < 8; ++i) {
    stubs.push_back(verdictd_->NewStub());
  }
  std::vector<std::string> ips(kThreads * kPerThread);
  std::vector<grpc::Status> statuses(ips.size());
  std::vector<pb::CheckIpResponse> responses(ips.size());
  for (size_t i = 0; i < ips.size(); ++i) {
    ips[i] = absl::StrCat("11.20.", i / 200, ".", i % 200 + 1);
  }
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Start together, so the budget is contended rather than used up by the first thread.
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
        std::this_thread::yield();
      }
      for (int k = 0; k < kPerThread; ++k) {
        const size_t i = t * kPerThread + k;
        statuses[i] = KeyedCheck(*stubs[t % stubs.size()], kCappedKey, ips[i], &responses[i]);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }

  std::vector<std::string> paid;
  int exhausted = 0;
  for (size_t i = 0; i < ips.size(); ++i) {
    if (statuses[i].ok()) {
      EXPECT_TRUE(responses[i].click_spent()) << ips[i];
      EXPECT_EQ(responses[i].source(), pb::SOURCE_UPSTREAM) << ips[i];
      EXPECT_EQ(responses[i].verdict().caller(), "capped");
      paid.push_back(ips[i]);
    } else {
      EXPECT_EQ(statuses[i].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << ips[i] << ": " << statuses[i].error_message();
      exhausted += statuses[i].error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? 1 : 0;
    }
  }
  EXPECT_EQ(static_cast<int>(paid.size()), kBudget);
  EXPECT_EQ(exhausted, static_cast<int>(ips.size()) - kBudget);
  EXPECT_EQ(sim_.Requests(), kBudget);
  EXPECT_GT(sim_.Stats().at("max_in_flight").get<int64_t>(), 1) << "the misses did not overlap";
  EXPECT_EQ(QueryInt(verdictd_->db_path(),
                     "SELECT count(*) FROM clicks WHERE caller='capped' AND outcome != 3"),
            kBudget);

  pb::GetUsageResponse usage;
  ASSERT_TRUE(KeyedUsage(verdictd_->stub(), kCappedKey, "capped", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).monthly_budget(), kBudget);
  EXPECT_EQ(usage.callers(0).budget_left(), 0);
  EXPECT_EQ(usage.callers(0).clicks(), kBudget);

  // A spent budget stops misses only: the verdicts it paid for are still served.
  auto expect_hits_served = [&] {
    for (const std::string& ip : paid) {
      pb::CheckIpResponse r;
      grpc::Status status = KeyedCheck(verdictd_->stub(), kCappedKey, ip, &r);
      ASSERT_TRUE(status.ok()) << ip << ": " << status.error_message();
      EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
      EXPECT_FALSE(r.click_spent());
    }
  };
  expect_hits_served();
  pb::CheckIpResponse r;
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), kCappedKey, "11.21.0.1", &r).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(sim_.Requests(), kBudget);

  // The budget lives in the ledger, so a restart does not refill it.
  EXPECT_EQ(verdictd_->Stop(), 0);
  StartVerdictd();
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), kCappedKey, "11.21.0.2", &r).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  expect_hits_served();
  usage.Clear();
  ASSERT_TRUE(KeyedUsage(verdictd_->stub(), kCappedKey, "capped", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).budget_left(), 0);
  EXPECT_EQ(usage.callers(0).clicks(), kBudget);
  EXPECT_EQ(sim_.Requests(), kBudget);

  // Budgets are per caller: one without a budget still gets misses answered.
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kFreeKey, "11.21.0.2", &r).ok());
  EXPECT_TRUE(r.click_spent());
  EXPECT_EQ(sim_.Requests(), kBudget + 1);
}

}  // namespace
}  // namespace verdictd::testing::audit
