#include "tests/support/sqlite_query.h"

#include <sqlite3.h>

#include "gtest/gtest.h"

namespace verdictd::testing {
namespace {

// Opens `db_path` read-only and prepares `sql`; the caller finalizes and closes.
sqlite3_stmt* Prepare(const std::string& db_path, const std::string& sql, sqlite3** db) {
  EXPECT_EQ(sqlite3_open_v2(db_path.c_str(), db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK)
      << db_path << ": " << sqlite3_errmsg(*db);
  sqlite3_busy_timeout(*db, 5000);  // verdictd's writer may hold the lock for a moment
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(*db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
      << sql << ": " << sqlite3_errmsg(*db);
  return stmt;
}

}  // namespace

int64_t QueryInt(const std::string& db_path, const std::string& sql, const std::string* arg,
                 bool blob) {
  sqlite3* db = nullptr;
  sqlite3_stmt* stmt = Prepare(db_path, sql, &db);
  if (stmt != nullptr && arg != nullptr) {
    if (blob) {
      sqlite3_bind_blob(stmt, 1, arg->data(), static_cast<int>(arg->size()), SQLITE_TRANSIENT);
    } else {
      sqlite3_bind_text(stmt, 1, arg->data(), static_cast<int>(arg->size()), SQLITE_TRANSIENT);
    }
  }
  int64_t value = -1;
  if (stmt != nullptr && sqlite3_step(stmt) == SQLITE_ROW) {
    value = sqlite3_column_int64(stmt, 0);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return value;
}

std::string QueryText(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  sqlite3_stmt* stmt = Prepare(db_path, sql, &db);
  std::string value;
  if (stmt != nullptr && sqlite3_step(stmt) == SQLITE_ROW) {
    const unsigned char* text = sqlite3_column_text(stmt, 0);
    if (text != nullptr) {
      value.assign(reinterpret_cast<const char*>(text),
                   static_cast<size_t>(sqlite3_column_bytes(stmt, 0)));
    }
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return value;
}

}  // namespace verdictd::testing
