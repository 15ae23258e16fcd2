#include "server/engine/circuit_breaker.h"

#include "absl/time/time.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

CircuitBreakerOptions Options(int threshold, absl::Duration open_for = absl::Seconds(30)) {
  CircuitBreakerOptions options;
  options.failure_threshold = threshold;
  options.open_for = open_for;
  return options;
}

TEST(CircuitBreakerUnitTest, OpensAfterConsecutiveFailuresOnly) {
  FakeClock clock;
  CircuitBreaker breaker(Options(3), clock);
  breaker.RecordFailure();
  breaker.RecordFailure();
  breaker.RecordSuccess();  // the count starts again
  breaker.RecordFailure();
  breaker.RecordFailure();
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kClosed);
  EXPECT_TRUE(breaker.Allow());
  breaker.RecordFailure();
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kOpen);
  EXPECT_FALSE(breaker.Allow());
  EXPECT_FALSE(breaker.WouldAllow());
}

// WouldAllow answers for a miss that will wait in a queue: it never takes the half-open probe,
// so the probe is still there when that miss (or another) calls Allow at its turn.
TEST(CircuitBreakerUnitTest, WouldAllowNeverUsesUpTheProbe) {
  FakeClock clock;
  CircuitBreaker breaker(Options(1, absl::Seconds(10)), clock);
  EXPECT_TRUE(breaker.WouldAllow());
  breaker.RecordFailure();
  EXPECT_FALSE(breaker.WouldAllow());
  clock.Advance(absl::Seconds(10));
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(breaker.WouldAllow()) << "asking again changes nothing";
  }
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kOpen) << "only Allow moves it to half-open";
  EXPECT_TRUE(breaker.Allow()) << "the probe";
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kHalfOpen);
  EXPECT_FALSE(breaker.WouldAllow()) << "the probe is out";
  EXPECT_FALSE(breaker.Allow());
  breaker.Cancel();  // the probe was not sent after all
  EXPECT_TRUE(breaker.WouldAllow());
  EXPECT_TRUE(breaker.Allow());
  breaker.RecordSuccess();
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kClosed);
  EXPECT_TRUE(breaker.WouldAllow());
}

TEST(CircuitBreakerUnitTest, ZeroThresholdNeverOpens) {
  FakeClock clock;
  CircuitBreaker breaker(Options(0), clock);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(breaker.Allow());
    breaker.RecordFailure();
  }
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kClosed);
  EXPECT_TRUE(breaker.WouldAllow());
}

}  // namespace
}  // namespace verdictd
