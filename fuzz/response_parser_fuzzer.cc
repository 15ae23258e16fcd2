// Fuzzes verdictd::ParseClickPatrolResponse, which reads ClickPatrol's (untrusted) HTTP answers.
// Input: the first 2 bytes are the HTTP status (big-endian, 0-65535), the rest is the body.
//
// Properties: it never crashes; only HTTP 200 can yield a verdict, and a verdict has a score;
// every other status maps to the status code ClickPatrolClient's table promises; error messages
// stay short (the body is never echoed); the result depends on the input only.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/verdict.h"
#include "fuzz_check.h"
#include "server/upstream/response_parser.h"

namespace {

absl::StatusCode ExpectedErrorCode(int http_status) {
  if (http_status == 401 || http_status == 403) {
    return absl::StatusCode::kFailedPrecondition;
  }
  if (http_status == 402 || http_status == 429) {
    return absl::StatusCode::kResourceExhausted;
  }
  if (http_status >= 500 && http_status <= 599) {
    return absl::StatusCode::kUnavailable;
  }
  return absl::StatusCode::kInternal;  // 200 that is not a verdict, redirects, anything else
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) {
    return 0;
  }
  const int http_status = (data[0] << 8) | data[1];
  const absl::string_view body(reinterpret_cast<const char*>(data) + 2, size - 2);

  const absl::StatusOr<verdictd::Assessment> result =
      verdictd::ParseClickPatrolResponse(http_status, body);
  if (result.ok()) {
    FUZZ_CHECK(http_status == 200);
    FUZZ_CHECK(result->score == verdictd::Score::kSafe ||
               result->score == verdictd::Score::kSuspicious ||
               result->score == verdictd::Score::kFake);
  } else {
    FUZZ_CHECK(result.status().code() == ExpectedErrorCode(http_status));
    // The longest fixed message is about 80 characters; anything much longer quotes the body.
    FUZZ_CHECK(result.status().message().size() <= 120);
  }

  // Same input, same answer (no hidden state between calls).
  const absl::StatusOr<verdictd::Assessment> again =
      verdictd::ParseClickPatrolResponse(http_status, body);
  FUZZ_CHECK(again.ok() == result.ok());
  if (result.ok()) {
    FUZZ_CHECK(*again == *result);
  } else {
    FUZZ_CHECK(again.status() == result.status());
  }
  return 0;
}
