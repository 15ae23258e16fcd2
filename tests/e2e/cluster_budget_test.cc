// End-to-end budgets across replicas: a caller's monthly budget is the cluster's, not each
// replica's: three replicas on one PostgreSQL under 300 concurrent misses spend exactly the
// budget, refuse the rest without sending anything, and all (also one that took no misses)
// report the same budget left.

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/e2e/cluster_fixture.h"
#include "tests/support/harness.h"

namespace verdictd::testing::cluster {
namespace {

using Stub = pb::VerdictService::Stub;
using audit::kCappedKey;
using audit::KeyedCheck;
using audit::KeyedUsage;
using audit::KeysFileLine;
using audit::kFreeKey;

TEST_F(ClusterTest, BudgetIsSharedByEveryReplica) {
  constexpr int kReplicas = 3;  // take the misses
  // One more replica that takes none of them: it has to learn the spent budget from the
  // database, not from its own misses.
  constexpr int kAll = kReplicas + 1;
  constexpr int kBudget = 100;
  constexpr int kMisses = 300;
  constexpr int kThreads = 30;
  constexpr int kPerThread = kMisses / kThreads;
  constexpr int kChannelsPerReplica = 4;
  // Latency so that misses on different replicas overlap at the budget check.
  ASSERT_NO_FATAL_FAILURE(StartSimulator({"--latency=50ms"}));
  TempDir keys_dir;
  const std::string keys = keys_dir.File("api_keys");
  ASSERT_NO_FATAL_FAILURE(audit::WriteFile(
      keys,
      KeysFileLine("capped", kCappedKey, absl::StrCat(kBudget)) + KeysFileLine("free", kFreeKey),
      0600));
  ASSERT_NO_FATAL_FAILURE(StartReplicas(kAll, {"--api_keys_file=" + keys}));

  std::vector<std::vector<std::unique_ptr<Stub>>> stubs(kReplicas);
  for (int r = 0; r < kReplicas; ++r) {
    for (int k = 0; k < kChannelsPerReplica; ++k) {
      stubs[r].push_back(replica(r).NewStub());
    }
  }
  // Miss j goes to replica j % 3; each thread's misses go round the replicas.
  std::vector<grpc::Status> statuses(kMisses);
  std::vector<pb::CheckIpResponse> responses(kMisses);
  RunTogether(
      kThreads, [](int) {},
      [&](int t) {
        for (int k = 0; k < kPerThread; ++k) {
          const int j = t * kPerThread + k;
          statuses[j] = KeyedCheck(*stubs[j % kReplicas][t % kChannelsPerReplica], kCappedKey,
                                   PublicIp(63, j), &responses[j]);
        }
      });

  std::vector<int> paid;
  int exhausted = 0;
  std::vector<int> paid_by_replica(kReplicas);
  for (int j = 0; j < kMisses; ++j) {
    SCOPED_TRACE(PublicIp(63, j));
    if (statuses[j].ok()) {
      EXPECT_TRUE(responses[j].click_spent());
      EXPECT_EQ(responses[j].source(), pb::SOURCE_UPSTREAM);
      EXPECT_EQ(responses[j].verdict().caller(), "capped");
      paid.push_back(j);
      ++paid_by_replica[j % kReplicas];
    } else {
      EXPECT_EQ(statuses[j].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << statuses[j].error_message();
      exhausted += statuses[j].error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? 1 : 0;
    }
  }
  for (int r = 0; r < kReplicas; ++r) {
    RecordProperty(absl::StrCat("paid_on_replica_", r), paid_by_replica[r]);
  }
  EXPECT_EQ(static_cast<int>(paid.size()), kBudget);
  EXPECT_EQ(exhausted, kMisses - kBudget);
  EXPECT_EQ(sim().Requests(), kBudget);
  EXPECT_GT(sim().Stats().at("max_in_flight").get<int64_t>(), 1) << "the misses did not overlap";
  EXPECT_EQ(SqlInt("SELECT count(*) FROM clicks WHERE convert_from(caller, 'UTF8') = 'capped' AND "
                   "outcome != 3"),
            kBudget);
  EXPECT_EQ(SqlInt("SELECT count(*) FROM clicks"), kBudget) << "a refused miss left a ledger row";
  ExpectLedgerConsistent();

  // Every replica reports the cluster's budget, not its own share of it (the idle one too).
  for (int r = 0; r < kAll; ++r) {
    SCOPED_TRACE(absl::StrCat("replica ", r));
    pb::GetUsageResponse usage;
    const grpc::Status status = KeyedUsage(replica(r).stub(), kCappedKey, "capped", &usage);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(usage.callers_size(), 1);
    EXPECT_EQ(usage.callers(0).monthly_budget(), kBudget);
    EXPECT_EQ(usage.callers(0).budget_left(), 0);
    EXPECT_EQ(usage.callers(0).clicks(), kBudget);
  }

  // A spent budget stops misses only: what it paid for is served by every replica.
  for (size_t i = 0; i < paid.size(); ++i) {
    const int r = static_cast<int>((paid[i] + 1 + i) % kAll);
    SCOPED_TRACE(absl::StrCat(PublicIp(63, paid[i]), " on replica ", r));
    pb::CheckIpResponse hit;
    const grpc::Status status =
        KeyedCheck(replica(r).stub(), kCappedKey, PublicIp(63, paid[i]), &hit);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(hit.source(), pb::SOURCE_CACHE);
    EXPECT_FALSE(hit.click_spent());
  }
  for (int r = 0; r < kAll; ++r) {
    SCOPED_TRACE(absl::StrCat("replica ", r));
    pb::CheckIpResponse refused;
    EXPECT_EQ(
        KeyedCheck(replica(r).stub(), kCappedKey, PublicIp(63, 1000 + r), &refused).error_code(),
        grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  EXPECT_EQ(sim().Requests(), kBudget);

  // Budgets are per caller: one without a budget still gets misses answered everywhere.
  for (int r = 0; r < kAll; ++r) {
    SCOPED_TRACE(absl::StrCat("replica ", r));
    pb::CheckIpResponse free_miss;
    const grpc::Status status =
        KeyedCheck(replica(r).stub(), kFreeKey, PublicIp(63, 2000 + r), &free_miss);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(free_miss.click_spent());
  }
  EXPECT_EQ(sim().Requests(), kBudget + kAll);
}

// ClickPatrol's "allowance exhausted", heard by one replica, holds on all of them: misses that
// follow on the others are refused (RESOURCE_EXHAUSTED, naming the allowance) without a request,
// although those replicas never heard ClickPatrol say it.
TEST_F(ClusterTest, AllowanceExhaustedOnOneReplicaHoldsOnEveryReplica) {
  constexpr int kReplicas = 3;
  ASSERT_NO_FATAL_FAILURE(StartSimulator({"--mode=exhausted"}));
  ASSERT_NO_FATAL_FAILURE(StartReplicas(kReplicas));
  auto check = [&](int r, const std::string& ip) {
    pb::CheckIpRequest request;
    request.set_ip(ip);
    pb::CheckIpResponse response;
    std::unique_ptr<grpc::ClientContext> context = CallerContext("ingest");
    return replica(r).stub().CheckIp(context.get(), request, &response);
  };
  const grpc::Status told = check(0, PublicIp(64, 0));
  ASSERT_EQ(told.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << told.error_message();
  ASSERT_EQ(sim().Requests(), 1);
  for (int r = 1; r < kReplicas; ++r) {
    for (int k = 0; k < 3; ++k) {
      const std::string ip = PublicIp(64, 10 * r + k + 1);
      SCOPED_TRACE(absl::StrCat("replica ", r, ", ", ip));
      const grpc::Status refused = check(r, ip);
      EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << refused.error_message();
      EXPECT_NE(refused.error_message().find("allowance is exhausted"), std::string::npos)
          << refused.error_message();
    }
  }
  EXPECT_EQ(sim().Requests(), 1) << "only the first replica asked ClickPatrol";
}

}  // namespace
}  // namespace verdictd::testing::cluster
