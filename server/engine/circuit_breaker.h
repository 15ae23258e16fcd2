#ifndef VERDICTD_SERVER_ENGINE_CIRCUIT_BREAKER_H_
#define VERDICTD_SERVER_ENGINE_CIRCUIT_BREAKER_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace verdictd {

struct CircuitBreakerOptions {
  // Consecutive failed requests that open the breaker. 0 disables it. Default: 5.
  int failure_threshold = 5;
  // How long it stays open before letting one probe through. Default: 30 s.
  absl::Duration open_for = absl::Seconds(30);
};

// Stops sending to an upstream that keeps failing: closed → (threshold consecutive failures)
// → open (fail fast) → (open_for elapsed) → half-open (one probe) → closed on success, open
// again on failure. Thread-safe.
class CircuitBreaker {
 public:
  enum class State { kClosed, kOpen, kHalfOpen };

  CircuitBreaker(CircuitBreakerOptions options, const Clock& clock);

  // Whether a request may be sent now. In half-open state it admits exactly one probe until
  // that probe's outcome is recorded. Every admitted request must be followed by exactly one
  // RecordSuccess or RecordFailure.
  bool Allow();
  // Whether Allow() would admit a request now, without admitting one (for a request that will
  // wait in a queue first and call Allow() when it is about to be sent).
  bool WouldAllow() const;
  void RecordSuccess();
  void RecordFailure();
  // An admitted request was not sent after all: frees a half-open probe slot, learns nothing.
  void Cancel();

  State state() const;

 private:
  const CircuitBreakerOptions options_;
  const Clock& clock_;
  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kClosed;
  int consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time open_until_ ABSL_GUARDED_BY(mu_);
  bool probe_in_flight_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_CIRCUIT_BREAKER_H_
