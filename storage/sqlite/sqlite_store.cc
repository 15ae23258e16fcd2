// The SQLite implementation of VerdictStore.
//
// One write connection, owned by one writer thread, commits queued writes in groups; reads are
// queued to a few reader threads, each with a read-only connection of its own, so no caller's
// thread ever waits for the file. WAL lets the readers run while the writer commits. Every
// connection is used by one thread at a time (SQLITE_OPEN_NOMUTEX).

#include "storage/sqlite/sqlite_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "storage/sqlite/sqlite_store_internal.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace {

using sqlite_store_internal::kClicksSinceSql;
using sqlite_store_internal::kHistorySql;
using sqlite_store_internal::kLatestForIpAndUserAgentSql;
using sqlite_store_internal::kLatestForIpSql;
using sqlite_store_internal::kSchemaVersion;
using sqlite_store_internal::kUsageAllSql;
using sqlite_store_internal::kUsageOneSql;

// Reader threads, each with its own connection: WAL lets them read concurrently, and a few cover
// the hit path's misses and the audit reads without one slow History page holding up LatestFor.
constexpr int kReaderThreads = 4;

// Migration i (0-based) takes the schema from version i to i + 1. Append only: never edit a
// migration that has shipped, since existing files have already run it.
constexpr const char* kMigrations[] = {
    // 1: verdict history and click ledger. user_agent holds blobs (see BindBytes).
    R"sql(
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
    )sql",
    // 2: pruning by age, batched usage counters, named secrets. usage.day counts days since
    // 1970-01-01 UTC. meta keys are namespaced ("secret:<name>", see Secret).
    R"sql(
      CREATE INDEX verdicts_by_time ON verdicts(checked_at_us);
      CREATE TABLE usage(
        caller TEXT NOT NULL,
        day INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(caller, day)) WITHOUT ROWID;
      CREATE TABLE meta(name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    )sql",
    // 3: per-day click counters next to the batched ones, so that start-up (ClicksSince) and
    // Usage read callers x days of counters instead of counting the ledger. From here on every
    // ledger write keeps them in step in its own transaction; the backfill counts the ledger once
    // (clicks: not marked not-sent, pending included; upstream_errors: completed as errors). The
    // day is floor(requested_at_us / day) also before 1970, as DayOfMicros computes it. The
    // backfill reads the table in rowid order (NOT INDEXED) and sorts the groups once: walking
    // clicks_by_caller instead, as the planner would, visits the rows in random order.
    R"sql(
      ALTER TABLE usage ADD COLUMN clicks INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE usage ADD COLUMN upstream_errors INTEGER NOT NULL DEFAULT 0;
      CREATE INDEX usage_by_day ON usage(day);
      INSERT INTO usage(caller, day, clicks, upstream_errors)
        SELECT caller,
               requested_at_us / 86400000000 - (requested_at_us % 86400000000 < 0) AS click_day,
               sum(outcome != 3), sum(outcome = 2)
        FROM clicks NOT INDEXED WHERE true GROUP BY caller, click_day HAVING sum(outcome != 3) > 0
        ON CONFLICT(caller, day) DO UPDATE SET clicks = excluded.clicks,
                                               upstream_errors = excluded.upstream_errors;
    )sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion,
              "kSchemaVersion must equal the number of migrations");

constexpr char kInsertClickSql[] =
    "INSERT INTO clicks(caller, ip, requested_at_us) VALUES (?1, ?2, ?3)";
// A begun click counts as billed on its requested_at day until it is completed as not sent.
constexpr char kCountClickSql[] =
    "INSERT INTO usage(caller, day, clicks) VALUES (?1, ?2, 1) "
    "ON CONFLICT(caller, day) DO UPDATE SET clicks = clicks + 1";
// Only a pending click can be completed: the ledger row of a finished click never changes. The
// click's caller and time say which day's counters the outcome changes.
constexpr char kCompleteClickSql[] =
    "UPDATE clicks SET completed_at_us = ?2, outcome = ?3, http_status = ?4, error = ?5, "
    "latency_us = ?6 WHERE id = ?1 AND outcome = 0 RETURNING caller, requested_at_us";
// ?3 is -1 for a click that was not sent (unbilled after all); ?4 is 1 for an upstream error.
constexpr char kAdjustClickCountersSql[] =
    "UPDATE usage SET clicks = clicks + ?3, upstream_errors = upstream_errors + ?4 "
    "WHERE caller = ?1 AND day = ?2";
constexpr char kClickExistsSql[] = "SELECT 1 FROM clicks WHERE id = ?1";
constexpr char kInsertVerdictSql[] =
    "INSERT INTO verdicts(ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, "
    "caller, raw_body, click_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
constexpr char kAddUsageSql[] =
    "INSERT INTO usage(caller, day, cache_hits, requests) VALUES (?1, ?2, ?3, ?4) "
    "ON CONFLICT(caller, day) DO UPDATE SET cache_hits = cache_hits + excluded.cache_hits, "
    "requests = requests + excluded.requests";
// Pruning deletes the oldest rows first (walking the time indexes), ?2 at most. Pending clicks
// that old are deleted too: they are left by a crash long ago and are history like the rest.
constexpr char kPruneVerdictsSql[] =
    "DELETE FROM verdicts WHERE id IN "
    "(SELECT id FROM verdicts WHERE checked_at_us < ?1 ORDER BY checked_at_us LIMIT ?2)";
constexpr char kPruneClicksSql[] =
    "DELETE FROM clicks WHERE id IN "
    "(SELECT id FROM clicks WHERE requested_at_us < ?1 ORDER BY requested_at_us LIMIT ?2)";
// Usage rows are few (callers x days); usage_by_day finds the old ones, and any of them will do.
constexpr char kPruneUsageSql[] =
    "DELETE FROM usage WHERE (caller, day) IN "
    "(SELECT caller, day FROM usage WHERE day < ?1 LIMIT ?2)";
// Of two racing writers of the same secret, the first wins and both read it back.
constexpr char kInsertMetaSql[] = "INSERT OR IGNORE INTO meta(name, value) VALUES (?1, ?2)";
// Ping's trial write after a failure: a real page write, so that a full disk is not mistaken for
// recovery the way an empty transaction would be.
constexpr char kWriteProbeSql[] =
    "INSERT OR REPLACE INTO meta(name, value) VALUES ('write_probe', ?1)";

// Reads (the others are in sqlite_store_internal.h, whose plans the tests check).
constexpr char kReadMetaSql[] = "SELECT value FROM meta WHERE name = ?1";
constexpr char kPingSql[] = "SELECT 1 FROM verdicts LIMIT 1";

constexpr int64_t kMicrosPerDay = int64_t{86'400'000'000};
constexpr absl::CivilDay kEpochDay(1970, 1, 1);
// Usage's day range is clamped to these, so that infinite bounds mean every day.
constexpr absl::CivilDay kLastDay(9999, 12, 31);
// Secret sizes accepted; a secret is a key, not a payload.
constexpr size_t kMaxSecretBytes = 1024;

struct StmtDeleter {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtDeleter>;

// sqlite3_close_v2 defers the close until statements still alive are finalized, so members may
// be destroyed in any order.
struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

// Resets a statement and drops its bindings when a use of it ends. Resetting also ends the
// statement's implicit read transaction, which would otherwise pin an old snapshot.
class ScopedReset {
 public:
  explicit ScopedReset(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ScopedReset(const ScopedReset&) = delete;
  ScopedReset& operator=(const ScopedReset&) = delete;
  ~ScopedReset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

 private:
  sqlite3_stmt* stmt_;
};

// Bound values are SQLITE_STATIC: every caller keeps them alive until the statement is reset.
// A null data pointer would bind SQL NULL, hence the "" for empty views.
int BindText(sqlite3_stmt* stmt, int index, absl::string_view value) {
  return sqlite3_bind_text64(stmt, index, value.empty() ? "" : value.data(), value.size(),
                             SQLITE_STATIC, SQLITE_UTF8);
}

// For bytes that may hold NUL or invalid UTF-8 (user agents, response bodies): a blob keeps them
// exactly, and an equality test against a blob parameter compares bytes.
int BindBytes(sqlite3_stmt* stmt, int index, absl::string_view value) {
  return sqlite3_bind_blob64(stmt, index, value.empty() ? "" : value.data(), value.size(),
                             SQLITE_STATIC);
}

// The column's bytes as stored, whether text or blob.
std::string ColumnBytes(sqlite3_stmt* stmt, int index) {
  const void* data = sqlite3_column_blob(stmt, index);
  const int size = sqlite3_column_bytes(stmt, index);
  if (data == nullptr) {
    return std::string();
  }
  return std::string(static_cast<const char*>(data), static_cast<size_t>(size));
}

// The first whole microsecond at or after `t` (ToUnixMicros rounds down), so that "t <= x" and
// "x < t" hold for stored microseconds exactly when they hold for the times. Saturates for
// infinite times.
int64_t CeilUnixMicros(absl::Time t) {
  const int64_t us = absl::ToUnixMicros(t);
  return us != std::numeric_limits<int64_t>::max() && absl::FromUnixMicros(us) < t ? us + 1 : us;
}

int64_t DayNumber(absl::CivilDay day) { return day - kEpochDay; }

// The UTC day number (days since 1970-01-01) of a stored microsecond: floor division, so that
// times before 1970 fall on their own day rather than on day 0. The migration to version 3
// computes the same in SQL.
int64_t DayOfMicros(int64_t us) { return us / kMicrosPerDay - (us % kMicrosPerDay < 0 ? 1 : 0); }

// A verdict from the ten columns ip, user_agent, score, proxy, tor, vpn, crawler, bot,
// checked_at_us, caller starting at column `first`.
Verdict ColumnVerdict(sqlite3_stmt* stmt, int first) {
  Verdict verdict;
  verdict.ip = ColumnBytes(stmt, first);
  verdict.user_agent = ColumnBytes(stmt, first + 1);
  const int score = sqlite3_column_int(stmt, first + 2);
  verdict.assessment.score =
      score >= static_cast<int>(Score::kUnspecified) && score <= static_cast<int>(Score::kFake)
          ? static_cast<Score>(score)
          : Score::kUnspecified;
  verdict.assessment.proxy = sqlite3_column_int(stmt, first + 3) != 0;
  verdict.assessment.tor = sqlite3_column_int(stmt, first + 4) != 0;
  verdict.assessment.vpn = sqlite3_column_int(stmt, first + 5) != 0;
  verdict.assessment.crawler = sqlite3_column_int(stmt, first + 6) != 0;
  verdict.assessment.bot = sqlite3_column_int(stmt, first + 7) != 0;
  verdict.checked_at = absl::FromUnixMicros(sqlite3_column_int64(stmt, first + 8));
  verdict.caller = ColumnBytes(stmt, first + 9);
  return verdict;
}

// Fills `out` from the kernel's CSPRNG (getrandom(2), blocking only until it is seeded at boot).
absl::Status FillRandom(std::string& out) {
  size_t filled = 0;
  while (filled < out.size()) {
    const ssize_t n = getrandom(out.data() + filled, out.size() - filled, 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return absl::InternalError(
          absl::StrCat("getrandom failed: ", std::generic_category().message(errno)));
    }
    filled += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status WriteFailed(sqlite3* db) {
  return absl::UnavailableError(absl::StrCat("store write failed: ", sqlite3_errmsg(db)));
}

absl::Status ReadFailed(sqlite3* db) {
  return absl::UnavailableError(absl::StrCat("store read failed: ", sqlite3_errmsg(db)));
}

absl::StatusOr<Stmt> Prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return absl::InternalError(absl::StrCat("cannot prepare \"", sql, "\": ", sqlite3_errmsg(db)));
  }
  return Stmt(stmt);
}

// Runs a statement that returns no rows (anything past the first row is ignored).
absl::Status Run(sqlite3* db, sqlite3_stmt* stmt) {
  ScopedReset reset(stmt);
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
    return WriteFailed(db);
  }
  return absl::OkStatus();
}

// --- opening -----------------------------------------------------------------------------

class Opener {
 public:
  explicit Opener(const SqliteStoreOptions& options) : options_(options) {}

  absl::Status Unusable(absl::string_view why) const {
    return absl::FailedPreconditionError(
        absl::StrCat("database ", options_.path, " is not usable: ", why));
  }
  absl::Status Unusable(sqlite3* db) const { return Unusable(sqlite3_errmsg(db)); }

  // Creates the file 0600 if missing, so the history is never readable by others even briefly.
  absl::Status CreateIfMissing() const {
    const int fd = open(options_.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      close(fd);
    } else if (errno != EEXIST) {
      return Unusable(absl::StrCat("cannot create it: ", std::generic_category().message(errno)));
    }
    struct stat st;
    if (stat(options_.path.c_str(), &st) != 0) {
      return Unusable(std::generic_category().message(errno));
    }
    if (!S_ISREG(st.st_mode)) {
      return Unusable("not a regular file");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Db> OpenConnection(int flags) const {
    sqlite3* raw = nullptr;
    const int rc =
        sqlite3_open_v2(options_.path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    Db db(raw);
    if (rc != SQLITE_OK) {
      return Unusable(db != nullptr ? sqlite3_errmsg(db.get()) : sqlite3_errstr(rc));
    }
    sqlite3_extended_result_codes(db.get(), 1);
    // Before anything that may take a lock (switching to WAL does), so that step waits too.
    const int64_t ms =
        std::clamp<int64_t>(absl::ToInt64Milliseconds(options_.busy_timeout), 0, INT_MAX);
    sqlite3_busy_timeout(db.get(), static_cast<int>(ms));
    return db;
  }

  // Runs SQL without parameters; `sql` never contains values.
  absl::Status Exec(sqlite3* db, const char* sql) const {
    if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
      return Unusable(db);
    }
    return absl::OkStatus();
  }

  // The first column of the first row of `sql` (a pragma), as text.
  absl::StatusOr<std::string> QueryText(sqlite3* db, const char* sql) const {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &raw, nullptr) != SQLITE_OK) {
      sqlite3_finalize(raw);
      return Unusable(db);
    }
    Stmt stmt(raw);
    const int rc = sqlite3_step(stmt.get());
    if (rc == SQLITE_ROW) {
      return ColumnBytes(stmt.get(), 0);
    }
    if (rc == SQLITE_DONE) {
      return std::string();
    }
    return Unusable(db);
  }

  absl::StatusOr<Db> OpenWriter() const {
    absl::StatusOr<Db> db = OpenConnection(SQLITE_OPEN_READWRITE);
    if (!db.ok()) {
      return db.status();
    }
    sqlite3* conn = db->get();
    // SQLite silently falls back to read-only when the file is write-protected.
    if (sqlite3_db_readonly(conn, "main") == 1) {
      return Unusable("the file is read-only");
    }
    // The first statement that reads the file: a non-database fails here.
    absl::StatusOr<std::string> mode = QueryText(conn, "PRAGMA journal_mode=WAL");
    if (!mode.ok()) {
      return mode.status();
    }
    if (*mode != "wal") {
      return Unusable(absl::StrCat("cannot switch to WAL (journal_mode is \"", *mode, "\")"));
    }
    absl::Status status = Exec(
        conn, options_.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    if (!status.ok()) {
      return status;
    }
    status = Migrate(conn);
    if (!status.ok()) {
      return status;
    }
    return db;
  }

 private:
  // Brings the schema to kSchemaVersion. Runs in a write transaction even when there is nothing
  // to do: that both serialises concurrent openers and proves at open time that the file can be
  // written, rather than at the first click.
  absl::Status Migrate(sqlite3* db) const {
    absl::Status status = Exec(db, "BEGIN IMMEDIATE");
    if (!status.ok()) {
      return status;
    }
    status = MigrateInTransaction(db);
    if (status.ok()) {
      status = Exec(db, "COMMIT");
    }
    if (!status.ok() && sqlite3_get_autocommit(db) == 0) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    return status;
  }

  absl::Status MigrateInTransaction(sqlite3* db) const {
    absl::StatusOr<std::string> text = QueryText(db, "PRAGMA user_version");
    if (!text.ok()) {
      return text.status();
    }
    int version = 0;
    if (!absl::SimpleAtoi(*text, &version) || version < 0) {
      return Unusable(absl::StrCat("unexpected user_version \"", *text, "\""));
    }
    if (version > kSchemaVersion) {
      return Unusable(absl::StrCat("schema version ", version,
                                   " is newer than this build understands (", kSchemaVersion, ")"));
    }
    if (version == kSchemaVersion) {
      return absl::OkStatus();
    }
    for (int v = version; v < kSchemaVersion; ++v) {
      absl::Status status = Exec(db, kMigrations[v]);
      if (!status.ok()) {
        return status;
      }
    }
    // PRAGMA takes no bound parameters; the value is a compile-time constant.
    const std::string set_version = absl::StrCat("PRAGMA user_version = ", kSchemaVersion);
    absl::Status status = Exec(db, set_version.c_str());
    if (status.ok()) {
      spdlog::info("database {}: schema migrated from version {} to {}", options_.path, version,
                   kSchemaVersion);
    }
    return status;
  }

  const SqliteStoreOptions& options_;
};

// --- connections -------------------------------------------------------------------------

struct ReadConnection {
  Db db;
  Stmt latest_for_ip;
  Stmt latest_for_ip_and_user_agent;
  Stmt history;
  Stmt usage_all;
  Stmt usage_one;
  Stmt clicks_since;
  Stmt read_meta;
  Stmt ping;
};

struct WriteConnection {
  Db db;
  Stmt begin;
  Stmt commit;
  Stmt rollback;
  Stmt savepoint;
  Stmt rollback_to_savepoint;
  Stmt release_savepoint;
  Stmt insert_click;
  Stmt count_click;
  Stmt complete_click;
  Stmt adjust_click_counters;
  Stmt click_exists;
  Stmt insert_verdict;
  Stmt add_usage;
  Stmt prune_verdicts;
  Stmt prune_clicks;
  Stmt prune_usage;
  Stmt insert_meta;
  Stmt write_probe;
};

// Prepares every statement of `statements` on `db`.
absl::Status PrepareAll(sqlite3* db, const std::pair<Stmt*, const char*>* begin,
                        const std::pair<Stmt*, const char*>* end) {
  for (auto it = begin; it != end; ++it) {
    absl::StatusOr<Stmt> stmt = Prepare(db, it->second);
    if (!stmt.ok()) {
      return stmt.status();
    }
    *it->first = *std::move(stmt);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WriteConnection>> PrepareWriter(Db db) {
  auto conn = std::make_unique<WriteConnection>();
  conn->db = std::move(db);
  const std::pair<Stmt*, const char*> statements[] = {
      {&conn->begin, "BEGIN IMMEDIATE"},
      {&conn->commit, "COMMIT"},
      {&conn->rollback, "ROLLBACK"},
      {&conn->savepoint, "SAVEPOINT op"},
      {&conn->rollback_to_savepoint, "ROLLBACK TO op"},
      {&conn->release_savepoint, "RELEASE op"},
      {&conn->insert_click, kInsertClickSql},
      {&conn->count_click, kCountClickSql},
      {&conn->complete_click, kCompleteClickSql},
      {&conn->adjust_click_counters, kAdjustClickCountersSql},
      {&conn->click_exists, kClickExistsSql},
      {&conn->insert_verdict, kInsertVerdictSql},
      {&conn->add_usage, kAddUsageSql},
      {&conn->prune_verdicts, kPruneVerdictsSql},
      {&conn->prune_clicks, kPruneClicksSql},
      {&conn->prune_usage, kPruneUsageSql},
      {&conn->insert_meta, kInsertMetaSql},
      {&conn->write_probe, kWriteProbeSql},
  };
  absl::Status status = PrepareAll(conn->db.get(), std::begin(statements), std::end(statements));
  if (!status.ok()) {
    return status;
  }
  return conn;
}

absl::StatusOr<std::unique_ptr<ReadConnection>> PrepareReader(Db db) {
  auto conn = std::make_unique<ReadConnection>();
  conn->db = std::move(db);
  const std::pair<Stmt*, const char*> statements[] = {
      {&conn->latest_for_ip, kLatestForIpSql},
      {&conn->latest_for_ip_and_user_agent, kLatestForIpAndUserAgentSql},
      {&conn->history, kHistorySql},
      {&conn->usage_all, kUsageAllSql},
      {&conn->usage_one, kUsageOneSql},
      {&conn->clicks_since, kClicksSinceSql},
      {&conn->read_meta, kReadMetaSql},
      {&conn->ping, kPingSql},
  };
  absl::Status status = PrepareAll(conn->db.get(), std::begin(statements), std::end(statements));
  if (!status.ok()) {
    return status;
  }
  return conn;
}

// --- the store ---------------------------------------------------------------------------

class SqliteStore final : public VerdictStore {
 public:
  // `file` identifies the database file the writer opened (see Ping).
  SqliteStore(SqliteStoreOptions options, std::unique_ptr<WriteConnection> writer,
              const struct stat& file)
      : options_(std::move(options)),
        file_dev_(file.st_dev),
        file_ino_(file.st_ino),
        writer_(std::move(writer)) {
    writer_thread_ = std::thread([this] { WriterLoop(); });
    for (int i = 0; i < kReaderThreads; ++i) {
      reader_threads_.emplace_back([this] { ReaderLoop(); });
    }
  }

  // Answers every queued read and closes the readers, then commits (or fails) and reports every
  // queued write and finally closes the writer, whose close checkpoints the WAL into the main
  // file. A read issued meanwhile (by a write's callback, e.g. Secret's) runs on the issuing
  // store thread.
  ~SqliteStore() override {
    {
      absl::MutexLock lock(&reads_mu_);
      readers_stopping_ = true;
    }
    for (std::thread& reader : reader_threads_) {
      reader.join();
    }
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    writer_thread_.join();
  }

  void LatestFor(std::string ip, std::optional<std::string> user_agent,
                 ReadCallback<std::optional<Verdict>> done) override;
  void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                  ClickCallback done) override;
  void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) override;
  void History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) override;
  void AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) override;
  void Usage(std::string caller, absl::Time since, absl::Time until,
             ReadCallback<std::vector<DailyUsage>> done) override;
  void ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) override;
  void PruneBefore(absl::Time cutoff, int max_rows,
                   std::function<void(absl::StatusOr<int64_t>)> done) override;
  void Secret(std::string name, size_t bytes, ReadCallback<std::string> done) override;
  void Ping(DoneCallback done) override;
  void Flush() override;

 private:
  struct BeginClickOp {
    std::string caller;
    std::string ip;
    int64_t requested_at_us;
    ClickCallback done;
  };
  struct CompleteClickOp {
    int64_t click_id;
    ClickCompletion completion;
    int64_t completed_at_us;
    DoneCallback done;
  };
  struct AddUsageOp {
    std::vector<UsageDelta> deltas;
    DoneCallback done;
  };
  struct PruneOp {
    int64_t cutoff_us;
    int64_t max_rows;
    std::function<void(absl::StatusOr<int64_t>)> done;
  };
  struct PutMetaOp {
    std::string name;
    std::string value;
    DoneCallback done;
  };
  // Ping's trial write; its result is what it does to the recorded write health.
  struct ProbeOp {
    int64_t now_us;
  };
  using WriteOp =
      std::variant<BeginClickOp, CompleteClickOp, AddUsageOp, PruneOp, PutMetaOp, ProbeOp>;

  // The result of one operation inside a group, and whether the group's transaction survived it.
  struct Applied {
    absl::StatusOr<int64_t> result;
    absl::Status transaction;
  };

  void Enqueue(WriteOp op);
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return !queue_.empty() || stopping_;
  }
  void WriterLoop();
  void CommitGroup(std::vector<WriteOp>& group);
  Applied ApplyInSavepoint(WriteOp& op);
  absl::StatusOr<int64_t> Apply(BeginClickOp& op);
  absl::StatusOr<int64_t> Apply(CompleteClickOp& op);
  absl::StatusOr<int64_t> Apply(AddUsageOp& op);
  absl::StatusOr<int64_t> Apply(PruneOp& op);
  absl::StatusOr<int64_t> Apply(PutMetaOp& op);
  absl::StatusOr<int64_t> Apply(ProbeOp& op);
  void Deliver(WriteOp& op, const absl::StatusOr<int64_t>& result);
  // Records how the latest write attempt went, for Ping.
  void RecordWriteHealth(const absl::Status& status);

  // A reader thread's connection: opened on first use, and dropped when a read on it fails
  // (it may be the cause), so the next read opens a fresh one.
  using Reader = std::unique_ptr<ReadConnection>;
  using ReadTask = std::function<void(Reader&)>;
  // Queues `task` to a reader thread; once the readers are stopping, runs it here instead (only
  // store threads issue reads then).
  void PostRead(ReadTask task);
  bool HasReadOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(reads_mu_) {
    return !read_queue_.empty() || readers_stopping_;
  }
  void ReaderLoop();
  // Runs `read` on `reader`, opening it first if needed.
  template <typename T>
  absl::StatusOr<T> WithReader(Reader& reader,
                               const std::function<absl::StatusOr<T>(ReadConnection&)>& read);
  absl::StatusOr<std::optional<Verdict>> ReadLatestFor(Reader& reader, absl::string_view ip,
                                                       std::optional<absl::string_view> user_agent);
  absl::StatusOr<std::vector<HistoryEntry>> ReadHistory(Reader& reader, const HistoryQuery& query);
  absl::StatusOr<std::vector<DailyUsage>> ReadUsage(Reader& reader, absl::string_view caller,
                                                    absl::Time since, absl::Time until);
  absl::StatusOr<ClickCounts> ReadClicksSince(Reader& reader, absl::Time since);
  absl::StatusOr<std::optional<std::string>> ReadMeta(Reader& reader, const std::string& name);
  // Answers Secret with `stored`, the secret named `name` as read, checked against `bytes`.
  // Called only once a secret exists (stored or just written), so a missing one is an error.
  static void FinishSecret(absl::StatusOr<std::optional<std::string>> stored,
                           const std::string& name, size_t bytes,
                           const ReadCallback<std::string>& done);
  absl::Status PingNow(Reader& reader);

  const SqliteStoreOptions options_;
  // The database file as opened: Ping notices when the path names another file.
  const dev_t file_dev_;
  const ino_t file_ino_;

  // Used only by the writer thread while it runs.
  const std::unique_ptr<WriteConnection> writer_;

  absl::Mutex reads_mu_;
  std::deque<ReadTask> read_queue_ ABSL_GUARDED_BY(reads_mu_);
  bool readers_stopping_ ABSL_GUARDED_BY(reads_mu_) = false;

  absl::Mutex queue_mu_;
  std::deque<WriteOp> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  // Operations ever queued, and ever finished (committed or failed, callback returned). Ops are
  // finished in queue order, so "finished_ >= n" means the first n are done.
  uint64_t enqueued_ ABSL_GUARDED_BY(queue_mu_) = 0;
  uint64_t finished_ ABSL_GUARDED_BY(queue_mu_) = 0;

  absl::Mutex health_mu_;
  // The failure of the latest write attempt and when it happened; OK after a successful commit.
  absl::Status write_error_ ABSL_GUARDED_BY(health_mu_);
  absl::Time write_error_at_ ABSL_GUARDED_BY(health_mu_);
  bool probe_queued_ ABSL_GUARDED_BY(health_mu_) = false;

  std::thread writer_thread_;
  std::vector<std::thread> reader_threads_;
};

void SqliteStore::PostRead(ReadTask task) {
  {
    absl::MutexLock lock(&reads_mu_);
    if (!readers_stopping_) {
      read_queue_.push_back(std::move(task));
      return;
    }
  }
  Reader reader;
  task(reader);
}

void SqliteStore::ReaderLoop() {
  Reader reader;
  for (;;) {
    ReadTask task;
    {
      absl::MutexLock lock(&reads_mu_);
      reads_mu_.Await(absl::Condition(this, &SqliteStore::HasReadOrStopping));
      if (read_queue_.empty()) {
        return;  // stopping, and every queued read is answered
      }
      task = std::move(read_queue_.front());
      read_queue_.pop_front();
    }
    task(reader);
  }
}

template <typename T>
absl::StatusOr<T> SqliteStore::WithReader(
    Reader& reader, const std::function<absl::StatusOr<T>(ReadConnection&)>& read) {
  if (reader == nullptr) {
    Opener opener(options_);
    absl::StatusOr<Db> db = opener.OpenConnection(SQLITE_OPEN_READONLY);
    if (!db.ok()) {
      return db.status();
    }
    absl::StatusOr<std::unique_ptr<ReadConnection>> prepared = PrepareReader(*std::move(db));
    if (!prepared.ok()) {
      return absl::UnavailableError(
          absl::StrCat("store read failed: ", prepared.status().message()));
    }
    reader = *std::move(prepared);
  }
  absl::StatusOr<T> result = read(*reader);
  if (!result.ok()) {
    reader.reset();
  }
  return result;
}

void SqliteStore::LatestFor(std::string ip, std::optional<std::string> user_agent,
                            ReadCallback<std::optional<Verdict>> done) {
  PostRead([this, ip = std::move(ip), user_agent = std::move(user_agent),
            done = std::move(done)](Reader& reader) {
    done(ReadLatestFor(
        reader, ip,
        user_agent.has_value() ? std::optional<absl::string_view>(*user_agent) : std::nullopt));
  });
}

void SqliteStore::History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) {
  PostRead([this, query = std::move(query), done = std::move(done)](Reader& reader) {
    done(ReadHistory(reader, query));
  });
}

void SqliteStore::Usage(std::string caller, absl::Time since, absl::Time until,
                        ReadCallback<std::vector<DailyUsage>> done) {
  PostRead([this, caller = std::move(caller), since, until, done = std::move(done)](
               Reader& reader) { done(ReadUsage(reader, caller, since, until)); });
}

void SqliteStore::ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) {
  PostRead([this, since, done = std::move(done)](Reader& reader) {
    done(ReadClicksSince(reader, since));
  });
}

void SqliteStore::Ping(DoneCallback done) {
  PostRead([this, done = std::move(done)](Reader& reader) { done(PingNow(reader)); });
}

absl::StatusOr<std::optional<Verdict>> SqliteStore::ReadLatestFor(
    Reader& reader_slot, absl::string_view ip, std::optional<absl::string_view> user_agent) {
  return WithReader<std::optional<Verdict>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::optional<Verdict>> {
        sqlite3_stmt* stmt = user_agent.has_value() ? reader.latest_for_ip_and_user_agent.get()
                                                    : reader.latest_for_ip.get();
        ScopedReset reset(stmt);
        BindText(stmt, 1, ip);
        if (user_agent.has_value()) {
          BindBytes(stmt, 2, *user_agent);
        }
        const int rc = sqlite3_step(stmt);
        if (rc == SQLITE_DONE) {
          return std::nullopt;
        }
        if (rc == SQLITE_ROW) {
          return ColumnVerdict(stmt, 0);
        }
        return ReadFailed(reader.db.get());
      });
}

absl::StatusOr<std::vector<HistoryEntry>> SqliteStore::ReadHistory(Reader& reader_slot,
                                                                   const HistoryQuery& query) {
  if (query.limit <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("history limit must be positive, got ", query.limit));
  }
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const int64_t since_us = CeilUnixMicros(query.since);
  int64_t until_us = CeilUnixMicros(query.until);
  int64_t cursor_us = kMax;
  int64_t cursor_id = kMax;
  if (query.after.has_value()) {
    cursor_us = absl::ToUnixMicros(query.after->checked_at);
    cursor_id = query.after->id;
    // Start the index scan at the cursor instead of filtering every newer entry on each page.
    if (cursor_us < until_us) {
      until_us = cursor_us + 1;
    }
  }
  if (since_us >= until_us) {
    return std::vector<HistoryEntry>();
  }
  return WithReader<std::vector<HistoryEntry>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::vector<HistoryEntry>> {
        sqlite3_stmt* stmt = reader.history.get();
        ScopedReset reset(stmt);
        BindText(stmt, 1, query.ip);
        sqlite3_bind_int64(stmt, 2, since_us);
        sqlite3_bind_int64(stmt, 3, until_us);
        sqlite3_bind_int64(stmt, 4, cursor_us);
        sqlite3_bind_int64(stmt, 5, cursor_id);
        sqlite3_bind_int64(stmt, 6, query.limit);
        std::vector<HistoryEntry> entries;
        int rc;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
          HistoryEntry& entry = entries.emplace_back();
          entry.id = sqlite3_column_int64(stmt, 0);
          entry.verdict = ColumnVerdict(stmt, 1);
        }
        if (rc != SQLITE_DONE) {
          return ReadFailed(reader.db.get());
        }
        return entries;
      });
}

absl::StatusOr<std::vector<DailyUsage>> SqliteStore::ReadUsage(Reader& reader_slot,
                                                               absl::string_view caller,
                                                               absl::Time since, absl::Time until) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  const absl::CivilDay first = std::max(absl::ToCivilDay(since, utc), kEpochDay);
  const absl::CivilDay last =
      std::min(absl::ToCivilDay(until - absl::Microseconds(1), utc), kLastDay);
  if (first > last) {
    return std::vector<DailyUsage>();
  }
  const int64_t first_day = DayNumber(first);
  const int64_t last_day = DayNumber(last);
  return WithReader<std::vector<DailyUsage>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::vector<DailyUsage>> {
        sqlite3_stmt* stmt = caller.empty() ? reader.usage_all.get() : reader.usage_one.get();
        ScopedReset reset(stmt);
        sqlite3_bind_int64(stmt, 1, first_day);
        sqlite3_bind_int64(stmt, 2, last_day);
        if (!caller.empty()) {
          BindText(stmt, 3, caller);
        }
        std::vector<DailyUsage> days;
        int rc;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
          // A day whose only clicks were not sent (or whose counters were all zero) is omitted.
          UsageCounts counts;
          counts.clicks = sqlite3_column_int64(stmt, 2);
          counts.upstream_errors = sqlite3_column_int64(stmt, 3);
          counts.cache_hits = sqlite3_column_int64(stmt, 4);
          counts.requests = sqlite3_column_int64(stmt, 5);
          if (counts.clicks == 0 && counts.upstream_errors == 0 && counts.cache_hits == 0 &&
              counts.requests == 0) {
            continue;
          }
          days.push_back(
              DailyUsage{ColumnBytes(stmt, 0), kEpochDay + sqlite3_column_int64(stmt, 1), counts});
        }
        if (rc != SQLITE_DONE) {
          return ReadFailed(reader.db.get());
        }
        return days;
      });
}

absl::StatusOr<VerdictStore::ClickCounts> SqliteStore::ReadClicksSince(Reader& reader_slot,
                                                                       absl::Time since) {
  using Result = ClickCounts;
  const int64_t since_us = CeilUnixMicros(since);
  // Whole days from the counters; the rest of since's day, if since is not a midnight, from the
  // ledger: [since_us, partial_last]. Empty (first > last) when since is a midnight, as month and
  // allowance periods are.
  const int64_t since_day = DayOfMicros(since_us);
  int64_t first_whole_day = since_day;
  int64_t partial_first = 1;
  int64_t partial_last = 0;
  const int64_t remainder = since_us % kMicrosPerDay;  // has since_us's sign
  if (remainder != 0) {
    first_whole_day = since_day + 1;
    partial_first = since_us;
    // Microseconds from since_us to its day's last one; the last day int64 reaches ends past
    // INT64_MAX.
    const int64_t to_day_end =
        kMicrosPerDay - 1 - (remainder < 0 ? remainder + kMicrosPerDay : remainder);
    partial_last = since_us > std::numeric_limits<int64_t>::max() - to_day_end
                       ? std::numeric_limits<int64_t>::max()
                       : since_us + to_day_end;
  }
  return WithReader<Result>(reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<Result> {
    sqlite3_stmt* stmt = reader.clicks_since.get();
    ScopedReset reset(stmt);
    sqlite3_bind_int64(stmt, 1, partial_first);
    sqlite3_bind_int64(stmt, 2, first_whole_day);
    sqlite3_bind_int64(stmt, 3, partial_last);
    Result counts;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      counts.emplace_back(ColumnBytes(stmt, 0), sqlite3_column_int64(stmt, 1));
    }
    if (rc != SQLITE_DONE) {
      return ReadFailed(reader.db.get());
    }
    return counts;
  });
}

absl::StatusOr<std::optional<std::string>> SqliteStore::ReadMeta(Reader& reader_slot,
                                                                 const std::string& name) {
  return WithReader<std::optional<std::string>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::optional<std::string>> {
        sqlite3_stmt* stmt = reader.read_meta.get();
        ScopedReset reset(stmt);
        BindText(stmt, 1, name);
        const int rc = sqlite3_step(stmt);
        if (rc == SQLITE_DONE) {
          return std::nullopt;
        }
        if (rc == SQLITE_ROW) {
          return ColumnBytes(stmt, 0);
        }
        return ReadFailed(reader.db.get());
      });
}

void SqliteStore::Secret(std::string name, size_t bytes, ReadCallback<std::string> done) {
  PostRead([this, name = std::move(name), bytes, done = std::move(done)](Reader& reader) {
    if (name.empty()) {
      done(absl::InvalidArgumentError("secret name is empty"));
      return;
    }
    if (bytes == 0 || bytes > kMaxSecretBytes) {
      done(absl::InvalidArgumentError(
          absl::StrCat("secret size must be 1..", kMaxSecretBytes, " bytes, got ", bytes)));
      return;
    }
    std::string key = absl::StrCat("secret:", name);
    absl::StatusOr<std::optional<std::string>> stored = ReadMeta(reader, key);
    if (!stored.ok()) {
      done(stored.status());
      return;
    }
    if (stored->has_value()) {
      FinishSecret(std::move(stored), name, bytes, done);
      return;
    }
    std::string fresh(bytes, '\0');
    if (absl::Status status = FillRandom(fresh); !status.ok()) {
      done(std::move(status));
      return;
    }
    // Whoever inserted first won: once the insert is committed, read what they wrote.
    Enqueue(PutMetaOp{key, std::move(fresh), [this, name, key, bytes, done](absl::Status status) {
                        if (!status.ok()) {
                          done(std::move(status));
                          return;
                        }
                        PostRead([this, name, key, bytes, done](Reader& reader) {
                          FinishSecret(ReadMeta(reader, key), name, bytes, done);
                        });
                      }});
  });
}

void SqliteStore::FinishSecret(absl::StatusOr<std::optional<std::string>> stored,
                               const std::string& name, size_t bytes,
                               const ReadCallback<std::string>& done) {
  if (!stored.ok()) {
    done(stored.status());
    return;
  }
  if (!stored->has_value()) {
    done(absl::InternalError(absl::StrCat("secret \"", name, "\" vanished after writing it")));
    return;
  }
  if ((*stored)->size() != bytes) {
    done(absl::FailedPreconditionError(absl::StrCat("stored secret \"", name, "\" has ",
                                                    (*stored)->size(), " bytes, not ", bytes)));
    return;
  }
  done(**std::move(stored));
}

absl::Status SqliteStore::PingNow(Reader& reader_slot) {
  // The writer keeps writing to the file it opened even when the path now names another one
  // (replaced or deleted): everything it commits would be lost.
  struct stat st;
  if (stat(options_.path.c_str(), &st) != 0) {
    return absl::UnavailableError(absl::StrCat("store read failed: database ", options_.path, ": ",
                                               std::generic_category().message(errno)));
  }
  if (st.st_dev != file_dev_ || st.st_ino != file_ino_) {
    return absl::UnavailableError(absl::StrCat("store read failed: database ", options_.path,
                                               " was replaced by another file"));
  }
  absl::StatusOr<bool> read =
      WithReader<bool>(reader_slot, [](ReadConnection& reader) -> absl::StatusOr<bool> {
        sqlite3_stmt* stmt = reader.ping.get();
        ScopedReset reset(stmt);
        const int rc = sqlite3_step(stmt);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
          return ReadFailed(reader.db.get());
        }
        return true;
      });
  if (!read.ok()) {
    return read.status();
  }
  absl::Status failing;
  bool probe = false;
  {
    absl::MutexLock lock(&health_mu_);
    if (write_error_.ok()) {
      return absl::OkStatus();
    }
    failing = absl::UnavailableError(
        absl::StrCat("store writes failing since ",
                     absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", write_error_at_, absl::UTCTimeZone()),
                     ": ", write_error_.message()));
    // Without traffic nothing else would write, and an unhealthy server may get no traffic.
    probe = !probe_queued_;
    probe_queued_ = true;
  }
  if (probe) {
    Enqueue(ProbeOp{absl::ToUnixMicros(options_.clock->Now())});
  }
  return failing;
}

void SqliteStore::BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                             ClickCallback done) {
  Enqueue(BeginClickOp{std::move(caller), std::move(ip), absl::ToUnixMicros(requested_at),
                       std::move(done)});
}

void SqliteStore::CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) {
  // Stamped now: the click ended when its outcome was known, not when the group commits.
  const int64_t completed_at_us = absl::ToUnixMicros(options_.clock->Now());
  Enqueue(CompleteClickOp{click_id, std::move(completion), completed_at_us, std::move(done)});
}

void SqliteStore::AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) {
  Enqueue(AddUsageOp{std::move(deltas), std::move(done)});
}

void SqliteStore::PruneBefore(absl::Time cutoff, int max_rows,
                              std::function<void(absl::StatusOr<int64_t>)> done) {
  Enqueue(PruneOp{CeilUnixMicros(cutoff), max_rows, std::move(done)});
}

void SqliteStore::Flush() {
  absl::MutexLock lock(&queue_mu_);
  const uint64_t target = enqueued_;
  auto reached = [this, target]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) { return finished_ >= target; };
  queue_mu_.Await(absl::Condition(&reached));
}

void SqliteStore::Enqueue(WriteOp op) {
  absl::MutexLock lock(&queue_mu_);
  queue_.push_back(std::move(op));
  ++enqueued_;
}

void SqliteStore::WriterLoop() {
  const size_t max_group = static_cast<size_t>(options_.max_group);
  std::vector<WriteOp> group;
  for (;;) {
    {
      absl::MutexLock lock(&queue_mu_);
      queue_mu_.Await(absl::Condition(this, &SqliteStore::HasWorkOrStopping));
      if (queue_.empty()) {
        return;  // stopping, and everything queued is done
      }
      const size_t n = std::min(queue_.size(), max_group);
      for (size_t i = 0; i < n; ++i) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    CommitGroup(group);
    {
      absl::MutexLock lock(&queue_mu_);
      finished_ += group.size();
    }
    group.clear();
  }
}

// One transaction per group, one savepoint per operation: an operation that fails (unknown click)
// is undone alone, while a failure of the transaction itself fails the whole group. Callbacks run
// only after COMMIT returned, so a success is never reported for a write that could still vanish.
void SqliteStore::CommitGroup(std::vector<WriteOp>& group) {
  sqlite3* db = writer_->db.get();
  std::vector<absl::StatusOr<int64_t>> results;
  results.reserve(group.size());
  absl::Status status = Run(db, writer_->begin.get());
  if (status.ok()) {
    for (WriteOp& op : group) {
      Applied applied = ApplyInSavepoint(op);
      if (!applied.transaction.ok()) {
        status = std::move(applied.transaction);
        break;
      }
      results.push_back(std::move(applied.result));
    }
  }
  if (status.ok()) {
    status = Run(db, writer_->commit.get());
  }
  if (!status.ok()) {
    if (sqlite3_get_autocommit(db) == 0) {
      Run(db, writer_->rollback.get()).IgnoreError();
    }
    spdlog::error("database {}: a group of {} writes failed: {}", options_.path, group.size(),
                  status.message());
    RecordWriteHealth(status);
    for (WriteOp& op : group) {
      Deliver(op, status);
    }
    return;
  }
  // A statement that failed inside its savepoint for a storage reason (disk full, I/O) also
  // means writes are failing, though the rest of the group committed.
  absl::Status health;
  for (const absl::StatusOr<int64_t>& result : results) {
    if (result.status().code() == absl::StatusCode::kUnavailable) {
      health = result.status();
      break;
    }
  }
  RecordWriteHealth(health);
  for (size_t i = 0; i < group.size(); ++i) {
    Deliver(group[i], results[i]);
  }
}

SqliteStore::Applied SqliteStore::ApplyInSavepoint(WriteOp& op) {
  sqlite3* db = writer_->db.get();
  Applied applied{absl::StatusOr<int64_t>(0), absl::OkStatus()};
  applied.transaction = Run(db, writer_->savepoint.get());
  if (!applied.transaction.ok()) {
    return applied;
  }
  applied.result = std::visit([this](auto& o) { return Apply(o); }, op);
  // Some errors (disk full, I/O) make SQLite roll back the whole transaction by itself; carrying
  // on would run the rest of the group in autocommit mode.
  if (sqlite3_get_autocommit(db) != 0) {
    applied.transaction = applied.result.ok()
                              ? absl::UnavailableError("store write failed: transaction aborted")
                              : applied.result.status();
    return applied;
  }
  if (!applied.result.ok()) {
    applied.transaction = Run(db, writer_->rollback_to_savepoint.get());
    if (!applied.transaction.ok()) {
      return applied;
    }
  }
  applied.transaction = Run(db, writer_->release_savepoint.get());
  return applied;
}

absl::StatusOr<int64_t> SqliteStore::Apply(BeginClickOp& op) {
  sqlite3* db = writer_->db.get();
  sqlite3_stmt* stmt = writer_->insert_click.get();
  BindText(stmt, 1, op.caller);
  BindText(stmt, 2, op.ip);
  sqlite3_bind_int64(stmt, 3, op.requested_at_us);
  absl::Status status = Run(db, stmt);
  if (!status.ok()) {
    return status;
  }
  const int64_t id = sqlite3_last_insert_rowid(db);
  // In the same savepoint: the counters never disagree with the ledger, even after a crash.
  sqlite3_stmt* count = writer_->count_click.get();
  BindText(count, 1, op.caller);
  sqlite3_bind_int64(count, 2, DayOfMicros(op.requested_at_us));
  status = Run(db, count);
  if (!status.ok()) {
    return status;
  }
  return id;
}

absl::StatusOr<int64_t> SqliteStore::Apply(CompleteClickOp& op) {
  sqlite3* db = writer_->db.get();
  const ClickCompletion& c = op.completion;
  if (c.outcome != ClickOutcome::kVerdict && c.outcome != ClickOutcome::kUpstreamError &&
      c.outcome != ClickOutcome::kNotSent) {
    return absl::InvalidArgumentError(
        absl::StrCat("click ", op.click_id, ": completion outcome must not be pending"));
  }
  if ((c.outcome == ClickOutcome::kVerdict) != c.verdict.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "click ", op.click_id, ": a verdict must be given exactly when the outcome is kVerdict"));
  }

  sqlite3_stmt* update = writer_->complete_click.get();
  sqlite3_bind_int64(update, 1, op.click_id);
  sqlite3_bind_int64(update, 2, op.completed_at_us);
  sqlite3_bind_int(update, 3, static_cast<int>(c.outcome));
  sqlite3_bind_int(update, 4, c.http_status);
  BindText(update, 5, c.error);
  sqlite3_bind_int64(update, 6, absl::ToInt64Microseconds(c.latency));
  std::string caller;
  int64_t requested_at_us = 0;
  bool updated = false;
  {
    ScopedReset reset(update);
    int rc = sqlite3_step(update);
    if (rc == SQLITE_ROW) {
      updated = true;
      caller = ColumnBytes(update, 0);
      requested_at_us = sqlite3_column_int64(update, 1);
      rc = sqlite3_step(update);
    }
    if (rc != SQLITE_DONE) {
      return WriteFailed(db);
    }
  }
  if (!updated) {
    sqlite3_stmt* exists = writer_->click_exists.get();
    ScopedReset reset(exists);
    sqlite3_bind_int64(exists, 1, op.click_id);
    const int rc = sqlite3_step(exists);
    if (rc == SQLITE_ROW) {
      return absl::FailedPreconditionError(
          absl::StrCat("click ", op.click_id, " is already completed"));
    }
    if (rc == SQLITE_DONE) {
      return absl::NotFoundError(absl::StrCat("no click with id ", op.click_id));
    }
    return WriteFailed(db);
  }

  absl::Status status;
  if (c.outcome != ClickOutcome::kVerdict) {
    const bool not_sent = c.outcome == ClickOutcome::kNotSent;
    sqlite3_stmt* adjust = writer_->adjust_click_counters.get();
    BindText(adjust, 1, caller);
    sqlite3_bind_int64(adjust, 2, DayOfMicros(requested_at_us));
    sqlite3_bind_int64(adjust, 3, not_sent ? -1 : 0);
    sqlite3_bind_int64(adjust, 4, not_sent ? 0 : 1);
    status = Run(db, adjust);
    if (!status.ok()) {
      return status;
    }
    if (sqlite3_changes64(db) == 0) {
      // BeginClick created the row in the click's own transaction and pruning removes a day's
      // counters only after all of that day's clicks, so only a ledger row written behind the
      // store's back (by hand or by a tool) gets here. The ledger row is right either way;
      // failing the completion would only leave the click pending forever.
      spdlog::warn("database {}: click {} has no usage counters for its day; not adjusted",
                   options_.path, op.click_id);
    }
  }

  if (c.verdict.has_value()) {
    const Verdict& v = *c.verdict;
    sqlite3_stmt* insert = writer_->insert_verdict.get();
    BindText(insert, 1, v.ip);
    BindBytes(insert, 2, v.user_agent);
    sqlite3_bind_int(insert, 3, static_cast<int>(v.assessment.score));
    sqlite3_bind_int(insert, 4, v.assessment.proxy ? 1 : 0);
    sqlite3_bind_int(insert, 5, v.assessment.tor ? 1 : 0);
    sqlite3_bind_int(insert, 6, v.assessment.vpn ? 1 : 0);
    sqlite3_bind_int(insert, 7, v.assessment.crawler ? 1 : 0);
    sqlite3_bind_int(insert, 8, v.assessment.bot ? 1 : 0);
    sqlite3_bind_int64(insert, 9, absl::ToUnixMicros(v.checked_at));
    BindText(insert, 10, v.caller);
    BindBytes(insert, 11, c.raw_body);
    sqlite3_bind_int64(insert, 12, op.click_id);
    status = Run(db, insert);
    if (!status.ok()) {
      return status;
    }
  }
  return 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(AddUsageOp& op) {
  sqlite3* db = writer_->db.get();
  for (const UsageDelta& d : op.deltas) {
    if (d.cache_hits < 0 || d.requests < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("usage delta for \"", d.caller, "\" is negative"));
    }
  }
  sqlite3_stmt* stmt = writer_->add_usage.get();
  for (const UsageDelta& d : op.deltas) {
    if (d.cache_hits == 0 && d.requests == 0) {
      continue;
    }
    BindText(stmt, 1, d.caller);
    sqlite3_bind_int64(stmt, 2, DayNumber(d.day));
    sqlite3_bind_int64(stmt, 3, d.cache_hits);
    sqlite3_bind_int64(stmt, 4, d.requests);
    absl::Status status = Run(db, stmt);
    if (!status.ok()) {
      return status;
    }
  }
  return 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(PruneOp& op) {
  if (op.max_rows <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PruneBefore max_rows must be positive, got ", op.max_rows));
  }
  sqlite3* db = writer_->db.get();
  // Usage rows whose whole day lies before the cutoff. Floor division: the cutoff may be early.
  const int64_t cutoff_day = DayOfMicros(op.cutoff_us);
  const std::pair<sqlite3_stmt*, int64_t> steps[] = {
      {writer_->prune_verdicts.get(), op.cutoff_us},
      {writer_->prune_clicks.get(), op.cutoff_us},
      {writer_->prune_usage.get(), cutoff_day},
  };
  int64_t deleted = 0;
  for (const auto& [stmt, bound] : steps) {
    const int64_t budget = op.max_rows - deleted;
    if (budget <= 0) {
      break;
    }
    sqlite3_bind_int64(stmt, 1, bound);
    sqlite3_bind_int64(stmt, 2, budget);
    absl::Status status = Run(db, stmt);
    if (!status.ok()) {
      return status;
    }
    deleted += sqlite3_changes64(db);
  }
  return deleted;
}

absl::StatusOr<int64_t> SqliteStore::Apply(PutMetaOp& op) {
  sqlite3_stmt* stmt = writer_->insert_meta.get();
  BindText(stmt, 1, op.name);
  BindBytes(stmt, 2, op.value);
  absl::Status status = Run(writer_->db.get(), stmt);
  if (!status.ok()) {
    return status;
  }
  return 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(ProbeOp& op) {
  sqlite3_stmt* stmt = writer_->write_probe.get();
  sqlite3_bind_int64(stmt, 1, op.now_us);
  absl::Status status = Run(writer_->db.get(), stmt);
  if (!status.ok()) {
    return status;
  }
  return 0;
}

void SqliteStore::RecordWriteHealth(const absl::Status& status) {
  const absl::Time now = status.ok() ? absl::Time() : options_.clock->Now();
  absl::MutexLock lock(&health_mu_);
  if (status.ok()) {
    write_error_ = absl::OkStatus();
  } else if (write_error_.ok()) {
    // Keep the time of the first failure of a run of failures: "failing since".
    write_error_ = status;
    write_error_at_ = now;
  } else {
    write_error_ = status;
  }
}

void SqliteStore::Deliver(WriteOp& op, const absl::StatusOr<int64_t>& result) {
  std::visit(
      [&](auto& o) {
        using Op = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<Op, ProbeOp>) {
          absl::MutexLock lock(&health_mu_);
          probe_queued_ = false;
        } else if constexpr (std::is_same_v<Op, BeginClickOp> || std::is_same_v<Op, PruneOp>) {
          if (o.done) {
            o.done(result);
          }
        } else {
          if (o.done) {
            o.done(result.status());
          }
        }
      },
      op);
}

}  // namespace

absl::StatusOr<std::unique_ptr<VerdictStore>> OpenSqliteStore(SqliteStoreOptions options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("SqliteStoreOptions.path is empty");
  }
  if (options.max_group < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SqliteStoreOptions.max_group must be >= 1, got ", options.max_group));
  }
  if (options.clock == nullptr) {
    return absl::InvalidArgumentError("SqliteStoreOptions.clock is null");
  }
  Opener opener(options);
  absl::Status status = opener.CreateIfMissing();
  if (!status.ok()) {
    return status;
  }
  absl::StatusOr<Db> db = opener.OpenWriter();
  if (!db.ok()) {
    return db.status();
  }
  // Preparing reads the schema: a corrupt one fails here.
  absl::StatusOr<std::unique_ptr<WriteConnection>> writer = PrepareWriter(*std::move(db));
  if (!writer.ok()) {
    return opener.Unusable(writer.status().message());
  }
  struct stat file;
  if (stat(options.path.c_str(), &file) != 0) {
    return opener.Unusable(std::generic_category().message(errno));
  }
  return std::make_unique<SqliteStore>(std::move(options), *std::move(writer), file);
}

}  // namespace verdictd
