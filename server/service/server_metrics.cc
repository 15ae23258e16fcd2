#include "server/service/server_metrics.h"

#include <iterator>

#include "absl/strings/str_cat.h"

namespace verdictd {
namespace {

constexpr const char* kMethodNames[] = {"CheckIp",  "CheckBatch",    "ListVerdictHistory",
                                        "GetUsage", "GetServerInfo", "ListClicks"};
static_assert(std::size(kMethodNames) == ServerMetrics::kMethods, "a name for every method");
constexpr const char* kCodeNames[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

}  // namespace

ServerMetrics::ServerMetrics(metrics::Registry& registry) {
  auto& rpcs = registry.AddCounter("verdictd_rpcs_total", "gRPC calls handled, by method and code.",
                                   {"method", "code"});
  for (int m = 0; m < kMethods; ++m) {
    for (int c = 0; c < kCodes; ++c) {
      rpcs_[m][c] = &rpcs.WithLabels({kMethodNames[m], kCodeNames[c]});
    }
  }
  auto& answers = registry.AddCounter(
      "verdictd_answers_total", "Verdicts answered (CheckIp calls and batch items), by source.",
      {"source"});
  answers_[static_cast<int>(Source::kCache)] = &answers.WithLabels({"cache"});
  answers_[static_cast<int>(Source::kUpstream)] = &answers.WithLabels({"upstream"});
  answers_[static_cast<int>(Source::kStale)] = &answers.WithLabels({"stale"});
  clicks_ =
      &registry.AddCounter("verdictd_clicks_total",
                           "Requests sent to ClickPatrol (billed clicks), by caller.", {"caller"});
  upstream_ = &registry.AddCounter(
      "verdictd_upstream_requests_total",
      "ClickPatrol request attempts by outcome (verdict, error, not_sent) and HTTP status.",
      {"outcome", "http_status"});
  upstream_latency_ =
      &registry
           .AddHistogram("verdictd_upstream_latency_seconds", "ClickPatrol request latency.", {},
                         metrics::DefaultLatencyBuckets())
           .WithLabels({});
  in_flight_ = &registry
                    .AddGauge("verdictd_upstream_in_flight",
                              "Upstream requests in flight (single-flight groups).")
                    .WithLabels({});
  waiters_ = &registry
                  .AddCounter("verdictd_singleflight_waiters_total",
                              "Checks that joined another caller's upstream request.")
                  .WithLabels({});
  not_sent_ = &registry.AddCounter(
      "verdictd_misses_not_sent_total",
      "Misses answered without a ClickPatrol request: abandoned (nobody waited any more), refused "
      "(breaker, allowance or token state when their turn came), shutdown, queue_full.",
      {"reason"});
  for (const char* reason : {"abandoned", "refused", "shutdown", "queue_full"}) {
    not_sent_->WithLabels({reason});
  }
  queued_ = &registry
                 .AddGauge("verdictd_upstream_queued_misses",
                           "Misses waiting for an upstream slot (bounded by --max_queued_misses).")
                 .WithLabels({});
  store_read_latency_ = &registry
                             .AddHistogram("verdictd_store_read_latency_seconds",
                                           "Latency of verdict store lookups on the check path.",
                                           {}, metrics::DefaultLatencyBuckets())
                             .WithLabels({});
}

void ServerMetrics::OnAnswer(Source source) {
  const int i = static_cast<int>(source);
  if (i > 0 && i < static_cast<int>(answers_.size()) && answers_[i] != nullptr) {
    answers_[i]->Increment();
  }
}

void ServerMetrics::OnUpstream(const std::string& caller, absl::string_view outcome,
                               int http_status, absl::Duration latency) {
  if (outcome != "not_sent") {
    clicks_->WithLabels({caller}).Increment();
  }
  upstream_->WithLabels({std::string(outcome), absl::StrCat(http_status)}).Increment();
  upstream_latency_->Observe(absl::ToDoubleSeconds(latency));
}

void ServerMetrics::OnNotSent(absl::string_view reason) {
  not_sent_->WithLabels({std::string(reason)}).Increment();
}

}  // namespace verdictd
