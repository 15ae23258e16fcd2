// Benchmark 4, clicks: a Zipf(s) trace of --checks checks over --ips IPs from --callers
// concurrent callers (each on its own channel, taking the next --batch items of the trace per
// CheckBatch, or one item per CheckIp with --mode=ip). Every distinct IP must cost exactly one
// click: distinct IPs in the trace == simulator requests == clicks in the ledger.
//
//   build-bench/bench/bench_clicks            # 1,000,000 checks over 100,000 IPs, 64 callers
//   build-bench/bench/bench_clicks --smoke    # 20,000 checks over 2,000 IPs
//   build-bench/bench/bench_clicks --replicas=3   # 3 verdictd on one PostgreSQL database

#include <algorithm>
#include <atomic>
#include <cmath>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "bench/bench_support.h"

ABSL_FLAG(int, checks, 1'000'000, "Checks in the trace");
ABSL_FLAG(int, ips, 100'000, "IPs the Zipf distribution ranges over");
ABSL_FLAG(double, zipf_s, 1.0, "Zipf exponent");
ABSL_FLAG(int, callers, 64, "Concurrent callers, each with its own channel and x-caller");
ABSL_FLAG(int, batch, 100, "Items per CheckBatch (--mode=batch)");
ABSL_FLAG(std::string, mode, "batch", "batch (CheckBatch of --batch items) or ip (CheckIp)");
ABSL_FLAG(absl::Duration, latency, absl::Milliseconds(2),
          "Simulator latency: widens the window in which callers race on one IP");
ABSL_FLAG(uint64_t, seed, 1, "Trace seed");
ABSL_FLAG(int, replicas, 1,
          "verdictd processes on one store; caller c asks replica c mod N. More than 1 needs "
          "--backend=postgres");
ABSL_FLAG(std::string, backend, "",
          "Store: sqlite or postgres (a database on a throwaway PostgreSQL); default sqlite for "
          "one replica, postgres for several");
ABSL_FLAG(bool, smoke, false, "CI mode: 20,000 checks over 2,000 IPs");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

// Ranks 0..n-1 drawn with probability proportional to 1/(rank+1)^s.
std::vector<uint32_t> ZipfTrace(int checks, int n, double s, uint64_t seed) {
  std::vector<double> cdf(n);
  double total = 0;
  for (int k = 0; k < n; ++k) {
    total += 1.0 / std::pow(k + 1, s);
    cdf[k] = total;
  }
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0, total);
  std::vector<uint32_t> trace(checks);
  for (int i = 0; i < checks; ++i) {
    const double u = uniform(rng);
    trace[i] = static_cast<uint32_t>(
        std::min<ptrdiff_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin(), n - 1));
  }
  return trace;
}

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  const int checks = smoke ? 20'000 : absl::GetFlag(FLAGS_checks);
  const int n_ips = smoke ? 2'000 : absl::GetFlag(FLAGS_ips);
  const int callers = absl::GetFlag(FLAGS_callers);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const int batch = mode == "ip" ? 1 : absl::GetFlag(FLAGS_batch);
  if (mode != "ip" && mode != "batch") Die("--mode must be batch or ip");

  std::vector<uint32_t> trace =
      ZipfTrace(checks, n_ips, absl::GetFlag(FLAGS_zipf_s), absl::GetFlag(FLAGS_seed));
  std::vector<bool> seen(n_ips, false);
  int64_t distinct = 0;
  for (uint32_t rank : trace) {
    if (!seen[rank]) {
      seen[rank] = true;
      ++distinct;
    }
  }
  // Rank r is IP 11.0.0.0 + r + 1, so rank 0 (the hottest) is 11.0.0.1.
  std::vector<std::string> ip_text(n_ips);
  for (int r = 0; r < n_ips; ++r) {
    ip_text[r] = PublicIp(11, static_cast<uint32_t>(r + 1));
  }

  const int n_replicas = std::max(1, absl::GetFlag(FLAGS_replicas));
  const std::string backend_flag = absl::GetFlag(FLAGS_backend);
  absl::StatusOr<Backend> backend =
      ParseBackend(!backend_flag.empty() ? backend_flag : (n_replicas > 1 ? "postgres" : "sqlite"));
  if (!backend.ok()) Die("--backend", backend.status());
  if (n_replicas > 1 && *backend != Backend::kPostgres) {
    Die("--replicas above 1 needs --backend=postgres");
  }

  TempDir dir;
  absl::StatusOr<Server> sim = StartSimulator(
      dir, {absl::StrCat("--latency=", absl::FormatDuration(absl::GetFlag(FLAGS_latency)))});
  if (!sim.ok()) Die("simulator", sim.status());
  absl::StatusOr<BenchStore> store = BenchStore::Create(*backend, dir, "clicks");
  if (!store.ok()) Die("store", store.status());
  absl::StatusOr<std::vector<Server>> replicas =
      StartReplicas(dir, sim->port, *store, n_replicas, {}, "verdictd");
  if (!replicas.ok()) Die("verdictd", replicas.status());

  std::cout << absl::StrFormat(
                   "bench_clicks: Zipf(s=%.2f) trace of %d checks over %d IPs (%d distinct), "
                   "%d callers, mode %s%s, simulator latency %s, %d verdictd on %s",
                   absl::GetFlag(FLAGS_zipf_s), checks, n_ips, distinct, callers, mode,
                   mode == "batch" ? absl::StrCat(" of ", batch) : "",
                   absl::FormatDuration(absl::GetFlag(FLAGS_latency)), n_replicas,
                   BackendName(*backend))
            << std::endl;

  std::atomic<int64_t> next{0};
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> clicks_spent{0};
  std::atomic<int64_t> from_cache{0};
  absl::Mutex mu;
  std::string first_error;
  auto note_error = [&](const std::string& message) {
    errors.fetch_add(1);
    absl::MutexLock lock(&mu);
    if (first_error.empty()) {
      first_error = message;
    }
  };
  const int64_t start = NowNs();
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      auto stub = NewStub((*replicas)[c % n_replicas].port);
      const std::string caller = absl::StrCat("caller-", c);
      for (int64_t i = next.fetch_add(batch); i < checks; i = next.fetch_add(batch)) {
        const int64_t end = std::min<int64_t>(i + batch, checks);
        const std::unique_ptr<grpc::ClientContext> context = CallContext(caller, absl::Seconds(60));
        if (mode == "ip") {
          pb::CheckIpRequest request;
          request.set_ip(ip_text[trace[i]]);
          pb::CheckIpResponse response;
          grpc::Status status = stub->CheckIp(context.get(), request, &response);
          if (!status.ok()) {
            note_error(status.error_message());
            continue;
          }
          clicks_spent.fetch_add(response.click_spent() ? 1 : 0);
          from_cache.fetch_add(response.source() == pb::SOURCE_CACHE ? 1 : 0);
          continue;
        }
        pb::CheckBatchRequest request;
        for (int64_t j = i; j < end; ++j) {
          request.add_items()->set_ip(ip_text[trace[j]]);
        }
        pb::CheckBatchResponse response;
        grpc::Status status = stub->CheckBatch(context.get(), request, &response);
        if (!status.ok()) {
          note_error(status.error_message());
          continue;
        }
        int64_t spent = 0;
        int64_t cached = 0;
        for (const pb::CheckBatchResult& r : response.results()) {
          if (r.has_error()) {
            note_error(r.error().message());
          } else {
            spent += r.result().click_spent() ? 1 : 0;
            cached += r.result().source() == pb::SOURCE_CACHE ? 1 : 0;
          }
        }
        clicks_spent.fetch_add(spent);
        from_cache.fetch_add(cached);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  const double seconds = static_cast<double>(NowNs() - start) / 1e9;

  absl::StatusOr<nlohmann::json> stats = SimStats(sim->port);
  if (!stats.ok()) Die("simulator stats", stats.status());
  const int64_t sim_requests = stats->at("requests").get<int64_t>();
  for (Server& replica : *replicas) {
    replica.Stop();  // the ledger is complete (and, for SQLite, checkpointed)
  }
  absl::StatusOr<int64_t> ledger = store->LedgerClicks();
  if (!ledger.ok()) Die("ledger", ledger.status());
  sim->Stop();

  // Deadlocks between replicas' write transactions (retried by the store, but worth seeing)
  // and any other error the logs report.
  const int64_t deadlock_lines = CountLinesWith(store->ServerLog(), "deadlock detected");
  int64_t replica_deadlock_lines = 0;
  std::string first_deadlock_line;
  for (const Server& replica : *replicas) {
    replica_deadlock_lines += CountLinesWith(testing::ReadFileOrEmpty(replica.log_path), "deadlock",
                                             &first_deadlock_line);
  }

  const bool equal = distinct == sim_requests && sim_requests == *ledger &&
                     clicks_spent.load() == *ledger && errors.load() == 0;
  const double ratio = static_cast<double>(sim_requests) / static_cast<double>(distinct);
  std::cout << absl::StrFormat(
                   "  %.1f s (%.0f checks/s), errors %d%s, answers from cache %d\n"
                   "  distinct IPs in trace %d, simulator requests %d, ledger clicks "
                   "(outcome != 3) %d, click_spent answers %d: %s\n"
                   "  simulator requests / distinct IPs = %.5f\n",
                   seconds, checks / seconds, errors.load(),
                   first_error.empty() ? "" : " (first: " + first_error + ")", from_cache.load(),
                   distinct, sim_requests, *ledger, clicks_spent.load(),
                   equal ? "all equal" : "NOT EQUAL", ratio)
            << std::flush;
  if (*backend == Backend::kPostgres) {
    std::cout << absl::StrFormat(
                     "  PostgreSQL log lines \"deadlock detected\": %d; verdictd log lines "
                     "mentioning a deadlock: %d%s\n",
                     deadlock_lines, replica_deadlock_lines,
                     first_deadlock_line.empty() ? "" : " (first: " + first_deadlock_line + ")")
              << std::flush;
  }
  // "clicks" as before for one SQLite-backed verdictd; "clicks_pg" or "clicks_3r" otherwise.
  const std::string bench = n_replicas > 1
                                ? absl::StrCat("clicks_", n_replicas, "r")
                                : (*backend == Backend::kPostgres ? "clicks_pg" : "clicks");
  PrintResult(bench, "distinct_ips", absl::StrCat(distinct));
  PrintResult(bench, "sim_requests", absl::StrCat(sim_requests), "=distinct",
              PassFail(sim_requests == distinct));
  PrintResult(bench, "ledger_clicks", absl::StrCat(*ledger), "=distinct",
              PassFail(*ledger == distinct));
  PrintResult(bench, "click_spent", absl::StrCat(clicks_spent.load()), "=distinct",
              PassFail(clicks_spent.load() == distinct));
  PrintResult(bench, "sim_per_distinct", absl::StrFormat("%.5f", ratio), "=1",
              PassFail(sim_requests == distinct));
  PrintResult(bench, "errors", absl::StrCat(errors.load()), "=0", PassFail(errors.load() == 0));
  if (*backend == Backend::kPostgres) {
    PrintResult(bench, "pg_deadlocks", absl::StrCat(deadlock_lines));
  }
  PrintResult(bench, "checks_per_s", absl::StrFormat("%.0f", checks / seconds));
  PrintResult(bench, "all_equal", equal ? "yes" : "no", "yes", PassFail(equal));
  return 0;
}

}  // namespace
}  // namespace verdictd::bench

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  return verdictd::bench::Main();
}
