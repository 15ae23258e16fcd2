#include "common/ip.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/quote.h"

namespace verdictd {
namespace {

// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" is the longest valid text form. Anything
// longer is rejected before any other work so hostile input costs O(1).
constexpr size_t kMaxIpTextLength = 45;

absl::Status Invalid(absl::string_view text, absl::string_view reason) {
  return absl::InvalidArgumentError(
      absl::StrCat("invalid IP address ", QuoteForError(text), ": ", reason));
}

// The helpers below return a bare reason; ParseIp() adds the quoted input once.
absl::Status Reason(absl::string_view reason) { return absl::InvalidArgumentError(reason); }

absl::Status UnexpectedCharacter(char c) {
  return Reason(
      absl::StrCat("unexpected character '", absl::CHexEscape(absl::string_view(&c, 1)), "'"));
}

bool IsAsciiDigits(absl::string_view text) {
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

// Strict dotted quad: exactly four decimal parts 0-255. Leading zeros are rejected because
// inet_aton() and many other parsers read "010" as octal 8, so such input is ambiguous.
absl::Status ParseIpv4(absl::string_view text, uint8_t out[4]) {
  for (char c : text) {
    if (c != '.' && !absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return UnexpectedCharacter(c);
    }
  }
  absl::string_view parts[4];
  int count = 0;
  size_t start = 0;
  while (true) {
    const size_t dot = text.find('.', start);
    if (count == 4) {
      return Reason("IPv4 address must have exactly four parts");
    }
    parts[count++] = text.substr(start, dot == absl::string_view::npos ? dot : dot - start);
    if (dot == absl::string_view::npos) {
      break;
    }
    start = dot + 1;
  }
  if (count != 4) {
    return Reason("IPv4 address must have exactly four parts");
  }
  for (int i = 0; i < 4; ++i) {
    const absl::string_view part = parts[i];
    if (part.empty()) {
      return Reason("IPv4 parts must not be empty");
    }
    if (part.size() > 1 && part[0] == '0') {
      return Reason("IPv4 parts must not have leading zeros");
    }
    // Checking the length first keeps the accumulation below from overflowing.
    if (part.size() > 3) {
      return Reason("IPv4 parts must be at most 255");
    }
    int value = 0;
    for (char c : part) {
      value = value * 10 + (c - '0');
    }
    if (value > 255) {
      return Reason("IPv4 parts must be at most 255");
    }
    out[i] = static_cast<uint8_t>(value);
  }
  return absl::OkStatus();
}

// Parses colon-separated hex groups (no "::" inside) into `groups`, appending at `*count`.
absl::Status ParseHexGroups(absl::string_view text, uint16_t groups[8], int* count) {
  if (text.empty()) {
    return absl::OkStatus();
  }
  size_t start = 0;
  while (true) {
    const size_t colon = text.find(':', start);
    const absl::string_view group =
        text.substr(start, colon == absl::string_view::npos ? colon : colon - start);
    if (group.empty()) {
      return Reason("IPv6 groups must not be empty");
    }
    if (group.size() > 4) {
      return Reason("IPv6 groups must have at most 4 hex digits");
    }
    if (*count == 8) {
      return Reason("IPv6 address has more than 8 groups");
    }
    uint16_t value = 0;
    for (char c : group) {
      const int digit = absl::ascii_isdigit(static_cast<unsigned char>(c))
                            ? c - '0'
                            : absl::ascii_tolower(static_cast<unsigned char>(c)) - 'a' + 10;
      value = static_cast<uint16_t>(value * 16 + digit);
    }
    groups[(*count)++] = value;
    if (colon == absl::string_view::npos) {
      break;
    }
    start = colon + 1;
  }
  return absl::OkStatus();
}

// RFC 4291 section 2.2 text forms: eight groups, optionally one "::" standing for one or more
// zero groups, optionally a dotted quad in the last 32 bits.
absl::Status ParseIpv6(absl::string_view text, std::array<uint8_t, 16>* out) {
  for (char c : text) {
    if (c != ':' && c != '.' && !absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return UnexpectedCharacter(c);
    }
  }
  if (text.find(":::") != absl::string_view::npos) {
    return Reason("IPv6 address must not contain \":::\"");
  }
  const size_t double_colon = text.find("::");
  if (double_colon != absl::string_view::npos &&
      text.find("::", double_colon + 2) != absl::string_view::npos) {
    return Reason("IPv6 address must not contain more than one \"::\"");
  }
  if (text.front() == ':' && double_colon != 0) {
    return Reason("IPv6 address must not start with a single ':'");
  }
  if (text.back() == ':' && double_colon != text.size() - 2) {
    return Reason("IPv6 address must not end with a single ':'");
  }

  // Split off an embedded dotted quad; it may only occupy the last 32 bits.
  absl::string_view hex_part = text;
  bool has_ipv4 = false;
  uint8_t ipv4[4] = {};
  const size_t first_dot = text.find('.');
  if (first_dot != absl::string_view::npos) {
    const size_t last_colon = text.rfind(':');
    if (first_dot < last_colon) {
      return Reason("an embedded IPv4 address is only allowed in the last 32 bits");
    }
    absl::Status status = ParseIpv4(text.substr(last_colon + 1), ipv4);
    if (!status.ok()) {
      return status;
    }
    has_ipv4 = true;
    // Keep a "::" that directly precedes the dotted quad; drop a single separating ':'.
    const bool after_double_colon = last_colon >= 1 && text[last_colon - 1] == ':';
    hex_part = text.substr(0, after_double_colon ? last_colon + 1 : last_colon);
  }
  const int max_groups = has_ipv4 ? 6 : 8;

  uint16_t head[8] = {};
  uint16_t tail[8] = {};
  int head_count = 0;
  int tail_count = 0;
  if (double_colon == absl::string_view::npos) {
    absl::Status status = ParseHexGroups(hex_part, head, &head_count);
    if (!status.ok()) {
      return status;
    }
    if (head_count != max_groups) {
      return Reason(absl::StrCat("IPv6 address must have 8 groups of 16 bits, got ",
                                 head_count + (has_ipv4 ? 2 : 0)));
    }
  } else {
    absl::Status status = ParseHexGroups(hex_part.substr(0, double_colon), head, &head_count);
    if (status.ok()) {
      status = ParseHexGroups(hex_part.substr(double_colon + 2), tail, &tail_count);
    }
    if (!status.ok()) {
      return status;
    }
    // "::" stands for at least one zero group (RFC 4291), so at most 7 explicit groups.
    if (head_count + tail_count >= max_groups) {
      return Reason(absl::StrCat("IPv6 address with \"::\" must have at most 7 groups, got ",
                                 head_count + tail_count + (has_ipv4 ? 2 : 0)));
    }
  }

  uint16_t groups[8] = {};
  for (int i = 0; i < head_count; ++i) {
    groups[i] = head[i];
  }
  for (int i = 0; i < tail_count; ++i) {
    groups[max_groups - tail_count + i] = tail[i];
  }
  for (int i = 0; i < max_groups; ++i) {
    (*out)[2 * i] = static_cast<uint8_t>(groups[i] >> 8);
    (*out)[2 * i + 1] = static_cast<uint8_t>(groups[i] & 0xff);
  }
  if (has_ipv4) {
    for (int i = 0; i < 4; ++i) {
      (*out)[12 + i] = ipv4[i];
    }
  }
  return absl::OkStatus();
}

// Parses `text` (already known to be non-empty, short and free of bytes outside printable
// ASCII) into 16 bytes, returning a bare reason on failure.
absl::Status ParseToBytes(absl::string_view text, std::array<uint8_t, 16>* out);

// True when `text` is "<address>:<digits>" with an address whose last part is a dotted quad,
// e.g. "1.2.3.4:80" or "::ffff:1.2.3.4:80". Such text is never a valid IPv6 address (a dotted
// quad must come last), so reporting it as a port is unambiguous.
bool LooksLikeAddressWithPort(absl::string_view text) {
  const size_t last_colon = text.rfind(':');
  if (last_colon == absl::string_view::npos || last_colon == 0) {
    return false;
  }
  const absl::string_view port = text.substr(last_colon + 1);
  const absl::string_view host = text.substr(0, last_colon);
  if (port.empty() || !IsAsciiDigits(port)) {
    return false;
  }
  const size_t host_last_colon = host.rfind(':');
  const absl::string_view host_last_part =
      host_last_colon == absl::string_view::npos ? host : host.substr(host_last_colon + 1);
  if (host_last_part.find('.') == absl::string_view::npos) {
    return false;
  }
  std::array<uint8_t, 16> ignored;
  return ParseToBytes(host, &ignored).ok();
}

absl::Status ParseToBytes(absl::string_view text, std::array<uint8_t, 16>* out) {
  // Recognise common non-address syntax first, so callers get a precise reason instead of
  // "unexpected character".
  if (text.front() == '[' && text.find("]:") != absl::string_view::npos) {
    return Reason("a port is not allowed");
  }
  if (text.find_first_of("[]") != absl::string_view::npos) {
    return Reason("brackets are not allowed");
  }
  if (text.find('%') != absl::string_view::npos) {
    return Reason("zone ids are not allowed");
  }
  if (text.find('/') != absl::string_view::npos) {
    return Reason("prefix lengths are not allowed");
  }
  // A sign only reads as one where a number starts; elsewhere (e.g. "not-an-ip") the parser's
  // "unexpected character" is the better message.
  const size_t sign = text.find_first_of("+-");
  if (sign != absl::string_view::npos &&
      (sign == 0 || text[sign - 1] == '.' || text[sign - 1] == ':')) {
    return Reason("signs are not allowed");
  }
  if (text.find(':') == absl::string_view::npos) {
    *out = {};
    (*out)[10] = 0xff;
    (*out)[11] = 0xff;
    return ParseIpv4(text, out->data() + 12);
  }
  if (LooksLikeAddressWithPort(text)) {
    return Reason("a port is not allowed");
  }
  *out = {};
  return ParseIpv6(text, out);
}

// RFC 5952 section 4: lowercase hex without leading zeros; the longest run of two or more zero
// groups (the first on ties) becomes "::"; a lone zero group stays "0".
std::string FormatIpv6(const std::array<uint8_t, 16>& bytes) {
  uint16_t groups[8];
  for (int i = 0; i < 8; ++i) {
    groups[i] = static_cast<uint16_t>((bytes[2 * i] << 8) | bytes[2 * i + 1]);
  }
  int best_start = -1;
  int best_length = 1;  // Runs must beat this, so a single zero group is never compressed.
  for (int i = 0; i < 8;) {
    if (groups[i] != 0) {
      ++i;
      continue;
    }
    int end = i;
    while (end < 8 && groups[end] == 0) {
      ++end;
    }
    if (end - i > best_length) {  // Strictly greater: the first run wins ties.
      best_start = i;
      best_length = end - i;
    }
    i = end;
  }
  std::string text;
  for (int i = 0; i < 8;) {
    if (i == best_start) {
      text += "::";
      i += best_length;
      continue;
    }
    if (!text.empty() && text.back() != ':') {
      text += ':';
    }
    absl::StrAppend(&text, absl::Hex(groups[i]));
    ++i;
  }
  return text;
}

bool IsIpv4Mapped(const std::array<uint8_t, 16>& bytes) {
  for (int i = 0; i < 10; ++i) {
    if (bytes[i] != 0) {
      return false;
    }
  }
  return bytes[10] == 0xff && bytes[11] == 0xff;
}

bool MatchesPrefix(const uint8_t* address, const uint8_t* prefix, int length) {
  const int full_bytes = length / 8;
  for (int i = 0; i < full_bytes; ++i) {
    if (address[i] != prefix[i]) {
      return false;
    }
  }
  const int rest = length % 8;
  if (rest == 0) {
    return true;
  }
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (address[full_bytes] & mask) == (prefix[full_bytes] & mask);
}

struct Ipv4Range {
  std::array<uint8_t, 4> prefix;
  int length;
};

// IPv4 ranges that are not globally routable (IANA IPv4 Special-Purpose Address Registry,
// plus multicast and the reserved class E block). The whole of 192.0.0.0/24 is excluded even
// though a few /32s in it are marked globally reachable; none of them are client addresses.
constexpr Ipv4Range kNonPublicIpv4[] = {
    {{0, 0, 0, 0}, 8},        // "This network" (RFC 791).
    {{10, 0, 0, 0}, 8},       // Private use (RFC 1918).
    {{100, 64, 0, 0}, 10},    // Shared address space / CGNAT (RFC 6598).
    {{127, 0, 0, 0}, 8},      // Loopback (RFC 1122).
    {{169, 254, 0, 0}, 16},   // Link local (RFC 3927).
    {{172, 16, 0, 0}, 12},    // Private use (RFC 1918).
    {{192, 0, 0, 0}, 24},     // IETF protocol assignments (RFC 6890).
    {{192, 0, 2, 0}, 24},     // Documentation TEST-NET-1 (RFC 5737).
    {{192, 88, 99, 0}, 24},   // Deprecated 6to4 relay anycast (RFC 7526).
    {{192, 168, 0, 0}, 16},   // Private use (RFC 1918).
    {{198, 18, 0, 0}, 15},    // Benchmarking (RFC 2544).
    {{198, 51, 100, 0}, 24},  // Documentation TEST-NET-2 (RFC 5737).
    {{203, 0, 113, 0}, 24},   // Documentation TEST-NET-3 (RFC 5737).
    {{224, 0, 0, 0}, 4},      // Multicast (RFC 5771).
    {{240, 0, 0, 0}, 4},      // Reserved (RFC 1112), including limited broadcast.
};

struct Ipv6Range {
  std::array<uint8_t, 16> prefix;
  int length;
};

// Only global unicast space can be public; everything else (::, ::1, IPv4-compatible,
// NAT64 64:ff9b::/96 and 64:ff9b:1::/48, discard 100::/64, ULA fc00::/7, link-local fe80::/10,
// site-local fec0::/10, multicast ff00::/8, unassigned space) is not.
constexpr Ipv6Range kGlobalUnicastIpv6 = {{0x20}, 3};

// Special-purpose blocks inside 2000::/3 (IANA IPv6 Special-Purpose Address Registry).
constexpr Ipv6Range kNonPublicIpv6[] = {
    {{0x20, 0x01}, 23},              // IETF protocol assignments (RFC 2928), incl. Teredo.
    {{0x20, 0x01, 0x0d, 0xb8}, 32},  // Documentation (RFC 3849).
    {{0x20, 0x02}, 16},              // 6to4 (RFC 3056); the real host is the embedded IPv4.
    {{0x3f, 0xff}, 20},              // Documentation (RFC 9637).
};

}  // namespace

bool IpAddress::IsPublic() const {
  if (is_v4_) {
    const uint8_t* address = bytes_.data() + 12;
    for (const Ipv4Range& range : kNonPublicIpv4) {
      if (MatchesPrefix(address, range.prefix.data(), range.length)) {
        return false;
      }
    }
    return true;
  }
  if (!MatchesPrefix(bytes_.data(), kGlobalUnicastIpv6.prefix.data(), kGlobalUnicastIpv6.length)) {
    return false;
  }
  for (const Ipv6Range& range : kNonPublicIpv6) {
    if (MatchesPrefix(bytes_.data(), range.prefix.data(), range.length)) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<IpAddress> ParseIp(absl::string_view text) {
  if (text.empty()) {
    return absl::InvalidArgumentError("ip is empty");
  }
  if (text.size() > kMaxIpTextLength) {
    return Invalid(
        text, absl::StrCat("too long (", text.size(), " bytes; at most ", kMaxIpTextLength, ")"));
  }
  // Byte-level checks first: later stages may then assume printable ASCII.
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte == 0) {
      return Invalid(text, "NUL bytes are not allowed");
    }
    if (byte >= 0x80) {
      return Invalid(text, "non-ASCII bytes are not allowed");
    }
    if (absl::ascii_isspace(byte)) {
      return Invalid(text, "whitespace is not allowed");
    }
    if (absl::ascii_iscntrl(byte)) {
      return Invalid(text, "control characters are not allowed");
    }
  }

  IpAddress address;
  absl::Status status = ParseToBytes(text, &address.bytes_);
  if (!status.ok()) {
    return Invalid(text, status.message());
  }
  address.is_v4_ = IsIpv4Mapped(address.bytes_);
  if (address.is_v4_) {
    const auto& b = address.bytes_;
    address.canonical_ = absl::StrCat(static_cast<int>(b[12]), ".", static_cast<int>(b[13]), ".",
                                      static_cast<int>(b[14]), ".", static_cast<int>(b[15]));
  } else {
    address.canonical_ = FormatIpv6(address.bytes_);
  }
  return address;
}

}  // namespace verdictd
