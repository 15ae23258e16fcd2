// End-to-end migration from SQLite to PostgreSQL: `verdictctl migrate` copies what a single
// verdictd recorded (history, ledger, usage, the page-token secret) so that a verdictd on
// PostgreSQL answers the same IPs from the store without a new click and reports the same
// history and usage.

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_fixture.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::cluster {
namespace {

using Stub = pb::VerdictService::Stub;

// Every page of the history of `ip`.
void ListAll(Stub& stub, const std::string& ip, pb::ListVerdictHistoryResponse* all) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(ip);
  request.set_page_size(2);
  for (int page = 0; page < 100; ++page) {
    pb::ListVerdictHistoryResponse response;
    const grpc::Status status =
        stub.ListVerdictHistory(CallerContext("auditor").get(), request, &response);
    ASSERT_TRUE(status.ok()) << ip << ": " << status.error_message();
    for (const pb::Verdict& v : response.verdicts()) {
      *all->add_verdicts() = v;
    }
    if (response.next_page_token().empty()) {
      return;
    }
    request.set_page_token(response.next_page_token());
  }
  FAIL() << "more than 100 pages for " << ip;
}

grpc::Status CheckFresh(Stub& stub, const std::string& ip, pb::CheckIpResponse* response,
                        const std::string& caller) {
  pb::CheckIpRequest request;
  request.set_ip(ip);
  request.mutable_max_age()->set_seconds(0);
  return stub.CheckIp(CallerContext(caller).get(), request, response);
}

TEST_F(ClusterTest, MigrateFromSqliteKeepsHistoryLedgerAndUsage) {
  constexpr int kIps = 10;
  constexpr int64_t kAllowance = 5000;
  ASSERT_NO_FATAL_FAILURE(StartSimulator());
  const std::string failing = PublicIp(69, 100);
  ASSERT_NO_FATAL_FAILURE(SetSimRules(failing + " error=5xx\n"));
  const std::vector<std::string> flags = {absl::StrCat("--monthly_allowance=", kAllowance),
                                          "--breaker_failures=0"};

  // A single verdictd on SQLite records some history: misses by two callers, hits, refreshes
  // (an IP with three verdicts) and an upstream error.
  TempDir sqlite_dir;
  auto single = std::make_unique<Verdictd>(sqlite_dir, sim().url(), kToken, flags);
  const std::string sqlite_db = single->db_path();
  std::vector<std::string> ips;
  for (int i = 0; i < kIps; ++i) {
    ips.push_back(PublicIp(69, i));
    pb::CheckIpResponse r;
    const grpc::Status status = CheckIp(single->stub(), ips[i], &r, i < 6 ? "mig-a" : "mig-b");
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  for (int i = 0; i < 3; ++i) {
    pb::CheckIpResponse r;
    ASSERT_TRUE(CheckIp(single->stub(), ips[i], &r, "mig-b").ok());
    EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  }
  for (int i = 0; i < 2; ++i) {
    pb::CheckIpResponse r;
    ASSERT_TRUE(CheckFresh(single->stub(), ips[0], &r, "mig-a").ok());
    EXPECT_TRUE(r.click_spent());
  }
  pb::CheckIpResponse error_response;
  EXPECT_EQ(CheckIp(single->stub(), failing, &error_response, "mig-b").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  constexpr int64_t kClicks = kIps + 2 + 1;
  constexpr int64_t kRequests = kIps + 3 + 2 + 1;
  ASSERT_EQ(sim().Requests(), kClicks);

  std::vector<pb::ListVerdictHistoryResponse> history_before(kIps);
  for (int i = 0; i < kIps; ++i) {
    ASSERT_NO_FATAL_FAILURE(ListAll(single->stub(), ips[i], &history_before[i]));
  }
  ASSERT_EQ(history_before[0].verdicts_size(), 3);
  // A page token handed out before the migration, for the second page of ips[0].
  pb::ListVerdictHistoryRequest first_page;
  first_page.set_ip(ips[0]);
  first_page.set_page_size(1);
  pb::ListVerdictHistoryResponse first_page_response;
  ASSERT_TRUE(
      single->stub()
          .ListVerdictHistory(CallerContext("auditor").get(), first_page, &first_page_response)
          .ok());
  ASSERT_FALSE(first_page_response.next_page_token().empty());

  pb::GetUsageResponse usage_before;
  ASSERT_TRUE(WaitUntil(
      "the usage counters flushed",
      [&]() -> absl::StatusOr<int64_t> {
        usage_before.Clear();
        const grpc::Status status = UsageOfEveryone(single->stub(), &usage_before);
        if (!status.ok()) {
          return absl::InternalError(status.error_message());
        }
        return Totals(usage_before).requests();
      },
      [](int64_t requests) { return requests == kRequests; }, absl::Seconds(10)));
  EXPECT_EQ(Totals(usage_before).clicks(), kClicks);
  EXPECT_EQ(Totals(usage_before).cache_hits(), 3);
  EXPECT_EQ(Totals(usage_before).upstream_errors(), 1);
  EXPECT_EQ(usage_before.allowance().clicks_used(), kClicks);
  ASSERT_EQ(single->Stop(), 0);
  single.reset();
  const int64_t sqlite_clicks = QueryInt(sqlite_db, "SELECT count(*) FROM clicks");
  const int64_t sqlite_verdicts = QueryInt(sqlite_db, "SELECT count(*) FROM verdicts");
  EXPECT_EQ(sqlite_clicks, kClicks);

  absl::StatusOr<CommandResult> migrate =
      RunCommand({VERDICTCTL_BIN, "migrate", "--from=" + sqlite_db, "--to=" + db_uri()}, "", {},
                 absl::Seconds(60));
  ASSERT_TRUE(migrate.ok()) << migrate.status();
  ASSERT_EQ(migrate->exit_code, 0) << "stdout:\n" << migrate->out << "\nstderr:\n" << migrate->err;

  EXPECT_EQ(SqlInt("SELECT count(*) FROM clicks"), sqlite_clicks);
  EXPECT_EQ(SqlInt("SELECT count(*) FROM verdicts"), sqlite_verdicts);
  for (int outcome = 0; outcome <= 3; ++outcome) {
    SCOPED_TRACE(absl::StrCat("outcome ", outcome));
    EXPECT_EQ(
        SqlInt(absl::StrCat("SELECT count(*) FROM clicks WHERE outcome = ", outcome)),
        QueryInt(sqlite_db, absl::StrCat("SELECT count(*) FROM clicks WHERE outcome = ", outcome)));
  }

  // verdictd on PostgreSQL: the same usage, history and answers, and nothing new sent.
  ASSERT_NO_FATAL_FAILURE(StartReplicas(1, flags));
  Stub& pg_stub = replica(0).stub();
  pb::GetUsageResponse usage_after;
  ASSERT_TRUE(UsageOfEveryone(pg_stub, &usage_after).ok());
  EXPECT_TRUE(SameMessage(usage_before, usage_after)) << "usage changed in the migration";
  for (int i = 0; i < kIps; ++i) {
    SCOPED_TRACE(ips[i]);
    pb::ListVerdictHistoryResponse history_after;
    ASSERT_NO_FATAL_FAILURE(ListAll(pg_stub, ips[i], &history_after));
    EXPECT_TRUE(SameMessage(history_before[i], history_after)) << "history changed";
  }
  // The secret that signs page tokens came along: a token from before still works.
  pb::ListVerdictHistoryRequest second_page = first_page;
  second_page.set_page_token(first_page_response.next_page_token());
  pb::ListVerdictHistoryResponse second_page_response;
  const grpc::Status second_status = pg_stub.ListVerdictHistory(CallerContext("auditor").get(),
                                                                second_page, &second_page_response);
  EXPECT_TRUE(second_status.ok()) << "a page token from before the migration: "
                                  << second_status.error_message();
  if (second_status.ok()) {
    ASSERT_EQ(second_page_response.verdicts_size(), 1);
    EXPECT_TRUE(SameMessage(history_before[0].verdicts(1), second_page_response.verdicts(0)));
  }

  for (int i = 0; i < kIps; ++i) {
    SCOPED_TRACE(ips[i]);
    pb::CheckIpResponse r;
    const grpc::Status status = CheckIp(pg_stub, ips[i], &r, "after");
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
    EXPECT_FALSE(r.click_spent());
    EXPECT_TRUE(SameMessage(history_before[i].verdicts(0), r.verdict()))
        << "the newest verdict is the one served";
  }
  EXPECT_EQ(sim().Requests(), kClicks) << "a migrated verdict was asked for again";
  ExpectLedgerConsistent();
}

}  // namespace
}  // namespace verdictd::testing::cluster
