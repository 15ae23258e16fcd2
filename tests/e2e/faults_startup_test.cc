// End-to-end corrupt database at start-up: verdictd refuses a database file that is not one (or
// is damaged) with a clear message, instead of serving from it or overwriting it.

#include <fstream>
#include <memory>
#include <ostream>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/faults_fixture.h"

namespace verdictd::testing::faults {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

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

}  // namespace
}  // namespace verdictd::testing::faults
