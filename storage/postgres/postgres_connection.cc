#include "storage/postgres/postgres_connection.h"

#include <endian.h>
#include <libpq-fe.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "storage/postgres/postgres_schema.h"

namespace verdictd {
namespace postgres_store_internal {
namespace {

// Session defaults: see Connection::Open.
constexpr char kSessionOptions[] =
    "-c statement_timeout=60s -c lock_timeout=30s -c idle_in_transaction_session_timeout=60s";

// The status code for a SQLSTATE (five characters; its first two are the class).
absl::StatusCode CodeOf(absl::string_view state) {
  if (state == "40P01" || state == "40001") {  // deadlock_detected, serialization_failure
    return absl::StatusCode::kAborted;
  }
  const absl::string_view cls = state.substr(0, 2);
  // Connection exceptions, operator intervention (admin shutdown, crash shutdown, cannot
  // connect now, query canceled), insufficient resources (disk full, out of memory, too many
  // connections), system errors (I/O), lock timeouts, a read-only transaction (a standby
  // promoted away from us), internal errors: the database is not usable now, not the request
  // wrong. Callers treat them as "writes failing" and retry later.
  if (cls == "08" || cls == "57" || cls == "53" || cls == "58" || cls == "XX" || state == "55P03" ||
      state == "25006" || cls == "40") {
    return absl::StatusCode::kUnavailable;
  }
  if (cls == "22") {  // data exception: e.g. text that is not UTF-8, a value out of range
    return absl::StatusCode::kInvalidArgument;
  }
  if (state == "23505") {
    return absl::StatusCode::kAlreadyExists;
  }
  if (cls == "23") {  // integrity constraint violation
    return absl::StatusCode::kFailedPrecondition;
  }
  return absl::StatusCode::kInternal;  // e.g. 42: SQL that does not fit the schema
}

// libpq's messages span lines ("...\n\tIs the server running ...?\n"): one line for a log.
std::string Trimmed(const char* message) {
  std::string text(absl::StripAsciiWhitespace(message == nullptr ? "" : message));
  for (char& c : text) {
    if (c == '\n' || c == '\t' || c == '\r') {
      c = ' ';
    }
  }
  return text;
}

}  // namespace

std::string Redact(absl::string_view text, absl::string_view secret) {
  if (secret.empty()) {
    return std::string(text);
  }
  return absl::StrReplaceAll(text, {{secret, "<redacted>"}});
}

Params& Params::Add(const char* data, size_t size) {
  values_.push_back(data);
  lengths_.push_back(static_cast<int>(size));
  formats_.push_back(1);
  return *this;
}

Params& Params::Int64(int64_t value) {
  const uint64_t big = htobe64(static_cast<uint64_t>(value));
  std::string& slot = owned_.emplace_back(sizeof big, '\0');
  std::memcpy(slot.data(), &big, sizeof big);
  return Add(slot.data(), slot.size());
}

Params& Params::Int32(int32_t value) {
  const uint32_t big = htobe32(static_cast<uint32_t>(value));
  std::string& slot = owned_.emplace_back(sizeof big, '\0');
  std::memcpy(slot.data(), &big, sizeof big);
  return Add(slot.data(), slot.size());
}

Params& Params::Bool(bool value) {
  std::string& slot = owned_.emplace_back(1, value ? '\1' : '\0');
  return Add(slot.data(), slot.size());
}

Params& Params::Bytes(absl::string_view value) {
  // libpq takes a null pointer for SQL NULL: an empty value still needs a pointer.
  return Add(value.empty() ? "" : value.data(), value.size());
}

Params& Params::ByteaArray(absl::Span<const std::string> values) {
  // bytea's type oid (pg_type.dat: fixed since PostgreSQL 7); array_recv refuses an array whose
  // header names another element type than the parameter's.
  constexpr uint32_t kByteaOid = 17;
  std::string& slot = owned_.emplace_back();
  auto put32 = [&slot](uint32_t value) {
    const uint32_t big = htobe32(value);
    slot.append(reinterpret_cast<const char*>(&big), sizeof big);
  };
  put32(values.empty() ? 0 : 1);  // dimensions
  put32(0);                       // flags: no NULL element
  put32(kByteaOid);
  if (!values.empty()) {
    put32(static_cast<uint32_t>(values.size()));  // the dimension's length
    put32(1);                                     // and its lower bound
  }
  for (const std::string& value : values) {
    put32(static_cast<uint32_t>(value.size()));
    slot.append(value);
  }
  return Add(slot.data(), slot.size());
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(
    const ConnectSpec& spec, absl::Span<const Sql* const> statements) {
  // libpq counts connect_timeout in whole seconds and takes anything below 2 as 2.
  const std::string timeout = absl::StrCat(std::max<int64_t>(
      2, absl::ToInt64Seconds(absl::Ceil(spec.connect_timeout, absl::Seconds(1)))));
  // Keywords before "dbname" are defaults the URI may override; those after it win over the
  // URI. TCP keepalives and tcp_user_timeout notice a peer that vanished without closing
  // (ignored on unix sockets). The session settings bound every wait, so that no call hangs
  // forever on a lock another process holds, and a session whose client vanished inside a
  // transaction is ended by the server, releasing its locks (claims, budget locks). A URI with
  // options= of its own replaces them (e.g. behind a pooler that refuses startup options).
  std::vector<const char*> keys = {
      "application_name", "keepalives",       "keepalives_idle", "keepalives_interval",
      "keepalives_count", "tcp_user_timeout", "options",         "dbname",
      "connect_timeout",  "client_encoding"};
  std::vector<const char*> values = {
      "verdictd",      "1",   "10", "5", "3", "30000", kSessionOptions, spec.uri.c_str(),
      timeout.c_str(), "UTF8"};
  if (!spec.password.empty()) {
    keys.push_back("password");
    values.push_back(spec.password.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  ConnPtr conn(PQconnectdbParams(keys.data(), values.data(), /*expand_dbname=*/1));
  if (conn == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(spec.role, ": out of memory connecting"));
  }
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(
        absl::StrCat(spec.role, ": cannot connect to PostgreSQL: ",
                     Redact(Trimmed(PQerrorMessage(conn.get())), spec.password)));
  }
  // Notices ("relation already exists, skipping") are the server talking to a person at a
  // terminal; the store reports what matters itself. libpq would print them to stderr.
  PQsetNoticeProcessor(
      conn.get(), [](void*, const char*) {}, nullptr);
  std::unique_ptr<Connection> connection(new Connection(spec, std::move(conn)));
  if (absl::Status prepared = connection->Prepare(statements); !prepared.ok()) {
    return prepared;
  }
  return connection;
}

absl::Status Connection::Prepare(absl::Span<const Sql* const> statements) {
  for (const Sql* sql : statements) {
    Result result(PQprepare(conn_.get(), sql->name, sql->text, 0, nullptr));
    if (result == nullptr || PQresultStatus(result.get()) != PGRES_COMMAND_OK) {
      absl::Status failure = Failure(result.get());
      if (failure.code() == absl::StatusCode::kUnavailable) {
        return failure;
      }
      return absl::InternalError(absl::StrCat(
          "cannot prepare \"", sql->name, "\" (is the schema this build's?): ", failure.message()));
    }
  }
  return absl::OkStatus();
}

bool Connection::broken() const {
  if (PQstatus(conn_.get()) != CONNECTION_OK) {
    return true;
  }
  // A statement that failed in the middle of a protocol exchange can leave the connection busy
  // or inside a transaction nobody will finish.
  const PGTransactionStatusType tx = PQtransactionStatus(conn_.get());
  return tx == PQTRANS_ACTIVE || tx == PQTRANS_UNKNOWN;
}

std::string Connection::ErrorMessage() const {
  return Redact(Trimmed(PQerrorMessage(conn_.get())), spec_.password);
}

absl::Status Connection::Failure(const PGresult* result) const {
  const char* state = result == nullptr ? nullptr : PQresultErrorField(result, PG_DIAG_SQLSTATE);
  const char* primary =
      result == nullptr ? nullptr : PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
  // The primary message only: DETAIL lines can quote the row's values.
  std::string message = primary != nullptr ? Trimmed(primary) : ErrorMessage();
  if (message.empty() && result != nullptr) {
    message = Trimmed(PQresultErrorMessage(result));
  }
  message = Redact(message, spec_.password);
  if (state == nullptr || PQstatus(conn_.get()) != CONNECTION_OK) {
    if (message.empty()) {
      message = "connection to PostgreSQL lost";
    }
    return absl::UnavailableError(absl::StrCat(spec_.role, ": ", message));
  }
  return absl::Status(CodeOf(state),
                      absl::StrCat(spec_.role, ": ", message, " (SQLSTATE ", state, ")"));
}

ResultOrStatus Exec(Connection& conn, const Sql& sql, const Params& params) {
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return conn.Failure(nullptr);
  }
  Result result(PQexecPrepared(conn.get(), sql.name, params.size(), params.values(),
                               params.lengths(), params.formats(), /*resultFormat=*/1));
  const ExecStatusType status =
      result == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(result.get());
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return conn.Failure(result.get());
  }
  return result;
}

absl::Status Exec(Connection& conn, const char* sql) {
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return conn.Failure(nullptr);
  }
  Result result(PQexec(conn.get(), sql));
  const ExecStatusType status =
      result == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(result.get());
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    return conn.Failure(result.get());
  }
  return absl::OkStatus();
}

int64_t GetInt64(const PGresult* result, int row, int column) {
  const char* data = PQgetvalue(result, row, column);
  switch (PQgetlength(result, row, column)) {
    case 8: {
      uint64_t big;
      std::memcpy(&big, data, sizeof big);
      return static_cast<int64_t>(be64toh(big));
    }
    case 4: {
      uint32_t big;
      std::memcpy(&big, data, sizeof big);
      return static_cast<int32_t>(be32toh(big));
    }
    case 2: {
      uint16_t big;
      std::memcpy(&big, data, sizeof big);
      return static_cast<int16_t>(be16toh(big));
    }
    default:
      return 0;
  }
}

bool GetBool(const PGresult* result, int row, int column) {
  return PQgetlength(result, row, column) == 1 && PQgetvalue(result, row, column)[0] != 0;
}

std::string GetBytes(const PGresult* result, int row, int column) {
  return std::string(PQgetvalue(result, row, column),
                     static_cast<size_t>(PQgetlength(result, row, column)));
}

bool IsNull(const PGresult* result, int row, int column) {
  return PQgetisnull(result, row, column) != 0;
}

}  // namespace postgres_store_internal
}  // namespace verdictd
