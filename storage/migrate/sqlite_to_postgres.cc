#include "storage/migrate/sqlite_to_postgres.h"

#include <libpq-fe.h>
#include <sqlite3.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "storage/postgres/postgres_store.h"

namespace verdictd {
namespace {

// The SQLite schema versions whose tables this copier reads (storage/sqlite/sqlite_schema.h): 3
// added the per-day click counters; 4 only added flights and leases, which are not copied, and 5
// only indexes. A newer file may have columns this build would silently drop, so it is refused.
constexpr int kOldestSqliteSchema = 3;
constexpr int kNewestSqliteSchema = 5;

// How a SQLite value becomes the text of a PostgreSQL COPY field. The PostgreSQL schema
// (storage/postgres/postgres_schema.h) mirrors SQLite's column for column, with bytea wherever
// the store keeps arbitrary bytes and boolean for SQLite's 0/1 flags.
enum class Kind {
  kInteger,  // INTEGER -> decimal (PostgreSQL's integer, bigint and boolean inputs all take it)
  kText,     // TEXT -> text, escaped for COPY (ip, meta.name: ASCII)
  kBytes,    // BLOB or TEXT holding bytes -> bytea, hex (user agents, callers, bodies, errors)
};

struct Column {
  const char* name;
  Kind kind;
};

// One table: how SQLite reads it (every column, in the order of `columns`, in a stable order)
// and how PostgreSQL receives it. All fixed text (tests/lint/sql_is_never_concatenated.py).
struct Table {
  const char* name;
  const char* count_sql;   // SQLite
  const char* select_sql;  // SQLite
  const char* copy_sql;    // PostgreSQL
  const char* target_count_sql;
  std::vector<Column> columns;
};

constexpr char kCountVerdicts[] = "SELECT count(*) FROM verdicts";
constexpr char kSelectVerdicts[] =
    "SELECT id, ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, caller, "
    "raw_body, click_id FROM verdicts ORDER BY id";
constexpr char kCopyVerdicts[] =
    "COPY verdicts(id, ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, "
    "caller, raw_body, click_id) FROM STDIN";
constexpr char kCountClicks[] = "SELECT count(*) FROM clicks";
constexpr char kSelectClicks[] =
    "SELECT id, caller, ip, requested_at_us, completed_at_us, outcome, http_status, error, "
    "latency_us FROM clicks ORDER BY id";
constexpr char kCopyClicks[] =
    "COPY clicks(id, caller, ip, requested_at_us, completed_at_us, outcome, http_status, error, "
    "latency_us) FROM STDIN";
constexpr char kCountUsage[] = "SELECT count(*) FROM usage";
constexpr char kSelectUsage[] =
    "SELECT caller, day, cache_hits, requests, clicks, upstream_errors FROM usage "
    "ORDER BY caller, day";
constexpr char kCopyUsage[] =
    "COPY usage(caller, day, cache_hits, requests, clicks, upstream_errors) FROM STDIN";
// Ping's trial-write row is not a secret and not worth moving.
constexpr char kCountMeta[] = "SELECT count(*) FROM meta WHERE name != 'write_probe'";
constexpr char kSelectMeta[] =
    "SELECT name, value FROM meta WHERE name != 'write_probe' ORDER BY name";
constexpr char kCopyMeta[] = "COPY meta(name, value) FROM STDIN";

constexpr char kUsageTotalsSql[] =
    "SELECT coalesce(sum(clicks), 0), coalesce(sum(upstream_errors), 0), "
    "coalesce(sum(cache_hits), 0), coalesce(sum(requests), 0) FROM usage";
constexpr char kPgUsageTotalsSql[] =
    "SELECT coalesce(sum(clicks), 0)::bigint, coalesce(sum(upstream_errors), 0)::bigint, "
    "coalesce(sum(cache_hits), 0)::bigint, coalesce(sum(requests), 0)::bigint FROM usage";
constexpr char kSqliteVersionSql[] = "PRAGMA user_version";

// The target must be empty: a migration merged into live data would double-count usage and
// collide on ids. The tables are locked against writers (readers may go on) from this check
// until the commit, so no verdictd starting meanwhile can write between them.
constexpr char kPgLockSql[] =
    "LOCK TABLE verdicts, clicks, usage, meta IN SHARE ROW EXCLUSIVE MODE";
constexpr char kPgHasRowsSql[] =
    "SELECT EXISTS (SELECT 1 FROM verdicts) OR EXISTS (SELECT 1 FROM clicks) OR "
    "EXISTS (SELECT 1 FROM usage)";
// A verdictd that ran on the empty database may have made its own page-token key; the source's
// replaces it (below), so that tokens issued before the move stay valid. Nothing else is there.
constexpr char kPgClearMetaSql[] = "DELETE FROM meta";
// The next id handed out is above every copied one.
constexpr char kPgAdvanceVerdictIdsSql[] =
    "SELECT setval(pg_get_serial_sequence('verdicts', 'id'), "
    "(SELECT coalesce(max(id), 0) + 1 FROM verdicts), false)";
constexpr char kPgAdvanceClickIdsSql[] =
    "SELECT setval(pg_get_serial_sequence('clicks', 'id'), "
    "(SELECT coalesce(max(id), 0) + 1 FROM clicks), false)";

const std::vector<Table>& Tables() {
  static const auto* tables = new std::vector<Table>{
      {"verdicts",
       kCountVerdicts,
       kSelectVerdicts,
       kCopyVerdicts,
       kCountVerdicts,
       {{"id", Kind::kInteger},
        {"ip", Kind::kText},
        {"user_agent", Kind::kBytes},
        {"score", Kind::kInteger},
        {"proxy", Kind::kInteger},
        {"tor", Kind::kInteger},
        {"vpn", Kind::kInteger},
        {"crawler", Kind::kInteger},
        {"bot", Kind::kInteger},
        {"checked_at_us", Kind::kInteger},
        {"caller", Kind::kBytes},
        {"raw_body", Kind::kBytes},
        {"click_id", Kind::kInteger}}},
      {"clicks",
       kCountClicks,
       kSelectClicks,
       kCopyClicks,
       kCountClicks,
       {{"id", Kind::kInteger},
        {"caller", Kind::kBytes},
        {"ip", Kind::kText},
        {"requested_at_us", Kind::kInteger},
        {"completed_at_us", Kind::kInteger},
        {"outcome", Kind::kInteger},
        {"http_status", Kind::kInteger},
        {"error", Kind::kBytes},
        {"latency_us", Kind::kInteger}}},
      {"usage",
       kCountUsage,
       kSelectUsage,
       kCopyUsage,
       kCountUsage,
       {{"caller", Kind::kBytes},
        {"day", Kind::kInteger},
        {"cache_hits", Kind::kInteger},
        {"requests", Kind::kInteger},
        {"clicks", Kind::kInteger},
        {"upstream_errors", Kind::kInteger}}},
      {"meta",
       kCountMeta,
       kSelectMeta,
       kCopyMeta,
       kCountMeta,
       {{"name", Kind::kText}, {"value", Kind::kBytes}}},
  };
  return *tables;
}

// --- SQLite, read-only ------------------------------------------------------------------------

struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StatementFinalizer {
  void operator()(sqlite3_stmt* statement) const { sqlite3_finalize(statement); }
};
using SqliteDb = std::unique_ptr<sqlite3, SqliteCloser>;
using Statement = std::unique_ptr<sqlite3_stmt, StatementFinalizer>;

class Source {
 public:
  static absl::StatusOr<Source> Open(const std::string& path) {
    sqlite3* raw = nullptr;
    // Read-only and never created: a typo in the path must not leave an empty database behind.
    const int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr);
    SqliteDb db(raw);
    if (rc != SQLITE_OK) {
      return absl::NotFoundError(
          absl::StrCat("cannot open SQLite store ", path, ": ",
                       raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)));
    }
    sqlite3_busy_timeout(db.get(), 5000);
    Source source(path, std::move(db));
    // One read transaction for the whole copy: every table is read from the same snapshot, even
    // if (against the advice) a verdictd is still writing to the file.
    if (absl::Status begin = source.Exec("BEGIN"); !begin.ok()) {
      return begin;
    }
    absl::StatusOr<int64_t> version = source.QueryInt(kSqliteVersionSql);
    if (!version.ok()) {
      return version.status();
    }
    if (*version < kOldestSqliteSchema || *version > kNewestSqliteSchema) {
      return absl::FailedPreconditionError(absl::StrCat(
          "SQLite store ", path, " has schema version ", *version, "; this build migrates ",
          kOldestSqliteSchema, " to ", kNewestSqliteSchema,
          *version < kOldestSqliteSchema
              ? " (start this build's verdictd on the file once to bring it up to date)"
              : " (use the verdictctl of the verdictd that wrote it)"));
    }
    return source;
  }

  absl::StatusOr<Statement> Prepare(const char* sql) const {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr) != SQLITE_OK) {
      return Error("prepare");
    }
    return Statement(raw);
  }

  absl::StatusOr<int64_t> QueryInt(const char* sql) const {
    absl::StatusOr<std::vector<int64_t>> row = QueryInts(sql);
    if (!row.ok()) return row.status();
    return row->at(0);
  }

  // The integer columns of the single row `sql` returns.
  absl::StatusOr<std::vector<int64_t>> QueryInts(const char* sql) const {
    absl::StatusOr<Statement> statement = Prepare(sql);
    if (!statement.ok()) return statement.status();
    if (sqlite3_step(statement->get()) != SQLITE_ROW) {
      return Error("read");
    }
    std::vector<int64_t> values;
    for (int i = 0; i < sqlite3_column_count(statement->get()); ++i) {
      values.push_back(sqlite3_column_int64(statement->get(), i));
    }
    return values;
  }

  absl::Status Error(absl::string_view what) const {
    return absl::InternalError(
        absl::StrCat("SQLite store ", path_, ": ", what, ": ", sqlite3_errmsg(db_.get())));
  }

 private:
  Source(std::string path, SqliteDb db) : path_(std::move(path)), db_(std::move(db)) {}

  absl::Status Exec(const char* sql) const {
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
      return Error(sql);
    }
    return absl::OkStatus();
  }

  std::string path_;
  SqliteDb db_;
};

// --- PostgreSQL ---------------------------------------------------------------------------------

struct ConnCloser {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct ResultClearer {
  void operator()(PGresult* result) const { PQclear(result); }
};
using PgConn = std::unique_ptr<PGconn, ConnCloser>;
using PgResult = std::unique_ptr<PGresult, ResultClearer>;

class Target {
 public:
  static absl::StatusOr<Target> Connect(const MigrationOptions& options) {
    const std::string timeout =
        absl::StrCat(std::max<int64_t>(2, absl::ToInt64Seconds(options.connect_timeout)));
    std::vector<const char*> keys = {"dbname", "connect_timeout", "application_name"};
    std::vector<const char*> values = {options.postgres_uri.c_str(), timeout.c_str(),
                                       "verdictctl migrate"};
    if (!options.password.empty()) {
      keys.push_back("password");
      values.push_back(options.password.c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);
    // expand_dbname: "dbname" is the whole URI; the keywords after it override its parts.
    PgConn conn(PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1));
    Target target(std::move(conn), options.password);
    if (PQstatus(target.conn_.get()) != CONNECTION_OK) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to PostgreSQL: ", target.LastError()));
    }
    return target;
  }

  // Runs a statement without parameters (fixed text) that returns no rows, or one row whose
  // first column is returned.
  absl::StatusOr<std::string> Exec(const char* sql) {
    PgResult result(PQexec(conn_.get(), sql));
    const ExecStatusType status = PQresultStatus(result.get());
    if (status == PGRES_COMMAND_OK) {
      return std::string();
    }
    if (status != PGRES_TUPLES_OK || PQntuples(result.get()) != 1) {
      return absl::InternalError(absl::StrCat("PostgreSQL: ", LastError()));
    }
    return std::string(PQgetvalue(result.get(), 0, 0));
  }

  absl::StatusOr<std::vector<int64_t>> QueryInts(const char* sql) {
    PgResult result(PQexec(conn_.get(), sql));
    if (PQresultStatus(result.get()) != PGRES_TUPLES_OK || PQntuples(result.get()) != 1) {
      return absl::InternalError(absl::StrCat("PostgreSQL: ", LastError()));
    }
    std::vector<int64_t> values;
    for (int i = 0; i < PQnfields(result.get()); ++i) {
      int64_t value = 0;
      if (!absl::SimpleAtoi(PQgetvalue(result.get(), 0, i), &value)) {
        return absl::InternalError(
            absl::StrCat("PostgreSQL: not an integer: ", PQgetvalue(result.get(), 0, i)));
      }
      values.push_back(value);
    }
    return values;
  }

  // COMMIT of a transaction that failed is answered "ROLLBACK", not an error: check the tag.
  absl::Status Commit() {
    PgResult result(PQexec(conn_.get(), "COMMIT"));
    if (PQresultStatus(result.get()) != PGRES_COMMAND_OK ||
        std::strcmp(PQcmdStatus(result.get()), "COMMIT") != 0) {
      return absl::InternalError(absl::StrCat("PostgreSQL: COMMIT: ", LastError()));
    }
    return absl::OkStatus();
  }

  absl::Status BeginCopy(const char* sql) {
    PgResult result(PQexec(conn_.get(), sql));
    if (PQresultStatus(result.get()) != PGRES_COPY_IN) {
      return absl::InternalError(absl::StrCat("PostgreSQL: ", LastError()));
    }
    return absl::OkStatus();
  }

  absl::Status CopyData(const std::string& data) {
    if (!data.empty() &&
        PQputCopyData(conn_.get(), data.data(), static_cast<int>(data.size())) != 1) {
      return absl::InternalError(absl::StrCat("PostgreSQL: COPY: ", LastError()));
    }
    return absl::OkStatus();
  }

  // Ends the COPY: completes it, or (`abort`) makes the server fail it, so that rows of a copy
  // that went wrong half-way are never even part of the transaction.
  absl::Status EndCopy(bool abort) {
    if (PQputCopyEnd(conn_.get(), abort ? "verdictctl migrate: copy aborted" : nullptr) != 1) {
      return absl::InternalError(absl::StrCat("PostgreSQL: COPY: ", LastError()));
    }
    absl::Status status = absl::OkStatus();
    // The COPY's own result, then nullptr.
    while (PGresult* raw = PQgetResult(conn_.get())) {
      PgResult result(raw);
      if (PQresultStatus(raw) != PGRES_COMMAND_OK && status.ok()) {
        status = absl::InternalError(absl::StrCat("PostgreSQL: COPY: ", LastError()));
      }
    }
    return status;
  }

  // libpq's last message, without the password should it ever be in one.
  std::string LastError() const {
    std::string message(absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn_.get())));
    if (!password_.empty()) {
      absl::StrReplaceAll({{password_, "<redacted>"}}, &message);
    }
    return message;
  }

 private:
  Target(PgConn conn, std::string password)
      : conn_(std::move(conn)), password_(std::move(password)) {}

  PgConn conn_;
  std::string password_;
};

// --- COPY text format -------------------------------------------------------------------------

void AppendEscaped(absl::string_view text, std::string* out) {
  for (char c : text) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      default:
        out->push_back(c);
    }
  }
}

// bytea's hex input, "\x0a1b...", with its backslash escaped for COPY.
void AppendBytea(absl::string_view bytes, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->append("\\\\x");
  for (unsigned char c : bytes) {
    out->push_back(kHex[c >> 4]);
    out->push_back(kHex[c & 0xf]);
  }
}

absl::string_view ColumnBytes(sqlite3_stmt* statement, int i) {
  const void* data = sqlite3_column_blob(statement, i);
  const int size = sqlite3_column_bytes(statement, i);
  return data == nullptr ? absl::string_view()
                         : absl::string_view(static_cast<const char*>(data), size);
}

absl::Status AppendField(sqlite3_stmt* statement, int i, const Column& column, std::string* out) {
  if (sqlite3_column_type(statement, i) == SQLITE_NULL) {
    out->append("\\N");
    return absl::OkStatus();
  }
  switch (column.kind) {
    case Kind::kInteger:
      if (sqlite3_column_type(statement, i) != SQLITE_INTEGER) {
        return absl::FailedPreconditionError(
            absl::StrCat("column ", column.name, " holds a non-integer value"));
      }
      absl::StrAppend(out, sqlite3_column_int64(statement, i));
      break;
    case Kind::kText: {
      const absl::string_view text = ColumnBytes(statement, i);
      if (text.find('\0') != absl::string_view::npos) {
        return absl::FailedPreconditionError(absl::StrCat(
            "column ", column.name, " holds a NUL byte, which PostgreSQL text cannot"));
      }
      AppendEscaped(text, out);
      break;
    }
    case Kind::kBytes:
      AppendBytea(ColumnBytes(statement, i), out);
      break;
  }
  return absl::OkStatus();
}

constexpr size_t kCopyChunkBytes = 256 << 10;

absl::StatusOr<int64_t> CopyTable(const Source& source, Target& target, const Table& table,
                                  int64_t total, const MigrationOptions& options) {
  MigrationProgress progress{table.name, 0, total};
  if (options.progress) options.progress(progress);
  absl::StatusOr<Statement> statement = source.Prepare(table.select_sql);
  if (!statement.ok()) return statement.status();
  if (absl::Status begin = target.BeginCopy(table.copy_sql); !begin.ok()) return begin;
  std::string chunk;
  absl::Status failed = absl::OkStatus();
  int rc = SQLITE_ROW;
  while ((rc = sqlite3_step(statement->get())) == SQLITE_ROW) {
    for (size_t i = 0; i < table.columns.size(); ++i) {
      if (i > 0) chunk.push_back('\t');
      failed = AppendField(statement->get(), static_cast<int>(i), table.columns[i], &chunk);
      if (!failed.ok()) {
        failed = absl::Status(failed.code(), absl::StrCat(table.name, " row ", progress.copied + 1,
                                                          ": ", failed.message()));
        break;
      }
    }
    if (!failed.ok()) break;
    chunk.push_back('\n');
    ++progress.copied;
    if (chunk.size() >= kCopyChunkBytes) {
      failed = target.CopyData(chunk);
      chunk.clear();
      if (!failed.ok()) break;
    }
    if (options.progress && options.progress_every > 0 &&
        progress.copied % options.progress_every == 0) {
      options.progress(progress);
    }
  }
  if (failed.ok() && rc != SQLITE_DONE) {
    failed = source.Error(absl::StrCat("reading ", table.name));
  }
  if (failed.ok()) {
    failed = target.CopyData(chunk);
  }
  // Ended either way, so that the connection leaves COPY mode; the caller rolls back on error.
  absl::Status ended = target.EndCopy(/*abort=*/!failed.ok());
  if (!failed.ok()) return failed;
  if (!ended.ok()) return ended;
  if (options.progress) options.progress(progress);
  return progress.copied;
}

UsageCounts ToUsage(const std::vector<int64_t>& v) {
  UsageCounts counts;
  counts.clicks = v.at(0);
  counts.upstream_errors = v.at(1);
  counts.cache_hits = v.at(2);
  counts.requests = v.at(3);
  return counts;
}

bool SameUsage(const UsageCounts& a, const UsageCounts& b) {
  return a.clicks == b.clicks && a.upstream_errors == b.upstream_errors &&
         a.cache_hits == b.cache_hits && a.requests == b.requests;
}

// Everything after BEGIN on the target; the caller commits on OK and rolls back otherwise.
absl::Status CopyInTransaction(const Source& source, Target& target,
                               const MigrationOptions& options, MigrationReport& report) {
  if (absl::StatusOr<std::string> locked = target.Exec(kPgLockSql); !locked.ok()) {
    return locked.status();
  }
  absl::StatusOr<std::string> has_rows = target.Exec(kPgHasRowsSql);
  if (!has_rows.ok()) return has_rows.status();
  if (*has_rows != "f") {
    return absl::FailedPreconditionError(
        "the PostgreSQL database already holds verdicts, clicks or usage rows: migrate only "
        "into an empty database (nothing was written)");
  }
  if (absl::StatusOr<std::string> cleared = target.Exec(kPgClearMetaSql); !cleared.ok()) {
    return cleared.status();
  }
  for (TableCounts& counts : report.tables) {
    const Table* table = nullptr;
    for (const Table& t : Tables()) {
      if (counts.table == t.name) table = &t;
    }
    absl::StatusOr<int64_t> copied = CopyTable(source, target, *table, counts.source, options);
    if (!copied.ok()) return copied.status();
    absl::StatusOr<std::vector<int64_t>> in_target = target.QueryInts(table->target_count_sql);
    if (!in_target.ok()) return in_target.status();
    counts.target = in_target->at(0);
  }
  for (const char* sql : {kPgAdvanceVerdictIdsSql, kPgAdvanceClickIdsSql}) {
    if (absl::StatusOr<std::string> advanced = target.Exec(sql); !advanced.ok()) {
      return advanced.status();
    }
  }
  absl::StatusOr<std::vector<int64_t>> totals = target.QueryInts(kPgUsageTotalsSql);
  if (!totals.ok()) return totals.status();
  report.target_usage = ToUsage(*totals);

  for (const TableCounts& counts : report.tables) {
    if (counts.source != counts.target) {
      return absl::InternalError(absl::StrCat("table ", counts.table, ": ", counts.source,
                                              " rows in SQLite but ", counts.target,
                                              " in PostgreSQL (rolled back)"));
    }
  }
  if (!SameUsage(report.source_usage, report.target_usage)) {
    return absl::InternalError(
        "the usage totals differ between SQLite and PostgreSQL (rolled back)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MigrationReport> MigrateSqliteToPostgres(const MigrationOptions& options) {
  const absl::Time start = absl::Now();
  if (absl::Status uri = CheckPostgresUri(options.postgres_uri); !uri.ok()) {
    return uri;
  }
  // The source first: a wrong path or an unknown schema must not touch the target at all.
  absl::StatusOr<Source> source = Source::Open(options.sqlite_path);
  if (!source.ok()) return source.status();
  MigrationReport report;
  for (const Table& table : Tables()) {
    absl::StatusOr<int64_t> rows = source->QueryInt(table.count_sql);
    if (!rows.ok()) return rows.status();
    report.tables.push_back({table.name, *rows, 0});
  }
  absl::StatusOr<std::vector<int64_t>> totals = source->QueryInts(kUsageTotalsSql);
  if (!totals.ok()) return totals.status();
  report.source_usage = ToUsage(*totals);

  // The PostgreSQL store creates (or migrates) its own schema, so the tables copied into are
  // exactly the backend's; it is closed again before the copy.
  {
    PostgresStoreOptions store_options;
    store_options.uri = options.postgres_uri;
    store_options.password = options.password;
    store_options.readers = 1;
    store_options.connect_timeout = options.connect_timeout;
    absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenPostgresStore(store_options);
    if (!store.ok()) return store.status();
  }

  absl::StatusOr<Target> target = Target::Connect(options);
  if (!target.ok()) return target.status();
  if (absl::StatusOr<std::string> begun = target->Exec("BEGIN"); !begun.ok()) {
    return begun.status();
  }
  absl::Status copied = CopyInTransaction(*source, *target, options, report);
  if (!copied.ok()) {
    (void)target->Exec("ROLLBACK");
    return copied;
  }
  if (absl::Status committed = target->Commit(); !committed.ok()) {
    return committed;
  }
  report.took = absl::Now() - start;
  return report;
}

}  // namespace verdictd
