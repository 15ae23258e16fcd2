#include "storage/sqlite/sqlite_statement.h"

#include <sqlite3.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/verdict.h"

namespace verdictd {
namespace sqlite_store_internal {

int BindText(sqlite3_stmt* stmt, int index, absl::string_view value) {
  return sqlite3_bind_text64(stmt, index, value.empty() ? "" : value.data(), value.size(),
                             SQLITE_STATIC, SQLITE_UTF8);
}

int BindBytes(sqlite3_stmt* stmt, int index, absl::string_view value) {
  return sqlite3_bind_blob64(stmt, index, value.empty() ? "" : value.data(), value.size(),
                             SQLITE_STATIC);
}

std::string ColumnBytes(sqlite3_stmt* stmt, int index) {
  const void* data = sqlite3_column_blob(stmt, index);
  const int size = sqlite3_column_bytes(stmt, index);
  if (data == nullptr) {
    return std::string();
  }
  return std::string(static_cast<const char*>(data), static_cast<size_t>(size));
}

int StepLatestFor(sqlite3_stmt* stmt, absl::string_view ip,
                  std::optional<absl::string_view> user_agent, std::optional<Verdict>* latest) {
  ScopedReset reset(stmt);
  latest->reset();
  BindText(stmt, 1, ip);
  if (user_agent.has_value()) {
    BindBytes(stmt, 2, *user_agent);
  }
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    *latest = ColumnVerdict(stmt, 0);
  }
  return rc;
}

Verdict ColumnVerdict(sqlite3_stmt* stmt, int first) {
  Verdict verdict;
  verdict.ip = ColumnBytes(stmt, first);
  verdict.user_agent = ColumnBytes(stmt, first + 1);
  const int score = sqlite3_column_int(stmt, first + 2);
  verdict.assessment.score =
      score >= static_cast<int>(Score::kUnspecified) && score <= static_cast<int>(Score::kFake)
          ? static_cast<Score>(score)
          : Score::kUnspecified;
  verdict.assessment.proxy = sqlite3_column_int(stmt, first + 3) != 0;
  verdict.assessment.tor = sqlite3_column_int(stmt, first + 4) != 0;
  verdict.assessment.vpn = sqlite3_column_int(stmt, first + 5) != 0;
  verdict.assessment.crawler = sqlite3_column_int(stmt, first + 6) != 0;
  verdict.assessment.bot = sqlite3_column_int(stmt, first + 7) != 0;
  verdict.checked_at = absl::FromUnixMicros(sqlite3_column_int64(stmt, first + 8));
  verdict.caller = ColumnBytes(stmt, first + 9);
  return verdict;
}

absl::Status WriteFailed(sqlite3* db) {
  return absl::UnavailableError(absl::StrCat("store write failed: ", sqlite3_errmsg(db)));
}

absl::Status ReadFailed(sqlite3* db) {
  return absl::UnavailableError(absl::StrCat("store read failed: ", sqlite3_errmsg(db)));
}

absl::StatusOr<Stmt> Prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return absl::InternalError(absl::StrCat("cannot prepare \"", sql, "\": ", sqlite3_errmsg(db)));
  }
  return Stmt(stmt);
}

absl::Status Run(sqlite3* db, sqlite3_stmt* stmt) {
  ScopedReset reset(stmt);
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
    return WriteFailed(db);
  }
  return absl::OkStatus();
}

}  // namespace sqlite_store_internal
}  // namespace verdictd
