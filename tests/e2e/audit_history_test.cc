// End-to-end paged verdict history (ListVerdictHistory): newest first, complete once, since/until
// subranges, bad ranges and sizes, and page tokens that are tamper-evident, bound to their query
// and valid across a restart.

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/process.h"

namespace verdictd::testing::audit {
namespace {

using ::testing::ElementsAreArray;

class HistoryPagingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StartVerdictd();
    // N verdicts for one IP: max_age=0 asks ClickPatrol every time, and history is append-only.
    pb::CheckIpRequest request;
    request.set_ip(kIp);
    request.mutable_max_age()->set_seconds(0);
    for (int i = 0; i < kN; ++i) {
      pb::CheckIpResponse response;
      ASSERT_TRUE(verdictd_->stub().CheckIp(CallerContext("hist").get(), request, &response).ok());
      ASSERT_EQ(response.source(), pb::SOURCE_UPSTREAM);
      checked_at_.push_back(Micros(response.verdict().checked_at()));
    }
    // Another IP's verdict, which must never show up.
    pb::CheckIpResponse other;
    ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &other, "hist").ok());
    // Distinct times, so that a subrange is unambiguous.
    for (int i = 1; i < kN; ++i) {
      ASSERT_LT(checked_at_[i - 1], checked_at_[i]);
    }
  }
  void StartVerdictd() {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(dir_, sim_.url(), kToken);
  }

  grpc::Status List(const pb::ListVerdictHistoryRequest& request,
                    pb::ListVerdictHistoryResponse* response) {
    return verdictd_->stub().ListVerdictHistory(CallerContext("hist").get(), request, response);
  }

  // Follows next_page_token to the end; the page sizes and every checked_at, in order.
  void ListAll(pb::ListVerdictHistoryRequest request, std::vector<int>* page_sizes,
               std::vector<int64_t>* times) {
    for (int page = 0; page < 100; ++page) {
      pb::ListVerdictHistoryResponse response;
      grpc::Status status = List(request, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      page_sizes->push_back(response.verdicts_size());
      for (const pb::Verdict& v : response.verdicts()) {
        EXPECT_EQ(v.ip(), kIp);
        times->push_back(Micros(v.checked_at()));
      }
      if (response.next_page_token().empty()) {
        return;
      }
      request.set_page_token(response.next_page_token());
    }
    FAIL() << "paging did not end";
  }

  static constexpr char kIp[] = "9.9.9.9";
  static constexpr int kN = 7;
  TempDir dir_;
  Simulator sim_{dir_, kToken};
  std::unique_ptr<Verdictd> verdictd_;
  std::vector<int64_t> checked_at_;  // oldest first
};

TEST_F(HistoryPagingTest, PagesAreNewestFirstAndCompleteOnce) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  request.set_page_size(3);
  std::vector<int> sizes;
  std::vector<int64_t> times;
  ListAll(request, &sizes, &times);
  EXPECT_THAT(sizes, ElementsAreArray({3, 3, 1}));
  std::vector<int64_t> newest_first(checked_at_.rbegin(), checked_at_.rend());
  EXPECT_THAT(times, ElementsAreArray(newest_first));

  // A non-canonical spelling of the IP is the same history.
  request.set_ip("::ffff:9.9.9.9");
  request.set_page_size(0);  // the default (100)
  pb::ListVerdictHistoryResponse all;
  ASSERT_TRUE(List(request, &all).ok());
  EXPECT_EQ(all.verdicts_size(), kN);
  EXPECT_TRUE(all.next_page_token().empty());
  EXPECT_EQ(all.verdicts(0).caller(), "hist");
  EXPECT_NE(all.verdicts(0).score(), pb::SCORE_UNSPECIFIED);
}

TEST_F(HistoryPagingTest, SinceAndUntilSelectASubrange) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  request.set_page_size(2);
  // [since, until): verdicts 2, 3 and 4 (since is inclusive, until exclusive).
  *request.mutable_since() = TimestampFromMicros(checked_at_[2]);
  *request.mutable_until() = TimestampFromMicros(checked_at_[5]);
  std::vector<int> sizes;
  std::vector<int64_t> times;
  ListAll(request, &sizes, &times);
  EXPECT_THAT(sizes, ElementsAreArray({2, 1}));
  EXPECT_THAT(times, ElementsAreArray({checked_at_[4], checked_at_[3], checked_at_[2]}));

  // Only since, only until.
  request.clear_until();
  request.set_page_size(100);
  pb::ListVerdictHistoryResponse response;
  ASSERT_TRUE(List(request, &response).ok());
  EXPECT_EQ(response.verdicts_size(), kN - 2);
  request.clear_since();
  *request.mutable_until() = TimestampFromMicros(checked_at_[2]);
  response.Clear();
  ASSERT_TRUE(List(request, &response).ok());
  ASSERT_EQ(response.verdicts_size(), 2);
  EXPECT_EQ(Micros(response.verdicts(0).checked_at()), checked_at_[1]);
}

TEST_F(HistoryPagingTest, BadRangesAndSizes) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  pb::ListVerdictHistoryResponse response;
  *request.mutable_since() = TimestampFromMicros(checked_at_[3]);
  *request.mutable_until() = TimestampFromMicros(checked_at_[3]);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  *request.mutable_until() = TimestampFromMicros(checked_at_[1]);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  request.clear_since();
  request.clear_until();
  request.set_page_size(-1);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_page_size(5000);  // clamped to 1000, not refused
  response.Clear();
  grpc::Status status = List(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.verdicts_size(), kN);
  EXPECT_TRUE(response.next_page_token().empty());

  request.set_ip("9.9.9.9:53");
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(HistoryPagingTest, PageTokensAreTamperEvidentBoundAndSurviveRestart) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  request.set_page_size(3);
  *request.mutable_since() = TimestampFromMicros(checked_at_[0]);
  pb::ListVerdictHistoryResponse first;
  ASSERT_TRUE(List(request, &first).ok());
  const std::string token = first.next_page_token();
  ASSERT_FALSE(token.empty());

  pb::ListVerdictHistoryResponse second;
  request.set_page_token(token);
  ASSERT_TRUE(List(request, &second).ok());
  ASSERT_EQ(second.verdicts_size(), 3);

  pb::ListVerdictHistoryResponse response;
  // Every single-character change is caught (the token is MACed), wherever it is.
  for (size_t pos : {size_t{0}, token.size() / 2, token.size() - 2}) {
    std::string tampered = token;
    tampered[pos] = tampered[pos] == 'A' ? 'B' : 'A';
    SCOPED_TRACE(pos);
    request.set_page_token(tampered);
    grpc::Status status = List(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  request.set_page_token("not a token");
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_page_token(token + token);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // A valid token only continues the query it came from.
  request.set_page_token(token);
  request.set_ip("1.1.1.1");
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_ip(kIp);
  *request.mutable_since() = TimestampFromMicros(checked_at_[1]);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.clear_since();
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  *request.mutable_since() = TimestampFromMicros(checked_at_[0]);
  *request.mutable_until() = TimestampFromMicros(checked_at_[kN - 1] + 1);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.clear_until();

  // The signing secret is in the database, so tokens outlive the process.
  EXPECT_EQ(verdictd_->Stop(), 0);
  StartVerdictd();
  pb::ListVerdictHistoryResponse after;
  grpc::Status status = List(request, &after);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(after.verdicts_size(), second.verdicts_size());
  for (int i = 0; i < after.verdicts_size(); ++i) {
    EXPECT_EQ(Micros(after.verdicts(i).checked_at()), Micros(second.verdicts(i).checked_at()));
  }
  EXPECT_EQ(after.next_page_token(), second.next_page_token());
}

}  // namespace
}  // namespace verdictd::testing::audit
