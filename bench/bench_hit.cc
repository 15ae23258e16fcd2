// Benchmark 1, the hit path: CheckIp on cached IPs under closed-loop load, verdictd against a
// trivial callback-API server answering a fixed response, alternated (A B A B ...) with the
// same load; prints each run, the medians and the ratios verdictd/trivial.
//
//   build-bench/bench/bench_hit            # 16 channels x 32 outstanding, 3 x (10 s + 2 s) each
//   build-bench/bench/bench_hit --smoke    # a few seconds

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_support.h"
#include "bench/loadgen.h"

ABSL_FLAG(int, channels, 16, "Client channels (connections)");
ABSL_FLAG(int, outstanding, 32, "Calls in flight per channel");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "Measured time per run");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(2), "Unmeasured time before each run");
ABSL_FLAG(int, rounds, 3, "Rounds of (trivial, verdictd) runs; medians are reported");
ABSL_FLAG(int, ips, 1, "Distinct cached IPs the calls rotate over");
ABSL_FLAG(bool, smoke, false, "CI mode: 4x8 calls, 1 round of 1 s + 0.5 s warm-up");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  LoadOptions load;
  load.channels = smoke ? 4 : absl::GetFlag(FLAGS_channels);
  load.outstanding = smoke ? 8 : absl::GetFlag(FLAGS_outstanding);
  load.duration = smoke ? absl::Seconds(1) : absl::GetFlag(FLAGS_duration);
  load.warmup = smoke ? absl::Milliseconds(500) : absl::GetFlag(FLAGS_warmup);
  const int rounds = smoke ? 1 : absl::GetFlag(FLAGS_rounds);
  const int ips = std::max(1, absl::GetFlag(FLAGS_ips));

  TempDir dir;
  absl::StatusOr<Server> sim = StartSimulator(dir, {});
  if (!sim.ok()) Die("simulator", sim.status());
  absl::StatusOr<Server> verdictd = StartVerdictd(dir, sim->port, {});
  if (!verdictd.ok()) Die("verdictd", verdictd.status());
  absl::StatusOr<Server> trivial = StartTrivialServer(dir);
  if (!trivial.ok()) Die("trivial_server", trivial.status());

  // Put the IPs in verdictd's store, and check the second ask is a hit.
  {
    auto stub = NewStub(verdictd->port);
    for (int i = 0; i < ips; ++i) {
      pb::CheckIpRequest request;
      request.set_ip(PublicIp(11, static_cast<uint32_t>(i + 1)));
      request.set_user_agent("Mozilla/5.0");
      load.requests.push_back(request);
      for (int attempt = 0; attempt < 2; ++attempt) {
        grpc::ClientContext context;
        context.AddMetadata("x-caller", "bench");
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        pb::CheckIpResponse response;
        grpc::Status status = stub->CheckIp(&context, request, &response);
        if (!status.ok()) {
          Die(absl::StrCat("priming CheckIp ", request.ip(), ": ", status.error_message()));
        }
        if (attempt == 1 && response.source() != pb::SOURCE_CACHE) {
          Die(absl::StrCat("second CheckIp of ", request.ip(), " was not a cache hit"));
        }
      }
    }
  }

  std::cout << absl::StrFormat(
                   "bench_hit: CheckIp on %d cached IP(s), %d channels x %d outstanding, %d "
                   "round(s) of %s + %s warm-up per server (loadgen shares the cores)",
                   ips, load.channels, load.outstanding, rounds,
                   absl::FormatDuration(load.duration), absl::FormatDuration(load.warmup))
            << std::endl;
  std::vector<double> qps[2];
  std::vector<double> p99[2];
  std::vector<double> p50[2];
  std::vector<double> lg_cpu[2];
  std::vector<double> srv_cpu[2];
  const char* names[2] = {"trivial ", "verdictd"};
  const Server* servers[2] = {&*trivial, &*verdictd};
  for (int round = 0; round < rounds; ++round) {
    for (int side = 0; side < 2; ++side) {
      LoadOptions options = load;
      options.port = servers[side]->port;
      options.server_pid = servers[side]->pid();
      LoadResult result = RunLoad(options);
      std::cout << "  round " << round + 1 << " " << names[side] << " " << FormatLoadResult(result)
                << std::endl;
      if (result.errors > 0 || result.ok == 0) {
        Die(absl::StrCat(names[side], " answered errors: ", result.first_error));
      }
      qps[side].push_back(result.calls_per_second);
      p50[side].push_back(result.latency.Quantile(0.5) / 1e6);
      p99[side].push_back(result.latency.Quantile(0.99) / 1e6);
      lg_cpu[side].push_back(result.loadgen_cpu * 100);
      srv_cpu[side].push_back(result.server_cpu * 100);
    }
  }

  const double qps_ratio = Median(qps[1]) / Median(qps[0]);
  const double p99_ratio = Median(p99[1]) / Median(p99[0]);
  std::cout << absl::StrFormat(
      "medians: trivial %.0f calls/s p50 %.3f ms p99 %.3f ms (server CPU %.0f%%, loadgen %.0f%%)\n"
      "         verdictd %.0f calls/s p50 %.3f ms p99 %.3f ms (server CPU %.0f%%, loadgen "
      "%.0f%%)\n"
      "ratio verdictd/trivial: throughput %.2f (target >= 0.85), p99 %.2fx (target <= 2x)\n",
      Median(qps[0]), Median(p50[0]), Median(p99[0]), Median(srv_cpu[0]), Median(lg_cpu[0]),
      Median(qps[1]), Median(p50[1]), Median(p99[1]), Median(srv_cpu[1]), Median(lg_cpu[1]),
      qps_ratio, p99_ratio);
  PrintResult("hit", "trivial_calls_per_s", absl::StrFormat("%.0f", Median(qps[0])));
  PrintResult("hit", "trivial_p99_ms", absl::StrFormat("%.3f", Median(p99[0])));
  PrintResult("hit", "verdictd_calls_per_s", absl::StrFormat("%.0f", Median(qps[1])));
  PrintResult("hit", "verdictd_p99_ms", absl::StrFormat("%.3f", Median(p99[1])));
  PrintResult("hit", "throughput_ratio", absl::StrFormat("%.2f", qps_ratio), ">=0.85",
              PassFail(qps_ratio >= 0.85));
  PrintResult("hit", "p99_ratio", absl::StrFormat("%.2f", p99_ratio), "<=2",
              PassFail(p99_ratio <= 2.0));
  trivial->Stop();
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
