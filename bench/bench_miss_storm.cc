// Benchmark 3, the miss storm: N distinct cold public IPs against a simulator with 100 ms of
// latency and verdictd --upstream_concurrency=32. Wall time for all N, sent (a) as concurrent
// CheckIp calls with --in_flight outstanding and (b) as one CheckBatch of N other cold IPs; the
// simulator's max_in_flight for each, and the ideal bound N / concurrency x latency.
//
//   build-bench/bench/bench_miss_storm           # 1000 IPs
//   build-bench/bench/bench_miss_storm --smoke   # 200 IPs

#include <atomic>
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

StormResult CheckIpStorm(int port, int sim_port, int ips, int in_flight, int channels) {
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    stubs.push_back(NewStub(port));
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

StormResult BatchStorm(int port, int sim_port, int ips) {
  auto stub = NewStub(port);
  pb::CheckBatchRequest request;
  for (int i = 0; i < ips; ++i) {
    request.add_items()->set_ip(PublicIp(12, static_cast<uint32_t>(i + 1)));
  }
  {
    const std::unique_ptr<grpc::ClientContext> context = CallContext("", absl::Seconds(10));
    pb::CheckBatchRequest empty;
    pb::CheckBatchResponse response;
    (void)stub->CheckBatch(context.get(), empty, &response);
  }
  StormResult result;
  const std::unique_ptr<grpc::ClientContext> context = CallContext("storm", absl::Seconds(120));
  pb::CheckBatchResponse response;
  const int64_t start = NowNs();
  grpc::Status status = stub->CheckBatch(context.get(), request, &response);
  result.seconds = static_cast<double>(NowNs() - start) / 1e9;
  if (!status.ok()) {
    result.errors = ips;
    result.first_error = status.error_message();
  } else {
    for (const pb::CheckBatchResult& r : response.results()) {
      if (r.has_error()) {
        if (result.errors++ == 0) {
          result.first_error = r.error().message();
        }
      }
    }
  }
  ReadSim(sim_port, &result);
  return result;
}

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  const int ips = smoke ? 200 : absl::GetFlag(FLAGS_ips);
  const int in_flight = absl::GetFlag(FLAGS_in_flight);
  const int concurrency = absl::GetFlag(FLAGS_upstream_concurrency);
  const absl::Duration latency = absl::GetFlag(FLAGS_latency);
  const double target_s = absl::ToDoubleSeconds(absl::GetFlag(FLAGS_target));
  const double ideal_s = ips / static_cast<double>(concurrency) * absl::ToDoubleSeconds(latency);

  TempDir dir;
  absl::StatusOr<Server> sim =
      StartSimulator(dir, {absl::StrCat("--latency=", absl::FormatDuration(latency))});
  if (!sim.ok()) Die("simulator", sim.status());
  absl::StatusOr<Server> verdictd =
      StartVerdictd(dir, sim->port,
                    {absl::StrCat("--upstream_concurrency=", concurrency),
                     absl::StrCat("--max_batch=", std::max(ips, 1000))});
  if (!verdictd.ok()) Die("verdictd", verdictd.status());

  std::cout << absl::StrFormat(
                   "bench_miss_storm: %d cold IPs, simulator latency %s, "
                   "--upstream_concurrency=%d; ideal bound %d/%d x %s = %.3f s",
                   ips, absl::FormatDuration(latency), concurrency, ips, concurrency,
                   absl::FormatDuration(latency), ideal_s)
            << std::endl;
  struct Mode {
    std::string name;
    StormResult result;
  };
  std::vector<Mode> modes;
  if (absl::Status s = SimReset(sim->port); !s.ok()) Die("simulator reset", s);
  modes.push_back(
      {absl::StrCat("checkip_x", in_flight),
       CheckIpStorm(verdictd->port, sim->port, ips, in_flight, absl::GetFlag(FLAGS_channels))});
  if (absl::Status s = SimReset(sim->port); !s.ok()) Die("simulator reset", s);
  modes.push_back({absl::StrCat("batch", ips), BatchStorm(verdictd->port, sim->port, ips)});

  for (const Mode& m : modes) {
    const StormResult& r = m.result;
    std::cout << absl::StrFormat(
                     "  %-14s wall %.3f s (%.2fx ideal)  simulator requests %d  max_in_flight "
                     "%d  errors %d%s",
                     m.name, r.seconds, r.seconds / ideal_s, r.sim_requests, r.max_in_flight,
                     r.errors, r.first_error.empty() ? "" : " first: " + r.first_error)
              << std::endl;
    const bool ok = r.seconds <= target_s && r.errors == 0 && r.sim_requests == ips;
    PrintResult("miss_storm", m.name + "_wall_s", absl::StrFormat("%.3f", r.seconds),
                absl::StrFormat("<=%gs", target_s), PassFail(ok));
    PrintResult("miss_storm", m.name + "_max_in_flight", absl::StrCat(r.max_in_flight),
                absl::StrCat("<=", concurrency), PassFail(r.max_in_flight <= concurrency));
  }
  PrintResult("miss_storm", "ideal_s", absl::StrFormat("%.3f", ideal_s));
  verdictd->Stop();
  sim->Stop();
  return 0;
}

}  // namespace
}  // namespace verdictd::bench

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  return verdictd::bench::Main();
}
