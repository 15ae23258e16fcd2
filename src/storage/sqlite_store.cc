// The SQLite implementation of VerdictStore.
//
// One write connection, owned by one writer thread, commits queued writes in groups; reads use a
// small pool of read-only connections on the callers' threads. WAL lets the readers run while the
// writer commits. Every connection is used by one thread at a time (SQLITE_OPEN_NOMUTEX).

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <deque>
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
#include "absl/time/time.h"
#include "spdlog/spdlog.h"
#include "storage/sqlite_store_internal.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace {

using sqlite_store_internal::kLatestForIpAndUserAgentSql;
using sqlite_store_internal::kLatestForIpSql;
using sqlite_store_internal::kSchemaVersion;

// Idle read connections kept for reuse; more are opened under load and closed when returned.
constexpr size_t kMaxIdleReaders = 8;

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
};
static_assert(std::size(kMigrations) == kSchemaVersion,
              "kSchemaVersion must equal the number of migrations");

constexpr char kInsertClickSql[] =
    "INSERT INTO clicks(caller, ip, requested_at_us) VALUES (?1, ?2, ?3)";
// Only a pending click can be completed: the ledger row of a finished click never changes.
constexpr char kCompleteClickSql[] =
    "UPDATE clicks SET completed_at_us = ?2, outcome = ?3, http_status = ?4, error = ?5, "
    "latency_us = ?6 WHERE id = ?1 AND outcome = 0";
constexpr char kClickExistsSql[] = "SELECT 1 FROM clicks WHERE id = ?1";
constexpr char kInsertVerdictSql[] =
    "INSERT INTO verdicts(ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, "
    "caller, raw_body, click_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

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
  Stmt complete_click;
  Stmt click_exists;
  Stmt insert_verdict;
};

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
      {&conn->complete_click, kCompleteClickSql},
      {&conn->click_exists, kClickExistsSql},
      {&conn->insert_verdict, kInsertVerdictSql},
  };
  for (const auto& [slot, sql] : statements) {
    absl::StatusOr<Stmt> stmt = Prepare(conn->db.get(), sql);
    if (!stmt.ok()) {
      return stmt.status();
    }
    *slot = *std::move(stmt);
  }
  return conn;
}

// --- the store ---------------------------------------------------------------------------

class SqliteStore final : public VerdictStore {
 public:
  SqliteStore(SqliteStoreOptions options, std::unique_ptr<WriteConnection> writer)
      : options_(std::move(options)), writer_(std::move(writer)) {
    writer_thread_ = std::thread([this] { WriterLoop(); });
  }

  // Commits (or fails) and reports everything queued, then closes the readers and finally the
  // writer, whose close checkpoints the WAL into the main file.
  ~SqliteStore() override {
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    writer_thread_.join();
  }

  absl::StatusOr<std::optional<Verdict>> LatestFor(
      absl::string_view ip, std::optional<absl::string_view> user_agent) override;
  void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                  ClickCallback done) override;
  void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) override;
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
  using WriteOp = std::variant<BeginClickOp, CompleteClickOp>;

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
  static void Deliver(WriteOp& op, const absl::StatusOr<int64_t>& result);

  absl::StatusOr<std::unique_ptr<ReadConnection>> AcquireReader();
  void ReleaseReader(std::unique_ptr<ReadConnection> reader);

  const SqliteStoreOptions options_;

  // Used only by the writer thread while it runs.
  const std::unique_ptr<WriteConnection> writer_;

  // Declared after writer_ so the readers close first.
  absl::Mutex readers_mu_;
  std::vector<std::unique_ptr<ReadConnection>> idle_readers_ ABSL_GUARDED_BY(readers_mu_);

  absl::Mutex queue_mu_;
  std::deque<WriteOp> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  // Operations ever queued, and ever finished (committed or failed, callback returned). Ops are
  // finished in queue order, so "finished_ >= n" means the first n are done.
  uint64_t enqueued_ ABSL_GUARDED_BY(queue_mu_) = 0;
  uint64_t finished_ ABSL_GUARDED_BY(queue_mu_) = 0;

  std::thread writer_thread_;
};

absl::StatusOr<std::unique_ptr<ReadConnection>> SqliteStore::AcquireReader() {
  {
    absl::MutexLock lock(&readers_mu_);
    if (!idle_readers_.empty()) {
      std::unique_ptr<ReadConnection> reader = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      return reader;
    }
  }
  Opener opener(options_);
  absl::StatusOr<Db> db = opener.OpenConnection(SQLITE_OPEN_READONLY);
  if (!db.ok()) {
    return db.status();
  }
  auto reader = std::make_unique<ReadConnection>();
  reader->db = *std::move(db);
  absl::StatusOr<Stmt> by_ip = Prepare(reader->db.get(), kLatestForIpSql);
  if (!by_ip.ok()) {
    return by_ip.status();
  }
  reader->latest_for_ip = *std::move(by_ip);
  absl::StatusOr<Stmt> by_ip_ua = Prepare(reader->db.get(), kLatestForIpAndUserAgentSql);
  if (!by_ip_ua.ok()) {
    return by_ip_ua.status();
  }
  reader->latest_for_ip_and_user_agent = *std::move(by_ip_ua);
  return reader;
}

void SqliteStore::ReleaseReader(std::unique_ptr<ReadConnection> reader) {
  {
    absl::MutexLock lock(&readers_mu_);
    if (idle_readers_.size() < kMaxIdleReaders) {
      idle_readers_.push_back(std::move(reader));
      return;
    }
  }
  // Closed here, outside the lock.
}

absl::StatusOr<std::optional<Verdict>> SqliteStore::LatestFor(
    absl::string_view ip, std::optional<absl::string_view> user_agent) {
  absl::StatusOr<std::unique_ptr<ReadConnection>> reader = AcquireReader();
  if (!reader.ok()) {
    return reader.status();
  }
  sqlite3* db = (*reader)->db.get();
  sqlite3_stmt* stmt = user_agent.has_value() ? (*reader)->latest_for_ip_and_user_agent.get()
                                              : (*reader)->latest_for_ip.get();
  absl::StatusOr<std::optional<Verdict>> result;
  {
    ScopedReset reset(stmt);
    BindText(stmt, 1, ip);
    if (user_agent.has_value()) {
      BindBytes(stmt, 2, *user_agent);
    }
    const int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) {
      result = std::nullopt;
    } else if (rc == SQLITE_ROW) {
      Verdict verdict;
      verdict.ip = ColumnBytes(stmt, 0);
      verdict.user_agent = ColumnBytes(stmt, 1);
      const int score = sqlite3_column_int(stmt, 2);
      verdict.assessment.score =
          score >= static_cast<int>(Score::kUnspecified) && score <= static_cast<int>(Score::kFake)
              ? static_cast<Score>(score)
              : Score::kUnspecified;
      verdict.assessment.proxy = sqlite3_column_int(stmt, 3) != 0;
      verdict.assessment.tor = sqlite3_column_int(stmt, 4) != 0;
      verdict.assessment.vpn = sqlite3_column_int(stmt, 5) != 0;
      verdict.assessment.crawler = sqlite3_column_int(stmt, 6) != 0;
      verdict.assessment.bot = sqlite3_column_int(stmt, 7) != 0;
      verdict.checked_at = absl::FromUnixMicros(sqlite3_column_int64(stmt, 8));
      verdict.caller = ColumnBytes(stmt, 9);
      result = std::move(verdict);
    } else {
      result = ReadFailed(db);
    }
  }
  if (result.ok()) {
    ReleaseReader(*std::move(reader));
  }  // else the connection is dropped: it may be the cause.
  return result;
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
                  std::string(status.message()));
    for (WriteOp& op : group) {
      Deliver(op, status);
    }
    return;
  }
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
  return sqlite3_last_insert_rowid(db);
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
  absl::Status status = Run(db, update);
  if (!status.ok()) {
    return status;
  }
  if (sqlite3_changes64(db) == 0) {
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

void SqliteStore::Deliver(WriteOp& op, const absl::StatusOr<int64_t>& result) {
  if (auto* begin = std::get_if<BeginClickOp>(&op)) {
    if (begin->done) {
      begin->done(result);
    }
  } else if (auto* complete = std::get_if<CompleteClickOp>(&op)) {
    if (complete->done) {
      complete->done(result.status());
    }
  }
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
  return std::make_unique<SqliteStore>(std::move(options), *std::move(writer));
}

}  // namespace verdictd
