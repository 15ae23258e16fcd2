#include "common/duration.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

TEST(ParseDurationTest, AcceptsAbslUnitsAndDays) {
  EXPECT_EQ(*ParseDuration("24h"), absl::Hours(24));
  EXPECT_EQ(*ParseDuration("7d"), absl::Hours(24 * 7));
  EXPECT_EQ(*ParseDuration("0d"), absl::ZeroDuration());
  EXPECT_EQ(*ParseDuration("1h30m"), absl::Minutes(90));
  EXPECT_EQ(*ParseDuration("250ms"), absl::Milliseconds(250));
  EXPECT_EQ(*ParseDuration("0"), absl::ZeroDuration());
}

TEST(ParseDurationTest, RejectsJunkNegativeAndInfinite) {
  for (const char* bad : {"", "d", "-1d", "+1d", "1.5d", "-5s", "inf", "24", "1 h", " 1h", "1h ",
                          "abc", "99999999999d"}) {
    SCOPED_TRACE(bad);
    absl::StatusOr<absl::Duration> d = ParseDuration(bad);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(DurationToStringTest, WholeDaysAsDays) {
  EXPECT_EQ(DurationToString(absl::Hours(24 * 7)), "7d");
  EXPECT_EQ(DurationToString(absl::Hours(25)), "25h");
  EXPECT_EQ(DurationToString(absl::Seconds(2)), "2s");
  EXPECT_EQ(DurationToString(absl::ZeroDuration()), "0");
}

}  // namespace
}  // namespace verdictd
