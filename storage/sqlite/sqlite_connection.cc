#include "storage/sqlite/sqlite_connection.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "storage/sqlite/sqlite_schema.h"
#include "storage/sqlite/sqlite_statement.h"
#include "storage/sqlite/sqlite_store_internal.h"

namespace verdictd {
namespace sqlite_store_internal {

absl::Status Opener::Unusable(absl::string_view why) const {
  return absl::FailedPreconditionError(
      absl::StrCat("database ", options_.path, " is not usable: ", why));
}
absl::Status Opener::Unusable(sqlite3* db) const { return Unusable(sqlite3_errmsg(db)); }

// Creates the file 0600 if missing, so the history is never readable by others even briefly.
absl::Status Opener::CreateIfMissing() const {
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

absl::StatusOr<Db> Opener::OpenConnection(int flags) const {
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(options_.path.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
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

absl::StatusOr<Db> Opener::OpenWriter() const {
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
  status = Migrate(*this, conn);
  if (!status.ok()) {
    return status;
  }
  return db;
}

namespace {

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

}  // namespace

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
      {&conn->claim_flight, kClaimFlightSql},
      {&conn->flight_lease, kFlightLeaseSql},
      {&conn->set_flight_click, kSetFlightClickSql},
      {&conn->release_flight, kReleaseFlightSql},
      {&conn->month_clicks, kMonthClicksSql},
      {&conn->prune_flights, kPruneFlightsSql},
      {&conn->try_lease, kTryLeaseSql},
      {&conn->latest_for_ip, kLatestForIpSql},
      {&conn->latest_for_ip_and_user_agent, kLatestForIpAndUserAgentSql},
      {&conn->read_meta, kReadMetaSql},
      {&conn->replace_meta, kReplaceMetaSql},
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
      {&conn->clicks_by_ip, kClicksByIpSql},
      {&conn->clicks_by_caller, kClicksByCallerSql},
      {&conn->clicks_by_time, kClicksByTimeSql},
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

absl::StatusOr<FileIdentity> IdentifyFile(const Opener& opener) {
  struct stat file;
  if (stat(opener.path().c_str(), &file) != 0) {
    return opener.Unusable(std::generic_category().message(errno));
  }
  return FileIdentity{file.st_dev, file.st_ino};
}

absl::Status StillTheOpenedFile(const std::string& path, const FileIdentity& opened) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::UnavailableError(absl::StrCat("store read failed: database ", path, ": ",
                                               std::generic_category().message(errno)));
  }
  if (st.st_dev != opened.dev || st.st_ino != opened.ino) {
    return absl::UnavailableError(
        absl::StrCat("store read failed: database ", path, " was replaced by another file"));
  }
  return absl::OkStatus();
}

}  // namespace sqlite_store_internal
}  // namespace verdictd
