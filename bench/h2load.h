#ifndef VERDICTD_BENCH_H2LOAD_H_
#define VERDICTD_BENCH_H2LOAD_H_

// h2load (nghttp2-client) as the load generator for unary gRPC calls: the request is a file
// with the gRPC framing (0x00, a 4-byte big-endian length, the serialized message) posted with
// `-d`, plus `content-type: application/grpc` and `te: trailers`. h2load counts HTTP statuses,
// not grpc-status (which gRPC sends in the trailers, with HTTP 200 even for errors), so a caller
// must check the answers some other way (bench_hit compares the servers' own counters).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/bench_support.h"
#include "google/protobuf/message_lite.h"

namespace verdictd::bench {

// The gRPC length-prefixed message: 0x00 (not compressed), length (4 bytes, big-endian), bytes.
std::string GrpcFrame(const google::protobuf::MessageLite& message);

// OK if `path` is an executable file; otherwise FAILED_PRECONDITION saying how to install it.
absl::Status CheckH2loadInstalled(const std::string& path);

struct H2loadOptions {
  std::string binary = "/usr/bin/h2load";
  std::string url;                              // http://127.0.0.1:PORT/package.Service/Method
  std::string data_file;                        // the framed request, posted with -d
  std::vector<std::string> headers;             // "name: value", besides content-type and te
  int connections = 16;                         // -c
  int streams = 32;                             // -m, per connection
  int threads = 1;                              // -t
  absl::Duration warmup = absl::Seconds(2);     // --warm-up-time
  absl::Duration duration = absl::Seconds(10);  // -D
  std::string log_file;  // --log-file: one row per request, for the latency percentiles
};

struct H2loadResult {
  // From h2load's summary.
  double requests_per_second = 0;  // "finished in ..., N req/s": the measured window only
  int64_t total = 0, started = 0, done = 0, succeeded = 0, failed = 0, errored = 0, timeout = 0;
  int64_t status_2xx = 0, status_3xx = 0, status_4xx = 0, status_5xx = 0;
  double mean_request_ms = -1;  // "time for request" mean and max, as h2load prints them
  double max_request_ms = -1;
  // From --log-file: the rows with HTTP status 200, in nanoseconds (h2load writes whole
  // microseconds, so no value is finer than 1 µs). h2load writes the measured window only.
  Histogram latency;
  int64_t log_rows = 0;
  int64_t log_non_200 = 0;
  // h2load's own user + system CPU seconds (getrusage of the reaped child) and its wall time.
  double cpu_seconds = 0;
  double wall_seconds = 0;
  std::string output;  // stdout, for error messages
};

// Runs h2load to completion and parses its summary and log file. An error if it cannot run,
// exits non-zero or prints no summary; a summary with failed requests is returned as is.
absl::StatusOr<H2loadResult> RunH2load(const H2loadOptions& options);

// The samples of a Prometheus text exposition, "name{labels}" -> value; comments skipped.
std::vector<std::pair<std::string, double>> ParsePrometheusText(const std::string& text);

}  // namespace verdictd::bench

#endif  // VERDICTD_BENCH_H2LOAD_H_
