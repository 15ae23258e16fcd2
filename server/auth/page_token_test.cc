#include "server/auth/page_token.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

const std::string kSecret = "0123456789abcdef0123456789abcdef";  // 32 bytes
const std::string kOtherSecret = "fedcba9876543210fedcba9876543210-";

// The one failure every bad token must produce.
void ExpectInvalid(const absl::StatusOr<PageCursor>& decoded) {
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(decoded.status().message(), "page_token is invalid");
}

std::vector<PageCursor> Cursors() {
  return {
      {"1.2.3.4", kMin, kMax, 1'700'000'000'000'000, 42},
      {"", 0, 0, 0, 0},
      {"2001:db8::1", 1'600'000'000'000'000, 1'700'000'000'000'000, 1'650'000'000'000'000, kMax},
      // The longest textual IP address: 45 characters.
      {"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", kMax, kMin, kMin, kMin},
      {"10.0.0.1", -1, -1, -1, -1},
      {"::", kMin, kMin, kMin, kMin},
      {"255.255.255.255", kMax, kMax, kMax, kMax},
      // ListClicks pages: the IP filter may be empty, the caller filter too, or up to 255 bytes.
      {"", kMin, kMax, 1'700'000'000'000'000, 7, PageCursor::Kind::kClicks, ""},
      {"192.0.2.1", 0, kMax, 5, 9, PageCursor::Kind::kClicks, "checkout"},
      {"", kMin, kMax, kMax, kMax, PageCursor::Kind::kClicks, std::string(255, 'c')},
      // ... and the team filter likewise.
      {"", kMin, kMax, 5, 9, PageCursor::Kind::kClicks, "", "payments"},
      {"192.0.2.1", kMin, kMax, 5, 9, PageCursor::Kind::kClicks, std::string(255, 'c'),
       std::string(255, 't')},
  };
}

// Hand-built token bytes (version, ip, four int64s) with a valid tag under `secret`, so that
// structural checks can be exercised past the tag.
std::string SignedToken(const std::string& secret, const std::string& body) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(body.data()), body.size(), md, &md_len);
  return absl::WebSafeBase64Escape(body + std::string(reinterpret_cast<char*>(md), 16));
}

std::string Body(uint8_t version, uint8_t ip_length, const std::string& ip) {
  std::string body;
  body.push_back(static_cast<char>(version));
  body.push_back(static_cast<char>(ip_length));
  body += ip;
  body += std::string(32, '\x01');
  return body;
}

TEST(PageTokenTest, RoundTrip) {
  const PageTokenCodec codec(kSecret);
  for (const PageCursor& cursor : Cursors()) {
    SCOPED_TRACE(cursor.ip);
    const std::string token = codec.Encode(cursor);
    EXPECT_LE(token.size(), 1024u);
    EXPECT_EQ(
        token.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
        std::string::npos)
        << token;
    EXPECT_EQ(codec.Encode(cursor), token);  // deterministic
    absl::StatusOr<PageCursor> decoded = codec.Decode(token);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, cursor);
    // Another codec with the same secret (e.g. after a restart) reads it too.
    absl::StatusOr<PageCursor> again = PageTokenCodec(kSecret).Decode(token);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, cursor);
  }
}

TEST(PageTokenTest, HandBuiltTokenWithValidTagDecodes) {
  // Pins the documented layout: version 1, uint8 ip length, ip, 4 x int64 big-endian, tag.
  const PageTokenCodec codec(kSecret);
  absl::StatusOr<PageCursor> decoded = codec.Decode(SignedToken(kSecret, Body(1, 3, "::1")));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->ip, "::1");
  EXPECT_EQ(decoded->since_us, 0x0101010101010101);
  EXPECT_EQ(decoded->id, 0x0101010101010101);
}

TEST(PageTokenTest, EveryBitFlipFails) {
  const PageTokenCodec codec(kSecret);
  for (const PageCursor& cursor : Cursors()) {
    SCOPED_TRACE(cursor.ip);
    std::string bytes;
    ASSERT_TRUE(absl::WebSafeBase64Unescape(codec.Encode(cursor), &bytes));
    for (size_t i = 0; i < bytes.size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        std::string flipped = bytes;
        flipped[i] = static_cast<char>(flipped[i] ^ (1 << bit));
        SCOPED_TRACE(testing::Message() << "byte " << i << " bit " << bit);
        ExpectInvalid(codec.Decode(absl::WebSafeBase64Escape(flipped)));
      }
    }
  }
}

TEST(PageTokenTest, OtherSecretFails) {
  const PageTokenCodec codec(kSecret);
  const PageTokenCodec other(kOtherSecret);
  for (const PageCursor& cursor : Cursors()) {
    SCOPED_TRACE(cursor.ip);
    ExpectInvalid(other.Decode(codec.Encode(cursor)));
    ExpectInvalid(codec.Decode(other.Encode(cursor)));
  }
}

TEST(PageTokenTest, TruncatedAndExtendedTokensFail) {
  const PageTokenCodec codec(kSecret);
  for (const PageCursor& cursor : Cursors()) {
    SCOPED_TRACE(cursor.ip);
    const std::string token = codec.Encode(cursor);
    for (size_t n = 0; n < token.size(); ++n) {
      ExpectInvalid(codec.Decode(token.substr(0, n)));
      ExpectInvalid(codec.Decode(token.substr(n + 1)));
    }
    const std::vector<std::string> suffixes = {"A",  "AA", "AAA", "AAAA", "=",
                                               "==", "\n", " ",   ".",    std::string(1, '\0')};
    for (const std::string& suffix : suffixes) {
      ExpectInvalid(codec.Decode(token + suffix));
    }
    ExpectInvalid(codec.Decode(" " + token));
    // Extra decoded bytes, re-encoded canonically.
    std::string bytes;
    ASSERT_TRUE(absl::WebSafeBase64Unescape(token, &bytes));
    ExpectInvalid(codec.Decode(absl::WebSafeBase64Escape(bytes + '\0')));
    ExpectInvalid(codec.Decode(absl::WebSafeBase64Escape(bytes.substr(0, bytes.size() - 1))));
    // Standard (padded, +/) base64 of the same bytes is not the token's spelling.
    const std::string standard = absl::Base64Escape(bytes);
    if (standard != token) {
      ExpectInvalid(codec.Decode(standard));
    }
  }
}

TEST(PageTokenTest, StructuralChecksHoldEvenWithValidTag) {
  const PageTokenCodec codec(kSecret);
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(0, 3, "::1"))));    // version 0
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(2, 3, "::1"))));    // 2: retired
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(3, 3, "::1"))));    // 3: no caller
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(4, 3, "::1"))));    // version 4
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(1, 4, "::1"))));    // length too big
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(1, 2, "::1"))));    // length too small
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(1, 255, "::1"))));  // absurd length
  const std::string ip46(46, '1');
  ExpectInvalid(codec.Decode(SignedToken(kSecret, Body(1, 46, ip46))));  // over 45
  ExpectInvalid(codec.Decode(SignedToken(kSecret, "\x01")));             // too short
  ExpectInvalid(codec.Decode(SignedToken(kSecret, "")));
}

// The kind is signed with the rest: a history token never reads as a ledger page, nor back.
TEST(PageTokenTest, KindsNeverMix) {
  const PageTokenCodec codec(kSecret);
  PageCursor history{"192.0.2.1", kMin, kMax, 5, 9};
  PageCursor clicks = history;
  clicks.kind = PageCursor::Kind::kClicks;
  const std::string history_token = codec.Encode(history);
  const std::string clicks_token = codec.Encode(clicks);
  EXPECT_NE(history_token, clicks_token);
  absl::StatusOr<PageCursor> a = codec.Decode(history_token);
  absl::StatusOr<PageCursor> b = codec.Decode(clicks_token);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->kind, PageCursor::Kind::kHistory);
  EXPECT_EQ(b->kind, PageCursor::Kind::kClicks);
  // A ledger token's layout, hand-built: version 3, ip, caller length, caller, team length,
  // team, four int64s.
  std::string body = Body(3, 3, "::1");
  body.insert(5, std::string("\x02"
                             "ab"
                             "\x03"
                             "xyz",
                             7));
  absl::StatusOr<PageCursor> built = codec.Decode(SignedToken(kSecret, body));
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_EQ(built->ip, "::1");
  EXPECT_EQ(built->caller, "ab");
  EXPECT_EQ(built->team, "xyz");
  EXPECT_EQ(built->id, 0x0101010101010101);
  // A caller or team length past the end, or short of it, is refused.
  for (const auto& [at, length] :
       std::vector<std::pair<size_t, char>>{{5, 3}, {5, 1}, {8, 4}, {8, 2}, {8, 100}, {5, 120}}) {
    std::string bad = body;
    bad[at] = length;
    ExpectInvalid(codec.Decode(SignedToken(kSecret, bad)));
  }
}

TEST(PageTokenTest, OverlongCallerEncodesToATokenThatNeverDecodes) {
  const PageTokenCodec codec(kSecret);
  PageCursor cursor{"", 1, 2, 3, 4, PageCursor::Kind::kClicks, std::string(256, 'c')};
  const std::string token = codec.Encode(cursor);
  EXPECT_FALSE(token.empty());
  ExpectInvalid(codec.Decode(token));
  PageCursor team{"", 1, 2, 3, 4, PageCursor::Kind::kClicks, "", std::string(256, 't')};
  ExpectInvalid(codec.Decode(codec.Encode(team)));
}

TEST(PageTokenTest, OverlongIpEncodesToATokenThatNeverDecodes) {
  const PageTokenCodec codec(kSecret);
  const std::string token = codec.Encode({std::string(46, 'x'), 1, 2, 3, 4});
  EXPECT_FALSE(token.empty());
  ExpectInvalid(codec.Decode(token));
}

TEST(PageTokenTest, OversizeTokensRejected) {
  const PageTokenCodec codec(kSecret);
  ExpectInvalid(codec.Decode(std::string(1025, 'A')));
  ExpectInvalid(codec.Decode(std::string(1024, 'A')));
  ExpectInvalid(codec.Decode(std::string(1 << 20, 'A')));
  ExpectInvalid(codec.Decode(""));
}

TEST(PageTokenTest, RandomGarbageNeverCrashesAndAlwaysFails) {
  const PageTokenCodec codec(kSecret);
  std::mt19937_64 rng(20240611);
  constexpr absl::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::uniform_int_distribution<int> length(0, 1100);
  std::uniform_int_distribution<int> any_byte(0, 255);
  std::uniform_int_distribution<size_t> alphabet_index(0, kAlphabet.size() - 1);
  for (int i = 0; i < 10'000; ++i) {
    std::string garbage(static_cast<size_t>(length(rng) % (i % 2 == 0 ? 1101 : 200)), '\0');
    const bool base64_only = i % 3 != 0;  // most get past base64 decoding
    for (char& c : garbage) {
      c = base64_only ? kAlphabet[alphabet_index(rng)] : static_cast<char>(any_byte(rng));
    }
    SCOPED_TRACE(i);
    ExpectInvalid(codec.Decode(garbage));
  }
}

TEST(PageTokenTest, RandomMutationsOfValidTokensFail) {
  const PageTokenCodec codec(kSecret);
  std::mt19937_64 rng(7);
  constexpr absl::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::uniform_int_distribution<size_t> alphabet_index(0, kAlphabet.size() - 1);
  const std::vector<PageCursor> cursors = Cursors();
  for (int i = 0; i < 2'000; ++i) {
    std::string token = codec.Encode(cursors[i % cursors.size()]);
    const size_t pos = std::uniform_int_distribution<size_t>(0, token.size() - 1)(rng);
    char replacement = token[pos];
    while (replacement == token[pos]) {
      replacement = kAlphabet[alphabet_index(rng)];
    }
    token[pos] = replacement;
    SCOPED_TRACE(token);
    ExpectInvalid(codec.Decode(token));
  }
}

}  // namespace
}  // namespace verdictd
