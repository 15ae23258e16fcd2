// The backend-neutral contract suite (storage/verdict_store_contract_test.h), run against SQLite.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "storage/sqlite/sqlite_store.h"
#include "storage/verdict_store.h"
#include "storage/verdict_store_contract_test.h"

namespace verdictd {
namespace {

absl::StatusOr<std::unique_ptr<VerdictStore>> OpenSqliteForTest(const std::string& dir,
                                                                Clock* clock) {
  SqliteStoreOptions options;
  options.path = dir + "/verdicts.db";
  options.clock = clock;
  return OpenSqliteStore(std::move(options));
}

INSTANTIATE_TEST_SUITE_P(Sqlite, VerdictStoreContractTest,
                         ::testing::Values(StoreBackend{"sqlite", OpenSqliteForTest}),
                         StoreBackendName);

}  // namespace
}  // namespace verdictd
