#include "server/engine/usage_recorder.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

using ::testing::ElementsAre;

// A store that keeps every AddUsage until the test completes it, in any order. The recorder
// uses nothing else.
class UsageOnlyStore : public VerdictStore {
 public:
  struct Write {
    std::vector<UsageDelta> deltas;
    DoneCallback done;
  };

  void AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) override {
    absl::MutexLock lock(&mu);
    writes.push_back(Write{std::move(deltas), std::move(done)});
  }
  // Completes write `i` with `status`, as the store's thread would.
  void Complete(size_t i, absl::Status status = absl::OkStatus()) {
    DoneCallback done;
    {
      absl::MutexLock lock(&mu);
      done = std::move(writes.at(i).done);
    }
    done(std::move(status));
  }

  void LatestFor(std::string, std::optional<std::string>,
                 ReadCallback<std::optional<Verdict>> done) override {
    done(Unused());
  }
  void BeginClick(std::string, std::string, absl::Time, ClickCallback done) override {
    done(Unused());
  }
  void ClaimClick(ClickClaim, ReadCallback<ClaimResult> done) override { done(Unused()); }
  void SetFlightListener(FlightListener*) override {}
  void SetAllowanceMark(AllowanceMark, DoneCallback done) override { done(Unused()); }
  void TryLease(std::string, std::string, absl::Duration, ReadCallback<bool> done) override {
    done(Unused());
  }
  void CompleteClick(int64_t, ClickCompletion, DoneCallback done) override { done(Unused()); }
  void History(HistoryQuery, ReadCallback<std::vector<HistoryEntry>> done) override {
    done(Unused());
  }
  void Clicks(ClickQuery, ReadCallback<std::vector<ClickRecord>> done) override { done(Unused()); }
  void Usage(std::string, absl::Time, absl::Time,
             ReadCallback<std::vector<DailyUsage>> done) override {
    done(Unused());
  }
  void ClicksSince(absl::Time, ReadCallback<ClickCounts> done) override { done(Unused()); }
  void PruneBefore(absl::Time, int, std::function<void(absl::StatusOr<int64_t>)> done) override {
    done(Unused());
  }
  void Secret(std::string, size_t, ReadCallback<std::string> done) override { done(Unused()); }
  void Ping(DoneCallback done) override { done(absl::OkStatus()); }
  void Flush() override {}

  absl::Mutex mu;
  std::vector<Write> writes ABSL_GUARDED_BY(mu);

 private:
  static absl::Status Unused() {
    ADD_FAILURE() << "the usage recorder uses only AddUsage";
    return absl::InternalError("unused");
  }
};

// A delta as a comparable tuple: caller, day, cache hits, requests.
using Row = std::tuple<std::string, absl::CivilDay, int64_t, int64_t>;

std::vector<Row> Rows(const std::vector<UsageDelta>& deltas) {
  std::vector<Row> rows;
  for (const UsageDelta& d : deltas) {
    rows.emplace_back(d.caller, d.day, d.cache_hits, d.requests);
  }
  std::sort(rows.begin(), rows.end());
  return rows;
}

class UsageRecorderTest : public ::testing::Test {
 protected:
  size_t Writes() {
    absl::MutexLock lock(&store_.mu);
    return store_.writes.size();
  }
  std::vector<Row> WriteRows(size_t i) {
    absl::MutexLock lock(&store_.mu);
    return Rows(store_.writes.at(i).deltas);
  }

  const absl::CivilDay day_ = absl::CivilDay(2026, 5, 20);
  FakeClock clock_{absl::FromCivil(absl::CivilSecond(2026, 5, 20, 12, 0, 0), absl::UTCTimeZone())};
  UsageOnlyStore store_;
  UsageRecorder recorder_{store_, clock_};
};

TEST_F(UsageRecorderTest, NothingIsWrittenUntilFlush) {
  recorder_.Record("alice", /*cache_hit=*/true);
  recorder_.Record("alice", /*cache_hit=*/false);
  EXPECT_EQ(Writes(), 0u);
  recorder_.Flush();
  ASSERT_EQ(Writes(), 1u);
  EXPECT_THAT(WriteRows(0), ElementsAre(Row{"alice", day_, 1, 2}));
}

TEST_F(UsageRecorderTest, OneFlushIsOneBatchOfOneDeltaPerCallerAndUtcDay) {
  recorder_.Record("alice", true);
  recorder_.Record("bob", false);
  recorder_.Record("alice", true);
  clock_.Set(absl::FromCivil(absl::CivilSecond(2026, 5, 20, 23, 59, 59), absl::UTCTimeZone()));
  recorder_.Record("alice", false);
  clock_.Advance(absl::Seconds(1));  // midnight UTC: the next day
  recorder_.Record("alice", true);
  recorder_.Flush();
  ASSERT_EQ(Writes(), 1u);
  EXPECT_THAT(WriteRows(0), ElementsAre(Row{"alice", day_, 2, 3}, Row{"alice", day_ + 1, 1, 1},
                                        Row{"bob", day_, 0, 1}));
}

// Each thread counts in a shard of its own; a flush merges them.
TEST_F(UsageRecorderTest, CountsFromManyThreadsAreMergedIntoOneDelta) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 1000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < kPerThread; ++i) {
        recorder_.Record("alice", /*cache_hit=*/(i + t) % 2 == 0);
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  recorder_.Flush();
  ASSERT_EQ(Writes(), 1u);
  EXPECT_THAT(WriteRows(0),
              ElementsAre(Row{"alice", day_, kThreads * kPerThread / 2, kThreads * kPerThread}));
}

TEST_F(UsageRecorderTest, FlushWithNothingCountedWritesNothingAndIsDoneAtOnce) {
  bool done = false;
  recorder_.Flush([&] { done = true; });
  EXPECT_TRUE(done);
  EXPECT_EQ(Writes(), 0u);
}

TEST_F(UsageRecorderTest, FlushIsDoneOnlyOnceItsWriteCompletes) {
  recorder_.Record("alice", true);
  bool done = false;
  recorder_.Flush([&] { done = true; });
  ASSERT_EQ(Writes(), 1u);
  EXPECT_FALSE(done);
  store_.Complete(0);
  EXPECT_TRUE(done);
}

// The store does not order writes; a flush waits for every earlier one, whichever completes
// first, so a read issued from its callback sees every check recorded before it.
TEST_F(UsageRecorderTest, FlushWaitsForEarlierWritesThatCompleteLater) {
  recorder_.Record("alice", true);
  recorder_.Flush();  // write 0: the periodic flush, say
  recorder_.Record("bob", false);
  bool second_done = false;
  recorder_.Flush([&] { second_done = true; });  // write 1
  bool third_done = false;
  recorder_.Flush([&] { third_done = true; });  // nothing new, but writes 0 and 1 are pending
  ASSERT_EQ(Writes(), 2u);
  store_.Complete(1);
  EXPECT_FALSE(second_done) << "write 0 is still pending";
  EXPECT_FALSE(third_done);
  store_.Complete(0);
  EXPECT_TRUE(second_done);
  EXPECT_TRUE(third_done);

  // A later flush does not wait for nothing.
  bool fourth_done = false;
  recorder_.Flush([&] { fourth_done = true; });
  EXPECT_TRUE(fourth_done);
}

// A flush waits only for the writes started before it returned.
TEST_F(UsageRecorderTest, FlushDoesNotWaitForWritesStartedAfterIt) {
  recorder_.Record("alice", true);
  bool done = false;
  recorder_.Flush([&] { done = true; });  // write 0
  recorder_.Record("alice", true);
  recorder_.Flush();  // write 1
  store_.Complete(0);
  EXPECT_TRUE(done) << "write 1 started after the flush";
  store_.Complete(1);
}

// A failed write's counts are lost (logged), not retried or carried into the next batch; the
// flush is still done, so a caller waiting on it is never stuck.
TEST_F(UsageRecorderTest, AFailedWriteLosesItsCountsAndStillCompletesTheFlush) {
  recorder_.Record("alice", true);
  recorder_.Record("alice", false);
  bool done = false;
  recorder_.Flush([&] { done = true; });
  store_.Complete(0, absl::UnavailableError("disk full"));
  EXPECT_TRUE(done);
  recorder_.Record("bob", true);
  recorder_.Flush();
  ASSERT_EQ(Writes(), 2u);
  EXPECT_THAT(WriteRows(1), ElementsAre(Row{"bob", day_, 1, 1}));
  store_.Complete(1);
}

// Counting again after a flush starts from zero: each check is written once.
TEST_F(UsageRecorderTest, EachCheckIsWrittenOnce) {
  recorder_.Record("alice", true);
  recorder_.Flush();
  recorder_.Flush();
  EXPECT_EQ(Writes(), 1u);
  recorder_.Record("alice", false);
  recorder_.Flush();
  ASSERT_EQ(Writes(), 2u);
  EXPECT_THAT(WriteRows(1), ElementsAre(Row{"alice", day_, 0, 1}));
  store_.Complete(0);
  store_.Complete(1);
}

}  // namespace
}  // namespace verdictd
