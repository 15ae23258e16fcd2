// PostgreSQL-specific behaviour of the store: URIs and passwords, a server that is away or goes
// away, and several store instances (as several verdictd replicas) on one database. The shared
// contract is in postgres_contract_test.cc.
#include "storage/postgres/postgres_store.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/postgres/postgres_schema.h"
#include "storage/postgres/postgres_store_impl.h"
#include "storage/verdict_store.h"
#include "storage/verdict_store_contract_test.h"
#include "tests/support/postgres_cluster.h"
#include "tests/support/wait_until.h"

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::verdictd::store_test::BeginClickSync;
using ::verdictd::store_test::CompleteClickSync;
using ::verdictd::store_test::kT0;
using ::verdictd::store_test::LatestForSync;
using ::verdictd::store_test::MakeVerdict;
using ::verdictd::store_test::PingSync;
using ::verdictd::store_test::PruneSync;
using ::verdictd::store_test::Waiter;
using ::verdictd::testing::PostgresCluster;
using ::verdictd::testing::WaitUntil;

constexpr absl::Duration kPatience = absl::Seconds(30);

absl::StatusOr<ClaimResult> ClaimSync(VerdictStore& store, ClickClaim claim) {
  Waiter<absl::StatusOr<ClaimResult>> waiter;
  store.ClaimClick(std::move(claim), waiter.Callback());
  return waiter.Wait();
}

absl::StatusOr<bool> LeaseSync(VerdictStore& store, std::string name, std::string owner,
                               absl::Duration lease) {
  Waiter<absl::StatusOr<bool>> waiter;
  store.TryLease(std::move(name), std::move(owner), lease, waiter.Callback());
  return waiter.Wait();
}

ClickClaim Claim(std::string key, std::string owner = "replica-a", std::string caller = "alice") {
  ClickClaim claim;
  claim.caller = std::move(caller);
  claim.ip = "192.0.2.10";
  claim.requested_at = absl::Now();
  claim.flight_key = std::move(key);
  claim.owner = std::move(owner);
  claim.lease = absl::Seconds(60);
  return claim;
}

ClickCompletion VerdictCompletion(const std::string& ip) {
  ClickCompletion completion;
  completion.outcome = ClickOutcome::kVerdict;
  completion.http_status = 200;
  completion.verdict = MakeVerdict(ip, kT0);
  completion.raw_body = "{}";
  return completion;
}

// Records what the store tells its flight listener.
class RecordingListener : public FlightListener {
 public:
  void OnFlightEnded(const std::string& flight_key) override {
    absl::MutexLock lock(&mu_);
    ended_.push_back(flight_key);
  }
  void OnFlightsMayHaveEnded() override {
    absl::MutexLock lock(&mu_);
    ++may_have_ended_;
  }
  bool Ended(const std::string& key) {
    absl::MutexLock lock(&mu_);
    return std::find(ended_.begin(), ended_.end(), key) != ended_.end();
  }
  int may_have_ended() {
    absl::MutexLock lock(&mu_);
    return may_have_ended_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> ended_ ABSL_GUARDED_BY(mu_);
  int may_have_ended_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST(PostgresUriTest, IsPostgresUri) {
  EXPECT_TRUE(IsPostgresUri("postgresql:///verdicts"));
  EXPECT_TRUE(IsPostgresUri("postgres://db.example/verdicts"));
  EXPECT_FALSE(IsPostgresUri("/var/lib/verdictd/verdicts.db"));
  EXPECT_FALSE(IsPostgresUri("verdicts.db"));
  EXPECT_FALSE(IsPostgresUri("postgresql:"));
}

TEST(PostgresUriTest, AUriCarryingAPasswordIsRefusedWithoutRepeatingIt) {
  EXPECT_TRUE(CheckPostgresUri("postgresql://verdictd@db.example:5432/verdicts").ok());
  EXPECT_TRUE(CheckPostgresUri("postgresql:///verdicts?host=/run/postgresql").ok());
  for (const char* uri : {
           "postgresql://verdictd:Tr0ub4dor@db.example/verdicts",
           "postgres://:Tr0ub4dor@db.example/verdicts",
           "postgresql:///verdicts?password=Tr0ub4dor",
           "postgresql:///verdicts?host=/tmp&pass%77ord=Tr0ub4dor",
       }) {
    SCOPED_TRACE(uri);
    absl::Status checked = CheckPostgresUri(uri);
    EXPECT_EQ(checked.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(checked.message(), HasSubstr("password"));
    EXPECT_THAT(checked.message(), HasSubstr("--db_password_file"));
    EXPECT_THAT(checked.message(), Not(HasSubstr("Tr0ub4dor")));

    PostgresStoreOptions options;
    options.uri = uri;
    absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenPostgresStore(options);
    EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(store.status().message(), Not(HasSubstr("Tr0ub4dor")));
  }
  // The client key's passphrase is a secret too.
  absl::Status passphrase =
      CheckPostgresUri("postgresql:///verdicts?sslcert=/c.pem&sslkey=/k.pem&sslpassword=Tr0ub4dor");
  EXPECT_EQ(passphrase.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(passphrase.message(), HasSubstr("sslpassword"));
  EXPECT_THAT(passphrase.message(), Not(HasSubstr("Tr0ub4dor")));
  EXPECT_EQ(CheckPostgresUri("/var/lib/verdictd/verdicts.db").code(),
            absl::StatusCode::kInvalidArgument);
  // A URI libpq cannot parse is refused without quoting it (it might hold a password).
  absl::Status garbled = CheckPostgresUri("postgresql://u:Tr0ub4dor@[::1/verdicts");
  EXPECT_EQ(garbled.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(garbled.message(), Not(HasSubstr("Tr0ub4dor")));
}

TEST(PostgresStoreTest, AnUnreachableServerIsUnavailableWithinTheConnectTimeout) {
  const std::string missing_socket = ::testing::TempDir() + "no-server-here";
  for (const std::string& uri : {
           absl::StrCat("postgresql:///verdicts?host=", missing_socket),
           std::string("postgresql://127.0.0.1:1/verdicts"),  // nothing listens on port 1
       }) {
    SCOPED_TRACE(uri);
    PostgresStoreOptions options;
    options.uri = uri;
    options.password = "Tr0ub4dor-pw";
    options.connect_timeout = absl::Seconds(2);
    const absl::Time start = absl::Now();
    absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenPostgresStore(options);
    EXPECT_LT(absl::Now() - start, absl::Seconds(4));
    EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(store.status().message(), HasSubstr("cannot connect to PostgreSQL"));
    EXPECT_THAT(store.status().message(), Not(HasSubstr("Tr0ub4dor-pw")));
  }
}

TEST(PostgresStoreTest, APasswordIsRedactedEvenWhereLibpqWouldQuoteIt) {
  // libpq quotes the socket path in its error; a password that happens to be part of it must
  // still never appear.
  PostgresStoreOptions options;
  options.uri = absl::StrCat("postgresql:///verdicts?host=", ::testing::TempDir(), "sw0rdfish");
  options.password = "sw0rdfish";
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenPostgresStore(options);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(store.status().message(), Not(HasSubstr("sw0rdfish")));
  EXPECT_THAT(store.status().message(), HasSubstr("<redacted>"));
}

// Tests on one throwaway server per test binary, a fresh database per test.
class PostgresStoreClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    VERDICTD_REQUIRE_POSTGRES();
    absl::StatusOr<PostgresCluster*> cluster = PostgresCluster::Shared();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *cluster;
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    // Unique in the process also under --gtest_repeat; at most 63 bytes, PostgreSQL's limit.
    static int databases = 0;
    database_ = absl::AsciiStrToLower(absl::StrCat("t", ++databases, "_", info->name()));
    database_.resize(std::min<size_t>(database_.size(), 63));
    ASSERT_TRUE(cluster_->CreateDatabase(database_).ok());
  }

  // Another store instance on the test's database, as another replica would open it.
  std::unique_ptr<VerdictStore> Open() {
    PostgresStoreOptions options;
    options.uri = cluster_->Uri(database_);
    options.readers = 2;
    absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenPostgresStore(std::move(options));
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  PostgresCluster* cluster_ = nullptr;
  std::string database_;
};

TEST_F(PostgresStoreClusterTest, SeveralStoresOpeningAtOnceMigrateOnce) {
  constexpr int kStores = 6;
  std::vector<absl::StatusOr<std::unique_ptr<VerdictStore>>> stores(kStores);
  std::vector<std::thread> openers;
  for (int i = 0; i < kStores; ++i) {
    openers.emplace_back([&, i] {
      PostgresStoreOptions options;
      options.uri = cluster_->Uri(database_);
      options.readers = 1;
      stores[i] = OpenPostgresStore(std::move(options));
    });
  }
  for (std::thread& t : openers) {
    t.join();
  }
  for (auto& store : stores) {
    ASSERT_TRUE(store.ok()) << store.status();
  }
  absl::StatusOr<std::string> version =
      cluster_->Query(database_, "SELECT string_agg(version::text, ',') FROM schema_version");
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(*version, std::to_string(postgres_store_internal::kSchemaVersion));
  // Every one of them works on the one schema.
  for (auto& store : stores) {
    EXPECT_TRUE(BeginClickSync(**store, "alice", "192.0.2.1", kT0).ok());
  }
}

TEST_F(PostgresStoreClusterTest, ADatabaseMigratedByANewerBuildIsRefused) {
  ASSERT_NE(Open(), nullptr);
  ASSERT_TRUE(cluster_->Query(database_, "UPDATE schema_version SET version = 99").ok());
  PostgresStoreOptions options;
  options.uri = cluster_->Uri(database_);
  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenPostgresStore(std::move(options));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr("version 99"));
}

TEST_F(PostgresStoreClusterTest, ANotificationFromAnotherReplicaReachesTheListener) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  RecordingListener heard;
  a->SetFlightListener(&heard);
  // Arbitrary bytes, as a key of IP and user agent may hold.
  const std::string key = std::string("192.0.2.10\0ua\xff\x01", 15);
  absl::StatusOr<ClaimResult> claimed = ClaimSync(*b, Claim(key, "replica-b"));
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  ASSERT_EQ(claimed->kind, ClaimResult::Kind::kBegun);
  EXPECT_FALSE(heard.Ended(key));
  ASSERT_TRUE(CompleteClickSync(*b, claimed->click_id, VerdictCompletion("192.0.2.10")).ok());
  EXPECT_TRUE(WaitUntil(
      "replica a to hear that b's flight ended", [&] { return heard.Ended(key); }, kPatience));
  a->SetFlightListener(nullptr);
}

TEST_F(PostgresStoreClusterTest, ConcurrentClaimsOfOneKeyFromTwoReplicasBeginOneClick) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  constexpr int kClaims = 20;
  std::vector<absl::StatusOr<ClaimResult>> results(kClaims, absl::UnknownError("not run"));
  std::vector<std::thread> claimants;
  for (int i = 0; i < kClaims; ++i) {
    claimants.emplace_back([&, i] {
      VerdictStore& store = i % 2 == 0 ? *a : *b;
      results[i] = ClaimSync(store, Claim("198.51.100.7", i % 2 == 0 ? "replica-a" : "replica-b"));
    });
  }
  for (std::thread& t : claimants) {
    t.join();
  }
  int begun = 0;
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    if (result->kind == ClaimResult::Kind::kBegun) {
      ++begun;
    } else {
      EXPECT_EQ(result->kind, ClaimResult::Kind::kFlightHeld);
      EXPECT_GT(result->lease_left, absl::ZeroDuration());
      EXPECT_LE(result->lease_left, absl::Seconds(60));
    }
  }
  EXPECT_EQ(begun, 1);
}

TEST_F(PostgresStoreClusterTest, ConcurrentClaimsFromTwoReplicasNeverOvershootABudget) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  constexpr int kClaims = 60;
  constexpr int kBudget = 10;
  // A few rounds, each a caller of its own: the claims are all queued at once (ClaimClick does
  // not block), so both replicas' writers check the budget in overlapping transactions.
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    const std::string caller = absl::StrCat("budgeted-", round);
    absl::Mutex mu;
    std::vector<absl::StatusOr<ClaimResult>> results;
    absl::BlockingCounter answered(kClaims);
    for (int i = 0; i < kClaims; ++i) {
      ClickClaim claim = Claim(absl::StrCat("203.0.", round, ".", i),
                               i % 2 == 0 ? "replica-a" : "replica-b", caller);
      claim.monthly_budget = kBudget;
      (i % 2 == 0 ? *a : *b).ClaimClick(std::move(claim), [&](absl::StatusOr<ClaimResult> r) {
        {
          absl::MutexLock lock(&mu);
          results.push_back(std::move(r));
        }
        answered.DecrementCount();
      });
    }
    answered.Wait();
    absl::MutexLock lock(&mu);
    int begun = 0;
    int spent = 0;
    for (const auto& result : results) {
      ASSERT_TRUE(result.ok()) << result.status();
      if (result->kind == ClaimResult::Kind::kBegun) {
        ++begun;
        EXPECT_GE(result->month_clicks, 1);
        EXPECT_LE(result->month_clicks, kBudget);
      } else {
        EXPECT_EQ(result->kind, ClaimResult::Kind::kBudgetSpent);
        EXPECT_EQ(result->month_clicks, kBudget);
        ++spent;
      }
    }
    EXPECT_EQ(begun, kBudget) << "round " << round;
    EXPECT_EQ(spent, kClaims - kBudget);
    absl::StatusOr<std::string> ledger = cluster_->Query(
        database_, absl::StrCat("SELECT count(*) FROM clicks WHERE caller = convert_to('", caller,
                                "', 'UTF8')"));
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    EXPECT_EQ(*ledger, absl::StrCat(kBudget));
  }
}

TEST_F(PostgresStoreClusterTest, ConcurrentClaimsFromTwoReplicasNeverOvershootATeamBudget) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  constexpr int kClaims = 60;
  constexpr int kTeamBudget = 10;
  // As above, a team of its own each round, of two callers, every other round with budgets of
  // their own too: so that both replicas' writers take the team's lock and then each caller's,
  // in overlapping transactions, or the team's alone.
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE(round);
    const int caller_budget = round % 2 == 0 ? 7 : 0;
    const std::string team = absl::StrCat("team-", round);
    const std::vector<std::string> callers = {absl::StrCat("member-a-", round),
                                              absl::StrCat("member-b-", round)};
    absl::Mutex mu;
    std::vector<absl::StatusOr<ClaimResult>> results;
    absl::BlockingCounter answered(kClaims);
    for (int i = 0; i < kClaims; ++i) {
      ClickClaim claim = Claim(absl::StrCat("203.1.", round, ".", i),
                               (i / 2) % 2 == 0 ? "replica-a" : "replica-b", callers[i % 2]);
      claim.monthly_budget = caller_budget;
      claim.team = team;
      claim.team_callers = callers;
      claim.team_monthly_budget = kTeamBudget;
      ((i / 2) % 2 == 0 ? *a : *b).ClaimClick(std::move(claim), [&](absl::StatusOr<ClaimResult> r) {
        {
          absl::MutexLock lock(&mu);
          results.push_back(std::move(r));
        }
        answered.DecrementCount();
      });
    }
    answered.Wait();
    absl::MutexLock lock(&mu);
    int begun = 0;
    for (const auto& result : results) {
      ASSERT_TRUE(result.ok()) << result.status();
      if (result->kind == ClaimResult::Kind::kBegun) {
        ++begun;
        EXPECT_GE(result->team_month_clicks, 1);
        EXPECT_LE(result->team_month_clicks, kTeamBudget);
        if (caller_budget > 0) {
          EXPECT_LE(result->month_clicks, caller_budget);
        }
      } else if (result->kind == ClaimResult::Kind::kBudgetSpent) {
        EXPECT_EQ(result->month_clicks, caller_budget);
      } else {
        EXPECT_EQ(result->kind, ClaimResult::Kind::kTeamBudgetSpent);
        EXPECT_EQ(result->team_month_clicks, kTeamBudget);
      }
    }
    EXPECT_EQ(begun, kTeamBudget);
    auto ledger = [&](const std::string& caller) {
      return cluster_
          ->Query(database_, absl::StrCat("SELECT count(*) FROM clicks WHERE caller = "
                                          "convert_to('",
                                          caller, "', 'UTF8')"))
          .value_or("?");
    };
    const int64_t first = std::stoll(ledger(callers[0]));
    const int64_t second = std::stoll(ledger(callers[1]));
    EXPECT_EQ(first + second, kTeamBudget);
    if (caller_budget > 0) {
      EXPECT_LE(first, caller_budget);
      EXPECT_LE(second, caller_budget);
    }
  }
}

TEST_F(PostgresStoreClusterTest, AClaimFailingInTheDatabaseSpoilsNoOtherWriteOfItsGroup) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  // Queued at once (nothing here blocks), so the writer commits them in a few groups; every
  // other claim has an owner that is not UTF-8, which the database itself refuses (owner is
  // text), after the claim's earlier statements ran in the same transaction.
  constexpr int kClaims = 40;
  absl::Mutex mu;
  std::vector<std::pair<int, absl::StatusOr<ClaimResult>>> results;
  absl::BlockingCounter answered(kClaims);
  for (int i = 0; i < kClaims; ++i) {
    const bool bad = i % 2 == 1;
    store->ClaimClick(Claim(absl::StrCat("192.0.2.", i), bad ? "replica-\xff" : "replica-a"),
                      [&, i](absl::StatusOr<ClaimResult> r) {
                        {
                          absl::MutexLock lock(&mu);
                          results.emplace_back(i, std::move(r));
                        }
                        answered.DecrementCount();
                      });
  }
  answered.Wait();
  absl::MutexLock lock(&mu);
  for (const auto& [i, result] : results) {
    SCOPED_TRACE(i);
    if (i % 2 == 1) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    } else {
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_EQ(result->kind, ClaimResult::Kind::kBegun);
    }
  }
  // The refused claims left nothing behind: no claim, no ledger row.
  EXPECT_EQ(cluster_->Query(database_, "SELECT count(*) FROM flights").value_or(""),
            absl::StrCat(kClaims / 2));
  EXPECT_EQ(cluster_->Query(database_, "SELECT count(*) FROM clicks").value_or(""),
            absl::StrCat(kClaims / 2));
  // A refused write is the request's fault, not the store's: writes are healthy.
  EXPECT_TRUE(PingSync(*store).ok());
}

// A session of the test's own, standing in for another replica's writer in the middle of its
// group transaction.
class RawSession {
 public:
  explicit RawSession(const std::string& uri) : conn_(PQconnectdb(uri.c_str())) {}
  ~RawSession() { PQfinish(conn_); }
  bool ok() const { return PQstatus(conn_) == CONNECTION_OK; }
  // Runs fixed test SQL (text parameters); "" on success, else the error.
  std::string Run(const char* sql, std::vector<std::string> params = {}) {
    std::vector<const char*> values;
    for (const std::string& p : params) {
      values.push_back(p.c_str());
    }
    PGresult* result = PQexecParams(conn_, sql, static_cast<int>(values.size()), nullptr,
                                    values.data(), nullptr, nullptr, 0);
    const ExecStatusType status = PQresultStatus(result);
    std::string error =
        status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK ? "" : PQerrorMessage(conn_);
    PQclear(result);
    return error;
  }

 private:
  PGconn* conn_;
};

TEST_F(PostgresStoreClusterTest, AGroupADeadlockAbortedIsRunAgain) {
  // Deadlocks found fast in the store's sessions, never first in the test's (see below).
  ASSERT_TRUE(cluster_
                  ->Query("postgres", absl::StrCat("ALTER DATABASE ", database_,
                                                   " SET deadlock_timeout = '200ms'"))
                  .ok());
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  // The usage rows the sessions lock.
  ASSERT_TRUE(BeginClickSync(*store, "zed", "192.0.2.1", kT0).ok());
  ASSERT_TRUE(BeginClickSync(*store, "xavier", "192.0.2.1", kT0).ok());
  RawSession first(cluster_->Uri(database_));
  RawSession second(cluster_->Uri(database_));
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_EQ(second.Run("SET deadlock_timeout = '60s'"), "");
  ASSERT_EQ(first.Run("BEGIN"), "");
  ASSERT_EQ(first.Run("UPDATE usage SET requests = requests WHERE caller = 'zed'::bytea"), "");
  ASSERT_EQ(second.Run("BEGIN"), "");
  ASSERT_EQ(second.Run("UPDATE usage SET requests = requests WHERE caller = 'xavier'::bytea"), "");
  auto lock_waiters = [&] {
    return cluster_
        ->Query("postgres", absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE datname = '",
                                         database_, "' AND wait_event_type = 'Lock'"))
        .value_or("?");
  };

  // The writer's first group waits for `first`; the next two writes queue up behind it and so
  // make one group: a budgeted claim (taking yolanda's budget lock), then a click of xavier's
  // (waiting for `second`).
  Waiter<absl::StatusOr<int64_t>> zed;
  store->BeginClick("zed", "192.0.2.1", kT0, zed.Callback());
  ASSERT_TRUE(WaitUntil(
      "the writer to wait for zed's row", lock_waiters,
      [](const std::string& n) { return n == "1"; }, kPatience));
  ClickClaim claim = Claim("192.0.2.77", "replica-a", "yolanda");
  claim.monthly_budget = 5;
  Waiter<absl::StatusOr<ClaimResult>> claimed;
  store->ClaimClick(claim, claimed.Callback());
  Waiter<absl::StatusOr<int64_t>> xavier;
  store->BeginClick("xavier", "192.0.2.1", kT0, xavier.Callback());
  ASSERT_EQ(first.Run("COMMIT"), "");
  ASSERT_TRUE(zed.Wait().ok());
  ASSERT_TRUE(WaitUntil(
      "the group to wait for xavier's row", lock_waiters,
      [](const std::string& n) { return n == "1"; }, kPatience));
  // `second` now asks for the budget lock the group holds: a deadlock, which the store's session
  // (waiting longer, with the shorter timeout) detects, aborting its group; once that rolled
  // back, `second` gets the lock and commits, and the group, run again, goes through.
  ASSERT_EQ(second.Run("SELECT pg_advisory_xact_lock($1::int4, $2::int4)",
                       {absl::StrCat(postgres_store_internal::kBudgetLockClass),
                        absl::StrCat(postgres_store_internal::BudgetLockKey("yolanda"))}),
            "");
  ASSERT_EQ(second.Run("COMMIT"), "");
  absl::StatusOr<ClaimResult> claim_result = claimed.Wait();
  ASSERT_TRUE(claim_result.ok()) << claim_result.status();
  EXPECT_EQ(claim_result->kind, ClaimResult::Kind::kBegun);
  absl::StatusOr<int64_t> xavier_result = xavier.Wait();
  EXPECT_TRUE(xavier_result.ok()) << xavier_result.status();
}

// A team's budget lock is of its own class, so a caller named like a team never shares its
// lock; and a claim takes it before its caller's, so it waits for it holding no budget lock.
TEST_F(PostgresStoreClusterTest, ATeamsBudgetLockIsItsOwnAndTakenBeforeTheCallers) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  using postgres_store_internal::BudgetLockKey;
  using postgres_store_internal::kBudgetLockClass;
  using postgres_store_internal::kTeamBudgetLockClass;
  RawSession other(cluster_->Uri(database_));
  ASSERT_TRUE(other.ok());
  auto team_claim = [](std::string key) {
    ClickClaim claim = Claim(std::move(key), "replica-a", "alice");
    claim.monthly_budget = 5;
    claim.team = "ops";
    claim.team_callers = {"alice", "bob"};
    claim.team_monthly_budget = 5;
    return claim;
  };

  // The lock a caller named "ops" would take does not hold up team ops's claim.
  ASSERT_EQ(other.Run("BEGIN"), "");
  ASSERT_EQ(other.Run("SELECT pg_advisory_xact_lock($1::int4, $2::int4)",
                      {absl::StrCat(kBudgetLockClass), absl::StrCat(BudgetLockKey("ops"))}),
            "");
  absl::Notification answered;
  absl::StatusOr<ClaimResult> first;
  store->ClaimClick(team_claim("192.0.2.81"), [&](absl::StatusOr<ClaimResult> r) {
    first = std::move(r);
    answered.Notify();
  });
  const bool prompt = answered.WaitForNotificationWithTimeout(absl::Seconds(10));
  ASSERT_EQ(other.Run("COMMIT"), "");
  answered.WaitForNotification();
  EXPECT_TRUE(prompt) << "the team's claim waited for a caller's lock";
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->kind, ClaimResult::Kind::kBegun);
  EXPECT_EQ(first->team_month_clicks, 1);

  // Held by another session, the team's lock holds up the claim, which meanwhile holds no lock
  // of its caller's: the team's comes first.
  ASSERT_EQ(other.Run("BEGIN"), "");
  ASSERT_EQ(other.Run("SELECT pg_advisory_xact_lock($1::int4, $2::int4)",
                      {absl::StrCat(kTeamBudgetLockClass), absl::StrCat(BudgetLockKey("ops"))}),
            "");
  Waiter<absl::StatusOr<ClaimResult>> second;
  store->ClaimClick(team_claim("192.0.2.82"), second.Callback());
  auto lock_waiters = [&] {
    return cluster_
        ->Query("postgres", absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE datname = '",
                                         database_, "' AND wait_event_type = 'Lock'"))
        .value_or("?");
  };
  ASSERT_TRUE(WaitUntil(
      "the claim to wait for the team's lock", lock_waiters,
      [](const std::string& n) { return n == "1"; }, kPatience));
  const std::string caller_lock_free =
      cluster_
          ->Query(database_, absl::StrCat("SELECT pg_try_advisory_xact_lock(", kBudgetLockClass,
                                          ", ", BudgetLockKey("alice"), ")"))
          .value_or("?");
  ASSERT_EQ(other.Run("COMMIT"), "");
  EXPECT_EQ(caller_lock_free, "t");
  absl::StatusOr<ClaimResult> second_result = second.Wait();
  ASSERT_TRUE(second_result.ok()) << second_result.status();
  EXPECT_EQ(second_result->kind, ClaimResult::Kind::kBegun);
  EXPECT_EQ(second_result->team_month_clicks, 2);
  EXPECT_EQ(second_result->month_clicks, 2);
}

TEST_F(PostgresStoreClusterTest, AClaimTakenOverIsNotReleasedByTheOldOwner) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ClickClaim short_claim = Claim("192.0.2.99", "replica-a");
  short_claim.lease = absl::Milliseconds(50);
  absl::StatusOr<ClaimResult> first = ClaimSync(*a, short_claim);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->kind, ClaimResult::Kind::kBegun);
  // a "dies"; once its lease ran out (by the database's clock) b takes over.
  absl::StatusOr<ClaimResult> second;
  EXPECT_TRUE(WaitUntil(
      "b to take over the lapsed claim",
      [&] {
        second = ClaimSync(*b, Claim("192.0.2.99", "replica-b"));
        return second.ok() && second->kind == ClaimResult::Kind::kBegun;
      },
      kPatience));
  ASSERT_TRUE(second.ok());
  EXPECT_NE(second->click_id, first->click_id);
  // a's late completion does not release b's claim (fencing by click id) ...
  ASSERT_TRUE(CompleteClickSync(*a, first->click_id, VerdictCompletion("192.0.2.99")).ok());
  absl::StatusOr<ClaimResult> third = ClaimSync(*a, Claim("192.0.2.99", "replica-c"));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->kind, ClaimResult::Kind::kFlightHeld);
  // ... b's does.
  ASSERT_TRUE(CompleteClickSync(*b, second->click_id, VerdictCompletion("192.0.2.99")).ok());
  third = ClaimSync(*a, Claim("192.0.2.99", "replica-c"));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->kind, ClaimResult::Kind::kBegun);
}

TEST_F(PostgresStoreClusterTest, PruneBeforeDeletesLapsedClaims) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  ClickClaim lapsing = Claim("192.0.2.50");
  lapsing.lease = absl::Milliseconds(1);
  ASSERT_TRUE(ClaimSync(*store, lapsing).ok());
  ASSERT_TRUE(ClaimSync(*store, Claim("192.0.2.51")).ok());  // live: kept
  EXPECT_TRUE(WaitUntil(
      "the short lease to run out by the database's clock",
      [&] {
        return cluster_->Query(database_, "SELECT count(*) FROM flights WHERE lease_until < now()")
            .value_or("");
      },
      [](const std::string& n) { return n == "1"; }, kPatience));
  // Nothing else is old enough to prune: only the lapsed claim goes.
  absl::StatusOr<int64_t> pruned = PruneSync(*store, kT0 - absl::Hours(24 * 365 * 10), 100);
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(*pruned, 1);
  EXPECT_EQ(cluster_->Query(database_, "SELECT encode(key, 'escape') FROM flights").value_or(""),
            "192.0.2.51");
  EXPECT_EQ(PruneSync(*store, kT0 - absl::Hours(24 * 365 * 10), 100).value_or(-1), 0);
}

TEST_F(PostgresStoreClusterTest, ALeaseIsHeldByOneReplicaUntilItLapses) {
  std::unique_ptr<VerdictStore> a = Open();
  std::unique_ptr<VerdictStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(LeaseSync(*a, "prune", "replica-a", absl::Milliseconds(300)).value_or(false), true);
  EXPECT_EQ(LeaseSync(*b, "prune", "replica-b", absl::Seconds(60)).value_or(true), false);
  EXPECT_EQ(LeaseSync(*a, "prune", "replica-a", absl::Milliseconds(300)).value_or(false), true);
  EXPECT_TRUE(WaitUntil(
      "b to get the lease once a stops renewing it",
      [&] { return LeaseSync(*b, "prune", "replica-b", absl::Seconds(60)).value_or(false); },
      kPatience));
  EXPECT_EQ(LeaseSync(*a, "prune", "replica-a", absl::Seconds(60)).value_or(true), false);
}

// A server of its own: the test stops it.
TEST(PostgresStoreFaultTest, AStoreRidesOutAServerRestart) {
  VERDICTD_REQUIRE_POSTGRES();
  absl::StatusOr<std::unique_ptr<PostgresCluster>> cluster = PostgresCluster::Create();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  PostgresCluster& pg = **cluster;
  ASSERT_TRUE(pg.CreateDatabase("restart").ok());
  // Commits durable before they are acknowledged, as on a production server: the test server's
  // default (synchronous_commit=off) would lose the last ones to the crash below.
  ASSERT_TRUE(pg.Query("postgres", "ALTER DATABASE restart SET synchronous_commit = on").ok());
  PostgresStoreOptions options;
  options.uri = pg.Uri("restart");
  options.readers = 2;
  options.connect_timeout = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<VerdictStore>> opened = OpenPostgresStore(options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  VerdictStore& store = **opened;
  RecordingListener heard;
  store.SetFlightListener(&heard);

  // A clean shutdown (sessions terminated), then a crash (connections reset, recovery at start).
  int round = 0;
  for (PostgresCluster::StopMode mode :
       {PostgresCluster::StopMode::kFast, PostgresCluster::StopMode::kImmediate}) {
    SCOPED_TRACE(round);
    ++round;
    const std::string ip = absl::StrCat("192.0.2.", 30 + round);
    const std::string other_ip = absl::StrCat("192.0.2.", 40 + round);
    absl::StatusOr<int64_t> click = BeginClickSync(store, "alice", ip, kT0);
    ASSERT_TRUE(click.ok()) << click.status();
    ASSERT_TRUE(PingSync(store).ok());

    ASSERT_TRUE(pg.Stop(mode).ok());
    // Down: Ping says so, and writes fail (fast) rather than hang, leaving nothing half-written.
    EXPECT_TRUE(WaitUntil(
        "Ping to report the server gone",
        [&] { return PingSync(store).code() == absl::StatusCode::kUnavailable; }, kPatience));
    const absl::Time start = absl::Now();
    absl::Status completed = CompleteClickSync(store, *click, VerdictCompletion(ip));
    EXPECT_EQ(completed.code(), absl::StatusCode::kUnavailable) << completed;
    EXPECT_EQ(BeginClickSync(store, "alice", other_ip, kT0).status().code(),
              absl::StatusCode::kUnavailable);
    EXPECT_LT(absl::Now() - start, absl::Seconds(10));
    absl::Status down = PingSync(store);
    EXPECT_EQ(down.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(down.message(), HasSubstr("store read failed"));

    ASSERT_TRUE(pg.Start().ok()) << pg.ServerLog();
    // Back without reopening: Ping recovers (its trial write clears the write failure), the
    // failed completion left the click pending and wrote no verdict, and the listener is told
    // to look again once it listens again.
    EXPECT_TRUE(WaitUntil(
        "Ping to recover", [&] { return PingSync(store); },
        [](const absl::Status& s) { return s.ok(); }, kPatience));
    EXPECT_TRUE(WaitUntil(
        "the listener to hear that flights may have ended", [&] { return heard.may_have_ended(); },
        [&](int n) { return n >= round; }, kPatience));
    absl::StatusOr<std::optional<Verdict>> latest = LatestForSync(store, ip, std::nullopt);
    ASSERT_TRUE(latest.ok()) << latest.status();
    EXPECT_FALSE(latest->has_value());
    absl::Status again = CompleteClickSync(store, *click, VerdictCompletion(ip));
    EXPECT_TRUE(again.ok()) << again;
    latest = LatestForSync(store, ip, std::nullopt);
    ASSERT_TRUE(latest.ok()) << latest.status();
    EXPECT_TRUE(latest->has_value());
    EXPECT_TRUE(BeginClickSync(store, "alice", other_ip, kT0).ok());
  }
  store.SetFlightListener(nullptr);
}

TEST(PostgresStoreFaultTest, PingReportsFailingWritesUntilATrialWriteSucceeds) {
  VERDICTD_REQUIRE_POSTGRES();
  absl::StatusOr<std::unique_ptr<PostgresCluster>> cluster = PostgresCluster::Create();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  PostgresCluster& pg = **cluster;
  ASSERT_TRUE(pg.CreateDatabase("ping").ok());
  PostgresStoreOptions options;
  options.uri = pg.Uri("ping");
  options.readers = 1;
  absl::StatusOr<std::unique_ptr<VerdictStore>> opened = OpenPostgresStore(options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  VerdictStore& store = **opened;
  // Writes refused while reads still work: the database turned read-only (as a demoted
  // primary would be).
  ASSERT_TRUE(
      pg.Query("postgres", "ALTER DATABASE ping SET default_transaction_read_only = on").ok());
  // Only new sessions get the setting: make the writer reconnect.
  ASSERT_TRUE(pg.Query("postgres",
                       "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = 'ping' AND pid <> pg_backend_pid()")
                  .ok());
  EXPECT_TRUE(WaitUntil(
      "a write to fail",
      [&] { return BeginClickSync(store, "alice", "192.0.2.1", kT0).status().code(); },
      [](absl::StatusCode code) { return code == absl::StatusCode::kUnavailable; }, kPatience));
  absl::Status ping = PingSync(store);
  EXPECT_EQ(ping.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(ping.message(), HasSubstr("store writes failing since "));
  EXPECT_THAT(ping.message(), HasSubstr("read-only"));

  ASSERT_TRUE(
      pg.Query("postgres", "ALTER DATABASE ping SET default_transaction_read_only = off").ok());
  EXPECT_TRUE(WaitUntil(
      "Ping to recover by itself", [&] { return PingSync(store); },
      [](const absl::Status& s) { return s.ok(); }, kPatience));
}

}  // namespace
}  // namespace verdictd
