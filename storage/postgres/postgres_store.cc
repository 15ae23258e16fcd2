// Opening the PostgreSQL store (connections, schema migration) and what its parts share; the
// store itself is declared in postgres_store_impl.h.

#include "storage/postgres/postgres_store.h"

#include <libpq-fe.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "storage/postgres/postgres_connection.h"
#include "storage/postgres/postgres_schema.h"
#include "storage/postgres/postgres_store_impl.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace postgres_store_internal {
namespace {

constexpr const Sql* kMigrationStatements[] = {&kLockMigrations, &kUnlockMigrations};
constexpr const Sql* kVersionStatements[] = {&kReadSchemaVersion, &kWriteSchemaVersion};

// Brings the schema to kSchemaVersion under the migration lock. Each migration commits with
// its version, so a crash between two leaves a consistent, resumable database.
absl::Status MigrateLocked(Connection& conn) {
  if (absl::Status s = Exec(conn, kCreateSchemaVersionSql); !s.ok()) {
    return s;
  }
  if (absl::Status s = conn.Prepare(kVersionStatements); !s.ok()) {
    return s;
  }
  absl::StatusOr<Result> read = Exec(conn, kReadSchemaVersion, Params());
  if (!read.ok()) {
    return read.status();
  }
  const int64_t version = PQntuples(read->get()) > 0 ? GetInt64(read->get(), 0, 0) : 0;
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("the database's schema is at version ", version,
                     ", newer than this "
                     "build's ",
                     kSchemaVersion, ": it was migrated by a newer verdictd"));
  }
  for (int64_t v = version; v < kSchemaVersion; ++v) {
    absl::Status status = Exec(conn, "BEGIN");
    if (status.ok()) {
      status = Exec(conn, kMigrations[v]);
    }
    if (status.ok()) {
      status = Exec(conn, kWriteSchemaVersion, Params().Int64(v + 1)).status();
    }
    if (status.ok()) {
      status = Exec(conn, "COMMIT");
    }
    if (!status.ok()) {
      Exec(conn, "ROLLBACK").IgnoreError();
      return absl::Status(status.code(), absl::StrCat("migrating the schema to version ", v + 1,
                                                      ": ", status.message()));
    }
    spdlog::info("PostgreSQL store: schema migrated to version {}", v + 1);
  }
  return absl::OkStatus();
}

absl::Status Migrate(Connection& conn) {
  // Waiting for another replica's migration, and a migration itself, may take longer than the
  // session's statement timeout allows an ordinary statement.
  if (absl::Status s = Exec(conn, "SET statement_timeout = 0"); !s.ok()) {
    return s;
  }
  // Session-level: held across the migrations' own transactions, released below or when the
  // connection dies.
  if (absl::Status s = Exec(conn, kLockMigrations, Params().Int64(kMigrationLockKey)).status();
      !s.ok()) {
    return s;
  }
  absl::Status status = MigrateLocked(conn);
  absl::Status unlocked = Exec(conn, kUnlockMigrations, Params().Int64(kMigrationLockKey)).status();
  absl::Status reset = Exec(conn, "RESET statement_timeout");
  if (!status.ok()) {
    return status;
  }
  return unlocked.ok() ? reset : unlocked;
}

}  // namespace

int32_t BudgetLockKey(absl::string_view caller) {
  uint32_t hash = 2166136261u;
  for (unsigned char c : caller) {
    hash = (hash ^ c) * 16777619u;
  }
  return static_cast<int32_t>(hash);
}

std::string HexEncode(absl::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    hex.push_back(kDigits[c >> 4]);
    hex.push_back(kDigits[c & 15]);
  }
  return hex;
}

std::optional<std::string> HexDecode(absl::string_view hex) {
  if (hex.size() % 2 != 0) {
    return std::nullopt;
  }
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string bytes;
  bytes.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int high = nibble(hex[i]);
    const int low = nibble(hex[i + 1]);
    if (high < 0 || low < 0) {
      return std::nullopt;
    }
    bytes.push_back(static_cast<char>(high << 4 | low));
  }
  return bytes;
}

absl::StatusOr<Connection*> Slot::Get(bool* fresh) {
  if (fresh != nullptr) {
    *fresh = conn_ == nullptr;
  }
  if (conn_ != nullptr) {
    return conn_.get();
  }
  const absl::Time now = absl::Now();
  if (now < retry_after_) {
    return last_failure_;
  }
  absl::StatusOr<std::unique_ptr<Connection>> opened = Connection::Open(spec_, statements_);
  if (!opened.ok()) {
    last_failure_ = opened.status();
    retry_after_ = now + kReconnectBackoff;
    return last_failure_;
  }
  conn_ = *std::move(opened);
  return conn_.get();
}

void Slot::AfterFailure(const absl::Status& status) {
  if (conn_ == nullptr) {
    return;
  }
  // UNAVAILABLE may be a lost connection that libpq has not noticed yet: a fresh one is cheap.
  if (conn_->broken() || status.code() == absl::StatusCode::kUnavailable) {
    conn_.reset();
  }
}

ConnectSpec PostgresStore::SpecFor(const char* role) const {
  ConnectSpec spec = spec_;
  spec.role = role;
  return spec;
}

PostgresStore::PostgresStore(PostgresStoreOptions options, ConnectSpec spec,
                             std::unique_ptr<Connection> writer,
                             std::vector<std::unique_ptr<Connection>> readers,
                             std::unique_ptr<Connection> listener)
    : options_(std::move(options)),
      spec_(std::move(spec)),
      writer_(SpecFor("store write failed"), kWriterStatements, std::move(writer)),
      listener_conn_(std::move(listener)) {
  for (std::unique_ptr<Connection>& reader : readers) {
    readers_.emplace_back(SpecFor("store read failed"), kReaderStatements, std::move(reader));
  }
  listener_wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  writer_thread_ = std::thread([this] { WriterLoop(); });
  for (Slot& slot : readers_) {
    reader_threads_.emplace_back([this, &slot] { ReaderLoop(slot); });
  }
  listener_thread_ = std::thread([this] { ListenerLoop(); });
}

PostgresStore::~PostgresStore() {
  {
    absl::MutexLock lock(&reads_mu_);
    readers_stopping_ = true;
  }
  for (std::thread& reader : reader_threads_) {
    reader.join();
  }
  {
    absl::MutexLock lock(&queue_mu_);
    stopping_ = true;
  }
  writer_thread_.join();
  {
    absl::MutexLock lock(&listener_stop_mu_);
    listener_stopping_ = true;
  }
  const uint64_t one = 1;
  if (listener_wake_fd_ >= 0 && write(listener_wake_fd_, &one, sizeof one) < 0) {
    // The listener notices the flag within one poll interval anyway.
  }
  listener_thread_.join();
  if (listener_wake_fd_ >= 0) {
    close(listener_wake_fd_);
  }
}

}  // namespace postgres_store_internal

using postgres_store_internal::Connection;
using postgres_store_internal::ConnectSpec;
using postgres_store_internal::Exec;
using postgres_store_internal::kMigrationStatements;
using postgres_store_internal::kReaderStatements;
using postgres_store_internal::kWriterStatements;
using postgres_store_internal::PostgresStore;

bool IsPostgresUri(absl::string_view db) {
  return absl::StartsWith(db, "postgresql://") || absl::StartsWith(db, "postgres://");
}

absl::Status CheckPostgresUri(absl::string_view uri) {
  if (!IsPostgresUri(uri)) {
    return absl::InvalidArgumentError(
        "not a PostgreSQL URI: it must start with postgresql:// or postgres://");
  }
  // libpq's own parser decides what the URI means (percent-encoding, user-info, parameters), so
  // no spelling of a password slips past a parser of ours. Its error message may quote the URI,
  // password and all: it is not repeated.
  char* error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(std::string(uri).c_str(), &error);
  if (parsed == nullptr) {
    PQfreemem(error);
    return absl::InvalidArgumentError(
        "not a valid PostgreSQL URI (libpq cannot parse it; see "
        "https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNSTRING)");
  }
  bool has_password = false;
  bool has_key_passphrase = false;
  for (const PQconninfoOption* option = parsed; option->keyword != nullptr; ++option) {
    const absl::string_view keyword = option->keyword;
    if (option->val == nullptr) {
      continue;
    }
    has_password = has_password || keyword == "password";
    // The passphrase of the client certificate's key is as secret as a password.
    has_key_passphrase = has_key_passphrase || keyword == "sslpassword";
  }
  PQconninfoFree(parsed);
  if (has_key_passphrase) {
    return absl::InvalidArgumentError(
        "the PostgreSQL URI carries sslpassword= (the client key's passphrase), where command "
        "lines and logs would show it: remove it and use a key file without a passphrase, "
        "readable only by verdictd");
  }
  if (has_password) {
    return absl::InvalidArgumentError(
        "the PostgreSQL URI carries a password (in its user-info part or as a password= "
        "parameter), where command lines and logs would show it: remove it and put the "
        "password in a file named by --db_password_file (or in ~/.pgpass, PGPASSFILE)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<VerdictStore>> OpenPostgresStore(PostgresStoreOptions options) {
  if (absl::Status checked = CheckPostgresUri(options.uri); !checked.ok()) {
    return checked;
  }
  if (options.readers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("PostgresStoreOptions.readers must be >= 1, got ", options.readers));
  }
  if (options.max_group < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("PostgresStoreOptions.max_group must be >= 1, got ", options.max_group));
  }
  if (options.clock == nullptr) {
    return absl::InvalidArgumentError("PostgresStoreOptions.clock is null");
  }
  if (options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("PostgresStoreOptions.connect_timeout must be positive");
  }
  ConnectSpec spec;
  spec.uri = options.uri;
  spec.password = options.password;
  spec.connect_timeout = options.connect_timeout;

  // Each connection's errors begin with what it is for; at open, also that opening failed.
  auto opening = [](const absl::Status& status) {
    return absl::Status(status.code(),
                        absl::StrCat("cannot open the PostgreSQL store: ", status.message()));
  };
  ConnectSpec writer_spec = spec;
  writer_spec.role = "store write failed";
  absl::StatusOr<std::unique_ptr<Connection>> writer =
      Connection::Open(writer_spec, kMigrationStatements);
  if (!writer.ok()) {
    return opening(writer.status());
  }
  if (absl::Status migrated = postgres_store_internal::Migrate(**writer); !migrated.ok()) {
    return opening(migrated);
  }
  if (absl::Status prepared = (*writer)->Prepare(kWriterStatements); !prepared.ok()) {
    return opening(prepared);
  }
  ConnectSpec reader_spec = spec;
  reader_spec.role = "store read failed";
  std::vector<std::unique_ptr<Connection>> readers;
  for (int i = 0; i < options.readers; ++i) {
    absl::StatusOr<std::unique_ptr<Connection>> reader =
        Connection::Open(reader_spec, kReaderStatements);
    if (!reader.ok()) {
      return opening(reader.status());
    }
    readers.push_back(*std::move(reader));
  }
  ConnectSpec listener_spec = spec;
  listener_spec.role = "store listener failed";
  absl::StatusOr<std::unique_ptr<Connection>> listener = Connection::Open(listener_spec, {});
  if (!listener.ok()) {
    return opening(listener.status());
  }
  if (absl::Status listening = Exec(**listener, "LISTEN verdictd_flights"); !listening.ok()) {
    return opening(listening);
  }
  return std::make_unique<PostgresStore>(std::move(options), std::move(spec), *std::move(writer),
                                         std::move(readers), *std::move(listener));
}

}  // namespace verdictd
