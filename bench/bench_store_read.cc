// Benchmark 6, the hot-cache miss read: CheckIp of an IP whose verdict is in the store but not
// in verdictd's in-memory hot cache, so the answer is one store read (SQLite: a read-only
// connection of the process; PostgreSQL: a query over the unix socket), SQLite against
// PostgreSQL in the same run.
//
// One verdictd per backend with --hot_cache_entries=0, each on a store of its own, stores the
// verdicts of --ips cold IPs through itself (CheckBatch of 1000, one click each: the verdicts are
// in the store, and nothing is in memory), then answers --calls sequential CheckIp of random
// stored IPs on one channel, every one a store read. The baseline is a round trip without a
// read: the same calls as hits on a SQLite-backed verdictd with the default hot cache, filled
// the same way. The servers' measurements alternate in --rounds parts, so drifting machine load
// hits all alike. Client-observed latency p50/p99 of each, and the server's own mean store read
// (verdictd_store_read_latency_seconds). Each part is checked against verdictd's /metrics: one
// store read per call (none for the hits), and every answer must be from the cache (for a
// verdictd without a hot cache: the store) without a click.
//
//   build-bench/bench/bench_store_read            # 10,000 stored IPs, 20,000 calls per server
//   build-bench/bench/bench_store_read --smoke    # 500 stored IPs, 1,000 calls

#include <algorithm>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_support.h"

ABSL_FLAG(int, ips, 10'000, "IPs whose verdicts are stored before the measurement");
ABSL_FLAG(int, calls, 20'000, "Sequential CheckIp calls per server measured");
ABSL_FLAG(int, rounds, 4, "Parts the miss measurements of the backends alternate in");
ABSL_FLAG(std::string, backend, "sqlite,postgres", "Stores measured, comma-separated");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the IPs' order");
ABSL_FLAG(bool, smoke, false, "CI mode: 500 IPs, 1,000 calls, 2 rounds");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

constexpr char kStoreReads[] = "verdictd_store_read_latency_seconds_count";
constexpr char kStoreReadSeconds[] = "verdictd_store_read_latency_seconds_sum";

std::string Ip(int i) { return PublicIp(11, static_cast<uint32_t>(i + 1)); }

// Stores the verdicts of IPs 0..ips-1 through `server` (batches of 1000); dies on an error.
void Prefill(const Server& server, int ips) {
  auto stub = NewStub(server.port);
  for (int first = 0; first < ips; first += 1000) {
    pb::CheckBatchRequest request;
    for (int i = first; i < std::min(ips, first + 1000); ++i) {
      request.add_items()->set_ip(Ip(i));
    }
    const std::unique_ptr<grpc::ClientContext> context = CallContext("fill", absl::Seconds(120));
    pb::CheckBatchResponse response;
    grpc::Status status = stub->CheckBatch(context.get(), request, &response);
    if (!status.ok()) Die(absl::StrCat("prefill CheckBatch: ", status.error_message()));
    for (const pb::CheckBatchResult& r : response.results()) {
      if (r.has_error()) Die(absl::StrCat("prefill item: ", r.error().message()));
    }
  }
}

// `order.size()` sequential CheckIp calls of Ip(order[k]); each must succeed from the cache
// (which, with the hot cache off, means from the store) without a click.
Histogram Measure(pb::VerdictService::Stub& stub, const std::vector<int>& order) {
  Histogram h;
  for (int i : order) {
    pb::CheckIpRequest request;
    request.set_ip(Ip(i));
    pb::CheckIpResponse response;
    const std::unique_ptr<grpc::ClientContext> context = CallContext("bench", absl::Seconds(30));
    const int64_t start = NowNs();
    grpc::Status status = stub.CheckIp(context.get(), request, &response);
    h.Record(static_cast<uint64_t>(NowNs() - start));
    if (!status.ok()) Die(absl::StrCat("CheckIp ", request.ip(), ": ", status.error_message()));
    if (response.source() != pb::SOURCE_CACHE || response.click_spent()) {
      Die(absl::StrCat("CheckIp ", request.ip(), " was not answered from the store"));
    }
  }
  return h;
}

// A verdictd measured, with the calls' latency and its own count of store reads.
struct Subject {
  std::string name;
  bool hot_cache = false;
  Server server;
  int metrics_port = 0;
  std::unique_ptr<pb::VerdictService::Stub> stub;
  Histogram latency;
  double store_reads = 0;         // counted by the server over the measurement
  double store_read_seconds = 0;  // their sum
};

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  const int ips = smoke ? 500 : absl::GetFlag(FLAGS_ips);
  const int calls = smoke ? 1000 : absl::GetFlag(FLAGS_calls);
  const int rounds = smoke ? 2 : std::max(1, absl::GetFlag(FLAGS_rounds));
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::uniform_int_distribution<int> pick(0, ips - 1);
  std::vector<int> order(calls);
  for (int& i : order) {
    i = pick(rng);
  }

  TempDir dir;
  absl::StatusOr<Server> sim = StartSimulator(dir, {});
  if (!sim.ok()) Die("simulator", sim.status());
  // The baseline first: hits on a SQLite-backed verdictd with the default hot cache; then one
  // verdictd per backend without a hot cache.
  std::vector<std::pair<Backend, bool>> setups = {{Backend::kSqlite, true}};
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_backend), ',')) {
    absl::StatusOr<Backend> backend = ParseBackend(name);
    if (!backend.ok()) Die("--backend", backend.status());
    setups.push_back({*backend, false});
  }
  std::cout << absl::StrFormat(
                   "bench_store_read: CheckIp of a stored IP, %d stored, %d sequential calls per "
                   "server on one channel, alternated over %d rounds: hits (SQLite, hot cache "
                   "on) vs hot-cache misses (--hot_cache_entries=0: one store read per call)",
                   ips, calls, rounds)
            << std::endl;
  std::vector<Subject> subjects(setups.size());
  for (size_t k = 0; k < setups.size(); ++k) {
    const auto [backend, hot_cache] = setups[k];
    Subject& s = subjects[k];
    s.name = absl::StrCat(BackendName(backend), hot_cache ? "_hit" : "_miss");
    s.hot_cache = hot_cache;
    absl::StatusOr<BenchStore> store = BenchStore::Create(backend, dir, s.name);
    if (!store.ok()) Die(s.name + " store", store.status());
    std::vector<std::string> flags = {store->DbFlag(), "--metrics_listen=127.0.0.1:0",
                                      "--log_level=info"};
    if (!hot_cache) flags.push_back("--hot_cache_entries=0");
    absl::StatusOr<Server> server = StartVerdictd(dir, sim->port, flags, s.name);
    if (!server.ok()) Die(s.name, server.status());
    s.server = *std::move(server);
    s.metrics_port = MetricsPortFromLog(s.server);
    // The verdicts reach the store (and, with a hot cache, memory) through the server itself.
    const int64_t fill_start = NowNs();
    Prefill(s.server, ips);
    const double fill_s = static_cast<double>(NowNs() - fill_start) / 1e9;
    s.stub = NewStub(s.server.port);
    Measure(*s.stub, std::vector<int>(order.begin(), order.begin() + std::min(calls, 200)));
    std::cout << absl::StrFormat("  %-13s stored %d verdicts in %.2f s", s.name, ips, fill_s)
              << std::endl;
  }

  for (int round = 0; round < rounds; ++round) {
    const std::vector<int> part(
        order.begin() + static_cast<ptrdiff_t>(calls) * round / rounds,
        order.begin() + static_cast<ptrdiff_t>(calls) * (round + 1) / rounds);
    for (Subject& s : subjects) {
      const std::map<std::string, double> before = ScrapeMetrics(s.metrics_port);
      s.latency.Merge(Measure(*s.stub, part));
      std::map<std::string, double> after = ScrapeMetrics(s.metrics_port);
      const double reads = after[kStoreReads] - before.at(kStoreReads);
      const double expected = s.hot_cache ? 0 : static_cast<double>(part.size());
      if (reads != expected) {
        Die(absl::StrFormat("%s: %d calls made %.0f store reads (expected %.0f)", s.name,
                            part.size(), reads, expected));
      }
      s.store_reads += reads;
      s.store_read_seconds += after[kStoreReadSeconds] - before.at(kStoreReadSeconds);
    }
  }

  auto ms = [](const Histogram& h, double q) { return h.Quantile(q) / 1e6; };
  const Subject* sqlite_miss = nullptr;
  const Subject* pg_miss = nullptr;
  for (const Subject& s : subjects) {
    std::cout << absl::StrFormat(
                     "  %-13s p50 %6.3f ms  p99 %6.3f ms  p99.9 %6.3f ms  max %6.3f ms  "
                     "(server: %.0f store reads%s)",
                     s.name, ms(s.latency, 0.5), ms(s.latency, 0.99), ms(s.latency, 0.999),
                     static_cast<double>(s.latency.max()) / 1e6, s.store_reads,
                     s.store_reads > 0 ? absl::StrFormat(", mean %.1f us",
                                                         s.store_read_seconds / s.store_reads * 1e6)
                                       : "")
              << std::endl;
    PrintResult("store_read", s.name + "_p50_ms", absl::StrFormat("%.3f", ms(s.latency, 0.5)));
    PrintResult("store_read", s.name + "_p99_ms", absl::StrFormat("%.3f", ms(s.latency, 0.99)));
    if (s.store_reads > 0) {
      PrintResult("store_read", s.name + "_server_read_mean_us",
                  absl::StrFormat("%.1f", s.store_read_seconds / s.store_reads * 1e6));
    }
    if (s.name == "sqlite_miss") sqlite_miss = &s;
    if (s.name == "postgres_miss") pg_miss = &s;
  }
  if (sqlite_miss != nullptr && pg_miss != nullptr) {
    const double p50 = ms(pg_miss->latency, 0.5) / ms(sqlite_miss->latency, 0.5);
    const double p99 = ms(pg_miss->latency, 0.99) / ms(sqlite_miss->latency, 0.99);
    std::cout << absl::StrFormat("ratio postgres/sqlite of the miss: p50 %.2fx, p99 %.2fx", p50,
                                 p99)
              << std::endl;
    PrintResult("store_read", "miss_p50_ratio_pg_sqlite", absl::StrFormat("%.2f", p50));
    PrintResult("store_read", "miss_p99_ratio_pg_sqlite", absl::StrFormat("%.2f", p99));
  }
  for (Subject& s : subjects) {
    s.server.Stop();
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
