// End-to-end configuration and logs: the config file sets flags (the command line overrides it),
// its errors are fatal and named, and with JSON logs every line is one object.

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/ops_fixture.h"

namespace verdictd::testing::ops {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

// --- config file ---------------------------------------------------------------------------

TEST_F(OpsTest, ConfigFileSetsFlagsAndCommandLineOverrides) {
  const std::string config = dir_.File("verdictd.json");
  WriteFile(config, R"({"max_age": "1h", "max_batch": 5})");
  StartVerdictd({"--config=" + config});
  pb::GetServerInfoResponse info;
  grpc::Status status =
      verdictd_->stub().GetServerInfo(CallerContext().get(), pb::GetServerInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.max_batch(), 5);
  EXPECT_THAT(verdictd_->Log(), HasSubstr("max_age=1h"));

  StartVerdictd({"--config=" + config, "--max_batch=7"});
  status =
      verdictd_->stub().GetServerInfo(CallerContext().get(), pb::GetServerInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.max_batch(), 7);
  EXPECT_THAT(verdictd_->Log(), HasSubstr("max_age=1h")) << "the rest of the file still applies";
}

// Runs verdictd with `config` as its config file until it exits; its exit code and output.
struct StartupResult {
  int exit_code = -1;
  std::string log;
};
StartupResult StartWithConfig(const TempDir& dir, const std::string& config) {
  const std::string path = dir.File("bad.json");
  WriteFile(path, config);
  const std::string log = dir.File("bad.log");
  std::remove(log.c_str());
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + dir.File("bad.db"), "--config=" + path},
      {{"CLICKPATROL_TOKEN", kToken}}, log);
  StartupResult result;
  if (!process.ok()) {
    ADD_FAILURE() << process.status();
    return result;
  }
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  EXPECT_TRUE(code.ok()) << "verdictd kept running with config " << config;
  result.exit_code = code.ok() ? *code : -1;
  result.log = ReadFileOrEmpty(log);
  return result;
}

// gRPC's default SO_REUSEPORT would let a second verdictd listen on the first one's port, and
// the kernel would split callers between two stores and ledgers. The second must exit instead.
TEST_F(OpsTest, ASecondServerOnATakenPortExitsNamingTheAddress) {
  StartVerdictd();
  const std::string address = absl::StrCat("127.0.0.1:", verdictd_->port());
  const std::string log = dir_.File("second.log");
  absl::StatusOr<std::unique_ptr<ChildProcess>> second =
      ChildProcess::Start({VERDICTD_BIN, "--listen=" + address, "--db=" + dir_.File("second.db"),
                           "--upstream_url=" + sim_->url()},
                          {{"CLICKPATROL_TOKEN", kToken}}, log);
  ASSERT_TRUE(second.ok()) << second.status();
  absl::StatusOr<int> code = (*second)->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << "a second verdictd kept running on the taken port " << address
                         << "; its log:\n"
                         << ReadFileOrEmpty(log);
  EXPECT_EQ(*code, 1);
  const std::string text = ReadFileOrEmpty(log);
  EXPECT_THAT(text, HasSubstr("verdictd cannot start: cannot listen on " + address));
  EXPECT_THAT(text, Not(HasSubstr("listening on")));

  // The first one still holds the port alone and answers.
  pb::GetServerInfoResponse info;
  grpc::Status status =
      verdictd_->stub().GetServerInfo(CallerContext().get(), pb::GetServerInfoRequest(), &info);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(OpsTest, ConfigFileErrorsAreFatalAndNamed) {
  StartupResult unknown = StartWithConfig(dir_, R"({"max_age": "1h", "no_such_flag_xyz": 3})");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.log, HasSubstr("no_such_flag_xyz"));

  StartupResult token = StartWithConfig(dir_, R"({"token": "x"})");
  EXPECT_EQ(token.exit_code, 2);
  EXPECT_THAT(token.log, HasSubstr("\"token\""));
  EXPECT_THAT(token.log, HasSubstr("ClickPatrol token"));

  StartupResult bad_value = StartWithConfig(dir_, R"({"max_age": "soon"})");
  EXPECT_EQ(bad_value.exit_code, 2);
  EXPECT_THAT(bad_value.log, HasSubstr("max_age"));
  EXPECT_THAT(bad_value.log, HasSubstr("soon"));

  for (const StartupResult* r : {&unknown, &token, &bad_value}) {
    EXPECT_THAT(r->log, Not(HasSubstr("listening on")));
    EXPECT_THAT(r->log, Not(HasSubstr(kToken)));
  }
}

// --- single flight across replicas: --replica_id and --flight_lease --------------------------

// The lease defaults to the longest upstream exchange, computed from the upstream flags:
// (1s + 3s) x 2 attempts + 100ms backoff + 5s margin.
TEST_F(OpsTest, FlightLeaseOutlastsTheUpstreamExchangeAndReplicaIdIsUnique) {
  const std::vector<std::string> upstream = {"--upstream_connect_timeout=1s",
                                             "--upstream_timeout=3s", "--upstream_attempts=2"};
  StartVerdictd(upstream);
  const std::string first = verdictd_->Log();
  EXPECT_THAT(first, HasSubstr("flight_lease=13.1s"));
  // HOSTNAME:PID:XXXX, this process's own pid in it.
  EXPECT_THAT(first, ContainsRegex(absl::StrCat("replica_id=[^ :]+:", verdictd_->pid(),
                                                ":[0-9a-f][0-9a-f][0-9a-f][0-9a-f] ")));

  std::vector<std::string> flags = upstream;
  flags.push_back("--replica_id=web-1");
  flags.push_back("--flight_lease=20s");
  StartVerdictd(flags);
  EXPECT_THAT(verdictd_->Log(), HasSubstr("replica_id=web-1 flight_lease=20s"));
}

TEST_F(OpsTest, FlightLeaseNotAboveTheUpstreamExchangeIsRefused) {
  // Exactly the minimum is refused too: the lease must exceed the exchange.
  StartupResult at_minimum =
      StartWithConfig(dir_, R"({"upstream_connect_timeout": "1s", "upstream_timeout": "3s",
                                "upstream_attempts": 2, "flight_lease": "13.1s"})");
  EXPECT_EQ(at_minimum.exit_code, 2);
  EXPECT_THAT(at_minimum.log, HasSubstr("--flight_lease 13.1s must be above 13.1s"));
  EXPECT_THAT(at_minimum.log, Not(HasSubstr("listening on")));

  StartupResult bad_id = StartWithConfig(dir_, R"({"replica_id": "web 1"})");
  EXPECT_EQ(bad_id.exit_code, 2);
  EXPECT_THAT(bad_id.log, HasSubstr("--replica_id must be printable"));
}

// --- JSON logs -----------------------------------------------------------------------------

// Every line, including what gRPC core logs on its own (a failed TLS handshake), is one JSON
// object with ts, level and msg.
TEST_F(OpsTest, JsonLogLinesAreObjects) {
  TestPki pki(dir_);
  ASSERT_TRUE(pki.Generate());
  StartVerdictd(
      {"--log_format=json", "--tls_cert=" + pki.server_cert(), "--tls_key=" + pki.server_key()});
  pb::CheckIpResponse r;
  grpc::Status status =
      CheckIpOver(verdictd_->port(), pki.Credentials(false), absl::Seconds(10), &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // A plaintext client: gRPC core itself logs the failed handshake.
  status = CheckIpOver(verdictd_->port(), grpc::InsecureChannelCredentials(), absl::Seconds(5), &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_EQ(verdictd_->Stop(), 0);

  const std::string log = verdictd_->Log();
  int lines = 0;
  bool saw_listening = false;
  bool saw_upstream = false;
  bool saw_handshake = false;
  bool saw_stopped = false;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    ++lines;
    SCOPED_TRACE(line);
    nlohmann::json object = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(object.is_object());
    ASSERT_TRUE(object.contains("ts") && object["ts"].is_string());
    ASSERT_TRUE(object.contains("level") && object["level"].is_string());
    ASSERT_TRUE(object.contains("msg") && object["msg"].is_string());
    const std::string msg = object["msg"].get<std::string>();
    saw_listening = saw_listening || absl::StrContains(msg, "listening on");
    saw_upstream = saw_upstream || absl::StrContains(msg, "upstream caller=tls ip=1.1.1.1");
    saw_handshake = saw_handshake || absl::StrContains(msg, "Handshake failed");
    saw_stopped = saw_stopped || absl::StrContains(msg, "verdictd stopped");
  }
  EXPECT_GE(lines, 4);
  EXPECT_TRUE(saw_listening);
  EXPECT_TRUE(saw_upstream);
  EXPECT_TRUE(saw_handshake) << "gRPC's own log line is missing; the test no longer covers it";
  EXPECT_TRUE(saw_stopped);
  EXPECT_THAT(log, Not(HasSubstr(kToken)));
}

}  // namespace
}  // namespace verdictd::testing::ops
