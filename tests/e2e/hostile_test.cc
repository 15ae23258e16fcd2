// End-to-end hostile input and security: every request field filled with what an attacker or a
// buggy client would send, auth bypass attempts in keyed mode, secrets kept out of logs, metrics,
// error messages and the database, and the permission checks on the files verdictd trusts.
// The real verdictd binary, a SQLite file in a temp dir and the simulator over loopback.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::HasSubstr;
using ::testing::Not;

// Distinctive secrets, so a leak is easy to grep for.
constexpr char kToken[] = "cp_HostileSecretToken_41b7e0c9d3";
constexpr char kAliceKey[] = "vk_alice_Secret_7f3a91c2e8d4b6";
constexpr char kBobKey[] = "vk_bob_Secret_05e2c7a9f1d3b8";
constexpr char kAuditorKey[] = "vk_audit_Secret_c4d8e2a6b0f9";

using Metadata = std::vector<std::pair<std::string, std::string>>;

std::unique_ptr<grpc::ClientContext> Context(const Metadata& metadata) {
  auto context = std::make_unique<grpc::ClientContext>();
  for (const auto& [key, value] : metadata) {
    context->AddMetadata(key, value);
  }
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return context;
}

// --- hostile input, table-driven, one server ---------------------------------------------------

struct Row {
  std::string name;
  std::function<grpc::Status()> call;
  grpc::StatusCode code;
  std::string message;  // part of the status message ("" for OK rows)
  int64_t sends = 0;    // requests it may make to ClickPatrol (0 for every invalid input)
  // Where gRPC's transport decides the outcome, it races: either code may come back.
  std::optional<grpc::StatusCode> or_code = std::nullopt;
};

std::string FlipChar(std::string s, size_t at) {
  s[at] = s[at] == 'A' ? 'B' : 'A';
  return s;
}

TEST(HostileInputTest, EveryFieldGetsAPreciseStatusAndNothingIsSpentOrDamaged) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken);
  pb::VerdictService::Stub& stub = verdictd.stub();
  const Metadata caller = {{"x-caller", "hostile"}};

  auto check = [&](pb::CheckIpRequest request, pb::CheckIpResponse* out = nullptr,
                   const Metadata& metadata = {{"x-caller", "hostile"}}) {
    pb::CheckIpResponse ignored;
    return stub.CheckIp(Context(metadata).get(), request, out != nullptr ? out : &ignored);
  };
  auto ip_request = [](const std::string& ip, const std::string& user_agent = "") {
    pb::CheckIpRequest request;
    request.set_ip(ip);
    request.set_user_agent(user_agent);
    return request;
  };
  auto max_age_request = [&](int64_t seconds, int32_t nanos) {
    pb::CheckIpRequest request = ip_request("8.8.4.4");
    request.mutable_max_age()->set_seconds(seconds);
    request.mutable_max_age()->set_nanos(nanos);
    return request;
  };

  // Sends `bytes` as the request of `method`, as a client with its own encoder could.
  auto raw_call = [&](const std::string& method, const std::string& bytes) {
    grpc::GenericStub generic(grpc::CreateChannel(absl::StrCat("127.0.0.1:", verdictd.port()),
                                                  grpc::InsecureChannelCredentials()));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::unique_ptr<grpc::ClientContext> context = Context(caller);
    std::promise<grpc::Status> done;
    generic.UnaryCall(context.get(), method, grpc::StubOptions(), &request, &response,
                      [&done](grpc::Status status) { done.set_value(std::move(status)); });
    return done.get_future().get();
  };

  // History with two pages for the page-token rows: 11.9.0.3 asked twice.
  {
    pb::CheckIpRequest request = ip_request("11.9.0.3");
    ASSERT_TRUE(check(request).ok());
    request.mutable_max_age()->set_seconds(0);
    ASSERT_TRUE(check(request).ok());
  }
  pb::ListVerdictHistoryRequest history;
  history.set_ip("11.9.0.3");
  history.set_page_size(1);
  pb::ListVerdictHistoryResponse page;
  ASSERT_TRUE(stub.ListVerdictHistory(Context(caller).get(), history, &page).ok());
  const std::string token = page.next_page_token();
  ASSERT_FALSE(token.empty());
  auto list = [&](const std::string& ip, const std::string& page_token) {
    pb::ListVerdictHistoryRequest request;
    request.set_ip(ip);
    request.set_page_size(1);
    request.set_page_token(page_token);
    pb::ListVerdictHistoryResponse response;
    return stub.ListVerdictHistory(Context(caller).get(), request, &response);
  };

  // x-caller allows no spaces; SQL does not need them.
  const std::string sql = "x');DROP/**/TABLE/**/clicks;DROP/**/TABLE/**/verdicts;--";
  const std::string sql_with_spaces = "x'); DROP TABLE usage; --";
  const std::string ua_with_nul_and_sql = std::string("ua\0'); DELETE FROM verdicts; --", 31);
  pb::CheckIpResponse mapped;
  pb::CheckIpResponse ua_round_trip;
  auto usage = [&](const std::string& name) {
    pb::GetUsageRequest request;
    request.set_caller(name);
    pb::GetUsageResponse response;
    grpc::Status s = stub.GetUsage(Context(caller).get(), request, &response);
    // Whatever was asked, the answer never echoes it at length.
    EXPECT_LT(s.error_message().size(), 200u);
    return s;
  };

  const std::vector<Row> rows = {
      // IP addresses.
      {"ZoneIdLinkLocal", [&] { return check(ip_request("fe80::1%eth0")); },
       grpc::StatusCode::INVALID_ARGUMENT, "zone ids are not allowed"},
      {"ZoneIdGlobal", [&] { return check(ip_request("2001:4860:4860::8888%1")); },
       grpc::StatusCode::INVALID_ARGUMENT, "zone ids are not allowed"},
      {"LeadingZeros", [&] { return check(ip_request("010.1.1.1")); },
       grpc::StatusCode::INVALID_ARGUMENT, "leading zeros"},
      {"LeadingZerosLastPart", [&] { return check(ip_request("8.8.8.08")); },
       grpc::StatusCode::INVALID_ARGUMENT, "leading zeros"},
      {"Ipv4CompatibleIpv6IsNotPublic", [&] { return check(ip_request("::1.2.3.4")); },
       grpc::StatusCode::FAILED_PRECONDITION, "is not a public address"},
      {"Ipv4MappedIsCanonicalIpv4", [&] { return check(ip_request("::ffff:11.9.0.6"), &mapped); },
       grpc::StatusCode::OK, "", 1},
      {"Ipv4MappedUppercaseSharesTheVerdict",
       [&] {
         pb::CheckIpResponse r;
         grpc::Status s = check(ip_request("::FFFF:11.9.0.6"), &r);
         EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
         EXPECT_EQ(r.verdict().ip(), "11.9.0.6");
         return s;
       },
       grpc::StatusCode::OK, ""},
      {"EmbeddedNul", [&] { return check(ip_request(std::string("8.8.8.8\0.evil", 13))); },
       grpc::StatusCode::INVALID_ARGUMENT, "NUL bytes are not allowed"},
      {"TrailingNewline", [&] { return check(ip_request("8.8.8.8\n")); },
       grpc::StatusCode::INVALID_ARGUMENT, "whitespace is not allowed"},
      {"MegabyteIp", [&] { return check(ip_request(std::string(1 << 20, '1'))); },
       grpc::StatusCode::INVALID_ARGUMENT, "too long"},
      {"SqlInIp", [&] { return check(ip_request("8.8.8.8' OR '1'='1")); },
       grpc::StatusCode::INVALID_ARGUMENT, "invalid IP address"},
      // proto3 string fields must be UTF-8; the service decodes requests itself to say which
      // field is not (gRPC's own decoding would answer UNIMPLEMENTED with no message).
      {"NonUtf8Ip", [&] { return check(ip_request("8.8.8.\xff")); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "field ip is not valid UTF-8 (proto3 string fields must be)"},
      // User agents.
      {"MegabyteUserAgent", [&] { return check(ip_request("8.8.8.8", std::string(1 << 20, 'a'))); },
       grpc::StatusCode::INVALID_ARGUMENT, "user_agent is 1048576 bytes; the limit is 1024"},
      {"UserAgentOneByteOverLimit",
       [&] { return check(ip_request("8.8.8.8", std::string(1025, 'a'))); },
       grpc::StatusCode::INVALID_ARGUMENT, "user_agent is 1025 bytes; the limit is 1024"},
      {"UserAgentAtLimit", [&] { return check(ip_request("11.9.0.1", std::string(1024, 'a'))); },
       grpc::StatusCode::OK, "", 1},
      {"NonUtf8UserAgent",
       [&] { return check(ip_request("11.9.0.5", "Mozilla/5.0 \xff\xfe\xc0")); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "field user_agent is not valid UTF-8 (proto3 string fields must be)"},
      {"NonUtf8UserAgentInBatchItem",
       [&] {
         pb::CheckBatchRequest batch;
         *batch.add_items() = ip_request("11.9.0.5");
         *batch.add_items() = ip_request("11.9.0.5", "\xc0\xaf");
         pb::CheckBatchResponse response;
         return stub.CheckBatch(Context(caller).get(), batch, &response);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "field items[1].user_agent is not valid UTF-8 (proto3 string fields must be)"},
      // Bytes that are not a protobuf message at all: ip claims 100 bytes and has 3.
      {"MalformedProtobuf",
       [&] {
         return raw_call("/verdict.v1.VerdictService/CheckIp", std::string("\x0a\x64"
                                                                           "abc",
                                                                           5));
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "the request is not a well-formed verdict.v1.CheckIpRequest (malformed protobuf wire "
       "data)"},
      {"UnknownFieldsIgnored",
       [&] {
         return raw_call("/verdict.v1.VerdictService/CheckIp", std::string("\x98\x06\x01\x0a\x07"
                                                                           "8.8.4.4",
                                                                           12));
       },
       grpc::StatusCode::OK, ""},
      {"UserAgentWithNulAndSqlRoundTrips",
       [&] { return check(ip_request("11.9.0.2", ua_with_nul_and_sql), &ua_round_trip); },
       grpc::StatusCode::OK, "", 1},
      // max_age.
      {"NegativeMaxAge", [&] { return check(max_age_request(-1, 0)); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_age must not be negative"},
      {"NegativeNanosMaxAge", [&] { return check(max_age_request(0, -1)); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_age must not be negative"},
      {"HugeMaxAgeServedFromStore", [&] { return check(max_age_request(315'576'000'000, 0)); },
       grpc::StatusCode::OK, ""},
      {"MaxAgeBeyondDurationRange", [&] { return check(max_age_request(315'576'000'001, 0)); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_age is not a valid google.protobuf.Duration"},
      {"MaxAgeMinInt64", [&] { return check(max_age_request(INT64_MIN, 0)); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_age is not a valid google.protobuf.Duration"},
      {"NanosOutOfRange", [&] { return check(max_age_request(1, 1'000'000'000)); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_age is not a valid google.protobuf.Duration"},
      {"NanosSignDiffersFromSeconds", [&] { return check(max_age_request(1, -1)); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_age is not a valid google.protobuf.Duration"},
      // Batches.
      {"BatchOverTheLimit",
       [&] {
         pb::CheckBatchRequest batch;
         for (int i = 0; i < 1001; ++i) {
           batch.add_items()->set_ip("8.8.8.8");
         }
         pb::CheckBatchResponse response;
         return stub.CheckBatch(Context(caller).get(), batch, &response);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "batch has 1001 items; the limit is 1000"},
      {"BatchOfHostileItemsGetsPerItemErrors",
       [&] {
         pb::CheckBatchRequest batch;
         *batch.add_items() = ip_request("fe80::1%eth0");
         *batch.add_items() = ip_request(std::string("1.1.1.1\0", 8));
         *batch.add_items() = ip_request("1.1.1.1", std::string(4096, 'u'));
         *batch.add_items() = max_age_request(-5, 0);
         *batch.add_items() = max_age_request(0, 2'000'000'000);
         *batch.add_items() = ip_request("10.0.0.1");
         pb::CheckBatchResponse response;
         grpc::Status s = stub.CheckBatch(Context(caller).get(), batch, &response);
         EXPECT_EQ(response.results_size(), 6);
         for (int i = 0; i < response.results_size(); ++i) {
           EXPECT_TRUE(response.results(i).has_error()) << i;
           EXPECT_EQ(response.results(i).error().code(), i == 5
                                                             ? grpc::StatusCode::FAILED_PRECONDITION
                                                             : grpc::StatusCode::INVALID_ARGUMENT)
               << i << ": " << response.results(i).error().message();
         }
         return s;
       },
       grpc::StatusCode::OK, ""},
      // Page tokens.
      {"ValidPageTokenControl", [&] { return list("11.9.0.3", token); }, grpc::StatusCode::OK, ""},
      {"PageTokenLastCharFlipped",
       [&] { return list("11.9.0.3", FlipChar(token, token.size() - 1)); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token is invalid"},
      {"PageTokenFirstCharFlipped", [&] { return list("11.9.0.3", FlipChar(token, 0)); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token is invalid"},
      {"PageTokenMiddleCharFlipped",
       [&] { return list("11.9.0.3", FlipChar(token, token.size() / 2)); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token is invalid"},
      {"PageTokenTruncated", [&] { return list("11.9.0.3", token.substr(0, token.size() - 1)); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token is invalid"},
      {"PageTokenExtended", [&] { return list("11.9.0.3", token + "AAAA"); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token is invalid"},
      {"PageTokenOfAnotherQuery", [&] { return list("8.8.4.4", token); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token belongs to a different request"},
      {"PageTokenSql", [&] { return list("11.9.0.3", "' OR 1=1; DROP TABLE verdicts; --"); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token is invalid"},
      {"PageToken100KiB", [&] { return list("11.9.0.3", std::string(100 << 10, 'A')); },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token is invalid"},
      {"HistoryIpSql", [&] { return list("1.1.1.1; DROP TABLE verdicts", ""); },
       grpc::StatusCode::INVALID_ARGUMENT, "invalid IP address"},
      // SQL metacharacters where they are valid values: stored and read back as data.
      {"SqlInXCaller",
       [&] {
         return check(ip_request("11.9.0.4"), nullptr, {{"x-caller", sql}});
       },
       grpc::StatusCode::OK, "", 1},
      {"SqlInUsageCaller",
       [&] {
         pb::GetUsageRequest request;
         request.set_caller(sql);
         pb::GetUsageResponse response;
         grpc::Status s = stub.GetUsage(Context(caller).get(), request, &response);
         EXPECT_EQ(response.callers_size(), 1);
         if (response.callers_size() == 1) {
           EXPECT_EQ(response.callers(0).caller(), sql);
           EXPECT_EQ(response.callers(0).clicks(), 1);
         }
         return s;
       },
       grpc::StatusCode::OK, ""},
      // GetUsage.caller is checked as x-caller is (1-128 printable ASCII, no spaces), before
      // anything else: a name no caller can have is INVALID_ARGUMENT, and is not echoed.
      {"SqlWithSpacesInUsageCaller", [&] { return usage(sql_with_spaces); },
       grpc::StatusCode::INVALID_ARGUMENT, "caller must be 1-128 printable ASCII characters"},
      {"HundredKilobyteUsageCaller", [&] { return usage(std::string(100 << 10, 'z')); },
       grpc::StatusCode::INVALID_ARGUMENT, "caller must be 1-128 printable ASCII characters"},
      {"UsageCallerOneByteOverLimit", [&] { return usage(std::string(129, 'c')); },
       grpc::StatusCode::INVALID_ARGUMENT, "caller must be 1-128 printable ASCII characters"},
      {"UsageCallerAtLimit", [&] { return usage(std::string(128, 'c')); }, grpc::StatusCode::OK,
       ""},
      {"UsageCallerWithControlCharacters", [&] { return usage("bob\x1b[2J\r\nINFO:forged"); },
       grpc::StatusCode::INVALID_ARGUMENT, "caller must be 1-128 printable ASCII characters"},
      {"XCallerWithSpaces",
       [&] {
         return check(ip_request("11.9.1.1"), nullptr, {{"x-caller", sql_with_spaces}});
       },
       grpc::StatusCode::INVALID_ARGUMENT, "x-caller must be 1-128 printable ASCII characters"},
      {"XCallerTooLong",
       [&] {
         return check(ip_request("11.9.1.2"), nullptr, {{"x-caller", std::string(129, 'c')}});
       },
       grpc::StatusCode::INVALID_ARGUMENT, "x-caller must be 1-128 printable ASCII characters"},
      // Metadata floods (the server allows 16 KiB): refused by gRPC before any handler runs,
      // with RESOURCE_EXHAUSTED "received initial metadata size exceeds limit", or UNAVAILABLE
      // "Broken pipe" when the server's answer and close overtake the client still writing.
      {"ThousandMetadataEntries",
       [&] {
         Metadata flood = caller;
         for (int i = 0; i < 1000; ++i) {
           flood.emplace_back(absl::StrCat("x-flood-", i), "value-value-value");
         }
         return check(ip_request("11.9.1.3"), nullptr, flood);
       },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "", 0, grpc::StatusCode::UNAVAILABLE},
      {"HundredKilobyteHeader",
       [&] {
         return check(ip_request("11.9.1.4"), nullptr,
                      {{"x-caller", "hostile"}, {"x-big", std::string(100 << 10, 'h')}});
       },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "", 0, grpc::StatusCode::UNAVAILABLE},
  };

  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    const int64_t before = sim.Requests();
    grpc::Status status = row.call();
    const int64_t sent = sim.Requests() - before;
    if (row.or_code.has_value() && status.error_code() == *row.or_code) {
      // The other outcome gRPC's transport may pick; the message is gRPC's own.
    } else {
      EXPECT_EQ(status.error_code(), row.code) << status.error_message();
    }
    EXPECT_THAT(status.error_message(), HasSubstr(row.message));
    EXPECT_EQ(sent, row.sends);
    std::printf("[ observed ] %-38s %d %s\n", row.name.c_str(),
                static_cast<int>(status.error_code()),
                status.error_message().substr(0, 120).c_str());
    // The server is still healthy after each one, asked on a new connection: after a metadata
    // flood gRPC may close the flooding client's own connection, and a call already queued on
    // it then fails with "Socket closed" although the server is fine.
    pb::CheckIpResponse healthy;
    std::unique_ptr<grpc::ClientContext> context = Context(caller);
    context->set_wait_for_ready(true);
    grpc::Status ok = verdictd.NewStub()->CheckIp(context.get(), ip_request("8.8.4.4"), &healthy);
    EXPECT_TRUE(ok.ok()) << "after " << row.name << ": " << ok.error_message();
  }

  EXPECT_EQ(mapped.verdict().ip(), "11.9.0.6");
  EXPECT_EQ(ua_round_trip.verdict().user_agent(), ua_with_nul_and_sql)
      << "user agents round-trip byte for byte";

  // Everything is still there: every table, every verdict ClickPatrol gave, every click.
  ASSERT_EQ(verdictd.Stop(), 0);
  const std::string db = verdictd.db_path();
  EXPECT_EQ(QueryInt(db,
                     "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                     "('verdicts', 'clicks', 'usage', 'meta')"),
            4);
  const nlohmann::json stats = sim.Stats();
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM verdicts"), stats.at("verdicts").get<int64_t>());
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks"), stats.at("requests").get<int64_t>());
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE caller = ?1", &sql), 1);
  EXPECT_EQ(
      QueryInt(db, "SELECT count(*) FROM verdicts WHERE user_agent = ?1", &ua_with_nul_and_sql,
               /*blob=*/true),
      1);
  EXPECT_EQ(
      QueryInt(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
}

// --- security ----------------------------------------------------------------------------------

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

// The metrics port from the log line "metrics at http://ADDR/metrics (port N)".
int MetricsPort(const std::string& log) {
  const std::string marker = "/metrics (port ";
  const size_t at = log.find(marker);
  if (at == std::string::npos) {
    return -1;
  }
  int port = -1;
  const std::string digits = log.substr(at + marker.size(), log.find(')', at) - at - marker.size());
  return absl::SimpleAtoi(digits, &port) ? port : -1;
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

// --- hostile connections -----------------------------------------------------------------------
// Connections that hold a file descriptor and memory without doing anything: idle ones, ones that
// never speak HTTP/2, and one connection opening many calls at once.

// A channel of this test's own (the harness's stubs share nothing with it), so its state says
// what happened to its one connection.
std::shared_ptr<grpc::Channel> OwnChannel(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

grpc::Status ServerInfo(pb::VerdictService::Stub& stub) {
  pb::GetServerInfoResponse info;
  return stub.GetServerInfo(Context({{"x-caller", "conn"}}).get(), pb::GetServerInfoRequest(),
                            &info);
}

// A raw loopback TCP connection to `port` that sends `bytes`, then nothing; -1 on failure.
int ConnectRaw(int port, const std::string& bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0 ||
      (!bytes.empty() &&
       send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size()))) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads (and drops: the server may send its SETTINGS first) until the server closes `fd`, i.e.
// read() returns 0 or fails with ECONNRESET; how long after `since` that was, nullopt if `fd`
// is still open at `deadline`.
std::optional<absl::Duration> WaitForClose(int fd, absl::Time since, absl::Time deadline) {
  char buffer[4096];
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return std::nullopt;
    }
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno == EINTR) {
      continue;
    }
    if (ready <= 0) {
      continue;  // the loop's deadline check ends it
    }
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
      return absl::Now() - since;
    }
    if (n < 0 && errno != EINTR && errno != EAGAIN) {
      ADD_FAILURE() << "read: " << std::strerror(errno);
      return std::nullopt;
    }
  }
}

TEST(HostileConnectionTest, IdleConnectionIsClosedAfterMaxConnectionIdle) {
  TempDir dir;
  Simulator sim(dir, kToken);
  // Through the config file, which takes the connection flags like any other.
  const std::string config = dir.File("verdictd.json");
  {
    std::ofstream out(config, std::ios::trunc);
    out << R"({"max_connection_idle": "1s", "handshake_timeout": "3s",)"
        << R"( "max_concurrent_streams": 50})";
  }
  Verdictd verdictd(dir, sim.url(), kToken, {"--config=" + config});
  EXPECT_THAT(verdictd.Log(),
              HasSubstr("max_connection_idle=1s handshake_timeout=3s max_concurrent_streams=50"));

  std::shared_ptr<grpc::Channel> channel = OwnChannel(verdictd.port());
  std::unique_ptr<pb::VerdictService::Stub> stub = pb::VerdictService::NewStub(channel);
  ASSERT_TRUE(ServerInfo(*stub).ok());
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  // The server's GOAWAY takes the channel out of READY (to IDLE: it reconnects when next used).
  // gRPC checks for idleness once per --max_connection_idle, and a period with a call in it does
  // not count, so the close comes between one and two periods after the last call.
  const WaitResult<grpc_connectivity_state> closed = WaitUntil(
      "the idle channel to leave READY", [&] { return channel->GetState(false); },
      [](grpc_connectivity_state state) { return state != GRPC_CHANNEL_READY; },
      absl::Seconds(2 * 1 + 2), absl::Milliseconds(10));
  ASSERT_TRUE(closed) << "still connected 4 s after the last call";
  std::printf("[ observed ] idle connection closed %s after its last call (state %d)\n",
              absl::FormatDuration(closed.elapsed()).c_str(), static_cast<int>(closed.last()));
  EXPECT_GE(closed.elapsed(), absl::Milliseconds(900)) << "closed before --max_connection_idle";
  // A well-behaved client loses nothing: its next call reconnects.
  EXPECT_TRUE(ServerInfo(*stub).ok());
  EXPECT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
}

TEST(HostileConnectionTest, ConnectionsThatNeverSpeakHttp2AreClosedAfterTheHandshakeTimeout) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, {"--handshake_timeout=1s"});
  // For contrast, a connection that did its handshake: neither limit touches it (the idle limit
  // is the default 5 minutes).
  std::shared_ptr<grpc::Channel> channel = OwnChannel(verdictd.port());
  std::unique_ptr<pb::VerdictService::Stub> stub = pb::VerdictService::NewStub(channel);
  ASSERT_TRUE(ServerInfo(*stub).ok());

  const absl::Time connected = absl::Now();
  const int silent = ConnectRaw(verdictd.port(), "");
  // Half of the 24-byte HTTP/2 client preface, then nothing (a slow-loris client).
  const int partial = ConnectRaw(verdictd.port(), "PRI * HTTP/2.0\r\n");
  ASSERT_GE(silent, 0) << std::strerror(errno);
  ASSERT_GE(partial, 0) << std::strerror(errno);
  const absl::Time deadline = connected + absl::Seconds(1 + 2);
  const std::optional<absl::Duration> silent_closed = WaitForClose(silent, connected, deadline);
  const std::optional<absl::Duration> partial_closed = WaitForClose(partial, connected, deadline);
  close(silent);
  close(partial);
  ASSERT_TRUE(silent_closed.has_value()) << "a connection that sent nothing is still open at 3 s";
  ASSERT_TRUE(partial_closed.has_value()) << "a half-preface connection is still open at 3 s";
  std::printf("[ observed ] silent connection closed after %s, half-preface after %s\n",
              absl::FormatDuration(*silent_closed).c_str(),
              absl::FormatDuration(*partial_closed).c_str());
  EXPECT_GE(*silent_closed, absl::Milliseconds(900)) << "closed before --handshake_timeout";
  EXPECT_GE(*partial_closed, absl::Milliseconds(900)) << "closed before --handshake_timeout";

  EXPECT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  EXPECT_TRUE(ServerInfo(*stub).ok());
}

// Slow-loris clients (a header line every 300 ms, never finishing the request) and silent ones
// hold connections to /metrics; a scrape still answers in under a second every time.
TEST(HostileConnectionTest, MetricsAnswerWhileSlowAndSilentClientsHoldConnections) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, {"--metrics_listen=127.0.0.1:0"});
  const int port = MetricsPort(verdictd.Log());
  ASSERT_GT(port, 0) << verdictd.Log();
  constexpr int kSlow = 16;
  std::vector<int> held;
  for (int i = 0; i < kSlow; ++i) {
    held.push_back(ConnectRaw(port, "GET /metrics HTTP/1.1\r\n"));
    held.push_back(ConnectRaw(port, ""));
    ASSERT_GE(held[held.size() - 2], 0) << std::strerror(errno);
    ASSERT_GE(held.back(), 0) << std::strerror(errno);
  }
  absl::Duration slowest;
  for (int round = 0; round < 6; ++round) {
    for (size_t i = 0; i < held.size(); i += 2) {
      constexpr char kLine[] = "X-Slow: 1\r\n";
      send(held[i], kLine, sizeof(kLine) - 1, MSG_NOSIGNAL);  // fails once the server gave up
    }
    httplib::Client client("127.0.0.1", port);
    client.set_connection_timeout(5, 0);
    client.set_read_timeout(5, 0);
    const absl::Time start = absl::Now();
    httplib::Result result = client.Get("/metrics");
    const absl::Duration took = absl::Now() - start;
    ASSERT_TRUE(result) << "scrape " << round << " failed after " << took;
    EXPECT_EQ(result->status, 200);
    EXPECT_THAT(result->body, HasSubstr("verdictd_rpcs_total"));
    EXPECT_LT(took, absl::Seconds(1)) << "scrape " << round;
    slowest = std::max(slowest, took);
    // Not a poll: the pace of the slow-loris clients (a header line every 300 ms), so that the
    // six scrapes span their whole attack.
    absl::SleepFor(absl::Milliseconds(300));
  }
  for (int fd : held) {
    close(fd);
  }
  std::printf("[ observed ] %d slow-loris + %d silent connections: slowest of 6 scrapes %s\n",
              kSlow, kSlow, absl::FormatDuration(slowest).c_str());
}

TEST(HostileConnectionTest, OneConnectionCarriesAtMostMaxConcurrentStreamsCalls) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, {"--max_concurrent_streams=1"});
  constexpr int kCalls = 3;
  constexpr absl::Duration kLatency = absl::Milliseconds(300);
  sim.Configure({{"latency_ms", absl::ToInt64Milliseconds(kLatency)}});

  // kCalls misses at once, each on `stubs[i]`; every one must succeed.
  auto misses = [&](const std::vector<pb::VerdictService::Stub*>& stubs, int first_ip) {
    std::vector<std::future<grpc::Status>> calls;
    for (int i = 0; i < kCalls; ++i) {
      calls.push_back(std::async(std::launch::async, [&stubs, i, first_ip] {
        pb::CheckIpResponse response;
        return CheckIp(*stubs[i], absl::StrCat("11.12.0.", first_ip + i), &response, "streams");
      }));
    }
    for (std::future<grpc::Status>& call : calls) {
      grpc::Status status = call.get();
      EXPECT_TRUE(status.ok()) << status.error_message();
    }
  };

  // One connection: its first call brings the server's SETTINGS (before them a client may open
  // more streams than the limit), then the misses are queued by the client, one at a time.
  std::shared_ptr<grpc::Channel> channel = OwnChannel(verdictd.port());
  std::unique_ptr<pb::VerdictService::Stub> shared = pb::VerdictService::NewStub(channel);
  ASSERT_TRUE(ServerInfo(*shared).ok());
  const absl::Time start = absl::Now();
  misses(std::vector<pb::VerdictService::Stub*>(kCalls, shared.get()), 1);
  const absl::Duration one_connection = absl::Now() - start;
  EXPECT_EQ(sim.Stats().at("max_in_flight").get<int64_t>(), 1);
  EXPECT_GE(one_connection, kCalls * kLatency);

  // The limit is per connection: the same misses on a connection each do run at once.
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> own;
  std::vector<pb::VerdictService::Stub*> stubs;
  for (int i = 0; i < kCalls; ++i) {
    own.push_back(pb::VerdictService::NewStub(OwnChannel(verdictd.port())));
    stubs.push_back(own.back().get());
  }
  misses(stubs, 1 + kCalls);
  EXPECT_GE(sim.Stats().at("max_in_flight").get<int64_t>(), 2);
  std::printf("[ observed ] %d misses on one connection took %s (max 1 in flight upstream)\n",
              kCalls, absl::FormatDuration(one_connection).c_str());
}

}  // namespace
}  // namespace verdictd::testing
