#include "common/duration.h"

#include <string>

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

TEST(ParseDurationTest, MessagesQuoteTheInputEscapedAndCut) {
  constexpr char kTail[] = " is not a non-negative duration (examples: 7d, 24h, 90s, 1h30m, 250ms)";
  EXPECT_EQ(ParseDuration("abc").status().message(), std::string("\"abc\"") + kTail);
  EXPECT_EQ(ParseDuration("1h\n\x1b[2J").status().message(),
            std::string("\"1h\\n\\x1b[2J\"") + kTail);
  EXPECT_EQ(ParseDuration(std::string(1 << 20, '9')).status().message(),
            "\"" + std::string(64, '9') + "\"..." + kTail);
}

TEST(DurationToStringTest, WholeDaysAsDays) {
  EXPECT_EQ(DurationToString(absl::Hours(24 * 7)), "7d");
  EXPECT_EQ(DurationToString(absl::Hours(25)), "25h");
  EXPECT_EQ(DurationToString(absl::Seconds(2)), "2s");
  EXPECT_EQ(DurationToString(absl::ZeroDuration()), "0");
}

}  // namespace
}  // namespace verdictd
