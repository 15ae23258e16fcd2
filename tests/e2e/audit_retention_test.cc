// End-to-end retention: with --history_retention, verdicts, clicks and usage rows older than the
// retention are pruned at start-up, and what remains is still served.

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::audit {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// The injected-clock side of pruning (what is old relative to "now", the batch loop, the
// every-minute schedule) is covered in server/engine/engine_test.cc
// (EngineTest.RetentionPrunesWithTheInjectedClock); this checks the real binary, flag and schema.
class RetentionTest : public ::testing::Test {
 protected:
  void StartVerdictd(const std::string& retention) {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(
        dir_, sim_.url(), kToken, std::vector<std::string>{"--history_retention=" + retention});
  }

  // Rows for `caller`, `days_ago` days back: a verdict for `ip`, its click, and usage counters.
  void InsertOldRows(const std::string& caller, const std::string& ip, int days_ago) {
    const int64_t at = absl::ToUnixMicros(absl::Now()) - days_ago * kMicrosPerDay;
    const int64_t day = at / kMicrosPerDay;
    // The usage table may carry per-day click counters next to the ledger (a later schema);
    // fill them too if so, so that GetUsage shows the click either way.
    const bool counters =
        QueryInt(db_path(), "SELECT count(*) FROM pragma_table_info('usage') WHERE name='clicks'") >
        0;
    Exec(db_path(),
         absl::StrCat(
             "BEGIN;"
             "INSERT INTO clicks(caller, ip, requested_at_us, completed_at_us, outcome, "
             "http_status) VALUES ('",
             caller, "', '", ip, "', ", at, ", ", at + 1000, ", 1, 200);",
             "INSERT INTO verdicts(ip, user_agent, score, proxy, tor, vpn, crawler, bot, "
             "checked_at_us, caller, raw_body, click_id) VALUES ('",
             ip, "', '', 3, 1, 0, 0, 0, 0, ", at + 1000, ", '", caller,
             "', x'', last_insert_rowid());",
             counters ? absl::StrCat("INSERT INTO usage(caller, day, cache_hits, requests, clicks) "
                                     "VALUES ('",
                                     caller, "', ", day, ", 3, 5, 1);")
                      : absl::StrCat("INSERT INTO usage(caller, day, cache_hits, requests) "
                                     "VALUES ('",
                                     caller, "', ", day, ", 3, 5);"),
             "COMMIT;"));
  }

  std::string db_path() const { return dir_.File("verdicts.db"); }

  TempDir dir_;
  Simulator sim_{dir_, kToken};
  std::unique_ptr<Verdictd> verdictd_;
};

TEST_F(RetentionTest, RowsOlderThanRetentionArePrunedAtStartUp) {
  StartVerdictd("0");
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "recent").ok());
  EXPECT_EQ(verdictd_->Stop(), 0);
  InsertOldRows("ancient", "8.8.8.8", 500);
  InsertOldRows("keeper", "8.8.8.8", 300);

  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  const int64_t cutoff_us = now_us - 400 * kMicrosPerDay;
  auto history_callers = [&] {
    pb::ListVerdictHistoryRequest request;
    request.set_ip("8.8.8.8");
    pb::ListVerdictHistoryResponse response;
    EXPECT_TRUE(verdictd_->stub()
                    .ListVerdictHistory(CallerContext("auditor").get(), request, &response)
                    .ok());
    std::vector<std::string> callers;
    for (const pb::Verdict& v : response.verdicts()) {
      callers.push_back(v.caller());
    }
    return callers;
  };
  auto usage_since = [&](int64_t since_us) {
    pb::GetUsageRequest request;
    *request.mutable_since() = TimestampFromMicros(since_us);
    pb::GetUsageResponse response;
    EXPECT_TRUE(
        verdictd_->stub().GetUsage(CallerContext("auditor").get(), request, &response).ok());
    return response;
  };
  const int64_t since_us = now_us - 600 * kMicrosPerDay;

  // With retention off, the old rows are visible: they are well-formed history.
  StartVerdictd("0");
  EXPECT_THAT(history_callers(), ElementsAreArray({"recent", "keeper", "ancient"}));
  pb::GetUsageResponse usage = usage_since(since_us);
  ASSERT_NE(FindCaller(usage, "ancient"), nullptr);
  EXPECT_EQ(FindCaller(usage, "ancient")->clicks(), 1);
  EXPECT_EQ(FindCaller(usage, "ancient")->requests(), 5);
  EXPECT_EQ(verdictd_->Stop(), 0);

  StartVerdictd("400d");
  const std::string old_rows =
      absl::StrCat("SELECT (SELECT count(*) FROM verdicts WHERE checked_at_us < ", cutoff_us,
                   ") + (SELECT count(*) FROM clicks WHERE requested_at_us < ", cutoff_us,
                   ") + (SELECT count(*) FROM usage WHERE day < ", cutoff_us / kMicrosPerDay, ")");
  EXPECT_TRUE(WaitUntil(
      "no rows older than 400 days", [&] { return QueryInt(db_path(), old_rows); },
      [](int64_t rows) { return rows == 0; }, absl::Seconds(10), absl::Milliseconds(10)))
      << "rows older than 400 days are still there";
  EXPECT_EQ(QueryInt(db_path(), "SELECT count(*) FROM verdicts"), 2);
  EXPECT_EQ(QueryInt(db_path(), "SELECT count(*) FROM clicks"), 2);
  EXPECT_EQ(QueryInt(db_path(), "SELECT count(*) FROM clicks WHERE caller='keeper'"), 1);
  EXPECT_EQ(QueryInt(db_path(), "SELECT count(*) FROM usage WHERE caller='ancient'"), 0);
  EXPECT_EQ(QueryInt(db_path(), "SELECT count(*) FROM usage WHERE caller='keeper'"), 1);

  EXPECT_THAT(history_callers(), ElementsAreArray({"recent", "keeper"}));
  usage = usage_since(since_us);
  EXPECT_EQ(FindCaller(usage, "ancient"), nullptr);
  ASSERT_NE(FindCaller(usage, "keeper"), nullptr);
  EXPECT_EQ(FindCaller(usage, "keeper")->clicks(), 1);
  ASSERT_NE(FindCaller(usage, "recent"), nullptr);
  EXPECT_EQ(FindCaller(usage, "recent")->clicks(), 1);
  EXPECT_THAT(verdictd_->Log(), HasSubstr("retention: pruned"));
}

}  // namespace
}  // namespace verdictd::testing::audit
