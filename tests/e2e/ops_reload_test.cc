// SIGHUP (issue 14, part 2): verdictd re-reads --api_keys_file and --token_file and swaps them in
// without a restart; a file that does not load leaves everything as it was. Each test waits for
// the reload to be observed (its log line, or the failure counter), never for a guessed time.

#include <signal.h>
#include <sys/types.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/e2e/ops_fixture.h"

namespace verdictd::testing::ops {
namespace {

using audit::KeyedCheck;
using audit::KeysFileLine;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kCarolKey[] = "vk_carol_0d4e8b2a61f9c753";
constexpr char kNewToken[] = "cp_OpsRotatedToken_52ae07c9d1";
constexpr char kReloaded[] = "configuration reloaded:";

size_t Occurrences(const std::string& text, const std::string& what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++count;
  }
  return count;
}

class ReloadTest : public OpsTest {
 protected:
  void SetUp() override {
    keys_ = dir_.File("api_keys");
    token_file_ = dir_.File("token");
    WriteKeys(KeysFileLine("alice", audit::kAliceKey) + KeysFileLine("bob", audit::kBobKey, "5") +
              KeysFileLine("audit", audit::kAuditKey, "- auditor"));
    audit::WriteFile(token_file_, std::string(kToken) + "\n", 0600);
    StartVerdictd({"--api_keys_file=" + keys_, "--token_file=" + token_file_,
                   "--metrics_listen=127.0.0.1:0"});
    metrics_port_ = MetricsPortFromLog(*verdictd_);
    ASSERT_GT(metrics_port_, 0);
  }

  void WriteKeys(const std::string& contents) { audit::WriteFile(keys_, contents, 0600); }

  void Sighup() { ASSERT_EQ(kill(verdictd_->pid(), SIGHUP), 0); }

  // Sends SIGHUP and waits for the next "configuration reloaded" line; that line.
  std::string ReloadAndWait() {
    const size_t before = Occurrences(verdictd_->Log(), kReloaded);
    Sighup();
    EXPECT_TRUE(WaitUntil(
        "a reload in the log", [&] { return Occurrences(verdictd_->Log(), kReloaded) > before; },
        absl::Seconds(10)));
    const std::string log = verdictd_->Log();
    size_t at = log.rfind(kReloaded);
    return at == std::string::npos ? "" : log.substr(at, log.find('\n', at) - at);
  }

  double Metric(const std::string& name) {
    std::map<std::string, double> samples = ParseSamples(Scrape(metrics_port_));
    auto it = samples.find(name);
    return it == samples.end() ? -1 : it->second;
  }

  int64_t BudgetOf(const std::string& caller) {
    pb::GetUsageResponse usage;
    grpc::Status status = audit::KeyedUsage(verdictd_->stub(), audit::kAuditKey, caller, &usage);
    EXPECT_TRUE(status.ok()) << status.error_message();
    const pb::CallerUsage* found = audit::FindCaller(usage, caller);
    return found == nullptr ? -1 : found->monthly_budget();
  }

  std::string keys_;
  std::string token_file_;
  int metrics_port_ = 0;
};

TEST_F(ReloadTest, AnAddedKeyWorksAndARemovedKeyIsRefusedRightAfterTheReload) {
  pb::CheckIpResponse response;
  EXPECT_TRUE(KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.4.1", &response).ok());
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), kCarolKey, "8.8.4.2", &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(BudgetOf("bob"), 5);
  const double loaded_at = Metric("verdictd_config_last_reload_success_timestamp_seconds");
  EXPECT_GT(loaded_at, 0);

  // alice goes, carol comes, bob's budget changes.
  WriteKeys(KeysFileLine("bob", audit::kBobKey, "7") + KeysFileLine("carol", kCarolKey) +
            KeysFileLine("audit", audit::kAuditKey, "- auditor"));
  const std::string line = ReloadAndWait();
  EXPECT_THAT(line, HasSubstr("keys: 3 callers with 3 keys (1 added, 1 removed, 1 changed)"));
  EXPECT_THAT(line, HasSubstr("token: unchanged"));

  grpc::Status carol = KeyedCheck(verdictd_->stub(), kCarolKey, "8.8.4.3", &response);
  EXPECT_TRUE(carol.ok()) << carol.error_message();
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.4.4", &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(BudgetOf("bob"), 7);  // the budgets the engine reports follow the file
  EXPECT_GT(Metric("verdictd_config_last_reload_success_timestamp_seconds"), loaded_at);
  EXPECT_EQ(Metric("verdictd_config_reload_failures_total"), 0);
  const std::string log = verdictd_->Log();
  EXPECT_THAT(log, Not(HasSubstr(HashApiKeyHex(kCarolKey))));
  EXPECT_THAT(log, Not(HasSubstr(kToken)));
}

// Rotation as the README describes it: add the new key, reload, move the clients, remove the
// old key, reload. Both keys are the same caller throughout; an expired key is refused without
// spending a click.
TEST_F(ReloadTest, AKeyRotatesWithoutAnOutageAndAnExpiredKeyIsRefused) {
  constexpr char kAliceNewKey[] = "vk_alice_rotated_7c1e93b0d2";
  constexpr char kDaveKey[] = "vk_dave_expired_41af8e2c09";
  pb::CheckIpResponse response;
  WriteKeys(KeysFileLine("alice", audit::kAliceKey) + KeysFileLine("alice", kAliceNewKey) +
            KeysFileLine("bob", audit::kBobKey, "5") +
            KeysFileLine("dave", kDaveKey, "- expires=2020-01-01") +
            KeysFileLine("audit", audit::kAuditKey, "- auditor"));
  EXPECT_THAT(ReloadAndWait(),
              HasSubstr("keys: 4 callers with 5 keys (1 added, 0 removed, 1 changed)"));
  grpc::Status old_key = KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.5.1", &response);
  EXPECT_TRUE(old_key.ok()) << old_key.error_message();
  grpc::Status new_key = KeyedCheck(verdictd_->stub(), kAliceNewKey, "8.8.5.2", &response);
  EXPECT_TRUE(new_key.ok()) << new_key.error_message();

  const int64_t requests = sim_->Requests();
  grpc::Status expired = KeyedCheck(verdictd_->stub(), kDaveKey, "8.8.5.3", &response);
  EXPECT_EQ(expired.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(expired.error_message(), "API key expired at 2020-01-01T00:00:00Z");
  EXPECT_EQ(sim_->Requests(), requests);  // no click

  // Both clicks are alice's: one caller, one account.
  pb::GetUsageResponse usage;
  grpc::Status read = audit::KeyedUsage(verdictd_->stub(), audit::kAuditKey, "alice", &usage);
  ASSERT_TRUE(read.ok()) << read.error_message();
  const pb::CallerUsage* alice = audit::FindCaller(usage, "alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->clicks(), 2);

  WriteKeys(KeysFileLine("alice", kAliceNewKey) + KeysFileLine("bob", audit::kBobKey, "5") +
            KeysFileLine("audit", audit::kAuditKey, "- auditor"));
  EXPECT_THAT(ReloadAndWait(),
              HasSubstr("keys: 3 callers with 3 keys (0 added, 1 removed, 1 changed)"));
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.5.4", &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  new_key = KeyedCheck(verdictd_->stub(), kAliceNewKey, "8.8.5.5", &response);
  EXPECT_TRUE(new_key.ok()) << new_key.error_message();
  EXPECT_THAT(verdictd_->Log(), Not(HasSubstr(HashApiKeyHex(kAliceNewKey))));
}

TEST_F(ReloadTest, ARotatedTokenIsSentWithTheNextMissAtOnce) {
  pb::CheckIpResponse response;
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.5.1", &response).ok());

  // The token is regenerated at ClickPatrol: the old one is refused from now on.
  sim_->Configure({{"token", kNewToken}});
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.5.2", &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // And verdictd stops asking until its probe interval (a minute) is over.
  const int64_t requests = sim_->Requests();
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.5.3", &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(sim_->Requests(), requests);

  audit::WriteFile(token_file_, std::string(kNewToken) + "\n", 0600);
  EXPECT_THAT(ReloadAndWait(), HasSubstr("token: replaced"));
  grpc::Status status = KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.5.4", &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(sim_->Requests(), requests + 1);
  const std::string log = verdictd_->Log();
  EXPECT_THAT(log, Not(HasSubstr(kToken)));
  EXPECT_THAT(log, Not(HasSubstr(kNewToken)));
}

TEST_F(ReloadTest, AMalformedKeysFileLeavesTheWholeOldConfigurationInForce) {
  // A broken keys file and a new token file: all or nothing, so neither is taken.
  WriteKeys(KeysFileLine("bob", audit::kBobKey) + KeysFileLine("carol", kCarolKey) +
            "dave not-a-sha256-hash\n");
  audit::WriteFile(token_file_, std::string(kNewToken) + "\n", 0600);
  const double loaded_at = Metric("verdictd_config_last_reload_success_timestamp_seconds");
  Sighup();
  EXPECT_TRUE(WaitUntil(
      "one reload failure counted", [&] { return Metric("verdictd_config_reload_failures_total"); },
      [](double failures) { return failures == 1; }, absl::Seconds(10)));
  EXPECT_EQ(Metric("verdictd_config_last_reload_success_timestamp_seconds"), loaded_at);

  pb::CheckIpResponse response;
  grpc::Status alice = KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.6.1", &response);
  EXPECT_TRUE(alice.ok()) << alice.error_message();  // the old keys, and the old token upstream
  EXPECT_EQ(response.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), kCarolKey, "8.8.6.2", &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  const std::string log = verdictd_->Log();
  EXPECT_THAT(log, HasSubstr(absl::StrCat(keys_, ": line 3")));
  EXPECT_THAT(log, Not(HasSubstr(kReloaded)));
  EXPECT_THAT(log, Not(HasSubstr(kNewToken)));
}

TEST_F(ReloadTest, ACallInFlightAcrossTheReloadFinishes) {
  sim_->Configure({{"latency_ms", 1500}});
  grpc::Status in_flight;
  pb::CheckIpResponse held;
  std::thread call([&] {
    std::unique_ptr<pb::VerdictService::Stub> stub = verdictd_->NewStub();
    in_flight = KeyedCheck(*stub, audit::kAliceKey, "8.8.7.1", &held);
  });
  EXPECT_TRUE(WaitUntil(
      "the miss at ClickPatrol", [&] { return sim_->InFlight(); }, [](int64_t n) { return n == 1; },
      absl::Seconds(10)));
  // alice's key goes and the token file changes while her miss is on the wire.
  WriteKeys(KeysFileLine("bob", audit::kBobKey) +
            KeysFileLine("audit", audit::kAuditKey, "- auditor"));
  audit::WriteFile(token_file_, std::string(kNewToken) + "\n", 0600);
  EXPECT_THAT(ReloadAndWait(), HasSubstr("token: replaced"));
  EXPECT_EQ(sim_->InFlight(), 1);  // the reload did not wait for it
  call.join();
  EXPECT_TRUE(in_flight.ok()) << in_flight.error_message();
  EXPECT_EQ(held.source(), pb::SOURCE_UPSTREAM);
  pb::CheckIpResponse response;
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), audit::kAliceKey, "8.8.7.1", &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(OpsTest, ATokenFromTheEnvironmentIsNotReloadedAndSighupSaysSoOnce) {
  StartVerdictd();  // CLICKPATROL_TOKEN, no --token_file
  for (int i = 1; i <= 2; ++i) {
    ASSERT_EQ(kill(verdictd_->pid(), SIGHUP), 0);
    EXPECT_TRUE(WaitUntil(
        "a reload in the log", [&] { return Occurrences(verdictd_->Log(), kReloaded); },
        [i](size_t n) { return n == static_cast<size_t>(i); }, absl::Seconds(10)));
  }
  const std::string log = verdictd_->Log();
  EXPECT_EQ(Occurrences(log, "SIGHUP cannot change the ClickPatrol token"), 1u);
  EXPECT_THAT(log, HasSubstr("token: from $CLICKPATROL_TOKEN, not reloadable"));
  EXPECT_THAT(log, HasSubstr("keys: open mode, unchanged"));
  pb::CheckIpResponse response;
  EXPECT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.1", &response).ok());
}

// The serial of the certificate verdictd serves to a new connection ("serial=02"), read with
// openssl s_client; "" when the handshake fails.
std::string ServedSerial(int port, const TestPki& pki) {
  const std::string openssl = FindOnPath("openssl");
  absl::StatusOr<CommandResult> result = RunCommand(
      {"/bin/sh", "-c",
       absl::StrCat(openssl, " s_client -connect 127.0.0.1:", port, " -alpn h2 -CAfile ", pki.ca(),
                    " </dev/null 2>/dev/null | ", openssl, " x509 -noout -serial")},
      "", {}, absl::Seconds(10));
  return result.ok() && result->exit_code == 0
             ? std::string(absl::StripAsciiWhitespace(result->out))
             : "";
}

// A certificate renewed in place (same key, new serial, renamed over --tls_cert as certbot
// would) is served to new connections after SIGHUP; a connection made before keeps working; a
// certificate that does not match the key is refused and the renewed one stays.
TEST_F(OpsTest, ARenewedCertificateIsServedToNewConnectionsAfterSighup) {
  TestPki pki(dir_);
  ASSERT_TRUE(pki.Generate());
  StartVerdictd({"--tls_cert=" + pki.server_cert(), "--tls_key=" + pki.server_key(),
                 "--metrics_listen=127.0.0.1:0"});
  const int metrics_port = MetricsPortFromLog(*verdictd_);
  ASSERT_GT(metrics_port, 0);
  EXPECT_EQ(ServedSerial(verdictd_->port(), pki), "serial=02");
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::unique_ptr<pb::VerdictService::Stub> before =
      pb::VerdictService::NewStub(grpc::CreateCustomChannel(
          absl::StrCat("127.0.0.1:", verdictd_->port()), pki.Credentials(false), args));
  pb::CheckIpResponse response;
  ASSERT_TRUE(CheckIp(*before, "8.8.9.1", &response).ok());

  const std::string renewed = dir_.File("server-renewed.pem");
  absl::StatusOr<CommandResult> signed_cert = RunCommand(
      {FindOnPath("openssl"), "x509", "-req", "-in", dir_.File("server.csr"), "-CA", pki.ca(),
       "-CAkey", dir_.File("ca.key"), "-set_serial", "9", "-days", "2", "-extfile",
       dir_.File("openssl.cnf"), "-extensions", "server_ext", "-out", renewed},
      "", {}, absl::Seconds(30));
  ASSERT_TRUE(signed_cert.ok() && signed_cert->exit_code == 0);
  ASSERT_EQ(std::rename(renewed.c_str(), pki.server_cert().c_str()), 0);
  ASSERT_EQ(kill(verdictd_->pid(), SIGHUP), 0);
  EXPECT_TRUE(WaitUntil(
      "the reload in the log", [&] { return Occurrences(verdictd_->Log(), "tls: replaced"); },
      [](size_t n) { return n == 1; }, absl::Seconds(10)));
  WaitResult<std::string> served = WaitUntil(
      "the renewed certificate served", [&] { return ServedSerial(verdictd_->port(), pki); },
      [](const std::string& serial) { return serial == "serial=09"; }, absl::Seconds(5),
      absl::Milliseconds(100));
  EXPECT_TRUE(served);
  std::fprintf(stderr, "renewed certificate served %s after the reload was logged\n",
               absl::FormatDuration(served.elapsed()).c_str());
  grpc::Status status = CheckIp(*before, "8.8.9.2", &response);
  EXPECT_TRUE(status.ok()) << "the connection made before: " << status.error_message();
  status = CheckIpOver(verdictd_->port(), pki.Credentials(false), absl::Seconds(10), &response);
  EXPECT_TRUE(status.ok()) << "a new connection: " << status.error_message();

  // The CA's certificate as --tls_cert: it does not match the server key.
  ASSERT_TRUE(RunCommand({"/bin/cp", pki.ca(), pki.server_cert()}, "", {}, absl::Seconds(5)).ok());
  ASSERT_EQ(kill(verdictd_->pid(), SIGHUP), 0);
  EXPECT_TRUE(WaitUntil(
      "one reload failure counted",
      [&] {
        std::map<std::string, double> samples = ParseSamples(Scrape(metrics_port));
        return samples["verdictd_config_reload_failures_total"];
      },
      [](double failures) { return failures == 1; }, absl::Seconds(10)));
  EXPECT_THAT(verdictd_->Log(), HasSubstr("does not match the certificate"));
  absl::SleepFor(absl::Seconds(2));  // longer than the watcher's refresh: nothing may change
  EXPECT_EQ(ServedSerial(verdictd_->port(), pki), "serial=09");
}

}  // namespace
}  // namespace verdictd::testing::ops
