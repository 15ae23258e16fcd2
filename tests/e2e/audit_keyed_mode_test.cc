// End-to-end keyed mode: API keys name the caller (x-caller is ignored), missing or wrong keys
// are refused before anything is spent, usage is visible to its own caller or an auditor only,
// and a malformed or loose keys file stops start-up. Against the real verdictd binary and the
// simulated ClickPatrol.

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth/api_keys.h"
#include "tests/e2e/audit_fixture.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::audit {
namespace {

using ::testing::HasSubstr;

class KeyedModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keys_path_ = dir_.File("api_keys");
    WriteFile(keys_path_,
              "# caller  sha256(key)  [budget|-]  [auditor]\n" + KeysFileLine("alice", kAliceKey) +
                  KeysFileLine("bob", kBobKey, "5") + KeysFileLine("audit", kAuditKey, "- auditor"),
              0600);
    verdictd_ = std::make_unique<Verdictd>(
        dir_, sim_.url(), kToken, std::vector<std::string>{"--api_keys_file=" + keys_path_});
  }

  // Runs verdictd to completion with `keys_path` (it must refuse to start).
  CommandResult RunWithKeysFile(const std::string& keys_path) {
    absl::StatusOr<CommandResult> result =
        RunCommand({VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + dir_.File("refused.db"),
                    "--upstream_url=" + sim_.url(), "--api_keys_file=" + keys_path},
                   "", {{"CLICKPATROL_TOKEN", kToken}}, absl::Seconds(20));
    EXPECT_TRUE(result.ok()) << "verdictd did not exit: " << result.status();
    return result.ok() ? *result : CommandResult{};
  }

  TempDir dir_;
  Simulator sim_{dir_, kToken};
  std::string keys_path_;
  std::unique_ptr<Verdictd> verdictd_;
};

TEST_F(KeyedModeTest, MissingWrongOrEmptyKeysAreUnauthenticated) {
  pb::CheckIpRequest request;
  request.set_ip("8.8.8.8");
  const std::vector<std::pair<std::string, std::optional<std::string>>> cases = {
      {"no authorization", std::nullopt},
      {"x-caller only", std::nullopt},
      {"wrong key", "Bearer vk_not_a_key_at_all"},
      {"another caller's hash as the key", "Bearer " + HashApiKeyHex(kAliceKey)},
      {"empty bearer", "Bearer "},
      {"scheme only", "Bearer"},
      {"no scheme", kAliceKey},
      {"basic scheme", absl::StrCat("Basic ", kAliceKey)},
  };
  for (const auto& [name, authorization] : cases) {
    SCOPED_TRACE(name);
    pb::CheckIpResponse response;
    grpc::Status status = verdictd_->stub().CheckIp(
        AuthContext(authorization, name == "x-caller only" ? "alice" : "").get(), request,
        &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    EXPECT_THAT(status.error_message(), ::testing::Not(HasSubstr(kAliceKey)));

    pb::GetUsageResponse usage;
    status =
        verdictd_->stub().GetUsage(AuthContext(authorization).get(), pb::GetUsageRequest(), &usage);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    pb::ListVerdictHistoryRequest history_request;
    history_request.set_ip("8.8.8.8");
    pb::ListVerdictHistoryResponse history;
    status = verdictd_->stub().ListVerdictHistory(AuthContext(authorization).get(), history_request,
                                                  &history);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(sim_.Requests(), 0) << "an unauthenticated call must never spend a click";
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks"), 0);
}

TEST_F(KeyedModeTest, TheKeyNamesTheCallerAndXCallerIsIgnored) {
  pb::CheckIpResponse response;
  grpc::Status status = KeyedCheck(verdictd_->stub(), kAliceKey, "8.8.8.8", &response, "mallory");
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.source(), pb::SOURCE_UPSTREAM);
  EXPECT_TRUE(response.click_spent());
  EXPECT_EQ(response.verdict().caller(), "alice");
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks WHERE caller='alice'"), 1);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks WHERE caller='mallory'"),
            0);

  // The scheme is case-insensitive.
  pb::CheckIpRequest request;
  request.set_ip("8.8.8.8");
  status = verdictd_->stub().CheckIp(AuthContext(absl::StrCat("bearer ", kBobKey)).get(), request,
                                     &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.source(), pb::SOURCE_CACHE);
  EXPECT_EQ(response.verdict().caller(), "alice") << "the verdict names who paid for it";

  pb::GetServerInfoResponse info;
  status = verdictd_->stub().GetServerInfo(KeyContext(kBobKey, "mallory").get(),
                                           pb::GetServerInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(info.keyed());
  EXPECT_EQ(info.caller(), "bob");
  EXPECT_EQ(sim_.Requests(), 1);
}

TEST_F(KeyedModeTest, UsageIsOwnOnlyExceptForAuditors) {
  pb::CheckIpResponse response;
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kAliceKey, "8.8.8.8", &response).ok());
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kBobKey, "8.8.8.8", &response).ok());  // a hit
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kBobKey, "1.1.1.1", &response).ok());  // a miss

  pb::GetUsageResponse usage;
  grpc::Status status = KeyedUsage(verdictd_->stub(), kAliceKey, "", &usage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  status = KeyedUsage(verdictd_->stub(), kAliceKey, "bob", &usage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  status = KeyedUsage(verdictd_->stub(), kAliceKey, "audit", &usage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // x-caller does not lend alice bob's rights either.
  pb::GetUsageRequest as_bob;
  as_bob.set_caller("bob");
  status = verdictd_->stub().GetUsage(KeyContext(kAliceKey, "bob").get(), as_bob, &usage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);

  usage.Clear();
  status = KeyedUsage(verdictd_->stub(), kAliceKey, "alice", &usage);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).caller(), "alice");
  EXPECT_EQ(usage.callers(0).clicks(), 1);
  EXPECT_EQ(usage.callers(0).cache_hits(), 0);
  EXPECT_EQ(usage.callers(0).requests(), 1);
  EXPECT_EQ(usage.callers(0).monthly_budget(), 0) << "alice has no budget";

  usage.Clear();
  status = KeyedUsage(verdictd_->stub(), kBobKey, "bob", &usage);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).clicks(), 1);
  EXPECT_EQ(usage.callers(0).cache_hits(), 1);
  EXPECT_EQ(usage.callers(0).requests(), 2);
  EXPECT_EQ(usage.callers(0).monthly_budget(), 5);
  EXPECT_EQ(usage.callers(0).budget_left(), 4);

  usage.Clear();
  status = KeyedUsage(verdictd_->stub(), kAuditKey, "", &usage);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const pb::CallerUsage* alice = FindCaller(usage, "alice");
  const pb::CallerUsage* bob = FindCaller(usage, "bob");
  ASSERT_NE(alice, nullptr);
  ASSERT_NE(bob, nullptr);
  EXPECT_EQ(alice->clicks(), 1);
  EXPECT_EQ(bob->clicks(), 1);
  EXPECT_EQ(bob->cache_hits(), 1);
  std::vector<std::string> names;
  for (const pb::CallerUsage& c : usage.callers()) {
    names.push_back(c.caller());
  }
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end())) << "callers are sorted";

  usage.Clear();
  status = KeyedUsage(verdictd_->stub(), kAuditKey, "bob", &usage);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).caller(), "bob");
}

TEST_F(KeyedModeTest, MalformedKeysFileStopsStartUpNamingTheLine) {
  const std::string bad = dir_.File("bad_keys");
  WriteFile(bad,
            KeysFileLine("alice", kAliceKey) + "# a comment\n" + "carol not-a-sha256-hash\n" +
                KeysFileLine("dave", kBobKey),
            0600);
  CommandResult result = RunWithKeysFile(bad);
  EXPECT_NE(result.exit_code, 0);
  EXPECT_THAT(result.out + result.err, HasSubstr("line 3"));

  // A writable-by-others file is refused even when every line is well formed.
  const std::string loose = dir_.File("loose_keys");
  WriteFile(loose, KeysFileLine("alice", kAliceKey), 0666);
  result = RunWithKeysFile(loose);
  EXPECT_NE(result.exit_code, 0);
  EXPECT_THAT(result.out + result.err, HasSubstr("writable"));

  result = RunWithKeysFile(dir_.File("no_such_keys_file"));
  EXPECT_NE(result.exit_code, 0);
}

}  // namespace
}  // namespace verdictd::testing::audit
