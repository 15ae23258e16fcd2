// Benchmark 4, clicks: a Zipf(s) trace of --checks checks over --ips IPs from --callers
// concurrent callers (each on its own channel, taking the next --batch items of the trace per
// CheckBatch, or one item per CheckIp with --mode=ip). Every distinct IP must cost exactly one
// click: distinct IPs in the trace == simulator requests == clicks in the ledger.
//
//   build-bench/bench/bench_clicks            # 1,000,000 checks over 100,000 IPs, 64 callers
//   build-bench/bench/bench_clicks --smoke    # 20,000 checks over 2,000 IPs

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
#include "sqlite3.h"

ABSL_FLAG(int, checks, 1'000'000, "Checks in the trace");
ABSL_FLAG(int, ips, 100'000, "IPs the Zipf distribution ranges over");
ABSL_FLAG(double, zipf_s, 1.0, "Zipf exponent");
ABSL_FLAG(int, callers, 64, "Concurrent callers, each with its own channel and x-caller");
ABSL_FLAG(int, batch, 100, "Items per CheckBatch (--mode=batch)");
ABSL_FLAG(std::string, mode, "batch", "batch (CheckBatch of --batch items) or ip (CheckIp)");
ABSL_FLAG(absl::Duration, latency, absl::Milliseconds(2),
          "Simulator latency: widens the window in which callers race on one IP");
ABSL_FLAG(uint64_t, seed, 1, "Trace seed");
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

absl::StatusOr<int64_t> LedgerClicks(const std::string& db_path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::string message = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("open ", db_path, ": ", message));
  }
  sqlite3_stmt* stmt = nullptr;
  int64_t count = -1;
  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM clicks WHERE outcome != 3", -1, &stmt,
                         nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    count = sqlite3_column_int64(stmt, 0);
  }
  std::string message = sqlite3_errmsg(db);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  if (count < 0) {
    return absl::InternalError(absl::StrCat("count clicks: ", message));
  }
  return count;
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

  TempDir dir;
  absl::StatusOr<Server> sim = StartSimulator(
      dir, {absl::StrCat("--latency=", absl::FormatDuration(absl::GetFlag(FLAGS_latency)))});
  if (!sim.ok()) Die("simulator", sim.status());
  const std::string db_path = dir.File("clicks.db");
  absl::StatusOr<Server> verdictd = StartVerdictd(dir, sim->port, {"--db=" + db_path});
  if (!verdictd.ok()) Die("verdictd", verdictd.status());

  std::cout << absl::StrFormat(
                   "bench_clicks: Zipf(s=%.2f) trace of %d checks over %d IPs (%d distinct), "
                   "%d callers, mode %s%s, simulator latency %s",
                   absl::GetFlag(FLAGS_zipf_s), checks, n_ips, distinct, callers, mode,
                   mode == "batch" ? absl::StrCat(" of ", batch) : "",
                   absl::FormatDuration(absl::GetFlag(FLAGS_latency)))
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
      auto stub = NewStub(verdictd->port);
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
  verdictd->Stop();  // the ledger is complete and checkpointed
  absl::StatusOr<int64_t> ledger = LedgerClicks(db_path);
  if (!ledger.ok()) Die("ledger", ledger.status());
  sim->Stop();

  const bool equal = distinct == sim_requests && sim_requests == *ledger &&
                     clicks_spent.load() == *ledger && errors.load() == 0;
  std::cout << absl::StrFormat(
                   "  %.1f s (%.0f checks/s), errors %d%s, answers from cache %d\n"
                   "  distinct IPs in trace %d, simulator requests %d, ledger clicks "
                   "(outcome != 3) %d, click_spent answers %d: %s\n",
                   seconds, checks / seconds, errors.load(),
                   first_error.empty() ? "" : " (first: " + first_error + ")", from_cache.load(),
                   distinct, sim_requests, *ledger, clicks_spent.load(),
                   equal ? "all equal" : "NOT EQUAL")
            << std::flush;
  PrintResult("clicks", "distinct_ips", absl::StrCat(distinct));
  PrintResult("clicks", "sim_requests", absl::StrCat(sim_requests), "=distinct",
              PassFail(sim_requests == distinct));
  PrintResult("clicks", "ledger_clicks", absl::StrCat(*ledger), "=distinct",
              PassFail(*ledger == distinct));
  PrintResult("clicks", "checks_per_s", absl::StrFormat("%.0f", checks / seconds));
  PrintResult("clicks", "all_equal", equal ? "yes" : "no", "yes", PassFail(equal));
  return 0;
}

}  // namespace
}  // namespace verdictd::bench

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  return verdictd::bench::Main();
}
