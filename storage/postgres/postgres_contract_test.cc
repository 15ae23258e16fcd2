// The backend-neutral contract suite (storage/verdict_store_contract_test.h), run against
// PostgreSQL: one throwaway server for the whole test binary, one database per test directory.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "common/clock.h"
#include "gtest/gtest.h"
#include "storage/postgres/postgres_store.h"
#include "storage/verdict_store.h"
#include "storage/verdict_store_contract_test.h"
#include "tests/support/postgres_cluster.h"

namespace verdictd {
namespace {

using ::verdictd::testing::PostgresBinDir;
using ::verdictd::testing::PostgresCluster;
using ::verdictd::testing::PostgresRequired;

// The database kept "under" `dir`: a name derived from the path alone (FNV-1a), so that opening
// again with the same dir opens the same data, and each test's fresh dir a fresh database.
std::string DatabaseFor(const std::string& dir) {
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : dir) {
    hash = (hash ^ c) * 1099511628211ull;
  }
  return absl::StrFormat("contract_%016x", hash);
}

absl::StatusOr<std::unique_ptr<VerdictStore>> OpenPostgresForTest(const std::string& dir,
                                                                  Clock* clock) {
  absl::StatusOr<PostgresCluster*> cluster = PostgresCluster::Shared();
  if (!cluster.ok()) {
    return cluster.status();
  }
  const std::string database = DatabaseFor(dir);
  absl::Status created = (*cluster)->CreateDatabase(database);
  if (!created.ok() && created.code() != absl::StatusCode::kAlreadyExists) {
    return created;
  }
  PostgresStoreOptions options;
  options.uri = (*cluster)->Uri(database);
  options.clock = clock;
  options.readers = 2;
  return OpenPostgresStore(std::move(options));
}

// Without PostgreSQL's binaries the suite is not instantiated here (the test below says why and
// skips), except under CI, where its tests then fail at Open.
std::vector<StoreBackend> Backends() {
  if (PostgresBinDir().ok() || PostgresRequired()) {
    return {StoreBackend{"postgres", OpenPostgresForTest}};
  }
  return {};
}

INSTANTIATE_TEST_SUITE_P(Postgres, VerdictStoreContractTest, ::testing::ValuesIn(Backends()),
                         StoreBackendName);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(VerdictStoreContractTest);

TEST(PostgresContractTest, PostgresIsInstalled) { VERDICTD_REQUIRE_POSTGRES(); }

}  // namespace
}  // namespace verdictd
