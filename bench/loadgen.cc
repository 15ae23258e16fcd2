#include "bench/loadgen.h"

#include <atomic>
#include <chrono>
#include <memory>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "verdict/v1/verdict.grpc.pb.h"

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

// Shared by every slot of one run.
struct Run {
  const LoadOptions* options = nullptr;
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;
  std::atomic<int> running{0};
  absl::Mutex mu;
  std::string first_error ABSL_GUARDED_BY(mu);
};

// One call always in flight: each completion issues the next call until the window ends. Only
// its own callbacks touch a slot, and they never overlap, so it needs no lock.
struct Slot {
  Run* run = nullptr;
  pb::VerdictService::Stub* stub = nullptr;
  size_t next_request = 0;
  std::unique_ptr<grpc::ClientContext> context;
  pb::CheckIpResponse response;
  int64_t started_ns = 0;
  Histogram latency;
  int64_t ok = 0;
  int64_t errors = 0;
  int64_t not_cache = 0;
};

void Issue(Slot* slot);

void OnDone(Slot* slot, const grpc::Status& status) {
  const int64_t now = NowNs();
  Run& run = *slot->run;
  if (now >= run.window_start_ns && now < run.window_end_ns) {
    if (status.ok()) {
      ++slot->ok;
      slot->latency.Record(static_cast<uint64_t>(now - slot->started_ns));
      if (slot->response.source() != pb::SOURCE_CACHE) {
        ++slot->not_cache;
      }
    } else {
      ++slot->errors;
      absl::MutexLock lock(&run.mu);
      if (run.first_error.empty()) {
        run.first_error = absl::StrFormat("%d: %s", static_cast<int>(status.error_code()),
                                          status.error_message());
      }
    }
  }
  if (now < run.window_end_ns) {
    Issue(slot);
  } else {
    run.running.fetch_sub(1);
  }
}

void Issue(Slot* slot) {
  const LoadOptions& options = *slot->run->options;
  slot->context = std::make_unique<grpc::ClientContext>();
  slot->context->AddMetadata("x-caller", options.caller);
  slot->context->set_deadline(std::chrono::system_clock::now() +
                              absl::ToChronoNanoseconds(options.deadline));
  const pb::CheckIpRequest& request =
      options.requests[slot->next_request++ % options.requests.size()];
  slot->started_ns = NowNs();
  slot->stub->async()->CheckIp(slot->context.get(), &request, &slot->response,
                               [slot](grpc::Status status) { OnDone(slot, status); });
}

}  // namespace

LoadResult RunLoad(const LoadOptions& options) {
  if (options.requests.empty() || options.channels < 1 || options.outstanding < 1) {
    Die("RunLoad needs requests, channels and outstanding calls");
  }
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int i = 0; i < options.channels; ++i) {
    stubs.push_back(NewStub(options.port));
  }
  Run run;
  run.options = &options;
  const int64_t start = NowNs();
  run.window_start_ns = start + absl::ToInt64Nanoseconds(options.warmup);
  run.window_end_ns = run.window_start_ns + absl::ToInt64Nanoseconds(options.duration);

  const int total = options.channels * options.outstanding;
  std::vector<std::unique_ptr<Slot>> slots;
  for (int i = 0; i < total; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->run = &run;
    slot->stub = stubs[i % options.channels].get();
    slot->next_request = static_cast<size_t>(i);
    slots.push_back(std::move(slot));
  }
  run.running = total;
  for (auto& slot : slots) {
    Issue(slot.get());
  }

  auto sleep_until = [](int64_t ns) {
    const int64_t now = NowNs();
    if (ns > now) {
      absl::SleepFor(absl::Nanoseconds(ns - now));
    }
  };
  sleep_until(run.window_start_ns);
  const double cpu0 = SelfCpuSeconds();
  const double server_cpu0 = options.server_pid > 0 ? ProcessCpuSeconds(options.server_pid) : 0;
  const int64_t t0 = NowNs();
  sleep_until(run.window_end_ns);
  const double cpu1 = SelfCpuSeconds();
  const double server_cpu1 = options.server_pid > 0 ? ProcessCpuSeconds(options.server_pid) : 0;
  const int64_t t1 = NowNs();

  // Calls in flight finish within their deadline; wait a bounded time for them.
  const int64_t drain_deadline =
      NowNs() + absl::ToInt64Nanoseconds(options.deadline + absl::Seconds(5));
  while (run.running.load() > 0 && NowNs() < drain_deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (run.running.load() > 0) {
    Die("load generator calls did not finish");
  }

  LoadResult result;
  for (const auto& slot : slots) {
    result.ok += slot->ok;
    result.errors += slot->errors;
    result.not_cache += slot->not_cache;
    result.latency.Merge(slot->latency);
  }
  {
    absl::MutexLock lock(&run.mu);
    result.first_error = run.first_error;
  }
  result.window_seconds = absl::ToDoubleSeconds(options.duration);
  result.calls_per_second = static_cast<double>(result.ok) / result.window_seconds;
  const double wall = static_cast<double>(t1 - t0) / 1e9;
  result.loadgen_cpu = (cpu1 - cpu0) / wall;
  if (options.server_pid > 0) {
    result.server_cpu = (server_cpu1 - server_cpu0) / wall;
  }
  return result;
}

std::string FormatLoadResult(const LoadResult& r) {
  std::string line = absl::StrFormat(
      "%8.0f calls/s  p50 %6.3f ms  p99 %6.3f ms  p999 %6.3f ms  max %7.3f ms  errors %d  "
      "loadgen CPU %3.0f%%",
      r.calls_per_second, r.latency.Quantile(0.5) / 1e6, r.latency.Quantile(0.99) / 1e6,
      r.latency.Quantile(0.999) / 1e6, static_cast<double>(r.latency.max()) / 1e6, r.errors,
      r.loadgen_cpu * 100);
  if (r.server_cpu >= 0) {
    absl::StrAppendFormat(&line, "  server CPU %3.0f%%", r.server_cpu * 100);
  }
  if (r.not_cache > 0) {
    absl::StrAppendFormat(&line, "  not-from-cache %d", r.not_cache);
  }
  if (!r.first_error.empty()) {
    absl::StrAppendFormat(&line, "  first error: %s", r.first_error);
  }
  return line;
}

}  // namespace verdictd::bench
