#include "server/upstream/response_parser.h"

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

Assessment MakeAssessment(Score score, bool proxy = false, bool tor = false, bool vpn = false,
                          bool crawler = false, bool bot = false) {
  Assessment a;
  a.score = score;
  a.proxy = proxy;
  a.tor = tor;
  a.vpn = vpn;
  a.crawler = crawler;
  a.bot = bot;
  return a;
}

struct VerdictCase {
  const char* name;
  std::string body;
  Assessment want;
};

// ctest and gtest print a parameter by its name, not as raw bytes.
void PrintTo(const VerdictCase& param, std::ostream* os) { *os << param.name; }

class ParseVerdictTest : public ::testing::TestWithParam<VerdictCase> {};

TEST_P(ParseVerdictTest, ParsesVerdict) {
  const VerdictCase& c = GetParam();
  const absl::StatusOr<Assessment> got = ParseClickPatrolResponse(200, c.body);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, c.want);
}

INSTANTIATE_TEST_SUITE_P(
    Verdicts, ParseVerdictTest,
    ::testing::Values(
        VerdictCase{"DocumentedExample",
                    R"({"trusted_ai_score": "Fake", "proxy": false, "tor": false, "vpn": false,
                        "crawler": false, "bot": false})",
                    MakeAssessment(Score::kFake)},
        VerdictCase{"Safe", R"({"trusted_ai_score":"Safe"})", MakeAssessment(Score::kSafe)},
        VerdictCase{"Suspicious", R"({"trusted_ai_score":"Suspicious"})",
                    MakeAssessment(Score::kSuspicious)},
        VerdictCase{"ScoreIsCaseInsensitive", R"({"trusted_ai_score":"sUsPiCiOuS"})",
                    MakeAssessment(Score::kSuspicious)},
        VerdictCase{"AllFlagsTrue",
                    R"({"trusted_ai_score":"FAKE","proxy":true,"tor":true,"vpn":true,
                        "crawler":true,"bot":true})",
                    MakeAssessment(Score::kFake, true, true, true, true, true)},
        VerdictCase{"EachFlagLandsInItsField",
                    R"({"trusted_ai_score":"fake","proxy":true,"tor":false,"vpn":true,
                        "crawler":false,"bot":true})",
                    MakeAssessment(Score::kFake, true, false, true, false, true)},
        VerdictCase{"MissingAndNullFlagsAreFalse",
                    R"({"trusted_ai_score":"Safe","proxy":null,"bot":true})",
                    MakeAssessment(Score::kSafe, false, false, false, false, true)},
        VerdictCase{"IntegerFlags",
                    R"({"trusted_ai_score":"Fake","proxy":1,"tor":0,"vpn":-0,"bot":1})",
                    MakeAssessment(Score::kFake, true, false, false, false, true)},
        VerdictCase{"StringFlags",
                    R"({"trusted_ai_score":"Fake","proxy":"true","tor":"FALSE","vpn":"True"})",
                    MakeAssessment(Score::kFake, true, false, true, false, false)},
        VerdictCase{"UnknownFieldsIgnored",
                    R"({"trusted_ai_score":"Safe","country":"NL","extra":{"a":[1,2]},
                        "proxy":false})",
                    MakeAssessment(Score::kSafe)},
        VerdictCase{"SurroundingWhitespace", " \n{\"trusted_ai_score\":\"Safe\"}\r\n ",
                    MakeAssessment(Score::kSafe)}),
    [](const ::testing::TestParamInfo<VerdictCase>& info) { return info.param.name; });

struct ErrorCase {
  const char* name;
  int http_status;
  std::string body;
  absl::StatusCode want_code;
  std::string want_message;  // exact
};

// ctest and gtest print a parameter by its name, not as raw bytes.
void PrintTo(const ErrorCase& param, std::ostream* os) { *os << param.name; }

class ParseErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(ParseErrorTest, MapsToStatus) {
  const ErrorCase& c = GetParam();
  const absl::StatusOr<Assessment> got = ParseClickPatrolResponse(c.http_status, c.body);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), c.want_code) << got.status();
  EXPECT_EQ(got.status().message(), c.want_message);
}

constexpr char kNotVerdict[] = "ClickPatrol response is not a verdict: ";
constexpr char kGoodBody[] = R"({"trusted_ai_score":"Safe"})";

INSTANTIATE_TEST_SUITE_P(
    Errors, ParseErrorTest,
    ::testing::Values(
        // HTTP 200 whose body is not a verdict.
        ErrorCase{"Empty", 200, "", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "not JSON"},
        ErrorCase{"Html", 200, "<html>Service down</html>", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "not JSON"},
        ErrorCase{"TruncatedJson", 200, R"({"trusted_ai_score":"Sa)", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "not JSON"},
        ErrorCase{"TrailingGarbage", 200, R"({"trusted_ai_score":"Safe"} x)",
                  absl::StatusCode::kInternal, std::string(kNotVerdict) + "not JSON"},
        ErrorCase{"Array", 200, R"([{"trusted_ai_score":"Safe"}])", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "not an object"},
        ErrorCase{"String", 200, R"("Safe")", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "not an object"},
        ErrorCase{"Null", 200, "null", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "not an object"},
        ErrorCase{"MissingScore", 200, R"({"proxy":false})", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "missing trusted_ai_score"},
        ErrorCase{"NullScore", 200, R"({"trusted_ai_score":null})", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "missing trusted_ai_score"},
        ErrorCase{"ErrorObject", 200, R"({"error":"invalid token"})", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "missing trusted_ai_score"},
        ErrorCase{"NumericScore", 200, R"({"trusted_ai_score":3})", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "trusted_ai_score is not a string"},
        ErrorCase{"UnknownScore", 200, R"({"trusted_ai_score":"Unknown"})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "unknown trusted_ai_score"},
        ErrorCase{"EmptyScore", 200, R"({"trusted_ai_score":""})", absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "unknown trusted_ai_score"},
        ErrorCase{"ScoreWithSpaces", 200, R"({"trusted_ai_score":" Safe"})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "unknown trusted_ai_score"},
        ErrorCase{"StringFlagNotBoolean", 200, R"({"trusted_ai_score":"Safe","proxy":"yes"})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "field \"proxy\" is not a boolean"},
        ErrorCase{"IntegerFlagOutOfRange", 200, R"({"trusted_ai_score":"Safe","tor":2})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "field \"tor\" is not a boolean"},
        ErrorCase{"NegativeFlag", 200, R"({"trusted_ai_score":"Safe","vpn":-1})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "field \"vpn\" is not a boolean"},
        ErrorCase{"HugeUnsignedFlag", 200,
                  R"({"trusted_ai_score":"Safe","vpn":18446744073709551617})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "field \"vpn\" is not a boolean"},
        ErrorCase{"FloatFlag", 200, R"({"trusted_ai_score":"Safe","crawler":1.0})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "field \"crawler\" is not a boolean"},
        ErrorCase{"ObjectFlag", 200, R"({"trusted_ai_score":"Safe","bot":{}})",
                  absl::StatusCode::kInternal,
                  std::string(kNotVerdict) + "field \"bot\" is not a boolean"},
        // HTTP statuses other than 200, whatever the body says.
        ErrorCase{"Unauthorized", 401, kGoodBody, absl::StatusCode::kFailedPrecondition,
                  "ClickPatrol rejected the API token (HTTP 401)"},
        ErrorCase{"Forbidden", 403, "", absl::StatusCode::kFailedPrecondition,
                  "ClickPatrol rejected the API token (HTTP 403)"},
        ErrorCase{"PaymentRequired", 402, "", absl::StatusCode::kResourceExhausted,
                  "ClickPatrol click allowance exhausted (HTTP 402)"},
        ErrorCase{"TooManyRequests", 429, "", absl::StatusCode::kResourceExhausted,
                  "ClickPatrol click allowance exhausted (HTTP 429)"},
        ErrorCase{"InternalServerError", 500, kGoodBody, absl::StatusCode::kUnavailable,
                  "ClickPatrol returned HTTP 500"},
        ErrorCase{"ServiceUnavailable", 503, "", absl::StatusCode::kUnavailable,
                  "ClickPatrol returned HTTP 503"},
        ErrorCase{"Status599", 599, "", absl::StatusCode::kUnavailable,
                  "ClickPatrol returned HTTP 599"},
        ErrorCase{"Found", 302, "", absl::StatusCode::kInternal,
                  "ClickPatrol answered with a redirect (HTTP 302); redirects are not followed"},
        ErrorCase{"PermanentRedirect", 308, "", absl::StatusCode::kInternal,
                  "ClickPatrol answered with a redirect (HTTP 308); redirects are not followed"},
        ErrorCase{"BadRequest", 400, "", absl::StatusCode::kInternal,
                  "ClickPatrol returned unexpected HTTP 400"},
        ErrorCase{"NotFound", 404, kGoodBody, absl::StatusCode::kInternal,
                  "ClickPatrol returned unexpected HTTP 404"},
        ErrorCase{"NoContent", 204, "", absl::StatusCode::kInternal,
                  "ClickPatrol returned unexpected HTTP 204"},
        ErrorCase{"Created", 201, kGoodBody, absl::StatusCode::kInternal,
                  "ClickPatrol returned unexpected HTTP 201"},
        ErrorCase{"Status600", 600, "", absl::StatusCode::kInternal,
                  "ClickPatrol returned unexpected HTTP 600"}),
    [](const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.name; });

TEST(ParseClickPatrolResponseTest, NeverEchoesTheBody) {
  const std::vector<std::string> bodies = {
      "SECRET-MARKER",
      R"({"trusted_ai_score":"SECRET-MARKER"})",
      R"({"trusted_ai_score":"Safe","proxy":"SECRET-MARKER"})",
      R"(["SECRET-MARKER"])",
  };
  for (const std::string& body : bodies) {
    for (int http_status : {200, 302, 401, 402, 404, 503}) {
      const absl::StatusOr<Assessment> got = ParseClickPatrolResponse(http_status, body);
      ASSERT_FALSE(got.ok());
      EXPECT_THAT(std::string(got.status().message()), Not(HasSubstr("SECRET-MARKER")));
    }
  }
}

TEST(ParseClickPatrolResponseTest, DeeplyNestedBodyDoesNotCrash) {
  const std::string body = std::string(100000, '[') + std::string(100000, ']');
  const absl::StatusOr<Assessment> got = ParseClickPatrolResponse(200, body);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
}

TEST(ParseClickPatrolResponseTest, InvalidUtf8IsNotAVerdict) {
  const absl::StatusOr<Assessment> got =
      ParseClickPatrolResponse(200, "{\"trusted_ai_score\":\"Safe\xff\"}");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace verdictd
