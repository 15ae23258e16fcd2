// End-to-end usage attribution in open mode: clicks, cache hits, requests and upstream errors are
// counted per caller and per UTC day, and every billed request is attributed to one caller.

#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/process.h"

namespace verdictd::testing::audit {
namespace {

using ::testing::AnyOf;

class AuditUsageTest : public ::testing::Test {
 protected:
  TempDir dir_;
  Simulator sim_{dir_, kToken};
  Verdictd verdictd_{dir_, sim_.url(), kToken};
};

TEST_F(AuditUsageTest, ClicksHitsAndRequestsAreAttributedPerCaller) {
  const absl::Time day_before = absl::Now();
  const std::vector<std::string> alice_ips = {"11.1.0.1", "11.1.0.2", "11.1.0.3", "11.1.0.4",
                                              "11.1.0.5"};
  pb::CheckIpResponse r;
  for (const std::string& ip : alice_ips) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), ip, &r, "alice").ok());
    EXPECT_TRUE(r.click_spent());
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), alice_ips[i], &r, "alice").ok());
    EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  }
  for (const char* ip : {"11.2.0.1", "11.2.0.2"}) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), ip, &r, "bob").ok());
    EXPECT_TRUE(r.click_spent());
  }
  for (const char* ip : {"11.2.0.1", "11.1.0.4", "11.1.0.5", "11.1.0.4"}) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), ip, &r, "bob").ok());
    EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
    EXPECT_FALSE(r.click_spent());
  }
  // A refused check counts as a request of its caller, but not as a click.
  EXPECT_EQ(CheckIp(verdictd_.stub(), "10.0.0.1", &r, "bob").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // No wait: GetUsage writes pending counters before it reads.
  pb::GetUsageResponse usage;
  grpc::Status status = OpenUsageSinceEpoch(verdictd_.stub(), "", &usage);
  const absl::Time day_after = absl::Now();
  ASSERT_TRUE(status.ok()) << status.error_message();
  const pb::CallerUsage* alice = FindCaller(usage, "alice");
  const pb::CallerUsage* bob = FindCaller(usage, "bob");
  ASSERT_NE(alice, nullptr);
  ASSERT_NE(bob, nullptr);
  EXPECT_EQ(alice->clicks(), 5);
  EXPECT_EQ(alice->cache_hits(), 3);
  EXPECT_EQ(alice->requests(), 8);
  EXPECT_EQ(alice->upstream_errors(), 0);
  EXPECT_EQ(bob->clicks(), 2);
  EXPECT_EQ(bob->cache_hits(), 4);
  EXPECT_EQ(bob->requests(), 7) << "the refused check was asked, so it is a request";

  int64_t sum_clicks = 0;
  for (const pb::CallerUsage& c : usage.callers()) {
    sum_clicks += c.clicks();
  }
  EXPECT_EQ(sum_clicks, sim_.Requests()) << "every billed request is attributed to one caller";
  EXPECT_EQ(sim_.Requests(), 7);

  // The per-day breakdown: all of it today (UTC), summing to the totals.
  for (const pb::CallerUsage* c : {alice, bob}) {
    SCOPED_TRACE(c->caller());
    ASSERT_GE(c->days_size(), 1);
    int64_t clicks = 0;
    int64_t hits = 0;
    int64_t requests = 0;
    for (const pb::DailyUsage& day : c->days()) {
      clicks += day.clicks();
      hits += day.cache_hits();
      requests += day.requests();
    }
    EXPECT_EQ(clicks, c->clicks());
    EXPECT_EQ(hits, c->cache_hits());
    EXPECT_EQ(requests, c->requests());
    const pb::DailyUsage& last = c->days(c->days_size() - 1);
    EXPECT_THAT(last.date(), AnyOf(UtcDate(day_before), UtcDate(day_after)));
    if (UtcDate(day_before) == UtcDate(day_after)) {
      ASSERT_EQ(c->days_size(), 1);
      EXPECT_EQ(last.clicks(), c->clicks());
      EXPECT_EQ(last.cache_hits(), c->cache_hits());
    }
  }

  // One caller's view matches its part of everyone's, and the default range (this month) agrees.
  pb::GetUsageRequest only_alice;
  only_alice.set_caller("alice");
  pb::GetUsageResponse alice_usage;
  ASSERT_TRUE(
      verdictd_.stub().GetUsage(CallerContext("alice").get(), only_alice, &alice_usage).ok());
  ASSERT_EQ(alice_usage.callers_size(), 1);
  if (UtcDate(day_before).substr(0, 7) == UtcDate(day_after).substr(0, 7)) {
    EXPECT_EQ(alice_usage.callers(0).clicks(), 5);
    EXPECT_EQ(alice_usage.callers(0).cache_hits(), 3);
    EXPECT_EQ(alice_usage.callers(0).requests(), 8);
  }
  // Usage reads do not count as usage.
  usage.Clear();
  ASSERT_TRUE(OpenUsageSinceEpoch(verdictd_.stub(), "alice", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).requests(), 8);
}

TEST_F(AuditUsageTest, UpstreamErrorsAreClicksAndErrors) {
  sim_.Configure({{"mode", "5xx"}});
  pb::CheckIpResponse r;
  EXPECT_EQ(CheckIp(verdictd_.stub(), "11.3.0.1", &r, "carol").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  sim_.Configure({{"mode", "ok"}});
  ASSERT_TRUE(CheckIp(verdictd_.stub(), "11.3.0.1", &r, "carol").ok());
  pb::GetUsageResponse usage;
  ASSERT_TRUE(OpenUsageSinceEpoch(verdictd_.stub(), "carol", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).clicks(), 2) << "a failed request is billed too";
  EXPECT_EQ(usage.callers(0).upstream_errors(), 1);
  EXPECT_EQ(usage.callers(0).requests(), 2);
  EXPECT_EQ(sim_.Requests(), 2);
}

}  // namespace
}  // namespace verdictd::testing::audit
