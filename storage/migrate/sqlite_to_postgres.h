#ifndef VERDICTD_STORAGE_MIGRATE_SQLITE_TO_POSTGRES_H_
#define VERDICTD_STORAGE_MIGRATE_SQLITE_TO_POSTGRES_H_

// Moving a verdictd store from a SQLite file to a PostgreSQL database (`verdictctl migrate`).
//
// The copy is exact: ids are preserved (the identity sequences are moved past them), pending
// clicks stay pending (they are billed), the usage counters are copied as they are (they count
// clicks already pruned from the ledger, so they are never recomputed), and the named secrets go
// too, so that page tokens issued before the move stay valid. Flight claims and chore leases are
// not copied: they belong to running processes, and none may run on either side during the move.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "storage/verdict_store.h"

namespace verdictd {

struct MigrationProgress {
  std::string table;   // "verdicts", "clicks", "usage" or "meta"
  int64_t copied = 0;  // rows of `table` sent so far
  int64_t total = 0;   // rows of `table` in the SQLite file
};

struct MigrationOptions {
  std::string sqlite_path;  // opened read-only; never written
  // A libpq URI without a password (CheckPostgresUri); the database must hold no verdicts,
  // clicks or usage rows. Its schema is created by the PostgreSQL store itself if missing.
  std::string postgres_uri;
  // "" lets libpq find one (PGPASSWORD, PGPASSFILE, ~/.pgpass). Never logged, never in a status.
  std::string password;
  absl::Duration connect_timeout = absl::Seconds(10);
  // Called on this thread at the start and end of every table and every `progress_every` rows.
  std::function<void(const MigrationProgress&)> progress;
  int64_t progress_every = 1000;
};

struct TableCounts {
  std::string table;
  int64_t source = 0;  // rows in the SQLite file
  int64_t target = 0;  // rows in PostgreSQL after the copy, counted in the copy's transaction
};

struct MigrationReport {
  std::vector<TableCounts> tables;  // verdicts, clicks, usage, meta
  // The usage counters summed over every caller and day, on each side.
  UsageCounts source_usage;
  UsageCounts target_usage;
  absl::Duration took;
};

// Copies the store in `options.sqlite_path` into the PostgreSQL database, in one transaction: a
// failure anywhere leaves the target's tables as they were (empty). The row counts and usage
// totals are checked in that transaction before it commits.
// FAILED_PRECONDITION: the target already holds rows (nothing is written), or the SQLite file's
// schema is one this build does not know. NOT_FOUND: the SQLite file cannot be opened.
// UNAVAILABLE: PostgreSQL cannot be reached. INTERNAL: the counts did not match (rolled back).
absl::StatusOr<MigrationReport> MigrateSqliteToPostgres(const MigrationOptions& options);

}  // namespace verdictd

#endif  // VERDICTD_STORAGE_MIGRATE_SQLITE_TO_POSTGRES_H_
