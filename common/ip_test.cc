#include "common/ip.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::array<uint8_t, 16> Mapped(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d};
}

std::array<uint8_t, 16> FromGroups(const std::array<uint16_t, 8>& groups) {
  std::array<uint8_t, 16> bytes{};
  for (int i = 0; i < 8; ++i) {
    bytes[2 * i] = static_cast<uint8_t>(groups[i] >> 8);
    bytes[2 * i + 1] = static_cast<uint8_t>(groups[i] & 0xff);
  }
  return bytes;
}

struct ValidCase {
  std::string input;
  std::string canonical;
  bool is_v4;
};

TEST(ParseIpTest, AcceptsValidIpv4) {
  const ValidCase kCases[] = {
      {"0.0.0.0", "0.0.0.0", true},     {"255.255.255.255", "255.255.255.255", true},
      {"1.2.3.4", "1.2.3.4", true},     {"127.0.0.1", "127.0.0.1", true},
      {"10.0.0.10", "10.0.0.10", true}, {"192.168.100.200", "192.168.100.200", true},
      {"8.8.8.8", "8.8.8.8", true},     {"100.0.99.250", "100.0.99.250", true},
  };
  for (const ValidCase& c : kCases) {
    SCOPED_TRACE(c.input);
    absl::StatusOr<IpAddress> ip = ParseIp(c.input);
    ASSERT_TRUE(ip.ok()) << ip.status();
    EXPECT_TRUE(ip->is_v4());
    EXPECT_EQ(ip->canonical(), c.canonical);
  }
}

TEST(ParseIpTest, Ipv4BytesAreStoredMapped) {
  absl::StatusOr<IpAddress> ip = ParseIp("192.0.2.33");
  ASSERT_TRUE(ip.ok()) << ip.status();
  EXPECT_EQ(ip->bytes(), Mapped(192, 0, 2, 33));
}

TEST(ParseIpTest, CanonicalisesIpv6) {
  const ValidCase kCases[] = {
      // RFC 5952 examples.
      {"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1", false},
      {"2001:0db8:0:0:0:0:2:1", "2001:db8::2:1", false},
      {"2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1", false},
      {"2001:DB8::1", "2001:db8::1", false},
      {"2001:db8::0:1", "2001:db8::1", false},
      {"2001:db8::1:1:1:1:1", "2001:db8:0:1:1:1:1:1", false},
      {"2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1", false},
      {"2001:db8:aaaa:bbbb:cccc:dddd:eeee:aaaa", "2001:db8:aaaa:bbbb:cccc:dddd:eeee:aaaa", false},
      {"2001:DB8:AAAA:bBbB:cccc:dddd:EEEE:0AAA", "2001:db8:aaaa:bbbb:cccc:dddd:eeee:aaa", false},
      // Edges of the address space and of "::" placement.
      {"::", "::", false},
      {"0:0:0:0:0:0:0:0", "::", false},
      {"::1", "::1", false},
      {"0:0:0:0:0:0:0:1", "::1", false},
      {"1::", "1::", false},
      {"1:0:0:0:0:0:0:0", "1::", false},
      {"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8", false},
      {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
      // "::" may stand for a single group on input, but output never compresses one group.
      {"1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0", false},
      {"::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8", false},
      {"1:2:3::5:6:7:8", "1:2:3:0:5:6:7:8", false},
      // Ties: the first of equally long runs is compressed.
      {"1:0:0:2:0:0:3:4", "1::2:0:0:3:4", false},
      {"1:0:0:2:3:0:0:4", "1::2:3:0:0:4", false},
      {"0:0:1:2:3:4:0:0", "::1:2:3:4:0:0", false},
      // The longer run wins even if it comes second.
      {"1:0:0:2:0:0:0:3", "1:0:0:2::3", false},
      {"0:0:1:0:0:0:0:2", "0:0:1::2", false},
      {"fe80::0001", "fe80::1", false},
      {"FE80::ABCD:EF01", "fe80::abcd:ef01", false},
      // Embedded IPv4 in the last 32 bits is printed as hex.
      {"64:ff9b::1.2.3.4", "64:ff9b::102:304", false},
      {"1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304", false},
      {"1::1.2.3.4", "1::102:304", false},
      {"::ffff:0:1.2.3.4", "::ffff:0:102:304", false},  // SIIT, not mapped.
      {"::fffe:1.2.3.4", "::fffe:102:304", false},
      // IPv4-compatible (deprecated) stays IPv6.
      {"::1.2.3.4", "::102:304", false},
      {"::0.0.0.2", "::2", false},
      {"0:0:0:0:0:0:10.0.0.1", "::a00:1", false},
      // IPv4-mapped becomes IPv4, however it is spelled.
      {"::ffff:1.2.3.4", "1.2.3.4", true},
      {"::FFFF:1.2.3.4", "1.2.3.4", true},
      {"::ffff:0102:0304", "1.2.3.4", true},
      {"::FFFF:0102:0304", "1.2.3.4", true},
      {"0:0:0:0:0:ffff:102:304", "1.2.3.4", true},
      {"0000:0000:0000:0000:0000:FFFF:0102:0304", "1.2.3.4", true},
      {"0:0:0:0:0:ffff:1.2.3.4", "1.2.3.4", true},
      {"::ffff:0.0.0.0", "0.0.0.0", true},
      {"::ffff:255.255.255.255", "255.255.255.255", true},
      {"::ffff:ffff:ffff", "255.255.255.255", true},
      // The longest possible valid text (45 bytes).
      {"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
       false},
      {"0000:0000:0000:0000:0000:ffff:255.255.255.255", "255.255.255.255", true},
  };
  for (const ValidCase& c : kCases) {
    SCOPED_TRACE(c.input);
    absl::StatusOr<IpAddress> ip = ParseIp(c.input);
    ASSERT_TRUE(ip.ok()) << ip.status();
    EXPECT_EQ(ip->canonical(), c.canonical);
    EXPECT_EQ(ip->is_v4(), c.is_v4);
    // The canonical form is a fixed point.
    absl::StatusOr<IpAddress> again = ParseIp(ip->canonical());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->canonical(), c.canonical);
    EXPECT_EQ(again->bytes(), ip->bytes());
  }
}

TEST(ParseIpTest, Ipv6Bytes) {
  absl::StatusOr<IpAddress> ip = ParseIp("2001:db8::102:304");
  ASSERT_TRUE(ip.ok()) << ip.status();
  EXPECT_EQ(ip->bytes(), FromGroups({0x2001, 0xdb8, 0, 0, 0, 0, 0x102, 0x304}));
  ip = ParseIp("::ffff:0102:0304");
  ASSERT_TRUE(ip.ok()) << ip.status();
  EXPECT_EQ(ip->bytes(), Mapped(1, 2, 3, 4));
}

TEST(ParseIpTest, RejectsJunk) {
  const std::string kJunk[] = {
      // IPv4 shape.
      "1.2.3",
      "1.2.3.4.5",
      "1",
      "1.2.3.",
      ".1.2.3",
      "1.2.3.4.",
      "1..3.4",
      "...",
      "256.1.1.1",
      "1.1.1.256",
      "1.2.3.1000",
      "1.2.3.99999999999999999999",
      "010.1.1.1",
      "1.2.3.00",
      "00.0.0.0",
      "1.2.3.04",
      "0x1.2.3.4",
      "1.2.3.0x4",
      "+1.2.3.4",
      "-1.2.3.4",
      "1.-2.3.4",
      "1.2.3.4e0",
      "1e3.1.1.1",
      "a.b.c.d",
      "localhost",
      "example.com",
      "1,2,3,4",
      "1.2.3.4:80",
      "1.2.3.4:",
      "1.2.3.0/24",
      "16909060",
      "0x01020304",
      "1.2.3.4.",
      // Whitespace and other bytes.
      " 1.2.3.4",
      "1.2.3.4 ",
      "1.2. 3.4",
      "\t1.2.3.4",
      "1.2.3.4\n",
      "::1\r",
      ":: 1",
      std::string("1.2.3.4\0", 8),
      std::string("\0", 1),
      std::string(":\0:1", 4),
      "1.2.3.\x7f",
      "1.2.3.\x01",
      "1.2.3.\xd9\xa3",      // Arabic-Indic digit three.
      "\xef\xbc\x91.2.3.4",  // Fullwidth digit one.
      "::\xc3\xa9",
      // IPv6 shape.
      ":",
      ":::",
      "::::",
      "1:::2",
      "1::2::3",
      "::1::",
      ":1::",
      "1::2:",
      ":1:2:3:4:5:6:7:8",
      "1:2:3:4:5:6:7:8:",
      "1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "::1:2:3:4:5:6:7:8",
      "1:2:3:4::5:6:7:8",
      "12345::",
      "::12345",
      "1:2:3:4:5:6:7:00000",
      "g::1",
      "::fffg",
      "2001:db8::1::",
      "1:2",
      "1:2:3:4:5:6:7:8:1.2.3.4",
      "1:2:3:4:5:6:7:1.2.3.4",
      "1:2:3:4:5:1.2.3.4",
      "1:2:3:4:5:6::1.2.3.4",
      "::1.2.3",
      "::1.2.3.4.5",
      "::256.1.1.1",
      "::ffff:01.2.3.4",
      "::ffff:1.2.3.04",
      "::1.2.3.4:5",
      "1.2.3.4::",
      "1.2.3.4::5",
      "::ffff:1.2.3.4/96",
      "::1.2.3.4.",
      "::.1.2.3",
      "::ffff:1.2.3.a",
      "fe80::1%eth0",
      "fe80::1%1",
      "fe80::1%",
      "::1/128",
      "2001:db8::/32",
      "[::1]",
      "[::1]:80",
      "[1.2.3.4]:80",
      "[::1",
      "::1]",
      "::ffff:1.2.3.4:80",
      "-::1",
      "+::1",
      "0x::1",
      "::1,",
      "::1;",
      "::1#",
      "1::_",
      "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.2555",  // 46 bytes.
      std::string(46, '1'),
      std::string(1000, ':'),
      std::string(100000, 'a'),
  };
  for (const std::string& input : kJunk) {
    SCOPED_TRACE(absl::CHexEscape(input.substr(0, 64)));
    absl::StatusOr<IpAddress> ip = ParseIp(input);
    ASSERT_FALSE(ip.ok()) << ip->canonical();
    EXPECT_EQ(ip.status().code(), absl::StatusCode::kInvalidArgument);
    // Messages never carry raw input bytes, and stay short however long the input is.
    const absl::string_view message = ip.status().message();
    EXPECT_LT(message.size(), 200u);
    for (char c : message) {
      EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "byte " << static_cast<int>(c);
    }
  }
}

struct MessageCase {
  std::string input;
  std::string message;
};

TEST(ParseIpTest, ErrorMessages) {
  const MessageCase kCases[] = {
      {"", "ip is empty"},
      {"1.2.3.4:80", "invalid IP address \"1.2.3.4:80\": a port is not allowed"},
      {"[::1]:80", "invalid IP address \"[::1]:80\": a port is not allowed"},
      {"::ffff:1.2.3.4:443", "invalid IP address \"::ffff:1.2.3.4:443\": a port is not allowed"},
      {"[::1]", "invalid IP address \"[::1]\": brackets are not allowed"},
      {"fe80::1%eth0", "invalid IP address \"fe80::1%eth0\": zone ids are not allowed"},
      {"1.2.3.0/24", "invalid IP address \"1.2.3.0/24\": prefix lengths are not allowed"},
      {"010.1.1.1", "invalid IP address \"010.1.1.1\": IPv4 parts must not have leading zeros"},
      {"::ffff:1.2.3.04",
       "invalid IP address \"::ffff:1.2.3.04\": IPv4 parts must not have leading zeros"},
      {"256.1.1.1", "invalid IP address \"256.1.1.1\": IPv4 parts must be at most 255"},
      {"1.2.3.99999999999",
       "invalid IP address \"1.2.3.99999999999\": IPv4 parts must be at most 255"},
      {"1.2.3", "invalid IP address \"1.2.3\": IPv4 address must have exactly four parts"},
      {"1..2.3", "invalid IP address \"1..2.3\": IPv4 parts must not be empty"},
      {"-1.2.3.4", "invalid IP address \"-1.2.3.4\": signs are not allowed"},
      {"localhost", "invalid IP address \"localhost\": unexpected character 'l'"},
      {" 1.2.3.4", "invalid IP address \" 1.2.3.4\": whitespace is not allowed"},
      {"1.2.3.4\n", "invalid IP address \"1.2.3.4\\n\": whitespace is not allowed"},
      {std::string("1.2.3.4\0", 8),
       "invalid IP address \"1.2.3.4\\x00\": NUL bytes are not allowed"},
      {"1.2.3.\xc3\xa9",
       "invalid IP address \"1.2.3.\\xc3\\xa9\": non-ASCII bytes are not allowed"},
      {"1.2.3.\x7f", "invalid IP address \"1.2.3.\\x7f\": control characters are not allowed"},
      {"1\"2", "invalid IP address \"1\\\"2\": unexpected character '\\\"'"},
      {"1::2::3",
       "invalid IP address \"1::2::3\": IPv6 address must not contain more than one "
       "\"::\""},
      {"1:::2", "invalid IP address \"1:::2\": IPv6 address must not contain \":::\""},
      {":1::", "invalid IP address \":1::\": IPv6 address must not start with a single ':'"},
      {"1::2:", "invalid IP address \"1::2:\": IPv6 address must not end with a single ':'"},
      {"::12345", "invalid IP address \"::12345\": IPv6 groups must have at most 4 hex digits"},
      {"1:2:3:4:5:6:7",
       "invalid IP address \"1:2:3:4:5:6:7\": IPv6 address must have 8 groups of 16 bits, got 7"},
      {"1:2:3:4:5:6:7:8:9",
       "invalid IP address \"1:2:3:4:5:6:7:8:9\": IPv6 address has more than 8 groups"},
      {"1:2:3:4::5:6:7:8",
       "invalid IP address \"1:2:3:4::5:6:7:8\": IPv6 address with \"::\" must "
       "have at most 7 groups, got 8"},
      {"1.2.3.4::",
       "invalid IP address \"1.2.3.4::\": an embedded IPv4 address is only allowed "
       "in the last 32 bits"},
      {"::g", "invalid IP address \"::g\": unexpected character 'g'"},
      {"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.2555",
       "invalid IP address \"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.2555\": too long (46 bytes; "
       "at most 45)"},
  };
  for (const MessageCase& c : kCases) {
    SCOPED_TRACE(absl::CHexEscape(c.input));
    absl::StatusOr<IpAddress> ip = ParseIp(c.input);
    ASSERT_FALSE(ip.ok());
    EXPECT_EQ(ip.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(ip.status().message(), c.message);
  }
}

TEST(ParseIpTest, LongInputIsQuotedTruncatedAndEscaped) {
  const std::string input = std::string(100, '\x01') + "1.2.3.4";
  absl::StatusOr<IpAddress> ip = ParseIp(input);
  ASSERT_FALSE(ip.ok());
  // 16 whole "\x01" escapes fit in 64 characters.
  std::string expected_quote = "\"";
  for (int i = 0; i < 16; ++i) {
    expected_quote += "\\x01";
  }
  expected_quote += "\"...";
  EXPECT_EQ(ip.status().message(), absl::StrCat("invalid IP address ", expected_quote,
                                                ": too long (107 bytes; at most 45)"));

  ip = ParseIp(std::string(50, 'a'));
  ASSERT_FALSE(ip.ok());
  EXPECT_EQ(ip.status().message(), absl::StrCat("invalid IP address \"", std::string(50, 'a'),
                                                "\": too long (50 bytes; at most 45)"));

  ip = ParseIp(std::string(1 << 20, '9'));
  ASSERT_FALSE(ip.ok());
  EXPECT_THAT(std::string(ip.status().message()),
              StartsWith(absl::StrCat("invalid IP address \"", std::string(64, '9'), "\"...: ")));
  EXPECT_THAT(std::string(ip.status().message()), HasSubstr("too long (1048576 bytes"));
}

struct PublicCase {
  std::string input;
  bool is_public;
};

TEST(IpAddressTest, IsPublic) {
  const PublicCase kCases[] = {
      // 0.0.0.0/8
      {"0.0.0.0", false},
      {"0.255.255.255", false},
      {"1.0.0.0", true},
      // 10.0.0.0/8
      {"9.255.255.255", true},
      {"10.0.0.0", false},
      {"10.255.255.255", false},
      {"11.0.0.0", true},
      // 100.64.0.0/10
      {"100.63.255.255", true},
      {"100.64.0.0", false},
      {"100.127.255.255", false},
      {"100.128.0.0", true},
      // 127.0.0.0/8
      {"126.255.255.255", true},
      {"127.0.0.0", false},
      {"127.0.0.1", false},
      {"127.255.255.255", false},
      {"128.0.0.0", true},
      // 169.254.0.0/16
      {"169.253.255.255", true},
      {"169.254.0.0", false},
      {"169.254.255.255", false},
      {"169.255.0.0", true},
      // 172.16.0.0/12
      {"172.15.255.255", true},
      {"172.16.0.0", false},
      {"172.31.255.255", false},
      {"172.32.0.0", true},
      // 192.0.0.0/24
      {"191.255.255.255", true},
      {"192.0.0.0", false},
      {"192.0.0.255", false},
      {"192.0.1.0", true},
      // 192.0.2.0/24
      {"192.0.1.255", true},
      {"192.0.2.0", false},
      {"192.0.2.255", false},
      {"192.0.3.0", true},
      // 192.88.99.0/24
      {"192.88.98.255", true},
      {"192.88.99.0", false},
      {"192.88.99.255", false},
      {"192.88.100.0", true},
      // 192.168.0.0/16
      {"192.167.255.255", true},
      {"192.168.0.0", false},
      {"192.168.255.255", false},
      {"192.169.0.0", true},
      // 198.18.0.0/15
      {"198.17.255.255", true},
      {"198.18.0.0", false},
      {"198.19.255.255", false},
      {"198.20.0.0", true},
      // 198.51.100.0/24
      {"198.51.99.255", true},
      {"198.51.100.0", false},
      {"198.51.100.255", false},
      {"198.51.101.0", true},
      // 203.0.113.0/24
      {"203.0.112.255", true},
      {"203.0.113.0", false},
      {"203.0.113.255", false},
      {"203.0.114.0", true},
      // 224.0.0.0/4 and 240.0.0.0/4
      {"223.255.255.255", true},
      {"224.0.0.0", false},
      {"239.255.255.255", false},
      {"240.0.0.0", false},
      {"255.255.255.254", false},
      {"255.255.255.255", false},
      // Ordinary public IPv4, also when written IPv4-mapped.
      {"8.8.8.8", true},
      {"1.1.1.1", true},
      {"::ffff:8.8.8.8", true},
      {"::ffff:10.1.2.3", false},
      {"::ffff:127.0.0.1", false},
      // IPv6 outside 2000::/3.
      {"::", false},
      {"::1", false},
      {"::8.8.8.8", false},  // IPv4-compatible, deprecated.
      {"::ffff:0:8.8.8.8", false},
      {"64:ff9b::8.8.8.8", false},
      {"64:ff9b:1::1", false},
      {"100::1", false},
      {"fc00::1", false},
      {"fd12:3456:789a::1", false},
      {"fe80::1", false},
      {"febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
      {"fec0::1", false},
      {"ff02::1", false},
      {"ff0e::1", false},
      {"1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
      {"4000::", false},
      {"e000::1", false},
      // 2000::/3 boundaries.
      {"2000::", true},
      {"3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
      // 2001::/23
      {"2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
      {"2001::", false},
      {"2001::1", false},
      {"2001:0:4136:e378:8000:63bf:3fff:fdd2", false},  // Teredo.
      {"2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", false},
      {"2001:200::", true},
      // 2001:db8::/32
      {"2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", true},
      {"2001:db8::", false},
      {"2001:db8::1", false},
      {"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", false},
      {"2001:db9::", true},
      // 2002::/16
      {"2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
      {"2002::", false},
      {"2002:c000:0204::1", false},
      {"2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
      {"2003::", true},
      // 3fff::/20
      {"3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
      {"3fff::", false},
      {"3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", false},
      {"3fff:1000::", true},
      // Outside 2000::/3, e.g. SRv6 SIDs (5f00::/16).
      {"5f00::1", false},
      {"4000::", false},
      // Ordinary global unicast.
      {"2606:4700:4700::1111", true},
      {"2a00:1450:4001:830::200e", true},
  };
  for (const PublicCase& c : kCases) {
    SCOPED_TRACE(c.input);
    absl::StatusOr<IpAddress> ip = ParseIp(c.input);
    ASSERT_TRUE(ip.ok()) << ip.status();
    EXPECT_EQ(ip->IsPublic(), c.is_public);
  }
}

// Reference RFC 5952 formatter for the cross-check: the bytes as eight groups with no
// compression, which ParseIp must then canonicalise.
std::string FullForm(const std::array<uint8_t, 16>& bytes) {
  std::string text;
  for (int i = 0; i < 8; ++i) {
    absl::StrAppendFormat(&text, "%s%04X", i == 0 ? "" : ":",
                          (bytes[2 * i] << 8) | bytes[2 * i + 1]);
  }
  return text;
}

// Independent, brute-force RFC 5952 formatter: among all runs of two or more zero groups pick
// the longest, then the leftmost.
std::string ReferenceRfc5952(const std::array<uint8_t, 16>& bytes) {
  int groups[8];
  for (int i = 0; i < 8; ++i) {
    groups[i] = (bytes[2 * i] << 8) | bytes[2 * i + 1];
  }
  int best_start = -1;
  int best_length = 0;
  for (int length = 8; length >= 2 && best_start < 0; --length) {
    for (int start = 0; start + length <= 8 && best_start < 0; ++start) {
      bool all_zero = true;
      for (int i = start; i < start + length; ++i) {
        all_zero = all_zero && groups[i] == 0;
      }
      if (all_zero) {
        best_start = start;
        best_length = length;
      }
    }
  }
  std::vector<std::string> left;
  std::vector<std::string> right;
  for (int i = 0; i < 8; ++i) {
    const std::string group = absl::StrFormat("%x", groups[i]);
    if (best_start < 0 || i < best_start) {
      left.push_back(group);
    } else if (i >= best_start + best_length) {
      right.push_back(group);
    }
  }
  if (best_start < 0) {
    return absl::StrJoin(left, ":");
  }
  return absl::StrCat(absl::StrJoin(left, ":"), "::", absl::StrJoin(right, ":"));
}

TEST(ParseIpTest, RandomRoundTripAgreesWithInetPton) {
  std::mt19937 rng(20240501);
  std::uniform_int_distribution<int> byte_dist(0, 255);
  std::bernoulli_distribution zero_group(0.5);  // Zero runs exercise "::" placement.
  std::bernoulli_distribution mapped(0.1);
  for (int iteration = 0; iteration < 5000; ++iteration) {
    std::array<uint8_t, 16> bytes{};
    for (int g = 0; g < 8; ++g) {
      if (!zero_group(rng)) {
        bytes[2 * g] = static_cast<uint8_t>(byte_dist(rng));
        bytes[2 * g + 1] = static_cast<uint8_t>(byte_dist(rng));
      }
    }
    if (mapped(rng)) {
      for (int i = 0; i < 10; ++i) {
        bytes[i] = 0;
      }
      bytes[10] = bytes[11] = 0xff;
    }
    const std::string full = FullForm(bytes);
    SCOPED_TRACE(full);
    absl::StatusOr<IpAddress> ip = ParseIp(full);
    ASSERT_TRUE(ip.ok()) << ip.status();
    EXPECT_EQ(ip->bytes(), bytes);
    const std::string& canonical = ip->canonical();

    // The canonical form parses back to the same address.
    absl::StatusOr<IpAddress> again = ParseIp(canonical);
    ASSERT_TRUE(again.ok()) << canonical << ": " << again.status();
    EXPECT_EQ(again->bytes(), bytes);
    EXPECT_EQ(again->canonical(), canonical);
    EXPECT_EQ(again->is_v4(), ip->is_v4());

    // glibc accepts the canonical text and agrees on the bytes.
    if (ip->is_v4()) {
      uint8_t v4[4];
      ASSERT_EQ(inet_pton(AF_INET, canonical.c_str(), v4), 1) << canonical;
      EXPECT_EQ(0, std::memcmp(v4, bytes.data() + 12, 4)) << canonical;
    } else {
      uint8_t v6[16];
      ASSERT_EQ(inet_pton(AF_INET6, canonical.c_str(), v6), 1) << canonical;
      EXPECT_EQ(0, std::memcmp(v6, bytes.data(), 16)) << canonical;
      EXPECT_EQ(canonical, ReferenceRfc5952(bytes));
    }
  }
}

// Random short strings over the address alphabet. This alphabet avoids the inputs where glibc is
// laxer than ParseIp, so both must agree exactly: same acceptance, same bytes.
TEST(ParseIpTest, RandomStringsAgreeWithInetPton) {
  const std::string kAlphabet = "0123456789abcdefABCDEF:.::::...0000";
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> char_dist(0, kAlphabet.size() - 1);
  std::uniform_int_distribution<int> length_dist(1, 20);
  int accepted = 0;
  for (int iteration = 0; iteration < 200000; ++iteration) {
    std::string text;
    const int length = length_dist(rng);
    for (int i = 0; i < length; ++i) {
      text += kAlphabet[char_dist(rng)];
    }
    SCOPED_TRACE(text);
    absl::StatusOr<IpAddress> ip = ParseIp(text);
    uint8_t v6[16];
    uint8_t v4[4];
    const bool glibc_v6 = inet_pton(AF_INET6, text.c_str(), v6) == 1;
    const bool glibc_v4 = inet_pton(AF_INET, text.c_str(), v4) == 1;
    ASSERT_EQ(ip.ok(), glibc_v6 || glibc_v4) << ip.status();
    if (!ip.ok()) {
      continue;
    }
    ++accepted;
    if (glibc_v4) {
      EXPECT_EQ(0, std::memcmp(v4, ip->bytes().data() + 12, 4));
    } else {
      EXPECT_EQ(0, std::memcmp(v6, ip->bytes().data(), 16));
    }
  }
  // Guards against the generator drifting into producing only junk.
  EXPECT_GT(accepted, 1000);
}

}  // namespace
}  // namespace verdictd
