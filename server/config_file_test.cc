#include "server/config_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

// Flags owned by this file: ApplyConfigFile is called with "config_file_test.cc" as the owner.
ABSL_FLAG(std::string, cfgtest_name, "default-name", "a string flag");
ABSL_FLAG(int, cfgtest_count, 7, "an int flag");
ABSL_FLAG(bool, cfgtest_verbose, false, "a bool flag");
ABSL_FLAG(std::string, cfgtest_max_age, "24h", "a duration held as a string, like --max_age");
ABSL_FLAG(absl::Duration, cfgtest_timeout, absl::Seconds(10), "an absl::Duration flag");
ABSL_FLAG(double, cfgtest_ratio, 0.5, "a double flag");

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kOwner[] = "config_file_test.cc";

class ConfigFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = absl::StrCat(::testing::TempDir(), "/config_file_test_", getpid(), "_",
                                          counter_++, "_", name);
    std::ofstream out(path, std::ios::trunc | std::ios::binary);
    out << content;
    out.close();
    paths_.push_back(path);
    return path;
  }

  void TearDown() override {
    for (const std::string& path : paths_) {
      unlink(path.c_str());
    }
  }

  // Every test starts and ends with the flags' defaults.
  absl::FlagSaver saver_;
  std::vector<std::string> paths_;
  int counter_ = 0;
};

TEST_F(ConfigFileTest, SetsStringIntBoolAndDurationFlags) {
  const std::string path = Write("ok.json", R"({
    "cfgtest_name": "from-file",
    "cfgtest_count": 42,
    "cfgtest_verbose": true,
    "cfgtest_max_age": "90m",
    "cfgtest_timeout": "2.5s",
    "cfgtest_ratio": 0.25
  })");
  ASSERT_TRUE(ApplyConfigFile(path, kOwner).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_name), "from-file");
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_count), 42);
  EXPECT_TRUE(absl::GetFlag(FLAGS_cfgtest_verbose));
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_max_age), "90m");
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_timeout), absl::Milliseconds(2500));
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_ratio), 0.25);
}

TEST_F(ConfigFileTest, EmptyObjectChangesNothing) {
  ASSERT_TRUE(ApplyConfigFile(Write("empty.json", " {}\n"), kOwner).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_name), "default-name");
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_count), 7);
}

TEST_F(ConfigFileTest, BooleansAndStringsAreParsedByTheFlag) {
  // A string value is handed to the flag as-is, so "false" and "-3" work for bool and int flags.
  ASSERT_TRUE(ApplyConfigFile(Write("a.json", R"({"cfgtest_verbose": true})"), kOwner).ok());
  EXPECT_TRUE(absl::GetFlag(FLAGS_cfgtest_verbose));
  ASSERT_TRUE(ApplyConfigFile(
                  Write("b.json", R"({"cfgtest_verbose": "false", "cfgtest_count": "-3"})"), kOwner)
                  .ok());
  EXPECT_FALSE(absl::GetFlag(FLAGS_cfgtest_verbose));
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_count), -3);
}

TEST_F(ConfigFileTest, LaterApplicationOverridesEarlier) {
  // main() applies the file first and then parses the command line; any later setting wins.
  ASSERT_TRUE(ApplyConfigFile(
                  Write("first.json", R"({"cfgtest_name": "first", "cfgtest_count": 1})"), kOwner)
                  .ok());
  ASSERT_TRUE(ApplyConfigFile(Write("second.json", R"({"cfgtest_name": "second"})"), kOwner).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_name), "second");
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_count), 1);  // untouched by the second file

  // The same holds for a command-line style setting after the file.
  std::string error;
  ASSERT_TRUE(absl::FindCommandLineFlag("cfgtest_name")->ParseFrom("from-flag", &error));
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_name), "from-flag");
}

TEST_F(ConfigFileTest, UnknownKey) {
  const std::string path = Write("unknown.json", R"({"cfgtest_name": "x", "foo": 1})");
  const absl::Status status = ApplyConfigFile(path, kOwner);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), absl::StrCat("config ", path, ": unknown key \"foo\""));
  // Keys are all checked before any flag is set.
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_name), "default-name");
}

TEST_F(ConfigFileTest, FlagsOfOtherFilesAreUnknown) {
  const std::string path = Write("other.json", R"({"cfgtest_name": "x"})");
  absl::Status status = ApplyConfigFile(path, "verdictd_main.cc");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), absl::StrCat("config ", path, ": unknown key \"cfgtest_name\""));
  // The suffix must be a whole file name, not just its tail.
  status = ApplyConfigFile(path, "file_test.cc");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("unknown key \"cfgtest_name\""));
  EXPECT_TRUE(ApplyConfigFile(path, "server/config_file_test.cc").ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_name), "x");
}

TEST_F(ConfigFileTest, BadValueNamesKeyAndFlagError) {
  for (const char* json : {R"({"cfgtest_count": "many"})", R"({"cfgtest_count": 1.5})",
                           R"({"cfgtest_verbose": "maybe"})", R"({"cfgtest_timeout": "10 apples"})",
                           R"({"cfgtest_count": 99999999999})"}) {
    SCOPED_TRACE(json);
    const std::string path = Write("bad.json", json);
    const absl::Status status = ApplyConfigFile(path, kOwner);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()),
                StartsWith(absl::StrCat("config ", path, ": key \"")));
    EXPECT_THAT(std::string(status.message()), HasSubstr("\": "));
  }
  const std::string path = Write("bad.json", R"({"cfgtest_count": "many"})");
  const absl::Status status = ApplyConfigFile(path, kOwner);
  EXPECT_THAT(std::string(status.message()),
              StartsWith(absl::StrCat("config ", path, ": key \"cfgtest_count\": ")));
  EXPECT_THAT(std::string(status.message()), HasSubstr("many"));
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_count), 7);
}

TEST_F(ConfigFileTest, ArraysObjectsAndNullAreNotValues) {
  for (const char* json : {R"({"cfgtest_name": ["a"]})", R"({"cfgtest_name": {"a": 1}})",
                           R"({"cfgtest_name": null})"}) {
    SCOPED_TRACE(json);
    const std::string path = Write("type.json", json);
    const absl::Status status = ApplyConfigFile(path, kOwner);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()),
                StartsWith(absl::StrCat("config ", path, ": key \"cfgtest_name\": ")));
  }
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_name), "default-name");
}

TEST_F(ConfigFileTest, TokenIsNeverReadFromTheFile) {
  for (const char* key : {"token", "clickpatrol_token"}) {
    SCOPED_TRACE(key);
    const std::string path =
        Write("token.json", absl::StrCat(R"({")", key, R"(": "s3cr3t-value"})"));
    const absl::Status status = ApplyConfigFile(path, kOwner);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message(),
              absl::StrCat("config ", path, ": key \"", key,
                           "\": the ClickPatrol token is a secret and is never read from the "
                           "config file; use CLICKPATROL_TOKEN or token_file"));
    EXPECT_THAT(std::string(status.message()), ::testing::Not(HasSubstr("s3cr3t")));
  }
}

TEST_F(ConfigFileTest, FlagParsingFlagsAreNotAllowed) {
  for (const char* key :
       {"config", "flagfile", "fromenv", "tryfromenv", "undefok", "help", "helpfull", "helpon"}) {
    SCOPED_TRACE(key);
    const std::string path = Write("meta.json", absl::StrCat(R"({")", key, R"(": "x"})"));
    const absl::Status status = ApplyConfigFile(path, kOwner);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()),
                StartsWith(absl::StrCat("config ", path, ": key \"", key, "\": ")));
    EXPECT_THAT(std::string(status.message()), HasSubstr("not allowed in a config file"));
  }
}

TEST_F(ConfigFileTest, NotAnObject) {
  for (const char* json : {"[1, 2]", "\"cfgtest_name\"", "42", "null"}) {
    SCOPED_TRACE(json);
    const std::string path = Write("array.json", json);
    const absl::Status status = ApplyConfigFile(path, kOwner);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), StartsWith(absl::StrCat("config ", path, ": ")));
    EXPECT_THAT(std::string(status.message()), HasSubstr("JSON object"));
  }
}

TEST_F(ConfigFileTest, SyntaxErrorHasLineAndColumn) {
  const std::string path =
      Write("syntax.json", "{\n  \"cfgtest_name\": \"x\",\n  \"cfgtest_count\": ,\n}\n");
  const absl::Status status = ApplyConfigFile(path, kOwner);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              StartsWith(absl::StrCat("config ", path, ": invalid JSON at line 3, column 20: ")));
  EXPECT_THAT(std::string(status.message()), ::testing::Not(HasSubstr("json.exception")));

  const std::string empty = Write("empty.json", "");
  EXPECT_THAT(std::string(ApplyConfigFile(empty, kOwner).message()),
              StartsWith(absl::StrCat("config ", empty, ": invalid JSON at line 1, column 1")));
  const std::string truncated = Write("truncated.json", "{\"cfgtest_name\": \"x\"\n");
  EXPECT_THAT(std::string(ApplyConfigFile(truncated, kOwner).message()),
              StartsWith(absl::StrCat("config ", truncated, ": invalid JSON at line 2, column 1")));
}

// Found by the config_file fuzz target: a number no double can hold made nlohmann::json throw
// out_of_range, which ended the process with std::terminate.
TEST_F(ConfigFileTest, NumberTooLargeForADoubleIsAnError) {
  for (const char* json : {"{\"cfgtest_ratio\": 1e999}", "{\"cfgtest_count\": -1e999}"}) {
    SCOPED_TRACE(json);
    const std::string path = Write("huge.json", json);
    const absl::Status status = ApplyConfigFile(path, kOwner);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()),
                StartsWith(absl::StrCat("config ", path, ": invalid JSON: number overflow")));
    EXPECT_DOUBLE_EQ(absl::GetFlag(FLAGS_cfgtest_ratio), 0.5);
  }
}

TEST_F(ConfigFileTest, UnreadableFile) {
  const std::string missing = absl::StrCat(::testing::TempDir(), "/no_such_config_", getpid());
  absl::Status status = ApplyConfigFile(missing, kOwner);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            absl::StrCat("config ", missing, ": cannot open: No such file or directory"));

  status = ApplyConfigFile(::testing::TempDir(), kOwner);  // a directory
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              StartsWith(absl::StrCat("config ", ::testing::TempDir(), ": cannot ")));

  EXPECT_EQ(ApplyConfigFile("", kOwner).code(), absl::StatusCode::kInvalidArgument);
}

absl::StatusOr<std::string> Find(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& arg : args) {
    argv.push_back(arg.data());
  }
  argv.push_back(nullptr);
  return FindConfigFlag(static_cast<int>(args.size()), argv.data());
}

TEST(FindConfigFlagTest, FindsBothForms) {
  EXPECT_EQ(*Find({"verdictd"}), "");
  EXPECT_EQ(*Find({"verdictd", "--listen=:1"}), "");
  EXPECT_EQ(*Find({"verdictd", "--config=/etc/v.json"}), "/etc/v.json");
  EXPECT_EQ(*Find({"verdictd", "--max_age=1h", "--config", "/etc/v.json", "--db=x"}),
            "/etc/v.json");
  EXPECT_EQ(*Find({"verdictd", "-config=a.json"}), "a.json");
  EXPECT_EQ(*Find({"verdictd", "--config=a.json", "--config=b.json"}), "b.json");  // last wins
  EXPECT_EQ(*Find({"verdictd", "--configure=x", "--config_dir=y"}), "");
  EXPECT_EQ(*Find({"verdictd", "--", "--config=a.json"}), "");
  EXPECT_EQ(*Find({"verdictd", "config=a.json"}), "");
}

TEST(FindConfigFlagTest, MissingFileName) {
  EXPECT_EQ(Find({"verdictd", "--config"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Find({"verdictd", "--config="}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Find({"verdictd", "--config", ""}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace verdictd
