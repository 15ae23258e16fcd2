#ifndef VERDICTD_SERVER_UPSTREAM_RESPONSE_PARSER_H_
#define VERDICTD_SERVER_UPSTREAM_RESPONSE_PARSER_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/verdict.h"

namespace verdictd {

// Interprets one ClickPatrol HTTP response. A verdict is HTTP 200 with a JSON object whose
// "trusted_ai_score" is "Safe", "Suspicious" or "Fake" (case-insensitive); missing booleans are
// false, booleans of another type make it not a verdict. Errors follow ClickPatrolClient's table.
// Error messages name the problem but never echo the body.
absl::StatusOr<Assessment> ParseClickPatrolResponse(int http_status, absl::string_view body);

}  // namespace verdictd

#endif  // VERDICTD_SERVER_UPSTREAM_RESPONSE_PARSER_H_
