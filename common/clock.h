#ifndef VERDICTD_COMMON_CLOCK_H_
#define VERDICTD_COMMON_CLOCK_H_

#include <functional>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace verdictd {

// The only way code in this project reads the time, so tests can move it by hand.
// Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // Registers `moved`, called each time the clock is moved by hand, so that a thread waiting for
  // a time on this clock (ThreadScheduler, the /metrics responder) re-checks instead of sleeping
  // on the real clock. The real clock moves continuously and never calls it. `moved` runs on the
  // thread that moved the clock; it must not block or register listeners. Returns a handle for
  // RemoveListener, after which `moved` is not running and is never called again.
  virtual int AddListener(std::function<void()> moved) { return 0; }
  virtual void RemoveListener(int handle) {}

  // The process-wide real clock. Never null, never deleted.
  static Clock* Real();
};

// A clock that moves only when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000)) : now_(start) {}

  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    {
      absl::MutexLock lock(&mu_);
      now_ += d;
    }
    Moved();
  }
  void Set(absl::Time t) {
    {
      absl::MutexLock lock(&mu_);
      now_ = t;
    }
    Moved();
  }

  int AddListener(std::function<void()> moved) override {
    absl::MutexLock lock(&listeners_mu_);
    listeners_.emplace(++last_listener_, std::move(moved));
    return last_listener_;
  }
  void RemoveListener(int handle) override {
    absl::MutexLock lock(&listeners_mu_);
    listeners_.erase(handle);
  }

 private:
  // Listeners run under listeners_mu_ (so RemoveListener waits for a running one) but not under
  // mu_: a listener typically takes its own lock, and its owner reads Now() under that lock.
  void Moved() {
    absl::MutexLock lock(&listeners_mu_);
    for (const auto& [handle, moved] : listeners_) {
      moved();
    }
  }

  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Mutex listeners_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::map<int, std::function<void()>> listeners_ ABSL_GUARDED_BY(listeners_mu_);
  int last_listener_ ABSL_GUARDED_BY(listeners_mu_) = 0;
};

}  // namespace verdictd

#endif  // VERDICTD_COMMON_CLOCK_H_
