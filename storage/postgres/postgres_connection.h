#ifndef VERDICTD_STORAGE_POSTGRES_POSTGRES_CONNECTION_H_
#define VERDICTD_STORAGE_POSTGRES_POSTGRES_CONNECTION_H_

// A small RAII layer over libpq: owned connections and results, a builder of binary parameters,
// typed readers of binary result columns, and the mapping of PostgreSQL's errors (SQLSTATE) to
// absl::Status. Every message it produces has the password removed, whatever libpq put in it.

#include <libpq-fe.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "storage/postgres/postgres_schema.h"

namespace verdictd {
namespace postgres_store_internal {

struct ConnDeleter {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct ResultDeleter {
  void operator()(PGresult* result) const { PQclear(result); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;
using Result = std::unique_ptr<PGresult, ResultDeleter>;
// A statement's result or why it failed.
using ResultOrStatus = absl::StatusOr<Result>;

// `text` with every occurrence of `secret` (when not empty) replaced by "<redacted>".
std::string Redact(absl::string_view text, absl::string_view secret);

// How to reach the server, shared by every connection of a store.
struct ConnectSpec {
  std::string uri;       // checked by CheckPostgresUri: carries no password
  std::string password;  // "" lets libpq find one; never logged
  absl::Duration connect_timeout = absl::Seconds(5);
  // What the connection is for, as the errors on it begin: "store write failed" (the writer),
  // "store read failed" (readers), "store listener failed".
  std::string role = "store read failed";
};

// The parameters of one statement, all sent in binary form (integers in network byte order,
// bytea and text as their raw bytes). The values of Bytes are not copied: they must outlive the
// statement's execution.
class Params {
 public:
  Params& Int64(int64_t value);
  Params& Int32(int32_t value);
  Params& Bool(bool value);
  // For bytea and text parameters alike.
  Params& Bytes(absl::string_view value);
  // For a bytea[] parameter: a one-dimensional array of `values` (no NULLs) in PostgreSQL's
  // binary array form (array_recv: each element length-prefixed, so no byte of one needs
  // quoting or escaping, as the text form's "{...}" would). Copied.
  Params& ByteaArray(absl::Span<const std::string> values);

  int size() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  Params& Add(const char* data, size_t size);
  std::deque<std::string> owned_;  // a deque: growing it never moves what values_ points to
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
};

// One open connection with the statements it prepared. Used by one thread at a time.
class Connection {
 public:
  // Connects (bounded by spec.connect_timeout), and prepares `statements`. UNAVAILABLE
  // "<role>: cannot connect to PostgreSQL: ..." when the server cannot be reached.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const ConnectSpec& spec,
                                                          absl::Span<const Sql* const> statements);

  // Prepares `statements` (Open does for its own; the writer prepares the rest once the schema
  // is migrated). INTERNAL when one does not prepare (a schema not as this build expects).
  absl::Status Prepare(absl::Span<const Sql* const> statements);

  PGconn* get() const { return conn_.get(); }
  const ConnectSpec& spec() const { return spec_; }
  // Whether the connection is lost (or left in a state nobody should reuse): drop it.
  bool broken() const;
  // The status for a failed result (nullptr: libpq could not even send), with the SQLSTATE
  // mapped: connection loss and resource trouble UNAVAILABLE; ABORTED only for a deadlock or a
  // serialization failure (the whole transaction is worth retrying from its start: nothing was
  // wrong with its statements); bad data INVALID_ARGUMENT; and so on. The message starts with
  // the connection's role.
  absl::Status Failure(const PGresult* result) const;
  // A message from libpq about this connection, redacted.
  std::string ErrorMessage() const;

 private:
  Connection(ConnectSpec spec, ConnPtr conn) : spec_(std::move(spec)), conn_(std::move(conn)) {}
  ConnectSpec spec_;
  ConnPtr conn_;
};

// Runs the prepared statement `sql` (prepared by Connection::Open) with `params`; results in
// binary form. The result on success (PGRES_COMMAND_OK or PGRES_TUPLES_OK), else its status.
ResultOrStatus Exec(Connection& conn, const Sql& sql, const Params& params);
// Runs fixed SQL without parameters (BEGIN, SAVEPOINT, a migration, LISTEN); `sql` never
// contains values.
absl::Status Exec(Connection& conn, const char* sql);

// Readers of binary result columns. REQUIRE: the column has that type (int2/int4/int8 for
// GetInt64, bool, or bytea/text for GetBytes).
int64_t GetInt64(const PGresult* result, int row, int column);
bool GetBool(const PGresult* result, int row, int column);
std::string GetBytes(const PGresult* result, int row, int column);
bool IsNull(const PGresult* result, int row, int column);

}  // namespace postgres_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_POSTGRES_POSTGRES_CONNECTION_H_
