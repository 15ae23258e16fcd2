#ifndef VERDICTD_SERVER_SERVICE_TIMED_STORE_H_
#define VERDICTD_SERVER_SERVICE_TIMED_STORE_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/metrics/metrics.h"
#include "storage/verdict_store.h"

namespace verdictd {

// A VerdictStore that forwards to another and records the latency of the check path's lookup
// (LatestFor) in a histogram.
class TimedStore : public VerdictStore {
 public:
  // `inner` and `latency` must outlive this object.
  TimedStore(VerdictStore& inner, metrics::Histogram& latency) : inner_(inner), latency_(latency) {}

  // Observes the time from issue to callback: what a check waits for, queueing included.
  void LatestFor(std::string ip, std::optional<std::string> user_agent,
                 ReadCallback<std::optional<Verdict>> done) override {
    const absl::Time start = absl::Now();
    inner_.LatestFor(
        std::move(ip), std::move(user_agent),
        [this, start, done = std::move(done)](absl::StatusOr<std::optional<Verdict>> result) {
          latency_.Observe(absl::ToDoubleSeconds(absl::Now() - start));
          done(std::move(result));
        });
  }
  void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                  ClickCallback done) override {
    inner_.BeginClick(std::move(caller), std::move(ip), requested_at, std::move(done));
  }
  void ClaimClick(ClickClaim claim, ReadCallback<ClaimResult> done) override {
    inner_.ClaimClick(std::move(claim), std::move(done));
  }
  void SetFlightListener(FlightListener* listener) override { inner_.SetFlightListener(listener); }
  void SetAllowanceMark(AllowanceMark mark, DoneCallback done) override {
    inner_.SetAllowanceMark(mark, std::move(done));
  }
  void TryLease(std::string name, std::string owner, absl::Duration lease,
                ReadCallback<bool> done) override {
    inner_.TryLease(std::move(name), std::move(owner), lease, std::move(done));
  }
  void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) override {
    inner_.CompleteClick(click_id, std::move(completion), std::move(done));
  }
  void History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) override {
    inner_.History(std::move(query), std::move(done));
  }
  void Clicks(ClickQuery query, ReadCallback<std::vector<ClickRecord>> done) override {
    inner_.Clicks(std::move(query), std::move(done));
  }
  void AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) override {
    inner_.AddUsage(std::move(deltas), std::move(done));
  }
  void Usage(std::string caller, absl::Time since, absl::Time until,
             ReadCallback<std::vector<DailyUsage>> done) override {
    inner_.Usage(std::move(caller), since, until, std::move(done));
  }
  void ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) override {
    inner_.ClicksSince(since, std::move(done));
  }
  void PruneBefore(absl::Time cutoff, int max_rows,
                   std::function<void(absl::StatusOr<int64_t>)> done) override {
    inner_.PruneBefore(cutoff, max_rows, std::move(done));
  }
  void Secret(std::string name, size_t bytes, ReadCallback<std::string> done) override {
    inner_.Secret(std::move(name), bytes, std::move(done));
  }
  void Ping(DoneCallback done) override { inner_.Ping(std::move(done)); }
  void Flush() override { inner_.Flush(); }

 private:
  VerdictStore& inner_;
  metrics::Histogram& latency_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_SERVICE_TIMED_STORE_H_
