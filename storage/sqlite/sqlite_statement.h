#ifndef VERDICTD_STORAGE_SQLITE_SQLITE_STATEMENT_H_
#define VERDICTD_STORAGE_SQLITE_SQLITE_STATEMENT_H_

// Statement handling shared by the SQLite store's parts: owning handles, binding and reading
// values, running statements, and the conversions between stored integers and times.

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/verdict.h"
#include "storage/store_support.h"

namespace verdictd {
namespace sqlite_store_internal {

using store_support::AllowanceStep;
using store_support::CeilUnixMicros;
using store_support::CheckSecretRequest;
using store_support::ClicksSinceSplit;
using store_support::DayNumber;
using store_support::DayOfMicros;
using store_support::DayRange;
using store_support::DecideAllowance;
using store_support::DecodeAllowanceMark;
using store_support::EncodeAllowanceMark;
using store_support::FillRandom;
using store_support::FinishSecret;
using store_support::kAllowanceMarkName;
using store_support::kEpochDay;
using store_support::kMicrosPerDay;
using store_support::ProbeTaken;
using store_support::SplitClicksSince;
using store_support::UsageDays;

struct StmtDeleter {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtDeleter>;

// sqlite3_close_v2 defers the close until statements still alive are finalized, so members may
// be destroyed in any order.
struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

// Resets a statement and drops its bindings when a use of it ends. Resetting also ends the
// statement's implicit read transaction, which would otherwise pin an old snapshot.
class ScopedReset {
 public:
  explicit ScopedReset(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ScopedReset(const ScopedReset&) = delete;
  ScopedReset& operator=(const ScopedReset&) = delete;
  ~ScopedReset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

 private:
  sqlite3_stmt* stmt_;
};

// Bound values are SQLITE_STATIC: every caller keeps them alive until the statement is reset.
// A null data pointer would bind SQL NULL, hence the "" for empty views.
int BindText(sqlite3_stmt* stmt, int index, absl::string_view value);

// For bytes that may hold NUL or invalid UTF-8 (user agents, response bodies): a blob keeps them
// exactly, and an equality test against a blob parameter compares bytes.
int BindBytes(sqlite3_stmt* stmt, int index, absl::string_view value);

// The column's bytes as stored, whether text or blob.
std::string ColumnBytes(sqlite3_stmt* stmt, int index);

// A verdict from the ten columns ip, user_agent, score, proxy, tor, vpn, crawler, bot,
// checked_at_us, caller starting at column `first`.
Verdict ColumnVerdict(sqlite3_stmt* stmt, int first);

// Steps a latest-for statement (kLatestForIpSql, or kLatestForIpAndUserAgentSql when user_agent
// is set) for ip once, resetting it after: SQLITE_ROW with *latest set, SQLITE_DONE for none
// (*latest reset), else the error code.
int StepLatestFor(sqlite3_stmt* stmt, absl::string_view ip,
                  std::optional<absl::string_view> user_agent, std::optional<Verdict>* latest);

absl::Status WriteFailed(sqlite3* db);

absl::Status ReadFailed(sqlite3* db);

absl::StatusOr<Stmt> Prepare(sqlite3* db, const char* sql);

// Runs a statement that returns no rows (anything past the first row is ignored).
absl::Status Run(sqlite3* db, sqlite3_stmt* stmt);

}  // namespace sqlite_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_SQLITE_STATEMENT_H_
