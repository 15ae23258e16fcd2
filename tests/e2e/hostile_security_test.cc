// End-to-end security: auth bypass attempts in keyed mode are refused and spend nothing, the usage
// caller is checked before the permission check, secrets never appear in logs, metrics, error
// messages or the database, and the files verdictd trusts are owner-only (the database is created
// so, a writable keys file is refused).

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/e2e/hostile_fixture.h"
#include "tests/support/process.h"

namespace verdictd::testing::hostile {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Sha256Hex(const std::string& text) {
  absl::StatusOr<CommandResult> result = RunCommand({"/usr/bin/sha256sum"}, text);
  EXPECT_TRUE(result.ok() && result->exit_code == 0);
  return result.ok() ? result->out.substr(0, 64) : std::string();
}

// Writes a keys file for alice, bob (budget 100) and an auditor, with `mode`.
std::string WriteKeysFile(const TempDir& dir, mode_t mode) {
  const std::string path = dir.File("keys.txt");
  {
    std::ofstream out(path, std::ios::trunc);
    out << "# caller sha256 budget role\n"
        << "alice " << Sha256Hex(kAliceKey) << "\n"
        << "bob " << Sha256Hex(kBobKey) << " 100\n"
        << "audit " << Sha256Hex(kAuditorKey) << " - auditor\n";
  }
  chmod(path.c_str(), mode);
  return path;
}

class SecurityKeyedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keys_ = WriteKeysFile(dir_, 0600);
    verdictd_ = std::make_unique<Verdictd>(
        dir_, sim_.url(), kToken,
        std::vector<std::string>{"--api_keys_file=" + keys_, "--metrics_listen=127.0.0.1:0"});
  }

  grpc::Status Check(const Metadata& metadata, const std::string& ip,
                     pb::CheckIpResponse* out = nullptr) {
    pb::CheckIpRequest request;
    request.set_ip(ip);
    pb::CheckIpResponse ignored;
    grpc::Status status =
        verdictd_->stub().CheckIp(Context(metadata).get(), request, out ? out : &ignored);
    messages_.push_back(status.error_message());
    return status;
  }
  grpc::Status Usage(const Metadata& metadata, const std::string& caller,
                     pb::GetUsageResponse* out = nullptr) {
    pb::GetUsageRequest request;
    request.set_caller(caller);
    pb::GetUsageResponse ignored;
    grpc::Status status =
        verdictd_->stub().GetUsage(Context(metadata).get(), request, out ? out : &ignored);
    messages_.push_back(status.error_message());
    return status;
  }

  TempDir dir_;
  Simulator sim_{dir_, kToken};
  std::string keys_;
  std::unique_ptr<Verdictd> verdictd_;
  std::vector<std::string> messages_;  // every status message seen
};

TEST_F(SecurityKeyedTest, BypassAttemptsAreRefusedAndSpendNothing) {
  const Metadata alice = {{"authorization", absl::StrCat("Bearer ", kAliceKey)}};
  pb::CheckIpResponse r;
  ASSERT_TRUE(Check(alice, "8.8.8.8", &r).ok());
  EXPECT_EQ(r.verdict().caller(), "alice");
  const int64_t sent = sim_.Requests();
  ASSERT_EQ(sent, 1);

  struct Attempt {
    std::string name;
    Metadata metadata;
  };
  const std::vector<Attempt> attempts = {
      {"NoAuthorization", {}},
      {"XCallerOnly", {{"x-caller", "alice"}}},
      {"EmptyAuthorization", {{"authorization", ""}}},
      {"EmptyBearer", {{"authorization", "Bearer "}}},
      {"BearerWithoutSpace", {{"authorization", "Bearer"}}},
      {"BearerTrailingSpacesOnly", {{"authorization", "Bearer      "}}},
      {"Basic", {{"authorization", "Basic YWxpY2U6cGFzc3dvcmQ="}}},
      {"BasicWithAliceKey", {{"authorization", absl::StrCat("Basic ", kAliceKey)}}},
      {"KeyWithoutScheme", {{"authorization", kAliceKey}}},
      {"BearerNoSpaceBeforeKey", {{"authorization", absl::StrCat("Bearer", kAliceKey)}}},
      {"UnknownKey", {{"authorization", "Bearer vk_guess_0000000000000000"}}},
      {"KeyPrefix", {{"authorization", absl::StrCat("Bearer ", std::string(kAliceKey, 10))}}},
      {"KeyWithSuffix", {{"authorization", absl::StrCat("Bearer ", kAliceKey, "x")}}},
      {"KeyHashInsteadOfKey", {{"authorization", absl::StrCat("Bearer ", Sha256Hex(kAliceKey))}}},
      {"OversizedKey", {{"authorization", absl::StrCat("Bearer ", std::string(4000, 'k'))}}},
  };
  for (const Attempt& attempt : attempts) {
    SCOPED_TRACE(attempt.name);
    grpc::Status status = Check(attempt.metadata, "1.1.1.1");
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    status = Usage(attempt.metadata, "alice");
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    EXPECT_THAT(status.error_message(), Not(HasSubstr(kAliceKey)));
  }
  EXPECT_EQ(sim_.Requests(), sent) << "an unauthenticated call never spends a click";

  // x-caller is ignored in keyed mode: alice cannot pass for bob.
  ASSERT_TRUE(Check({{"authorization", absl::StrCat("Bearer ", kAliceKey)}, {"x-caller", "bob"}},
                    "9.9.9.9", &r)
                  .ok());
  EXPECT_EQ(r.verdict().caller(), "alice");

  // Reading someone else's usage, or everyone's, needs the auditor role.
  grpc::Status status = Usage(alice, "bob");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  status = Usage(alice, "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  status =
      Usage({{"authorization", absl::StrCat("Bearer ", kAliceKey)}, {"x-caller", "audit"}}, "bob");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  pb::GetUsageResponse own;
  ASSERT_TRUE(Usage(alice, "alice", &own).ok());
  ASSERT_EQ(own.callers_size(), 1);
  EXPECT_EQ(own.callers(0).clicks(), 2);
  pb::GetUsageResponse all;
  ASSERT_TRUE(Usage({{"authorization", absl::StrCat("Bearer ", kAuditorKey)}}, "", &all).ok());
  EXPECT_GE(all.callers_size(), 1);
}

// GetUsage.caller is checked before the permission check, for auditors and everyone else: a
// non-auditor asking for a 3 MB caller used to get a 3 MB PERMISSION_DENIED echoing it raw (and
// from 8 KB on, RESOURCE_EXHAUSTED from the client's metadata limit instead of any real code).
TEST_F(SecurityKeyedTest, UsageCallerIsCheckedBeforeThePermissionCheck) {
  const Metadata alice = {{"authorization", absl::StrCat("Bearer ", kAliceKey)}};
  const Metadata auditor = {{"authorization", absl::StrCat("Bearer ", kAuditorKey)}};
  const std::vector<std::string> invalid = {
      std::string(100 << 10, 'z'),
      std::string(3 << 20, 'z'),
      std::string(129, 'b'),
      "bob\nINFO:forged-line",
      std::string("bob\0", 4),
      "bob\x1b[2J",
      "has space",
      "caf\xc3\xa9",
  };
  for (const Metadata* who : {&alice, &auditor}) {
    for (const std::string& caller : invalid) {
      SCOPED_TRACE(absl::StrCat(who == &alice ? "alice: " : "auditor: ", caller.size(), " bytes"));
      grpc::Status status = Usage(*who, caller);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
      EXPECT_EQ(status.error_message(), "caller must be 1-128 printable ASCII characters");
      EXPECT_LT(status.error_message().size(), 200u);
      if (caller.size() == (3u << 20) && who == &alice) {
        std::printf("[ observed ] 3 MB caller from a non-auditor: %d, %zu-byte message\n",
                    static_cast<int>(status.error_code()), status.error_message().size());
      }
    }
  }
  // A valid name still meets the permission check, whose refusal quotes it escaped and cut.
  grpc::Status status = Usage(alice, std::string(128, 'b'));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_EQ(status.error_message(),
            absl::StrCat("caller \"alice\" may read only its own usage, not that of \"",
                         std::string(64, 'b'), "\"..."));
  EXPECT_LT(status.error_message().size(), 200u);
  status = Usage(alice, "bob");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_EQ(status.error_message(),
            "caller \"alice\" may read only its own usage, not that of \"bob\"");
  pb::GetUsageResponse own;
  ASSERT_TRUE(Usage(alice, "alice", &own).ok());
  EXPECT_EQ(sim_.Requests(), 0) << "no call here spends a click";
}

TEST_F(SecurityKeyedTest, SecretsNeverAppearInLogsMetricsMessagesOrTheDatabase) {
  const Metadata alice = {{"authorization", absl::StrCat("Bearer ", kAliceKey)}};
  const Metadata bob = {{"authorization", absl::StrCat("Bearer ", kBobKey)}};
  pb::CheckIpResponse r;
  ASSERT_TRUE(Check(alice, "8.8.8.8", &r).ok());
  ASSERT_TRUE(Check(bob, "8.8.8.8", &r).ok());  // a hit
  for (const char* mode : {"5xx", "garbage", "unauthorized", "redirect", "exhausted"}) {
    sim_.Configure({{"mode", mode}});
    EXPECT_FALSE(Check(bob, absl::StrCat("11.10.0.", messages_.size()), &r).ok()) << mode;
  }
  sim_.Configure({{"mode", "ok"}});
  Check({{"authorization", absl::StrCat("Bearer ", kAliceKey, "-wrong")}}, "1.1.1.1");
  Usage(alice, "bob");
  Usage(bob, "");
  pb::ListVerdictHistoryRequest history;
  history.set_ip("8.8.8.8");
  history.set_page_token(kToken);
  pb::ListVerdictHistoryResponse page;
  messages_.push_back(
      verdictd_->stub().ListVerdictHistory(Context(alice).get(), history, &page).error_message());

  const int port = MetricsPort(verdictd_->Log());
  ASSERT_GT(port, 0) << verdictd_->Log();
  httplib::Client client("127.0.0.1", port);
  httplib::Result metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics && metrics->status == 200);
  EXPECT_THAT(metrics->body, HasSubstr("verdictd_"));
  ASSERT_EQ(verdictd_->Stop(), 0);

  const std::string db = verdictd_->db_path();
  struct Place {
    std::string name;
    std::string text;
  };
  std::vector<Place> places = {
      {"log", verdictd_->Log()},
      {"metrics", metrics->body},
      {"db", ReadFileOrEmpty(db)},
      {"db-wal", ReadFileOrEmpty(db + "-wal")},
      {"db-shm", ReadFileOrEmpty(db + "-shm")},
  };
  for (size_t i = 0; i < messages_.size(); ++i) {
    places.push_back({absl::StrCat("message ", i), messages_[i]});
  }
  ASSERT_GT(places[2].text.size(), 0u);
  for (const Place& place : places) {
    for (const char* secret : {kToken, kAliceKey, kBobKey, kAuditorKey}) {
      EXPECT_THAT(place.text, Not(HasSubstr(secret))) << place.name;
    }
  }
}

TEST(SecurityFilesTest, DatabaseIsCreatedOwnerOnlyWhateverTheUmask) {
  TempDir dir;
  Simulator sim(dir, kToken);
  const mode_t old_umask = umask(0);  // the child inherits it: a careless create would be 0666
  std::unique_ptr<Verdictd> verdictd;
  try {
    verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
  } catch (...) {
    umask(old_umask);
    throw;
  }
  umask(old_umask);
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd->stub(), "8.8.8.8", &r).ok());
  for (const char* suffix : {"", "-wal", "-shm"}) {
    SCOPED_TRACE(suffix);
    struct stat st {};
    ASSERT_EQ(stat((verdictd->db_path() + suffix).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600u);
  }
}

TEST(SecurityFilesTest, WritableKeysFileIsRefusedAtStartUp) {
  for (mode_t mode : {0660, 0620, 0606, 0666}) {
    SCOPED_TRACE(mode);
    TempDir dir;
    const std::string keys = WriteKeysFile(dir, mode);
    const std::string log = dir.File("verdictd.log");
    absl::StatusOr<std::unique_ptr<ChildProcess>> process =
        ChildProcess::Start({VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + dir.File("v.db"),
                             "--upstream_url=http://127.0.0.1:9/", "--api_keys_file=" + keys},
                            {{"CLICKPATROL_TOKEN", kToken}}, log);
    ASSERT_TRUE(process.ok());
    absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
    ASSERT_TRUE(code.ok()) << "verdictd started with a writable keys file";
    EXPECT_EQ(*code, 2);
    const std::string text = ReadFileOrEmpty(log);
    EXPECT_THAT(text, HasSubstr("group- or world-writable"));
    EXPECT_THAT(text, HasSubstr(keys));
    EXPECT_THAT(text, HasSubstr("chmod go-w"));
  }
  // The same file owner-only is accepted (so the refusals above were about the mode).
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, {"--api_keys_file=" + WriteKeysFile(dir, 0640)});
  pb::GetServerInfoResponse info;
  ASSERT_TRUE(
      verdictd.stub()
          .GetServerInfo(Context({{"authorization", absl::StrCat("Bearer ", kBobKey)}}).get(),
                         pb::GetServerInfoRequest(), &info)
          .ok());
  EXPECT_TRUE(info.keyed());
  EXPECT_EQ(info.caller(), "bob");
}

}  // namespace
}  // namespace verdictd::testing::hostile
