// End-to-end start-up faults: verdictd refuses a database file that is not one (or is damaged)
// with a clear message, instead of serving from it or overwriting it; and a PostgreSQL --db
// that carries a password, or cannot be reached, ends start-up with a clear message and no
// password in the log.

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/faults_fixture.h"

namespace verdictd::testing::faults {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

struct CorruptFile {
  std::string name;
  std::string contents;
};

// ctest and gtest print a parameter by its name, not as raw bytes.
void PrintTo(const CorruptFile& param, std::ostream* os) { *os << param.name; }

class FaultStartupTest : public ::testing::TestWithParam<CorruptFile> {};

TEST_P(FaultStartupTest, CorruptDatabaseIsRefusedWithAClearMessage) {
  TempDir dir;
  const std::string db = dir.File("verdicts.db");
  {
    std::ofstream out(db, std::ios::binary);
    out << GetParam().contents;
  }
  const std::string log = dir.File("verdictd.log");
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + db, "--upstream_url=http://127.0.0.1:9/"},
      {{"CLICKPATROL_TOKEN", kToken}}, log);
  ASSERT_TRUE(process.ok()) << process.status();
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(code.ok()) << "verdictd kept running with a corrupt database";
  EXPECT_NE(*code, 0);
  EXPECT_LT(*code, 128) << "killed by signal " << *code - 128 << " (a crash)";
  EXPECT_LT(took, absl::Seconds(5));
  const std::string text = ReadFileOrEmpty(log);
  EXPECT_THAT(text, HasSubstr("verdictd cannot start"));
  EXPECT_THAT(text, HasSubstr(db)) << "the message names the file";
  EXPECT_THAT(text, AnyOf(HasSubstr("not a database"), HasSubstr("malformed")));
  EXPECT_EQ(ReadFileOrEmpty(db), GetParam().contents) << "the file must be left as it was";
}

std::string SqliteHeaderThenGarbage() {
  std::string s("SQLite format 3\0", 16);
  for (int i = 0; s.size() < 64 * 1024; ++i) {
    s.push_back(static_cast<char>((i * 131 + 7) % 251));
  }
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    FaultStartup, FaultStartupTest,
    ::testing::Values(CorruptFile{"Text", std::string(20000, 'g') + "this is not a database\n"},
                      CorruptFile{"SqliteHeaderThenGarbage", SqliteHeaderThenGarbage()}),
    [](const ::testing::TestParamInfo<CorruptFile>& info) { return info.param.name; });

// --- PostgreSQL --db at start-up ------------------------------------------------------------
//
// None of these needs a PostgreSQL server: a URI with a password is refused before connecting,
// and a socket directory with no server in it is a database that cannot be reached.

struct StartupRun {
  int exit_code = -1;
  absl::Duration took;
  std::string log;
};

// Runs verdictd with `flags` until it exits on its own (at most `timeout`).
StartupRun RunUntilExit(const TempDir& dir, const std::vector<std::string>& flags,
                        absl::Duration timeout = absl::Seconds(20),
                        const std::map<std::string, std::string>& env = {}) {
  std::vector<std::string> argv = {VERDICTD_BIN, "--listen=127.0.0.1:0",
                                   "--upstream_url=http://127.0.0.1:9/"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  std::map<std::string, std::string> full_env = {{"CLICKPATROL_TOKEN", kToken}};
  full_env.insert(env.begin(), env.end());
  const std::string log = dir.File("startup.log");
  std::remove(log.c_str());
  StartupRun run;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(argv, full_env, log);
  if (!process.ok()) {
    ADD_FAILURE() << process.status();
    return run;
  }
  absl::StatusOr<int> code = (*process)->Wait(timeout);
  run.took = absl::Now() - start;
  EXPECT_TRUE(code.ok()) << "verdictd kept running with " << absl::StrJoin(flags, " ");
  run.exit_code = code.ok() ? *code : -1;
  run.log = ReadFileOrEmpty(log);
  return run;
}

// A libpq URI for a server listening in `socket_dir`, where none is.
std::string UnreachableUri(const TempDir& dir) {
  const std::string socket_dir = dir.File("no-server");
  mkdir(socket_dir.c_str(), 0700);
  return "postgresql://verdictd@/verdicts?host=" + socket_dir;
}

TEST(FaultStartupPostgres, UriWithPasswordIsRefusedWithoutRepeatingIt) {
  TempDir dir;
  const std::string in_user_info = "Pw_InUserInfo_5e1f";
  const std::string in_query = "Pw_InQuery_9a2b";
  for (const std::string& uri :
       {"postgresql://verdictd:" + in_user_info + "@127.0.0.1:5432/verdicts",
        "postgres://verdictd@127.0.0.1/verdicts?password=" + in_query}) {
    SCOPED_TRACE(uri);
    StartupRun run = RunUntilExit(dir, {"--db=" + uri});
    EXPECT_EQ(run.exit_code, 2);
    EXPECT_LT(run.took, absl::Seconds(5)) << "refused before any connection attempt";
    EXPECT_THAT(run.log, HasSubstr("verdictd cannot start: --db"));
    EXPECT_THAT(run.log, HasSubstr("password")) << "the message says where a password goes";
    EXPECT_THAT(run.log, Not(HasSubstr(in_user_info)));
    EXPECT_THAT(run.log, Not(HasSubstr(in_query)));
    EXPECT_THAT(run.log, Not(HasSubstr("listening on")));
  }
}

TEST(FaultStartupPostgres, UnreachableServerExitsAfterTheBoundedWait) {
  TempDir dir;
  StartupRun run = RunUntilExit(dir, {"--db=" + UnreachableUri(dir), "--db_connect_wait=2s"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_GE(run.took, absl::Seconds(2)) << "gave up before --db_connect_wait";
  EXPECT_LT(run.took, absl::Seconds(12)) << "waited far beyond --db_connect_wait";
  EXPECT_THAT(run.log, HasSubstr("cannot connect to PostgreSQL yet, retrying"));
  EXPECT_THAT(run.log, HasSubstr("verdictd cannot start: gave up connecting to PostgreSQL"));
  EXPECT_THAT(run.log, HasSubstr("--db_connect_wait=2s"));
  EXPECT_THAT(run.log, Not(HasSubstr("listening on")));
}

TEST(FaultStartupPostgres, NoWaitMeansOneAttempt) {
  TempDir dir;
  StartupRun run = RunUntilExit(dir, {"--db=" + UnreachableUri(dir), "--db_connect_wait=0"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_LT(run.took, absl::Seconds(5));
  EXPECT_THAT(run.log, HasSubstr("gave up connecting to PostgreSQL (1 attempt "));
}

// The wait is interruptible: an orchestrator stopping a replica that cannot reach its database
// is obeyed at once, not after --db_connect_wait.
TEST(FaultStartupPostgres, SigtermEndsTheWait) {
  TempDir dir;
  const std::string log = dir.File("verdictd.log");
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start({VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + UnreachableUri(dir),
                           "--db_connect_wait=5m", "--upstream_url=http://127.0.0.1:9/"},
                          {{"CLICKPATROL_TOKEN", kToken}}, log);
  ASSERT_TRUE(process.ok()) << process.status();
  ASSERT_TRUE(WaitUntil(
      "the first failed attempt in the log", [&] { return ReadFileOrEmpty(log); },
      [](const std::string& text) {
        return absl::StrContains(text, "cannot connect to PostgreSQL yet");
      },
      absl::Seconds(15)));
  const absl::Time signalled = absl::Now();
  absl::StatusOr<int> code = (*process)->Terminate(absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << "SIGTERM did not end the wait";
  EXPECT_EQ(*code, 0);
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(3));
  EXPECT_THAT(ReadFileOrEmpty(log), HasSubstr("while waiting for PostgreSQL: stopping"));
}

TEST(FaultStartupPostgres, PasswordFileContentsNeverReachTheLog) {
  TempDir dir;
  const std::string password = "PwFile_Secret_3c7d";
  const std::string file = dir.File("db.password");
  {
    std::ofstream out(file, std::ios::binary);
    out << password << "\n";
  }
  chmod(file.c_str(), 0600);
  StartupRun run = RunUntilExit(dir, {"--db=" + UnreachableUri(dir), "--db_password_file=" + file,
                                      "--db_connect_wait=1s", "--log_level=trace"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.log, HasSubstr("password=<redacted, from file " + file + ">"));
  EXPECT_THAT(run.log, Not(HasSubstr("can be read by others"))) << "the file is 0600";
  EXPECT_THAT(run.log, Not(HasSubstr(password)));
}

TEST(FaultStartupPostgres, PasswordFileProblemsAreRefused) {
  TempDir dir;
  const std::string uri = UnreachableUri(dir);
  StartupRun missing =
      RunUntilExit(dir, {"--db=" + uri, "--db_password_file=" + dir.File("absent")});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.log, HasSubstr("cannot read --db_password_file"));

  const std::string empty = dir.File("empty.password");
  {
    std::ofstream out(empty);
    out << "\n";
  }
  StartupRun blank = RunUntilExit(dir, {"--db=" + uri, "--db_password_file=" + empty});
  EXPECT_EQ(blank.exit_code, 2);
  EXPECT_THAT(blank.log, HasSubstr("is empty"));

  const std::string file = dir.File("sqlite.password");
  {
    std::ofstream out(file);
    out << "PwForSqlite_77\n";
  }
  StartupRun sqlite =
      RunUntilExit(dir, {"--db=" + dir.File("verdicts.db"), "--db_password_file=" + file});
  EXPECT_EQ(sqlite.exit_code, 2);
  EXPECT_THAT(sqlite.log, HasSubstr("--db_password_file applies only"));
  EXPECT_THAT(sqlite.log, Not(HasSubstr("PwForSqlite_77")));
}

}  // namespace
}  // namespace verdictd::testing::faults
