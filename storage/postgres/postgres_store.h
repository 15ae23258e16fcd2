#ifndef VERDICTD_STORAGE_POSTGRES_POSTGRES_STORE_H_
#define VERDICTD_STORAGE_POSTGRES_POSTGRES_STORE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "storage/verdict_store.h"

namespace verdictd {

struct PostgresStoreOptions {
  // A libpq connection URI (postgresql:// or postgres://, query parameters such as
  // host=/path/to/socket allowed). REQUIRES: carries no password (see CheckPostgresUri).
  // Every session starts with statement_timeout=60s, lock_timeout=30s and
  // idle_in_transaction_session_timeout=60s, so that no call waits forever on a lock another
  // replica holds; an options= parameter in the URI replaces them (e.g. for a pooler that
  // refuses startup options). The listener's session LISTENs: behind a transaction-pooling
  // pgbouncer the URI must reach the server directly.
  std::string uri;
  // The password, e.g. read from --db_password_file; "" lets libpq find one (PGPASSWORD,
  // PGPASSFILE, ~/.pgpass) or go without. Never logged, never in an error message.
  std::string password;
  // Reader connections (each on its own thread). Default: 4.
  int readers = 4;
  // Most writes committed in one transaction. REQUIRES: >= 1. Default: 256.
  int max_group = 256;
  // How long opening waits for the server (each connection attempt). Default: 5 s.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Stamps what the store stamps on this side (completed_at, write failures). Leases use the
  // database's clock (clock_timestamp()). Not owned; must outlive the store. Default: the real
  // clock.
  Clock* clock = Clock::Real();
};

// Whether `db` (the --db flag) names a PostgreSQL database rather than a SQLite file.
bool IsPostgresUri(absl::string_view db);

// OK, or INVALID_ARGUMENT when `uri` is not a PostgreSQL URI or carries a password (in the
// user-info part or as a password= parameter); the message says where a password goes instead
// and never repeats it.
absl::Status CheckPostgresUri(absl::string_view uri);

// Connects (writer, readers and a listener connection), creates or migrates the schema under an
// advisory lock (so replicas starting at once migrate once), and prepares every statement.
// UNAVAILABLE with a clear message (no password) when the server cannot be reached.
absl::StatusOr<std::unique_ptr<VerdictStore>> OpenPostgresStore(PostgresStoreOptions options);

}  // namespace verdictd

#endif  // VERDICTD_STORAGE_POSTGRES_POSTGRES_STORE_H_
