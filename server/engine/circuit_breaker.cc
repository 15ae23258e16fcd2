#include "server/engine/circuit_breaker.h"

namespace verdictd {

CircuitBreaker::CircuitBreaker(CircuitBreakerOptions options, const Clock& clock)
    : options_(options), clock_(clock) {}

bool CircuitBreaker::Allow() {
  absl::MutexLock lock(&mu_);
  switch (state_) {
    case State::kClosed:
      return true;
    case State::kOpen:
      if (clock_.Now() < open_until_) {
        return false;
      }
      state_ = State::kHalfOpen;
      probe_in_flight_ = true;
      return true;
    case State::kHalfOpen:
      if (probe_in_flight_) {
        return false;
      }
      probe_in_flight_ = true;
      return true;
  }
  return false;
}

bool CircuitBreaker::WouldAllow() const {
  absl::MutexLock lock(&mu_);
  switch (state_) {
    case State::kClosed:
      return true;
    case State::kOpen:
      return clock_.Now() >= open_until_;
    case State::kHalfOpen:
      return !probe_in_flight_;
  }
  return false;
}

void CircuitBreaker::RecordSuccess() {
  absl::MutexLock lock(&mu_);
  consecutive_failures_ = 0;
  probe_in_flight_ = false;
  state_ = State::kClosed;
}

void CircuitBreaker::RecordFailure() {
  absl::MutexLock lock(&mu_);
  ++consecutive_failures_;
  const bool was_probe = state_ == State::kHalfOpen;
  probe_in_flight_ = false;
  if (options_.failure_threshold > 0 &&
      (was_probe || consecutive_failures_ >= options_.failure_threshold)) {
    state_ = State::kOpen;
    open_until_ = clock_.Now() + options_.open_for;
  }
}

void CircuitBreaker::Cancel() {
  absl::MutexLock lock(&mu_);
  probe_in_flight_ = false;
}

CircuitBreaker::State CircuitBreaker::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

}  // namespace verdictd
