#include "storage/verdict_store_contract_test.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/verdict.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/verdict_store.h"

namespace verdictd {

void VerdictStoreContractTest::SetUp() {
  std::string dir = ::testing::TempDir() + "verdict_store_contract_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  dir_ = dir;
}

void VerdictStoreContractTest::TearDown() { std::filesystem::remove_all(dir_); }

std::unique_ptr<VerdictStore> VerdictStoreContractTest::Open(Clock* clock) {
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = GetParam().open(dir_, clock);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::string_literals;
using namespace store_test;

TEST_P(VerdictStoreContractTest, LatestForReturnsEveryFieldOfAnAppendedVerdict) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Verdict v = MakeVerdict("203.0.113.7", kT0, "Mozilla/5.0 (X11)", "bob");
  v.assessment = {Score::kFake, /*proxy=*/true, /*tor=*/false, /*vpn=*/true, /*crawler=*/false,
                  /*bot=*/true};
  Append(*store, v);

  absl::StatusOr<std::optional<Verdict>> got = LatestForSync(*store, "203.0.113.7", std::nullopt);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  const Verdict& g = **got;
  EXPECT_EQ(g.ip, "203.0.113.7");
  EXPECT_EQ(g.assessment, v.assessment);
  EXPECT_EQ(g.checked_at, kT0);  // to the microsecond
  EXPECT_EQ(g.user_agent, "Mozilla/5.0 (X11)");
  EXPECT_EQ(g.caller, "bob");
}

TEST_P(VerdictStoreContractTest, NewestCheckedAtWinsThenHighestId) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(1), "ua", "one"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), "ua", "three"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(2), "ua", "two"));
  Append(*store, MakeVerdict("192.0.2.99", kT0 + absl::Seconds(9), "ua", "other ip"));

  auto got = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->caller, "three");

  // Same checked_at: the later append wins.
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), "ua", "three again"));
  got = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->caller, "three again");
}

TEST_P(VerdictStoreContractTest, LatestForFiltersByExactUserAgent) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(1), "agent-a"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(2), "agent-b"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), ""));

  auto a = LatestForSync(*store, "192.0.2.1", absl::string_view("agent-a"));
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ((*a)->user_agent, "agent-a");
  EXPECT_EQ((*a)->checked_at, kT0 + absl::Seconds(1));

  auto empty = LatestForSync(*store, "192.0.2.1", absl::string_view());
  ASSERT_TRUE(empty.ok() && empty->has_value());
  EXPECT_EQ((*empty)->user_agent, "");

  auto any = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(any.ok() && any->has_value());
  EXPECT_EQ((*any)->checked_at, kT0 + absl::Seconds(3));

  auto none = LatestForSync(*store, "192.0.2.1", absl::string_view("agent-c"));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_P(VerdictStoreContractTest, UnknownIpIsNullopt) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0));
  auto got = LatestForSync(*store, "192.0.2.2", std::nullopt);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->has_value());
}

TEST_P(VerdictStoreContractTest, DataSurvivesReopen) {
  {
    std::unique_ptr<VerdictStore> store = Open();
    ASSERT_NE(store, nullptr);
    Append(*store, MakeVerdict("2001:db8::1", kT0, "ua", "carol"));
  }
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  auto got = LatestForSync(*store, "2001:db8::1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->caller, "carol");
  EXPECT_EQ((*got)->checked_at, kT0);
}

TEST_P(VerdictStoreContractTest, UserAgentBytesRoundTripExactly) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const std::string ua = "Mozilla/5.0\0tail \xff\xfe\x80 end"s;
  ASSERT_EQ(ua.size(), 24u);  // the NUL did not end the literal
  Append(*store, MakeVerdict("192.0.2.1", kT0, ua));

  auto got = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->user_agent, ua);

  auto filtered = LatestForSync(*store, "192.0.2.1", absl::string_view(ua));
  ASSERT_TRUE(filtered.ok() && filtered->has_value());
  EXPECT_EQ((*filtered)->user_agent, ua);

  // What a C string would truncate it to is a different user agent.
  auto prefix = LatestForSync(*store, "192.0.2.1", absl::string_view("Mozilla/5.0"));
  ASSERT_TRUE(prefix.ok());
  EXPECT_FALSE(prefix->has_value());
}

TEST_P(VerdictStoreContractTest, CompleteClickForUnknownIdIsNotFound) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  ClickCompletion completion;
  completion.outcome = ClickOutcome::kUpstreamError;
  completion.error = "timeout";
  absl::Status status = CompleteClickSync(*store, 12345, std::move(completion));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
}

TEST_P(VerdictStoreContractTest, CompletedClickCannotBeCompletedAgain) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const int64_t id = Append(*store, MakeVerdict("192.0.2.1", kT0));
  ClickCompletion again;
  again.outcome = ClickOutcome::kNotSent;
  absl::Status status = CompleteClickSync(*store, id, std::move(again));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

TEST_P(VerdictStoreContractTest, ReadsRunConcurrentlyWithWrites) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0));
  constexpr int kReaders = 4;
  absl::Notification stop;
  std::vector<std::thread> readers;
  std::vector<int> failures(kReaders, 0);
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      while (!stop.HasBeenNotified()) {
        auto got = LatestForSync(*store, "192.0.2.1", absl::string_view("ua"));
        if (!got.ok() || !got->has_value()) {
          ++failures[r];
        }
      }
    });
  }
  for (int i = 1; i <= 50; ++i) {
    Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(i)));
  }
  stop.Notify();
  for (std::thread& t : readers) {
    t.join();
  }
  EXPECT_THAT(failures, ::testing::Each(0));
  auto got = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->checked_at, kT0 + absl::Seconds(50));
}

TEST_P(VerdictStoreContractTest, HistoryIsNewestFirstWithTiesBrokenByIdAndAllFields) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(1), "ua", "a"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), "ua", "b"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(2), "ua", "c"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), "ua", "d"));  // tie with b
  Append(*store, MakeVerdict("192.0.2.9", kT0 + absl::Seconds(9), "ua", "other ip"));

  HistoryQuery query;
  query.ip = "192.0.2.1";
  absl::StatusOr<std::vector<HistoryEntry>> got = HistorySync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Callers(*got), ElementsAre("d", "b", "c", "a"));
  EXPECT_GT((*got)[0].id, (*got)[1].id);
  const Verdict& d = (*got)[0].verdict;
  EXPECT_EQ(d.ip, "192.0.2.1");
  EXPECT_EQ(d.checked_at, kT0 + absl::Seconds(3));
  EXPECT_EQ(d.user_agent, "ua");
  EXPECT_EQ(d.assessment, MakeVerdict("", kT0).assessment);

  query.limit = 2;
  got = HistorySync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Callers(*got), ElementsAre("d", "b"));

  query.ip = "192.0.2.2";
  got = HistorySync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());

  query.limit = 0;
  EXPECT_EQ(HistorySync(*store, query).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(VerdictStoreContractTest, HistorySinceIsInclusiveAndUntilExclusive) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  for (int i = 1; i <= 5; ++i) {
    Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(i), "ua", std::to_string(i)));
  }
  HistoryQuery query;
  query.ip = "192.0.2.1";
  query.since = kT0 + absl::Seconds(2);
  query.until = kT0 + absl::Seconds(4);
  auto got = HistorySync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Callers(*got), ElementsAre("3", "2"));

  // Sub-microsecond bounds: stored times are whole microseconds, compared exactly.
  query.since = kT0 + absl::Seconds(2) + absl::Nanoseconds(1);
  query.until = kT0 + absl::Seconds(4) + absl::Nanoseconds(1);
  got = HistorySync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Callers(*got), ElementsAre("4", "3"));

  query.since = kT0 + absl::Seconds(4);
  query.until = kT0 + absl::Seconds(4);
  got = HistorySync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());

  query.since = absl::InfinitePast();
  query.until = absl::InfiniteFuture();
  got = HistorySync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Callers(*got), ElementsAre("5", "4", "3", "2", "1"));
}

TEST_P(VerdictStoreContractTest, HistoryPagesReturnEachEntryExactlyOnce) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  // Ties straddle the page boundaries (limit 3): c,d,e share a time, and so do f,g.
  const int seconds[] = {1, 2, 3, 3, 3, 4, 4, 5};
  for (int i = 0; i < 8; ++i) {
    Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(seconds[i]), "ua",
                               std::string(1, static_cast<char>('a' + i))));
  }
  HistoryQuery query;
  query.ip = "192.0.2.1";
  query.since = kT0 + absl::Seconds(2);  // leaves out "a"
  query.limit = 3;
  std::vector<std::vector<std::string>> pages;
  for (int page = 0; page < 10; ++page) {
    auto got = HistorySync(*store, query);
    ASSERT_TRUE(got.ok()) << got.status();
    if (got->empty()) {
      break;
    }
    pages.push_back(Callers(*got));
    query.after = HistoryCursor{got->back().verdict.checked_at, got->back().id};
  }
  EXPECT_THAT(
      pages, ElementsAre(ElementsAre("h", "g", "f"), ElementsAre("e", "d", "c"), ElementsAre("b")));
}

TEST_P(VerdictStoreContractTest, AddUsageAccumulatesAcrossCallsAndRestarts) {
  const absl::CivilDay day(2024, 3, 1);
  {
    std::unique_ptr<VerdictStore> store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(AddUsageSync(*store, {{"alice", day, 1, 2}, {"bob", day, 0, 1}}).ok());
    ASSERT_TRUE(AddUsageSync(*store, {{"alice", day, 10, 20}, {"alice", day + 1, 0, 5}}).ok());
  }
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(AddUsageSync(*store, {{"alice", day, 100, 200}}).ok());
  EXPECT_EQ(AddUsageSync(*store, {{"alice", day, 1, 1}, {"alice", day, -1, 0}}).code(),
            absl::StatusCode::kInvalidArgument);  // and nothing of it applied

  auto got = UsageSync(*store, "", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 3u);
  EXPECT_EQ((*got)[0].caller, "alice");
  EXPECT_EQ((*got)[0].day, day);
  EXPECT_EQ((*got)[0].counts.cache_hits, 111);
  EXPECT_EQ((*got)[0].counts.requests, 222);
  EXPECT_EQ((*got)[0].counts.clicks, 0);
  EXPECT_EQ((*got)[1].caller, "alice");
  EXPECT_EQ((*got)[1].day, day + 1);
  EXPECT_EQ((*got)[1].counts.requests, 5);
  EXPECT_EQ((*got)[2].caller, "bob");
  EXPECT_EQ((*got)[2].counts.requests, 1);
}

TEST_P(VerdictStoreContractTest, UsageMergesLedgerClicksWithCountersPerCallerAndDay) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const absl::CivilDay d0(2024, 2, 29);
  const absl::CivilDay d1(2024, 3, 1);
  const absl::CivilDay d2(2024, 3, 2);
  // The last microsecond of d0 belongs to d0.
  Click(*store, "alice", At(absl::CivilSecond(d1)) - absl::Microseconds(1), ClickOutcome::kVerdict);
  Click(*store, "alice", At(absl::CivilSecond(d1)), ClickOutcome::kVerdict);
  Click(*store, "alice", At(absl::CivilSecond(d1)) + absl::Hours(5), ClickOutcome::kUpstreamError);
  Click(*store, "alice", At(absl::CivilSecond(d1)) + absl::Hours(6), ClickOutcome::kNotSent);
  Click(*store, "alice", At(absl::CivilSecond(d1)) + absl::Hours(7), ClickOutcome::kPending);
  Click(*store, "alice", At(absl::CivilSecond(d2)) + absl::Hours(23), ClickOutcome::kVerdict);
  Click(*store, "bob", At(absl::CivilSecond(d1)) + absl::Hours(1), ClickOutcome::kNotSent);
  Click(*store, "bob", At(absl::CivilSecond(d2)) + absl::Hours(1), ClickOutcome::kNotSent);
  ASSERT_TRUE(AddUsageSync(*store, {{"alice", d1, 2, 7}, {"bob", d1, 5, 6}}).ok());

  auto got = UsageSync(*store, "", At(absl::CivilSecond(d1)) + absl::Hours(12),
                       At(absl::CivilSecond(d2)) + absl::Microseconds(1));
  ASSERT_TRUE(got.ok()) << got.status();
  // bob's d2 had only a not-sent click: nothing, so no row.
  EXPECT_THAT(Rows(*got),
              ElementsAre(IsRow("alice", d1, 3, 1, 2, 7), IsRow("alice", d2, 1, 0, 0, 0),
                          IsRow("bob", d1, 0, 0, 5, 6)));

  // until is exclusive: midnight ends d1.
  got = UsageSync(*store, "alice", At(absl::CivilSecond(d1)), At(absl::CivilSecond(d2)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Rows(*got), ElementsAre(IsRow("alice", d1, 3, 1, 2, 7)));

  got = UsageSync(*store, "bob", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Rows(*got), ElementsAre(IsRow("bob", d1, 0, 0, 5, 6)));

  got = UsageSync(*store, "alice", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Rows(*got),
              ElementsAre(IsRow("alice", d0, 1, 0, 0, 0), IsRow("alice", d1, 3, 1, 2, 7),
                          IsRow("alice", d2, 1, 0, 0, 0)));

  got = UsageSync(*store, "carol", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());

  got = UsageSync(*store, "", At(absl::CivilSecond(d2)), At(absl::CivilSecond(d1)));  // backwards
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());
}

TEST_P(VerdictStoreContractTest, ClicksSinceCountsBilledClicksPerCaller) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Click(*store, "alice", kT0 - absl::Microseconds(1), ClickOutcome::kVerdict);  // too early
  Click(*store, "alice", kT0, ClickOutcome::kVerdict);
  Click(*store, "alice", kT0 + absl::Seconds(1), ClickOutcome::kUpstreamError);
  Click(*store, "alice", kT0 + absl::Seconds(2), ClickOutcome::kPending);
  Click(*store, "alice", kT0 + absl::Seconds(3), ClickOutcome::kNotSent);
  Click(*store, "bob", kT0 + absl::Seconds(4), ClickOutcome::kNotSent);
  Click(*store, "carol", kT0 + absl::Seconds(5), ClickOutcome::kPending);

  using Counts = std::vector<std::pair<std::string, int64_t>>;
  auto got = ClicksSinceSync(*store, kT0);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (Counts{{"alice", 3}, {"carol", 1}}));
  got = ClicksSinceSync(*store, absl::InfinitePast());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (Counts{{"alice", 4}, {"carol", 1}}));
  got = ClicksSinceSync(*store, kT0 + absl::Hours(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());
}

TEST_P(VerdictStoreContractTest, SecretIsStableAcrossReopenAndHasTheRequestedLength) {
  std::string first;
  {
    std::unique_ptr<VerdictStore> store = Open();
    ASSERT_NE(store, nullptr);
    absl::StatusOr<std::string> secret = SecretSync(*store, "page_token", 32);
    ASSERT_TRUE(secret.ok()) << secret.status();
    EXPECT_EQ(secret->size(), 32u);
    EXPECT_NE(*secret, std::string(32, '\0'));
    first = *secret;
    secret = SecretSync(*store, "page_token", 32);
    ASSERT_TRUE(secret.ok()) << secret.status();
    EXPECT_EQ(*secret, first);

    absl::StatusOr<std::string> other = SecretSync(*store, "other", 32);
    ASSERT_TRUE(other.ok()) << other.status();
    EXPECT_NE(*other, first);
    EXPECT_EQ(SecretSync(*store, "page_token", 16).status().code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(SecretSync(*store, "", 16).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(SecretSync(*store, "zero", 0).status().code(), absl::StatusCode::kInvalidArgument);
  }
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::string> again = SecretSync(*store, "page_token", 32);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, first);
}

TEST_P(VerdictStoreContractTest, RacingFirstSecretCallsAgree) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  std::unique_ptr<VerdictStore> second_process = Open();  // another process on the same data
  ASSERT_NE(second_process, nullptr);
  constexpr int kThreads = 6;
  std::vector<std::string> secrets(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      VerdictStore& s = t % 2 == 0 ? *store : *second_process;
      absl::StatusOr<std::string> secret = SecretSync(s, "shared", 24);
      EXPECT_TRUE(secret.ok()) << secret.status();
      secrets[t] = secret.value_or("");
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  EXPECT_EQ(secrets[0].size(), 24u);
  EXPECT_THAT(secrets, ::testing::Each(secrets[0]));
}

TEST_P(VerdictStoreContractTest, PingIsOkForAHealthyStore) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(PingSync(*store).ok()) << PingSync(*store);
  Append(*store, MakeVerdict("192.0.2.1", kT0));
  EXPECT_TRUE(PingSync(*store).ok()) << PingSync(*store);
}

// Every callback runs exactly once, on a thread of the store: never inline on the caller's,
// which may be a gRPC reactor thread or hold a lock the callback takes.
TEST_P(VerdictStoreContractTest, CallbacksRunOnceOnAStoreThreadNeverInline) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const int64_t click = Append(*store, MakeVerdict("192.0.2.1", kT0));
  const std::thread::id caller = std::this_thread::get_id();
  constexpr int kCalls = 10;
  absl::Mutex mu;
  std::vector<std::string> inline_calls;
  std::vector<int> answers(kCalls, 0);
  absl::BlockingCounter all(kCalls);
  auto answered = [&](int i, const char* name) {
    absl::MutexLock lock(&mu);
    if (std::this_thread::get_id() == caller) {
      inline_calls.push_back(name);
    }
    if (++answers[i] == 1) {
      all.DecrementCount();
    }
  };
  store->LatestFor("192.0.2.1", std::nullopt,
                   [&](absl::StatusOr<std::optional<Verdict>>) { answered(0, "LatestFor"); });
  HistoryQuery query;
  query.ip = "192.0.2.1";
  store->History(query, [&](absl::StatusOr<std::vector<HistoryEntry>>) { answered(1, "History"); });
  store->Usage("", absl::InfinitePast(), absl::InfiniteFuture(),
               [&](absl::StatusOr<std::vector<DailyUsage>>) { answered(2, "Usage"); });
  store->ClicksSince(absl::InfinitePast(), [&](absl::StatusOr<VerdictStore::ClickCounts>) {
    answered(3, "ClicksSince");
  });
  store->Secret("inline", 8, [&](absl::StatusOr<std::string>) { answered(4, "Secret"); });
  store->Ping([&](absl::Status) { answered(5, "Ping"); });
  store->BeginClick("alice", "192.0.2.2", kT0,
                    [&](absl::StatusOr<int64_t>) { answered(6, "BeginClick"); });
  ClickCompletion again;  // already completed: an error, still answered on a store thread
  again.outcome = ClickOutcome::kUpstreamError;
  store->CompleteClick(click, again, [&](absl::Status) { answered(7, "CompleteClick"); });
  store->AddUsage({{"alice", absl::CivilDay(2024, 1, 1), 1, 1}},
                  [&](absl::Status) { answered(8, "AddUsage"); });
  store->PruneBefore(kT0 - absl::Hours(1), 10,
                     [&](absl::StatusOr<int64_t>) { answered(9, "PruneBefore"); });
  all.Wait();
  store->Flush();
  store.reset();  // answers nothing twice, also while closing
  absl::MutexLock lock(&mu);
  EXPECT_THAT(inline_calls, ::testing::IsEmpty());
  EXPECT_THAT(answers, ::testing::Each(1));
}

// Also invalid arguments are answered through the callback, on a store thread.
TEST_P(VerdictStoreContractTest, InvalidArgumentsAreAnsweredThroughTheCallback) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  HistoryQuery query;
  query.ip = "192.0.2.1";
  query.limit = -1;
  EXPECT_EQ(HistorySync(*store, query).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PruneSync(*store, kT0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SecretSync(*store, "big", 1025).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AddUsageSync(*store, {{"alice", absl::CivilDay(2024, 1, 1), -1, 0}}).code(),
            absl::StatusCode::kInvalidArgument);
}

// Pruning, seen through the interface: old history and ledger rows go, oldest first and at most
// max_rows per call, until a call reports 0; newer ones stay.
TEST_P(VerdictStoreContractTest, PruneBeforeRemovesOnlyWhatIsOlderInBoundedSteps) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const absl::Time cutoff = kT0 + absl::Hours(1);
  for (int i = 0; i < 5; ++i) {
    Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(i)));
  }
  Append(*store, MakeVerdict("192.0.2.1", cutoff));
  Append(*store, MakeVerdict("192.0.2.1", cutoff + absl::Seconds(1)));
  int64_t total = 0;
  for (int call = 0; call < 20; ++call) {
    absl::StatusOr<int64_t> deleted = PruneSync(*store, cutoff, 2);
    ASSERT_TRUE(deleted.ok()) << deleted.status();
    EXPECT_LE(*deleted, 2);
    if (*deleted == 0) {
      break;
    }
    total += *deleted;
  }
  EXPECT_GE(total, 5) << "5 verdicts and their ledger rows are older than the cutoff";
  EXPECT_EQ(PruneSync(*store, cutoff, 2).value_or(-1), 0);
  HistoryQuery query;
  query.ip = "192.0.2.1";
  auto left = HistorySync(*store, query);
  ASSERT_TRUE(left.ok()) << left.status();
  ASSERT_EQ(left->size(), 2u);
  EXPECT_EQ((*left)[0].verdict.checked_at, cutoff + absl::Seconds(1));
  EXPECT_EQ((*left)[1].verdict.checked_at, cutoff) << "the cutoff itself is kept";
  auto latest = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->checked_at, cutoff + absl::Seconds(1));
}

}  // namespace
}  // namespace verdictd
