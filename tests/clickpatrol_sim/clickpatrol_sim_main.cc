// clickpatrol_sim: a simulated ClickPatrol IP-fraud API for tests, benchmarks and demos.
//
//   clickpatrol_sim [--listen=127.0.0.1:0] [--token=sim-token] [--port_file=PATH]
//                   [--mode=ok] [--latency=0s] [--allowance=0] [--rules_file=PATH]
//                   [--threads=128] [--tls_cert=PEM --tls_key=PEM] [--allow_non_loopback]
//
// Prints exactly one line once it accepts connections:
//   clickpatrol_sim listening on http://127.0.0.1:PORT/
// and exits 0 on SIGTERM or SIGINT (within about a second, even with hanging requests).
// Start-up errors go to stderr with exit status 1.
//
// GET /?token=T&ip=IP&user_http_header=UA      the simulated API (each request is a "click")
//   401 {"error":"invalid token"}                  token missing or wrong
//   400 {"error":"invalid ip"}                     ip missing or not an IPv4/IPv6 address
//   the failure mode, if not ok (a rules-file error=MODE for the IP beats the global mode)
//   402 {"error":"monthly click allowance exhausted"}   --allowance verdicts already answered
//   200 {"trusted_ai_score":"Safe","proxy":false,"tor":false,"vpn":false,"crawler":false,
//        "bot":false}   from the rules file, else derived from FNV-1a 64 of the canonical IP
// GET|POST /redirected      counts redirect_follows; answers a Safe verdict
// GET  /_sim/stats          counters since start or the last reset (JSON)
// GET  /_sim/config         {"mode":"ok","latency_ms":0,"allowance":0}
// POST /_sim/config         any subset of that object; 200 with the new config, 400 on an
//                           unknown key or bad value (then nothing changes); it may also set
//                           "token" (a regenerated token: the old one gets 401 at once; never
//                           echoed back)
// POST /_sim/rules          body in rules-file syntax; replaces all rules
// POST /_sim/reset          zeroes the counters (not the config or rules)
//
// Modes: ok, 5xx, garbage, exhausted, unauthorized, hang, reset, huge, redirect,
// missing_bools, forbidden (403), rate_limited (429). Rules file: one rule per line, `#` comments:
//   IP SCORE [proxy] [tor] [vpn] [crawler] [bot]     SCORE: Safe | Suspicious | Fake
//   IP error=MODE

#include <signal.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tests/clickpatrol_sim/simulator.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0",
          "HOST:PORT to listen on; port 0 picks a free port. HOST must be loopback unless "
          "--allow_non_loopback; IPv6 as [::1]:PORT.");
ABSL_FLAG(bool, allow_non_loopback, false,
          "Allow a non-loopback --listen address (the simulator has no real authentication).");
ABSL_FLAG(std::string, token, "sim-token", "The token clients must send (not a secret).");
ABSL_FLAG(std::string, port_file, "",
          "Once listening, write the port number here (atomically: PATH.tmp, then rename).");
ABSL_FLAG(absl::Duration, latency, absl::ZeroDuration(),
          "Delay before answering every / request, e.g. 50ms.");
ABSL_FLAG(std::string, mode, "ok",
          "Failure mode: ok, 5xx, garbage, exhausted, unauthorized, hang, reset, huge, "
          "redirect, missing_bools, forbidden, rate_limited.");
ABSL_FLAG(int64_t, allowance, 0, "Verdicts answered before every request gets 402; 0 = unlimited.");
ABSL_FLAG(std::string, rules_file, "", "Per-IP verdicts and failures (see the file header).");
ABSL_FLAG(int, threads, 128,
          "Worker threads: the most connections served at once (keep-alive holds one).");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate; with --tls_key, serve HTTPS.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key; with --tls_cert, serve HTTPS.");

namespace verdictd::sim {
namespace {

int Fail(absl::string_view message) {
  std::cerr << "clickpatrol_sim: " << message << std::endl;
  return 1;
}

// Splits "host:port" or "[v6]:port"; a missing port or a bare IPv6 address is an error.
bool SplitHostPort(const std::string& listen, std::string* host, int* port) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return false;
  }
  *host = listen.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  } else if (host->find(':') != std::string::npos) {
    return false;  // a bare IPv6 address is ambiguous
  }
  return absl::SimpleAtoi(listen.substr(colon + 1), port) && *port >= 0 && *port <= 65535;
}

bool WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return false;
  }
  const bool written = std::fprintf(f, "%d\n", port) > 0;
  const bool closed = std::fclose(f) == 0;
  // Rename so a watcher never reads a half-written number.
  return written && closed && std::rename(tmp.c_str(), path.c_str()) == 0;
}

int Main() {
  SimulatorOptions options;
  if (!SplitHostPort(absl::GetFlag(FLAGS_listen), &options.host, &options.port)) {
    return Fail(
        absl::StrCat("--listen must be HOST:PORT, got '", absl::GetFlag(FLAGS_listen), "'"));
  }
  options.allow_non_loopback = absl::GetFlag(FLAGS_allow_non_loopback);
  options.token = absl::GetFlag(FLAGS_token);
  options.latency = absl::GetFlag(FLAGS_latency);
  if (options.latency < absl::ZeroDuration()) {
    return Fail("--latency must not be negative");
  }
  absl::StatusOr<FailureMode> mode = ParseFailureMode(absl::GetFlag(FLAGS_mode));
  if (!mode.ok()) {
    return Fail(absl::StrCat("--mode: ", mode.status().message()));
  }
  options.mode = *mode;
  options.allowance = absl::GetFlag(FLAGS_allowance);
  if (options.allowance < 0) {
    return Fail("--allowance must not be negative");
  }
  if (const std::string path = absl::GetFlag(FLAGS_rules_file); !path.empty()) {
    absl::StatusOr<Rules> rules = LoadRulesFile(path);
    if (!rules.ok()) {
      return Fail(rules.status().message());
    }
    options.rules = *std::move(rules);
  }
  options.threads = absl::GetFlag(FLAGS_threads);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);

  // Block the stop signals before any thread starts so every thread inherits the mask and
  // sigwait() below is the only place they are delivered.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  ClickPatrolSimulator sim(std::move(options));
  if (absl::Status status = sim.Start(); !status.ok()) {
    return Fail(status.message());
  }
  if (const std::string path = absl::GetFlag(FLAGS_port_file); !path.empty()) {
    if (!WritePortFile(path, sim.port())) {
      sim.Stop();
      return Fail(absl::StrCat("cannot write --port_file ", path));
    }
  }
  std::cout << "clickpatrol_sim listening on " << sim.base_url() << std::endl;

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  sim.Stop();
  return 0;
}

}  // namespace
}  // namespace verdictd::sim

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return verdictd::sim::Main();
}
