// End-to-end fault injection: ClickPatrol failing in every way the simulator can fail, HTTPS with
// an untrusted certificate, and the SQLite store locked by another process, out of disk space or
// corrupt at start-up. The real verdictd binary, a SQLite file in a temp dir and the simulator
// over loopback.
//
// What every upstream fault must leave behind: the caller gets a precise status, the failure is
// not cached (the next check after the fault clears goes to ClickPatrol again), the click is in
// the ledger (outcome 2 when the request was sent, 3 when it provably never left), and the
// server keeps answering.

#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
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
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

// A distinctive token, so a leak is easy to grep for.
constexpr char kToken[] = "cp_FaultSecretToken_9c41e7d02a";

// Ledger outcomes (storage/verdict_store.h ClickOutcome).
constexpr int kOutcomeVerdict = 1;
constexpr int kOutcomeUpstreamError = 2;
constexpr int kOutcomeNotSent = 3;

void PostRules(const Simulator& sim, const std::string& rules) {
  httplib::Client client("127.0.0.1", sim.port());
  httplib::Result result = client.Post("/_sim/rules", rules, "text/plain");
  ASSERT_TRUE(result && result->status == 200) << "POST /_sim/rules failed: " << rules;
}

// The pid of the running verdictd whose command line holds `arg` (its --db flag is unique per
// test), or -1.
pid_t FindProcessWithArg(const std::string& arg) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    const std::string cmdline = ReadFileOrEmpty(entry.path().string() + "/cmdline");
    size_t start = 0;
    while (start < cmdline.size()) {
      const size_t end = cmdline.find('\0', start);
      if (cmdline.compare(start, end - start, arg) == 0) {
        return static_cast<pid_t>(std::stol(name));
      }
      if (end == std::string::npos) {
        break;
      }
      start = end + 1;
    }
  }
  return -1;
}

// A field of /proc/PID/status in KiB (VmRSS, VmHWM), or -1.
int64_t ProcStatusKib(pid_t pid, const std::string& field) {
  const std::string status = ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/status"));
  const size_t at = status.find(field + ":");
  if (at == std::string::npos) {
    return -1;
  }
  return std::stoll(status.substr(at + field.size() + 1));
}

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

// --- store faults ------------------------------------------------------------------------------

// Waits until the batched usage counters hold `requests` checks in total, so that no usage write
// is pending (one would queue ahead of the next click and change the timing).
void WaitForUsageRequests(const std::string& db, int64_t requests) {
  EXPECT_TRUE(WaitUntil(
      absl::StrCat(requests, " requests in the usage counters"),
      [&] { return QueryInt(db, "SELECT coalesce(sum(requests), 0) FROM usage"); },
      [&](int64_t counted) { return counted == requests; }, absl::Seconds(10)))
      << "usage counters never reached " << requests;
}

// Another process holds the write lock longer than the store's busy timeout (5 s, fixed: there
// is no flag to shorten it). A miss cannot record its click, so it must not be sent; hits are
// still answered from the store (WAL readers are not blocked by a writer); once the lock is
// released, misses work again.
TEST(FaultStoreTest, WriteLockHeldByAnotherProcess) {
  TempDir dir;
  Simulator sim(dir, kToken);
  auto verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
  const std::string db = verdictd->db_path();
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.7.0.1", &r).ok());
  // Restart so that the verdict is not in verdictd's in-memory cache: hits must read SQLite.
  ASSERT_EQ(verdictd->Stop(), 0);
  verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
  // A miss behind the start-up writes (retention pruning), then no write pending at all.
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.7.0.2", &r).ok());
  WaitForUsageRequests(db, 2);
  const int64_t sent = sim.Requests();
  ASSERT_EQ(sent, 2);

  sqlite3* locker = nullptr;
  ASSERT_EQ(sqlite3_open_v2(db.c_str(), &locker, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(locker, 5000);
  ASSERT_EQ(sqlite3_exec(locker, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK)
      << sqlite3_errmsg(locker);

  absl::Time start = absl::Now();
  grpc::Status status = CheckIp(verdictd->stub(), "11.7.0.3", &r);
  const absl::Duration miss_took = absl::Now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("cannot record the click, so nothing was sent"));
  EXPECT_GE(miss_took, absl::Seconds(4)) << "the store waits out its busy timeout first";
  EXPECT_EQ(sim.Requests(), sent) << "never spend a click that cannot be recorded";

  // Still holding the lock: hits are read from the store, without waiting for it.
  start = absl::Now();
  status = CheckIp(verdictd->stub(), "11.7.0.1", &r);
  const absl::Duration hit_took = absl::Now() - start;
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_LT(hit_took, absl::Seconds(1));
  std::printf("[ measured ] miss under a held write lock failed after %s; a hit took %s\n",
              absl::FormatDuration(miss_took).c_str(), absl::FormatDuration(hit_took).c_str());

  ASSERT_EQ(sqlite3_exec(locker, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(locker);

  status = CheckIp(verdictd->stub(), "11.7.0.3", &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(sim.Requests(), sent + 1);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE ip = '11.7.0.3'"), 1)
      << "the refused miss left no ledger row";
}

// Unmounts (lazily) on destruction.
class TmpfsMount {
 public:
  explicit TmpfsMount(const std::string& dir, const std::string& options) : dir_(dir) {
    mkdir(dir.c_str(), 0700);
    if (mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~TmpfsMount() {
    if (mounted_) {
      umount2(dir_.c_str(), MNT_DETACH);
    }
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// Writes to `path` until the file system is full; the bytes written.
int64_t FillDisk(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return -1;
  }
  std::setvbuf(f, nullptr, _IONBF, 0);
  const std::string block(4096, 'F');
  int64_t written = 0;
  for (;;) {
    const size_t n = std::fwrite(block.data(), 1, block.size(), f);
    written += static_cast<int64_t>(n);
    if (n < block.size()) {
      break;
    }
  }
  std::fclose(f);
  return written;
}

// The database on a 1 MiB tmpfs that is then filled: misses fail without being sent, hits are
// still served, and everything works again once space is freed.
TEST(FaultStoreTest, DiskFull) {
  TempDir dir;
  Simulator sim(dir, kToken);
  const std::string mnt = dir.File("small");
  TmpfsMount mount(mnt, "size=1m,mode=0700");
  if (!mount.mounted()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << mount.error()
                 << "); needs root or CAP_SYS_ADMIN";
  }
  const std::string db = mnt + "/verdicts.db";
  const std::vector<std::string> flags = {"--db=" + db};
  auto verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken, flags);
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.8.0.1", &r).ok());
  ASSERT_EQ(verdictd->Stop(), 0);
  verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken, flags);
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.8.0.2", &r).ok());
  WaitForUsageRequests(db, 2);

  const std::string filler = mnt + "/filler";
  const int64_t filled = FillDisk(filler);
  ASSERT_GT(filled, 0);

  // The WAL may still have room in pages it already holds, so a few writes can succeed; keep
  // missing until one cannot record its click.
  bool refused = false;
  int misses = 0;
  for (int i = 10; i < 60 && !refused; ++i) {
    const std::string ip = absl::StrCat("11.8.0.", i);
    const int64_t before = sim.Requests();
    grpc::Status status = CheckIp(verdictd->stub(), ip, &r);
    const int64_t sent = sim.Requests() - before;
    ++misses;
    SCOPED_TRACE(absl::StrCat(ip, ": ", status.error_message()));
    if (status.ok()) {
      EXPECT_EQ(sent, 1);
      continue;
    }
    ASSERT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    if (absl::StrContains(status.error_message(), "cannot record the click")) {
      EXPECT_EQ(sent, 0) << "never spend a click that cannot be recorded";
      refused = true;
    } else {
      // The ledger row was written, the request sent, and then the verdict could not be stored.
      EXPECT_THAT(status.error_message(), HasSubstr("could not be stored"));
      EXPECT_EQ(sent, 1);
    }
  }
  ASSERT_TRUE(refused) << "no miss was refused after " << misses << " tries on a full disk";
  std::printf("[ measured ] %d misses until the full disk refused one (filler %lld bytes)\n",
              misses, static_cast<long long>(filled));

  // Hits are still served (from SQLite: the verdict was stored before the restart).
  grpc::Status status = CheckIp(verdictd->stub(), "11.8.0.1", &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_TRUE(WaitUntil(
      "\"verdict store unusable, health NOT_SERVING\" in the log", [&] { return verdictd->Log(); },
      [](const std::string& log) {
        return absl::StrContains(log, "verdict store unusable, health NOT_SERVING");
      },
      absl::Seconds(10)))
      << verdictd->Log();

  // Space again: misses work.
  ASSERT_EQ(std::remove(filler.c_str()), 0);
  const WaitResult<std::string> recovered = WaitUntil(
      "a miss to succeed again",
      [&] {
        pb::CheckIpResponse again;
        const grpc::Status status = CheckIp(verdictd->stub(), "11.8.1.1", &again);
        return status.ok() ? std::string("OK")
                           : absl::StrCat(status.error_code(), ": ", status.error_message());
      },
      [](const std::string& status) { return status == "OK"; }, absl::Seconds(10));
  EXPECT_TRUE(recovered) << verdictd->Log();
  EXPECT_TRUE(WaitUntil(
      "\"verdict store usable again: health SERVING\" in the log", [&] { return verdictd->Log(); },
      [](const std::string& log) {
        return absl::StrContains(log, "verdict store usable again: health SERVING");
      },
      absl::Seconds(10)))
      << verdictd->Log();
  EXPECT_EQ(verdictd->Stop(), 0);
  verdictd.reset();
  // Every request that reached ClickPatrol is in the ledger.
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE outcome != 3"), sim.Requests());
}

// A database on a file system that is read-only (root ignores file permissions, a read-only
// mount stops it too): verdictd refuses to start, quickly and naming the file, rather than take
// checks whose clicks it could never record. The file is left as it was.
TEST(FaultStoreTest, ReadOnlyFileSystemAtStartUp) {
  TempDir dir;
  Simulator sim(dir, kToken);
  const std::string mnt = dir.File("ro");
  TmpfsMount mount(mnt, "size=4m,mode=0700");
  if (!mount.mounted()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << mount.error()
                 << "); needs root or CAP_SYS_ADMIN";
  }
  const std::string db = mnt + "/verdicts.db";
  {
    Verdictd verdictd(dir, sim.url(), kToken, {"--db=" + db});
    pb::CheckIpResponse r;
    ASSERT_TRUE(CheckIp(verdictd.stub(), "11.8.2.1", &r).ok());
    ASSERT_EQ(verdictd.Stop(), 0);
  }
  const std::string before = ReadFileOrEmpty(db);
  ASSERT_FALSE(before.empty());
  ASSERT_EQ(::mount(nullptr, mnt.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr), 0)
      << std::strerror(errno);

  const std::string log = dir.File("verdictd-ro.log");
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + db, "--upstream_url=" + sim.url()},
      {{"CLICKPATROL_TOKEN", kToken}}, log);
  ASSERT_TRUE(process.ok()) << process.status();
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  ASSERT_TRUE(code.ok()) << "verdictd kept running on a read-only database";
  EXPECT_EQ(*code, 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  const std::string text = ReadFileOrEmpty(log);
  EXPECT_THAT(text, HasSubstr(absl::StrCat("verdictd cannot start: database ", db,
                                           " is not usable: the file is read-only")));
  EXPECT_EQ(ReadFileOrEmpty(db), before) << "the file must be left as it was";
  EXPECT_EQ(sim.Requests(), 1);
}

// --- corrupt database at start-up --------------------------------------------------------------

struct CorruptFile {
  std::string name;
  std::string contents;
};

// ctest and gtest print a parameter by its name, not as raw bytes.
void PrintTo(const CorruptFile& param, std::ostream* os) { *os << param.name; }

class FaultStartupTest : public ::testing::TestWithParam<CorruptFile> {};

TEST_P(FaultStartupTest, CorruptDatabaseIsRefusedWithAClearMessage) {
  TempDir dir;
  const std::string db = dir.File("verdicts.db");
  {
    std::ofstream out(db, std::ios::binary);
    out << GetParam().contents;
  }
  const std::string log = dir.File("verdictd.log");
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + db, "--upstream_url=http://127.0.0.1:9/"},
      {{"CLICKPATROL_TOKEN", kToken}}, log);
  ASSERT_TRUE(process.ok()) << process.status();
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(code.ok()) << "verdictd kept running with a corrupt database";
  EXPECT_NE(*code, 0);
  EXPECT_LT(*code, 128) << "killed by signal " << *code - 128 << " (a crash)";
  EXPECT_LT(took, absl::Seconds(5));
  const std::string text = ReadFileOrEmpty(log);
  EXPECT_THAT(text, HasSubstr("verdictd cannot start"));
  EXPECT_THAT(text, HasSubstr(db)) << "the message names the file";
  EXPECT_THAT(text, AnyOf(HasSubstr("not a database"), HasSubstr("malformed")));
  EXPECT_EQ(ReadFileOrEmpty(db), GetParam().contents) << "the file must be left as it was";
}

std::string SqliteHeaderThenGarbage() {
  std::string s("SQLite format 3\0", 16);
  for (int i = 0; s.size() < 64 * 1024; ++i) {
    s.push_back(static_cast<char>((i * 131 + 7) % 251));
  }
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    FaultStartup, FaultStartupTest,
    ::testing::Values(CorruptFile{"Text", std::string(20000, 'g') + "this is not a database\n"},
                      CorruptFile{"SqliteHeaderThenGarbage", SqliteHeaderThenGarbage()}),
    [](const ::testing::TestParamInfo<CorruptFile>& info) { return info.param.name; });

}  // namespace
}  // namespace verdictd::testing
