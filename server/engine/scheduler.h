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

// A scheduler with one thread and the real clock. Tasks still pending at destruction are
// dropped.
class ThreadScheduler : public Scheduler {
 public:
  ThreadScheduler();
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

  absl::Mutex mu_;
  std::priority_queue<Task, std::vector<Task>, std::greater<Task>> tasks_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
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
