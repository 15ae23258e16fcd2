// End-to-end: the real verdictctl's audit listings against the real verdictd and the simulated
// ClickPatrol: `clicks` as a table, JSON lines and CSV, with its filters and --limit, and
// `history --csv`; CSV that a spreadsheet reads back exactly and cannot run as formulas.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kToken[] = "cp_CliAuditToken_51d0";

std::vector<std::string> Lines(const std::string& text, absl::string_view separator = "\n") {
  std::vector<std::string> lines = absl::StrSplit(text, separator);
  if (!lines.empty() && lines.back().empty()) {
    lines.pop_back();
  }
  return lines;
}

// A minimal RFC 4180 reader for one record: quoted cells may hold commas and doubled quotes.
std::vector<std::string> CsvCells(const std::string& record) {
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (size_t i = 0; i < record.size(); ++i) {
    const char c = record[i];
    if (quoted) {
      if (c == '"' && i + 1 < record.size() && record[i + 1] == '"') {
        cells.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cells.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      cells.emplace_back();
    } else {
      cells.back() += c;
    }
  }
  return cells;
}

class VerdictctlAuditTest : public ::testing::Test {
 protected:
  CommandResult Ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {VERDICTCTL_BIN,
                                     absl::StrCat("--server=127.0.0.1:", verdictd_.port())};
    argv.insert(argv.end(), args.begin(), args.end());
    absl::StatusOr<CommandResult> result = RunCommand(argv, "");
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult();
  }

  void SetUp() override {
    pb::CheckIpResponse response;
    ASSERT_TRUE(CheckIp(verdictd_.stub(), "8.8.8.8", &response, "ads", kFormulaAgent).ok());
    sim_.Configure({{"mode", "5xx"}});
    ASSERT_EQ(CheckIp(verdictd_.stub(), "1.1.1.1", &response, "signup").error_code(),
              grpc::StatusCode::UNAVAILABLE);
    sim_.Configure({{"mode", "ok"}});
    ASSERT_TRUE(CheckIp(verdictd_.stub(), "9.9.9.9", &response, "signup").ok());
    ASSERT_EQ(sim_.Requests(), 3);
  }

  // A user agent a spreadsheet would run as a formula, with a comma and quotes in it.
  static constexpr char kFormulaAgent[] = "=HYPERLINK(\"http://x\",\"y\")";

  TempDir dir_;
  Simulator sim_{dir_, kToken};
  Verdictd verdictd_{dir_, sim_.url(), kToken};
};

TEST_F(VerdictctlAuditTest, ClicksTableJsonAndCsvListTheLedgerNewestFirst) {
  CommandResult table = Ctl({"clicks"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  std::vector<std::string> lines = Lines(table.out);
  ASSERT_EQ(lines.size(), 4u) << table.out;
  EXPECT_THAT(std::vector<std::string>(absl::StrSplit(lines[0], ' ', absl::SkipEmpty())),
              ElementsAre("REQUESTED_AT", "CALLER", "TEAM", "IP", "OUTCOME", "HTTP", "LATENCY",
                          "SCORE", "ERROR"));
  // Open mode has no teams: the TEAM column says "-".
  EXPECT_THAT(lines[1], HasSubstr("signup  -     9.9.9.9  verdict  200"));
  EXPECT_THAT(lines[2], HasSubstr("signup  -     1.1.1.1  error    503"));
  EXPECT_THAT(lines[2], HasSubstr("ClickPatrol returned HTTP 503"));
  EXPECT_THAT(lines[3], HasSubstr("ads     -     8.8.8.8  verdict  200"));

  CommandResult json = Ctl({"clicks", "--json", "--caller=signup"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  std::vector<std::string> json_lines = Lines(json.out);
  ASSERT_EQ(json_lines.size(), 2u) << json.out;
  const nlohmann::json newest = nlohmann::json::parse(json_lines[0]);
  EXPECT_EQ(newest.at("ip"), "9.9.9.9");
  EXPECT_EQ(newest.at("outcome"), "CLICK_OUTCOME_VERDICT");
  EXPECT_EQ(newest.at("billed"), true);
  EXPECT_EQ(newest.at("verdict").at("ip"), "9.9.9.9");
  const nlohmann::json failed = nlohmann::json::parse(json_lines[1]);
  EXPECT_EQ(failed.at("outcome"), "CLICK_OUTCOME_ERROR");
  EXPECT_EQ(failed.at("httpStatus"), 503);
  EXPECT_FALSE(failed.contains("verdict"));

  CommandResult csv = Ctl({"clicks", "--csv"});
  ASSERT_EQ(csv.exit_code, 0) << csv.err;
  std::vector<std::string> records = Lines(csv.out, "\r\n");
  ASSERT_EQ(records.size(), 4u) << csv.out;
  EXPECT_THAT(CsvCells(records[0]),
              ElementsAre("id", "requested_at", "caller", "ip", "outcome", "billed", "http_status",
                          "latency_ms", "error", "completed_at", "score", "proxy", "tor", "vpn",
                          "crawler", "bot", "verdict_checked_at", "user_agent", "team"));
  const std::vector<std::string> error_row = CsvCells(records[2]);
  ASSERT_EQ(error_row.size(), 19u) << records[2];
  EXPECT_EQ(error_row[18], "") << "open mode has no teams";
  EXPECT_EQ(error_row[2], "signup");
  EXPECT_EQ(error_row[4], "error");
  EXPECT_EQ(error_row[6], "503");
  EXPECT_EQ(error_row[10], "") << "no verdict, no score";
  const std::vector<std::string> agent_row = CsvCells(records[3]);
  ASSERT_EQ(agent_row.size(), 19u) << records[3];
  EXPECT_EQ(agent_row[3], "8.8.8.8");
  EXPECT_EQ(agent_row[17], std::string("'") + kFormulaAgent)
      << "read back whole, and never a formula";

  // The IP as operand or --ip, --limit, and a usage error for both or for --json with --csv.
  CommandResult one = Ctl({"clicks", "8.8.8.8", "--json"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(Lines(one.out).size(), 1u);
  CommandResult limited = Ctl({"clicks", "--limit=2", "--page_size=1", "--json"});
  ASSERT_EQ(limited.exit_code, 0) << limited.err;
  EXPECT_EQ(Lines(limited.out).size(), 2u);
  EXPECT_EQ(Ctl({"clicks", "8.8.8.8", "--ip=1.1.1.1"}).exit_code, 64);
  EXPECT_EQ(Ctl({"clicks", "--json", "--csv"}).exit_code, 64);
  EXPECT_EQ(Ctl({"usage", "--csv"}).exit_code, 64);
  CommandResult bad = Ctl({"clicks", "not-an-ip"});
  EXPECT_EQ(bad.exit_code, 3) << "INVALID_ARGUMENT";
  EXPECT_EQ(sim_.Requests(), 3) << "listing spends nothing";
}

TEST_F(VerdictctlAuditTest, HistoryCsvHasAHeaderAndEveryVerdict) {
  CommandResult csv = Ctl({"history", "8.8.8.8", "--csv"});
  ASSERT_EQ(csv.exit_code, 0) << csv.err;
  std::vector<std::string> records = Lines(csv.out, "\r\n");
  ASSERT_EQ(records.size(), 2u) << csv.out;
  EXPECT_THAT(CsvCells(records[0]), ElementsAre("checked_at", "ip", "score", "proxy", "tor", "vpn",
                                                "crawler", "bot", "caller", "user_agent"));
  const std::vector<std::string> row = CsvCells(records[1]);
  ASSERT_EQ(row.size(), 10u) << records[1];
  EXPECT_EQ(row[1], "8.8.8.8");
  EXPECT_EQ(row[8], "ads");
  EXPECT_EQ(row[9], std::string("'") + kFormulaAgent);
  EXPECT_THAT(row[0], ::testing::MatchesRegex(
                          "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{6}Z"));
}

// In keyed mode verdictctl takes the key from $VERDICT_API_KEY or --api_key_file, never from a
// flag's value; each caller lists its own clicks and the auditor everyone's.
TEST(VerdictctlKeyedTest, TheKeyComesFromTheEnvironmentOrAFileAndDecidesWhoseClicks) {
  TempDir dir;
  Simulator sim(dir, kToken);
  const std::string keys = dir.File("api_keys");
  audit::WriteFile(keys,
                   audit::KeysFileLine("alice", audit::kAliceKey) +
                       audit::KeysFileLine("audit", audit::kAuditKey, "- auditor"),
                   0600);
  Verdictd verdictd(dir, sim.url(), kToken, {"--api_keys_file=" + keys});
  const std::string server = absl::StrCat("--server=127.0.0.1:", verdictd.port());
  auto ctl = [&](std::vector<std::string> args, std::map<std::string, std::string> env) {
    args.insert(args.begin(), {VERDICTCTL_BIN, server});
    absl::StatusOr<CommandResult> result = RunCommand(args, "", env, absl::Seconds(30));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult();
  };
  CommandResult check = ctl({"check", "8.8.8.8"}, {{"VERDICT_API_KEY", audit::kAliceKey}});
  ASSERT_EQ(check.exit_code, 0) << check.err;

  CommandResult own =
      ctl({"clicks", "--caller=alice", "--json"}, {{"VERDICT_API_KEY", audit::kAliceKey}});
  ASSERT_EQ(own.exit_code, 0) << own.err;
  ASSERT_EQ(Lines(own.out).size(), 1u) << own.out;
  EXPECT_EQ(nlohmann::json::parse(own.out).at("caller"), "alice");
  CommandResult everyone = ctl({"clicks"}, {{"VERDICT_API_KEY", audit::kAliceKey}});
  EXPECT_EQ(everyone.exit_code, 7) << "PERMISSION_DENIED: " << everyone.err;

  const std::string key_file = dir.File("audit.key");
  audit::WriteFile(key_file, std::string(audit::kAuditKey) + "\n", 0600);
  CommandResult audited = ctl({"clicks", "--api_key_file=" + key_file, "--json"}, {});
  ASSERT_EQ(audited.exit_code, 0) << audited.err;
  EXPECT_EQ(Lines(audited.out).size(), 1u);

  CommandResult wrong = ctl({"clicks", "--caller=alice"}, {{"VERDICT_API_KEY", "vk_wrong"}});
  EXPECT_EQ(wrong.exit_code, 16) << "UNAUTHENTICATED: " << wrong.err;
  CommandResult missing = ctl({"clicks", "--api_key_file=" + dir.File("none")}, {});
  EXPECT_EQ(missing.exit_code, 66) << missing.err;
  // A key given as a flag is refused before anything is sent, and never repeated.
  CommandResult flag = ctl({"clicks", std::string("--api_key=") + audit::kAliceKey}, {});
  EXPECT_EQ(flag.exit_code, 64);
  EXPECT_THAT(flag.err, HasSubstr("VERDICT_API_KEY"));
  EXPECT_THAT(flag.err, ::testing::Not(HasSubstr(audit::kAliceKey)));
  EXPECT_EQ(sim.Requests(), 1);
}

}  // namespace
}  // namespace verdictd::testing
