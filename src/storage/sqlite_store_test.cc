#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/verdict.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/sqlite_store_internal.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::string_literals;

// A plain connection to the same file, to check what the store wrote without trusting it.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  // Every row of `sql` with each column as text ("NULL" for NULL).
  std::vector<std::vector<std::string>> Query(const std::string& sql,
                                              const std::vector<int64_t>& params = {}) {
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db_);
    for (size_t i = 0; i < params.size(); ++i) {
      sqlite3_bind_int64(stmt, static_cast<int>(i + 1), params[i]);
    }
    std::vector<std::vector<std::string>> rows;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      std::vector<std::string>& row = rows.emplace_back();
      for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
        const void* data = sqlite3_column_blob(stmt, c);
        row.push_back(sqlite3_column_type(stmt, c) == SQLITE_NULL
                          ? "NULL"
                          : std::string(static_cast<const char*>(data),
                                        static_cast<size_t>(sqlite3_column_bytes(stmt, c))));
      }
    }
    EXPECT_EQ(rc, SQLITE_DONE) << sqlite3_errmsg(db_);
    sqlite3_finalize(stmt);
    return rows;
  }

  int64_t Count(const std::string& table) {
    auto rows = Query("SELECT count(*) FROM " + table);
    return rows.empty() ? -1 : std::stoll(rows[0][0]);
  }

  int Exec(const std::string& sql) {
    return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
  }

  sqlite3* get() { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

absl::StatusOr<int64_t> BeginClickSync(VerdictStore& store, std::string caller, std::string ip,
                                       absl::Time requested_at) {
  absl::Notification done;
  absl::StatusOr<int64_t> result;
  store.BeginClick(std::move(caller), std::move(ip), requested_at, [&](absl::StatusOr<int64_t> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

absl::Status CompleteClickSync(VerdictStore& store, int64_t click_id, ClickCompletion completion) {
  absl::Notification done;
  absl::Status result;
  store.CompleteClick(click_id, std::move(completion), [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

Verdict MakeVerdict(std::string ip, absl::Time checked_at, std::string user_agent = "ua",
                    std::string caller = "alice") {
  Verdict v;
  v.ip = std::move(ip);
  v.assessment.score = Score::kSuspicious;
  v.assessment.proxy = true;
  v.assessment.vpn = true;
  v.checked_at = checked_at;
  v.user_agent = std::move(user_agent);
  v.caller = std::move(caller);
  return v;
}

// Records a click that produced `verdict`, as the engine would; returns the click id.
int64_t Append(VerdictStore& store, const Verdict& verdict) {
  absl::StatusOr<int64_t> id =
      BeginClickSync(store, verdict.caller, verdict.ip, verdict.checked_at - absl::Milliseconds(5));
  EXPECT_TRUE(id.ok()) << id.status();
  ClickCompletion completion;
  completion.outcome = ClickOutcome::kVerdict;
  completion.http_status = 200;
  completion.latency = absl::Milliseconds(5);
  completion.verdict = verdict;
  completion.raw_body = R"({"trusted_ai_score":"Suspicious"})";
  EXPECT_TRUE(CompleteClickSync(store, *id, std::move(completion)).ok());
  return id.value_or(-1);
}

const absl::Time kT0 = absl::FromUnixMicros(1'700'000'000'123'457);

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = ::testing::TempDir() + "sqlite_store_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir.data()), nullptr);
    dir_ = dir;
    path_ = dir_ + "/verdicts.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<VerdictStore> Open(SqliteStoreOptions options = {}) {
    if (options.path.empty()) {
      options.path = path_;
    }
    absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenSqliteStore(std::move(options));
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(SqliteStoreTest, LatestForReturnsEveryFieldOfAnAppendedVerdict) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Verdict v = MakeVerdict("203.0.113.7", kT0, "Mozilla/5.0 (X11)", "bob");
  v.assessment = {Score::kFake, /*proxy=*/true, /*tor=*/false, /*vpn=*/true, /*crawler=*/false,
                  /*bot=*/true};
  Append(*store, v);

  absl::StatusOr<std::optional<Verdict>> got = store->LatestFor("203.0.113.7", std::nullopt);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  const Verdict& g = **got;
  EXPECT_EQ(g.ip, "203.0.113.7");
  EXPECT_EQ(g.assessment, v.assessment);
  EXPECT_EQ(g.checked_at, kT0);  // to the microsecond
  EXPECT_EQ(g.user_agent, "Mozilla/5.0 (X11)");
  EXPECT_EQ(g.caller, "bob");
}

TEST_F(SqliteStoreTest, CompletedClickIsRecordedWithTheVerdictLinkedToIt) {
  FakeClock clock(kT0 + absl::Seconds(1));
  SqliteStoreOptions options;
  options.clock = &clock;
  std::unique_ptr<VerdictStore> store = Open(options);
  ASSERT_NE(store, nullptr);
  const int64_t id = Append(*store, MakeVerdict("198.51.100.1", kT0));
  store.reset();

  RawDb raw(path_);
  EXPECT_THAT(raw.Query("SELECT caller, ip, requested_at_us, completed_at_us, outcome, "
                        "http_status, error, latency_us FROM clicks WHERE id = ?1",
                        {id}),
              ::testing::ElementsAre(::testing::ElementsAre(
                  "alice", "198.51.100.1", std::to_string(absl::ToUnixMicros(kT0) - 5000),
                  std::to_string(absl::ToUnixMicros(kT0) + 1'000'000), "1", "200", "", "5000")));
  EXPECT_THAT(raw.Query("SELECT click_id, raw_body FROM verdicts"),
              ::testing::ElementsAre(::testing::ElementsAre(
                  std::to_string(id), R"({"trusted_ai_score":"Suspicious"})")));
}

TEST_F(SqliteStoreTest, NewestCheckedAtWinsThenHighestId) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(1), "ua", "one"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), "ua", "three"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(2), "ua", "two"));
  Append(*store, MakeVerdict("192.0.2.99", kT0 + absl::Seconds(9), "ua", "other ip"));

  auto got = store->LatestFor("192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->caller, "three");

  // Same checked_at: the later append wins.
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), "ua", "three again"));
  got = store->LatestFor("192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->caller, "three again");
}

TEST_F(SqliteStoreTest, LatestForFiltersByExactUserAgent) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(1), "agent-a"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(2), "agent-b"));
  Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(3), ""));

  auto a = store->LatestFor("192.0.2.1", absl::string_view("agent-a"));
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ((*a)->user_agent, "agent-a");
  EXPECT_EQ((*a)->checked_at, kT0 + absl::Seconds(1));

  auto empty = store->LatestFor("192.0.2.1", absl::string_view());
  ASSERT_TRUE(empty.ok() && empty->has_value());
  EXPECT_EQ((*empty)->user_agent, "");

  auto any = store->LatestFor("192.0.2.1", std::nullopt);
  ASSERT_TRUE(any.ok() && any->has_value());
  EXPECT_EQ((*any)->checked_at, kT0 + absl::Seconds(3));

  auto none = store->LatestFor("192.0.2.1", absl::string_view("agent-c"));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(SqliteStoreTest, UnknownIpIsNullopt) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0));
  auto got = store->LatestFor("192.0.2.2", std::nullopt);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->has_value());
}

TEST_F(SqliteStoreTest, DataSurvivesReopen) {
  {
    std::unique_ptr<VerdictStore> store = Open();
    ASSERT_NE(store, nullptr);
    Append(*store, MakeVerdict("2001:db8::1", kT0, "ua", "carol"));
  }
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  auto got = store->LatestFor("2001:db8::1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->caller, "carol");
  EXPECT_EQ((*got)->checked_at, kT0);
}

TEST_F(SqliteStoreTest, BegunClickIsDurableAsPendingAcrossRestart) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> id = BeginClickSync(*store, "dave", "192.0.2.5", kT0);
  ASSERT_TRUE(id.ok()) << id.status();
  store.reset();  // as if the process died while the request was in flight

  RawDb raw(path_);
  EXPECT_THAT(raw.Query("SELECT caller, ip, requested_at_us, completed_at_us, outcome "
                        "FROM clicks WHERE id = ?1",
                        {*id}),
              ::testing::ElementsAre(::testing::ElementsAre(
                  "dave", "192.0.2.5", std::to_string(absl::ToUnixMicros(kT0)), "NULL", "0")));
}

TEST_F(SqliteStoreTest, UserAgentBytesRoundTripExactly) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const std::string ua = "Mozilla/5.0\0tail \xff\xfe\x80 end"s;
  ASSERT_EQ(ua.size(), 24u);  // the NUL did not end the literal
  Append(*store, MakeVerdict("192.0.2.1", kT0, ua));

  auto got = store->LatestFor("192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->user_agent, ua);

  auto filtered = store->LatestFor("192.0.2.1", absl::string_view(ua));
  ASSERT_TRUE(filtered.ok() && filtered->has_value());
  EXPECT_EQ((*filtered)->user_agent, ua);

  // What a C string would truncate it to is a different user agent.
  auto prefix = store->LatestFor("192.0.2.1", absl::string_view("Mozilla/5.0"));
  ASSERT_TRUE(prefix.ok());
  EXPECT_FALSE(prefix->has_value());
}

TEST_F(SqliteStoreTest, SqlMetacharactersAreStoredVerbatim) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const std::string caller = "'; DROP TABLE verdicts; --";
  const std::string ua = "\"); DELETE FROM clicks; -- ' OR 1=1";
  Append(*store, MakeVerdict("192.0.2.1", kT0, ua, caller));

  auto got = store->LatestFor("192.0.2.1", absl::string_view(ua));
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->caller, caller);
  EXPECT_EQ((*got)->user_agent, ua);
  auto injected = store->LatestFor("' OR '1'='1", std::nullopt);
  ASSERT_TRUE(injected.ok());
  EXPECT_FALSE(injected->has_value());

  store.reset();
  RawDb raw(path_);
  EXPECT_EQ(raw.Count("verdicts"), 1);
  EXPECT_EQ(raw.Count("clicks"), 1);
  EXPECT_THAT(raw.Query("SELECT caller FROM clicks"),
              ::testing::ElementsAre(::testing::ElementsAre(caller)));
}

TEST_F(SqliteStoreTest, ConcurrentBeginClicksAreGroupCommittedWithDistinctIds) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 250;
  absl::Mutex mu;
  std::vector<int64_t> ids;
  int errors = 0;

  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        store->BeginClick("caller" + std::to_string(t), "192.0.2." + std::to_string(i % 250), kT0,
                          [&](absl::StatusOr<int64_t> id) {
                            absl::MutexLock lock(&mu);
                            if (id.ok()) {
                              ids.push_back(*id);
                            } else {
                              ++errors;
                            }
                          });
      }
    });
  }
  for (std::thread& t : threads) {
    t.join();
  }
  store->Flush();
  const absl::Duration elapsed = absl::Now() - start;
  std::cout << "[ measured ] " << kThreads * kPerThread << " BeginClick from " << kThreads
            << " threads, durable after Flush in " << elapsed << "\n";

  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(errors, 0);
    EXPECT_EQ(ids.size(), static_cast<size_t>(kThreads * kPerThread));  // Flush ran them all
    EXPECT_EQ(std::set<int64_t>(ids.begin(), ids.end()).size(), ids.size());
  }
  RawDb raw(path_);  // a separate connection sees every row while the store is still open
  EXPECT_EQ(raw.Count("clicks"), kThreads * kPerThread);
}

TEST_F(SqliteStoreTest, DestructorCommitsEverythingQueued) {
  SqliteStoreOptions options;
  options.max_group = 4;  // several groups still queued when the destructor starts
  std::unique_ptr<VerdictStore> store = Open(options);
  ASSERT_NE(store, nullptr);
  constexpr int kClicks = 100;
  absl::BlockingCounter callbacks(kClicks);
  for (int i = 0; i < kClicks; ++i) {
    store->BeginClick("erin", "192.0.2.9", kT0, [&](absl::StatusOr<int64_t> id) {
      EXPECT_TRUE(id.ok()) << id.status();
      callbacks.DecrementCount();
    });
  }
  store.reset();
  callbacks.Wait();
  RawDb raw(path_);
  EXPECT_EQ(raw.Count("clicks"), kClicks);
}

TEST_F(SqliteStoreTest, CompleteClickForUnknownIdIsNotFound) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  ClickCompletion completion;
  completion.outcome = ClickOutcome::kUpstreamError;
  completion.error = "timeout";
  absl::Status status = CompleteClickSync(*store, 12345, std::move(completion));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
}

TEST_F(SqliteStoreTest, CompletedClickCannotBeCompletedAgain) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const int64_t id = Append(*store, MakeVerdict("192.0.2.1", kT0));
  ClickCompletion again;
  again.outcome = ClickOutcome::kNotSent;
  absl::Status status = CompleteClickSync(*store, id, std::move(again));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

TEST_F(SqliteStoreTest, InconsistentCompletionIsRejectedAndLeavesClickPending) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> id = BeginClickSync(*store, "alice", "192.0.2.1", kT0);
  ASSERT_TRUE(id.ok());

  ClickCompletion no_verdict;
  no_verdict.outcome = ClickOutcome::kVerdict;
  EXPECT_EQ(CompleteClickSync(*store, *id, no_verdict).code(), absl::StatusCode::kInvalidArgument);
  ClickCompletion pending;
  EXPECT_EQ(CompleteClickSync(*store, *id, pending).code(), absl::StatusCode::kInvalidArgument);
  ClickCompletion error_with_verdict;
  error_with_verdict.outcome = ClickOutcome::kUpstreamError;
  error_with_verdict.verdict = MakeVerdict("192.0.2.1", kT0);
  EXPECT_EQ(CompleteClickSync(*store, *id, error_with_verdict).code(),
            absl::StatusCode::kInvalidArgument);

  store.reset();
  RawDb raw(path_);
  EXPECT_EQ(raw.Count("verdicts"), 0);
  EXPECT_THAT(raw.Query("SELECT outcome FROM clicks WHERE id = ?1", {*id}),
              ::testing::ElementsAre(::testing::ElementsAre("0")));
}

// The writer is held inside a callback while three writes queue, so they share one transaction;
// the failing one must not undo the others.
TEST_F(SqliteStoreTest, FailingWriteDoesNotSinkItsGroup) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  absl::Notification in_callback;
  absl::Notification release;
  store->BeginClick("first", "192.0.2.1", kT0, [&](absl::StatusOr<int64_t>) {
    in_callback.Notify();
    release.WaitForNotification();
  });
  in_callback.WaitForNotification();

  absl::StatusOr<int64_t> before = absl::UnknownError("not run");
  absl::Status unknown = absl::UnknownError("not run");
  absl::StatusOr<int64_t> after = absl::UnknownError("not run");
  store->BeginClick("before", "192.0.2.2", kT0, [&](absl::StatusOr<int64_t> r) { before = r; });
  ClickCompletion completion;
  completion.outcome = ClickOutcome::kNotSent;
  store->CompleteClick(999999, completion, [&](absl::Status s) { unknown = s; });
  store->BeginClick("after", "192.0.2.3", kT0, [&](absl::StatusOr<int64_t> r) { after = r; });
  release.Notify();
  store->Flush();

  EXPECT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound) << unknown;
  EXPECT_TRUE(after.ok()) << after.status();
  store.reset();
  RawDb raw(path_);
  EXPECT_EQ(raw.Count("clicks"), 3);
}

TEST_F(SqliteStoreTest, FileIsCreatedWithMode0600) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(BeginClickSync(*store, "alice", "192.0.2.1", kT0).ok());
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  // SQLite gives the WAL the database file's mode.
  ASSERT_EQ(stat((path_ + "-wal").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
}

TEST_F(SqliteStoreTest, GarbageFileIsRejectedWithItsPathAndLeftAlone) {
  std::string garbage(8192, '\0');
  std::mt19937 rng(42);
  for (char& c : garbage) {
    c = static_cast<char>(rng());
  }
  { std::ofstream(path_, std::ios::binary) << garbage; }

  SqliteStoreOptions options;
  options.path = path_;
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenSqliteStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("database " + path_ + " is not usable"));
  EXPECT_THAT(store.status().message(), HasSubstr("not a database"));

  std::ifstream in(path_, std::ios::binary);
  std::string after((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(after, garbage);
}

TEST_F(SqliteStoreTest, CorruptSchemaIsRejectedWithItsPath) {
  {
    std::unique_ptr<VerdictStore> store = Open();
    ASSERT_NE(store, nullptr);
    Append(*store, MakeVerdict("192.0.2.1", kT0));
  }
  {
    // Page 1 past the 100-byte file header holds the schema table.
    std::fstream f(path_, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(100);
    f << std::string(3000, '\xa5');
  }
  SqliteStoreOptions options;
  options.path = path_;
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenSqliteStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr("database " + path_ + " is not usable"));
}

TEST_F(SqliteStoreTest, DirectoryOrMissingParentIsRejected) {
  SqliteStoreOptions options;
  options.path = dir_;
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenSqliteStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(dir_));

  options.path = dir_ + "/missing/verdicts.db";
  store = OpenSqliteStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(options.path));
}

TEST_F(SqliteStoreTest, NewerSchemaIsRejected) {
  ASSERT_NE(Open(), nullptr);
  {
    RawDb raw(path_);
    ASSERT_EQ(raw.Exec("PRAGMA user_version = 99"), SQLITE_OK);
  }
  SqliteStoreOptions options;
  options.path = path_;
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenSqliteStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr("schema version 99"));
}

TEST_F(SqliteStoreTest, ReadOnlyFileIsRejected) {
  if (geteuid() == 0) {
    GTEST_SKIP() << "root ignores file permissions; LockedStore covers failing writes";
  }
  ASSERT_NE(Open(), nullptr);
  ASSERT_EQ(chmod(path_.c_str(), 0400), 0);
  SqliteStoreOptions options;
  options.path = path_;
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenSqliteStore(options);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(path_));
}

// Stands in for a store that cannot be written (tests run as root, so chmod does not stop
// writes): another connection holds the write lock past the busy timeout.
TEST_F(SqliteStoreTest, LockedStoreFailsWritesAndRecoversAfterwards) {
  SqliteStoreOptions options;
  options.busy_timeout = absl::Milliseconds(50);
  std::unique_ptr<VerdictStore> store = Open(options);
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0));

  RawDb locker(path_);
  ASSERT_EQ(locker.Exec("BEGIN EXCLUSIVE"), SQLITE_OK) << sqlite3_errmsg(locker.get());

  absl::StatusOr<int64_t> failed = BeginClickSync(*store, "alice", "192.0.2.2", kT0);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(failed.status().message(), HasSubstr("store write failed: database is locked"));
  // WAL readers do not wait for the writer.
  auto read = store->LatestFor("192.0.2.1", std::nullopt);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->has_value());

  ASSERT_EQ(locker.Exec("COMMIT"), SQLITE_OK);
  absl::StatusOr<int64_t> ok = BeginClickSync(*store, "alice", "192.0.2.2", kT0);
  EXPECT_TRUE(ok.ok()) << ok.status();
  store.reset();
  EXPECT_EQ(locker.Count("clicks"), 2);  // the failed click left nothing behind
}

TEST_F(SqliteStoreTest, ReadsRunConcurrentlyWithWrites) {
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
        auto got = store->LatestFor("192.0.2.1", absl::string_view("ua"));
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
  auto got = store->LatestFor("192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->checked_at, kT0 + absl::Seconds(50));
}

// "Latest verdict for a key" must stay an index lookup however long the history grows.
TEST_F(SqliteStoreTest, LatestForQueriesSearchAnIndex) {
  ASSERT_NE(Open(), nullptr);
  RawDb raw(path_);
  for (const char* sql : {sqlite_store_internal::kLatestForIpSql,
                          sqlite_store_internal::kLatestForIpAndUserAgentSql}) {
    std::vector<std::string> details;
    for (const auto& row : raw.Query("EXPLAIN QUERY PLAN "s + sql)) {
      details.push_back(row.back());
    }
    const std::string plan = absl::StrJoin(details, " | ");
    std::cout << "[ plan     ] " << plan << "\n";
    EXPECT_THAT(plan, HasSubstr("SEARCH verdicts USING"));
    EXPECT_THAT(plan, HasSubstr("INDEX"));
    EXPECT_THAT(plan, Not(HasSubstr("SCAN")));
    EXPECT_THAT(plan, Not(HasSubstr("TEMP B-TREE")));  // no sort: the index order is the answer
  }
}

}  // namespace
}  // namespace verdictd
