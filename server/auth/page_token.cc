#include "server/auth/page_token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"

namespace verdictd {
namespace {

// Token layout (before base64url):
//   [0]        version: kHistoryVersion (a history page) or kClicksVersion (a ledger page)
//   [1]        ip length n, 0..kMaxIpLength
//   [2, 2+n)   ip bytes
//   kClicks:   caller length m (one byte), then m caller bytes, then team length t (one byte),
//              then t team bytes
//   then       since_us, until_us, checked_at_us, id: each 8 bytes, big-endian two's complement
//   then       tag: HMAC-SHA256(secret, all of the above), truncated to kTagSize bytes
// The tag is truncated to 128 bits, which is ample for a MAC: forging a token needs ~2^128
// online guesses, each of which costs a request. The version byte is under the tag, so a token
// of one kind cannot be passed off as the other.
constexpr uint8_t kHistoryVersion = 1;
// 2 was a ledger page without the team filter: refused since, like any unknown version.
constexpr uint8_t kClicksVersion = 3;
constexpr size_t kMaxCallerLength = 255;
constexpr size_t kMaxIpLength = 45;  // INET6_ADDRSTRLEN - 1: the longest textual IP address
constexpr size_t kTagSize = 16;
constexpr size_t kFixedSize = 1 + 1 + 4 * 8;  // version, ip length, four int64 fields
constexpr size_t kMaxTokenChars = 1024;
constexpr char kInvalid[] = "page_token is invalid";

void AppendInt64(int64_t value, std::string* out) {
  const auto u = static_cast<uint64_t>(value);
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((u >> shift) & 0xff));
  }
}

// REQUIRES: data has at least 8 bytes.
int64_t ReadInt64(const unsigned char* data) {
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i) {
    u = (u << 8) | data[i];
  }
  return static_cast<int64_t>(u);  // two's complement (guaranteed by C++20, and by gcc/clang)
}

std::string Tag(const std::string& secret, absl::string_view message) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), md,
           &md_len) == nullptr ||
      md_len < kTagSize) {
    // Only possible on allocation failure; an unauthenticated token must never be produced
    // or accepted.
    std::fprintf(stderr, "verdictd: HMAC-SHA256 failed\n");
    std::abort();
  }
  return std::string(reinterpret_cast<const char*>(md), kTagSize);
}

}  // namespace

PageTokenCodec::PageTokenCodec(std::string secret) : secret_(std::move(secret)) {
  if (secret_.size() < 32) {
    std::fprintf(stderr, "verdictd: PageTokenCodec secret must be at least 32 bytes\n");
    std::abort();
  }
}

std::string PageTokenCodec::Encode(const PageCursor& cursor) const {
  const bool clicks = cursor.kind == PageCursor::Kind::kClicks;
  std::string bytes;
  bytes.reserve(kFixedSize + cursor.ip.size() + 2 + cursor.caller.size() + cursor.team.size() +
                kTagSize);
  bytes.push_back(static_cast<char>(clicks ? kClicksVersion : kHistoryVersion));
  if (cursor.ip.size() <= kMaxIpLength && cursor.caller.size() <= kMaxCallerLength &&
      cursor.team.size() <= kMaxCallerLength) {
    bytes.push_back(static_cast<char>(cursor.ip.size()));
    bytes.append(cursor.ip);
    if (clicks) {
      bytes.push_back(static_cast<char>(cursor.caller.size()));
      bytes.append(cursor.caller);
      bytes.push_back(static_cast<char>(cursor.team.size()));
      bytes.append(cursor.team);
    }
  } else {
    // Not an IP address or a caller: a caller bug. Returning "" would read as "no more pages"
    // and silently cut the listing short, so produce a well-formed-looking token that Decode
    // always refuses.
    bytes.push_back(static_cast<char>(0xff));
  }
  AppendInt64(cursor.since_us, &bytes);
  AppendInt64(cursor.until_us, &bytes);
  AppendInt64(cursor.checked_at_us, &bytes);
  AppendInt64(cursor.id, &bytes);
  bytes.append(Tag(secret_, bytes));
  return absl::WebSafeBase64Escape(bytes);
}

absl::StatusOr<PageCursor> PageTokenCodec::Decode(absl::string_view token) const {
  // Every failure gets the same message, so a caller learns nothing about which check failed.
  const absl::Status invalid = absl::InvalidArgumentError(kInvalid);
  if (token.empty() || token.size() > kMaxTokenChars) {
    return invalid;
  }
  std::string bytes;
  if (!absl::WebSafeBase64Unescape(token, &bytes)) {
    return invalid;
  }
  // Only the canonical spelling is accepted (no padding, whitespace or stray low bits), so a
  // token has exactly one valid form.
  if (absl::WebSafeBase64Escape(bytes) != token) {
    return invalid;
  }
  if (bytes.size() < kFixedSize + kTagSize) {
    return invalid;
  }
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  if (data[0] != kHistoryVersion && data[0] != kClicksVersion) {
    return invalid;
  }
  const bool clicks = data[0] == kClicksVersion;
  const size_t ip_length = data[1];
  if (ip_length > kMaxIpLength || bytes.size() < kFixedSize + ip_length + kTagSize) {
    return invalid;
  }
  size_t caller_length = 0;
  size_t team_length = 0;
  if (clicks) {
    // kFixedSize + ip_length + kTagSize > 2 + ip_length, so the length byte is there.
    caller_length = data[2 + ip_length];
    // The team's length byte: there if the token holds at least the fixed fields after it.
    if (bytes.size() < kFixedSize + ip_length + 1 + caller_length + kTagSize) {
      return invalid;
    }
    team_length = data[3 + ip_length + caller_length];
  }
  const size_t header = 2 + ip_length + (clicks ? 2 + caller_length + team_length : 0);
  if (bytes.size() != header + 4 * 8 + kTagSize) {
    return invalid;
  }
  const size_t tagged = bytes.size() - kTagSize;
  const std::string expected = Tag(secret_, absl::string_view(bytes).substr(0, tagged));
  if (CRYPTO_memcmp(expected.data(), data + tagged, kTagSize) != 0) {
    return invalid;
  }

  PageCursor cursor;
  cursor.ip.assign(bytes, 2, ip_length);
  if (clicks) {
    cursor.kind = PageCursor::Kind::kClicks;
    cursor.caller.assign(bytes, 3 + ip_length, caller_length);
    cursor.team.assign(bytes, 4 + ip_length + caller_length, team_length);
  }
  const unsigned char* p = data + header;
  cursor.since_us = ReadInt64(p);
  cursor.until_us = ReadInt64(p + 8);
  cursor.checked_at_us = ReadInt64(p + 16);
  cursor.id = ReadInt64(p + 24);
  return cursor;
}

}  // namespace verdictd
