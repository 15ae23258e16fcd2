#ifndef VERDICTD_BENCH_LOADGEN_H_
#define VERDICTD_BENCH_LOADGEN_H_

// A closed-loop gRPC load generator on the callback API: `channels` connections, each with
// `outstanding` CheckIp calls always in flight (like h2load -c channels -m outstanding), run
// for warmup + duration; only calls that complete inside the measured window count.

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "bench/bench_support.h"
#include "verdict/v1/verdict.pb.h"

namespace verdictd::bench {

struct LoadOptions {
  int port = 0;
  int channels = 16;
  int outstanding = 32;  // per channel
  absl::Duration warmup = absl::Seconds(2);
  absl::Duration duration = absl::Seconds(10);
  // Requests are sent round-robin per call slot; at least one.
  std::vector<verdict::v1::CheckIpRequest> requests;
  std::string caller = "loadgen";
  absl::Duration deadline = absl::Seconds(10);
  // When > 0, the server's CPU use over the measured window is reported too.
  pid_t server_pid = 0;
};

struct LoadResult {
  int64_t ok = 0;         // calls that succeeded inside the window
  int64_t errors = 0;     // calls that failed inside the window
  int64_t not_cache = 0;  // successful responses whose source was not SOURCE_CACHE
  std::string first_error;
  double window_seconds = 0;
  double calls_per_second = 0;  // ok / window
  Histogram latency;            // of successful calls in the window
  double loadgen_cpu = 0;       // this process's CPU seconds per wall second in the window
  double server_cpu = -1;       // the server's, when server_pid was given
};

LoadResult RunLoad(const LoadOptions& options);

// "12345 calls/s  p50 0.41 ms  p99 1.9 ms  p999 3.2 ms ..." on one line.
std::string FormatLoadResult(const LoadResult& result);

}  // namespace verdictd::bench

#endif  // VERDICTD_BENCH_LOADGEN_H_
