#include "server/engine/scheduler.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

// The thread scheduler's tests move a FakeClock by hand and wait for the tasks' own
// notifications: nothing waits on the real clock except as a bound on a hang.
constexpr absl::Duration kHang = absl::Seconds(30);

TEST(ThreadSchedulerTest, RunsTasksInDueOrderOfItsClock) {
  FakeClock clock;
  ThreadScheduler scheduler(&clock);
  absl::Mutex mu;
  std::vector<int> order;
  absl::Notification first, second, third;
  scheduler.RunAfter(absl::Milliseconds(60), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(3);
    third.Notify();
  });
  scheduler.RunAfter(absl::Milliseconds(20), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(2);
    second.Notify();
  });
  scheduler.RunAfter(absl::ZeroDuration(), [&] {
    absl::MutexLock lock(&mu);
    order.push_back(1);
    first.Notify();
  });
  ASSERT_TRUE(first.WaitForNotificationWithTimeout(kHang));
  clock.Advance(absl::Milliseconds(20));
  ASSERT_TRUE(second.WaitForNotificationWithTimeout(kHang));
  {
    absl::MutexLock lock(&mu);
    EXPECT_THAT(order, ::testing::ElementsAre(1, 2)) << "the 60 ms task ran at 20 ms";
  }
  clock.Advance(absl::Milliseconds(40));
  ASSERT_TRUE(third.WaitForNotificationWithTimeout(kHang));
  absl::MutexLock lock(&mu);
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
}

TEST(ThreadSchedulerTest, AnHourOnItsClockIsNoWaitOnTheRealOne) {
  FakeClock clock;
  ThreadScheduler scheduler(&clock);
  absl::Notification early, late;
  scheduler.RunAfter(absl::Minutes(59), [&] { early.Notify(); });
  scheduler.RunAfter(absl::Hours(1), [&] { late.Notify(); });
  clock.Advance(absl::Minutes(59));
  ASSERT_TRUE(early.WaitForNotificationWithTimeout(kHang));
  EXPECT_FALSE(late.HasBeenNotified());  // due a minute later on the clock; runs in due order
  clock.Advance(absl::Minutes(1));
  EXPECT_TRUE(late.WaitForNotificationWithTimeout(kHang));
}

TEST(ThreadSchedulerTest, TaskScheduledFromATaskRunsWhenDue) {
  FakeClock clock;
  ThreadScheduler scheduler(&clock);
  absl::Notification outer, inner;
  scheduler.RunAfter(absl::Seconds(1), [&] {
    scheduler.RunAfter(absl::Seconds(1), [&] { inner.Notify(); });
    outer.Notify();
  });
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(outer.WaitForNotificationWithTimeout(kHang));
  EXPECT_FALSE(inner.HasBeenNotified());
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(inner.WaitForNotificationWithTimeout(kHang));
}

TEST(ThreadSchedulerTest, RealClockRunsADueTask) {
  ThreadScheduler scheduler;  // Clock::Real()
  absl::Notification ran;
  scheduler.RunAfter(absl::ZeroDuration(), [&] { ran.Notify(); });
  EXPECT_TRUE(ran.WaitForNotificationWithTimeout(kHang));
}

TEST(ThreadSchedulerTest, DestructionDropsPendingTasks) {
  FakeClock clock;
  std::atomic<bool> ran{false};
  {
    ThreadScheduler scheduler(&clock);
    scheduler.RunAfter(absl::Hours(1), [&] { ran = true; });
  }
  clock.Advance(absl::Hours(2));  // no listener left: the scheduler removed itself
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
