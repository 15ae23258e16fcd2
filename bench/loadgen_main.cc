// A standalone run of the load generator against any VerdictService on 127.0.0.1:
//   build-bench/bench/loadgen --port=50051 --ip=8.8.8.8 --channels=16 --outstanding=32

#include <iostream>

#include "absl/flags/flag.h"
#include "bench/bench_support.h"
#include "bench/loadgen.h"

ABSL_FLAG(int, port, 50051, "Server port on 127.0.0.1");
ABSL_FLAG(std::string, ip, "8.8.8.8", "The IP every CheckIp asks about");
ABSL_FLAG(std::string, caller, "loadgen", "x-caller metadata");
ABSL_FLAG(int, channels, 16, "Client channels (connections)");
ABSL_FLAG(int, outstanding, 32, "Calls in flight per channel");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "Measured time");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(2), "Unmeasured time first");
ABSL_FLAG(int, server_pid, 0, "Report this process's CPU use over the window too");

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  verdictd::bench::LoadOptions options;
  options.port = absl::GetFlag(FLAGS_port);
  options.channels = absl::GetFlag(FLAGS_channels);
  options.outstanding = absl::GetFlag(FLAGS_outstanding);
  options.duration = absl::GetFlag(FLAGS_duration);
  options.warmup = absl::GetFlag(FLAGS_warmup);
  options.caller = absl::GetFlag(FLAGS_caller);
  options.server_pid = absl::GetFlag(FLAGS_server_pid);
  verdict::v1::CheckIpRequest request;
  request.set_ip(absl::GetFlag(FLAGS_ip));
  options.requests.push_back(request);
  verdictd::bench::LoadResult result = verdictd::bench::RunLoad(options);
  std::cout << verdictd::bench::FormatLoadResult(result) << std::endl;
  return result.errors > 0 ? 1 : 0;
}
