#ifndef VERDICTD_STORAGE_SQLITE_SQLITE_STORE_H_
#define VERDICTD_STORAGE_SQLITE_SQLITE_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "storage/verdict_store.h"

namespace verdictd {

struct SqliteStoreOptions {
  std::string path;  // the database file; created 0600 if missing
  // Default: 5 s waiting for another connection's lock before failing.
  absl::Duration busy_timeout = absl::Seconds(5);
  // synchronous=FULL (durable against power loss) instead of NORMAL (durable against process
  // crashes). Default: false.
  bool synchronous_full = false;
  // Most writes committed in one transaction. REQUIRES: >= 1. Default: 256.
  int max_group = 256;
  // Stamps clicks' completed_at. Not owned; must outlive the store. Default: the real clock.
  Clock* clock = Clock::Real();
};

// Opens (creating or migrating) the SQLite store. Fails with a clear status when the file is not
// a database, is corrupt, or cannot be written.
absl::StatusOr<std::unique_ptr<VerdictStore>> OpenSqliteStore(SqliteStoreOptions options);

}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_SQLITE_STORE_H_
