#ifndef VERDICTD_SERVER_SERVICE_TIMED_STORE_H_
#define VERDICTD_SERVER_SERVICE_TIMED_STORE_H_

#include "server/metrics/metrics.h"
#include "storage/verdict_store.h"

namespace verdictd {

// A VerdictStore that forwards to another and records the latency of the check path's lookup
// (LatestFor) in a histogram.
class TimedStore : public VerdictStore {
 public:
  // `inner` and `latency` must outlive this object.
  TimedStore(VerdictStore& inner, metrics::Histogram& latency) : inner_(inner), latency_(latency) {}

  absl::StatusOr<std::optional<Verdict>> LatestFor(
      absl::string_view ip, std::optional<absl::string_view> user_agent) override {
    const absl::Time start = absl::Now();
    absl::StatusOr<std::optional<Verdict>> result = inner_.LatestFor(ip, user_agent);
    latency_.Observe(absl::ToDoubleSeconds(absl::Now() - start));
    return result;
  }
  void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                  ClickCallback done) override {
    inner_.BeginClick(std::move(caller), std::move(ip), requested_at, std::move(done));
  }
  void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) override {
    inner_.CompleteClick(click_id, std::move(completion), std::move(done));
  }
  absl::StatusOr<std::vector<HistoryEntry>> History(const HistoryQuery& query) override {
    return inner_.History(query);
  }
  void AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) override {
    inner_.AddUsage(std::move(deltas), std::move(done));
  }
  absl::StatusOr<std::vector<DailyUsage>> Usage(absl::string_view caller, absl::Time since,
                                                absl::Time until) override {
    return inner_.Usage(caller, since, until);
  }
  absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> ClicksSince(
      absl::Time since) override {
    return inner_.ClicksSince(since);
  }
  void PruneBefore(absl::Time cutoff, int max_rows,
                   std::function<void(absl::StatusOr<int64_t>)> done) override {
    inner_.PruneBefore(cutoff, max_rows, std::move(done));
  }
  absl::StatusOr<std::string> Secret(absl::string_view name, size_t bytes) override {
    return inner_.Secret(name, bytes);
  }
  absl::Status Ping() override { return inner_.Ping(); }
  void Flush() override { inner_.Flush(); }

 private:
  VerdictStore& inner_;
  metrics::Histogram& latency_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_SERVICE_TIMED_STORE_H_
