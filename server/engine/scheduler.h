#ifndef VERDICTD_SERVER_ENGINE_SCHEDULER_H_
#define VERDICTD_SERVER_ENGINE_SCHEDULER_H_

#include <functional>
#include <memory>
#include <queue>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace verdictd {

// Runs callbacks later. Implementations are thread-safe; callbacks run on a thread owned by the
// scheduler, one at a time, and must not block for long.
class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Runs `task` once `delay` has passed on the scheduler's clock.
  virtual void RunAfter(absl::Duration delay, std::function<void()> task) = 0;
};

// A scheduler with one thread. Tasks are due on `clock` (not owned; must outlive the
// scheduler): with a FakeClock a task runs, on the scheduler's thread, as soon as the clock is
// moved past its time, so tests never wait on the real clock. Tasks still pending at destruction
// are dropped.
class ThreadScheduler : public Scheduler {
 public:
  explicit ThreadScheduler(Clock* clock = Clock::Real());
  ~ThreadScheduler() override;
  void RunAfter(absl::Duration delay, std::function<void()> task) override;

 private:
  struct Task {
    absl::Time due;
    uint64_t seq;
    std::function<void()> run;
    bool operator>(const Task& o) const { return due != o.due ? due > o.due : seq > o.seq; }
  };
  void Loop();

  Clock* const clock_;
  absl::Mutex mu_;
  std::priority_queue<Task, std::vector<Task>, std::greater<Task>> tasks_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  // Counts the times the clock was moved by hand: a change wakes the loop to re-check.
  uint64_t clock_moves_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int clock_listener_ = 0;
  std::thread thread_;
};

// A scheduler for tests, driven by a FakeClock: RunDue() runs every task whose time has come,
// on the calling thread.
class FakeScheduler : public Scheduler {
 public:
  explicit FakeScheduler(const FakeClock& clock) : clock_(clock) {}
  void RunAfter(absl::Duration delay, std::function<void()> task) override;
  // Runs due tasks (including ones they schedule that are already due); returns how many ran.
  int RunDue();
  size_t pending() const;

 private:
  struct Task {
    absl::Time due;
    std::function<void()> run;
  };
  const FakeClock& clock_;
  mutable absl::Mutex mu_;
  std::vector<Task> tasks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_SCHEDULER_H_
