// PostgreSQL-specific behaviour of the store (the shared contract is in
// postgres_contract_test.cc).
#include "storage/postgres/postgres_store.h"

#include "gtest/gtest.h"

namespace verdictd {
namespace {

TEST(PostgresUriTest, IsPostgresUri) {
  EXPECT_TRUE(IsPostgresUri("postgresql:///verdicts"));
  EXPECT_TRUE(IsPostgresUri("postgres://db.example/verdicts"));
  EXPECT_FALSE(IsPostgresUri("/var/lib/verdictd/verdicts.db"));
  EXPECT_FALSE(IsPostgresUri("verdicts.db"));
  EXPECT_FALSE(IsPostgresUri("postgresql:"));
}

}  // namespace
}  // namespace verdictd
