#ifndef VERDICTD_CLIENT_VERDICTCTL_MIGRATE_H_
#define VERDICTD_CLIENT_VERDICTCTL_MIGRATE_H_

// `verdictctl migrate --from PATH --to URI`: moves a SQLite store into an empty PostgreSQL
// database (storage/migrate/sqlite_to_postgres.h). Needs no server: it reads the file and writes
// the database directly, and no verdictd may run on either while it does.

#include <string>

namespace verdictd::cli {

struct MigrateCommand {
  std::string from;      // the SQLite file
  std::string to;        // a PostgreSQL URI without a password
  std::string password;  // from --db_password_file; "" lets libpq find one
  bool json = false;     // the summary as one JSON object
  bool tty = false;      // stderr is a terminal: a progress bar redrawn in place, else lines
};

// Copies, printing progress to stderr and the summary (rows per table on each side, the usage
// totals) to stdout. Returns 0, kExitNoInput when the SQLite file cannot be opened, or the
// status code (9 FAILED_PRECONDITION: the target is not empty or the file's schema is unknown;
// 14 UNAVAILABLE: PostgreSQL cannot be reached; 13 INTERNAL: the counts differed, rolled back),
// with `verdictctl: CODE_NAME: message` on stderr.
int RunMigrate(const MigrateCommand& command);

}  // namespace verdictd::cli

#endif  // VERDICTD_CLIENT_VERDICTCTL_MIGRATE_H_
