#ifndef VERDICTD_TESTS_SUPPORT_POSTGRES_CLUSTER_H_
#define VERDICTD_TESTS_SUPPORT_POSTGRES_CLUSTER_H_

// A throwaway PostgreSQL server for tests: its own data directory and unix socket directory in a
// fresh temp dir, no TCP listener, no fsync, trust authentication for the superuser "verdictd".
// Used by the PostgreSQL store's tests and by end-to-end tests that run verdictd replicas on one
// database. Link the `verdictd_test_postgres` target.
//
//   VERDICTD_REQUIRE_POSTGRES();  // in a test or SetUp: skips (fails under CI=true) without it
//   auto cluster = PostgresCluster::Create();  // initdb + start, about 1-2 s
//   ASSERT_TRUE(cluster.ok()) << cluster.status();
//   ASSERT_TRUE((*cluster)->CreateDatabase("t1").ok());
//   std::string uri = (*cluster)->Uri("t1");  // postgresql:///t1?host=<socket dir>&user=verdictd
//   (*cluster)->Stop();   // fault tests: the server goes away ...
//   (*cluster)->Start();  // ... and comes back with the same data
//
// The server runs as an unprivileged user: PostgreSQL refuses to run as root, so when the test
// runs as root initdb and postgres run as nobody (switched to in the child, as
// `runuser -u nobody --` would) and the temp dir is given to nobody; as a normal user they run
// directly. The postmaster is a child of the test process (not daemonized by pg_ctl) and gets
// SIGQUIT (immediate shutdown) if the thread that started it dies, so a test that crashes or is
// killed leaves no server behind: call Create/Start from a thread that outlives the server (the
// test's main thread; gtest runs tests there). Destruction stops the server (immediate shutdown)
// and removes the temp dir (kept when VERDICTD_KEEP_TEST_DIRS is set). Not thread-safe: drive one
// cluster from one thread.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace verdictd::testing {

// The folder holding initdb, pg_ctl and postgres: $VERDICTD_POSTGRES_BIN if set, else the newest
// /usr/lib/postgresql/<version>/bin that has them. NOT_FOUND (saying what to install) otherwise.
absl::StatusOr<std::string> PostgresBinDir();

// Whether a missing PostgreSQL must fail the test rather than skip it: under CI (env CI=true)
// the binaries are a stated dependency (scripts/deps.sh), so their absence is a broken machine.
bool PostgresRequired();

class PostgresCluster {
 public:
  enum class StopMode {
    kFast,       // SIGINT: clients are disconnected, the server shuts down cleanly
    kImmediate,  // SIGQUIT: like a crash (recovery runs at the next start)
  };

  // initdb into a fresh temp dir, then Start(). `start_timeout` bounds each start and stop.
  static absl::StatusOr<std::unique_ptr<PostgresCluster>> Create(
      absl::Duration start_timeout = absl::Seconds(60));

  // One cluster shared by every test of this binary, created on first use and stopped at exit.
  // For suites that need a database each and never stop the server (use a cluster of your own
  // for fault tests). The error is remembered: a failed creation is not retried.
  static absl::StatusOr<PostgresCluster*> Shared();

  ~PostgresCluster();
  PostgresCluster(const PostgresCluster&) = delete;
  PostgresCluster& operator=(const PostgresCluster&) = delete;

  // Starts the server and waits until it accepts connections. OK if running.
  absl::Status Start();
  // Stops the server and waits until it is down. OK if not running.
  absl::Status Stop(StopMode mode = StopMode::kFast);
  bool running() const { return running_; }

  // A libpq URI for database `dbname` on this server (no password: trust authentication).
  std::string Uri(absl::string_view dbname) const;
  // Creates database `name` (any name; quoted as an identifier). ALREADY_EXISTS if it exists.
  absl::Status CreateDatabase(absl::string_view name);
  // Runs `sql` (fixed test SQL, several statements allowed) on database `dbname`; the first
  // column of the first row of the last result, or "" if none.
  absl::StatusOr<std::string> Query(absl::string_view dbname, absl::string_view sql);

  const std::string& socket_dir() const { return socket_dir_; }
  const std::string& data_dir() const { return data_dir_; }
  // The server's log so far, for failure messages.
  std::string ServerLog() const;

 private:
  PostgresCluster(std::string bin_dir, std::string root, absl::Duration timeout);
  // Starts bin_dir_/program with args as the server's user, output appended to `log_path`.
  // `dies_with_us`: the child gets SIGQUIT when the thread that started it dies.
  absl::StatusOr<pid_t> Spawn(const std::string& program, const std::vector<std::string>& args,
                              const std::string& log_path, bool dies_with_us);
  // The wait status of `pid` once it exits; DEADLINE_EXCEEDED (still running) after `timeout`.
  static absl::StatusOr<int> WaitForExit(pid_t pid, absl::Duration timeout);
  // Runs bin_dir_/program with args to completion; an error (with its output) unless it exits 0
  // within `timeout_`.
  absl::Status RunTool(const std::string& program, const std::vector<std::string>& args);

  const std::string bin_dir_;
  const std::string root_;  // the temp dir; everything below it
  const std::string data_dir_;
  const std::string socket_dir_;
  const absl::Duration timeout_;
  bool as_nobody_ = false;
  uid_t nobody_uid_ = 0;
  gid_t nobody_gid_ = 0;
  bool running_ = false;
  pid_t server_pid_ = -1;  // the postmaster, our child, while running_
};

}  // namespace verdictd::testing

// In a TEST body or SetUp: GTEST_SKIP without PostgreSQL's binaries, or FAIL under CI=true (see
// PostgresRequired). Needs gtest included by the test.
#define VERDICTD_REQUIRE_POSTGRES()                                                  \
  do {                                                                               \
    const auto verdictd_pg_bin = ::verdictd::testing::PostgresBinDir();              \
    if (!verdictd_pg_bin.ok()) {                                                     \
      if (::verdictd::testing::PostgresRequired()) {                                 \
        FAIL() << verdictd_pg_bin.status().message() << " (required under CI=true)"; \
      }                                                                              \
      GTEST_SKIP() << verdictd_pg_bin.status().message();                            \
    }                                                                                \
  } while (false)

#endif  // VERDICTD_TESTS_SUPPORT_POSTGRES_CLUSTER_H_
