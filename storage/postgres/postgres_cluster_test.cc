// The throwaway PostgreSQL server of tests/support/postgres_cluster.h, which the store's tests
// and the end-to-end tests rely on.
#include "tests/support/postgres_cluster.h"

#include <filesystem>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd::testing {
namespace {

TEST(PostgresClusterTest, ServesDatabasesAndSurvivesARestart) {
  VERDICTD_REQUIRE_POSTGRES();
  auto cluster = PostgresCluster::Create();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  PostgresCluster& pg = **cluster;
  ASSERT_TRUE(pg.running());
  EXPECT_THAT(pg.Uri("x y"), ::testing::StartsWith("postgresql:///x%20y?host=/"));

  ASSERT_TRUE(pg.CreateDatabase("a \"db\"").ok());
  EXPECT_EQ(pg.CreateDatabase("a \"db\"").code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(pg.Query("a \"db\"", "CREATE TABLE t(v text); INSERT INTO t VALUES ('kept')").ok());

  ASSERT_TRUE(pg.Stop().ok());
  EXPECT_FALSE(pg.running());
  EXPECT_EQ(pg.Query("a \"db\"", "SELECT 1").status().code(), absl::StatusCode::kUnavailable);

  ASSERT_TRUE(pg.Start().ok()) << pg.ServerLog();
  auto value = pg.Query("a \"db\"", "SELECT v FROM t");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "kept");

  const std::string data_dir = pg.data_dir();
  cluster->reset();
  EXPECT_FALSE(std::filesystem::exists(data_dir));
}

TEST(PostgresClusterTest, SharedIsOneServer) {
  VERDICTD_REQUIRE_POSTGRES();
  auto first = PostgresCluster::Shared();
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = PostgresCluster::Shared();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*first, *second);
  auto one = (*first)->Query("postgres", "SELECT 1");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(*one, "1");
}

}  // namespace
}  // namespace verdictd::testing
