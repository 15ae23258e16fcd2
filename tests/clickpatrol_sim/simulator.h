#ifndef VERDICTD_TESTS_CLICKPATROL_SIM_SIMULATOR_H_
#define VERDICTD_TESTS_CLICKPATROL_SIM_SIMULATOR_H_

// A simulated ClickPatrol API: a small real HTTP(S) server on loopback that answers like
// https://trck-003.clckptrl.com/?token=T&ip=IP&user_http_header=UA and can be told to fail
// in the ways the real service (or the network in front of it) can. Used by tests,
// benchmarks and the demo; see clickpatrol_sim_main.cc for the endpoints and flags.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/verdict.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace verdictd::sim {

// How the simulator answers `/` requests that pass the token and IP checks.
enum class FailureMode {
  kOk,            // 200 with a verdict
  k5xx,           // 503 {"error":"service unavailable"}
  kGarbage,       // 200 <html>oops</html>
  kExhausted,     // 402 {"error":"monthly click allowance exhausted"}
  kUnauthorized,  // 401 {"error":"invalid token"}
  kHang,          // never answers until the client goes away (at most 60 s, or shutdown)
  kReset,         // promises a Content-Length, sends part of the body, closes the connection
  kHuge,          // 200 with 8 MiB of JSON-ish padding
  kRedirect,      // 302 to /redirected
  kMissingBools,  // 200 {"trusted_ai_score":"Safe"}
  kForbidden,     // 403 {"error":"forbidden"}
  kRateLimited,   // 429 {"error":"too many requests"}
};

// "ok", "5xx", "garbage", "exhausted", "unauthorized", "hang", "reset", "huge", "redirect",
// "missing_bools", "forbidden", "rate_limited".
absl::string_view FailureModeName(FailureMode mode);
absl::StatusOr<FailureMode> ParseFailureMode(absl::string_view name);

// What a rules-file line fixes for one IP: either a verdict or a failure mode.
struct Rule {
  bool is_error = false;
  FailureMode error = FailureMode::kOk;  // when is_error
  Assessment assessment;                 // when !is_error
};
// Keyed by canonical IP text (common/ip.h).
using Rules = std::map<std::string, Rule>;

// Parses rules text: one rule per line, `#` starts a comment, blank lines are ignored.
//   IP SCORE [proxy] [tor] [vpn] [crawler] [bot]    SCORE is Safe, Suspicious or Fake
//   IP error=MODE                                   MODE is a FailureModeName other than ok
// Errors are INVALID_ARGUMENT "SOURCE:LINE: reason".
absl::StatusOr<Rules> ParseRules(absl::string_view text, absl::string_view source);
// Reads and parses a rules file; SOURCE in errors is the path.
absl::StatusOr<Rules> LoadRulesFile(const std::string& path);

// FNV-1a 64 of `text`: the seed of the simulated verdicts, identical on every platform.
uint64_t Fnv1a64(absl::string_view text);
// The verdict the simulator gives an IP no rule mentions. `canonical_ip` must be canonical.
Assessment SimulatedAssessment(absl::string_view canonical_ip);

struct SimulatorOptions {
  // Literal IP (or "localhost") and port; port 0 picks a free one.
  std::string host = "127.0.0.1";
  int port = 0;
  // Binding to anything but loopback needs this: the simulator has no real authentication.
  bool allow_non_loopback = false;
  std::string token = "sim-token";
  absl::Duration latency = absl::ZeroDuration();
  FailureMode mode = FailureMode::kOk;
  int64_t allowance = 0;  // verdicts answered before 402; 0 = unlimited
  Rules rules;
  int threads = 128;  // one per concurrent connection (keep-alive holds its thread)
  // HTTPS when both are set (PEM files).
  std::string tls_cert;
  std::string tls_key;
};

// The runtime-adjustable part of the options.
struct SimulatorConfig {
  std::string token;  // the token `/` requests must carry (SimulatorOptions::token at start)
  FailureMode mode = FailureMode::kOk;
  absl::Duration latency = absl::ZeroDuration();
  int64_t allowance = 0;
};

// Counters since start or the last ResetStats().
struct SimulatorStats {
  int64_t requests = 0;                      // every `/` request (each is a billed click)
  int64_t verdicts = 0;                      // `/` requests answered 200 with a full verdict
  int64_t errors = 0;                        // `/` requests answered any other way
  int64_t redirect_follows = 0;              // requests to /redirected
  int64_t connections = 0;                   // distinct client (address, port) pairs seen on `/`
  int64_t in_flight = 0;                     // `/` requests being handled now
  int64_t max_in_flight = 0;                 // the most `/` requests handled at once
  std::map<std::string, int64_t> by_ip;      // `/` requests per canonical IP (valid IPs only)
  std::string last_user_agent;               // User-Agent header of the last `/` request
  std::string last_user_http_header;         // user_http_header parameter of the last `/` request
  std::vector<std::string> last_query_keys;  // query keys of the last `/` request, in order
};

// The simulator. Thread-safe. Start() once; Stop() (or the destructor) shuts it down within
// about a second even with hanging requests or idle keep-alive connections.
class ClickPatrolSimulator {
 public:
  explicit ClickPatrolSimulator(SimulatorOptions options);
  ~ClickPatrolSimulator();

  ClickPatrolSimulator(const ClickPatrolSimulator&) = delete;
  ClickPatrolSimulator& operator=(const ClickPatrolSimulator&) = delete;

  // Binds and starts serving on a background thread. Fails on a bad address, a non-loopback
  // address without allow_non_loopback, unusable TLS files or a port in use.
  absl::Status Start();
  void Stop();

  // Valid after Start().
  int port() const { return port_; }
  // "http://127.0.0.1:PORT/" (https with TLS): the base URL to give a ClickPatrol client.
  std::string base_url() const;

  SimulatorConfig config() const;
  void set_config(const SimulatorConfig& config);
  void set_rules(Rules rules);

  SimulatorStats stats() const;
  void ResetStats();

 private:
  struct RequestGuard;

  void InstallHandlers();
  void HandleVerdictRequest(const httplib::Request& req, httplib::Response& res);
  void HandleRedirected(const httplib::Request& req, httplib::Response& res);
  void HandleStats(const httplib::Request& req, httplib::Response& res);
  void HandleGetConfig(const httplib::Request& req, httplib::Response& res);
  void HandleSetConfig(const httplib::Request& req, httplib::Response& res);
  void HandleSetRules(const httplib::Request& req, httplib::Response& res);
  void HandleReset(const httplib::Request& req, httplib::Response& res);

  // Answers with `mode` (anything but kOk). Returns after the answer is set up.
  void AnswerFailure(FailureMode mode, const httplib::Request& req, httplib::Response& res);
  // Blocks until the client of `req` hangs up, `limit` passes or the simulator stops.
  void WaitForClientToGiveUp(const httplib::Request& req, absl::Duration limit);
  // Counts one verdict unless `allowance` (> 0) verdicts were already answered; false then.
  bool TakeVerdict(int64_t allowance);

  const SimulatorOptions options_;
  bool tls_ = false;
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;
  absl::Notification listener_done_;
  absl::Notification stopping_;  // hanging and sleeping handlers wake up on it
  std::atomic<int> listen_fd_{-1};
  int port_ = 0;
  std::string url_host_;  // host as printed in URLs ([v6] bracketed)
  bool started_ = false;
  bool stopped_ = false;

  mutable absl::Mutex config_mu_;
  SimulatorConfig config_ ABSL_GUARDED_BY(config_mu_);
  std::shared_ptr<const Rules> rules_ ABSL_GUARDED_BY(config_mu_);

  std::atomic<int64_t> requests_{0};
  std::atomic<int64_t> verdicts_{0};
  std::atomic<int64_t> errors_{0};
  std::atomic<int64_t> redirect_follows_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> max_in_flight_{0};

  mutable absl::Mutex stats_mu_;
  std::map<std::string, int64_t> by_ip_ ABSL_GUARDED_BY(stats_mu_);
  std::set<std::string> connections_ ABSL_GUARDED_BY(stats_mu_);
  std::string last_user_agent_ ABSL_GUARDED_BY(stats_mu_);
  std::string last_user_http_header_ ABSL_GUARDED_BY(stats_mu_);
  std::vector<std::string> last_query_keys_ ABSL_GUARDED_BY(stats_mu_);
};

}  // namespace verdictd::sim

#endif  // VERDICTD_TESTS_CLICKPATROL_SIM_SIMULATOR_H_
