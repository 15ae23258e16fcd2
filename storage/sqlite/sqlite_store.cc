// Opening the SQLite store; the store itself is declared in sqlite_store_impl.h.

#include "storage/sqlite/sqlite_store.h"

#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "storage/sqlite/sqlite_connection.h"
#include "storage/sqlite/sqlite_store_impl.h"
#include "storage/verdict_store.h"

namespace verdictd {

using sqlite_store_internal::Db;
using sqlite_store_internal::FileIdentity;
using sqlite_store_internal::IdentifyFile;
using sqlite_store_internal::Opener;
using sqlite_store_internal::PrepareWriter;
using sqlite_store_internal::SqliteStore;
using sqlite_store_internal::WriteConnection;

absl::StatusOr<std::unique_ptr<VerdictStore>> OpenSqliteStore(SqliteStoreOptions options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("SqliteStoreOptions.path is empty");
  }
  if (options.max_group < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SqliteStoreOptions.max_group must be >= 1, got ", options.max_group));
  }
  if (options.clock == nullptr) {
    return absl::InvalidArgumentError("SqliteStoreOptions.clock is null");
  }
  Opener opener(options);
  absl::Status status = opener.CreateIfMissing();
  if (!status.ok()) {
    return status;
  }
  absl::StatusOr<Db> db = opener.OpenWriter();
  if (!db.ok()) {
    return db.status();
  }
  // Preparing reads the schema: a corrupt one fails here.
  absl::StatusOr<std::unique_ptr<WriteConnection>> writer = PrepareWriter(*std::move(db));
  if (!writer.ok()) {
    return opener.Unusable(writer.status().message());
  }
  absl::StatusOr<FileIdentity> file = IdentifyFile(opener);
  if (!file.ok()) {
    return file.status();
  }
  return std::make_unique<SqliteStore>(std::move(options), *std::move(writer), *file);
}

}  // namespace verdictd
