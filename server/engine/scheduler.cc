#include "server/engine/scheduler.h"

#include <utility>

#include "absl/time/clock.h"

namespace verdictd {

ThreadScheduler::ThreadScheduler() : thread_([this] { Loop(); }) {}

ThreadScheduler::~ThreadScheduler() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void ThreadScheduler::RunAfter(absl::Duration delay, std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push(Task{absl::Now() + delay, next_seq_++, std::move(task)});
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
    if (absl::Now() < due) {
      // Wakes early when a sooner task arrives or on shutdown; the loop re-checks.
      const size_t size = tasks_.size();
      struct Args {
        ThreadScheduler* self;
        size_t size;
      } args{this, size};
      mu_.AwaitWithDeadline(absl::Condition(
                                +[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                  return a->self->stopping_ || a->self->tasks_.size() != a->size;
                                },
                                &args),
                            due);
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
