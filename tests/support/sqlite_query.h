#ifndef VERDICTD_TESTS_SUPPORT_SQLITE_QUERY_H_
#define VERDICTD_TESTS_SUPPORT_SQLITE_QUERY_H_

// Reads a verdictd database file directly, read-only, the way an auditor with sqlite3 would.

#include <cstdint>
#include <string>

namespace verdictd::testing {

// Runs `sql` (one integer result) on the database file; -1 when it returns no row. `arg`, if
// given, is bound to ?1: as a BLOB when `blob` (user agents are stored as BLOBs), else as TEXT.
// A failure to open or prepare is a test failure.
int64_t QueryInt(const std::string& db_path, const std::string& sql,
                 const std::string* arg = nullptr, bool blob = false);
inline int64_t QueryInt(const std::string& db_path, const std::string& sql,
                        const std::string& arg) {
  return QueryInt(db_path, sql, &arg);
}

// Runs `sql` (one text result); "" when it returns no row.
std::string QueryText(const std::string& db_path, const std::string& sql);

}  // namespace verdictd::testing

#endif  // VERDICTD_TESTS_SUPPORT_SQLITE_QUERY_H_
