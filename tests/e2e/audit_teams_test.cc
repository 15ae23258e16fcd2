// End-to-end teams (issue 14, part 3): a team budget is shared by its callers and never overshot
// under concurrency; a team lead reads its team's usage and clicks (a member only its own, an
// auditor everything); a reload moves a caller between teams without a restart. Against the
// real verdictd binary, a SQLite file in a temp dir and the simulated ClickPatrol.

#include <signal.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"
#include "tests/support/wait_until.h"

namespace verdictd::testing::audit {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kAdsKey[] = "vk_ads_0c5e9a71b3d2f846";
constexpr char kWebKey[] = "vk_web_8d1f3b60a9c7e254";
constexpr char kLeadKey[] = "vk_lead_4a7e2c90f1b6d358";
constexpr char kSoloKey[] = "vk_solo_e69b04d2c8a1f735";
constexpr int kTeamBudget = 10;

// growth: ads and web share 10 clicks a month, led by `lead`; solo is in no team.
std::string KeysFile(bool solo_in_growth = false) {
  return absl::StrCat("@growth ", kTeamBudget, "\n",                         //
                      KeysFileLine("ads", kAdsKey, "- team=growth"),         //
                      KeysFileLine("web", kWebKey, "- team=growth"),         //
                      KeysFileLine("lead", kLeadKey, "- lead team=growth"),  //
                      KeysFileLine("solo", kSoloKey, solo_in_growth ? "- team=growth" : ""),
                      KeysFileLine("audit", kAuditKey, "- auditor"));
}

class TeamsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keys_path_ = dir_.File("api_keys");
    WriteFile(keys_path_, KeysFile(), 0600);
    StartVerdictd();
  }
  void StartVerdictd() {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(
        dir_, sim_.url(), kToken, std::vector<std::string>{"--api_keys_file=" + keys_path_});
  }

  grpc::Status TeamUsage(const std::string& key, const std::string& team,
                         pb::GetUsageResponse* response) {
    pb::GetUsageRequest request;
    request.set_team(team);
    return verdictd_->stub().GetUsage(KeyContext(key).get(), request, response);
  }

  // Sends SIGHUP and waits for the reload's line in the log; what the log says since.
  std::string Reload() {
    const std::string before = verdictd_->Log();
    EXPECT_EQ(kill(verdictd_->pid(), SIGHUP), 0);
    EXPECT_TRUE(WaitUntil(
        "the reload in the log",
        [&] {
          const std::string log = verdictd_->Log();
          return log.size() > before.size() &&
                 absl::StrContains(log.substr(before.size()), "configuration reloaded:");
        },
        absl::Seconds(10)));
    const std::string log = verdictd_->Log();
    return log.size() > before.size() ? log.substr(before.size()) : "";
  }

  TempDir dir_;
  // Latency so that the concurrent misses really overlap at the budget check.
  Simulator sim_{dir_, kToken, {"--latency=50ms"}};
  std::string keys_path_;
  std::unique_ptr<Verdictd> verdictd_;
};

TEST_F(TeamsTest, ATeamBudgetOf10AcrossTwoCallersSpendsExactly10UnderConcurrency) {
  constexpr int kMisses = 32;
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int i = 0; i < 8; ++i) {
    stubs.push_back(verdictd_->NewStub());
  }
  std::vector<grpc::Status> statuses(kMisses);
  std::vector<pb::CheckIpResponse> responses(kMisses);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kMisses; ++i) {
    threads.emplace_back([&, i] {
      // Start together, so the team budget is contended rather than used up by the first ones.
      ready.fetch_add(1);
      while (ready.load() < kMisses) {
        std::this_thread::yield();
      }
      statuses[i] = KeyedCheck(*stubs[i % stubs.size()], i % 2 == 0 ? kAdsKey : kWebKey,
                               absl::StrCat("11.30.0.", i + 1), &responses[i]);
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  int paid = 0;
  std::set<std::string> payers;
  for (int i = 0; i < kMisses; ++i) {
    if (statuses[i].ok()) {
      EXPECT_TRUE(responses[i].click_spent());
      payers.insert(responses[i].verdict().caller());
      ++paid;
    } else {
      EXPECT_EQ(statuses[i].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << statuses[i].error_message();
      EXPECT_EQ(statuses[i].error_message(),
                "team growth has spent its monthly budget of 10 clicks");
    }
  }
  EXPECT_EQ(paid, kTeamBudget);
  EXPECT_EQ(payers, (std::set<std::string>{"ads", "web"})) << "both callers drew on it";
  EXPECT_EQ(sim_.Requests(), kTeamBudget);
  EXPECT_GT(sim_.Stats().at("max_in_flight").get<int64_t>(), 1) << "the misses did not overlap";
  EXPECT_EQ(QueryInt(verdictd_->db_path(),
                     "SELECT count(*) FROM clicks WHERE caller IN ('ads','web') AND outcome != 3"),
            kTeamBudget);

  // The lead sees the team spent, its callers beneath.
  pb::GetUsageResponse usage;
  ASSERT_TRUE(TeamUsage(kLeadKey, "growth", &usage).ok());
  ASSERT_EQ(usage.teams_size(), 1);
  EXPECT_EQ(usage.teams(0).team(), "growth");
  EXPECT_EQ(usage.teams(0).clicks(), kTeamBudget);
  EXPECT_EQ(usage.teams(0).monthly_budget(), kTeamBudget);
  EXPECT_EQ(usage.teams(0).budget_left(), 0);
  EXPECT_THAT(usage.teams(0).callers(), ElementsAre("ads", "lead", "web"));
  ASSERT_EQ(usage.callers_size(), 3);
  EXPECT_EQ(usage.callers(0).clicks() + usage.callers(2).clicks(), kTeamBudget);
  EXPECT_EQ(usage.callers(0).team(), "growth");

  // The budget lives in the ledger: a restart does not refill it. Callers outside the team are
  // not affected.
  EXPECT_EQ(verdictd_->Stop(), 0);
  StartVerdictd();
  pb::CheckIpResponse r;
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), kLeadKey, "11.30.1.1", &r).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED)
      << "the lead is a caller of the team too";
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kSoloKey, "11.30.1.2", &r).ok());
  EXPECT_TRUE(r.click_spent());
  EXPECT_EQ(sim_.Requests(), kTeamBudget + 1);
}

TEST_F(TeamsTest, ALeadReadsItsTeamAMemberItsOwnAndAnAuditorEverything) {
  pb::CheckIpResponse r;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kAdsKey, absl::StrCat("11.31.0.", i + 1), &r).ok());
    ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kWebKey, absl::StrCat("11.31.1.", i + 1), &r).ok());
  }
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kSoloKey, "11.31.2.1", &r).ok());

  pb::GetUsageResponse usage;
  grpc::Status status = TeamUsage(kAdsKey, "growth", &usage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(status.error_message(),
            "caller \"ads\" may read only its own usage, not that of team \"growth\"");
  status = KeyedUsage(verdictd_->stub(), kLeadKey, "solo", &usage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), HasSubstr("the lead of team \"growth\""));
  usage.Clear();
  ASSERT_TRUE(KeyedUsage(verdictd_->stub(), kLeadKey, "web", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).clicks(), 3);
  usage.Clear();
  ASSERT_TRUE(KeyedUsage(verdictd_->stub(), kAuditKey, "", &usage).ok());
  ASSERT_EQ(usage.teams_size(), 1);
  EXPECT_EQ(usage.teams(0).clicks(), 6);
  EXPECT_THAT(usage.teams(0).callers(), ElementsAre("ads", "web"));
  EXPECT_EQ(FindCaller(usage, "solo")->team(), "");
  status = TeamUsage(kAuditKey, "growht", &usage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "no caller of the keys file is in team \"growht\"");

  // The click audit of the team, in pages of 2, bound to the team.
  pb::ListClicksRequest request;
  request.set_team("growth");
  request.set_page_size(2);
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    request.set_page_token(token);
    pb::ListClicksResponse page;
    status = verdictd_->stub().ListClicks(KeyContext(kLeadKey).get(), request, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    for (const pb::Click& click : page.clicks()) {
      EXPECT_EQ(click.team(), "growth");
      EXPECT_NE(click.caller(), "solo");
      seen.push_back(click.ip());
    }
    token = page.next_page_token();
    ++pages;
    if (!token.empty()) {
      // The token is bound to the team: it pages no other listing.
      pb::ListClicksRequest other = request;
      other.set_team("");
      other.set_caller("ads");
      other.set_page_token(token);
      pb::ListClicksResponse refused;
      grpc::Status bound =
          verdictd_->stub().ListClicks(KeyContext(kAuditKey).get(), other, &refused);
      EXPECT_EQ(bound.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(bound.error_message(), HasSubstr("different request"));
    }
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen.size(), 6u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 6u) << "each click once";
  EXPECT_EQ(pages, 3);
  pb::ListClicksResponse page;
  request.set_page_token("");
  status = verdictd_->stub().ListClicks(KeyContext(kWebKey).get(), request, &page);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  request.set_caller("ads");
  status = verdictd_->stub().ListClicks(KeyContext(kAuditKey).get(), request, &page);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "give a caller or a team, not both");
  EXPECT_EQ(sim_.Requests(), 7) << "reading spends nothing";
}

TEST_F(TeamsTest, AReloadMovesACallerIntoTheTeamAndOutWithoutARestart) {
  pb::CheckIpResponse r;
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kSoloKey, "11.32.0.1", &r).ok());
  pb::GetUsageResponse usage;
  EXPECT_EQ(KeyedUsage(verdictd_->stub(), kLeadKey, "solo", &usage).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  WriteFile(keys_path_, KeysFile(/*solo_in_growth=*/true), 0600);
  EXPECT_THAT(Reload(),
              HasSubstr("5 callers with 5 keys in 1 team (0 added, 0 removed, 1 changed)"));
  usage.Clear();
  ASSERT_TRUE(KeyedUsage(verdictd_->stub(), kLeadKey, "solo", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).team(), "growth");
  usage.Clear();
  ASSERT_TRUE(TeamUsage(kLeadKey, "growth", &usage).ok());
  ASSERT_EQ(usage.teams_size(), 1);
  EXPECT_EQ(usage.teams(0).clicks(), 1) << "solo's click now counts for the team";
  EXPECT_EQ(usage.teams(0).budget_left(), kTeamBudget - 1);

  // And out again: its click leaves with it.
  WriteFile(keys_path_, KeysFile(/*solo_in_growth=*/false), 0600);
  Reload();
  EXPECT_EQ(KeyedUsage(verdictd_->stub(), kLeadKey, "solo", &usage).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  usage.Clear();
  ASSERT_TRUE(TeamUsage(kLeadKey, "growth", &usage).ok());
  ASSERT_EQ(usage.teams_size(), 1);
  EXPECT_EQ(usage.teams(0).clicks(), 0);
  EXPECT_EQ(usage.teams(0).budget_left(), kTeamBudget);
}

}  // namespace
}  // namespace verdictd::testing::audit
