// End-to-end hostile input, table-driven against one server: every request field filled with
// what an attacker or a buggy client would send gets a precise status, and nothing is spent or
// damaged (no click, no row, an intact database). The real verdictd binary, a SQLite file in a
// temp dir and the simulator over loopback.

#include <cstdio>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/hostile_fixture.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::hostile {
namespace {

using ::testing::HasSubstr;

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

}  // namespace
}  // namespace verdictd::testing::hostile
