// Benchmark 1, the hit path: CheckIp on a cached IP under closed-loop load from h2load
// (nghttp2-client, gRPC framing with -d), verdictd against a trivial callback-API server that
// answers a fixed response, alternated (A B A B ...) with the same load; with --backend listing
// both stores (the default), a SQLite-backed and a PostgreSQL-backed verdictd take turns after
// the trivial server (A B C A B C ...). Prints each run's
// calls/s, latency percentiles (from h2load's per-request log), the server's CPU time per call
// (utime + stime from /proc/PID/stat over the run, divided by the calls the server itself
// counted) and h2load's own CPU use; then the medians and the ratios verdictd/trivial.
//
// h2load counts HTTP 200 even when grpc-status is not 0, so every run is checked against the
// server's own counters (verdictd: /metrics; trivial_server: GetUsage): the server must have
// answered at least as many successful CheckIp calls as h2load counted, and for verdictd every
// answer must be a cache hit. The only non-OK calls allowed are at most -c x -m of them: the
// calls in flight when h2load stops and resets its streams. verdictd counts some of those as
// INVALID_ARGUMENT (seen only when h2load stops, never during a run or after an `h2load -n` run
// that waits for every answer; presumably its raw-method handler gets no request bytes for a
// reset stream). No client sees those answers. A run that fails the check ends the benchmark
// with exit 1, as does a missing h2load.
//
//   build-bench/bench/bench_hit            # -c16 -m32, 3 rounds x (2 s warm-up + 10 s) each
//   build-bench/bench/bench_hit --backend=sqlite   # trivial vs the SQLite-backed verdictd only
//   build-bench/bench/bench_hit --smoke    # a few seconds
//   build-bench/bench/bench_hit --client_check   # also: does more h2load raise trivial's rate?

#include <algorithm>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench_support.h"
#include "bench/h2load.h"

ABSL_FLAG(std::string, h2load_bin, "/usr/bin/h2load", "h2load (Debian package nghttp2-client)");
ABSL_FLAG(int, connections, 16, "h2load -c: connections");
ABSL_FLAG(int, streams, 32, "h2load -m: concurrent streams (calls in flight) per connection");
ABSL_FLAG(int, h2load_threads, 1, "h2load -t: client threads");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "h2load -D: measured time per run");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(2), "h2load --warm-up-time before each run");
ABSL_FLAG(int, rounds, 3, "Rounds of (trivial, verdictd) runs; medians are reported");
ABSL_FLAG(bool, client_check, false,
          "First run trivial_server with the given load, with twice the connections and streams, "
          "and with one more h2load thread, to show whether h2load limits the rate");
ABSL_FLAG(std::string, backend, "sqlite,postgres",
          "Stores of the verdictd servers measured against trivial_server, one verdictd each, "
          "comma-separated: sqlite, postgres (a database on a throwaway PostgreSQL)");
ABSL_FLAG(bool, smoke, false, "CI mode: -c4 -m8, 1 round of 1 s + 0.5 s warm-up");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

constexpr char kCaller[] = "bench";

// What a server says it answered, cumulatively.
struct Served {
  int64_t ok = 0;         // CheckIp calls answered with status OK
  int64_t not_ok = 0;     // CheckIp calls answered with any other status
  int64_t cache = 0;      // verdictd: answers from the cache (trivial: = ok)
  int64_t not_cache = 0;  // verdictd: answers from upstream or stale, and clicks
  std::map<std::string, int64_t> not_ok_by_series;
};

Served operator-(const Served& a, const Served& b) {
  Served d{a.ok - b.ok, a.not_ok - b.not_ok, a.cache - b.cache, a.not_cache - b.not_cache, {}};
  for (const auto& [series, n] : a.not_ok_by_series) {
    auto it = b.not_ok_by_series.find(series);
    const int64_t delta = n - (it == b.not_ok_by_series.end() ? 0 : it->second);
    if (delta != 0) d.not_ok_by_series[series] = delta;
  }
  return d;
}

// verdictd's /metrics.
Served ScrapeVerdictd(int metrics_port) {
  Served s;
  bool seen_ok = false;
  for (const auto& [series, value] : ScrapeMetrics(metrics_port)) {
    const auto n = static_cast<int64_t>(value);
    if (series == R"(verdictd_rpcs_total{method="CheckIp",code="OK"})") {
      s.ok += n;
      seen_ok = true;
    } else if (absl::StartsWith(series, R"(verdictd_rpcs_total{method="CheckIp",)")) {
      s.not_ok += n;
      s.not_ok_by_series[series] += n;
    } else if (series == R"(verdictd_answers_total{source="cache"})") {
      s.cache += n;
    } else if (absl::StartsWith(series, "verdictd_answers_total{") ||
               absl::StartsWith(series, "verdictd_clicks_total{")) {
      s.not_cache += n;
    }
  }
  if (!seen_ok) {
    Die("verdictd's /metrics has no verdictd_rpcs_total{method=\"CheckIp\",code=\"OK\"}");
  }
  return s;
}

// trivial_server's GetUsage (the CheckIp calls it answered).
Served AskTrivial(int port) {
  auto stub = NewStub(port);
  const std::unique_ptr<grpc::ClientContext> context = CallContext("", absl::Seconds(10));
  pb::GetUsageRequest request;
  pb::GetUsageResponse response;
  grpc::Status status = stub->GetUsage(context.get(), request, &response);
  if (!status.ok() || response.callers_size() != 1) {
    Die(absl::StrCat("trivial_server GetUsage: ", status.error_message()));
  }
  Served s;
  s.ok = response.callers(0).requests();
  s.cache = s.ok;
  return s;
}

struct RunFigures {
  double calls_per_s = 0;
  double p50_ms = 0, p99_ms = 0, p999_ms = 0;
  double server_cpu_us_per_call = 0;
  double server_cpu_share = 0;  // CPU seconds per wall second (1.0 = one core)
  double h2load_cpu_share = 0;
};

// One h2load run against `server`, checked against the server's own counters.
RunFigures MeasureOnce(const std::string& label, const Server& server, bool is_verdictd,
                       int metrics_port, H2loadOptions options) {
  options.url =
      absl::StrCat("http://127.0.0.1:", server.port, "/verdict.v1.VerdictService/CheckIp");
  auto served = [&] {
    return is_verdictd ? ScrapeVerdictd(metrics_port) : AskTrivial(server.port);
  };
  const Served before = served();
  const double cpu0 = ProcessCpuSeconds(server.pid());
  const int64_t t0 = NowNs();
  absl::StatusOr<H2loadResult> h2 = RunH2load(options);
  const int64_t t1 = NowNs();
  const double cpu1 = ProcessCpuSeconds(server.pid());
  if (!h2.ok()) Die(absl::StrCat("h2load against ", label), h2.status());
  const Served d = served() - before;

  RunFigures f;
  f.calls_per_s = h2->requests_per_second;
  f.p50_ms = h2->latency.Quantile(0.5) / 1e6;
  f.p99_ms = h2->latency.Quantile(0.99) / 1e6;
  f.p999_ms = h2->latency.Quantile(0.999) / 1e6;
  const double wall = static_cast<double>(t1 - t0) / 1e9;
  // The server's CPU over the whole h2load run (connections, warm-up and measured window) per
  // call it answered over the same span.
  f.server_cpu_us_per_call = d.ok > 0 ? (cpu1 - cpu0) * 1e6 / static_cast<double>(d.ok) : 0;
  f.server_cpu_share = (cpu1 - cpu0) / wall;
  f.h2load_cpu_share = h2->cpu_seconds / h2->wall_seconds;
  std::cout << absl::StrFormat(
                   "  %-8s %7.0f calls/s  p50 %6.3f  p99 %6.3f  p99.9 %6.3f ms  server CPU "
                   "%5.1f us/call (%3.0f%% of a core)  h2load CPU %3.0f%% (%d thread%s)  "
                   "answered %d OK (h2load counted %d)",
                   label, f.calls_per_s, f.p50_ms, f.p99_ms, f.p999_ms, f.server_cpu_us_per_call,
                   f.server_cpu_share * 100, f.h2load_cpu_share * 100, options.threads,
                   options.threads == 1 ? "" : "s", d.ok, h2->succeeded)
            << std::endl;

  // Every request h2load counted must be a real gRPC success the server counted, and nothing
  // the server did in this span may have been anything else.
  std::vector<std::string> problems;
  if (h2->succeeded <= 0) problems.push_back("h2load counted no successful request");
  if (h2->failed != 0 || h2->errored != 0 || h2->timeout != 0) {
    problems.push_back(absl::StrFormat("h2load: %d failed, %d errored, %d timeout", h2->failed,
                                       h2->errored, h2->timeout));
  }
  if (h2->status_2xx != h2->succeeded || h2->log_non_200 != 0) {
    problems.push_back(absl::StrFormat("h2load: %d 2xx of %d succeeded, %d log rows not 200",
                                       h2->status_2xx, h2->succeeded, h2->log_non_200));
  }
  if (h2->log_rows != h2->done) {
    problems.push_back(
        absl::StrFormat("h2load's log has %d rows for %d requests done", h2->log_rows, h2->done));
  }
  if (d.ok < h2->succeeded) {
    problems.push_back(
        absl::StrFormat("the server answered %d CheckIp calls OK but h2load counted %d successes",
                        d.ok, h2->succeeded));
  }
  const int64_t in_flight_at_stop = int64_t{options.connections} * options.streams;
  std::string not_ok_text;
  for (const auto& [series, n] : d.not_ok_by_series) {
    absl::StrAppend(&not_ok_text, " ", series, " +", n);
  }
  if (d.not_ok > in_flight_at_stop) {
    problems.push_back(absl::StrFormat(
        "the server answered %d CheckIp calls with an error, more than the %d that can be in "
        "flight when h2load stops:%s",
        d.not_ok, in_flight_at_stop, not_ok_text));
  } else if (d.not_ok > 0) {
    std::cout << absl::StrFormat(
                     "           (%d calls reset by h2load when it stopped, of at most %d in "
                     "flight:%s)",
                     d.not_ok, in_flight_at_stop, not_ok_text)
              << std::endl;
  }
  if (is_verdictd && (d.cache != d.ok || d.not_cache != 0)) {
    problems.push_back(absl::StrFormat(
        "verdictd answered %d from the cache of %d OK calls (%d upstream/stale answers or clicks)",
        d.cache, d.ok, d.not_cache));
  }
  if (!problems.empty()) {
    std::string message = absl::StrCat(label, ": the answers were not all gRPC successes:");
    for (const std::string& p : problems) absl::StrAppend(&message, "\n  ", p);
    Die(absl::StrCat(message, "\nh2load printed:\n", h2->output));
  }
  return f;
}

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  const std::string h2load_bin = absl::GetFlag(FLAGS_h2load_bin);
  if (absl::Status installed = CheckH2loadInstalled(h2load_bin); !installed.ok()) {
    Die("bench_hit", installed);
  }
  H2loadOptions load;
  load.binary = h2load_bin;
  load.connections = smoke ? 4 : absl::GetFlag(FLAGS_connections);
  load.streams = smoke ? 8 : absl::GetFlag(FLAGS_streams);
  load.threads = absl::GetFlag(FLAGS_h2load_threads);
  load.duration = smoke ? absl::Seconds(1) : absl::GetFlag(FLAGS_duration);
  load.warmup = smoke ? absl::Milliseconds(500) : absl::GetFlag(FLAGS_warmup);
  load.headers = {absl::StrCat("x-caller: ", kCaller)};
  const int rounds = smoke ? 1 : std::max(1, absl::GetFlag(FLAGS_rounds));

  // The servers measured: trivial_server first, then a verdictd per backend.
  struct Side {
    std::string label;   // in the per-run lines
    std::string prefix;  // of its RESULT metrics: "" for SQLite (the names predate PostgreSQL)
    const Server* server = nullptr;
    bool is_verdictd = false;
    int metrics_port = 0;
  };
  std::vector<Backend> backends;
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_backend), ',')) {
    absl::StatusOr<Backend> backend = ParseBackend(name);
    if (!backend.ok()) Die("--backend", backend.status());
    backends.push_back(*backend);
  }

  TempDir dir;
  absl::StatusOr<Server> sim = StartSimulator(dir, {});
  if (!sim.ok()) Die("simulator", sim.status());
  absl::StatusOr<Server> trivial = StartTrivialServer(dir);
  if (!trivial.ok()) Die("trivial_server", trivial.status());
  std::vector<Side> sides = {{"trivial", "trivial_", &*trivial, false, 0}};
  std::vector<Server> verdictds;
  verdictds.reserve(backends.size());
  for (size_t i = 0; i < backends.size(); ++i) {
    const Backend backend = backends[i];
    // A store of its own per verdictd, also when a backend is listed twice.
    const std::string name = absl::StrCat("verdictd-", BackendName(backend), "-", i);
    absl::StatusOr<BenchStore> store = BenchStore::Create(backend, dir, absl::StrCat("hit", i));
    if (!store.ok()) Die(name + " store", store.status());
    // --log_level=info (verdictd's default) because the metrics port is logged at that level;
    // a hit logs nothing.
    absl::StatusOr<Server> verdictd =
        StartVerdictd(dir, sim->port,
                      {store->DbFlag(), "--metrics_listen=127.0.0.1:0", "--log_level=info"}, name);
    if (!verdictd.ok()) Die(name, verdictd.status());
    verdictds.push_back(*std::move(verdictd));
  }
  for (size_t i = 0; i < backends.size(); ++i) {
    const bool sqlite = backends[i] == Backend::kSqlite;
    sides.push_back({sqlite ? "sqlite" : "postgres", sqlite ? "verdictd_" : "pg_verdictd_",
                     &verdictds[i], true, MetricsPortFromLog(verdictds[i])});
  }

  // The request h2load posts, and a check through a real gRPC client that every server answers
  // it with OK, verdictd (on the second ask) from its cache.
  pb::CheckIpRequest request;
  request.set_ip(PublicIp(11, 1));
  request.set_user_agent("Mozilla/5.0");
  for (const Side& side : sides) {
    auto stub = NewStub(side.server->port);
    for (int attempt = 0; attempt < 2; ++attempt) {
      const std::unique_ptr<grpc::ClientContext> context = CallContext(kCaller, absl::Seconds(10));
      pb::CheckIpResponse response;
      grpc::Status status = stub->CheckIp(context.get(), request, &response);
      if (!status.ok()) {
        Die(absl::StrCat("priming CheckIp ", request.ip(), " on ", side.label, ": ",
                         status.error_message()));
      }
      if (attempt == 1 &&
          (response.source() != pb::SOURCE_CACHE || response.verdict().ip() != request.ip())) {
        Die(absl::StrCat("second CheckIp of ", request.ip(), " on ", side.label,
                         " was not a cache hit"));
      }
    }
  }
  load.data_file = dir.File("check_ip.bin");
  {
    std::ofstream out(load.data_file, std::ios::binary | std::ios::trunc);
    out << GrpcFrame(request);
    if (!out) Die("cannot write " + load.data_file);
  }
  load.log_file = dir.File("h2load.tsv");

  std::cout << absl::StrFormat(
                   "bench_hit: CheckIp on a cached IP, h2load -c%d -m%d -t%d, %d round(s) of %s "
                   "+ %s warm-up per server (trivial, then verdictd on %s); latency from "
                   "h2load's per-request log (1 us resolution); CPU per call = server "
                   "utime+stime over the run / calls it answered; h2load and the servers share "
                   "%d cores",
                   load.connections, load.streams, load.threads, rounds,
                   absl::FormatDuration(load.duration), absl::FormatDuration(load.warmup),
                   absl::GetFlag(FLAGS_backend), static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)))
            << std::endl;

  if (absl::GetFlag(FLAGS_client_check) && !smoke) {
    std::cout << "client check (trivial_server only):" << std::endl;
    MeasureOnce("as set", *trivial, false, 0, load);
    H2loadOptions more = load;
    more.connections *= 2;
    more.streams *= 2;
    MeasureOnce("2c x 2m", *trivial, false, 0, more);
    H2loadOptions threads = load;
    threads.threads += 1;
    MeasureOnce("+thread", *trivial, false, 0, threads);
  }

  const size_t n = sides.size();
  std::vector<std::vector<double>> qps(n), p50(n), p99(n), cpu_per_call(n), server_share(n),
      h2_share(n);
  for (int round = 0; round < rounds; ++round) {
    std::cout << "round " << round + 1 << ":" << std::endl;
    for (size_t i = 0; i < n; ++i) {
      const Side& side = sides[i];
      const RunFigures f =
          MeasureOnce(side.label, *side.server, side.is_verdictd, side.metrics_port, load);
      qps[i].push_back(f.calls_per_s);
      p50[i].push_back(f.p50_ms);
      p99[i].push_back(f.p99_ms);
      cpu_per_call[i].push_back(f.server_cpu_us_per_call);
      server_share[i].push_back(f.server_cpu_share * 100);
      h2_share[i].push_back(f.h2load_cpu_share * 100);
    }
  }

  for (size_t i = 0; i < n; ++i) {
    std::cout << absl::StrFormat(
                     "median %-8s %7.0f calls/s  p50 %6.3f ms  p99 %6.3f ms  server CPU %5.1f "
                     "us/call (%3.0f%% of a core)  h2load CPU %3.0f%%",
                     sides[i].label, Median(qps[i]), Median(p50[i]), Median(p99[i]),
                     Median(cpu_per_call[i]), Median(server_share[i]), Median(h2_share[i]))
              << std::endl;
  }
  PrintResult("hit", "trivial_calls_per_s", absl::StrFormat("%.0f", Median(qps[0])));
  PrintResult("hit", "trivial_p99_ms", absl::StrFormat("%.3f", Median(p99[0])));
  PrintResult("hit", "trivial_cpu_us_per_call", absl::StrFormat("%.1f", Median(cpu_per_call[0])));
  for (size_t i = 1; i < n; ++i) {
    const Side& side = sides[i];
    // "verdictd_" -> "" and "pg_verdictd_" -> "pg_" for the ratios' names.
    const std::string ratio_prefix = side.prefix.substr(0, side.prefix.size() - 9);
    const double qps_ratio = Median(qps[i]) / Median(qps[0]);
    const double p99_ratio = Median(p99[i]) / Median(p99[0]);
    const double cpu_ratio = Median(cpu_per_call[i]) / Median(cpu_per_call[0]);
    std::cout << absl::StrFormat(
                     "ratio verdictd(%s)/trivial: throughput %.2f (target >= 0.85), p99 %.2fx "
                     "(target <= 2x), CPU per call %.2fx",
                     side.label, qps_ratio, p99_ratio, cpu_ratio)
              << std::endl;
    PrintResult("hit", side.prefix + "calls_per_s", absl::StrFormat("%.0f", Median(qps[i])));
    PrintResult("hit", side.prefix + "p99_ms", absl::StrFormat("%.3f", Median(p99[i])));
    PrintResult("hit", side.prefix + "cpu_us_per_call",
                absl::StrFormat("%.1f", Median(cpu_per_call[i])));
    PrintResult("hit", ratio_prefix + "throughput_ratio", absl::StrFormat("%.2f", qps_ratio),
                ">=0.85", PassFail(qps_ratio >= 0.85));
    PrintResult("hit", ratio_prefix + "p99_ratio", absl::StrFormat("%.2f", p99_ratio), "<=2",
                PassFail(p99_ratio <= 2.0));
    PrintResult("hit", ratio_prefix + "cpu_per_call_ratio", absl::StrFormat("%.2f", cpu_ratio));
  }
  trivial->Stop();
  for (Server& verdictd : verdictds) {
    verdictd.Stop();
  }
  sim->Stop();
  return 0;
}

}  // namespace
}  // namespace verdictd::bench

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  return verdictd::bench::Main();
}
