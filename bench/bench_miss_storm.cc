// Benchmark 3, the miss storm: N distinct cold public IPs against a simulator with 100 ms of
// latency and verdictd --upstream_concurrency=32. Wall time for all N, sent (a) as concurrent
// CheckIp calls with --in_flight outstanding and (b) as one CheckBatch of N other cold IPs; the
// simulator's max_in_flight for each, and the ideal bound N / concurrency x latency.
//
// With --replicas=R above 1, the same two storms run a second time, in the same run, against R
// verdictd processes on one PostgreSQL database (each with --upstream_concurrency): the CheckIp
// storm's in-flight calls spread over the replicas (call i on replica i mod R), the batch split
// into R batches sent at once, one per replica. Every IP must still cost exactly one request.
//
//   build-bench/bench/bench_miss_storm           # 1000 IPs
//   build-bench/bench/bench_miss_storm --smoke   # 200 IPs
//   build-bench/bench/bench_miss_storm --replicas=3   # also 3 replicas on one PostgreSQL

#include <algorithm>
#include <atomic>
#include <cmath>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "bench/bench_support.h"

ABSL_FLAG(int, ips, 1000, "Distinct cold IPs per storm");
ABSL_FLAG(int, in_flight, 64, "Concurrent CheckIp calls in the CheckIp storm");
ABSL_FLAG(int, channels, 4, "Client channels for the CheckIp storm");
ABSL_FLAG(absl::Duration, latency, absl::Milliseconds(100), "Simulator latency per request");
ABSL_FLAG(int, upstream_concurrency, 32, "verdictd --upstream_concurrency");
ABSL_FLAG(absl::Duration, target, absl::Seconds(4), "Target wall time per storm");
ABSL_FLAG(int, replicas, 1,
          "Above 1: also run both storms against this many verdictd on one PostgreSQL database");
ABSL_FLAG(bool, smoke, false, "CI mode: 200 IPs");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

struct StormResult {
  double seconds = 0;
  int64_t errors = 0;
  std::string first_error;
  int64_t sim_requests = 0;
  int64_t max_in_flight = 0;
};

void ReadSim(int sim_port, StormResult* r) {
  absl::StatusOr<nlohmann::json> stats = SimStats(sim_port);
  if (!stats.ok()) Die("simulator stats", stats.status());
  r->sim_requests = stats->at("requests").get<int64_t>();
  r->max_in_flight = stats->at("max_in_flight").get<int64_t>();
}

// `channels` channels per server in `ports`; thread t calls server t mod ports.size().
StormResult CheckIpStorm(const std::vector<int>& ports, int sim_port, int ips, int in_flight,
                         int channels) {
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int i = 0; i < channels * static_cast<int>(ports.size()); ++i) {
    stubs.push_back(NewStub(ports[i % ports.size()]));
  }
  // Connect first, so the storm's clock measures calls, not connection set-up.
  for (auto& stub : stubs) {
    const std::unique_ptr<grpc::ClientContext> context = CallContext("", absl::Seconds(10));
    pb::CheckIpResponse response;
    pb::CheckIpRequest bad;  // INVALID_ARGUMENT without touching the store or the simulator
    (void)stub->CheckIp(context.get(), bad, &response);
  }
  StormResult result;
  std::atomic<int> next{0};
  std::atomic<int64_t> errors{0};
  absl::Mutex mu;
  const int64_t start = NowNs();
  std::vector<std::thread> threads;
  for (int t = 0; t < in_flight; ++t) {
    threads.emplace_back([&, t] {
      pb::VerdictService::Stub& stub = *stubs[t % stubs.size()];
      for (int i = next.fetch_add(1); i < ips; i = next.fetch_add(1)) {
        const std::unique_ptr<grpc::ClientContext> context =
            CallContext("storm", absl::Seconds(60));
        pb::CheckIpRequest request;
        request.set_ip(PublicIp(11, static_cast<uint32_t>(i + 1)));
        pb::CheckIpResponse response;
        grpc::Status status = stub.CheckIp(context.get(), request, &response);
        if (!status.ok()) {
          errors.fetch_add(1);
          absl::MutexLock lock(&mu);
          if (result.first_error.empty()) {
            result.first_error = status.error_message();
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  result.seconds = static_cast<double>(NowNs() - start) / 1e9;
  result.errors = errors.load();
  ReadSim(sim_port, &result);
  return result;
}

// One CheckBatch per server in `ports`, sent at once, the `ips` IPs split evenly among them.
StormResult BatchStorm(const std::vector<int>& ports, int sim_port, int ips) {
  const int n = static_cast<int>(ports.size());
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  std::vector<pb::CheckBatchRequest> requests(n);
  for (int r = 0; r < n; ++r) {
    stubs.push_back(NewStub(ports[r]));
    for (int i = ips * r / n; i < ips * (r + 1) / n; ++i) {
      requests[r].add_items()->set_ip(PublicIp(12, static_cast<uint32_t>(i + 1)));
    }
    // Connect first, with an empty batch.
    const std::unique_ptr<grpc::ClientContext> context = CallContext("", absl::Seconds(10));
    pb::CheckBatchRequest empty;
    pb::CheckBatchResponse response;
    (void)stubs[r]->CheckBatch(context.get(), empty, &response);
  }
  StormResult result;
  absl::Mutex mu;
  const int64_t start = NowNs();
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      const std::unique_ptr<grpc::ClientContext> context = CallContext("storm", absl::Seconds(120));
      pb::CheckBatchResponse response;
      grpc::Status status = stubs[r]->CheckBatch(context.get(), requests[r], &response);
      absl::MutexLock lock(&mu);
      if (!status.ok()) {
        result.errors += requests[r].items_size();
        if (result.first_error.empty()) result.first_error = status.error_message();
        return;
      }
      for (const pb::CheckBatchResult& item : response.results()) {
        if (item.has_error()) {
          if (result.errors++ == 0) result.first_error = item.error().message();
        }
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  result.seconds = static_cast<double>(NowNs() - start) / 1e9;
  ReadSim(sim_port, &result);
  return result;
}

struct Mode {
  std::string name;
  StormResult result;
};

// Both storms against `servers` (one verdictd, or replicas on one store), each after a
// simulator reset; prints and reports each as RESULT lines of `bench`.
std::vector<Mode> RunStorms(const std::string& bench, const std::vector<Server>& servers,
                            int sim_port, int ips, int in_flight, int concurrency, double latency_s,
                            double target_s) {
  std::vector<int> ports;
  for (const Server& server : servers) {
    ports.push_back(server.port);
  }
  const int n = static_cast<int>(servers.size());
  // The ideal bounds: the upstream slots of all replicas (or the client's in-flight calls, if
  // fewer) busy all the time.
  const double checkip_ideal_s =
      ips / static_cast<double>(std::min(in_flight, n * concurrency)) * latency_s;
  const double batch_ideal_s = std::ceil(ips / static_cast<double>(n)) / concurrency * latency_s;
  std::vector<Mode> modes;
  if (absl::Status s = SimReset(sim_port); !s.ok()) Die("simulator reset", s);
  modes.push_back({absl::StrCat("checkip_x", in_flight),
                   CheckIpStorm(ports, sim_port, ips, in_flight, absl::GetFlag(FLAGS_channels))});
  if (absl::Status s = SimReset(sim_port); !s.ok()) Die("simulator reset", s);
  modes.push_back({n == 1 ? absl::StrCat("batch", ips) : absl::StrCat("batch", n, "x", ips / n),
                   BatchStorm(ports, sim_port, ips)});
  for (size_t m = 0; m < modes.size(); ++m) {
    const StormResult& r = modes[m].result;
    const double ideal_s = m == 0 ? checkip_ideal_s : batch_ideal_s;
    std::cout << absl::StrFormat(
                     "  %-14s wall %.3f s (%.2fx ideal %.3f s)  simulator requests %d  "
                     "max_in_flight %d  errors %d%s",
                     modes[m].name, r.seconds, r.seconds / ideal_s, ideal_s, r.sim_requests,
                     r.max_in_flight, r.errors,
                     r.first_error.empty() ? "" : " first: " + r.first_error)
              << std::endl;
    const bool ok = r.seconds <= target_s && r.errors == 0 && r.sim_requests == ips;
    PrintResult(bench, modes[m].name + "_wall_s", absl::StrFormat("%.3f", r.seconds),
                absl::StrFormat("<=%gs", target_s), PassFail(ok));
    PrintResult(bench, modes[m].name + "_max_in_flight", absl::StrCat(r.max_in_flight),
                absl::StrCat("<=", n * concurrency), PassFail(r.max_in_flight <= n * concurrency));
    if (n > 1) {
      PrintResult(bench, modes[m].name + "_sim_requests", absl::StrCat(r.sim_requests),
                  absl::StrCat("=", ips), PassFail(r.sim_requests == ips));
    }
  }
  return modes;
}

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  const int ips = smoke ? 200 : absl::GetFlag(FLAGS_ips);
  const int in_flight = absl::GetFlag(FLAGS_in_flight);
  const int concurrency = absl::GetFlag(FLAGS_upstream_concurrency);
  const int n_replicas = std::max(1, absl::GetFlag(FLAGS_replicas));
  const absl::Duration latency = absl::GetFlag(FLAGS_latency);
  const double latency_s = absl::ToDoubleSeconds(latency);
  const double target_s = absl::ToDoubleSeconds(absl::GetFlag(FLAGS_target));
  const double ideal_s = ips / static_cast<double>(concurrency) * latency_s;
  const std::vector<std::string> verdictd_flags = {
      absl::StrCat("--upstream_concurrency=", concurrency),
      absl::StrCat("--max_batch=", std::max(ips, 1000))};

  TempDir dir;
  absl::StatusOr<Server> sim =
      StartSimulator(dir, {absl::StrCat("--latency=", absl::FormatDuration(latency))});
  if (!sim.ok()) Die("simulator", sim.status());

  std::cout << absl::StrFormat(
                   "bench_miss_storm: %d cold IPs, simulator latency %s, "
                   "--upstream_concurrency=%d; ideal bound %d/%d x %s = %.3f s",
                   ips, absl::FormatDuration(latency), concurrency, ips, concurrency,
                   absl::FormatDuration(latency), ideal_s)
            << std::endl;
  std::cout << "one verdictd on SQLite:" << std::endl;
  std::vector<Mode> single;
  {
    absl::StatusOr<Server> verdictd = StartVerdictd(dir, sim->port, verdictd_flags);
    if (!verdictd.ok()) Die("verdictd", verdictd.status());
    std::vector<Server> servers;
    servers.push_back(*std::move(verdictd));
    single = RunStorms("miss_storm", servers, sim->port, ips, in_flight, concurrency, latency_s,
                       target_s);
    servers[0].Stop();
  }
  PrintResult("miss_storm", "ideal_s", absl::StrFormat("%.3f", ideal_s));

  if (n_replicas > 1) {
    std::cout << n_replicas << " verdictd replicas on one PostgreSQL database, each "
              << "--upstream_concurrency=" << concurrency << ":" << std::endl;
    absl::StatusOr<BenchStore> store = BenchStore::Create(Backend::kPostgres, dir, "storm");
    if (!store.ok()) Die("store", store.status());
    absl::StatusOr<std::vector<Server>> replicas =
        StartReplicas(dir, sim->port, *store, n_replicas, verdictd_flags);
    if (!replicas.ok()) Die("replicas", replicas.status());
    const std::string bench = absl::StrCat("miss_storm_", n_replicas, "r");
    std::vector<Mode> cluster =
        RunStorms(bench, *replicas, sim->port, ips, in_flight, concurrency, latency_s, target_s);
    for (size_t m = 0; m < cluster.size(); ++m) {
      const double ratio = cluster[m].result.seconds / single[m].result.seconds;
      std::cout << absl::StrFormat("  %s: %d replicas %.3f s vs one verdictd %.3f s: %.2fx",
                                   cluster[m].name, n_replicas, cluster[m].result.seconds,
                                   single[m].result.seconds, ratio)
                << std::endl;
      PrintResult(bench, cluster[m].name + "_vs_single", absl::StrFormat("%.2f", ratio));
    }
    for (Server& replica : *replicas) {
      replica.Stop();
    }
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
