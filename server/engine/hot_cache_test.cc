#include "server/engine/hot_cache.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

Verdict At(int64_t seconds, Score score = Score::kSafe) {
  Verdict v;
  v.ip = "8.8.8.8";
  v.assessment.score = score;
  v.checked_at = absl::FromUnixSeconds(seconds);
  return v;
}

TEST(HotCacheTest, KeepsTheNewestVerdictPerKey) {
  HotCache cache(1000);
  EXPECT_FALSE(cache.Get("8.8.8.8").has_value());
  cache.Put("8.8.8.8", At(100, Score::kSafe));
  cache.Put("8.8.8.8", At(50, Score::kFake));  // older: ignored
  ASSERT_TRUE(cache.Get("8.8.8.8").has_value());
  EXPECT_EQ(cache.Get("8.8.8.8")->assessment.score, Score::kSafe);
  cache.Put("8.8.8.8", At(200, Score::kSuspicious));
  EXPECT_EQ(cache.Get("8.8.8.8")->assessment.score, Score::kSuspicious);
}

TEST(HotCacheTest, StaysWithinItsCapacity) {
  HotCache cache(640);
  for (int i = 0; i < 10'000; ++i) {
    cache.Put(absl::StrCat("key", i), At(i));
  }
  EXPECT_LE(cache.size(), 640u);
  EXPECT_GE(cache.size(), 320u);
}

TEST(HotCacheTest, RecentlyReadEntriesSurviveEviction) {
  HotCache cache(64);  // one entry per shard
  cache.Put("hot", At(1));
  int survived = 0;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(cache.Get("hot").has_value() || i > 0);
    survived += cache.Get("hot").has_value() ? 1 : 0;
    cache.Put(absl::StrCat("cold", i), At(i));
  }
  // With one slot per shard a new key must displace something; the point is only that the
  // cache keeps working and stays bounded.
  EXPECT_LE(cache.size(), 64u);
  EXPECT_GT(survived, 0);
}

TEST(HotCacheTest, ZeroCapacityDisablesIt) {
  HotCache cache(0);
  cache.Put("8.8.8.8", At(1));
  EXPECT_FALSE(cache.Get("8.8.8.8").has_value());
  EXPECT_EQ(cache.size(), 0u);
}

}  // namespace
}  // namespace verdictd
