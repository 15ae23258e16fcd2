#include "server/engine/scheduler.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

TEST(ThreadSchedulerTest, RunsTasksInDueOrder) {
  ThreadScheduler scheduler;
  absl::Mutex mu;
  std::vector<int> order;
  absl::Notification done;
  scheduler.RunAfter(absl::Milliseconds(60), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(3);
    done.Notify();
  });
  scheduler.RunAfter(absl::Milliseconds(20), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(2);
  });
  scheduler.RunAfter(absl::ZeroDuration(), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(1);
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  absl::MutexLock lock(&mu);
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
}

TEST(ThreadSchedulerTest, DestructionDropsPendingTasks) {
  std::atomic<bool> ran{false};
  {
    ThreadScheduler scheduler;
    scheduler.RunAfter(absl::Hours(1), [&] { ran = true; });
  }
  EXPECT_FALSE(ran);
}

TEST(FakeSchedulerTest, RunsOnlyDueTasks) {
  FakeClock clock;
  FakeScheduler scheduler(clock);
  int ran = 0;
  scheduler.RunAfter(absl::Seconds(10), [&] { ++ran; });
  scheduler.RunAfter(absl::Seconds(5), [&] {
    ++ran;
    scheduler.RunAfter(absl::ZeroDuration(), [&] { ++ran; });
  });
  EXPECT_EQ(scheduler.RunDue(), 0);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(scheduler.RunDue(), 2);
  EXPECT_EQ(ran, 2);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(scheduler.RunDue(), 1);
  EXPECT_EQ(scheduler.pending(), 0u);
}

}  // namespace
}  // namespace verdictd
