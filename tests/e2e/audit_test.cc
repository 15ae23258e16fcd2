// End-to-end audit and accounting: API keys, usage attribution, per-caller budgets, paged verdict
// history, retention pruning and the click ledger across crashes. All against the real verdictd
// binary, a SQLite file in a temp dir and the simulated ClickPatrol over loopback HTTP.

#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth/api_keys.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::AnyOf;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr char kToken[] = "cp_AuditSecretToken_3b8d0e6f21";

// API keys; the server only ever sees their SHA-256 hashes.
constexpr char kAliceKey[] = "vk_alice_5e0c1f77a2d94b38";
constexpr char kBobKey[] = "vk_bob_90b7d35c4e1a2f66";
constexpr char kAuditKey[] = "vk_audit_c41a8e2b7d90f513";
constexpr char kCappedKey[] = "vk_capped_2f6d9b01e8c7a435";
constexpr char kFreeKey[] = "vk_free_7a1c3e5b9d2f4068";

constexpr int64_t kMicrosPerDay = int64_t{86'400'000'000};

// Runs statements that return nothing, on a writable connection (verdictd must be stopped).
void Exec(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << (error == nullptr ? "" : error);
  sqlite3_free(error);
  sqlite3_close(db);
}

void WriteFile(const std::string& path, const std::string& content, mode_t mode) {
  {
    std::ofstream out(path, std::ios::trunc);
    out << content;
  }
  // Explicitly, whatever the umask: verdictd refuses group- or world-writable keys files.
  ASSERT_EQ(chmod(path.c_str(), mode), 0);
}

int64_t Micros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000 + t.nanos() / 1000;
}

google::protobuf::Timestamp TimestampFromMicros(int64_t micros) {
  google::protobuf::Timestamp t;
  int64_t seconds = micros / 1'000'000;
  int64_t rem = micros % 1'000'000;
  if (rem < 0) {
    --seconds;
    rem += 1'000'000;
  }
  t.set_seconds(seconds);
  t.set_nanos(static_cast<int32_t>(rem * 1000));
  return t;
}

std::string UtcDate(absl::Time t) {
  return absl::FormatCivilTime(absl::ToCivilDay(t, absl::UTCTimeZone()));
}

// A context with `authorization` metadata (none if nullopt) and optionally x-caller.
std::unique_ptr<grpc::ClientContext> AuthContext(const std::optional<std::string>& authorization,
                                                 const std::string& x_caller = "") {
  auto context = std::make_unique<grpc::ClientContext>();
  if (authorization.has_value()) {
    context->AddMetadata("authorization", *authorization);
  }
  if (!x_caller.empty()) {
    context->AddMetadata("x-caller", x_caller);
  }
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return context;
}

std::unique_ptr<grpc::ClientContext> KeyContext(const std::string& key,
                                                const std::string& x_caller = "") {
  return AuthContext("Bearer " + key, x_caller);
}

grpc::Status KeyedCheck(pb::VerdictService::Stub& stub, const std::string& key,
                        const std::string& ip, pb::CheckIpResponse* response,
                        const std::string& x_caller = "") {
  pb::CheckIpRequest request;
  request.set_ip(ip);
  return stub.CheckIp(KeyContext(key, x_caller).get(), request, response);
}

grpc::Status KeyedUsage(pb::VerdictService::Stub& stub, const std::string& key,
                        const std::string& caller, pb::GetUsageResponse* response) {
  pb::GetUsageRequest request;
  request.set_caller(caller);
  return stub.GetUsage(KeyContext(key).get(), request, response);
}

// Usage since the Unix epoch (not just this month), so that a test run across a month boundary
// still sees everything; in open mode every caller may ask for every caller.
grpc::Status OpenUsageSinceEpoch(pb::VerdictService::Stub& stub, const std::string& caller,
                                 pb::GetUsageResponse* response) {
  pb::GetUsageRequest request;
  request.set_caller(caller);
  request.mutable_since()->set_seconds(0);
  return stub.GetUsage(CallerContext("auditor").get(), request, response);
}

const pb::CallerUsage* FindCaller(const pb::GetUsageResponse& usage, const std::string& caller) {
  for (const pb::CallerUsage& c : usage.callers()) {
    if (c.caller() == caller) {
      return &c;
    }
  }
  return nullptr;
}

std::string KeysFileLine(const std::string& caller, const std::string& key,
                         const std::string& rest = "") {
  return absl::StrCat(caller, " ", HashApiKeyHex(key), rest.empty() ? "" : " ", rest, "\n");
}

// --- 1. Keyed mode -------------------------------------------------------------------------

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

// --- 2. Usage attribution (open mode) -----------------------------------------------------

class AuditUsageTest : public ::testing::Test {
 protected:
  TempDir dir_;
  Simulator sim_{dir_, kToken};
  Verdictd verdictd_{dir_, sim_.url(), kToken};
};

TEST_F(AuditUsageTest, ClicksHitsAndRequestsAreAttributedPerCaller) {
  const absl::Time day_before = absl::Now();
  const std::vector<std::string> alice_ips = {"11.1.0.1", "11.1.0.2", "11.1.0.3", "11.1.0.4",
                                              "11.1.0.5"};
  pb::CheckIpResponse r;
  for (const std::string& ip : alice_ips) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), ip, &r, "alice").ok());
    EXPECT_TRUE(r.click_spent());
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), alice_ips[i], &r, "alice").ok());
    EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  }
  for (const char* ip : {"11.2.0.1", "11.2.0.2"}) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), ip, &r, "bob").ok());
    EXPECT_TRUE(r.click_spent());
  }
  for (const char* ip : {"11.2.0.1", "11.1.0.4", "11.1.0.5", "11.1.0.4"}) {
    ASSERT_TRUE(CheckIp(verdictd_.stub(), ip, &r, "bob").ok());
    EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
    EXPECT_FALSE(r.click_spent());
  }
  // A refused check counts as a request of its caller, but not as a click.
  EXPECT_EQ(CheckIp(verdictd_.stub(), "10.0.0.1", &r, "bob").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // No wait: GetUsage writes pending counters before it reads.
  pb::GetUsageResponse usage;
  grpc::Status status = OpenUsageSinceEpoch(verdictd_.stub(), "", &usage);
  const absl::Time day_after = absl::Now();
  ASSERT_TRUE(status.ok()) << status.error_message();
  const pb::CallerUsage* alice = FindCaller(usage, "alice");
  const pb::CallerUsage* bob = FindCaller(usage, "bob");
  ASSERT_NE(alice, nullptr);
  ASSERT_NE(bob, nullptr);
  EXPECT_EQ(alice->clicks(), 5);
  EXPECT_EQ(alice->cache_hits(), 3);
  EXPECT_EQ(alice->requests(), 8);
  EXPECT_EQ(alice->upstream_errors(), 0);
  EXPECT_EQ(bob->clicks(), 2);
  EXPECT_EQ(bob->cache_hits(), 4);
  EXPECT_EQ(bob->requests(), 7) << "the refused check was asked, so it is a request";

  int64_t sum_clicks = 0;
  for (const pb::CallerUsage& c : usage.callers()) {
    sum_clicks += c.clicks();
  }
  EXPECT_EQ(sum_clicks, sim_.Requests()) << "every billed request is attributed to one caller";
  EXPECT_EQ(sim_.Requests(), 7);

  // The per-day breakdown: all of it today (UTC), summing to the totals.
  for (const pb::CallerUsage* c : {alice, bob}) {
    SCOPED_TRACE(c->caller());
    ASSERT_GE(c->days_size(), 1);
    int64_t clicks = 0;
    int64_t hits = 0;
    int64_t requests = 0;
    for (const pb::DailyUsage& day : c->days()) {
      clicks += day.clicks();
      hits += day.cache_hits();
      requests += day.requests();
    }
    EXPECT_EQ(clicks, c->clicks());
    EXPECT_EQ(hits, c->cache_hits());
    EXPECT_EQ(requests, c->requests());
    const pb::DailyUsage& last = c->days(c->days_size() - 1);
    EXPECT_THAT(last.date(), AnyOf(UtcDate(day_before), UtcDate(day_after)));
    if (UtcDate(day_before) == UtcDate(day_after)) {
      ASSERT_EQ(c->days_size(), 1);
      EXPECT_EQ(last.clicks(), c->clicks());
      EXPECT_EQ(last.cache_hits(), c->cache_hits());
    }
  }

  // One caller's view matches its part of everyone's, and the default range (this month) agrees.
  pb::GetUsageRequest only_alice;
  only_alice.set_caller("alice");
  pb::GetUsageResponse alice_usage;
  ASSERT_TRUE(
      verdictd_.stub().GetUsage(CallerContext("alice").get(), only_alice, &alice_usage).ok());
  ASSERT_EQ(alice_usage.callers_size(), 1);
  if (UtcDate(day_before).substr(0, 7) == UtcDate(day_after).substr(0, 7)) {
    EXPECT_EQ(alice_usage.callers(0).clicks(), 5);
    EXPECT_EQ(alice_usage.callers(0).cache_hits(), 3);
    EXPECT_EQ(alice_usage.callers(0).requests(), 8);
  }
  // Usage reads do not count as usage.
  usage.Clear();
  ASSERT_TRUE(OpenUsageSinceEpoch(verdictd_.stub(), "alice", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).requests(), 8);
}

TEST_F(AuditUsageTest, UpstreamErrorsAreClicksAndErrors) {
  sim_.Configure({{"mode", "5xx"}});
  pb::CheckIpResponse r;
  EXPECT_EQ(CheckIp(verdictd_.stub(), "11.3.0.1", &r, "carol").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  sim_.Configure({{"mode", "ok"}});
  ASSERT_TRUE(CheckIp(verdictd_.stub(), "11.3.0.1", &r, "carol").ok());
  pb::GetUsageResponse usage;
  ASSERT_TRUE(OpenUsageSinceEpoch(verdictd_.stub(), "carol", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).clicks(), 2) << "a failed request is billed too";
  EXPECT_EQ(usage.callers(0).upstream_errors(), 1);
  EXPECT_EQ(usage.callers(0).requests(), 2);
  EXPECT_EQ(sim_.Requests(), 2);
}

// --- 3. Budgets ----------------------------------------------------------------------------

class BudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keys_path_ = dir_.File("api_keys");
    WriteFile(keys_path_, KeysFileLine("capped", kCappedKey, "10") + KeysFileLine("free", kFreeKey),
              0600);
    StartVerdictd();
  }
  void StartVerdictd() {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(
        dir_, sim_.url(), kToken, std::vector<std::string>{"--api_keys_file=" + keys_path_});
  }

  TempDir dir_;
  // Latency so that the concurrent misses really overlap at the budget check.
  Simulator sim_{dir_, kToken, {"--latency=50ms"}};
  std::string keys_path_;
  std::unique_ptr<Verdictd> verdictd_;
};

TEST_F(BudgetTest, ConcurrentMissesNeverOvershootTheBudget) {
  constexpr int kThreads = 32;
  constexpr int kPerThread = 4;
  constexpr int kBudget = 10;
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int i = 0; i < 8; ++i) {
    stubs.push_back(verdictd_->NewStub());
  }
  std::vector<std::string> ips(kThreads * kPerThread);
  std::vector<grpc::Status> statuses(ips.size());
  std::vector<pb::CheckIpResponse> responses(ips.size());
  for (size_t i = 0; i < ips.size(); ++i) {
    ips[i] = absl::StrCat("11.20.", i / 200, ".", i % 200 + 1);
  }
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Start together, so the budget is contended rather than used up by the first thread.
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
        std::this_thread::yield();
      }
      for (int k = 0; k < kPerThread; ++k) {
        const size_t i = t * kPerThread + k;
        statuses[i] = KeyedCheck(*stubs[t % stubs.size()], kCappedKey, ips[i], &responses[i]);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }

  std::vector<std::string> paid;
  int exhausted = 0;
  for (size_t i = 0; i < ips.size(); ++i) {
    if (statuses[i].ok()) {
      EXPECT_TRUE(responses[i].click_spent()) << ips[i];
      EXPECT_EQ(responses[i].source(), pb::SOURCE_UPSTREAM) << ips[i];
      EXPECT_EQ(responses[i].verdict().caller(), "capped");
      paid.push_back(ips[i]);
    } else {
      EXPECT_EQ(statuses[i].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << ips[i] << ": " << statuses[i].error_message();
      exhausted += statuses[i].error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? 1 : 0;
    }
  }
  EXPECT_EQ(static_cast<int>(paid.size()), kBudget);
  EXPECT_EQ(exhausted, static_cast<int>(ips.size()) - kBudget);
  EXPECT_EQ(sim_.Requests(), kBudget);
  EXPECT_GT(sim_.Stats().at("max_in_flight").get<int64_t>(), 1) << "the misses did not overlap";
  EXPECT_EQ(QueryInt(verdictd_->db_path(),
                     "SELECT count(*) FROM clicks WHERE caller='capped' AND outcome != 3"),
            kBudget);

  pb::GetUsageResponse usage;
  ASSERT_TRUE(KeyedUsage(verdictd_->stub(), kCappedKey, "capped", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).monthly_budget(), kBudget);
  EXPECT_EQ(usage.callers(0).budget_left(), 0);
  EXPECT_EQ(usage.callers(0).clicks(), kBudget);

  // A spent budget stops misses only: the verdicts it paid for are still served.
  auto expect_hits_served = [&] {
    for (const std::string& ip : paid) {
      pb::CheckIpResponse r;
      grpc::Status status = KeyedCheck(verdictd_->stub(), kCappedKey, ip, &r);
      ASSERT_TRUE(status.ok()) << ip << ": " << status.error_message();
      EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
      EXPECT_FALSE(r.click_spent());
    }
  };
  expect_hits_served();
  pb::CheckIpResponse r;
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), kCappedKey, "11.21.0.1", &r).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(sim_.Requests(), kBudget);

  // The budget lives in the ledger, so a restart does not refill it.
  EXPECT_EQ(verdictd_->Stop(), 0);
  StartVerdictd();
  EXPECT_EQ(KeyedCheck(verdictd_->stub(), kCappedKey, "11.21.0.2", &r).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  expect_hits_served();
  usage.Clear();
  ASSERT_TRUE(KeyedUsage(verdictd_->stub(), kCappedKey, "capped", &usage).ok());
  ASSERT_EQ(usage.callers_size(), 1);
  EXPECT_EQ(usage.callers(0).budget_left(), 0);
  EXPECT_EQ(usage.callers(0).clicks(), kBudget);
  EXPECT_EQ(sim_.Requests(), kBudget);

  // Budgets are per caller: one without a budget still gets misses answered.
  ASSERT_TRUE(KeyedCheck(verdictd_->stub(), kFreeKey, "11.21.0.2", &r).ok());
  EXPECT_TRUE(r.click_spent());
  EXPECT_EQ(sim_.Requests(), kBudget + 1);
}

// --- 4. History paging ---------------------------------------------------------------------

class HistoryPagingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StartVerdictd();
    // N verdicts for one IP: max_age=0 asks ClickPatrol every time, and history is append-only.
    pb::CheckIpRequest request;
    request.set_ip(kIp);
    request.mutable_max_age()->set_seconds(0);
    for (int i = 0; i < kN; ++i) {
      pb::CheckIpResponse response;
      ASSERT_TRUE(verdictd_->stub().CheckIp(CallerContext("hist").get(), request, &response).ok());
      ASSERT_EQ(response.source(), pb::SOURCE_UPSTREAM);
      checked_at_.push_back(Micros(response.verdict().checked_at()));
    }
    // Another IP's verdict, which must never show up.
    pb::CheckIpResponse other;
    ASSERT_TRUE(CheckIp(verdictd_->stub(), "1.1.1.1", &other, "hist").ok());
    // Distinct times, so that a subrange is unambiguous.
    for (int i = 1; i < kN; ++i) {
      ASSERT_LT(checked_at_[i - 1], checked_at_[i]);
    }
  }
  void StartVerdictd() {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(dir_, sim_.url(), kToken);
  }

  grpc::Status List(const pb::ListVerdictHistoryRequest& request,
                    pb::ListVerdictHistoryResponse* response) {
    return verdictd_->stub().ListVerdictHistory(CallerContext("hist").get(), request, response);
  }

  // Follows next_page_token to the end; the page sizes and every checked_at, in order.
  void ListAll(pb::ListVerdictHistoryRequest request, std::vector<int>* page_sizes,
               std::vector<int64_t>* times) {
    for (int page = 0; page < 100; ++page) {
      pb::ListVerdictHistoryResponse response;
      grpc::Status status = List(request, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      page_sizes->push_back(response.verdicts_size());
      for (const pb::Verdict& v : response.verdicts()) {
        EXPECT_EQ(v.ip(), kIp);
        times->push_back(Micros(v.checked_at()));
      }
      if (response.next_page_token().empty()) {
        return;
      }
      request.set_page_token(response.next_page_token());
    }
    FAIL() << "paging did not end";
  }

  static constexpr char kIp[] = "9.9.9.9";
  static constexpr int kN = 7;
  TempDir dir_;
  Simulator sim_{dir_, kToken};
  std::unique_ptr<Verdictd> verdictd_;
  std::vector<int64_t> checked_at_;  // oldest first
};

TEST_F(HistoryPagingTest, PagesAreNewestFirstAndCompleteOnce) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  request.set_page_size(3);
  std::vector<int> sizes;
  std::vector<int64_t> times;
  ListAll(request, &sizes, &times);
  EXPECT_THAT(sizes, ElementsAreArray({3, 3, 1}));
  std::vector<int64_t> newest_first(checked_at_.rbegin(), checked_at_.rend());
  EXPECT_THAT(times, ElementsAreArray(newest_first));

  // A non-canonical spelling of the IP is the same history.
  request.set_ip("::ffff:9.9.9.9");
  request.set_page_size(0);  // the default (100)
  pb::ListVerdictHistoryResponse all;
  ASSERT_TRUE(List(request, &all).ok());
  EXPECT_EQ(all.verdicts_size(), kN);
  EXPECT_TRUE(all.next_page_token().empty());
  EXPECT_EQ(all.verdicts(0).caller(), "hist");
  EXPECT_NE(all.verdicts(0).score(), pb::SCORE_UNSPECIFIED);
}

TEST_F(HistoryPagingTest, SinceAndUntilSelectASubrange) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  request.set_page_size(2);
  // [since, until): verdicts 2, 3 and 4 (since is inclusive, until exclusive).
  *request.mutable_since() = TimestampFromMicros(checked_at_[2]);
  *request.mutable_until() = TimestampFromMicros(checked_at_[5]);
  std::vector<int> sizes;
  std::vector<int64_t> times;
  ListAll(request, &sizes, &times);
  EXPECT_THAT(sizes, ElementsAreArray({2, 1}));
  EXPECT_THAT(times, ElementsAreArray({checked_at_[4], checked_at_[3], checked_at_[2]}));

  // Only since, only until.
  request.clear_until();
  request.set_page_size(100);
  pb::ListVerdictHistoryResponse response;
  ASSERT_TRUE(List(request, &response).ok());
  EXPECT_EQ(response.verdicts_size(), kN - 2);
  request.clear_since();
  *request.mutable_until() = TimestampFromMicros(checked_at_[2]);
  response.Clear();
  ASSERT_TRUE(List(request, &response).ok());
  ASSERT_EQ(response.verdicts_size(), 2);
  EXPECT_EQ(Micros(response.verdicts(0).checked_at()), checked_at_[1]);
}

TEST_F(HistoryPagingTest, BadRangesAndSizes) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  pb::ListVerdictHistoryResponse response;
  *request.mutable_since() = TimestampFromMicros(checked_at_[3]);
  *request.mutable_until() = TimestampFromMicros(checked_at_[3]);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  *request.mutable_until() = TimestampFromMicros(checked_at_[1]);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  request.clear_since();
  request.clear_until();
  request.set_page_size(-1);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_page_size(5000);  // clamped to 1000, not refused
  response.Clear();
  grpc::Status status = List(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.verdicts_size(), kN);
  EXPECT_TRUE(response.next_page_token().empty());

  request.set_ip("9.9.9.9:53");
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(HistoryPagingTest, PageTokensAreTamperEvidentBoundAndSurviveRestart) {
  pb::ListVerdictHistoryRequest request;
  request.set_ip(kIp);
  request.set_page_size(3);
  *request.mutable_since() = TimestampFromMicros(checked_at_[0]);
  pb::ListVerdictHistoryResponse first;
  ASSERT_TRUE(List(request, &first).ok());
  const std::string token = first.next_page_token();
  ASSERT_FALSE(token.empty());

  pb::ListVerdictHistoryResponse second;
  request.set_page_token(token);
  ASSERT_TRUE(List(request, &second).ok());
  ASSERT_EQ(second.verdicts_size(), 3);

  pb::ListVerdictHistoryResponse response;
  // Every single-character change is caught (the token is MACed), wherever it is.
  for (size_t pos : {size_t{0}, token.size() / 2, token.size() - 2}) {
    std::string tampered = token;
    tampered[pos] = tampered[pos] == 'A' ? 'B' : 'A';
    SCOPED_TRACE(pos);
    request.set_page_token(tampered);
    grpc::Status status = List(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  request.set_page_token("not a token");
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_page_token(token + token);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // A valid token only continues the query it came from.
  request.set_page_token(token);
  request.set_ip("1.1.1.1");
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_ip(kIp);
  *request.mutable_since() = TimestampFromMicros(checked_at_[1]);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.clear_since();
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  *request.mutable_since() = TimestampFromMicros(checked_at_[0]);
  *request.mutable_until() = TimestampFromMicros(checked_at_[kN - 1] + 1);
  EXPECT_EQ(List(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.clear_until();

  // The signing secret is in the database, so tokens outlive the process.
  EXPECT_EQ(verdictd_->Stop(), 0);
  StartVerdictd();
  pb::ListVerdictHistoryResponse after;
  grpc::Status status = List(request, &after);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(after.verdicts_size(), second.verdicts_size());
  for (int i = 0; i < after.verdicts_size(); ++i) {
    EXPECT_EQ(Micros(after.verdicts(i).checked_at()), Micros(second.verdicts(i).checked_at()));
  }
  EXPECT_EQ(after.next_page_token(), second.next_page_token());
}

// --- 5. Retention --------------------------------------------------------------------------

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

// --- 6. Crashes ----------------------------------------------------------------------------

TEST(CrashTest, LedgerCoversEveryRequestAcrossKills) {
  constexpr int kTrials = 3;
  constexpr int kMisses = 40;
  TempDir dir;
  // Half a second upstream: the kill lands while requests are on the wire.
  Simulator sim(dir, kToken, {"--latency=500ms"});
  auto verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
  const std::string db = verdictd->db_path();
  int64_t pending_before = 0;
  int64_t billed_before = 0;
  int64_t requests_before = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    SCOPED_TRACE(absl::StrCat("trial ", trial));
    std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
    for (int i = 0; i < 4; ++i) {
      stubs.push_back(verdictd->NewStub());
    }
    std::vector<grpc::Status> statuses(kMisses);
    std::vector<std::thread> threads;
    for (int i = 0; i < kMisses; ++i) {
      threads.emplace_back([&, i] {
        pb::CheckIpResponse response;
        statuses[i] = CheckIp(*stubs[i % stubs.size()], absl::StrCat("11.3", trial, ".0.", i + 1),
                              &response, "crash");
      });
    }
    ASSERT_TRUE(WaitUntil(
        "a request in flight at the simulator", [&] { return sim.InFlight(); },
        [](int64_t in_flight) { return in_flight > 0; }, absl::Seconds(10), absl::Milliseconds(10)))
        << "no request reached the simulator";
    verdictd->Crash();
    for (std::thread& thread : threads) {
      thread.join();
    }
    int answered = 0;
    for (const grpc::Status& status : statuses) {
      answered += status.ok() ? 1 : 0;
    }
    EXPECT_LT(answered, kMisses) << "the kill came too late to test anything";
    // Requests that left before the kill are counted the moment they arrive; wait for the
    // simulator to finish with them so that the count is final.
    ASSERT_TRUE(WaitUntil(
        "no request in flight at the simulator", [&] { return sim.InFlight(); },
        [](int64_t in_flight) { return in_flight == 0; }, absl::Seconds(10),
        absl::Milliseconds(10)));
    const int64_t requests = sim.Requests();

    verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
    EXPECT_EQ(QueryText(db, "PRAGMA integrity_check"), "ok");
    const int64_t billed = QueryInt(db, "SELECT count(*) FROM clicks WHERE outcome != 3");
    const int64_t pending = QueryInt(db, "SELECT count(*) FROM clicks WHERE outcome = 0");
    EXPECT_GE(billed, requests) << "a request left without a ledger row";
    EXPECT_GE(billed - billed_before, requests - requests_before)
        << "a request of this trial left without a ledger row";
    EXPECT_GT(requests, requests_before);
    EXPECT_GT(pending, pending_before) << "the in-flight requests left no pending rows";
    pending_before = pending;
    billed_before = billed;
    requests_before = requests;

    // Pending clicks are billed clicks: GetUsage counts them.
    pb::GetUsageResponse usage;
    grpc::Status status = OpenUsageSinceEpoch(verdictd->stub(), "crash", &usage);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(usage.callers_size(), 1);
    EXPECT_EQ(usage.callers(0).clicks(), billed);

    // The restarted server works and did not resend anything by itself.
    EXPECT_EQ(sim.Requests(), requests);
    std::cout << "trial " << trial << ": answered " << answered << ", simulator requests "
              << requests << ", ledger clicks " << billed << ", pending " << pending << "\n";
  }
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd->stub(), "9.9.9.9", &r, "crash").ok());
  EXPECT_TRUE(r.click_spent());
}

}  // namespace
}  // namespace verdictd::testing
