#include "storage/sqlite/sqlite_store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
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
#include "absl/time/civil_time.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/verdict.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/sqlite/sqlite_store_internal.h"
#include "storage/verdict_store.h"
#include "storage/verdict_store_contract_test.h"

namespace verdictd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::string_literals;
using namespace store_test;

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

std::string Plan(RawDb& raw, const std::string& sql) {
  std::vector<std::string> details;
  for (const auto& row : raw.Query("EXPLAIN QUERY PLAN " + sql)) {
    details.push_back(row.back());
  }
  return absl::StrJoin(details, " | ");
}

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

TEST_F(SqliteStoreTest, SqlMetacharactersAreStoredVerbatim) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const std::string caller = "'; DROP TABLE verdicts; --";
  const std::string ua = "\"); DELETE FROM clicks; -- ' OR 1=1";
  Append(*store, MakeVerdict("192.0.2.1", kT0, ua, caller));

  auto got = LatestForSync(*store, "192.0.2.1", absl::string_view(ua));
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->caller, caller);
  EXPECT_EQ((*got)->user_agent, ua);
  auto injected = LatestForSync(*store, "' OR '1'='1", std::nullopt);
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
  auto read = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->has_value());

  ASSERT_EQ(locker.Exec("COMMIT"), SQLITE_OK);
  absl::StatusOr<int64_t> ok = BeginClickSync(*store, "alice", "192.0.2.2", kT0);
  EXPECT_TRUE(ok.ok()) << ok.status();
  store.reset();
  EXPECT_EQ(locker.Count("clicks"), 2);  // the failed click left nothing behind
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

// --- History ---------------------------------------------------------------------------

// Every page of the click audit is a range scan of one ledger index in order (no sort, no
// scan), and each row finds its verdict through verdicts_by_click.
TEST_F(SqliteStoreTest, ClicksQueriesSearchALedgerIndexInOrder) {
  ASSERT_NE(Open(), nullptr);
  RawDb raw(path_);
  const std::pair<const char*, const char*> queries[] = {
      {sqlite_store_internal::kClicksByIpSql, "clicks_by_ip (ip=? AND "},
      {sqlite_store_internal::kClicksByCallerSql, "clicks_by_caller (caller=? AND "},
      {sqlite_store_internal::kClicksByTimeSql, "clicks_by_time (requested_at_us>? AND "},
  };
  for (const auto& [sql, index] : queries) {
    const std::string plan = Plan(raw, sql);
    std::cout << "[ plan     ] " << plan << "\n";
    EXPECT_THAT(plan, HasSubstr(std::string("SEARCH c USING INDEX ") + index));
    EXPECT_THAT(plan, HasSubstr("SEARCH v USING INDEX verdicts_by_click (click_id=?)"));
    EXPECT_THAT(plan, Not(HasSubstr("SCAN")));
    EXPECT_THAT(plan, Not(HasSubstr("TEMP B-TREE")));
  }
}

// Every page is a range scan of the (ip, checked_at_us DESC, id DESC) index: no sort, no scan.
TEST_F(SqliteStoreTest, HistoryQuerySearchesTheIpIndexInOrder) {
  ASSERT_NE(Open(), nullptr);
  RawDb raw(path_);
  const std::string plan = Plan(raw, sqlite_store_internal::kHistorySql);
  std::cout << "[ plan     ] " << plan << "\n";
  EXPECT_THAT(plan, HasSubstr("SEARCH verdicts USING INDEX verdicts_by_ip (ip=? AND "
                              "checked_at_us>? AND checked_at_us<?)"));
  EXPECT_THAT(plan, Not(HasSubstr("SCAN")));
  EXPECT_THAT(plan, Not(HasSubstr("TEMP B-TREE")));
}

// Restoring counters at start-up reads only the recent days' counters, plus at most the rest of
// one day of the ledger: both tables are searched by range, neither is scanned. (The only SCAN is
// of the per-caller rows the two ranges produce.)
TEST_F(SqliteStoreTest, ClicksSinceSearchesTheDayAndTimeIndexes) {
  ASSERT_NE(Open(), nullptr);
  RawDb raw(path_);
  const std::string plan = Plan(raw, sqlite_store_internal::kClicksSinceSql);
  std::cout << "[ plan     ] " << plan << "\n";
  EXPECT_THAT(plan, HasSubstr("SEARCH usage USING INDEX usage_by_day (day>?)"));
  EXPECT_THAT(plan, HasSubstr("SEARCH clicks USING INDEX clicks_by_time (requested_at_us>? AND "
                              "requested_at_us<?)"));
  EXPECT_THAT(plan, Not(HasSubstr("SCAN usage")));
  EXPECT_THAT(plan, Not(HasSubstr("SCAN clicks")));
  EXPECT_THAT(plan, Not(HasSubstr("USING INDEX clicks_by_caller")));
}

// GetUsage reads one index range of the counters and never the ledger.
TEST_F(SqliteStoreTest, UsageQueriesSearchOnlyTheCounters) {
  ASSERT_NE(Open(), nullptr);
  RawDb raw(path_);
  const std::string one = Plan(raw, sqlite_store_internal::kUsageOneSql);
  std::cout << "[ plan     ] " << one << "\n";
  EXPECT_THAT(one, HasSubstr("SEARCH usage USING PRIMARY KEY (caller=? AND day>? AND day<?)"));
  EXPECT_THAT(one, Not(HasSubstr("SCAN")));
  EXPECT_THAT(one, Not(HasSubstr("TEMP B-TREE")));  // the key order is the answer's order
  EXPECT_THAT(one, Not(HasSubstr("clicks")));

  const std::string all = Plan(raw, sqlite_store_internal::kUsageAllSql);
  std::cout << "[ plan     ] " << all << "\n";
  EXPECT_THAT(all, HasSubstr("SEARCH usage USING INDEX usage_by_day (day>? AND day<?)"));
  EXPECT_THAT(all, Not(HasSubstr("SCAN")));
  EXPECT_THAT(all, Not(HasSubstr("clicks")));
}

// --- migration -------------------------------------------------------------------------

// The schema exactly as version 1 shipped it (in WAL mode, as the store leaves its files).
constexpr char kVersionOneSchemaSql[] = R"sql(
      PRAGMA journal_mode=WAL;
      CREATE TABLE verdicts(
        id INTEGER PRIMARY KEY,
        ip TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        score INTEGER NOT NULL,
        proxy INTEGER NOT NULL,
        tor INTEGER NOT NULL,
        vpn INTEGER NOT NULL,
        crawler INTEGER NOT NULL,
        bot INTEGER NOT NULL,
        checked_at_us INTEGER NOT NULL,
        caller TEXT NOT NULL,
        raw_body BLOB NOT NULL,
        click_id INTEGER);
      CREATE INDEX verdicts_by_ip ON verdicts(ip, checked_at_us DESC, id DESC);
      CREATE INDEX verdicts_by_ip_ua ON verdicts(ip, user_agent, checked_at_us DESC, id DESC);
      CREATE TABLE clicks(
        id INTEGER PRIMARY KEY,
        caller TEXT NOT NULL,
        ip TEXT NOT NULL,
        requested_at_us INTEGER NOT NULL,
        completed_at_us INTEGER,
        outcome INTEGER NOT NULL DEFAULT 0,
        http_status INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        latency_us INTEGER NOT NULL DEFAULT 0);
      CREATE INDEX clicks_by_time ON clicks(requested_at_us);
      CREATE INDEX clicks_by_caller ON clicks(caller, requested_at_us);
)sql";

// What version 2 added to it, exactly as shipped.
constexpr char kVersionTwoAdditionsSql[] = R"sql(
      CREATE INDEX verdicts_by_time ON verdicts(checked_at_us);
      CREATE TABLE usage(
        caller TEXT NOT NULL,
        day INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(caller, day)) WITHOUT ROWID;
      CREATE TABLE meta(name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
)sql";

TEST_F(SqliteStoreTest, VersionOneDatabaseIsMigratedInPlace) {
  {
    // The schema as version 1 shipped it, with one verdict and its click.
    { std::ofstream create(path_); }  // RawDb does not create files
    RawDb raw(path_);
    ASSERT_EQ(raw.Exec(kVersionOneSchemaSql), SQLITE_OK) << sqlite3_errmsg(raw.get());
    ASSERT_EQ(raw.Exec(R"sql(
      INSERT INTO clicks(id, caller, ip, requested_at_us, completed_at_us, outcome)
        VALUES (7, 'old', '192.0.2.1', 1700000000000000, 1700000000100000, 1);
      INSERT INTO verdicts(ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us,
                           caller, raw_body, click_id)
        VALUES ('192.0.2.1', 'ua', 3, 1, 0, 0, 0, 0, 1700000000100000, 'old', x'7b7d', 7);
      PRAGMA user_version = 1;
    )sql"),
              SQLITE_OK)
        << sqlite3_errmsg(raw.get());
  }
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  auto got = LatestForSync(*store, "192.0.2.1", std::nullopt);
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->caller, "old");
  EXPECT_EQ((*got)->checked_at, absl::FromUnixMicros(1700000000100000));
  ASSERT_TRUE(AddUsageSync(*store, {{"old", absl::CivilDay(2023, 11, 14), 1, 2}}).ok());
  auto clicks = ClicksSinceSync(*store, absl::InfinitePast());
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_THAT(*clicks, ElementsAre(std::pair<std::string, int64_t>("old", 1)));
  ASSERT_TRUE(SecretSync(*store, "k", 8).ok());
  store.reset();

  RawDb raw(path_);
  EXPECT_THAT(raw.Query("PRAGMA user_version"),
              ElementsAre(ElementsAre(std::to_string(sqlite_store_internal::kSchemaVersion))));
  EXPECT_EQ(sqlite_store_internal::kSchemaVersion, 5);
  EXPECT_THAT(raw.Query("SELECT name FROM sqlite_schema WHERE name IN "
                        "('usage', 'meta', 'verdicts_by_time', 'usage_by_day') ORDER BY name"),
              ElementsAre(ElementsAre("meta"), ElementsAre("usage"), ElementsAre("usage_by_day"),
                          ElementsAre("verdicts_by_time")));
  EXPECT_THAT(raw.Query("SELECT caller, day, cache_hits, requests FROM usage"),
              ElementsAre(ElementsAre("old", "19675", "1", "2")));
  // Both migrations ran: the version 1 ledger's click is counted on its day.
  EXPECT_THAT(raw.Query("SELECT clicks, upstream_errors FROM usage"),
              ElementsAre(ElementsAre("1", "0")));
  EXPECT_EQ(raw.Count("verdicts"), 1);
  EXPECT_EQ(raw.Count("clicks"), 1);
}

// A version 2 file's ledger is counted into the new per-day click counters, merged with the
// batched counters already there; the clicks it holds still pending are then kept up to date.
TEST_F(SqliteStoreTest, VersionTwoDatabaseGetsItsClickCountersBackfilled) {
  const absl::CivilDay d1(2024, 3, 1);
  const absl::CivilDay d2(2024, 3, 2);
  const absl::CivilDay epoch(1970, 1, 1);
  const auto us = [](absl::CivilSecond t) { return absl::ToUnixMicros(At(t)); };
  {
    { std::ofstream create(path_); }  // RawDb does not create files
    RawDb raw(path_);
    ASSERT_EQ(raw.Exec(kVersionOneSchemaSql), SQLITE_OK) << sqlite3_errmsg(raw.get());
    ASSERT_EQ(raw.Exec(kVersionTwoAdditionsSql), SQLITE_OK) << sqlite3_errmsg(raw.get());
    ASSERT_EQ(raw.Exec("PRAGMA user_version = 2"), SQLITE_OK);
    const char* kInsert =
        "INSERT INTO clicks(id, caller, ip, requested_at_us, outcome) VALUES (?1, ?2, '192.0.2.1', "
        "?3, ?4)";
    struct {
      int64_t id;
      const char* caller;
      int64_t at_us;
      ClickOutcome outcome;
    } const clicks[] = {
        {1, "alice", us(absl::CivilSecond(d1)), ClickOutcome::kVerdict},
        {2, "alice", us(absl::CivilHour(d1) + 12), ClickOutcome::kUpstreamError},
        {3, "alice", us(absl::CivilHour(d1) + 13), ClickOutcome::kPending},
        {4, "alice", us(absl::CivilHour(d1) + 14), ClickOutcome::kNotSent},
        {5, "alice", us(absl::CivilSecond(d2)) - 1, ClickOutcome::kUpstreamError},  // still d1
        {6, "alice", us(absl::CivilSecond(d2)), ClickOutcome::kVerdict},
        {7, "bob", us(absl::CivilHour(d1) + 5), ClickOutcome::kNotSent},  // nothing billed
        {8, "carol", us(absl::CivilSecond(epoch)) - 3'600'000'000, ClickOutcome::kVerdict},
        {9, "carol", us(absl::CivilSecond(epoch)), ClickOutcome::kUpstreamError},
    };
    for (const auto& c : clicks) {
      sqlite3_stmt* stmt = nullptr;
      ASSERT_EQ(sqlite3_prepare_v2(raw.get(), kInsert, -1, &stmt, nullptr), SQLITE_OK);
      sqlite3_bind_int64(stmt, 1, c.id);
      sqlite3_bind_text(stmt, 2, c.caller, -1, SQLITE_STATIC);
      sqlite3_bind_int64(stmt, 3, c.at_us);
      sqlite3_bind_int(stmt, 4, static_cast<int>(c.outcome));
      EXPECT_EQ(sqlite3_step(stmt), SQLITE_DONE) << sqlite3_errmsg(raw.get());
      sqlite3_finalize(stmt);
    }
    // Batched counters a version 2 build wrote.
    ASSERT_EQ(raw.Exec("INSERT INTO usage(caller, day, cache_hits, requests) VALUES "
                       "('alice', 19783, 3, 10), ('bob', 19783, 4, 9)"),
              SQLITE_OK);
  }
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  {
    RawDb raw(path_);
    EXPECT_THAT(raw.Query("PRAGMA user_version"),
                ElementsAre(ElementsAre(std::to_string(sqlite_store_internal::kSchemaVersion))));
    // (caller, day, cache_hits, requests, clicks, upstream_errors). carol's first click was
    // on 1969-12-31, day -1 (not 0: the day is rounded down).
    EXPECT_THAT(raw.Query("SELECT caller, day, cache_hits, requests, clicks, upstream_errors "
                          "FROM usage ORDER BY caller, day"),
                ElementsAre(ElementsAre("alice", "19783", "3", "10", "4", "2"),
                            ElementsAre("alice", "19784", "0", "0", "1", "0"),
                            ElementsAre("bob", "19783", "4", "9", "0", "0"),
                            ElementsAre("carol", "-1", "0", "0", "1", "0"),
                            ElementsAre("carol", "0", "0", "0", "1", "1")));
    EXPECT_EQ(raw.Count("clicks"), 9);  // the ledger itself is untouched
  }

  using Counts = std::vector<std::pair<std::string, int64_t>>;
  auto clicks = ClicksSinceSync(*store, absl::InfinitePast());
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 5}, {"carol", 2}}));
  clicks = ClicksSinceSync(*store, At(absl::CivilSecond(d1)));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 5}}));
  // Inside d1: its rest (the pending click and the last microsecond's error) plus d2.
  clicks = ClicksSinceSync(*store, At(absl::CivilMinute(absl::CivilHour(d1) + 12) + 30));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 3}}));
  // The ends of the microsecond range (the partial day there is clamped, not overflowed).
  clicks = ClicksSinceSync(*store, absl::InfiniteFuture());
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_TRUE(clicks->empty());
  clicks = ClicksSinceSync(*store, absl::FromUnixMicros(std::numeric_limits<int64_t>::min() + 1));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 5}, {"carol", 2}}));

  auto usage = UsageSync(*store, "", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_THAT(Rows(*usage),
              ElementsAre(IsRow("alice", d1, 4, 2, 3, 10), IsRow("alice", d2, 1, 0, 0, 0),
                          IsRow("bob", d1, 0, 0, 4, 9), IsRow("carol", epoch, 1, 1, 0, 0)));

  // The pending click carried over is unbilled after all.
  ClickCompletion not_sent;
  not_sent.outcome = ClickOutcome::kNotSent;
  ASSERT_TRUE(CompleteClickSync(*store, 3, not_sent).ok());
  clicks = ClicksSinceSync(*store, At(absl::CivilSecond(d1)));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 4}}));
  usage = UsageSync(*store, "alice", At(absl::CivilSecond(d1)), At(absl::CivilSecond(d2)));
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_THAT(Rows(*usage), ElementsAre(IsRow("alice", d1, 3, 2, 3, 10)));
}

// --- usage -----------------------------------------------------------------------------

// Usage and ClicksSince read per-day counters that every ledger write keeps up to date: a begun
// click counts on its requested_at day, also when it is completed on a later one; not sent takes
// it back, an upstream error adds an error, a verdict changes nothing; a rejected completion
// changes nothing either.
TEST_F(SqliteStoreTest, ClickCountersFollowBeginAndComplete) {
  const absl::CivilDay day(2024, 3, 1);
  const int64_t day_number = 19783;
  const absl::Time last_us = At(absl::CivilSecond(day + 1)) - absl::Microseconds(1);
  FakeClock clock(last_us);
  SqliteStoreOptions options;
  options.clock = &clock;
  std::unique_ptr<VerdictStore> store = Open(options);
  ASSERT_NE(store, nullptr);
  RawDb raw(path_);
  auto counters = [&] {
    return raw.Query("SELECT caller, day, clicks, upstream_errors FROM usage ORDER BY caller, day");
  };
  auto row = [&](int64_t clicks, int64_t errors) {
    return ElementsAre(ElementsAre("alice", std::to_string(day_number), std::to_string(clicks),
                                   std::to_string(errors)));
  };

  std::vector<int64_t> ids;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<int64_t> id = BeginClickSync(*store, "alice", "192.0.2.1", last_us);
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  EXPECT_THAT(counters(), row(4, 0));
  clock.Advance(absl::Hours(1));  // completions happen on the next day

  ClickCompletion verdict;
  verdict.outcome = ClickOutcome::kVerdict;
  verdict.verdict = MakeVerdict("192.0.2.1", clock.Now());
  ASSERT_TRUE(CompleteClickSync(*store, ids[0], verdict).ok());
  EXPECT_THAT(counters(), row(4, 0));

  ClickCompletion not_sent;
  not_sent.outcome = ClickOutcome::kNotSent;
  ASSERT_TRUE(CompleteClickSync(*store, ids[1], not_sent).ok());
  EXPECT_THAT(counters(), row(3, 0));

  ClickCompletion error;
  error.outcome = ClickOutcome::kUpstreamError;
  error.error = "timeout";
  ASSERT_TRUE(CompleteClickSync(*store, ids[2], error).ok());
  EXPECT_THAT(counters(), row(3, 1));

  // Rejected completions: already completed, and inconsistent. ids[3] stays pending (billed).
  EXPECT_EQ(CompleteClickSync(*store, ids[1], not_sent).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CompleteClickSync(*store, ids[2], not_sent).code(),
            absl::StatusCode::kFailedPrecondition);
  ClickCompletion inconsistent;
  inconsistent.outcome = ClickOutcome::kNotSent;
  inconsistent.verdict = MakeVerdict("192.0.2.1", clock.Now());
  EXPECT_EQ(CompleteClickSync(*store, ids[3], inconsistent).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(counters(), row(3, 1));

  using Counts = std::vector<std::pair<std::string, int64_t>>;
  auto clicks = ClicksSinceSync(*store, At(absl::CivilSecond(day)));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 3}}));
  clicks = ClicksSinceSync(*store, At(absl::CivilSecond(day + 1)));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_TRUE(clicks->empty());
  auto usage = UsageSync(*store, "alice", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_THAT(Rows(*usage), ElementsAre(IsRow("alice", day, 3, 1, 0, 0)));
}

// The counters are written in the ledger write's own savepoint: when the counter update fails
// (here a trigger refuses it), the ledger row is not written (BeginClick) or not changed
// (CompleteClick) either.
TEST_F(SqliteStoreTest, ClickCountersAndLedgerCommitTogetherOrNotAtAll) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  RawDb raw(path_);
  ASSERT_EQ(raw.Exec("CREATE TRIGGER refuse_insert BEFORE INSERT ON usage "
                     "WHEN NEW.caller = 'mallory' BEGIN SELECT RAISE(ABORT, 'refused'); END"),
            SQLITE_OK)
      << sqlite3_errmsg(raw.get());
  absl::StatusOr<int64_t> refused = BeginClickSync(*store, "mallory", "192.0.2.1", kT0);
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("refused"));
  EXPECT_THAT(raw.Query("SELECT count(*) FROM clicks WHERE caller = 'mallory'"),
              ElementsAre(ElementsAre("0")));

  absl::StatusOr<int64_t> id = BeginClickSync(*store, "trent", "192.0.2.1", kT0);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(raw.Exec("CREATE TRIGGER refuse_update BEFORE UPDATE ON usage "
                     "WHEN OLD.caller = 'trent' BEGIN SELECT RAISE(ABORT, 'refused'); END"),
            SQLITE_OK)
      << sqlite3_errmsg(raw.get());
  ClickCompletion not_sent;
  not_sent.outcome = ClickOutcome::kNotSent;
  absl::Status status = CompleteClickSync(*store, *id, not_sent);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("refused"));
  EXPECT_THAT(raw.Query("SELECT outcome, completed_at_us FROM clicks WHERE id = ?1", {*id}),
              ElementsAre(ElementsAre("0", "NULL")));
  EXPECT_THAT(raw.Query("SELECT clicks FROM usage WHERE caller = 'trent'"),
              ElementsAre(ElementsAre("1")));

  ASSERT_EQ(raw.Exec("DROP TRIGGER refuse_update"), SQLITE_OK);
  ASSERT_TRUE(CompleteClickSync(*store, *id, not_sent).ok());
  EXPECT_THAT(raw.Query("SELECT outcome FROM clicks WHERE id = ?1", {*id}),
              ElementsAre(ElementsAre("3")));
  EXPECT_THAT(raw.Query("SELECT clicks FROM usage WHERE caller = 'trent'"),
              ElementsAre(ElementsAre("0")));
}

// Counters go with whole days (see PruneBefore): a cutoff inside a day removes that morning's
// ledger rows but keeps the day's counters, which still count them, while the part of a day that
// ClicksSince reads from the ledger counts what the ledger still holds.
TEST_F(SqliteStoreTest, PruneInsideADayKeepsThatDaysClickCounters) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const absl::CivilDay day(2024, 3, 1);
  const absl::Time midnight = At(absl::CivilSecond(day));
  Click(*store, "alice", midnight + absl::Hours(6), ClickOutcome::kVerdict);
  Click(*store, "alice", midnight + absl::Hours(18), ClickOutcome::kUpstreamError);
  absl::StatusOr<int64_t> pruned = PruneSync(*store, midnight + absl::Hours(12), 100);
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(*pruned, 2);  // the 06:00 click and its verdict; the day's counters stay

  using Counts = std::vector<std::pair<std::string, int64_t>>;
  auto usage = UsageSync(*store, "alice", midnight, midnight + absl::Hours(24));
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_THAT(Rows(*usage), ElementsAre(IsRow("alice", day, 2, 1, 0, 0)));
  auto clicks = ClicksSinceSync(*store, midnight);
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 2}}));
  clicks = ClicksSinceSync(*store, midnight + absl::Hours(3));
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_EQ(*clicks, (Counts{{"alice", 1}}));

  pruned = PruneSync(*store, midnight + absl::Hours(24), 100);
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(*pruned, 2);  // the 18:00 click and the day's counters
  usage = UsageSync(*store, "", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_TRUE(usage->empty());
  clicks = ClicksSinceSync(*store, absl::InfinitePast());
  ASSERT_TRUE(clicks.ok()) << clicks.status();
  EXPECT_TRUE(clicks->empty());
}

int64_t FloorDay(int64_t us) {
  constexpr int64_t kDay = int64_t{86'400'000'000};
  return us / kDay - (us % kDay < 0 ? 1 : 0);
}

// ClicksSince by brute force: the ledger counted row by row, as before the counters existed.
std::vector<std::pair<std::string, int64_t>> LedgerClicksSince(RawDb& raw, absl::Time since) {
  std::vector<std::pair<std::string, int64_t>> counts;
  for (const auto& row : raw.Query("SELECT caller, count(*) FROM clicks WHERE requested_at_us >= "
                                   "?1 AND outcome != 3 GROUP BY caller ORDER BY caller",
                                   {absl::ToUnixMicros(since)})) {
    counts.emplace_back(row[0], std::stoll(row[1]));
  }
  return counts;
}

using BatchedCounters = std::map<std::pair<std::string, int64_t>, std::pair<int64_t, int64_t>>;

// Usage by brute force, per its contract: the ledger's rows counted per caller and requested_at
// day, plus the batched counters (which the ledger does not hold: `batched`, tracked by the test).
std::vector<Row> LedgerUsage(RawDb& raw, const BatchedCounters& batched, const std::string& caller,
                             absl::Time since, absl::Time until) {
  const absl::CivilDay epoch(1970, 1, 1);
  const absl::CivilDay first = std::max(absl::ToCivilDay(since, absl::UTCTimeZone()), epoch);
  const absl::CivilDay last =
      std::min(absl::ToCivilDay(until - absl::Microseconds(1), absl::UTCTimeZone()),
               absl::CivilDay(9999, 12, 31));
  if (first > last) {
    return {};  // (and last - epoch could overflow: last may be the earliest civil day)
  }
  std::map<std::pair<std::string, int64_t>, Row> days;
  auto in_range = [&](const std::string& c, int64_t day) {
    return (caller.empty() || c == caller) && day >= first - epoch && day <= last - epoch;
  };
  auto at = [&](const std::string& c, int64_t day) -> Row& {
    Row& row = days[{c, day}];
    row.caller = c;
    row.day = epoch + day;
    return row;
  };
  for (const auto& r : raw.Query("SELECT caller, requested_at_us, outcome FROM clicks")) {
    const int64_t day = FloorDay(std::stoll(r[1]));
    const int outcome = std::stoi(r[2]);
    if (in_range(r[0], day) && outcome != 3) {
      Row& row = at(r[0], day);
      ++row.clicks;
      row.upstream_errors += outcome == 2 ? 1 : 0;
    }
  }
  for (const auto& [key, counts] : batched) {
    if (in_range(key.first, key.second) && (counts.first != 0 || counts.second != 0)) {
      Row& row = at(key.first, key.second);
      row.cache_hits += counts.first;
      row.requests += counts.second;
    }
  }
  std::vector<Row> rows;
  for (auto& [key, row] : days) {
    rows.push_back(row);
  }
  return rows;
}

// 2000 random operations (begin, complete in each way, rejected completions, batched counters,
// prunes at midnights) over a few callers and days, on both sides of 1970 and of midnights; after
// many of them ClicksSince and Usage, for random bounds, must equal a brute-force count of the
// ledger.
TEST_F(SqliteStoreTest, ClicksSinceAndUsageAgreeWithTheLedgerOverRandomOperations) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  RawDb raw(path_);
  std::mt19937_64 rng(20240301);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  const std::vector<std::string> callers = {"a", "b", "c", "d"};
  const absl::CivilDay eras[] = {absl::CivilDay(1969, 12, 30), absl::CivilDay(2024, 2, 28)};
  constexpr int kDays = 5;
  // A time in one of the eras' days, often exactly on or next to a midnight.
  auto random_time = [&](int day_lo, int day_hi) {
    const absl::CivilDay day = eras[pick(2)] + day_lo + pick(day_hi - day_lo);
    const absl::Time midnight = At(absl::CivilSecond(day));
    switch (pick(4)) {
      case 0:
        return midnight;
      case 1:
        return midnight - absl::Microseconds(1);
      default:
        return midnight + absl::Microseconds(static_cast<int64_t>(rng() % 86'400'000'000));
    }
  };
  struct Pending {
    int64_t id;
    absl::Time requested_at;
  };
  std::vector<Pending> pending;
  std::vector<int64_t> completed;
  BatchedCounters batched;
  int checks = 0;
  for (int op = 0; op < 2000; ++op) {
    const int kind = pick(100);
    SCOPED_TRACE(testing::Message() << "op " << op << " kind " << kind);
    if (kind < 40) {
      const absl::Time at = random_time(0, kDays);
      absl::StatusOr<int64_t> id = BeginClickSync(*store, callers[pick(4)], "192.0.2.1", at);
      ASSERT_TRUE(id.ok()) << id.status();
      pending.push_back({*id, at});
    } else if (kind < 70) {
      if (pending.empty()) {
        continue;
      }
      const size_t i = static_cast<size_t>(pick(static_cast<int>(pending.size())));
      const int64_t id = pending[i].id;
      pending.erase(pending.begin() + static_cast<ptrdiff_t>(i));
      ClickCompletion completion;
      completion.outcome = std::vector<ClickOutcome>{
          ClickOutcome::kVerdict, ClickOutcome::kUpstreamError, ClickOutcome::kNotSent}[pick(3)];
      if (completion.outcome == ClickOutcome::kVerdict) {
        completion.verdict = MakeVerdict("192.0.2.1", kT0);
      }
      ASSERT_TRUE(CompleteClickSync(*store, id, completion).ok());
      completed.push_back(id);
    } else if (kind < 73) {
      if (completed.empty()) {
        continue;
      }
      ClickCompletion again;
      again.outcome = ClickOutcome::kNotSent;
      const absl::Status status =
          CompleteClickSync(*store, completed[pick(static_cast<int>(completed.size()))], again);
      // Already completed, or pruned since.
      ASSERT_TRUE(status.code() == absl::StatusCode::kFailedPrecondition ||
                  status.code() == absl::StatusCode::kNotFound)
          << status;
    } else if (kind < 82) {
      const std::string& caller = callers[pick(4)];
      const absl::CivilDay day = eras[pick(2)] + pick(kDays);
      const int64_t hits = pick(3);
      const int64_t requests = hits + pick(3);
      ASSERT_TRUE(AddUsageSync(*store, {{caller, day, hits, requests}}).ok());
      auto& counts = batched[{caller, day - absl::CivilDay(1970, 1, 1)}];
      counts.first += hits;
      counts.second += requests;
    } else if (kind < 84) {
      // Prunes at midnights only: inside a day, the counters keep what the ledger drops (see
      // PruneInsideADayKeepsThatDaysClickCounters), which a ledger count cannot reproduce.
      const absl::CivilDay cutoff_day = eras[pick(2)] + pick(3);
      const absl::Time cutoff = At(absl::CivilSecond(cutoff_day));
      for (int batch = 0;; ++batch) {
        ASSERT_LT(batch, 1000);
        absl::StatusOr<int64_t> n = PruneSync(*store, cutoff, 50);
        ASSERT_TRUE(n.ok()) << n.status();
        if (*n == 0) {
          break;
        }
      }
      const int64_t cutoff_number = cutoff_day - absl::CivilDay(1970, 1, 1);
      for (auto it = batched.begin(); it != batched.end();) {
        it = it->first.second < cutoff_number ? batched.erase(it) : std::next(it);
      }
      pending.erase(std::remove_if(pending.begin(), pending.end(),
                                   [&](const Pending& p) { return p.requested_at < cutoff; }),
                    pending.end());
    } else {
      ++checks;
      const absl::Time since = pick(10) == 0 ? absl::InfinitePast() : random_time(-1, kDays + 1);
      auto got = ClicksSinceSync(*store, since);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(*got, LedgerClicksSince(raw, since)) << "since " << since;

      const std::string caller = pick(3) == 0 ? "" : callers[pick(4)];
      const absl::Time from = pick(8) == 0 ? absl::InfinitePast() : random_time(-1, kDays + 1);
      const absl::Time until =
          pick(8) == 0 ? absl::InfiniteFuture() : from + absl::Hours(pick(24 * 4));
      auto usage = UsageSync(*store, caller, from, until);
      ASSERT_TRUE(usage.ok()) << usage.status();
      ASSERT_EQ(Rows(*usage), LedgerUsage(raw, batched, caller, from, until))
          << "caller \"" << caller << "\" from " << from << " until " << until;
    }
  }
  // And over everything at the end, once all remaining clicks are completed as not sent.
  for (const Pending& p : pending) {
    ClickCompletion not_sent;
    not_sent.outcome = ClickOutcome::kNotSent;
    ASSERT_TRUE(CompleteClickSync(*store, p.id, not_sent).ok());
  }
  auto got = ClicksSinceSync(*store, absl::InfinitePast());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, LedgerClicksSince(raw, absl::InfinitePast()));
  EXPECT_FALSE(got->empty());
  auto usage = UsageSync(*store, "", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(Rows(*usage),
            LedgerUsage(raw, batched, "", absl::InfinitePast(), absl::InfiniteFuture()));
  EXPECT_GT(checks, 200);
  std::cout << "[ measured ] " << checks << " consistency checks over " << raw.Count("clicks")
            << " ledger rows left\n";
}

// Start-up cost with a large ledger: a version 2 file with 200,000 ledger rows over 60 days is
// migrated (timed), then ClicksSince and Usage are timed against the brute-force ledger count
// they replace. Timings are printed, not asserted (CI machines vary); results are asserted.
TEST_F(SqliteStoreTest, ClicksSinceWithALargeLedgerReadsOnlyCounters) {
  constexpr int kRows = 200'000;
  constexpr int kCallers = 8;
  const absl::CivilDay first_day(2024, 1, 2);
  const int64_t first_us = absl::ToUnixMicros(At(absl::CivilSecond(first_day)));
  const int64_t step_us = int64_t{60} * 86'400'000'000 / kRows;  // 60 days
  const absl::Time fill_start = absl::Now();
  {
    { std::ofstream create(path_); }
    RawDb raw(path_);
    ASSERT_EQ(raw.Exec(kVersionOneSchemaSql), SQLITE_OK) << sqlite3_errmsg(raw.get());
    ASSERT_EQ(raw.Exec(kVersionTwoAdditionsSql), SQLITE_OK) << sqlite3_errmsg(raw.get());
    // Only the test's time is at stake while filling.
    ASSERT_EQ(raw.Exec("PRAGMA user_version = 2; PRAGMA synchronous = OFF; "
                       "PRAGMA cache_size = -65536; BEGIN"),
              SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(raw.get(),
                                 "INSERT INTO clicks(caller, ip, requested_at_us, outcome) "
                                 "VALUES ('caller' || ?1, '192.0.2.1', ?2, ?3)",
                                 -1, &stmt, nullptr),
              SQLITE_OK);
    for (int i = 0; i < kRows; ++i) {
      sqlite3_bind_int(stmt, 1, i % kCallers);
      sqlite3_bind_int64(stmt, 2, first_us + i * step_us);
      // 10% not sent, 10% errors, 1% pending, the rest verdicts.
      sqlite3_bind_int(stmt, 3, i % 10 == 0 ? 3 : i % 10 == 1 ? 2 : i % 100 == 2 ? 0 : 1);
      ASSERT_EQ(sqlite3_step(stmt), SQLITE_DONE) << sqlite3_errmsg(raw.get());
      sqlite3_reset(stmt);
    }
    sqlite3_finalize(stmt);
    ASSERT_EQ(raw.Exec("COMMIT"), SQLITE_OK);
  }
  const absl::Duration fill_time = absl::Now() - fill_start;
  const absl::Time open_start = absl::Now();
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const absl::Duration open_time = absl::Now() - open_start;
  RawDb raw(path_);
  EXPECT_GT(raw.Count("usage"), kCallers * 59);

  auto time_per_call = [&](const std::function<void()>& call, int repeats = 20) {
    const absl::Time start = absl::Now();
    for (int i = 0; i < repeats; ++i) {
      call();
    }
    return (absl::Now() - start) / repeats;
  };
  // As at start-up: the month start, and an allowance period start.
  const absl::Time month = At(absl::CivilSecond(absl::CivilDay(2024, 2, 1)));
  const absl::Time period = At(absl::CivilSecond(absl::CivilDay(2024, 1, 15)));
  const absl::Time inside_a_day = period + absl::Hours(13) + absl::Microseconds(7);
  for (const absl::Time since : {month, period, inside_a_day, absl::InfinitePast()}) {
    auto got = ClicksSinceSync(*store, since);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(*got, LedgerClicksSince(raw, since)) << since;
    ASSERT_EQ(got->size(), static_cast<size_t>(kCallers));
  }
  const absl::Duration month_time =
      time_per_call([&] { ASSERT_TRUE(ClicksSinceSync(*store, month).ok()); });
  const absl::Duration inside_time =
      time_per_call([&] { ASSERT_TRUE(ClicksSinceSync(*store, inside_a_day).ok()); });
  const absl::Duration ledger_time =
      time_per_call([&] { ASSERT_FALSE(LedgerClicksSince(raw, month).empty()); }, 3);
  const absl::Time month_end = At(absl::CivilSecond(absl::CivilDay(2024, 3, 1)));
  const absl::Duration usage_all_time = time_per_call([&] {
    auto usage = UsageSync(*store, "", month, month_end);
    ASSERT_TRUE(usage.ok());
    ASSERT_EQ(usage->size(), static_cast<size_t>(kCallers * 29));
  });
  const absl::Duration usage_one_time = time_per_call([&] {
    auto usage = UsageSync(*store, "caller3", month, month_end);
    ASSERT_TRUE(usage.ok());
    ASSERT_EQ(usage->size(), 29u);
  });
  const absl::Time check_start = absl::Now();
  auto usage = UsageSync(*store, "", month, month_end);
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(Rows(*usage), LedgerUsage(raw, {}, "", month, month_end));
  std::cout << "[ measured ] filled in " << fill_time << ", checked in "
            << (absl::Now() - check_start) << "\n";
  std::cout << "[ measured ] " << kRows << " ledger rows: migration to v3 (open) " << open_time
            << "; per call: ClicksSince(month start) " << month_time
            << ", ClicksSince(inside a day) " << inside_time << ", brute-force ledger count "
            << ledger_time << ", Usage(all, month) " << usage_all_time
            << ", Usage(one caller, month) " << usage_one_time << "\n";
}

// --- pruning ---------------------------------------------------------------------------

TEST_F(SqliteStoreTest, PruneBeforeDeletesOnlyOldRowsInBatches) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  // Verdicts at kT0 + 0..9 s, each with its click 5 ms earlier.
  for (int i = 0; i < 10; ++i) {
    Append(*store, MakeVerdict("192.0.2.1", kT0 + absl::Seconds(i), "ua", std::to_string(i)));
  }
  Click(*store, "alice", kT0 - absl::Hours(24 * 100),
        ClickOutcome::kPending);  // a crash's leftover
  const absl::CivilDay today = absl::ToCivilDay(kT0, absl::UTCTimeZone());
  ASSERT_TRUE(AddUsageSync(*store, {{"alice", today - 1, 1, 1}, {"alice", today, 1, 1}}).ok());

  const absl::Time cutoff = kT0 + absl::Seconds(5);
  // Old: verdicts 0..4 (5), clicks of verdicts 0..5 plus the leftover (7), the usage rows of
  // yesterday (counters) and of the leftover's day (its click count) (2).
  absl::StatusOr<int64_t> first = PruneSync(*store, cutoff, 4);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, 4);
  HistoryQuery query;
  query.ip = "192.0.2.1";
  auto history = HistorySync(*store, query);
  ASSERT_TRUE(history.ok());
  EXPECT_THAT(Callers(*history), ElementsAre("9", "8", "7", "6", "5", "4"));  // oldest went first

  int64_t total = *first;
  int batches = 1;
  for (;;) {
    absl::StatusOr<int64_t> n = PruneSync(*store, cutoff, 4);
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_LE(*n, 4);
    if (*n == 0) {
      break;
    }
    total += *n;
    ASSERT_LT(++batches, 10);
  }
  EXPECT_EQ(total, 14);
  EXPECT_EQ(batches, 4);

  history = HistorySync(*store, query);
  ASSERT_TRUE(history.ok());
  EXPECT_THAT(Callers(*history), ElementsAre("9", "8", "7", "6", "5"));
  auto usage = UsageSync(*store, "alice", absl::InfinitePast(), absl::InfiniteFuture());
  ASSERT_TRUE(usage.ok());
  ASSERT_EQ(usage->size(), 1u);  // the leftover click and yesterday's counters are gone
  EXPECT_EQ((*usage)[0].day, today);
  EXPECT_EQ(PruneSync(*store, cutoff, 0).status().code(), absl::StatusCode::kInvalidArgument);
  store.reset();

  RawDb raw(path_);
  EXPECT_THAT(raw.Query("SELECT requested_at_us FROM clicks ORDER BY requested_at_us"),
              ::testing::SizeIs(4));
  EXPECT_THAT(raw.Query("SELECT count(*) FROM clicks WHERE requested_at_us < ?1",
                        {absl::ToUnixMicros(cutoff)}),
              ElementsAre(ElementsAre("0")));
}

// --- secrets ---------------------------------------------------------------------------

// --- health ----------------------------------------------------------------------------

TEST_F(SqliteStoreTest, PingFailsWhenTheDatabaseFileIsReplacedOrRemoved) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  Append(*store, MakeVerdict("192.0.2.1", kT0));
  ASSERT_TRUE(PingSync(*store).ok());

  const std::string garbage_path = dir_ + "/garbage";
  { std::ofstream(garbage_path, std::ios::binary) << std::string(8192, '\x5a'); }
  ASSERT_EQ(std::rename(garbage_path.c_str(), path_.c_str()), 0);
  absl::Status status = PingSync(*store);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("store read failed"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("replaced"));

  ASSERT_EQ(std::remove(path_.c_str()), 0);
  status = PingSync(*store);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("store read failed"));
  EXPECT_THAT(std::string(status.message()), HasSubstr(path_));
}

// Writes fail while another connection holds the write lock (see
// LockedStoreFailsWritesAndRecoversAfterwards); Ping reports it until a write commits again.
TEST_F(SqliteStoreTest, PingReportsFailingWritesUntilAWriteSucceeds) {
  FakeClock clock(kT0);
  SqliteStoreOptions options;
  options.busy_timeout = absl::Milliseconds(50);
  options.clock = &clock;
  std::unique_ptr<VerdictStore> store = Open(options);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(PingSync(*store).ok());

  // Recovery noticed by Ping's own trial write, with no other traffic.
  {
    RawDb locker(path_);
    ASSERT_EQ(locker.Exec("BEGIN EXCLUSIVE"), SQLITE_OK) << sqlite3_errmsg(locker.get());
    ASSERT_FALSE(BeginClickSync(*store, "alice", "192.0.2.2", kT0).ok());
    clock.Advance(absl::Seconds(1));
    absl::Status status = PingSync(*store);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("store writes failing since 2023-11-14T22:13:20Z: store write failed: "
                          "database is locked"));
    store->Flush();  // the trial write Ping queued fails too: still locked
    EXPECT_EQ(PingSync(*store).code(), absl::StatusCode::kUnavailable);
    store->Flush();
    ASSERT_EQ(locker.Exec("COMMIT"), SQLITE_OK);
  }
  EXPECT_EQ(PingSync(*store).code(), absl::StatusCode::kUnavailable);  // not known yet...
  store->Flush();  // ...until the trial write Ping queued commits
  EXPECT_TRUE(PingSync(*store).ok()) << PingSync(*store);

  // Recovery noticed through an ordinary write.
  {
    RawDb locker(path_);
    ASSERT_EQ(locker.Exec("BEGIN EXCLUSIVE"), SQLITE_OK) << sqlite3_errmsg(locker.get());
    ASSERT_FALSE(AddUsageSync(*store, {{"alice", absl::CivilDay(2024, 1, 1), 1, 1}}).ok());
    ASSERT_EQ(locker.Exec("COMMIT"), SQLITE_OK);
  }
  EXPECT_THAT(std::string(PingSync(*store).message()), HasSubstr("store writes failing"));
  store->Flush();  // let Ping's trial write finish before the next write, to keep this exact
  ASSERT_TRUE(BeginClickSync(*store, "alice", "192.0.2.3", kT0).ok());
  EXPECT_TRUE(PingSync(*store).ok()) << PingSync(*store);
  // Reads kept working throughout.
  EXPECT_TRUE(ClicksSinceSync(*store, absl::InfinitePast()).ok());
}

}  // namespace
}  // namespace verdictd
