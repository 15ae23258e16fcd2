// End-to-end health, reflection and metrics: the health status follows the verdict store (moved
// away, replaced, back), reflection lists the services, and /metrics counts misses and hits,
// follows the allowance, the token's rejection and the store, and never shows the token. Against
// the real verdictd binary and the simulated ClickPatrol.

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/ops_fixture.h"

namespace verdictd::testing::ops {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// --- health --------------------------------------------------------------------------------

TEST_F(OpsTest, HealthFollowsTheStore) {
  StartVerdictd();
  std::shared_ptr<grpc::Channel> channel = PlainChannel(verdictd_->port());
  ASSERT_TRUE(WaitForHealth(channel, kServing, absl::Seconds(5)));

  // Moving the file away leaves the writer on an inode that the path no longer names.
  const std::string moved = verdictd_->db_path() + ".moved";
  ASSERT_EQ(std::rename(verdictd_->db_path().c_str(), moved.c_str()), 0);
  const WaitResult<int> down = WaitForHealth(channel, kNotServing, absl::Seconds(5));
  ASSERT_TRUE(down) << "with the database moved away";
  EXPECT_THAT(verdictd_->Log(), HasSubstr("NOT_SERVING"));

  ASSERT_EQ(std::rename(moved.c_str(), verdictd_->db_path().c_str()), 0);
  const WaitResult<int> up = WaitForHealth(channel, kServing, absl::Seconds(5));
  ASSERT_TRUE(up) << "with the database back";
  std::printf("[ measured ] NOT_SERVING after %s, SERVING again after %s\n",
              absl::FormatDuration(down.elapsed()).c_str(),
              absl::FormatDuration(up.elapsed()).c_str());

  // Back in service for real, not only in the health status.
  pb::CheckIpResponse r;
  EXPECT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r).ok());
}

TEST_F(OpsTest, HealthReplacedDatabaseIsNotServing) {
  StartVerdictd();
  std::shared_ptr<grpc::Channel> channel = PlainChannel(verdictd_->port());
  ASSERT_TRUE(WaitForHealth(channel, kServing, absl::Seconds(5)));
  // Another file under the same name: a different inode, so commits would be lost.
  const std::string moved = verdictd_->db_path() + ".moved";
  ASSERT_EQ(std::rename(verdictd_->db_path().c_str(), moved.c_str()), 0);
  WriteFile(verdictd_->db_path(), "this is not a database");
  EXPECT_TRUE(WaitForHealth(channel, kNotServing, absl::Seconds(5)))
      << "with garbage in place of the database";
}

// --- reflection ----------------------------------------------------------------------------

TEST_F(OpsTest, ReflectionListsServices) {
  StartVerdictd();
  grpc::Status status;
  // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
  const std::vector<std::string> responses =
      ReflectionExchange(PlainChannel(verdictd_->port()), std::string("\x3a\x00", 2), &status);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_THAT(responses[0], HasSubstr("verdict.v1.VerdictService"));
  EXPECT_THAT(responses[0], HasSubstr("grpc.health.v1.Health"));
  EXPECT_THAT(responses[0], HasSubstr("grpc.reflection.v1alpha.ServerReflection"));
}

// --- metrics -------------------------------------------------------------------------------

TEST_F(OpsTest, MetricsCountMissHitAndNeverShowTheToken) {
  StartVerdictd({"--metrics_listen=127.0.0.1:0"});
  const int metrics_port = MetricsPortFromLog(*verdictd_);
  ASSERT_GT(metrics_port, 0) << verdictd_->Log();

  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "ads").ok());
  ASSERT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "ads").ok());
  ASSERT_EQ(r.source(), pb::SOURCE_CACHE);

  const std::string scrape = Scrape(metrics_port);
  ASSERT_FALSE(scrape.empty());
  std::map<std::string, double> samples = ParseSamples(scrape);
  auto value = [&samples](const std::string& series) {
    auto it = samples.find(series);
    return it == samples.end() ? -1.0 : it->second;
  };
  EXPECT_EQ(value(R"(verdictd_clicks_total{caller="ads"})"), 1);
  EXPECT_EQ(value(R"(verdictd_answers_total{source="cache"})"), 1);
  EXPECT_EQ(value(R"(verdictd_answers_total{source="upstream"})"), 1);
  EXPECT_EQ(value(R"(verdictd_answers_total{source="stale"})"), 0);
  EXPECT_EQ(value(R"(verdictd_rpcs_total{method="CheckIp",code="OK"})"), 2);
  EXPECT_EQ(value(R"(verdictd_upstream_requests_total{outcome="verdict",http_status="200"})"), 1);
  EXPECT_EQ(value("verdictd_upstream_latency_seconds_count"), 1);
  EXPECT_GT(value("verdictd_upstream_latency_seconds_sum"), 0);
  EXPECT_EQ(value(R"(verdictd_upstream_latency_seconds_bucket{le="+Inf"})"), 1);
  EXPECT_THAT(scrape, Not(HasSubstr(kToken)));
  EXPECT_EQ(sim_->Requests(), 1);
}

// The gauges the alerting rules (deploy/prometheus/) read, against what really happens: the
// allowance's size and the clicks used of it, the token gauge after ClickPatrol rejects the
// token, and the store gauge while the database is moved away and back.
TEST_F(OpsTest, MetricsShowAllowanceTokenAndStoreAsTheyChange) {
  StartVerdictd({"--metrics_listen=127.0.0.1:0", "--monthly_allowance=10"});
  const int metrics_port = MetricsPortFromLog(*verdictd_);
  ASSERT_GT(metrics_port, 0) << verdictd_->Log();
  auto value = [metrics_port](const std::string& series) {
    const std::map<std::string, double> samples = ParseSamples(Scrape(metrics_port));
    auto it = samples.find(series);
    return it == samples.end() ? -1.0 : it->second;
  };
  auto wait_for = [&value](const std::string& series, double want) {
    return WaitUntil(
        absl::StrCat(series, " == ", want), [&] { return value(series); },
        [want](double v) { return v == want; }, absl::Seconds(5), absl::Milliseconds(50));
  };
  EXPECT_EQ(value("verdictd_allowance_clicks"), 10);
  EXPECT_EQ(value("verdictd_allowance_clicks_used"), 0);
  EXPECT_EQ(value("verdictd_token_rejected"), 0);
  EXPECT_EQ(value("verdictd_store_serving"), 1);

  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "ads").ok());
  EXPECT_EQ(value("verdictd_allowance_clicks_used"), 1);
  EXPECT_EQ(value("verdictd_allowance_clicks_left"), 9);
  EXPECT_EQ(value("verdictd_token_rejected"), 0) << "a verdict is not a rejection";

  sim_->Configure({{"mode", "unauthorized"}});
  const grpc::Status rejected = CheckIp(verdictd_->stub(), "9.9.9.9", &r, "ads");
  ASSERT_EQ(rejected.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << rejected.error_message();
  EXPECT_TRUE(wait_for("verdictd_token_rejected", 1));
  EXPECT_EQ(value("verdictd_allowance_clicks_used"), 2) << "the rejected request was billed";
  EXPECT_EQ(sim_->Requests(), 2);

  const std::string moved = verdictd_->db_path() + ".moved";
  ASSERT_EQ(std::rename(verdictd_->db_path().c_str(), moved.c_str()), 0);
  EXPECT_TRUE(wait_for("verdictd_store_serving", 0)) << "with the database moved away";
  ASSERT_EQ(std::rename(moved.c_str(), verdictd_->db_path().c_str()), 0);
  EXPECT_TRUE(wait_for("verdictd_store_serving", 1)) << "with the database back";
  EXPECT_EQ(value("verdictd_token_rejected"), 1) << "still rejected: nothing has succeeded";
}

}  // namespace
}  // namespace verdictd::testing::ops
