// Fuzzes verdictd::ParseIp, which sees every caller-supplied IP before anything else does.
//
// Properties: it never crashes; a rejection is INVALID_ARGUMENT with a short, printable message
// (the input is quoted escaped and cut, so hostile bytes cannot reach the logs raw); an accepted
// address agrees byte for byte with glibc's inet_pton, and its canonical text parses back to the
// same bytes and is its own canonical form.

#include <arpa/inet.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/ip.h"
#include "fuzz_check.h"

namespace {

bool IsPrintableAscii(absl::string_view text) {
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte > 0x7e) {
      return false;
    }
  }
  return true;
}

// glibc's reading of `text`, as 16 bytes with IPv4 mapped like ParseIp stores it; false when glibc
// rejects it. inet_pton wants a NUL-terminated string, so text with a NUL in it is not compared.
bool GlibcParse(const std::string& text, std::array<uint8_t, 16>* out) {
  *out = {};
  if (text.find(':') == std::string::npos) {
    (*out)[10] = 0xff;
    (*out)[11] = 0xff;
    return inet_pton(AF_INET, text.c_str(), out->data() + 12) == 1;
  }
  return inet_pton(AF_INET6, text.c_str(), out->data()) == 1;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<verdictd::IpAddress> parsed = verdictd::ParseIp(text);

  std::array<uint8_t, 16> glibc_bytes;
  const bool comparable = text.find('\0') == std::string::npos;
  const bool glibc_ok = comparable && GlibcParse(text, &glibc_bytes);

  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    // At most 64 escaped input characters plus the longest reason.
    FUZZ_CHECK(parsed.status().message().size() <= 200);
    FUZZ_CHECK(IsPrintableAscii(parsed.status().message()));
    // Every text form glibc accepts (RFC 4291 section 2.2, dotted quads without leading zeros) is
    // one ParseIp documents as valid too, so the two must agree both ways.
    FUZZ_CHECK(!glibc_ok);
    return 0;
  }

  const verdictd::IpAddress& ip = *parsed;
  FUZZ_CHECK(comparable);
  FUZZ_CHECK(glibc_ok);
  FUZZ_CHECK(ip.bytes() == glibc_bytes);

  // is_v4() means exactly "stored IPv4-mapped".
  static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  FUZZ_CHECK(ip.is_v4() == (std::memcmp(ip.bytes().data(), kMappedPrefix, 12) == 0));

  const std::string& canonical = ip.canonical();
  FUZZ_CHECK(!canonical.empty());
  FUZZ_CHECK(canonical.size() <= 45);
  const absl::StatusOr<verdictd::IpAddress> again = verdictd::ParseIp(canonical);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->bytes() == ip.bytes());
  FUZZ_CHECK(again->canonical() == canonical);
  FUZZ_CHECK(again->is_v4() == ip.is_v4());
  FUZZ_CHECK(again->IsPublic() == ip.IsPublic());
  // Canonical IPv6 text is lowercase (RFC 5952 section 4.3).
  for (char c : canonical) {
    FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
  }
  return 0;
}
