// End-to-end click audit: ListClicks pages the real ledger newest first with each click's
// caller, outcome, HTTP status and verdict; its filters and page tokens; and who may read whose
// clicks in keyed mode. Against the real verdictd binary and the simulated ClickPatrol.

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"

namespace verdictd::testing::audit {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

grpc::Status ListClicks(pb::VerdictService::Stub& stub, std::unique_ptr<grpc::ClientContext> ctx,
                        const pb::ListClicksRequest& request, pb::ListClicksResponse* response) {
  return stub.ListClicks(ctx.get(), request, response);
}

std::vector<std::string> Ips(const pb::ListClicksResponse& response) {
  std::vector<std::string> ips;
  for (const pb::Click& c : response.clicks()) {
    ips.push_back(c.ip());
  }
  return ips;
}

class ClicksAuditTest : public ::testing::Test {
 protected:
  TempDir dir_;
  Simulator sim_{dir_, kToken};
};

TEST_F(ClicksAuditTest, TheLedgerIsListedNewestFirstWithWhatEachClickBrought) {
  Verdictd verdictd(dir_, sim_.url(), kToken);
  pb::CheckIpResponse response;
  ASSERT_TRUE(CheckIp(verdictd.stub(), "8.8.8.8", &response, "ads").ok());
  ASSERT_TRUE(CheckIp(verdictd.stub(), "8.8.8.8", &response, "ads").ok());  // a hit: no click
  ASSERT_EQ(response.source(), pb::SOURCE_CACHE);
  sim_.Configure({{"mode", "5xx"}});
  EXPECT_EQ(CheckIp(verdictd.stub(), "1.1.1.1", &response, "signup").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  sim_.Configure({{"mode", "ok"}});
  ASSERT_TRUE(CheckIp(verdictd.stub(), "9.9.9.9", &response, "signup").ok());
  ASSERT_EQ(sim_.Requests(), 3);

  pb::ListClicksResponse clicks;
  grpc::Status status =
      ListClicks(verdictd.stub(), CallerContext("ops"), pb::ListClicksRequest(), &clicks);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_THAT(Ips(clicks), ElementsAre("9.9.9.9", "1.1.1.1", "8.8.8.8"));
  EXPECT_TRUE(clicks.next_page_token().empty());

  const pb::Click ok = clicks.clicks(0);  // copies: `clicks` is reused below
  EXPECT_EQ(ok.caller(), "signup");
  EXPECT_EQ(ok.outcome(), pb::CLICK_OUTCOME_VERDICT);
  EXPECT_TRUE(ok.billed());
  EXPECT_EQ(ok.http_status(), 200);
  EXPECT_TRUE(ok.has_completed_at());
  ASSERT_TRUE(ok.has_verdict());
  EXPECT_EQ(ok.verdict().ip(), "9.9.9.9");
  EXPECT_EQ(ok.verdict().checked_at().seconds(), response.verdict().checked_at().seconds());
  EXPECT_EQ(ok.verdict().score(), response.verdict().score());

  const pb::Click failed = clicks.clicks(1);
  EXPECT_EQ(failed.caller(), "signup");
  EXPECT_EQ(failed.outcome(), pb::CLICK_OUTCOME_ERROR);
  EXPECT_TRUE(failed.billed());
  EXPECT_EQ(failed.http_status(), 503);
  EXPECT_THAT(failed.error(), HasSubstr("503"));
  EXPECT_FALSE(failed.has_verdict());

  const pb::Click first = clicks.clicks(2);
  EXPECT_EQ(first.caller(), "ads");
  EXPECT_EQ(first.outcome(), pb::CLICK_OUTCOME_VERDICT);
  EXPECT_LE(Micros(first.requested_at()), Micros(first.completed_at()));
  EXPECT_GT(first.id(), 0);
  EXPECT_NE(first.id(), ok.id());

  // Filters: a caller, an IP (in any spelling), both, and a time range.
  pb::ListClicksRequest request;
  request.set_caller("signup");
  ASSERT_TRUE(ListClicks(verdictd.stub(), CallerContext("ops"), request, &clicks).ok());
  EXPECT_THAT(Ips(clicks), ElementsAre("9.9.9.9", "1.1.1.1"));
  request.set_ip("001.001.001.001");
  status = ListClicks(verdictd.stub(), CallerContext("ops"), request, &clicks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "leading zeros";
  request.set_ip("1.1.1.1");
  ASSERT_TRUE(ListClicks(verdictd.stub(), CallerContext("ops"), request, &clicks).ok());
  EXPECT_THAT(Ips(clicks), ElementsAre("1.1.1.1"));
  request.set_caller("ads");
  ASSERT_TRUE(ListClicks(verdictd.stub(), CallerContext("ops"), request, &clicks).ok());
  EXPECT_TRUE(clicks.clicks().empty());
  request.Clear();
  *request.mutable_since() = TimestampFromMicros(Micros(failed.requested_at()));
  *request.mutable_until() = TimestampFromMicros(Micros(ok.requested_at()));
  ASSERT_TRUE(ListClicks(verdictd.stub(), CallerContext("ops"), request, &clicks).ok());
  EXPECT_THAT(Ips(clicks), ElementsAre("1.1.1.1")) << "since inclusive, until exclusive";
}

TEST_F(ClicksAuditTest, PagesFollowTheirTokenAndTokensAreBoundToTheirFilters) {
  Verdictd verdictd(dir_, sim_.url(), kToken);
  pb::CheckBatchRequest batch;
  for (int i = 0; i < 7; ++i) {
    batch.add_items()->set_ip(absl::StrCat("8.8.4.", i + 1));
  }
  pb::CheckBatchResponse batch_response;
  ASSERT_TRUE(verdictd.stub().CheckBatch(CallerContext("ads").get(), batch, &batch_response).ok());
  ASSERT_EQ(sim_.Requests(), 7);

  pb::ListClicksRequest request;
  request.set_caller("ads");
  request.set_page_size(3);
  std::set<int64_t> seen;
  int pages = 0;
  std::string second_token;
  do {
    pb::ListClicksResponse page;
    grpc::Status status = ListClicks(verdictd.stub(), CallerContext("ads"), request, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_LE(page.clicks_size(), 3);
    for (const pb::Click& c : page.clicks()) {
      EXPECT_TRUE(seen.insert(c.id()).second) << "click " << c.id() << " listed twice";
    }
    if (pages == 0) {
      second_token = page.next_page_token();
    }
    request.set_page_token(page.next_page_token());
    ++pages;
  } while (!request.page_token().empty() && pages < 10);
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(pages, 3);

  // A token is good only for the filters it was made with, and only for ListClicks.
  ASSERT_FALSE(second_token.empty());
  pb::ListClicksRequest changed;
  changed.set_caller("signup");
  changed.set_page_token(second_token);
  pb::ListClicksResponse page;
  grpc::Status status = ListClicks(verdictd.stub(), CallerContext("ads"), changed, &page);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("different request"));
  pb::ListVerdictHistoryRequest history;
  history.set_ip("8.8.4.1");
  history.set_page_token(second_token);
  pb::ListVerdictHistoryResponse history_page;
  status = verdictd.stub().ListVerdictHistory(CallerContext("ads").get(), history, &history_page);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  changed = request;
  changed.set_page_token(second_token + "A");
  status = ListClicks(verdictd.stub(), CallerContext("ads"), changed, &page);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "page_token is invalid");
  // Bad filters are named, and spend nothing.
  for (const auto& [field, value] : std::vector<std::pair<std::string, std::string>>{
           {"ip", "not-an-ip"}, {"caller", "two words"}}) {
    pb::ListClicksRequest bad;
    if (field == "ip") {
      bad.set_ip(value);
    } else {
      bad.set_caller(value);
    }
    status = ListClicks(verdictd.stub(), CallerContext("ads"), bad, &page);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
  }
  pb::ListClicksRequest negative;
  negative.set_page_size(-1);
  status = ListClicks(verdictd.stub(), CallerContext("ads"), negative, &page);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(sim_.Requests(), 7);
}

TEST_F(ClicksAuditTest, InKeyedModeACallerReadsItsOwnClicksAndAnAuditorEveryones) {
  const std::string keys = dir_.File("api_keys");
  WriteFile(keys,
            KeysFileLine("alice", kAliceKey) + KeysFileLine("bob", kBobKey) +
                KeysFileLine("audit", kAuditKey, "- auditor"),
            0600);
  Verdictd verdictd(dir_, sim_.url(), kToken, {"--api_keys_file=" + keys});
  pb::CheckIpResponse response;
  ASSERT_TRUE(KeyedCheck(verdictd.stub(), kAliceKey, "8.8.8.8", &response).ok());
  ASSERT_TRUE(KeyedCheck(verdictd.stub(), kBobKey, "1.1.1.1", &response).ok());

  pb::ListClicksRequest own;
  own.set_caller("alice");
  pb::ListClicksResponse clicks;
  grpc::Status status = ListClicks(verdictd.stub(), KeyContext(kAliceKey), own, &clicks);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(Ips(clicks), ElementsAre("8.8.8.8"));

  pb::ListClicksRequest other;
  other.set_caller("bob");
  status = ListClicks(verdictd.stub(), KeyContext(kAliceKey), other, &clicks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), HasSubstr("may read only its own clicks"));
  status = ListClicks(verdictd.stub(), KeyContext(kAliceKey), pb::ListClicksRequest(), &clicks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), HasSubstr("only auditors"));
  status = ListClicks(verdictd.stub(), AuthContext(std::nullopt, "audit"), pb::ListClicksRequest(),
                      &clicks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "x-caller is no key";

  status = ListClicks(verdictd.stub(), KeyContext(kAuditKey), pb::ListClicksRequest(), &clicks);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(Ips(clicks), ElementsAre("1.1.1.1", "8.8.8.8"));
  status = ListClicks(verdictd.stub(), KeyContext(kAuditKey), other, &clicks);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(Ips(clicks), ElementsAre("1.1.1.1"));
}

}  // namespace
}  // namespace verdictd::testing::audit
