#include "server/engine/scheduler.h"

#include <utility>

namespace verdictd {

ThreadScheduler::ThreadScheduler(Clock* clock) : clock_(clock) {
  clock_listener_ = clock_->AddListener([this] {
    absl::MutexLock lock(&mu_);
    ++clock_moves_;
  });
  thread_ = std::thread([this] { Loop(); });
}

ThreadScheduler::~ThreadScheduler() {
  clock_->RemoveListener(clock_listener_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void ThreadScheduler::RunAfter(absl::Duration delay, std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push(Task{clock_->Now() + delay, next_seq_++, std::move(task)});
}

void ThreadScheduler::Loop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    if (tasks_.empty()) {
      mu_.Await(absl::Condition(
          +[](ThreadScheduler* s)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->stopping_ || !s->tasks_.empty(); },
          this));
      continue;
    }
    const absl::Time due = tasks_.top().due;
    const absl::Time now = clock_->Now();
    if (now < due) {
      // Waits on the real clock for as long as `clock` has to go (the same for the real clock);
      // wakes early when a sooner task arrives, the clock is moved by hand, or on shutdown; the
      // loop re-checks.
      struct Args {
        ThreadScheduler* self;
        size_t size;
        uint64_t clock_moves;
      } args{this, tasks_.size(), clock_moves_};
      mu_.AwaitWithTimeout(absl::Condition(
                               +[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                 return a->self->stopping_ || a->self->tasks_.size() != a->size ||
                                        a->self->clock_moves_ != a->clock_moves;
                               },
                               &args),
                           due - now);
      continue;
    }
    Task task = tasks_.top();
    tasks_.pop();
    mu_.Unlock();
    task.run();
    mu_.Lock();
  }
}

void FakeScheduler::RunAfter(absl::Duration delay, std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(Task{clock_.Now() + delay, std::move(task)});
}

int FakeScheduler::RunDue() {
  int ran = 0;
  while (true) {
    std::function<void()> run;
    {
      absl::MutexLock lock(&mu_);
      const absl::Time now = clock_.Now();
      auto best = tasks_.end();
      for (auto it = tasks_.begin(); it != tasks_.end(); ++it) {
        if (it->due <= now && (best == tasks_.end() || it->due < best->due)) {
          best = it;
        }
      }
      if (best == tasks_.end()) {
        return ran;
      }
      run = std::move(best->run);
      tasks_.erase(best);
    }
    run();
    ++ran;
  }
}

size_t FakeScheduler::pending() const {
  absl::MutexLock lock(&mu_);
  return tasks_.size();
}

}  // namespace verdictd
