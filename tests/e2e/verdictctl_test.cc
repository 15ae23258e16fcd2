// End-to-end: the real verdictctl binary against the real verdictd and the simulated
// ClickPatrol, checking what people and scripts see: tables, JSON lines, exit codes.

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kToken[] = "cp_CliE2eToken_7a3e";

// The output lines, without the trailing empty one.
std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) {
    lines.pop_back();
  }
  return lines;
}

// A table row's cells (cells never contain spaces in these tests).
std::vector<std::string> Cells(const std::string& line) {
  return absl::StrSplit(line, ' ', absl::SkipEmpty());
}

std::string ScoreWord(pb::Score score) {
  switch (score) {
    case pb::SCORE_SAFE:
      return "Safe";
    case pb::SCORE_SUSPICIOUS:
      return "Suspicious";
    case pb::SCORE_FAKE:
      return "Fake";
    default:
      return "?";
  }
}

// Proto JSON writes int64 as a string.
int64_t JsonInt64(const nlohmann::json& value) {
  if (value.is_number()) {
    return value.get<int64_t>();
  }
  int64_t n = -1;
  EXPECT_TRUE(absl::SimpleAtoi(value.get<std::string>(), &n)) << value;
  return n;
}

class VerdictctlTest : public ::testing::Test {
 protected:
  void SetUp() override { StartVerdictd(); }

  void StartVerdictd(std::vector<std::string> flags = {}) {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(dir_, sim_.url(), kToken, std::move(flags));
  }

  // Runs verdictctl against this test's verdictd as caller "cli" (unless `args` name another, or
  // the subcommand is `usage`), with `args` after the --server flag.
  CommandResult Ctl(std::vector<std::string> args, const std::string& stdin_text = "") {
    std::vector<std::string> argv = {VERDICTCTL_BIN,
                                     absl::StrCat("--server=127.0.0.1:", verdictd_->port())};
    // Not for `usage`, where --caller also selects whose usage is shown.
    const bool usage = std::find(args.begin(), args.end(), "usage") != args.end();
    if (!usage && std::none_of(args.begin(), args.end(), [](const std::string& a) {
          return absl::StartsWith(a, "--caller");
        })) {
      argv.push_back("--caller=cli");
    }
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<CommandResult> result = RunCommand(argv, stdin_text);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult();
  }

  std::string WriteFile(const std::string& name, const std::string& contents) {
    const std::string path = dir_.File(name);
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  // Whether the server implements GetServerInfo (the later RPCs land together with it).
  bool ServerHasInfo() {
    pb::GetServerInfoResponse info;
    return verdictd_->stub()
               .GetServerInfo(CallerContext().get(), pb::GetServerInfoRequest(), &info)
               .error_code() != grpc::StatusCode::UNIMPLEMENTED;
  }

  TempDir dir_;
  Simulator sim_{dir_, kToken};
  std::unique_ptr<Verdictd> verdictd_;
};

TEST_F(VerdictctlTest, CheckPrintsTableUpstreamThenCache) {
  CommandResult first = Ctl({"check", "8.8.8.8"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(first.err, "");
  std::vector<std::string> lines = Lines(first.out);
  ASSERT_EQ(lines.size(), 2u) << first.out;
  EXPECT_THAT(Cells(lines[0]), ElementsAre("IP", "SCORE", "SOURCE", "CLICK", "PROXY", "TOR", "VPN",
                                           "CRAWLER", "BOT", "CHECKED_AT", "CALLER"));
  std::vector<std::string> row = Cells(lines[1]);
  ASSERT_EQ(row.size(), 11u) << lines[1];
  EXPECT_EQ(row[0], "8.8.8.8");
  EXPECT_THAT(row[1], AnyOf("Safe", "Suspicious", "Fake"));
  EXPECT_EQ(row[2], "upstream");
  EXPECT_EQ(row[3], "yes");
  for (int i = 4; i <= 8; ++i) {
    EXPECT_THAT(row[i], AnyOf("yes", "-"));
  }
  absl::Time checked_at;
  std::string error;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, row[9], &checked_at, &error)) << row[9];
  EXPECT_EQ(row[10], "cli");
  // Columns line up: every header starts where its cell starts.
  EXPECT_EQ(lines[0].find("SOURCE"), lines[1].find("upstream"));
  EXPECT_EQ(lines[0].find("CALLER"), lines[1].rfind("cli"));

  CommandResult second = Ctl({"check", "8.8.8.8", "--caller=other"});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  std::vector<std::string> row2 = Cells(Lines(second.out).at(1));
  EXPECT_EQ(row2[2], "cache");
  EXPECT_EQ(row2[3], "-");
  EXPECT_EQ(row2[1], row[1]);
  EXPECT_EQ(row2[10], "cli") << "the caller who paid";

  pb::CheckIpResponse direct;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &direct).ok());
  EXPECT_EQ(row[1], ScoreWord(direct.verdict().score()));
  EXPECT_EQ(sim_.Requests(), 1);
}

TEST_F(VerdictctlTest, CheckJsonHasEveryField) {
  CommandResult first = Ctl({"--json", "check", "1.1.1.1", "--ua=Mozilla/5.0 (X11)"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_EQ(Lines(first.out).size(), 1u) << first.out;
  nlohmann::json j = nlohmann::json::parse(first.out);
  EXPECT_EQ(j.at("source"), "SOURCE_UPSTREAM");
  EXPECT_EQ(j.at("clickSpent"), true);
  const nlohmann::json& v = j.at("verdict");
  EXPECT_EQ(v.at("ip"), "1.1.1.1");
  EXPECT_EQ(v.at("userAgent"), "Mozilla/5.0 (X11)");
  EXPECT_EQ(v.at("caller"), "cli");
  EXPECT_THAT(v.at("score").get<std::string>(), StartsWith("SCORE_"));
  for (const char* flag : {"proxy", "tor", "vpn", "crawler", "bot"}) {
    EXPECT_TRUE(v.at(flag).is_boolean()) << flag << " missing or not a boolean: " << v;
  }
  EXPECT_TRUE(v.at("checkedAt").is_string());

  CommandResult second = Ctl({"check", "1.1.1.1", "--json", "--cache_only"});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  nlohmann::json j2 = nlohmann::json::parse(second.out);
  EXPECT_EQ(j2.at("source"), "SOURCE_CACHE");
  EXPECT_EQ(j2.at("clickSpent"), false) << "false is printed, not omitted";
  EXPECT_EQ(sim_.Requests(), 1);
}

TEST_F(VerdictctlTest, CheckMaxAgeZeroAsksAgainAndCacheOnlyMissIsNotFound) {
  CommandResult miss = Ctl({"check", "9.9.9.9", "--cache_only"});
  EXPECT_EQ(miss.exit_code, 5) << miss.err;
  EXPECT_THAT(miss.err, StartsWith("verdictctl: NOT_FOUND: "));
  ASSERT_EQ(Ctl({"check", "9.9.9.9"}).exit_code, 0);
  CommandResult again = Ctl({"check", "9.9.9.9", "--max_age=0", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(nlohmann::json::parse(again.out).at("source"), "SOURCE_UPSTREAM");
  CommandResult fresh = Ctl({"check", "9.9.9.9", "--max_age=1h", "--json"});
  EXPECT_EQ(nlohmann::json::parse(fresh.out).at("source"), "SOURCE_CACHE");
  EXPECT_EQ(sim_.Requests(), 2);
}

TEST_F(VerdictctlTest, CheckErrorsExitWithTheStatusCode) {
  CommandResult bad = Ctl({"check", "not-an-ip"});
  EXPECT_EQ(bad.exit_code, 3);
  EXPECT_THAT(bad.err, StartsWith("verdictctl: INVALID_ARGUMENT: "));
  EXPECT_EQ(bad.out, "");
  CommandResult private_ip = Ctl({"check", "10.0.0.1"});
  EXPECT_EQ(private_ip.exit_code, 9);
  EXPECT_THAT(private_ip.err, StartsWith("verdictctl: FAILED_PRECONDITION: "));
  EXPECT_EQ(sim_.Requests(), 0);
}

TEST_F(VerdictctlTest, UnreachableServerIsUnavailable) {
  // A port that was just free: nothing listens on it.
  const int port = verdictd_->port();
  verdictd_->Stop();
  absl::StatusOr<CommandResult> result =
      RunCommand({VERDICTCTL_BIN, absl::StrCat("--server=127.0.0.1:", port), "--timeout=10s",
                  "check", "8.8.8.8"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_code, 14) << result->err;
  EXPECT_THAT(result->err, StartsWith("verdictctl: UNAVAILABLE: "));
}

// The container health check: SERVING (exit 0) while the store is usable, NOT_SERVING (exit
// 69) while the database file is gone, SERVING again once it is back.
TEST_F(VerdictctlTest, HealthFollowsTheStore) {
  CommandResult serving = Ctl({"health"});
  EXPECT_EQ(serving.exit_code, 0) << serving.err;
  EXPECT_EQ(serving.out, "SERVING\n");
  CommandResult named = Ctl({"health", "verdict.v1.VerdictService"});
  EXPECT_EQ(named.exit_code, 0) << named.err;
  EXPECT_EQ(named.out, "SERVING\n");
  CommandResult json = Ctl({"--json", "health"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(nlohmann::json::parse(json.out), nlohmann::json({{"status", "SERVING"}}));
  CommandResult unknown = Ctl({"health", "no.such.Service"});
  EXPECT_EQ(unknown.exit_code, 5) << unknown.err;
  EXPECT_THAT(unknown.err, StartsWith("verdictctl: NOT_FOUND: "));
  EXPECT_EQ(Ctl({"health", "a", "b"}).exit_code, 64);

  // Polls `verdictctl health` until it exits with `want`, for at most 10 s.
  auto wait_for_exit = [&](int want) {
    CommandResult last;
    WaitUntil(
        absl::StrCat("`verdictctl health` to exit with ", want),
        [&] {
          last = Ctl({"--timeout=2s", "health"});
          return last.exit_code;
        },
        [want](int exit_code) { return exit_code == want; }, absl::Seconds(10),
        absl::Milliseconds(100));
    return last;  // the caller's assertions show its output
  };
  const std::string moved = verdictd_->db_path() + ".moved";
  ASSERT_EQ(std::rename(verdictd_->db_path().c_str(), moved.c_str()), 0);
  CommandResult down = wait_for_exit(69);
  EXPECT_EQ(down.exit_code, 69) << down.out << down.err;
  EXPECT_EQ(down.out, "NOT_SERVING\n");
  ASSERT_EQ(std::rename(moved.c_str(), verdictd_->db_path().c_str()), 0);
  CommandResult up = wait_for_exit(0);
  EXPECT_EQ(up.exit_code, 0) << up.out << up.err;

  const int port = verdictd_->port();
  verdictd_->Stop();
  absl::StatusOr<CommandResult> gone = RunCommand(
      {VERDICTCTL_BIN, absl::StrCat("--server=127.0.0.1:", port), "--timeout=5s", "health"});
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->exit_code, 14) << gone->err;
}

TEST_F(VerdictctlTest, UsageErrorsExit64) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {},
           {"frobnicate"},
           {"check"},
           {"check", "1.1.1.1", "2.2.2.2"},
           {"check", "1.1.1.1", "--no_such_flag"},
           {"check", "1.1.1.1", "--max_age=soon"},
           {"check", "1.1.1.1", "--days"},
           {"history", "1.1.1.1", "--since=yesterday"},
           {"history", "1.1.1.1", "--limit=many"},
           {"usage", "--since=-1h", "--until=-2h"},
           {"batch"},
       }) {
    CommandResult r = Ctl(args);
    EXPECT_EQ(r.exit_code, 64) << absl::StrJoin(args, " ") << "\n" << r.err;
    EXPECT_THAT(r.err, HasSubstr("usage: verdictctl")) << absl::StrJoin(args, " ");
  }
  CommandResult help = Ctl({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("exit status"));
  CommandResult missing = Ctl({"batch", dir_.File("no-such-file")});
  EXPECT_EQ(missing.exit_code, 66);
  EXPECT_THAT(missing.err, HasSubstr("no-such-file"));
  EXPECT_EQ(sim_.Requests(), 0);
}

TEST_F(VerdictctlTest, BatchFromFileKeepsInputOrderAndReportsItemErrors) {
  const std::string path = WriteFile("ips.txt",
                                     "# a comment\n"
                                     "8.8.8.8\n"
                                     "1.1.1.1,Mozilla/5.0 (X11; Linux), like Gecko\n"
                                     "\n"
                                     "  not-an-ip  \n"
                                     "8.8.8.8\r\n"
                                     "9.9.9.9\n");
  CommandResult table = Ctl({"batch", path});
  EXPECT_EQ(table.exit_code, 65) << table.err;
  EXPECT_EQ(table.err, "");
  std::vector<std::string> lines = Lines(table.out);
  ASSERT_EQ(lines.size(), 6u) << table.out;
  EXPECT_THAT(lines[0], StartsWith("IP "));
  EXPECT_EQ(Cells(lines[1])[0], "8.8.8.8");
  EXPECT_EQ(Cells(lines[1])[2], "upstream");
  EXPECT_EQ(Cells(lines[2])[0], "1.1.1.1");
  EXPECT_THAT(lines[3], StartsWith("not-an-ip"));
  EXPECT_THAT(lines[3], HasSubstr("INVALID_ARGUMENT: "));
  EXPECT_EQ(lines[3].find("INVALID_ARGUMENT"), lines[0].find("SCORE"));
  EXPECT_EQ(Cells(lines[4])[0], "8.8.8.8");
  EXPECT_EQ(Cells(lines[4])[3], "-") << "the duplicate shares the first one's click";
  EXPECT_EQ(Cells(lines[5])[0], "9.9.9.9");
  EXPECT_EQ(sim_.Requests(), 3) << "one request per distinct valid public IP";

  CommandResult json = Ctl({"batch", path, "--json"});
  EXPECT_EQ(json.exit_code, 65) << json.err;
  std::vector<std::string> json_lines = Lines(json.out);
  ASSERT_EQ(json_lines.size(), 5u) << json.out;
  std::vector<std::string> ips;
  for (const std::string& line : json_lines) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("error")) {
      EXPECT_EQ(j.at("error").at("code"), 3);
      ips.push_back("error");
    } else {
      EXPECT_EQ(j.at("result").at("source"), "SOURCE_CACHE");
      ips.push_back(j.at("result").at("verdict").at("ip"));
    }
  }
  EXPECT_THAT(ips, ElementsAre("8.8.8.8", "1.1.1.1", "error", "8.8.8.8", "9.9.9.9"));
  EXPECT_EQ(nlohmann::json::parse(json_lines[1]).at("result").at("verdict").at("userAgent"),
            "Mozilla/5.0 (X11; Linux), like Gecko")
      << "the first comma splits";
  EXPECT_EQ(sim_.Requests(), 3);
}

TEST_F(VerdictctlTest, BatchFromStdin) {
  CommandResult r = Ctl({"batch", "-", "--json", "--ua=fallback-ua"}, "8.8.4.4\n4.2.2.2,own-ua\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  nlohmann::json first = nlohmann::json::parse(lines[0]).at("result").at("verdict");
  nlohmann::json second = nlohmann::json::parse(lines[1]).at("result").at("verdict");
  EXPECT_EQ(first.at("ip"), "8.8.4.4");
  EXPECT_EQ(first.at("userAgent"), "fallback-ua");
  EXPECT_EQ(second.at("ip"), "4.2.2.2");
  EXPECT_EQ(second.at("userAgent"), "own-ua");
  EXPECT_EQ(sim_.Requests(), 2);

  CommandResult empty = Ctl({"batch", "-"}, "# nothing\n\n");
  EXPECT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_EQ(Lines(empty.out).size(), 1u) << "just the header";
}

TEST_F(VerdictctlTest, BatchLargerThanMaxBatchIsSplit) {
  StartVerdictd({"--max_batch=1000"});
  std::string input;
  std::vector<std::string> expected;
  for (int i = 0; i < 2500; ++i) {
    expected.push_back(absl::StrCat("11.0.", i / 250, ".", i % 250 + 1));
    absl::StrAppend(&input, expected.back(), "\n");
  }
  CommandResult r = Ctl({"batch", "-"}, input);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2501u);
  for (int i = 0; i < 2500; ++i) {
    ASSERT_EQ(Cells(lines[i + 1])[0], expected[i]) << "row " << i;
  }
  // A CheckBatch over --max_batch would have failed as a whole with INVALID_ARGUMENT.
  EXPECT_EQ(sim_.Requests(), 2500);
}

TEST_F(VerdictctlTest, BatchUsesTheServersMaxBatch) {
  StartVerdictd({"--max_batch=7"});
  if (!ServerHasInfo()) {
    GTEST_SKIP() << "verdictd does not implement GetServerInfo yet";
  }
  std::string input;
  for (int i = 1; i <= 20; ++i) {
    absl::StrAppend(&input, "11.1.0.", i, "\n");
  }
  CommandResult r = Ctl({"batch", "-", "--json"}, input);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Lines(r.out).size(), 20u);
  EXPECT_EQ(sim_.Requests(), 20);
}

TEST_F(VerdictctlTest, HistoryListsNewestFirst) {
  ASSERT_EQ(Ctl({"check", "8.8.8.8", "--max_age=0", "--ua=first"}).exit_code, 0);
  ASSERT_EQ(Ctl({"check", "8.8.8.8", "--max_age=0", "--ua=second"}).exit_code, 0);
  ASSERT_EQ(Ctl({"check", "1.1.1.1"}).exit_code, 0);

  CommandResult table = Ctl({"history", "8.8.8.8"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  std::vector<std::string> lines = Lines(table.out);
  ASSERT_EQ(lines.size(), 3u) << table.out;
  EXPECT_THAT(Cells(lines[0]), ElementsAre("CHECKED_AT", "IP", "SCORE", "PROXY", "TOR", "VPN",
                                           "CRAWLER", "BOT", "CALLER", "USER_AGENT"));
  EXPECT_EQ(Cells(lines[1]).back(), "second");
  EXPECT_EQ(Cells(lines[2]).back(), "first");

  CommandResult json = Ctl({"history", "8.8.8.8", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  std::vector<std::string> json_lines = Lines(json.out);
  ASSERT_EQ(json_lines.size(), 2u) << json.out;
  nlohmann::json newest = nlohmann::json::parse(json_lines[0]);
  nlohmann::json oldest = nlohmann::json::parse(json_lines[1]);
  EXPECT_EQ(newest.at("userAgent"), "second");
  EXPECT_EQ(oldest.at("userAgent"), "first");
  EXPECT_EQ(newest.at("ip"), "8.8.8.8");
  EXPECT_EQ(newest.at("caller"), "cli");
  absl::Time newest_at;
  absl::Time oldest_at;
  std::string error;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, newest.at("checkedAt").get<std::string>(),
                              &newest_at, &error));
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, oldest.at("checkedAt").get<std::string>(),
                              &oldest_at, &error));
  EXPECT_GE(newest_at, oldest_at);

  CommandResult limited = Ctl({"history", "8.8.8.8", "--json", "--limit=1"});
  ASSERT_EQ(limited.exit_code, 0) << limited.err;
  ASSERT_EQ(Lines(limited.out).size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(limited.out).at("userAgent"), "second");

  CommandResult in_range = Ctl({"history", "8.8.8.8", "--json", "--since=-1h", "--until=-0s"});
  EXPECT_EQ(Lines(in_range.out).size(), 2u) << in_range.err;
  CommandResult before = Ctl({"history", "8.8.8.8", "--json", "--until=-1h"});
  ASSERT_EQ(before.exit_code, 0) << before.err;
  EXPECT_EQ(before.out, "");
  CommandResult rfc3339 = Ctl({"history", "8.8.8.8", "--json", "--since=2000-01-01T00:00:00Z"});
  EXPECT_EQ(Lines(rfc3339.out).size(), 2u) << rfc3339.err;
}

TEST_F(VerdictctlTest, HistoryFollowsPageTokens) {
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Ctl({"check", "8.8.8.8", "--max_age=0"}).exit_code, 0);
  }
  CommandResult one_page = Ctl({"history", "8.8.8.8", "--json"});
  ASSERT_EQ(one_page.exit_code, 0) << one_page.err;
  const std::vector<std::string> expected = Lines(one_page.out);
  ASSERT_EQ(expected.size(), 3u);
  // Pages of 1 and of 2: three and two calls, the same rows in the same order.
  for (const char* page_size : {"--page_size=1", "--page_size=2"}) {
    CommandResult paged = Ctl({"history", "8.8.8.8", "--json", page_size});
    ASSERT_EQ(paged.exit_code, 0) << paged.err;
    EXPECT_EQ(Lines(paged.out), expected) << page_size;
  }
  CommandResult limited = Ctl({"history", "8.8.8.8", "--json", "--page_size=2", "--limit=3"});
  EXPECT_EQ(Lines(limited.out), expected);
  limited = Ctl({"history", "8.8.8.8", "--json", "--page_size=2", "--limit=2"});
  EXPECT_EQ(Lines(limited.out), std::vector<std::string>(expected.begin(), expected.begin() + 2));
}

TEST_F(VerdictctlTest, UsageShowsTheCallersClicks) {
  ASSERT_EQ(Ctl({"check", "8.8.8.8", "--caller=ads"}).exit_code, 0);
  ASSERT_EQ(Ctl({"check", "1.1.1.1", "--caller=ads"}).exit_code, 0);
  ASSERT_EQ(Ctl({"check", "1.1.1.1", "--caller=ads"}).exit_code, 0);  // a cache hit
  ASSERT_EQ(Ctl({"check", "9.9.9.9", "--caller=signup"}).exit_code, 0);

  CommandResult table = Ctl({"usage", "--caller=ads"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  std::vector<std::string> lines = Lines(table.out);
  ASSERT_GE(lines.size(), 2u) << table.out;
  EXPECT_THAT(Cells(lines[0]), ElementsAre("CALLER", "REQUESTS", "CACHE_HITS", "CLICKS",
                                           "UPSTREAM_ERRORS", "BUDGET", "BUDGET_LEFT"));
  std::vector<std::string> ads = Cells(lines[1]);
  ASSERT_EQ(ads.size(), 7u) << lines[1];
  EXPECT_EQ(ads[0], "ads");
  EXPECT_EQ(ads[3], "2") << table.out;

  CommandResult json = Ctl({"usage", "--json", "--days"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  nlohmann::json usage = nlohmann::json::parse(json.out);
  std::map<std::string, int64_t> clicks;
  for (const nlohmann::json& c : usage.at("callers")) {
    clicks[c.at("caller")] = JsonInt64(c.at("clicks"));
    ASSERT_FALSE(c.at("days").empty()) << c;
    EXPECT_EQ(c.at("days").back().at("date"),
              absl::FormatTime("%Y-%m-%d", absl::Now(), absl::UTCTimeZone()));
  }
  EXPECT_EQ(clicks["ads"], 2);
  EXPECT_EQ(clicks["signup"], 1);

  CommandResult days = Ctl({"usage", "--caller=ads", "--days", "--since=-1d"});
  ASSERT_EQ(days.exit_code, 0) << days.err;
  EXPECT_THAT(days.out, HasSubstr("DATE"));
  EXPECT_THAT(days.out, HasSubstr(absl::FormatTime("%Y-%m-%d", absl::Now(), absl::UTCTimeZone())));
}

TEST_F(VerdictctlTest, HashKeyPrintsTheSha256Hex) {
  constexpr char kAbc[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n";
  CommandResult with_newline = Ctl({"hash-key"}, "abc\n");
  EXPECT_EQ(with_newline.exit_code, 0) << with_newline.err;
  EXPECT_EQ(with_newline.out, kAbc);
  CommandResult without = Ctl({"hash-key"}, "abc");
  EXPECT_EQ(without.out, kAbc);
  // Only one newline is stripped: "abc\n" is a different key.
  CommandResult two = Ctl({"hash-key"}, "abc\n\n");
  EXPECT_NE(two.out, kAbc);
  for (const std::string empty : {"", "\n"}) {
    CommandResult r = Ctl({"hash-key"}, empty);
    EXPECT_EQ(r.exit_code, 65);
    EXPECT_EQ(r.out, "");
    EXPECT_THAT(r.err, HasSubstr("empty"));
  }
  // No server is needed.
  absl::StatusOr<CommandResult> offline =
      RunCommand({VERDICTCTL_BIN, "--server=127.0.0.1:1", "hash-key"}, "abc\n");
  ASSERT_TRUE(offline.ok());
  EXPECT_EQ(offline->out, kAbc);
}

}  // namespace
}  // namespace verdictd::testing
