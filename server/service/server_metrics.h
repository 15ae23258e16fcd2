#ifndef VERDICTD_SERVER_SERVICE_SERVER_METRICS_H_
#define VERDICTD_SERVER_SERVICE_SERVER_METRICS_H_

#include <array>
#include <atomic>
#include <string>

#include "grpcpp/support/status.h"
#include "server/engine/engine.h"
#include "server/metrics/metrics.h"

namespace verdictd {

// The service's Prometheus metrics. Hot-path updates are lock-free: every (method, code) and
// source child is created up front. Only per-caller click counters look up a child (a reader
// lock on that family) and only on the upstream path.
class ServerMetrics : public EngineObserver {
 public:
  enum Method {
    kCheckIp,
    kCheckBatch,
    kListVerdictHistory,
    kGetUsage,
    kGetServerInfo,
    kListClicks,
    kMethods
  };

  explicit ServerMetrics(metrics::Registry& registry);

  void OnRpc(Method method, grpc::StatusCode code) {
    rpcs_[method][static_cast<int>(code) % kCodes]->Increment();
  }

  // EngineObserver.
  void OnAnswer(Source source) override;
  void OnUpstream(const std::string& caller, absl::string_view outcome, int http_status,
                  absl::Duration latency) override;
  void OnFlightStarted() override { in_flight_->Add(1); }
  void OnFlightEnded() override { in_flight_->Add(-1); }
  void OnWaiterJoined() override { waiters_->Increment(); }
  void OnNotSent(absl::string_view reason) override;
  void OnQueueDepth(size_t depth) override { queued_->Set(static_cast<double>(depth)); }

  metrics::Histogram& store_read_latency() { return *store_read_latency_; }

 private:
  static constexpr int kCodes = 17;
  std::array<std::array<metrics::Counter*, kCodes>, kMethods> rpcs_{};
  std::array<metrics::Counter*, 4> answers_{};
  metrics::Family<metrics::Counter>* clicks_;
  metrics::Family<metrics::Counter>* upstream_;
  metrics::Histogram* upstream_latency_;
  metrics::Gauge* in_flight_;
  metrics::Counter* waiters_;
  metrics::Family<metrics::Counter>* not_sent_;
  metrics::Gauge* queued_;
  metrics::Histogram* store_read_latency_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_SERVICE_SERVER_METRICS_H_
