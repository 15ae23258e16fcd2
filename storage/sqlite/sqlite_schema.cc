#include "storage/sqlite/sqlite_schema.h"

#include <sqlite3.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "storage/sqlite/sqlite_connection.h"
#include "storage/sqlite/sqlite_store_internal.h"

namespace verdictd {
namespace sqlite_store_internal {

namespace {

absl::Status MigrateInTransaction(const Opener& opener, sqlite3* db) {
  absl::StatusOr<std::string> text = opener.QueryText(db, "PRAGMA user_version");
  if (!text.ok()) {
    return text.status();
  }
  int version = 0;
  if (!absl::SimpleAtoi(*text, &version) || version < 0) {
    return opener.Unusable(absl::StrCat("unexpected user_version \"", *text, "\""));
  }
  if (version > kSchemaVersion) {
    return opener.Unusable(absl::StrCat("schema version ", version,
                                        " is newer than this build understands (", kSchemaVersion,
                                        ")"));
  }
  if (version == kSchemaVersion) {
    return absl::OkStatus();
  }
  for (int v = version; v < kSchemaVersion; ++v) {
    absl::Status status = opener.Exec(db, kMigrations[v]);
    if (!status.ok()) {
      return status;
    }
  }
  // PRAGMA takes no bound parameters; the value is a compile-time constant.
  const std::string set_version = absl::StrCat("PRAGMA user_version = ", kSchemaVersion);
  absl::Status status = opener.Exec(db, set_version.c_str());
  if (status.ok()) {
    spdlog::info("database {}: schema migrated from version {} to {}", opener.path(), version,
                 kSchemaVersion);
  }
  return status;
}

}  // namespace

absl::Status Migrate(const Opener& opener, sqlite3* db) {
  absl::Status status = opener.Exec(db, "BEGIN IMMEDIATE");
  if (!status.ok()) {
    return status;
  }
  status = MigrateInTransaction(opener, db);
  if (status.ok()) {
    // A SQLite file serves one verdictd at a time (several replicas share PostgreSQL), so a
    // claim found at open was left by a process that died: released now rather than making the
    // restarted one wait out its lease. Its pending click stays pending (billed).
    status = opener.Exec(db, "DELETE FROM flights");
  }
  if (status.ok()) {
    status = opener.Exec(db, "COMMIT");
  }
  if (!status.ok() && sqlite3_get_autocommit(db) == 0) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  return status;
}

}  // namespace sqlite_store_internal
}  // namespace verdictd
