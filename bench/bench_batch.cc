// Benchmark 2: CheckBatch of 1000 cached IPs, client-observed latency over sequential calls on
// one channel, against a 1-item batch of a cached IP as the round-trip baseline; the difference
// of the medians is reported as the server time.
//
//   build-bench/bench/bench_batch            # 200 calls of each
//   build-bench/bench/bench_batch --smoke    # 20 calls of each

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_support.h"

ABSL_FLAG(int, batch, 1000, "Items per CheckBatch");
ABSL_FLAG(int, calls, 200, "Sequential calls per measurement");
ABSL_FLAG(bool, smoke, false, "CI mode: 20 calls");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

// Runs `request` once; dies on any error. The number of results from the cache.
int CallBatch(pb::VerdictService::Stub& stub, const pb::CheckBatchRequest& request) {
  const std::unique_ptr<grpc::ClientContext> context = CallContext("bench", absl::Seconds(60));
  pb::CheckBatchResponse response;
  grpc::Status status = stub.CheckBatch(context.get(), request, &response);
  if (!status.ok()) {
    Die(absl::StrCat("CheckBatch: ", status.error_message()));
  }
  if (response.results_size() != request.items_size()) {
    Die("CheckBatch answered the wrong number of results");
  }
  int cached = 0;
  for (const pb::CheckBatchResult& r : response.results()) {
    if (r.has_error()) {
      Die(absl::StrCat("CheckBatch item error: ", r.error().message()));
    }
    cached += r.result().source() == pb::SOURCE_CACHE ? 1 : 0;
  }
  return cached;
}

Histogram Measure(pb::VerdictService::Stub& stub, const pb::CheckBatchRequest& request, int calls) {
  Histogram h;
  for (int i = 0; i < calls; ++i) {
    const int64_t start = NowNs();
    const int cached = CallBatch(stub, request);
    h.Record(static_cast<uint64_t>(NowNs() - start));
    if (cached != request.items_size()) {
      Die("a warmed batch had items not from the cache");
    }
  }
  return h;
}

std::string Describe(const Histogram& h) {
  return absl::StrFormat("median %7.3f ms  p90 %7.3f ms  p99 %7.3f ms  max %7.3f ms",
                         h.Quantile(0.5) / 1e6, h.Quantile(0.9) / 1e6, h.Quantile(0.99) / 1e6,
                         static_cast<double>(h.max()) / 1e6);
}

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  const int batch = absl::GetFlag(FLAGS_batch);
  const int calls = smoke ? 20 : absl::GetFlag(FLAGS_calls);

  TempDir dir;
  absl::StatusOr<Server> sim = StartSimulator(dir, {});
  if (!sim.ok()) Die("simulator", sim.status());
  absl::StatusOr<Server> verdictd =
      StartVerdictd(dir, sim->port, {absl::StrCat("--max_batch=", std::max(batch, 1000))});
  if (!verdictd.ok()) Die("verdictd", verdictd.status());
  auto stub = NewStub(verdictd->port);

  pb::CheckBatchRequest big;
  for (int i = 0; i < batch; ++i) {
    pb::CheckIpRequest* item = big.add_items();
    item->set_ip(PublicIp(11, static_cast<uint32_t>(i + 1)));
    item->set_user_agent("Mozilla/5.0");
  }
  pb::CheckBatchRequest one;
  *one.add_items() = big.items(0);

  // Warm: the first batch misses (asks the simulator), the second must be all hits.
  const int64_t warm_start = NowNs();
  CallBatch(*stub, big);
  const double warm_ms = static_cast<double>(NowNs() - warm_start) / 1e6;
  if (CallBatch(*stub, big) != batch) {
    Die("the second batch was not answered from the cache");
  }
  std::cout << absl::StrFormat(
                   "bench_batch: CheckBatch of %d cached IPs vs 1 cached IP, %d sequential "
                   "calls each on one channel (warming batch of misses took %.1f ms)",
                   batch, calls, warm_ms)
            << std::endl;

  // Alternate halves so drifting machine load hits both sides alike.
  Histogram h_one;
  Histogram h_big;
  for (int half = 0; half < 2; ++half) {
    h_one.Merge(Measure(*stub, one, calls / 2 + (half == 0 ? calls % 2 : 0)));
    h_big.Merge(Measure(*stub, big, calls / 2 + (half == 0 ? calls % 2 : 0)));
  }
  const double server_ms = (h_big.Quantile(0.5) - h_one.Quantile(0.5)) / 1e6;
  std::cout << absl::StrFormat("  1-item batch:    %s\n", Describe(h_one));
  std::cout << absl::StrFormat("  %d-item batch: %s\n", batch, Describe(h_big));
  std::cout << absl::StrFormat(
      "server time (median %d-item - median 1-item): %.3f ms = %.2f us/item (target <= 5 ms)\n",
      batch, server_ms, server_ms * 1000 / batch);
  PrintResult("batch", "baseline_1item_median_ms",
              absl::StrFormat("%.3f", h_one.Quantile(0.5) / 1e6));
  PrintResult("batch", absl::StrCat("batch", batch, "_median_ms"),
              absl::StrFormat("%.3f", h_big.Quantile(0.5) / 1e6));
  PrintResult("batch", absl::StrCat("batch", batch, "_p99_ms"),
              absl::StrFormat("%.3f", h_big.Quantile(0.99) / 1e6));
  PrintResult("batch", "server_time_ms", absl::StrFormat("%.3f", server_ms), "<=5",
              PassFail(server_ms <= 5.0));
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
