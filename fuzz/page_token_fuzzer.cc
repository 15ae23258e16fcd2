// Fuzzes verdictd::PageTokenCodec, which decodes the page_token every ListVerdictHistory caller
// may send.
//
// Properties: Decode never crashes on any input and refuses everything (forging a 128-bit tag by
// chance does not happen; if it ever accepted, re-encoding must give the same token back, as a
// token has one spelling only); a cursor built from the input round-trips through Encode and
// Decode unchanged when its ip fits (at most 45 bytes) and is refused otherwise; changing any one
// character of a good token, or decoding it under another secret, makes it invalid.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "fuzz_check.h"
#include "server/auth/page_token.h"

namespace {

constexpr char kBase64UrlAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void CheckInvalid(const absl::StatusOr<verdictd::PageCursor>& decoded) {
  FUZZ_CHECK(!decoded.ok());
  FUZZ_CHECK(decoded.status().code() == absl::StatusCode::kInvalidArgument);
  FUZZ_CHECK(decoded.status().message() == "page_token is invalid");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const verdictd::PageTokenCodec codec("fuzz-secret-0123456789abcdef0123456789");
  static const verdictd::PageTokenCodec other("fuzz-secret-0123456789abcdef012345678X");

  // 1. The raw input as a token.
  const absl::string_view raw(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<verdictd::PageCursor> decoded = codec.Decode(raw);
  if (decoded.ok()) {
    FUZZ_CHECK(codec.Encode(*decoded) == raw);
  } else {
    CheckInvalid(decoded);
  }

  // 2. A cursor built from the input, encoded and decoded.
  FuzzedDataProvider provider(data, size);
  verdictd::PageCursor cursor;
  cursor.since_us = provider.ConsumeIntegral<int64_t>();
  cursor.until_us = provider.ConsumeIntegral<int64_t>();
  cursor.checked_at_us = provider.ConsumeIntegral<int64_t>();
  cursor.id = provider.ConsumeIntegral<int64_t>();
  const size_t flip_at = provider.ConsumeIntegral<uint16_t>();
  const uint8_t flip_to = provider.ConsumeIntegral<uint8_t>();
  cursor.ip = provider.ConsumeRandomLengthString(64);

  const std::string token = codec.Encode(cursor);
  FUZZ_CHECK(!token.empty());
  FUZZ_CHECK(token.size() <= 1024);
  FUZZ_CHECK(token.find_first_not_of(kBase64UrlAlphabet) == std::string::npos);
  FUZZ_CHECK(codec.Encode(cursor) == token);  // deterministic

  const absl::StatusOr<verdictd::PageCursor> round_trip = codec.Decode(token);
  if (cursor.ip.size() <= 45) {
    FUZZ_CHECK(round_trip.ok());
    FUZZ_CHECK(*round_trip == cursor);
  } else {
    CheckInvalid(round_trip);
  }
  CheckInvalid(other.Decode(token));

  // 3. One character changed to another base64url character: never valid.
  std::string tampered = token;
  const size_t position = flip_at % tampered.size();
  char replacement = kBase64UrlAlphabet[flip_to % 64];
  if (replacement == tampered[position]) {
    replacement = kBase64UrlAlphabet[(flip_to + 1) % 64];
  }
  tampered[position] = replacement;
  CheckInvalid(codec.Decode(tampered));
  // Truncated or extended tokens are not valid either.
  CheckInvalid(codec.Decode(absl::string_view(token).substr(0, position)));
  CheckInvalid(codec.Decode(token + kBase64UrlAlphabet[flip_to % 64]));
  return 0;
}
