#ifndef VERDICTD_TESTS_E2E_AUDIT_FIXTURE_H_
#define VERDICTD_TESTS_E2E_AUDIT_FIXTURE_H_

// What the audit and accounting tests (audit_*_test.cc) share: the token and API keys they use,
// writing keys files and database rows, timestamps, and calls made with an API key.

#include <sqlite3.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/auth/api_keys.h"
#include "tests/support/harness.h"

namespace verdictd::testing::audit {

namespace pb = ::verdict::v1;

inline constexpr char kToken[] = "cp_AuditSecretToken_3b8d0e6f21";

// API keys; the server only ever sees their SHA-256 hashes.
inline constexpr char kAliceKey[] = "vk_alice_5e0c1f77a2d94b38";
inline constexpr char kBobKey[] = "vk_bob_90b7d35c4e1a2f66";
inline constexpr char kAuditKey[] = "vk_audit_c41a8e2b7d90f513";
inline constexpr char kCappedKey[] = "vk_capped_2f6d9b01e8c7a435";
inline constexpr char kFreeKey[] = "vk_free_7a1c3e5b9d2f4068";

inline constexpr int64_t kMicrosPerDay = int64_t{86'400'000'000};

// Runs statements that return nothing, on a writable connection (verdictd must be stopped).
inline void Exec(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << (error == nullptr ? "" : error);
  sqlite3_free(error);
  sqlite3_close(db);
}

inline void WriteFile(const std::string& path, const std::string& content, mode_t mode) {
  {
    std::ofstream out(path, std::ios::trunc);
    out << content;
  }
  // Explicitly, whatever the umask: verdictd refuses group- or world-writable keys files.
  ASSERT_EQ(chmod(path.c_str(), mode), 0);
}

inline int64_t Micros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000 + t.nanos() / 1000;
}

inline google::protobuf::Timestamp TimestampFromMicros(int64_t micros) {
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

inline std::string UtcDate(absl::Time t) {
  return absl::FormatCivilTime(absl::ToCivilDay(t, absl::UTCTimeZone()));
}

// A context with `authorization` metadata (none if nullopt) and optionally x-caller.
inline std::unique_ptr<grpc::ClientContext> AuthContext(
    const std::optional<std::string>& authorization, const std::string& x_caller = "") {
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

inline std::unique_ptr<grpc::ClientContext> KeyContext(const std::string& key,
                                                       const std::string& x_caller = "") {
  return AuthContext("Bearer " + key, x_caller);
}

inline grpc::Status KeyedCheck(pb::VerdictService::Stub& stub, const std::string& key,
                               const std::string& ip, pb::CheckIpResponse* response,
                               const std::string& x_caller = "") {
  pb::CheckIpRequest request;
  request.set_ip(ip);
  return stub.CheckIp(KeyContext(key, x_caller).get(), request, response);
}

inline grpc::Status KeyedUsage(pb::VerdictService::Stub& stub, const std::string& key,
                               const std::string& caller, pb::GetUsageResponse* response) {
  pb::GetUsageRequest request;
  request.set_caller(caller);
  return stub.GetUsage(KeyContext(key).get(), request, response);
}

// Usage since the Unix epoch (not just this month), so that a test run across a month boundary
// still sees everything; in open mode every caller may ask for every caller.
inline grpc::Status OpenUsageSinceEpoch(pb::VerdictService::Stub& stub, const std::string& caller,
                                        pb::GetUsageResponse* response) {
  pb::GetUsageRequest request;
  request.set_caller(caller);
  request.mutable_since()->set_seconds(0);
  return stub.GetUsage(CallerContext("auditor").get(), request, response);
}

inline const pb::CallerUsage* FindCaller(const pb::GetUsageResponse& usage,
                                         const std::string& caller) {
  for (const pb::CallerUsage& c : usage.callers()) {
    if (c.caller() == caller) {
      return &c;
    }
  }
  return nullptr;
}

inline std::string KeysFileLine(const std::string& caller, const std::string& key,
                                const std::string& rest = "") {
  return absl::StrCat(caller, " ", HashApiKeyHex(key), rest.empty() ? "" : " ", rest, "\n");
}

}  // namespace verdictd::testing::audit

#endif  // VERDICTD_TESTS_E2E_AUDIT_FIXTURE_H_
