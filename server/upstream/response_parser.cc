#include "server/upstream/response_parser.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace verdictd {
namespace {

absl::Status NotAVerdict(absl::string_view reason) {
  // The body itself is never quoted: it is untrusted and may be large; the caller keeps it as
  // raw_body for the log and the audit history.
  return absl::InternalError(absl::StrCat("ClickPatrol response is not a verdict: ", reason));
}

// Reads one of the boolean flags. The API is beta and undocumented beyond its example, so a
// missing or null flag is false and the obvious encodings of a boolean (0/1, "true"/"false") are
// accepted; anything else means we do not understand the answer and must not store it.
absl::Status ReadFlag(const nlohmann::json& object, const char* name, bool* out) {
  *out = false;
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) {
    return absl::OkStatus();
  }
  const nlohmann::json& value = *it;
  if (value.is_boolean()) {
    *out = value.get<bool>();
    return absl::OkStatus();
  }
  if (value.is_number_unsigned() || value.is_number_integer()) {
    // is_number_integer() is also true for unsigned values; compare through int64 only when the
    // value is signed so that huge unsigned numbers cannot wrap onto 0 or 1.
    if (value.is_number_unsigned()) {
      const auto n = value.get<uint64_t>();
      if (n <= 1) {
        *out = n == 1;
        return absl::OkStatus();
      }
    } else {
      const auto n = value.get<int64_t>();
      if (n == 0 || n == 1) {
        *out = n == 1;
        return absl::OkStatus();
      }
    }
  } else if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    if (absl::EqualsIgnoreCase(s, "true")) {
      *out = true;
      return absl::OkStatus();
    }
    if (absl::EqualsIgnoreCase(s, "false")) {
      *out = false;
      return absl::OkStatus();
    }
  }
  return NotAVerdict(absl::StrCat("field \"", name, "\" is not a boolean"));
}

absl::StatusOr<Assessment> ParseVerdictBody(absl::string_view body) {
  const nlohmann::json json =
      nlohmann::json::parse(body.begin(), body.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return NotAVerdict("not JSON");
  }
  if (!json.is_object()) {
    return NotAVerdict("not an object");
  }
  const auto score_it = json.find("trusted_ai_score");
  if (score_it == json.end() || score_it->is_null()) {
    return NotAVerdict("missing trusted_ai_score");
  }
  if (!score_it->is_string()) {
    return NotAVerdict("trusted_ai_score is not a string");
  }
  const std::string& score_name = score_it->get_ref<const std::string&>();
  Assessment assessment;
  if (absl::EqualsIgnoreCase(score_name, "Safe")) {
    assessment.score = Score::kSafe;
  } else if (absl::EqualsIgnoreCase(score_name, "Suspicious")) {
    assessment.score = Score::kSuspicious;
  } else if (absl::EqualsIgnoreCase(score_name, "Fake")) {
    assessment.score = Score::kFake;
  } else {
    // The value is not quoted either: it is as untrusted as the rest of the body.
    return NotAVerdict("unknown trusted_ai_score");
  }
  struct Flag {
    const char* name;
    bool* field;
  };
  const Flag flags[] = {
      {"proxy", &assessment.proxy},     {"tor", &assessment.tor}, {"vpn", &assessment.vpn},
      {"crawler", &assessment.crawler}, {"bot", &assessment.bot},
  };
  for (const Flag& flag : flags) {
    if (absl::Status status = ReadFlag(json, flag.name, flag.field); !status.ok()) {
      return status;
    }
  }
  return assessment;
}

}  // namespace

absl::StatusOr<Assessment> ParseClickPatrolResponse(int http_status, absl::string_view body) {
  if (http_status == 200) {
    return ParseVerdictBody(body);
  }
  if (http_status == 401 || http_status == 403) {
    // The operator must act (regenerating the token invalidates the old one at once); retrying
    // cannot help, hence FAILED_PRECONDITION rather than UNAVAILABLE.
    return absl::FailedPreconditionError(
        absl::StrCat("ClickPatrol rejected the API token (HTTP ", http_status, ")"));
  }
  if (http_status == 402 || http_status == 429) {
    return absl::ResourceExhaustedError(
        absl::StrCat("ClickPatrol click allowance exhausted (HTTP ", http_status, ")"));
  }
  if (http_status >= 500 && http_status <= 599) {
    return absl::UnavailableError(absl::StrCat("ClickPatrol returned HTTP ", http_status));
  }
  if (http_status >= 300 && http_status <= 399) {
    // The token travels in the query string, so following a redirect could hand it to whoever
    // the Location names.
    return absl::InternalError(absl::StrCat("ClickPatrol answered with a redirect (HTTP ",
                                            http_status, "); redirects are not followed"));
  }
  return absl::InternalError(absl::StrCat("ClickPatrol returned unexpected HTTP ", http_status));
}

}  // namespace verdictd
