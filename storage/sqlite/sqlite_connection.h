#ifndef VERDICTD_STORAGE_SQLITE_SQLITE_CONNECTION_H_
#define VERDICTD_STORAGE_SQLITE_SQLITE_CONNECTION_H_

// Connections to the database file: creating it, opening it (busy timeout first, then WAL and
// the synchronous mode on the write connection, then the schema migration), the prepared
// statements of the write connection and of each read connection, and the file's identity.

#include <sqlite3.h>
#include <sys/stat.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/sqlite/sqlite_statement.h"
#include "storage/sqlite/sqlite_store.h"

namespace verdictd {
namespace sqlite_store_internal {

// Opens connections to options.path. Failures are FAILED_PRECONDITION "database <path> is not
// usable: ...".
class Opener {
 public:
  explicit Opener(const SqliteStoreOptions& options) : options_(options) {}

  const std::string& path() const { return options_.path; }
  absl::Status Unusable(absl::string_view why) const;
  absl::Status Unusable(sqlite3* db) const;

  // Creates the file 0600 if missing, so the history is never readable by others even briefly.
  absl::Status CreateIfMissing() const;
  // A connection with extended result codes and the busy timeout set.
  absl::StatusOr<Db> OpenConnection(int flags) const;
  // The write connection: WAL, the synchronous mode, and the schema migrated to this build's.
  absl::StatusOr<Db> OpenWriter() const;

  // Runs SQL without parameters; `sql` never contains values. (Defined here, where the SQL lint
  // recognises the helpers' own definitions.)
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

 private:
  const SqliteStoreOptions& options_;
};

struct ReadConnection {
  Db db;
  Stmt latest_for_ip;
  Stmt latest_for_ip_and_user_agent;
  Stmt history;
  Stmt clicks_by_ip;
  Stmt clicks_by_caller;
  Stmt clicks_by_time;
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
  Stmt claim_flight;
  Stmt flight_lease;
  Stmt set_flight_click;
  Stmt release_flight;
  Stmt month_clicks;
  Stmt prune_flights;
  Stmt try_lease;
  Stmt latest_for_ip;  // ClaimClick's check for a verdict that landed
  Stmt latest_for_ip_and_user_agent;
  Stmt read_meta;  // ClaimClick's look at the allowance mark
  Stmt replace_meta;
};

absl::StatusOr<std::unique_ptr<WriteConnection>> PrepareWriter(Db db);
absl::StatusOr<std::unique_ptr<ReadConnection>> PrepareReader(Db db);

// Which file a path names, to notice when it is replaced or deleted under an open store.
struct FileIdentity {
  dev_t dev = 0;
  ino_t ino = 0;
};
// FAILED_PRECONDITION (as Opener::Unusable) when `path` cannot be stat'ed.
absl::StatusOr<FileIdentity> IdentifyFile(const Opener& opener);
// OK while `path` still names the file `opened` identifies; UNAVAILABLE "store read failed: ..."
// when it is gone or another file: the writer would go on writing to the old one, and all of it
// would be lost.
absl::Status StillTheOpenedFile(const std::string& path, const FileIdentity& opened);

}  // namespace sqlite_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_SQLITE_CONNECTION_H_
