// End-to-end: the real verdictd binary, a SQLite file in a temp dir, and the simulated
// ClickPatrol over loopback HTTP.

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::HasSubstr;
using ::testing::Not;

// A distinctive token, so a leak is easy to grep for.
constexpr char kToken[] = "cp_E2eSecretToken_5f1d8c2a9b";

class CheckTest : public ::testing::Test {
 protected:
  void StartVerdictd(std::vector<std::string> flags = {}) {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(dir_, sim_.url(), kToken, std::move(flags));
  }
  void SetUp() override { StartVerdictd(); }

  TempDir dir_;
  Simulator sim_{dir_, kToken};
  std::unique_ptr<Verdictd> verdictd_;
};

TEST_F(CheckTest, MissThenHitSpendsExactlyOneClick) {
  pb::CheckIpResponse first;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &first, "ads").ok());
  EXPECT_EQ(first.source(), pb::SOURCE_UPSTREAM);
  EXPECT_TRUE(first.click_spent());
  EXPECT_EQ(first.verdict().ip(), "8.8.8.8");
  EXPECT_NE(first.verdict().score(), pb::SCORE_UNSPECIFIED);
  EXPECT_EQ(first.verdict().caller(), "ads");
  EXPECT_GT(first.verdict().checked_at().seconds(), 1'600'000'000);

  pb::CheckIpResponse second;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &second, "signup").ok());
  EXPECT_EQ(second.source(), pb::SOURCE_CACHE);
  EXPECT_FALSE(second.click_spent());
  EXPECT_EQ(second.verdict().score(), first.verdict().score());
  EXPECT_EQ(second.verdict().caller(), "ads") << "the verdict names who paid for it";
  EXPECT_EQ(second.verdict().checked_at().seconds(), first.verdict().checked_at().seconds());

  EXPECT_EQ(sim_.Requests(), 1);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks"), 1);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks WHERE caller='ads'"), 1);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM verdicts"), 1);
}

TEST_F(CheckTest, CanonicalFormsShareOneVerdict) {
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "2001:4860:4860:0:0:0:0:8888", &r).ok());
  EXPECT_EQ(r.verdict().ip(), "2001:4860:4860::8888");
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "2001:4860:4860::8888", &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.0.0.1", &r).ok());
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "::ffff:1.0.0.1", &r).ok());
  EXPECT_EQ(r.verdict().ip(), "1.0.0.1");
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_EQ(sim_.Requests(), 2);
}

TEST_F(CheckTest, MaxAgeForcesRefresh) {
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "9.9.9.9", &r).ok());
  pb::CheckIpRequest request;
  request.set_ip("9.9.9.9");
  request.mutable_max_age()->set_seconds(0);
  ASSERT_TRUE(verdictd_->stub().CheckIp(CallerContext().get(), request, &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_TRUE(r.click_spent());
  request.mutable_max_age()->set_seconds(3600);
  ASSERT_TRUE(verdictd_->stub().CheckIp(CallerContext().get(), request, &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_EQ(sim_.Requests(), 2);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM verdicts"), 2)
      << "history is append-only";
}

TEST_F(CheckTest, ServerMaxAgeFlagApplies) {
  StartVerdictd({"--max_age=0"});
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "9.9.9.9", &r).ok());
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "9.9.9.9", &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(sim_.Requests(), 2);
}

TEST_F(CheckTest, RestartKeepsVerdicts) {
  pb::CheckIpResponse before;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.4.4", &before).ok());
  EXPECT_EQ(verdictd_->Stop(), 0);
  StartVerdictd();
  pb::CheckIpResponse after;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.4.4", &after).ok());
  EXPECT_EQ(after.source(), pb::SOURCE_CACHE);
  EXPECT_EQ(after.verdict().score(), before.verdict().score());
  EXPECT_EQ(sim_.Requests(), 1);
}

TEST_F(CheckTest, UserAgentIsSentAsParameterAndHeader) {
  const std::string ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) a&b=c+d%e";
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "4.2.2.2", &r, "e2e", ua).ok());
  EXPECT_EQ(r.verdict().user_agent(), ua);
  nlohmann::json stats = sim_.Stats();
  EXPECT_EQ(stats.at("last_user_agent").get<std::string>(), ua);
  EXPECT_EQ(stats.at("last_user_http_header").get<std::string>(), ua);
}

TEST_F(CheckTest, InvalidIpsAreRejectedWithoutSpending) {
  for (const char* ip : {"", "8.8.8.8:53", "8.8.8.0/24", " 8.8.8.8", "fe80::1%eth0", "008.8.8.8",
                         "[2001:db8::1]", "example.com", "1.2.3"}) {
    SCOPED_TRACE(ip);
    pb::CheckIpResponse r;
    grpc::Status status = CheckIp(verdictd_->stub(), ip, &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_FALSE(status.error_message().empty());
  }
  EXPECT_EQ(sim_.Requests(), 0);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks"), 0);
}

TEST_F(CheckTest, ServerErrorsAreUnavailableAndNotCached) {
  sim_.Configure({{"mode", "5xx"}});
  pb::CheckIpResponse r;
  grpc::Status status = CheckIp(verdictd_->stub(), "1.1.1.1", &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  status = CheckIp(verdictd_->stub(), "1.1.1.1", &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << "errors are not cached";
  EXPECT_EQ(sim_.Requests(), 2);

  sim_.Configure({{"mode", "ok"}});
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(sim_.Requests(), 3);
  // Every request is in the ledger, failed ones too: they were billed.
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks"), 3);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks WHERE outcome=2"), 2);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM verdicts"), 1);
}

TEST_F(CheckTest, GarbageIsInternalAndNotCached) {
  sim_.Configure({{"mode", "garbage"}});
  pb::CheckIpResponse r;
  grpc::Status status = CheckIp(verdictd_->stub(), "1.1.1.1", &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(status.error_message(), Not(HasSubstr("<html>")))
      << "the body goes to the log, not to callers";
  sim_.Configure({{"mode", "ok"}});
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &r).ok());
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(sim_.Requests(), 2);
}

TEST_F(CheckTest, StaleVerdictServedWhenClickPatrolFails) {
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &r).ok());
  sim_.Configure({{"mode", "5xx"}});
  pb::CheckIpRequest request;
  request.set_ip("1.1.1.1");
  request.mutable_max_age()->set_seconds(0);
  pb::CheckIpResponse stale;
  ASSERT_TRUE(verdictd_->stub().CheckIp(CallerContext().get(), request, &stale).ok());
  EXPECT_EQ(stale.source(), pb::SOURCE_STALE);
  EXPECT_EQ(stale.verdict().score(), r.verdict().score());
}

TEST_F(CheckTest, TokenRejectionIsFailedPrecondition) {
  sim_.Configure({{"mode", "unauthorized"}});
  pb::CheckIpResponse r;
  grpc::Status status = CheckIp(verdictd_->stub(), "1.1.1.1", &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(CheckTest, AllowanceExhaustedIsResourceExhausted) {
  sim_.Configure({{"mode", "exhausted"}});
  pb::CheckIpResponse r;
  grpc::Status status = CheckIp(verdictd_->stub(), "1.1.1.1", &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(CheckTest, NonPublicAddressesAreNeverSent) {
  pb::CheckIpResponse r;
  grpc::Status status = CheckIp(verdictd_->stub(), "192.168.1.10", &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(sim_.Requests(), 0);
}

TEST_F(CheckTest, BatchKeepsOrderDeduplicatesAndReportsItemErrors) {
  pb::CheckBatchRequest batch;
  for (const char* ip : {"8.8.8.8", "not-an-ip", "1.1.1.1", "8.8.8.8", "::ffff:8.8.8.8", "10.1.2.3",
                         "1.1.1.1", ""}) {
    batch.add_items()->set_ip(ip);
  }
  pb::CheckBatchResponse response;
  ASSERT_TRUE(verdictd_->stub().CheckBatch(CallerContext("batcher").get(), batch, &response).ok());
  ASSERT_EQ(response.results_size(), 8);
  auto ip_of = [&](int i) { return response.results(i).result().verdict().ip(); };
  EXPECT_EQ(ip_of(0), "8.8.8.8");
  EXPECT_EQ(response.results(1).error().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(response.results(1).error().message(), HasSubstr("not-an-ip"));
  EXPECT_EQ(ip_of(2), "1.1.1.1");
  EXPECT_EQ(ip_of(3), "8.8.8.8");
  EXPECT_EQ(ip_of(4), "8.8.8.8");
  EXPECT_EQ(response.results(5).error().code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ip_of(6), "1.1.1.1");
  EXPECT_EQ(response.results(7).error().code(), grpc::StatusCode::INVALID_ARGUMENT);
  int spent = 0;
  for (const pb::CheckBatchResult& result : response.results()) {
    spent += result.has_result() && result.result().click_spent() ? 1 : 0;
  }
  EXPECT_EQ(spent, 2) << "duplicates inside one batch cost one click";
  EXPECT_EQ(sim_.Requests(), 2);
}

TEST_F(CheckTest, BatchOfDistinctMissesAllAnswered) {
  pb::CheckBatchRequest batch;
  for (int i = 0; i < 200; ++i) {
    batch.add_items()->set_ip(absl::StrCat("11.0.", i / 250, ".", i % 250 + 1));
  }
  pb::CheckBatchResponse response;
  ASSERT_TRUE(verdictd_->stub().CheckBatch(CallerContext().get(), batch, &response).ok());
  ASSERT_EQ(response.results_size(), 200);
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(response.results(i).has_result()) << response.results(i).error().message();
    EXPECT_EQ(response.results(i).result().verdict().ip(), batch.items(i).ip());
  }
  EXPECT_EQ(sim_.Requests(), 200);
}

TEST_F(CheckTest, BatchOverTheLimitIsRejectedWhole) {
  StartVerdictd({"--max_batch=10"});
  pb::CheckBatchRequest batch;
  for (int i = 0; i < 11; ++i) {
    batch.add_items()->set_ip("8.8.8.8");
  }
  pb::CheckBatchResponse response;
  grpc::Status status = verdictd_->stub().CheckBatch(CallerContext().get(), batch, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("limit is 10"));
  EXPECT_EQ(sim_.Requests(), 0);
}

TEST_F(CheckTest, TokenNeverAppearsInLogsOrDatabase) {
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "ads", "UA").ok());
  for (const char* mode : {"5xx", "garbage", "unauthorized", "exhausted"}) {
    sim_.Configure({{"mode", mode}});
    grpc::Status status = CheckIp(verdictd_->stub(), "8.8.4.4", &r);
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(status.error_message(), Not(HasSubstr(kToken)));
  }
  ASSERT_EQ(verdictd_->Stop(), 0);
  const std::string log = verdictd_->Log();
  EXPECT_THAT(log, HasSubstr("upstream caller=ads ip=8.8.8.8 outcome=verdict"));
  EXPECT_THAT(log, Not(HasSubstr(kToken)));
  for (const char* suffix : {"", "-wal", "-shm"}) {
    EXPECT_THAT(ReadFileOrEmpty(verdictd_->db_path() + suffix), Not(HasSubstr(kToken))) << suffix;
  }
}

TEST(StartupTest, RefusesToStartWithoutAToken) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + dir.File("v.db")}, {}, dir.File("log"));
  ASSERT_TRUE(process.ok());
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  ASSERT_TRUE(code.ok());
  EXPECT_NE(*code, 0);
  EXPECT_THAT(ReadFileOrEmpty(dir.File("log")), HasSubstr("CLICKPATROL_TOKEN"));
}

TEST(StartupTest, RejectsBadFlagValuesByName) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + dir.File("v.db"), "--max_age=soon"},
      {{"CLICKPATROL_TOKEN", "t"}}, dir.File("log"));
  ASSERT_TRUE(process.ok());
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 2);
  EXPECT_THAT(ReadFileOrEmpty(dir.File("log")), HasSubstr("--max_age"));
}

}  // namespace
}  // namespace verdictd::testing
