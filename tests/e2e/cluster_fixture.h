#ifndef VERDICTD_TESTS_E2E_CLUSTER_FIXTURE_H_
#define VERDICTD_TESTS_E2E_CLUSTER_FIXTURE_H_

// What the cluster tests (cluster_*_test.cc) share: a throwaway PostgreSQL per test, several real
// verdictd processes ("replicas") on one database of it, all asking one simulated ClickPatrol,
// and the helpers the tests assert with: SQL run with psql over the cluster's unix socket,
// callers that start together, usage asked of every replica, verdicts compared field by field.
//
// Every replica listens on loopback, the database on a unix socket in a temp dir (no TCP
// listener); nothing leaves the machine.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/e2e/ops_fixture.h"
#include "tests/support/harness.h"
#include "tests/support/postgres_cluster.h"
#include "tests/support/process.h"

namespace verdictd::testing::cluster {

namespace pb = ::verdict::v1;

inline constexpr char kToken[] = "cp_ClusterSecretToken_6e2b94d1";

// Whether this binary (and so, in scripts/sanitize.sh's builds, verdictd) runs under ASan or
// TSan: everything is several times slower, so a bound that tells a fast path from a slower one
// only holds with more room.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

// Public addresses (11.0.0.0/8: routable, not documentation or private), `block` keeping the
// tests' addresses apart: 11.<block>.<n / 250>.<n % 250 + 1>, distinct for n < 62500.
inline std::string PublicIp(int block, int n) {
  return absl::StrCat("11.", block, ".", n / 250, ".", n % 250 + 1);
}

// `length` draws from a Zipf distribution over ranks 0..distinct-1 (P(k) ~ 1/(k+1)^exponent),
// from a fixed seed: the same trace on every run and every standard library (the sampling is
// done here, not by std::*_distribution, whose algorithms are unspecified).
inline std::vector<int> ZipfTrace(int length, int distinct, double exponent, uint64_t seed) {
  std::vector<double> cdf(distinct);
  double sum = 0;
  for (int k = 0; k < distinct; ++k) {
    sum += 1.0 / std::pow(k + 1, exponent);
    cdf[k] = sum;
  }
  std::mt19937_64 random(seed);
  std::vector<int> trace;
  trace.reserve(length);
  for (int i = 0; i < length; ++i) {
    const double u = static_cast<double>(random() >> 11) * 0x1.0p-53 * sum;
    const auto rank = std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
    trace.push_back(static_cast<int>(std::min<int64_t>(rank, distinct - 1)));
  }
  return trace;
}

// Runs body(0..n-1) on n threads released together, once each has finished `prepare(i)` (e.g.
// connecting), so that the bodies really overlap.
inline void RunTogether(int n, const std::function<void(int)>& prepare,
                        const std::function<void(int)>& body) {
  absl::BlockingCounter ready(n);
  absl::Notification go;
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      prepare(i);
      ready.DecrementCount();
      go.WaitForNotification();
      body(i);
    });
  }
  ready.Wait();
  go.Notify();
  for (std::thread& thread : threads) {
    thread.join();
  }
}

// Threads joined when it goes out of scope, so that an ASSERT returning early never leaves a
// joinable std::thread behind (that would be std::terminate). Declare it after whatever its
// threads use.
class ThreadGroup {
 public:
  ThreadGroup() = default;
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  ~ThreadGroup() { Join(); }

  void Start(std::function<void()> body) { threads_.emplace_back(std::move(body)); }
  void Join() {
    for (std::thread& thread : threads_) {
      thread.join();
    }
    threads_.clear();
  }

 private:
  std::vector<std::thread> threads_;
};

// Makes a stub's channel ready before the timed part (a connect that fails transiently on a
// loaded machine is retried instead of failing the first call).
inline void WarmUp(pb::VerdictService::Stub& stub, const std::string& caller) {
  pb::GetServerInfoResponse info;
  std::unique_ptr<grpc::ClientContext> context = CallerContext(caller);
  context->set_wait_for_ready(true);
  const grpc::Status status = stub.GetServerInfo(context.get(), {}, &info);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Equal protos, or a failure listing the fields that differ.
inline ::testing::AssertionResult SameMessage(const google::protobuf::Message& expected,
                                              const google::protobuf::Message& actual) {
  google::protobuf::util::MessageDifferencer differencer;
  std::string differences;
  differencer.ReportDifferencesToString(&differences);
  if (differencer.Compare(expected, actual)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << differences;
}

// Every caller's usage since the Unix epoch (open mode: anyone may ask for everyone's).
inline grpc::Status UsageOfEveryone(pb::VerdictService::Stub& stub, pb::GetUsageResponse* usage) {
  pb::GetUsageRequest request;
  request.mutable_since()->set_seconds(0);
  return stub.GetUsage(CallerContext("auditor").get(), request, usage);
}

// The sum of every caller's counters in `usage`.
inline pb::CallerUsage Totals(const pb::GetUsageResponse& usage) {
  pb::CallerUsage total;
  for (const pb::CallerUsage& c : usage.callers()) {
    total.set_clicks(total.clicks() + c.clicks());
    total.set_cache_hits(total.cache_hits() + c.cache_hits());
    total.set_requests(total.requests() + c.requests());
    total.set_upstream_errors(total.upstream_errors() + c.upstream_errors());
  }
  return total;
}

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Without PostgreSQL's binaries: skipped with a message, or failed under CI=true.
    VERDICTD_REQUIRE_POSTGRES();
    // One throwaway server per test: a test that stops it (or fails half-way) cannot leave the
    // next one a server in an unknown state.
    absl::StatusOr<std::unique_ptr<PostgresCluster>> cluster = PostgresCluster::Create();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    pg_ = *std::move(cluster);
    const absl::Status created = pg_->CreateDatabase(kDatabase);
    ASSERT_TRUE(created.ok()) << created;
    db_uri_ = pg_->Uri(kDatabase);
  }

  void TearDown() override {
    // Replicas first: they hold connections to the database.
    replicas_.clear();
    sim_.reset();
    if (HasFailure() && pg_ != nullptr) {
      std::cerr << "--- PostgreSQL: the last errors of its log ---\n"
                << ServerErrors(pg_->ServerLog()) << "\n";
    }
    if (HasFailure()) {
      for (size_t i = 0; i < replica_dirs_.size(); ++i) {
        std::cerr << "--- replica " << i << ": the last warnings and errors of its log ---\n"
                  << Complaints(ReadFileOrEmpty(replica_dirs_[i]->File("verdictd.log"))) << "\n";
      }
    }
  }

  // The last `max_lines` lines of the server's log that report an error (ERROR, FATAL) or
  // explain one (DETAIL, CONTEXT, STATEMENT: for a deadlock, who waited for whom on what), without
  // the FATALs of connections refused while it was deliberately stopped or starting.
  static std::string ServerErrors(const std::string& log, size_t max_lines = 40) {
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
      if ((absl::StrContains(line, "ERROR:") || absl::StrContains(line, "FATAL:") ||
           absl::StrContains(line, "DETAIL:") || absl::StrContains(line, "CONTEXT:") ||
           absl::StrContains(line, "STATEMENT:") || absl::StartsWith(line, "\t")) &&
          !absl::StrContains(line, "the database system is shutting down") &&
          !absl::StrContains(line, "the database system is starting up")) {
        lines.emplace_back(line);
      }
    }
    if (lines.size() > max_lines) {
      lines.erase(lines.begin(), lines.end() - max_lines);
    }
    return lines.empty() ? "(none)" : absl::StrJoin(lines, "\n");
  }

  // The last `max_lines` warning and error lines of a verdictd log, without the start-up
  // banners every test run prints (the simulated upstream, open mode).
  static std::string Complaints(const std::string& log, size_t max_lines = 40) {
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
      if ((absl::StrContains(line, " warning ") || absl::StrContains(line, " error ")) &&
          !absl::StrContains(line, "*****") && !absl::StrContains(line, "SIMULATED") &&
          !absl::StrContains(line, "Verdicts are made up") &&
          !absl::StrContains(line, "OPEN MODE")) {
        lines.emplace_back(line);
      }
    }
    if (lines.size() > max_lines) {
      lines.erase(lines.begin(), lines.end() - max_lines);
    }
    return lines.empty() ? "(none)" : absl::StrJoin(lines, "\n");
  }

  const std::string& db_uri() const { return db_uri_; }
  PostgresCluster& pg() { return *pg_; }

  void StartSimulator(std::vector<std::string> flags = {}) {
    sim_.reset();
    std::remove(sim_dir_.File("sim.port").c_str());
    sim_ = std::make_unique<Simulator>(sim_dir_, kToken, std::move(flags));
  }
  Simulator& sim() { return *sim_; }

  // POST /_sim/rules (rules-file syntax; "" clears every rule).
  void SetSimRules(const std::string& rules) {
    httplib::Client client("127.0.0.1", sim_->port());
    client.set_read_timeout(10);
    httplib::Result result = client.Post("/_sim/rules", rules, "text/plain");
    ASSERT_TRUE(result);
    ASSERT_EQ(result->status, 200) << result->body;
  }

  // The flags every replica gets: the shared database and its own id.
  std::vector<std::string> ReplicaFlags(int i, const std::vector<std::string>& flags) const {
    std::vector<std::string> all = {"--db=" + db_uri_, absl::StrCat("--replica_id=replica-", i)};
    all.insert(all.end(), flags.begin(), flags.end());
    return all;
  }

  // Starts replicas 0..n-1 at once (as a deployment does: they race to migrate the schema), each
  // with its own directory for its log and port file, all on the shared database and the
  // simulator.
  void StartReplicas(int n, const std::vector<std::string>& flags = {}) {
    replicas_.resize(std::max<size_t>(replicas_.size(), n));
    while (replica_dirs_.size() < static_cast<size_t>(n)) {
      replica_dirs_.push_back(std::make_unique<TempDir>());
    }
    std::vector<std::string> errors(n);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        try {
          replicas_[i] = std::make_unique<Verdictd>(*replica_dirs_[i], sim_->url(), kToken,
                                                    ReplicaFlags(i, flags));
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    }
    for (std::thread& thread : threads) {
      thread.join();
    }
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(errors[i], "") << "replica " << i << " did not start";
    }
  }

  Verdictd& replica(int i) { return *replicas_[i]; }
  int replica_count() const { return static_cast<int>(replicas_.size()); }
  const TempDir& replica_dir(int i) const { return *replica_dirs_[i]; }

  // The first value of the query's first row, over the cluster's unix socket; a test failure
  // (and "") if the query fails.
  std::string SqlText(const std::string& sql) const {
    absl::StatusOr<std::string> out = pg_->Query(kDatabase, sql);
    EXPECT_TRUE(out.ok()) << sql << ": " << out.status();
    return out.ok() ? *out : std::string();
  }
  int64_t SqlInt(const std::string& sql) const {
    const std::string text = SqlText(sql);
    int64_t value = -1;
    EXPECT_TRUE(absl::SimpleAtoi(text, &value)) << sql << " gave \"" << text << "\"";
    return value;
  }

  // The ledger invariants that must hold whatever crashed (see storage/postgres's schema):
  // every verdict row was produced by exactly one completed click, no click produced two, and
  // no claim outlives its flight with a lease still running.
  void ExpectLedgerConsistent() const {
    EXPECT_EQ(SqlInt("SELECT count(*) FROM verdicts v LEFT JOIN clicks c ON c.id = v.click_id "
                     "WHERE c.id IS NULL OR c.outcome != 1"),
              0)
        << "a verdict whose click is missing or was not completed with a verdict";
    EXPECT_EQ(SqlInt("SELECT count(*) FROM (SELECT click_id FROM verdicts GROUP BY click_id "
                     "HAVING count(*) > 1) AS twice"),
              0)
        << "a click completed twice (two verdicts for one click)";
    EXPECT_EQ(SqlInt("SELECT count(*) FROM clicks c WHERE c.outcome = 1 AND NOT EXISTS "
                     "(SELECT 1 FROM verdicts v WHERE v.click_id = c.id)"),
              0)
        << "a click completed with a verdict that is not in the history";
    EXPECT_EQ(SqlInt("SELECT count(*) FROM flights WHERE lease_until > now()"), 0)
        << "a claim with a live lease outlived its flight: "
        << SqlText(
               "SELECT string_agg(encode(key, 'escape') || ' by ' || owner, ', ') FROM flights");
  }

  static constexpr char kDatabase[] = "verdicts";

  TempDir sim_dir_;
  std::unique_ptr<PostgresCluster> pg_;
  std::string db_uri_;
  std::unique_ptr<Simulator> sim_;
  std::vector<std::unique_ptr<TempDir>> replica_dirs_;
  std::vector<std::unique_ptr<Verdictd>> replicas_;
};

}  // namespace verdictd::testing::cluster

#endif  // VERDICTD_TESTS_E2E_CLUSTER_FIXTURE_H_
