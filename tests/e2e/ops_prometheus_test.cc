// End-to-end with a real Prometheus server (Debian's /usr/bin/prometheus): it scrapes verdictd's
// /metrics every second, loads deploy/prometheus/verdictd.rules.yml, and a PromQL query over its
// HTTP API returns the clicks this test caused, counted independently by the simulated
// ClickPatrol. Everything on 127.0.0.1; Prometheus's data in the test's temp dir. Prometheus is a
// ChildProcess, so it is killed when the test ends, passed or failed.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/ops_fixture.h"

namespace verdictd::testing::ops {
namespace {

using ::testing::UnorderedElementsAre;

// A port that was free a moment ago (Prometheus has no port-0-and-report option). The window
// until Prometheus binds it is small; if another process takes it, Prometheus exits and the test
// says so.
int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return 0;
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  close(fd);
  return port;
}

class Prometheus {
 public:
  // Scrapes 127.0.0.1:`metrics_port` every second and evaluates `rules_file` every second.
  Prometheus(const TempDir& dir, int metrics_port, const std::string& rules_file)
      : port_(FreeLoopbackPort()) {
    const std::string config = dir.File("prometheus.yml");
    WriteFile(config, absl::StrCat("global:\n"
                                   "  scrape_interval: 1s\n"
                                   "  scrape_timeout: 1s\n"
                                   "  evaluation_interval: 1s\n"
                                   "rule_files:\n"
                                   "  - ",
                                   rules_file,
                                   "\n"
                                   "scrape_configs:\n"
                                   "  - job_name: verdictd\n"
                                   "    static_configs:\n"
                                   "      - targets: [\"127.0.0.1:",
                                   metrics_port, "\"]\n"));
    log_path_ = dir.File("prometheus.log");
    // The port can be taken between FreeLoopbackPort and Prometheus's bind (tests running in
    // parallel bind port 0 too): then Prometheus exits at once, and it is started again on
    // another port. It is ours once it answers /-/ready as Prometheus.
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (attempt > 0) {
        port_ = FreeLoopbackPort();
      }
      absl::StatusOr<std::unique_ptr<ChildProcess>> started = ChildProcess::Start(
          {PROMETHEUS_BIN, absl::StrCat("--config.file=", config),
           absl::StrCat("--storage.tsdb.path=", dir.File(absl::StrCat("tsdb", attempt))),
           absl::StrCat("--web.listen-address=127.0.0.1:", port_), "--log.level=warn"},
          {}, log_path_);
      if (!started.ok()) {
        ADD_FAILURE() << "cannot start " << PROMETHEUS_BIN << ": " << started.status();
        return;
      }
      process_ = *std::move(started);
      if (AwaitReady()) {
        return;
      }
      process_->Kill();
      process_.reset();
    }
    ADD_FAILURE() << "Prometheus did not start on a free port in 5 attempts; its log:\n" << Log();
  }

  int port() const { return port_; }
  std::string Log() const { return ReadFileOrEmpty(log_path_); }
  absl::StatusOr<int> Terminate() {
    if (process_ == nullptr) {
      return absl::FailedPreconditionError("prometheus did not start");
    }
    return process_->Terminate(absl::Seconds(10));
  }

  // GET `path` with `params` and its JSON body; an error if Prometheus has exited (nothing awaited
  // can happen then) or the body is not JSON. A refused connection (still starting) is a value
  // with status "unreachable", so that a wait goes on.
  absl::StatusOr<nlohmann::json> Get(const std::string& path, const httplib::Params& params = {}) {
    if (process_ == nullptr || !process_->Running()) {
      return absl::FailedPreconditionError(absl::StrCat("prometheus is not running: ", Log()));
    }
    httplib::Client client("127.0.0.1", port_);
    client.set_connection_timeout(2);
    client.set_read_timeout(5);
    httplib::Result result = client.Get(path, params, httplib::Headers{});
    if (!result) {
      return nlohmann::json{{"status", "unreachable"}};
    }
    nlohmann::json body = nlohmann::json::parse(result->body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) {
      return absl::InternalError(
          absl::StrCat("HTTP ", result->status, ", not JSON: ", result->body.substr(0, 200)));
    }
    return body;
  }

  // The value of an instant query that yields one sample (as Prometheus prints it: "3"), "none"
  // while it yields no sample, or what Prometheus answered instead.
  absl::StatusOr<std::string> QueryOne(const std::string& promql) {
    absl::StatusOr<nlohmann::json> body = Get("/api/v1/query", {{"query", promql}});
    if (!body.ok()) {
      return body.status();
    }
    if (body->value("status", "") != "success") {
      return body->dump();
    }
    const nlohmann::json& result = (*body)["data"]["result"];
    if (result.empty()) {
      return std::string("none");
    }
    if (result.size() != 1) {
      return absl::StrCat(result.size(), " samples: ", result.dump());
    }
    return result[0]["value"][1].get<std::string>();
  }

 private:
  // Until Prometheus answers its readiness endpoint on port_ (true), or exits (false).
  bool AwaitReady() {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      if (!process_->Running()) {
        return false;
      }
      httplib::Client client("127.0.0.1", port_);
      client.set_connection_timeout(1);
      client.set_read_timeout(2);
      httplib::Result ready = client.Get("/-/ready");
      if (ready && ready->status == 200 && ready->body.find("Prometheus") != std::string::npos) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return process_->Running();
  }

  int port_;
  std::string log_path_;
  std::unique_ptr<ChildProcess> process_;
};

TEST_F(OpsTest, PrometheusCountsTheClicksAndLoadsTheRules) {
  StartVerdictd({"--metrics_listen=127.0.0.1:0"});
  const int metrics_port = MetricsPortFromLog(*verdictd_);
  ASSERT_GT(metrics_port, 0) << verdictd_->Log();
  Prometheus prometheus(dir_, metrics_port,
                        absl::StrCat(SOURCE_DIR, "/deploy/prometheus/verdictd.rules.yml"));
  ASSERT_GT(prometheus.port(), 0);

  // Three misses (three clicks) and a hit (none).
  pb::CheckIpResponse r;
  for (const char* ip : {"8.8.8.8", "1.1.1.1", "9.9.9.9"}) {
    ASSERT_TRUE(CheckIp(verdictd_->stub(), ip, &r, "ads").ok()) << ip;
    ASSERT_EQ(r.source(), pb::SOURCE_UPSTREAM) << ip;
  }
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "ads").ok());
  ASSERT_EQ(r.source(), pb::SOURCE_CACHE);
  ASSERT_EQ(sim_->Requests(), 3) << "ClickPatrol's own count";

  // Most of the wait is Prometheus's: its scrape manager applies the configured targets on a
  // 5 s tick, so the first scrape comes about 5.5 s after it starts (measured by hand: ready
  // after 0.07 s, first `up` sample after 5.8 s).
  const WaitResult<std::string> clicks = WaitUntil(
      "sum(verdictd_clicks_total) == 3 in Prometheus",
      [&] { return prometheus.QueryOne("sum(verdictd_clicks_total)"); },
      [](const std::string& value) { return value == "3"; }, absl::Seconds(30),
      absl::Milliseconds(200));
  ASSERT_TRUE(clicks) << prometheus.Log();
  std::printf("[ measured ] Prometheus had the 3 clicks %s after the last call\n",
              absl::FormatDuration(clicks.elapsed()).c_str());
  // The scrape carried the labels the rules aggregate by.
  EXPECT_EQ(*prometheus.QueryOne(absl::StrCat(R"(verdictd_clicks_total{job="verdictd",instance=")",
                                              "127.0.0.1:", metrics_port, R"(",caller="ads"})")),
            "3");

  // Every rule of the file is loaded, and has been evaluated without error against the real
  // series (health "ok"; "err" would be, e.g., a vector matching that fails on real labels).
  std::set<std::string> names;
  const WaitResult<std::string> evaluated = WaitUntil(
      "every rule evaluated with health ok",
      [&]() -> absl::StatusOr<std::string> {
        absl::StatusOr<nlohmann::json> body = prometheus.Get("/api/v1/rules");
        if (!body.ok()) {
          return body.status();
        }
        names.clear();
        std::string unhealthy;
        for (const nlohmann::json& group : (*body)["data"]["groups"]) {
          for (const nlohmann::json& rule : group["rules"]) {
            names.insert(rule.value("name", ""));
            if (rule.value("health", "") != "ok") {
              absl::StrAppend(&unhealthy, rule.value("name", ""), " ", rule.value("health", ""),
                              " ", rule.value("lastError", ""), "; ");
            }
          }
        }
        return names.empty() ? body->dump() : unhealthy;
      },
      [&names](const std::string& unhealthy) { return !names.empty() && unhealthy.empty(); },
      absl::Seconds(30), absl::Milliseconds(200));
  ASSERT_TRUE(evaluated) << prometheus.Log();
  EXPECT_THAT(names, UnorderedElementsAre("VerdictdAllowanceNearlyUsed",
                                          "VerdictdAllowanceExhausted", "VerdictdTokenRejected",
                                          "VerdictdCircuitBreakerOpen", "VerdictdStoreNotServing",
                                          "VerdictdCallerBudgetSpent", "VerdictdTeamBudgetSpent",
                                          "VerdictdUpstreamErrorRatioHigh", "VerdictdDown"));

  // A rule on a real series: ClickPatrol rejects the token, and VerdictdTokenRejected becomes
  // pending (firing would take its for: 1m) for this instance.
  sim_->Configure({{"mode", "unauthorized"}});
  const grpc::Status rejected = CheckIp(verdictd_->stub(), "4.4.4.4", &r, "ads");
  ASSERT_EQ(rejected.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << rejected.error_message();
  EXPECT_TRUE(WaitUntil(
      "VerdictdTokenRejected pending",
      [&] {
        return prometheus.QueryOne(
            R"(ALERTS{alertname="VerdictdTokenRejected",alertstate="pending"})");
      },
      [](const std::string& value) { return value == "1"; }, absl::Seconds(30),
      absl::Milliseconds(200)))
      << prometheus.Log();

  absl::StatusOr<int> exit_code = prometheus.Terminate();
  EXPECT_TRUE(exit_code.ok() && *exit_code == 0)
      << (exit_code.ok() ? absl::StrCat("exit ", *exit_code) : exit_code.status().ToString())
      << "\n"
      << prometheus.Log();
}

}  // namespace
}  // namespace verdictd::testing::ops
