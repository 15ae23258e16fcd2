#include "server/auth/api_keys.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kMalformed[] = "missing or malformed authorization: expected 'Bearer <api key>'";
constexpr char kBadXCaller[] = "x-caller must be 1-128 printable ASCII characters";

const std::string kHashA(64, 'a');
const std::string kHashB(64, 'b');
const std::string kHashC(64, 'c');

Sha256 Filled(uint8_t byte) {
  Sha256 out;
  out.fill(byte);
  return out;
}

// --- hashing -----------------------------------------------------------------------------

TEST(HashApiKeyTest, KnownVectors) {
  struct Case {
    std::string input;
    std::string hex;
  };
  const std::vector<Case> cases = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.input);
    EXPECT_EQ(HashApiKeyHex(c.input), c.hex);
    const Sha256 raw = HashApiKey(c.input);
    std::string hex;
    for (uint8_t b : raw) {
      absl::StrAppend(&hex, absl::Hex(b, absl::kZeroPad2));
    }
    EXPECT_EQ(hex, c.hex);
  }
}

TEST(HashApiKeyTest, BinaryKeyWithNul) {
  const std::string key("a\0b", 3);
  EXPECT_NE(HashApiKeyHex(key), HashApiKeyHex("a"));
  EXPECT_EQ(HashApiKeyHex(key).size(), 64u);
}

// --- parsing -----------------------------------------------------------------------------

TEST(ParseApiKeysTest, MinimalLine) {
  absl::StatusOr<std::vector<ApiKeyEntry>> entries = ParseApiKeys("ads " + kHashA);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_EQ((*entries)[0].caller, "ads");
  EXPECT_EQ((*entries)[0].key_sha256, Filled(0xaa));
  EXPECT_EQ((*entries)[0].monthly_budget, 0);
  EXPECT_FALSE((*entries)[0].auditor);
  EXPECT_EQ((*entries)[0].team, "");
  EXPECT_FALSE((*entries)[0].lead);
  EXPECT_EQ((*entries)[0].team_monthly_budget, 0);
}

TEST(ParseApiKeysTest, OkCases) {
  struct Expected {
    std::string caller;
    Sha256 hash;
    int64_t budget;
    bool auditor;
  };
  struct Case {
    std::string name;
    std::string contents;
    std::vector<Expected> expected;
  };
  const std::vector<Case> cases = {
      {"with budget", "ads " + kHashA + " 5000\n", {{"ads", Filled(0xaa), 5000, false}}},
      {"dash budget and auditor",
       "ops " + kHashB + " - auditor\n",
       {{"ops", Filled(0xbb), 0, true}}},
      {"budget and auditor", "ops " + kHashB + " 7 auditor", {{"ops", Filled(0xbb), 7, true}}},
      {"dash budget only", "ops " + kHashB + " -", {{"ops", Filled(0xbb), 0, false}}},
      {"max budget",
       "big " + kHashA + " 1000000000000",
       {{"big", Filled(0xaa), 1'000'000'000'000, false}}},
      {"comments and blank lines",
       "# verdictd keys\n\n   \n\t\nads " + kHashA + " 10 # the ads team\n#ops " + kHashB + "\n\n" +
           "x.y_z-1 " + kHashC + "   # trailing\n",
       {{"ads", Filled(0xaa), 10, false}, {"x.y_z-1", Filled(0xcc), 0, false}}},
      {"CRLF line endings",
       "# keys\r\nads " + kHashA + " 10\r\n\r\nops " + kHashB + " - auditor\r\n",
       {{"ads", Filled(0xaa), 10, false}, {"ops", Filled(0xbb), 0, true}}},
      {"upper-case hex normalised",
       "ads " + absl::AsciiStrToUpper(kHashA) + "\nmix " +
           "0123456789ABCDEFabcdef0123456789AbCdEf0123456789abcdef0123456789",
       {{"ads", Filled(0xaa), 0, false},
        {"mix",
         {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xab, 0xcd, 0xef,
          0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45,
          0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89},
         0,
         false}}},
      {"tabs and runs of spaces",
       "\t ads\t\t" + kHashA + "  \t 3 \t auditor \t",
       {{"ads", Filled(0xaa), 3, true}}},
      {"no trailing newline", "ads " + kHashA, {{"ads", Filled(0xaa), 0, false}}},
      {"longest caller",
       std::string(64, 'n') + " " + kHashA,
       {{std::string(64, 'n'), Filled(0xaa), 0, false}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<std::vector<ApiKeyEntry>> entries = ParseApiKeys(c.contents);
    ASSERT_TRUE(entries.ok()) << entries.status();
    ASSERT_EQ(entries->size(), c.expected.size());
    for (size_t i = 0; i < c.expected.size(); ++i) {
      EXPECT_EQ((*entries)[i].caller, c.expected[i].caller);
      EXPECT_EQ((*entries)[i].key_sha256, c.expected[i].hash);
      EXPECT_EQ((*entries)[i].monthly_budget, c.expected[i].budget);
      EXPECT_EQ((*entries)[i].auditor, c.expected[i].auditor);
    }
  }
}

TEST(ParseApiKeysTest, SeveralKeysForOneCallerAndExpiries) {
  absl::StatusOr<std::vector<ApiKeyEntry>> entries = ParseApiKeys(
      "# ads rotates: the old key goes at the end of January\n"
      "ads " +
      kHashA +
      " 10 expires=2027-02-01\n"
      "ads " +
      kHashB +
      " 10\n"
      "ops " +
      kHashC +
      " - auditor expires=2027-01-31T13:30:00+01:00  # a time with its zone\n"
      "web " +
      std::string(64, 'd') + " expires=2027-03-01T00:00:00.5Z\n");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 4u);
  const absl::TimeZone utc = absl::UTCTimeZone();
  EXPECT_EQ((*entries)[0].caller, "ads");
  EXPECT_EQ((*entries)[0].key_sha256, Filled(0xaa));
  EXPECT_EQ((*entries)[0].expires, absl::FromCivil(absl::CivilDay(2027, 2, 1), utc));
  EXPECT_EQ((*entries)[1].caller, "ads");
  EXPECT_EQ((*entries)[1].key_sha256, Filled(0xbb));
  EXPECT_EQ((*entries)[1].monthly_budget, 10);
  EXPECT_EQ((*entries)[1].expires, absl::InfiniteFuture());
  EXPECT_TRUE((*entries)[2].auditor);
  EXPECT_EQ((*entries)[2].expires, absl::FromCivil(absl::CivilSecond(2027, 1, 31, 12, 30, 0), utc));
  EXPECT_EQ((*entries)[3].expires,
            absl::FromCivil(absl::CivilDay(2027, 3, 1), utc) + absl::Milliseconds(500));
}

TEST(ParseApiKeysTest, Teams) {
  struct Expected {
    std::string caller;
    int64_t budget;
    bool auditor;
    std::string team;
    bool lead;
    int64_t team_budget;
  };
  struct Case {
    std::string name;
    std::string contents;
    std::vector<Expected> expected;
  };
  const std::vector<Case> cases = {
      {"members, a lead and an auditor, the team declared first",
       "@payments 500\npay-api " + kHashA + " 10 team=payments\npay-lead " + kHashB +
           " - lead team=payments\nops " + kHashC + " - auditor\n",
       {{"pay-api", 10, false, "payments", false, 500},
        {"pay-lead", 0, false, "payments", true, 500},
        {"ops", 0, true, "", false, 0}}},
      {"the team declared after its callers",
       "ads " + kHashA + " team=ads-team\nweb " + kHashB + " 3 lead team=ads-team\n@ads-team 7\n",
       {{"ads", 0, false, "ads-team", false, 7}, {"web", 3, false, "ads-team", true, 7}}},
      {"a team without a budget",
       "@free -\nads " + kHashA + " 5 team=free",
       {{"ads", 5, false, "free", false, 0}}},
      {"a declared team without members",
       "@unused 5\n@pay 9\nads " + kHashA + " team=pay\nweb " + kHashB + "\n",
       {{"ads", 0, false, "pay", false, 9}, {"web", 0, false, "", false, 0}}},
      {"only a declared team without members",
       "@unused 5\nads " + kHashA,
       {{"ads", 0, false, "", false, 0}}},
      {"an auditor in a team",
       "@audit -\nops " + kHashA + " - auditor team=audit",
       {{"ops", 0, true, "audit", false, 0}}},
      {"options in any order",
       "ads " + kHashA + " 3 lead expires=2027-01-01 team=pay\nweb " + kHashB +
           " team=pay expires=2027-01-01\n@pay 1",
       {{"ads", 3, false, "pay", true, 1}, {"web", 0, false, "pay", false, 1}}},
      {"every key of a caller in its team",
       "@pay 100\nads " + kHashA + " 10 lead team=pay\nads " + kHashB +
           " 10 lead team=pay expires=2027-01-01\n",
       {{"ads", 10, false, "pay", true, 100}, {"ads", 10, false, "pay", true, 100}}},
      {"a team named like a caller",
       "@ads 5\nads " + kHashA + " team=ads",
       {{"ads", 0, false, "ads", false, 5}}},
      {"comments, tabs and CRLF around a declaration",
       "# teams\r\n\t@pay\t\t5 \t# the payments budget\r\nads " + kHashA + " team=pay\r\n",
       {{"ads", 0, false, "pay", false, 5}}},
      {"longest team name and largest team budget",
       "@" + std::string(64, 't') + " 1000000000000\nads " + kHashA +
           " team=" + std::string(64, 't'),
       {{"ads", 0, false, std::string(64, 't'), false, 1'000'000'000'000}}},
      {"team names of the caller charset",
       "@x.y_z-1 2\nads " + kHashA + " team=x.y_z-1",
       {{"ads", 0, false, "x.y_z-1", false, 2}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<std::vector<ApiKeyEntry>> entries = ParseApiKeys(c.contents);
    ASSERT_TRUE(entries.ok()) << entries.status();
    ASSERT_EQ(entries->size(), c.expected.size());
    for (size_t i = 0; i < c.expected.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ((*entries)[i].caller, c.expected[i].caller);
      EXPECT_EQ((*entries)[i].monthly_budget, c.expected[i].budget);
      EXPECT_EQ((*entries)[i].auditor, c.expected[i].auditor);
      EXPECT_EQ((*entries)[i].team, c.expected[i].team);
      EXPECT_EQ((*entries)[i].lead, c.expected[i].lead);
      EXPECT_EQ((*entries)[i].team_monthly_budget, c.expected[i].team_budget);
    }
  }
}

TEST(ParseApiKeysTest, ErrorCases) {
  const std::string kCallerRule = "caller name must be 1-64 characters of [A-Za-z0-9._-]";
  const std::string kHashRule =
      "key hash must be exactly 64 hex characters (the SHA-256 of the key)";
  const std::string kBudgetRule =
      "budget must be a positive integer no larger than 10^12, or \"-\" for none";
  const std::string kFormat =
      "(expected CALLER SHA256_HEX [BUDGET|-] [auditor|lead] [team=NAME] [expires=WHEN])";
  const std::string kRoleRule = "the fourth field, the role, may only be \"auditor\" or \"lead\"";
  const std::string kTeamRule = "team= must be 1-64 characters of [A-Za-z0-9._-]";
  const std::string kTeamNameRule = "team name must be 1-64 characters of [A-Za-z0-9._-]";
  const std::string kTeamLine = "a team line is exactly two fields: @NAME BUDGET|-";
  const std::string kSameSettings =
      "has another budget, role or team on line 1; every key of a caller carries the same ones";
  const std::string kExpiryRule =
      "expires= must be a UTC date (2027-01-31) or an RFC 3339 time (2027-01-31T12:00:00Z)";
  struct Case {
    std::string name;
    std::string contents;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"empty file", "", "no callers defined"},
      {"only comments and blanks", "# nothing yet\n\n  \r\n# " + kHashA + "\n",
       "no callers defined"},
      {"bad caller charset", "# keys\nbad/name " + kHashA, "line 2: " + kCallerRule},
      {"caller with unicode", "\ncafé " + kHashA, "line 2: " + kCallerRule},
      {"caller too long", std::string(65, 'n') + " " + kHashA, "line 1: " + kCallerRule},
      {"missing hash", "ads " + kHashA + "\n\nops\n", "line 3: missing key hash " + kFormat},
      {"hash too short", "ads " + kHashA.substr(1), "line 1: " + kHashRule},
      {"hash too long", "ads " + kHashA + "a", "line 1: " + kHashRule},
      {"hash not hex", "ads " + kHashA.substr(1) + "g", "line 1: " + kHashRule},
      {"raw key instead of hash", "ads sk_live_0123456789", "line 1: " + kHashRule},
      {"budget zero", "ads " + kHashA + " 0", "line 1: " + kBudgetRule},
      {"budget negative", "ads " + kHashA + " -5", "line 1: " + kBudgetRule},
      {"budget with plus", "ads " + kHashA + " +5", "line 1: " + kBudgetRule},
      {"budget not a number", "ads " + kHashA + " lots", "line 1: " + kBudgetRule},
      {"budget exponent", "ads " + kHashA + " 1e6", "line 1: " + kBudgetRule},
      {"budget over 10^12", "ads " + kHashA + " 1000000000001", "line 1: " + kBudgetRule},
      {"budget overflows int64", "ads " + kHashA + " 99999999999999999999",
       "line 1: " + kBudgetRule},
      {"auditor in budget position", "ads " + kHashA + " auditor",
       "line 1: " + kBudgetRule + " (write \"- auditor\" for an auditor without a budget)"},
      {"unknown role", "ads " + kHashA + " 5 admin", "line 1: " + kRoleRule},
      {"role case matters", "ads " + kHashA + " - Auditor", "line 1: " + kRoleRule},
      {"extra field", "ads " + kHashA + " 5 auditor extra", "line 1: too many fields " + kFormat},
      {"a caller's keys with different budgets",
       "# keys\nads " + kHashA + " 10\nops " + kHashB + "\n\nads " + kHashC + " 20\n",
       "line 5: caller \"ads\" has another budget, role or team on line 2; every key of a caller "
       "carries the same ones"},
      {"a caller's keys with and without a budget", "ads " + kHashA + " 10\nads " + kHashC,
       "line 2: caller \"ads\" " + kSameSettings},
      {"a caller's keys with different roles", "ads " + kHashA + " - auditor\nads " + kHashC + " -",
       "line 2: caller \"ads\" " + kSameSettings},
      {"expiry not a time", "ads " + kHashA + " expires=soon", "line 1: " + kExpiryRule},
      {"expiry without a zone", "ads " + kHashA + " expires=2027-01-31T12:00:00",
       "line 1: " + kExpiryRule},
      {"expiry not a calendar day", "ads " + kHashA + " expires=2027-02-30",
       "line 1: " + kExpiryRule},
      {"expiry empty", "ads " + kHashA + " 5 expires=", "line 1: " + kExpiryRule},
      {"expiry twice", "ads " + kHashA + " expires=2027-01-01 expires=2028-01-01",
       "line 1: expires= given twice"},
      {"unknown option", "ads " + kHashA + " owner=payments",
       "line 1: unknown option (the options are team=NAME and expires=WHEN)"},
      {"positional field after an option", "ads " + kHashA + " expires=2027-01-01 5",
       "line 1: options (name=value) come last " + kFormat},
      {"too many fields before the options", "ads " + kHashA + " 5 auditor x expires=2027-01-01",
       "line 1: too many fields " + kFormat},
      {"duplicate hash", "ads " + kHashA + "\r\nops " + kHashB + "\r\nfin " + kHashA,
       "line 3: key hash already used by caller \"ads\" on line 1"},
      {"duplicate hash differing in case",
       "ads " + kHashA + "\nops " + absl::AsciiStrToUpper(kHashA),
       "line 2: key hash already used by caller \"ads\" on line 1"},
      {"error after good lines", "a " + kHashA + "\nb " + kHashB + "\n# c\n\nc " + kHashC + " x",
       "line 5: " + kBudgetRule},
      // Teams and leads.
      {"lead without a team", "ads " + kHashA + " - lead", "line 1: role lead needs team=NAME"},
      {"lead with a budget but no team", "@pay 5\nads " + kHashA + " 10 lead expires=2027-01-01",
       "line 2: role lead needs team=NAME"},
      {"lead in budget position", "@pay 5\nads " + kHashA + " lead team=pay",
       "line 2: " + kBudgetRule + " (write \"- lead\" for a lead without a budget)"},
      {"role lead case matters", "@pay 5\nads " + kHashA + " - Lead team=pay",
       "line 2: " + kRoleRule},
      {"team name with a slash", "ads " + kHashA + " team=pay/ments", "line 1: " + kTeamRule},
      {"team name empty", "ads " + kHashA + " team=", "line 1: " + kTeamRule},
      {"team name too long", "ads " + kHashA + " team=" + std::string(65, 't'),
       "line 1: " + kTeamRule},
      {"team name with an at sign", "@pay 5\nads " + kHashA + " team=@pay", "line 2: " + kTeamRule},
      {"team twice", "@a 1\n@b 1\nads " + kHashA + " team=a expires=2027-01-01 team=b",
       "line 3: team= given twice"},
      {"team twice, the same", "@a 1\nads " + kHashA + " team=a team=a",
       "line 2: team= given twice"},
      {"a caller's keys in different teams",
       "@a 1\n@b 1\nads " + kHashA + " team=a\nads " + kHashB + " team=b",
       "line 4: caller \"ads\" has another budget, role or team on line 3; every key of a caller "
       "carries the same ones"},
      {"a caller's keys with and without a team",
       "ads " + kHashA + " 5\nads " + kHashB + " 5 team=a\n@a 1",
       "line 2: caller \"ads\" " + kSameSettings},
      {"a caller's keys with and without lead",
       "ads " + kHashA + " - lead team=a\nads " + kHashB + " - team=a\n@a 1",
       "line 2: caller \"ads\" " + kSameSettings},
      {"a caller's keys as lead and auditor",
       "ads " + kHashA + " - lead team=a\nads " + kHashB + " - auditor team=a\n@a 1",
       "line 2: caller \"ads\" " + kSameSettings},
      {"team not declared", "ads " + kHashA + " 10 team=payments",
       "line 1: team \"payments\" is not declared (add a line \"@payments BUDGET|-\")"},
      {"team name misspelt",
       "@payments 500\n\nads " + kHashA + " team=payments\nweb " + kHashB +
           " team=paymnets # typo\n",
       "line 4: team \"paymnets\" is not declared (add a line \"@paymnets BUDGET|-\")"},
      {"the first undeclared team is reported",
       "\nweb " + kHashA + " team=x\nads " + kHashB + " team=y\n",
       "line 2: team \"x\" is not declared (add a line \"@x BUDGET|-\")"},
      {"a lead of an undeclared team", "ads " + kHashA + " - lead team=x",
       "line 1: team \"x\" is not declared (add a line \"@x BUDGET|-\")"},
      {"team names are case-sensitive", "@Pay 5\nads " + kHashA + " team=pay",
       "line 2: team \"pay\" is not declared (add a line \"@pay BUDGET|-\")"},
      {"a line error comes before an undeclared team",
       "ads " + kHashA + " team=x\nbad/name " + kHashB, "line 2: " + kCallerRule},
      {"team declared twice", "@pay 5\nads " + kHashA + " team=pay\n# again\n@pay 5\n",
       "line 4: team \"pay\" already declared on line 1"},
      {"team declared twice, second without budget", "@pay 5\r\n@pay -\r\nads " + kHashA,
       "line 2: team \"pay\" already declared on line 1"},
      {"team declaration with a bad name", "@pay/x 5\nads " + kHashA, "line 1: " + kTeamNameRule},
      {"team declaration without a name", "@ 5", "line 1: " + kTeamNameRule},
      {"team declaration of only the at sign", "ads " + kHashA + "\n@", "line 2: " + kTeamNameRule},
      {"team declaration with two at signs", "@@pay 5", "line 1: " + kTeamNameRule},
      {"team declaration name too long", "@" + std::string(65, 't') + " 5",
       "line 1: " + kTeamNameRule},
      {"team declaration without budget", "ads " + kHashA + "\n@pay", "line 2: " + kTeamLine},
      {"team declaration with a third field", "@pay 5 lead", "line 1: " + kTeamLine},
      {"team declaration with an option", "@pay - expires=2027-01-01", "line 1: " + kTeamLine},
      {"team declaration with a hash", "@pay " + kHashA, "line 1: team " + kBudgetRule},
      {"team budget zero", "@pay 0", "line 1: team " + kBudgetRule},
      {"team budget not a number", "@pay lots", "line 1: team " + kBudgetRule},
      {"team budget over 10^12", "@pay 1000000000001", "line 1: team " + kBudgetRule},
      {"only team declarations", "@pay 5\n@ops -\n", "no callers defined"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<std::vector<ApiKeyEntry>> entries = ParseApiKeys(c.contents);
    ASSERT_FALSE(entries.ok());
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(entries.status().message(), c.message);
    // Hash values never appear in messages, in either case nor in part.
    for (const std::string& hash : {kHashA, kHashB, kHashC}) {
      EXPECT_THAT(absl::AsciiStrToLower(entries.status().message()),
                  Not(HasSubstr(hash.substr(0, 16))));
    }
    EXPECT_THAT(entries.status().message(), Not(HasSubstr("sk_live")));
  }
}

// --- loading -----------------------------------------------------------------------------

class LoadApiKeysFileTest : public ::testing::Test {
 protected:
  std::string WriteKeys(const std::string& name, const std::string& contents, mode_t mode) {
    const std::string path = absl::StrCat(::testing::TempDir(), "/", name);
    ::unlink(path.c_str());
    {
      std::ofstream out(path, std::ios::binary);
      out << contents;
    }
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);  // explicit: independent of the umask
    paths_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const std::string& path : paths_) {
      ::unlink(path.c_str());
    }
  }

 private:
  std::vector<std::string> paths_;
};

TEST_F(LoadApiKeysFileTest, OwnerWritableFileLoads) {
  for (mode_t mode : {0644, 0600, 0400, 0444}) {
    SCOPED_TRACE(mode);
    const std::string path = WriteKeys("keys_ok.txt", "ads " + kHashA + " 100 auditor\n", mode);
    absl::StatusOr<std::vector<ApiKeyEntry>> entries = LoadApiKeysFile(path);
    ASSERT_TRUE(entries.ok()) << entries.status();
    ASSERT_EQ(entries->size(), 1u);
    EXPECT_EQ((*entries)[0].caller, "ads");
    EXPECT_EQ((*entries)[0].monthly_budget, 100);
    EXPECT_TRUE((*entries)[0].auditor);
  }
}

TEST_F(LoadApiKeysFileTest, GroupOrWorldWritableFileRefused) {
  for (mode_t mode : {0666, 0646, 0664, 0620, 0602}) {
    SCOPED_TRACE(mode);
    const std::string path = WriteKeys("keys_open.txt", "ads " + kHashA + "\n", mode);
    absl::StatusOr<std::vector<ApiKeyEntry>> entries = LoadApiKeysFile(path);
    ASSERT_FALSE(entries.ok());
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(entries.status().message(), HasSubstr(path));
    EXPECT_THAT(entries.status().message(), HasSubstr("writable"));
  }
}

TEST_F(LoadApiKeysFileTest, MissingFileNamesPath) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/no_such_keys_file.txt");
  absl::StatusOr<std::vector<ApiKeyEntry>> entries = LoadApiKeysFile(path);
  ASSERT_FALSE(entries.ok());
  EXPECT_EQ(entries.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(entries.status().message(), HasSubstr(path));
}

TEST_F(LoadApiKeysFileTest, DirectoryRefused) {
  absl::StatusOr<std::vector<ApiKeyEntry>> entries = LoadApiKeysFile(::testing::TempDir());
  ASSERT_FALSE(entries.ok());
  EXPECT_THAT(entries.status().message(), HasSubstr(::testing::TempDir()));
}

TEST_F(LoadApiKeysFileTest, ParseErrorsArePrefixedWithPath) {
  const std::string path =
      WriteKeys("keys_bad.txt", "ads " + kHashA + "\nads " + kHashB + " 5\n", 0644);
  absl::StatusOr<std::vector<ApiKeyEntry>> entries = LoadApiKeysFile(path);
  ASSERT_FALSE(entries.ok());
  EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(entries.status().message(),
            path +
                ": line 2: caller \"ads\" has another budget, role or team on line 1; every key of "
                "a caller carries the same ones");

  const std::string empty = WriteKeys("keys_empty.txt", "# nobody\n", 0600);
  entries = LoadApiKeysFile(empty);
  ASSERT_FALSE(entries.ok());
  EXPECT_EQ(entries.status().message(), empty + ": no callers defined");
}

// --- Identify ----------------------------------------------------------------------------

class KeyedIdentifyTest : public ::testing::Test {
 protected:
  KeyedIdentifyTest()
      : auth_(Authenticator::Keyed(
            *ParseApiKeys("ads " + HashApiKeyHex("ads-secret-key") + " 1000\n" +  //
                          "ops " + HashApiKeyHex("ops-secret-key") + " - auditor\n" + "long " +
                          HashApiKeyHex(std::string(512, 'k')) + "\n"))) {}

  Authenticator auth_;
};

TEST_F(KeyedIdentifyTest, IsKeyed) {
  EXPECT_TRUE(auth_.keyed());
  EXPECT_EQ(auth_.entries().size(), 3u);
}

TEST_F(KeyedIdentifyTest, MalformedAuthorization) {
  const std::vector<std::optional<std::string>> cases = {
      std::nullopt,
      "",
      "ads-secret-key",
      "Basic ads-secret-key",
      "Token ads-secret-key",
      "Bearer",
      "Bearer ",
      "Bearer     ",
      "Bearerads-secret-key",
      "Bearer\tads-secret-key",
      " Bearer ads-secret-key",
      "Bear ads-secret-key",
      "Bearer " + std::string(513, 'k'),
  };
  for (const std::optional<std::string>& authorization : cases) {
    SCOPED_TRACE(authorization.value_or("<absent>"));
    std::optional<absl::string_view> header;
    if (authorization.has_value()) {
      header = *authorization;
    }
    absl::StatusOr<Identity> identity = auth_.Identify(header, "ads");
    ASSERT_FALSE(identity.ok());
    EXPECT_EQ(identity.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(identity.status().message(), kMalformed);
  }
}

TEST_F(KeyedIdentifyTest, UnknownKey) {
  const std::vector<std::string> cases = {"Bearer wrong-key", "Bearer ads-secret-key ",
                                          "Bearer ADS-SECRET-KEY", "Bearer ads-secret-ke",
                                          "Bearer " + HashApiKeyHex("ads-secret-key")};
  for (const std::string& authorization : cases) {
    SCOPED_TRACE(authorization);
    absl::StatusOr<Identity> identity = auth_.Identify(authorization, std::nullopt);
    ASSERT_FALSE(identity.ok());
    EXPECT_EQ(identity.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(identity.status().message(), "unknown API key");
  }
}

TEST_F(KeyedIdentifyTest, KnownKeys) {
  struct Case {
    std::string authorization;
    std::string caller;
    int64_t budget;
    bool auditor;
  };
  const std::vector<Case> cases = {
      {"Bearer ads-secret-key", "ads", 1000, false},
      {"bearer ads-secret-key", "ads", 1000, false},
      {"BEARER    ads-secret-key", "ads", 1000, false},
      {"bEaReR ops-secret-key", "ops", 0, true},
      {"Bearer " + std::string(512, 'k'), "long", 0, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.authorization);
    absl::StatusOr<Identity> identity = auth_.Identify(c.authorization, std::nullopt);
    ASSERT_TRUE(identity.ok()) << identity.status();
    EXPECT_EQ(identity->caller, c.caller);
    EXPECT_EQ(identity->monthly_budget, c.budget);
    EXPECT_EQ(identity->auditor, c.auditor);
  }
}

TEST_F(KeyedIdentifyTest, XCallerIgnored) {
  for (absl::string_view x_caller : {"ops", "someone-else", "", "bad caller\x01"}) {
    absl::StatusOr<Identity> identity = auth_.Identify("Bearer ads-secret-key", x_caller);
    ASSERT_TRUE(identity.ok()) << identity.status();
    EXPECT_EQ(identity->caller, "ads");
    EXPECT_FALSE(identity->auditor);
  }
  // And it never stands in for a key.
  absl::StatusOr<Identity> identity = auth_.Identify(std::nullopt, "ops");
  ASSERT_FALSE(identity.ok());
  EXPECT_EQ(identity.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(KeyRotationTest, EitherKeyOfACallerIdentifiesIt) {
  Authenticator auth = Authenticator::Keyed(*ParseApiKeys(
      "ads " + HashApiKeyHex("old-key") + " 10\nads " + HashApiKeyHex("new-key") + " 10\n"));
  for (const char* key : {"old-key", "new-key"}) {
    SCOPED_TRACE(key);
    absl::StatusOr<Identity> identity = auth.Identify(absl::StrCat("Bearer ", key), std::nullopt);
    ASSERT_TRUE(identity.ok()) << identity.status();
    EXPECT_EQ(identity->caller, "ads");
    EXPECT_EQ(identity->monthly_budget, 10);
  }
}

TEST(KeyRotationTest, AnExpiredKeyIsRefusedFromItsExpiryOn) {
  FakeClock clock(absl::FromCivil(absl::CivilDay(2027, 1, 31), absl::UTCTimeZone()));
  Authenticator auth = Authenticator::Keyed(
      *ParseApiKeys("ads " + HashApiKeyHex("old-key") + " expires=2027-02-01\nads " +
                    HashApiKeyHex("new-key") + "\n"),
      &clock);
  ASSERT_TRUE(auth.Identify("Bearer old-key", std::nullopt).ok());
  clock.Advance(absl::Hours(24) - absl::Seconds(1));  // 2027-01-31T23:59:59Z
  ASSERT_TRUE(auth.Identify("Bearer old-key", std::nullopt).ok());
  clock.Advance(absl::Seconds(1));
  absl::StatusOr<Identity> expired = auth.Identify("Bearer old-key", std::nullopt);
  EXPECT_EQ(expired.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(expired.status().message(), "API key expired at 2027-02-01T00:00:00Z");
  // The caller's other key still works.
  absl::StatusOr<Identity> fresh = auth.Identify("Bearer new-key", std::nullopt);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->caller, "ads");
}

TEST(TeamIdentifyTest, IdentityCarriesTeamLeadAndTeamBudget) {
  Authenticator auth = Authenticator::Keyed(*ParseApiKeys(
      "@payments 500\n@free -\n"
      "pay-api " +
      HashApiKeyHex("pay-api-key") + " 10 team=payments\npay-lead " + HashApiKeyHex("lead-key") +
      " - lead team=payments\npay-lead " + HashApiKeyHex("lead-key-2") +
      " - lead team=payments\nfree-one " + HashApiKeyHex("free-key") + " 3 team=free\nops " +
      HashApiKeyHex("ops-key") + " - auditor\n"));
  struct Case {
    std::string key;
    std::string caller;
    int64_t budget;
    bool auditor;
    std::string team;
    bool lead;
    int64_t team_budget;
  };
  const std::vector<Case> cases = {
      {"pay-api-key", "pay-api", 10, false, "payments", false, 500},
      {"lead-key", "pay-lead", 0, false, "payments", true, 500},
      {"lead-key-2", "pay-lead", 0, false, "payments", true, 500},
      {"free-key", "free-one", 3, false, "free", false, 0},
      {"ops-key", "ops", 0, true, "", false, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    absl::StatusOr<Identity> identity = auth.Identify("Bearer " + c.key, "pay-lead");
    ASSERT_TRUE(identity.ok()) << identity.status();
    EXPECT_EQ(identity->caller, c.caller);
    EXPECT_EQ(identity->monthly_budget, c.budget);
    EXPECT_EQ(identity->auditor, c.auditor);
    EXPECT_EQ(identity->team, c.team);
    EXPECT_EQ(identity->lead, c.lead);
    EXPECT_EQ(identity->team_monthly_budget, c.team_budget);
  }
}

TEST(KeyedIdentifyNoEntriesTest, EverythingUnknown) {
  const Authenticator auth = Authenticator::Keyed({});
  absl::StatusOr<Identity> identity = auth.Identify("Bearer anything", std::nullopt);
  ASSERT_FALSE(identity.ok());
  EXPECT_EQ(identity.status().message(), "unknown API key");
}

TEST(OpenIdentifyTest, DefaultsAndXCaller) {
  const Authenticator auth = Authenticator::Open();
  EXPECT_FALSE(auth.keyed());
  struct Case {
    std::optional<absl::string_view> authorization;
    std::optional<absl::string_view> x_caller;
    std::string caller;
  };
  const std::string longest(128, '~');
  const std::vector<Case> cases = {
      {std::nullopt, std::nullopt, "anonymous"},
      {std::nullopt, "", "anonymous"},
      {std::nullopt, "team-a", "team-a"},
      {"Bearer some-key", "team-b", "team-b"},  // authorization ignored in open mode
      {"garbage", std::nullopt, "anonymous"},
      {std::nullopt, "!", "!"},
      {std::nullopt, longest, longest},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.caller);
    absl::StatusOr<Identity> identity = auth.Identify(c.authorization, c.x_caller);
    ASSERT_TRUE(identity.ok()) << identity.status();
    EXPECT_EQ(identity->caller, c.caller);
    EXPECT_TRUE(identity->auditor);
    EXPECT_EQ(identity->monthly_budget, 0);
    EXPECT_EQ(identity->team, "");
    EXPECT_FALSE(identity->lead);
    EXPECT_EQ(identity->team_monthly_budget, 0);
  }
}

TEST(OpenIdentifyTest, BadXCallerRejected) {
  const Authenticator auth = Authenticator::Open();
  const std::vector<std::string> cases = {
      "has space",   std::string(129, 'a'),   "tab\there", "del\x7f",
      "caf\xc3\xa9", std::string("nul\0", 4), "line\n",    " ",
  };
  for (const std::string& x_caller : cases) {
    SCOPED_TRACE(x_caller);
    absl::StatusOr<Identity> identity = auth.Identify(std::nullopt, x_caller);
    ASSERT_FALSE(identity.ok());
    EXPECT_EQ(identity.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(identity.status().message(), kBadXCaller);
  }
}

// GetUsage.caller is checked with the same function as x-caller; only the name in the message
// differs, and the message never grows with the input.
TEST(CheckCallerNameTest, SameRuleAsXCaller) {
  const Authenticator auth = Authenticator::Open();
  const std::vector<std::string> cases = {
      "team-a",
      "!",
      std::string(128, '~'),
      "has space",
      std::string(129, 'a'),
      "tab\there",
      "del\x7f",
      "caf\xc3\xa9",
      "line\n",
      std::string("nul\0", 4),
      "",
      std::string(3 << 20, 'z'),
  };
  for (const std::string& name : cases) {
    SCOPED_TRACE(absl::CHexEscape(name.substr(0, 40)));
    const absl::Status checked = CheckCallerName(name, "caller");
    if (name.empty()) {
      EXPECT_FALSE(checked.ok());  // Identify maps an empty x-caller to "anonymous" first
    } else {
      absl::StatusOr<Identity> identity = auth.Identify(std::nullopt, name);
      EXPECT_EQ(checked.ok(), identity.ok());
    }
    if (!checked.ok()) {
      EXPECT_EQ(checked.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(checked.message(), "caller must be 1-128 printable ASCII characters");
    }
  }
  EXPECT_EQ(CheckCallerName("has space", "x-caller").message(), kBadXCaller);
}

// --- Replace (SIGHUP) --------------------------------------------------------------------

std::vector<ApiKeyEntry> Keys(const std::string& contents) {
  absl::StatusOr<std::vector<ApiKeyEntry>> entries = ParseApiKeys(contents);
  EXPECT_TRUE(entries.ok()) << entries.status();
  return entries.ok() ? *entries : std::vector<ApiKeyEntry>();
}

TEST(ReplaceTest, NewKeysApplyToTheNextCallAndTheChangeIsCountedByCaller) {
  Authenticator auth = Authenticator::Keyed(Keys("ads " + HashApiKeyHex("ads-key") + " 10\n" +
                                                 "ops " + HashApiKeyHex("ops-key") + "\n" + "web " +
                                                 HashApiKeyHex("web-key") + "\n"));
  ASSERT_TRUE(auth.Identify("Bearer ads-key", std::nullopt).ok());
  EXPECT_EQ(auth.Identify("Bearer new-key", std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);

  // ads: budget changes; ops: key changes; web: kept as is; new: added.
  absl::StatusOr<KeySetChange> change =
      auth.Replace(Keys("ads " + HashApiKeyHex("ads-key") + " 20\n" + "ops " +
                        HashApiKeyHex("ops-key-2") + "\n" + "web " + HashApiKeyHex("web-key") +
                        "\n" + "new " + HashApiKeyHex("new-key") + " - auditor\n"));
  ASSERT_TRUE(change.ok()) << change.status();
  EXPECT_EQ(change->callers, 4u);
  EXPECT_EQ(change->added, 1u);
  EXPECT_EQ(change->removed, 0u);
  EXPECT_EQ(change->changed, 2u);
  EXPECT_EQ(change->teams, 0u);
  EXPECT_EQ(auth.entries().size(), 4u);

  absl::StatusOr<Identity> ads = auth.Identify("Bearer ads-key", std::nullopt);
  ASSERT_TRUE(ads.ok());
  EXPECT_EQ(ads->monthly_budget, 20);
  EXPECT_EQ(auth.Identify("Bearer ops-key", std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.Identify("Bearer ops-key-2", std::nullopt)->caller, "ops");
  EXPECT_TRUE(auth.Identify("Bearer new-key", std::nullopt)->auditor);

  change = auth.Replace(Keys("web " + HashApiKeyHex("web-key") + "\n"));
  ASSERT_TRUE(change.ok());
  EXPECT_EQ(change->callers, 1u);
  EXPECT_EQ(change->added, 0u);
  EXPECT_EQ(change->removed, 3u);
  EXPECT_EQ(change->changed, 0u);
  EXPECT_EQ(auth.Identify("Bearer ads-key", std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(ReplaceTest, RotatingAKeyCountsAsAChangeOfItsCaller) {
  const std::string old_key = "ads " + HashApiKeyHex("old-key") + " 10\n";
  const std::string new_key = "ads " + HashApiKeyHex("new-key") + " 10\n";
  const std::string web = "web " + HashApiKeyHex("web-key") + "\n";
  Authenticator auth = Authenticator::Keyed(Keys(old_key + web));
  // Add the new key: both work.
  absl::StatusOr<KeySetChange> change = auth.Replace(Keys(old_key + new_key + web));
  ASSERT_TRUE(change.ok()) << change.status();
  EXPECT_EQ(change->callers, 2u);
  EXPECT_EQ(change->keys, 3u);
  EXPECT_EQ(change->added, 0u);
  EXPECT_EQ(change->removed, 0u);
  EXPECT_EQ(change->changed, 1u);
  EXPECT_EQ(auth.Identify("Bearer old-key", std::nullopt)->caller, "ads");
  EXPECT_EQ(auth.Identify("Bearer new-key", std::nullopt)->caller, "ads");
  // Remove the old one: refused at once, the new one still works.
  change = auth.Replace(Keys(new_key + web));
  ASSERT_TRUE(change.ok()) << change.status();
  EXPECT_EQ(change->keys, 2u);
  EXPECT_EQ(change->changed, 1u);
  EXPECT_EQ(auth.Identify("Bearer old-key", std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.Identify("Bearer new-key", std::nullopt)->caller, "ads");
  // Only an expiry changes: still a change.
  change = auth.Replace(Keys("ads " + HashApiKeyHex("new-key") + " 10 expires=2030-01-01\n" + web));
  ASSERT_TRUE(change.ok()) << change.status();
  EXPECT_EQ(change->changed, 1u);
  // Nothing changes.
  change = auth.Replace(Keys("ads " + HashApiKeyHex("new-key") + " 10 expires=2030-01-01\n" + web));
  ASSERT_TRUE(change.ok()) << change.status();
  EXPECT_EQ(change->changed, 0u);
}

TEST(ReplaceTest, ATeamLeadOrTeamBudgetChangeIsAChangeOfTheCaller) {
  const std::string ads = "ads " + HashApiKeyHex("ads-key");
  const std::string boss = "boss " + HashApiKeyHex("boss-key");
  const std::string web = "web " + HashApiKeyHex("web-key") + "\n";
  Authenticator auth = Authenticator::Keyed(
      Keys("@pay 100\n@ops 5\n" + ads + " team=pay\n" + boss + " - lead team=pay\n" + web));
  EXPECT_EQ(auth.Identify("Bearer ads-key", std::nullopt)->team, "pay");

  struct Step {
    std::string name;
    std::string contents;
    size_t changed;
    size_t teams;
  };
  const std::vector<Step> steps = {
      {"nothing changes",
       "@pay 100\n@ops 5\n" + ads + " team=pay\n" + boss + " - lead team=pay\n" + web, 0, 1},
      {"ads moves to another team",
       "@pay 100\n@ops 5\n" + ads + " team=ops\n" + boss + " - lead team=pay\n" + web, 1, 2},
      {"boss is no longer a lead",
       "@pay 100\n@ops 5\n" + ads + " team=ops\n" + boss + " - team=pay\n" + web, 1, 2},
      {"boss is a lead again, and of the same team",
       "@pay 100\n@ops 5\n" + ads + " team=ops\n" + boss + " - lead team=pay\n" + web, 1, 2},
      {"the budget of ops changes: its one caller",
       "@pay 100\n@ops 6\n" + ads + " team=ops\n" + boss + " - lead team=pay\n" + web, 1, 2},
      {"ops loses its budget",
       "@pay 100\n@ops -\n" + ads + " team=ops\n" + boss + " - lead team=pay\n" + web, 1, 2},
      {"a team nobody uses is declared: no caller changes",
       "@pay 100\n@ops -\n@new 9\n" + ads + " team=ops\n" + boss + " - lead team=pay\n" + web, 0,
       2},
      {"web joins pay",
       "@pay 100\n@ops -\n" + ads + " team=ops\n" + boss + " - lead team=pay\n" + "web " +
           HashApiKeyHex("web-key") + " team=pay\n",
       1, 2},
      {"the budget of pay changes: both its callers",
       "@pay 200\n@ops -\n" + ads + " team=ops\n" + boss + " - lead team=pay\n" + "web " +
           HashApiKeyHex("web-key") + " team=pay\n",
       2, 2},
      {"no more teams", ads + "\n" + boss + "\n" + web, 3, 0},
  };
  for (const Step& step : steps) {
    SCOPED_TRACE(step.name);
    absl::StatusOr<KeySetChange> change = auth.Replace(Keys(step.contents));
    ASSERT_TRUE(change.ok()) << change.status();
    EXPECT_EQ(change->callers, 3u);
    EXPECT_EQ(change->added, 0u);
    EXPECT_EQ(change->removed, 0u);
    EXPECT_EQ(change->changed, step.changed);
    EXPECT_EQ(change->teams, step.teams);
  }
  absl::StatusOr<Identity> boss_identity = auth.Identify("Bearer boss-key", std::nullopt);
  ASSERT_TRUE(boss_identity.ok());
  EXPECT_EQ(boss_identity->team, "");
  EXPECT_FALSE(boss_identity->lead);
}

// --- TeamsOf -----------------------------------------------------------------------------

TEST(TeamsOfTest, TeamsWithCallersSortedByNameWithTheirCallersSortedOnce) {
  const std::vector<TeamInfo> teams =
      TeamsOf(Keys("@b-team 7\n@a-team -\n@unused 3\n"
                   "zed " +
                   HashApiKeyHex("1") + " team=a-team\nads " + HashApiKeyHex("2") +
                   " - lead team=a-team\n" + "mid " + HashApiKeyHex("3") + " team=b-team\nads " +
                   HashApiKeyHex("4") + " - lead team=a-team\n" + "solo " + HashApiKeyHex("5") +
                   " - auditor\n" + "abe " + HashApiKeyHex("6") + " team=a-team\n"));
  ASSERT_EQ(teams.size(), 2u);
  EXPECT_EQ(teams[0].name, "a-team");
  EXPECT_EQ(teams[0].monthly_budget, 0);
  EXPECT_EQ(teams[0].callers, (std::vector<std::string>{"abe", "ads", "zed"}));
  EXPECT_EQ(teams[1].name, "b-team");
  EXPECT_EQ(teams[1].monthly_budget, 7);
  EXPECT_EQ(teams[1].callers, (std::vector<std::string>{"mid"}));
}

TEST(TeamsOfTest, NoTeams) {
  EXPECT_TRUE(TeamsOf({}).empty());
  EXPECT_TRUE(TeamsOf(Keys("@unused 3\nads " + HashApiKeyHex("1") + "\n")).empty());
}

TEST(ReplaceTest, AnEntriesSnapshotDoesNotChangeUnderItsHolder) {
  Authenticator auth = Authenticator::Keyed(Keys("ads " + HashApiKeyHex("ads-key") + "\n"));
  const std::vector<ApiKeyEntry> before = auth.entries();
  ASSERT_TRUE(auth.Replace({}).ok());
  ASSERT_EQ(before.size(), 1u);
  EXPECT_EQ(before[0].caller, "ads");
  EXPECT_TRUE(auth.entries().empty());
}

TEST(ReplaceTest, OpenModeStaysOpen) {
  Authenticator auth = Authenticator::Open();
  EXPECT_EQ(auth.Replace(Keys("ads " + HashApiKeyHex("ads-key") + "\n")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(auth.keyed());
  EXPECT_EQ(auth.Identify(std::nullopt, "someone")->caller, "someone");
}

// Calls keep authenticating while the key set is swapped underneath them (run under TSan, this
// is the data-race check): a key in every set always works, one in none never does.
TEST(ReplaceTest, ConcurrentIdentifyDuringReplace) {
  const std::string a = "stay " + HashApiKeyHex("stay-key") + "\n";
  const std::string b = a + "other " + HashApiKeyHex("other-key") + "\n";
  Authenticator auth = Authenticator::Keyed(Keys(a));
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 4; ++i) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        if (!auth.Identify("Bearer stay-key", std::nullopt).ok()) failures.fetch_add(1);
        if (auth.Identify("Bearer never-key", std::nullopt).ok()) failures.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 2000; ++i) {
    ASSERT_TRUE(auth.Replace(Keys(i % 2 == 0 ? b : a)).ok());
  }
  stop.store(true);
  for (std::thread& reader : readers) reader.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace verdictd
