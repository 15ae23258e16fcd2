// End-to-end upstream faults: ClickPatrol failing in every way the simulator can fail, bodies that
// are odd or huge, and HTTPS with a certificate verdictd does not trust. The real verdictd binary,
// a SQLite file in a temp dir and the simulator over loopback.
//
// What every upstream fault must leave behind: the caller gets a precise status, the failure is
// not cached (the next check after the fault clears goes to ClickPatrol again), the click is in
// the ledger (outcome 2 when the request was sent, 3 when it provably never left), and the
// server keeps answering.

#include <unistd.h>

#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/e2e/faults_fixture.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::faults {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// --- upstream faults, table-driven ---------------------------------------------------------

// What happens after the fault is cleared.
enum class After {
  kGoesUpstream,            // nothing was cached: the next check asks ClickPatrol again
  kCached,                  // the answer was a verdict, so it is served from the store
  kRefusedUntilProbe,       // ClickPatrol said the allowance is spent: misses are refused unsent
  kTokenRefusedUntilProbe,  // ClickPatrol rejected the token: misses fail fast, unsent
};

struct UpstreamFault {
  std::string name;
  std::string mode;                // simulator failure mode
  bool per_ip_rule = false;        // via POST /_sim/rules "IP error=MODE" instead of the mode
  int latency_ms = 0;              // simulator latency while the fault is on
  std::vector<std::string> flags;  // extra verdictd flags
  grpc::StatusCode code;           // what the caller gets
  std::string message;             // part of the status message
  int outcome;                     // the ledger row's outcome
  int http_status;                 // the ledger row's http_status (0: none)
  std::string log;                 // must appear in verdictd's log ("" for nothing)
  After after = After::kGoesUpstream;
};

// ctest and gtest print a parameter by its name, not as raw bytes.
void PrintTo(const UpstreamFault& param, std::ostream* os) { *os << param.name; }

class FaultUpstreamTest : public ::testing::TestWithParam<UpstreamFault> {};

TEST_P(FaultUpstreamTest, PreciseStatusNothingCachedClickAccountedServerHealthy) {
  const UpstreamFault& fault = GetParam();
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, fault.flags);
  const std::string ip = "11.6.0.1";
  const std::string db = verdictd.db_path();

  if (fault.after == After::kRefusedUntilProbe || fault.after == After::kTokenRefusedUntilProbe) {
    // A verdict stored before the fault, to show that hits are still served.
    pb::CheckIpResponse r;
    ASSERT_TRUE(CheckIp(verdictd.stub(), "11.6.9.9", &r, "faults").ok());
  }
  const int64_t before = sim.Requests();
  if (fault.per_ip_rule) {
    PostRules(sim, absl::StrCat(ip, " error=", fault.mode, "\n"));
  } else {
    sim.Configure({{"mode", fault.mode}, {"latency_ms", fault.latency_ms}});
  }

  pb::CheckIpResponse response;
  const absl::Time start = absl::Now();
  grpc::Status status = CheckIp(verdictd.stub(), ip, &response, "faults");
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(status.error_code(), fault.code) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr(fault.message));
  EXPECT_THAT(status.error_message(), Not(HasSubstr(kToken)));
  EXPECT_THAT(status.error_message(), Not(HasSubstr("<html>")))
      << "bodies go to the log, never to callers";
  EXPECT_LT(elapsed, absl::Seconds(5)) << "a fault must not hold the caller for long";
  EXPECT_EQ(sim.Requests(), before + 1) << "exactly one request reached ClickPatrol";

  // The click is in the ledger, completed with what happened.
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE ip = ?1", ip), 1);
  EXPECT_EQ(QueryInt(db, "SELECT outcome FROM clicks WHERE ip = ?1", ip), fault.outcome);
  EXPECT_EQ(QueryInt(db, "SELECT http_status FROM clicks WHERE ip = ?1", ip), fault.http_status);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE caller = 'faults' AND ip = ?1", ip), 1);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM verdicts WHERE ip = ?1", ip),
            fault.code == grpc::StatusCode::OK ? 1 : 0)
      << "only verdicts are stored";
  if (!fault.log.empty()) {
    EXPECT_TRUE(WaitUntil(
        absl::StrCat("\"", fault.log, "\" in the log"), [&] { return verdictd.Log(); },
        [&](const std::string& log) { return absl::StrContains(log, fault.log); },
        absl::Seconds(10)))
        << "log lacks \"" << fault.log << "\":\n"
        << verdictd.Log();
  }
  EXPECT_EQ(sim.Stats().at("redirect_follows").get<int64_t>(), 0) << "redirects are never followed";

  // Clear the fault.
  sim.Configure({{"mode", "ok"}, {"latency_ms", 0}});
  PostRules(sim, "");

  pb::CheckIpResponse again;
  status = CheckIp(verdictd.stub(), ip, &again, "faults");
  switch (fault.after) {
    case After::kGoesUpstream:
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(again.source(), pb::SOURCE_UPSTREAM) << "the failure was cached";
      EXPECT_TRUE(again.click_spent());
      EXPECT_EQ(sim.Requests(), before + 2);
      EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE ip = ?1 AND outcome = 1", ip), 1);
      break;
    case After::kCached:
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(again.source(), pb::SOURCE_CACHE);
      EXPECT_EQ(again.verdict().score(), response.verdict().score());
      EXPECT_EQ(sim.Requests(), before + 1);
      break;
    case After::kRefusedUntilProbe: {
      // The next misses are refused without being sent, even though ClickPatrol would now
      // answer: verdictd probes again only after an interval (10 minutes, not configurable).
      EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
      for (const char* other : {"11.6.0.2", "11.6.0.3", "11.6.0.4"}) {
        SCOPED_TRACE(other);
        pb::CheckIpResponse r;
        grpc::Status refused = CheckIp(verdictd.stub(), other, &r, "faults");
        EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
        EXPECT_THAT(refused.error_message(), HasSubstr("allowance is exhausted until"));
      }
      EXPECT_EQ(sim.Requests(), before + 1) << "a refused miss must not be sent";
      EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks"), 2) << "nor recorded as a click";
      pb::GetUsageResponse usage;
      ASSERT_TRUE(
          verdictd.stub().GetUsage(CallerContext().get(), pb::GetUsageRequest(), &usage).ok());
      EXPECT_TRUE(usage.allowance().exhausted_upstream());
      // Hits are still served.
      pb::CheckIpResponse hit;
      ASSERT_TRUE(CheckIp(verdictd.stub(), "11.6.9.9", &hit, "faults").ok());
      EXPECT_EQ(hit.source(), pb::SOURCE_CACHE);
      break;
    }
    case After::kTokenRefusedUntilProbe: {
      // A rejected token stays rejected until the operator replaces it: the next misses fail
      // fast without a request, even though ClickPatrol would now answer (one probe a minute).
      EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
      for (const char* other : {"11.6.0.2", "11.6.0.3"}) {
        SCOPED_TRACE(other);
        pb::CheckIpResponse r;
        grpc::Status refused = CheckIp(verdictd.stub(), other, &r, "faults");
        EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
        EXPECT_THAT(refused.error_message(), HasSubstr("misses fail fast until it is replaced"));
      }
      EXPECT_EQ(sim.Requests(), before + 1) << "a refused miss must not be sent";
      EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks"), 2) << "nor recorded as a click";
      break;
    }
  }

  // The server is healthy: a normal check succeeds (a hit where misses are refused).
  pb::CheckIpResponse healthy;
  const std::string healthy_ip =
      fault.after == After::kRefusedUntilProbe || fault.after == After::kTokenRefusedUntilProbe
          ? "11.6.9.9"
          : "11.6.0.200";
  status = CheckIp(verdictd.stub(), healthy_ip, &healthy, "faults");
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(healthy.verdict().ip(), healthy_ip);
  EXPECT_EQ(sim.Stats().at("redirect_follows").get<int64_t>(), 0);
  EXPECT_EQ(verdictd.Stop(), 0) << "clean shutdown after the fault";
  EXPECT_THAT(verdictd.Log(), Not(HasSubstr(kToken)));
}

const std::vector<std::string> kNoFlags;
const std::vector<std::string> kShortTimeout = {"--upstream_timeout=300ms"};

INSTANTIATE_TEST_SUITE_P(
    FaultUpstream, FaultUpstreamTest,
    ::testing::Values(
        UpstreamFault{"SlowBeyondTimeout", "ok", false, 1000, kShortTimeout,
                      grpc::StatusCode::UNAVAILABLE, "ClickPatrol timed out after 300ms",
                      kOutcomeUpstreamError, 0, "outcome=error"},
        UpstreamFault{"HangsAfterAccepting", "hang", false, 0, kShortTimeout,
                      grpc::StatusCode::UNAVAILABLE, "ClickPatrol timed out after 300ms",
                      kOutcomeUpstreamError, 0, "outcome=error"},
        UpstreamFault{"ResetMidBody", "reset", false, 0, kNoFlags, grpc::StatusCode::UNAVAILABLE,
                      "ClickPatrol's response was cut short", kOutcomeUpstreamError, 200,
                      "outcome=error"},
        UpstreamFault{"ServerError", "5xx", false, 0, kNoFlags, grpc::StatusCode::UNAVAILABLE,
                      "ClickPatrol returned HTTP 503", kOutcomeUpstreamError, 503, "outcome=error"},
        UpstreamFault{"ServerErrorForOneIp", "5xx", true, 0, kNoFlags,
                      grpc::StatusCode::UNAVAILABLE, "ClickPatrol returned HTTP 503",
                      kOutcomeUpstreamError, 503, "outcome=error"},
        UpstreamFault{"TokenRejected", "unauthorized", false, 0, kNoFlags,
                      grpc::StatusCode::FAILED_PRECONDITION,
                      "ClickPatrol rejected the API token (HTTP 401)", kOutcomeUpstreamError, 401,
                      "REJECTED THE API TOKEN", After::kTokenRefusedUntilProbe},
        UpstreamFault{"TokenForbidden", "forbidden", false, 0, kNoFlags,
                      grpc::StatusCode::FAILED_PRECONDITION,
                      "ClickPatrol rejected the API token (HTTP 403)", kOutcomeUpstreamError, 403,
                      "REJECTED THE API TOKEN", After::kTokenRefusedUntilProbe},
        UpstreamFault{"RateLimited", "rate_limited", false, 0, kNoFlags,
                      grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "ClickPatrol click allowance exhausted (HTTP 429)", kOutcomeUpstreamError,
                      429, "outcome=error", After::kRefusedUntilProbe},
        UpstreamFault{"AllowanceExhausted", "exhausted", false, 0, kNoFlags,
                      grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "ClickPatrol click allowance exhausted (HTTP 402)", kOutcomeUpstreamError,
                      402, "outcome=error", After::kRefusedUntilProbe},
        UpstreamFault{"GarbageBody", "garbage", false, 0, kNoFlags, grpc::StatusCode::INTERNAL,
                      "ClickPatrol response is not a verdict: not JSON", kOutcomeUpstreamError, 200,
                      "body starts: <html>oops</html>"},
        UpstreamFault{"HugeBody", "huge", false, 0, kNoFlags, grpc::StatusCode::INTERNAL,
                      "ClickPatrol response exceeds 65536 bytes", kOutcomeUpstreamError, 200,
                      "was not a verdict; body starts: {"},
        UpstreamFault{"Redirect", "redirect", false, 0, kNoFlags, grpc::StatusCode::INTERNAL,
                      "redirects are not followed", kOutcomeUpstreamError, 302,
                      "outcome=error http_status=302"},
        UpstreamFault{"MissingBooleans", "missing_bools", false, 0, kNoFlags, grpc::StatusCode::OK,
                      "", kOutcomeVerdict, 200, "outcome=verdict", After::kCached}),
    [](const ::testing::TestParamInfo<UpstreamFault>& info) { return info.param.name; });

// The missing booleans row above checks the status; this checks the verdict itself.
TEST(FaultUpstreamBodyTest, MissingBooleansAreFalse) {
  TempDir dir;
  Simulator sim(dir, kToken, {"--mode=missing_bools"});
  Verdictd verdictd(dir, sim.url(), kToken);
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd.stub(), "11.6.1.1", &r).ok());
  EXPECT_EQ(r.verdict().score(), pb::SCORE_SAFE);
  EXPECT_FALSE(r.verdict().proxy());
  EXPECT_FALSE(r.verdict().tor());
  EXPECT_FALSE(r.verdict().vpn());
  EXPECT_FALSE(r.verdict().crawler());
  EXPECT_FALSE(r.verdict().bot());
}

// An 8 MiB answer is cut off at the 64 KiB cap: the peak memory of verdictd hardly moves.
TEST(FaultUpstreamBodyTest, HugeBodyIsNotReadIntoMemory) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken);
  const pid_t pid = FindProcessWithArg("--db=" + verdictd.db_path());
  ASSERT_GT(pid, 0);
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd.stub(), "11.6.2.1", &r).ok());  // warm up every code path
  const int64_t peak_before = ProcStatusKib(pid, "VmHWM");
  ASSERT_GT(peak_before, 0);
  sim.Configure({{"mode", "huge"}});
  for (const char* ip : {"11.6.2.2", "11.6.2.3", "11.6.2.4"}) {
    grpc::Status status = CheckIp(verdictd.stub(), ip, &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  }
  const int64_t peak_after = ProcStatusKib(pid, "VmHWM");
  // Reading one 8 MiB body (let alone three) would raise the peak by at least 8 MiB.
  EXPECT_LT(peak_after - peak_before, 4 * 1024)
      << "peak RSS grew from " << peak_before << " KiB to " << peak_after << " KiB";
  std::printf("[ measured ] verdictd peak RSS %lld KiB before, %lld KiB after 3 x 8 MiB bodies\n",
              static_cast<long long>(peak_before), static_cast<long long>(peak_after));
}

// --- HTTPS with a certificate verdictd does not trust -----------------------------------------

TEST(FaultUpstreamTlsTest, SelfSignedCertificateIsRefusedUnsentUntilTrusted) {
  TempDir dir;
  const std::string cert = dir.File("cert.pem");
  const std::string key = dir.File("key.pem");
  absl::StatusOr<CommandResult> made =
      RunCommand({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days",
                  "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"});
  ASSERT_TRUE(made.ok()) << made.status();
  ASSERT_EQ(made->exit_code, 0) << made->err;

  Simulator sim(dir, kToken, {"--tls_cert=" + cert, "--tls_key=" + key});
  const std::string url = absl::StrCat("https://127.0.0.1:", sim.port(), "/");
  // The harness talks plain HTTP to the simulator; this one verifies against the test's cert.
  auto stats = [&]() -> nlohmann::json {
    httplib::SSLClient client("127.0.0.1", sim.port());
    client.set_ca_cert_path(cert.c_str());
    client.enable_server_certificate_verification(true);
    httplib::Result result = client.Get("/_sim/stats");
    if (!result || result->status != 200) {
      ADD_FAILURE() << "GET https /_sim/stats failed";
      return nlohmann::json{{"requests", -1}};
    }
    return nlohmann::json::parse(result->body);
  };
  ASSERT_EQ(stats().at("requests").get<int64_t>(), 0);

  {
    Verdictd verdictd(dir, url, kToken);
    pb::CheckIpResponse r;
    grpc::Status status = CheckIp(verdictd.stub(), "11.6.3.1", &r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), HasSubstr("TLS"));
    EXPECT_THAT(status.error_message(), Not(HasSubstr(kToken)));
    EXPECT_EQ(stats().at("requests").get<int64_t>(), 0)
        << "the handshake fails before any HTTP request";
    // Provably unsent, so not billed: each attempt (3 by default) is a not-sent ledger row.
    EXPECT_EQ(QueryInt(verdictd.db_path(), "SELECT count(*) FROM clicks"), 3);
    EXPECT_EQ(QueryInt(verdictd.db_path(), "SELECT count(*) FROM clicks WHERE outcome != 3"), 0);
    EXPECT_EQ(QueryInt(verdictd.db_path(), "SELECT count(*) FROM verdicts"), 0);
    EXPECT_EQ(verdictd.Stop(), 0);
    EXPECT_THAT(verdictd.Log(), HasSubstr("outcome=not_sent"));
    EXPECT_THAT(verdictd.Log(), Not(HasSubstr(kToken)));
  }
  Verdictd trusting(dir, url, kToken, {"--upstream_ca_file=" + cert});
  pb::CheckIpResponse r;
  grpc::Status status = CheckIp(trusting.stub(), "11.6.3.1", &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_TRUE(r.click_spent());
  EXPECT_EQ(stats().at("requests").get<int64_t>(), 1);
  EXPECT_EQ(QueryInt(trusting.db_path(), "SELECT count(*) FROM clicks WHERE outcome = 1"), 1);
}

}  // namespace
}  // namespace verdictd::testing::faults
