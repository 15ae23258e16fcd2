// Fuzzes verdictd::ParseApiKeys (the keys file: who may call, with which budget, role and team)
// and the bearer-key path of Authenticator::Identify.
//
// Properties: parsing never crashes; an error is INVALID_ARGUMENT, names the line (or says no
// caller is defined) and stays short; every accepted entry obeys the documented field rules, with
// unique hashes, and a caller's keys agree on budget, role and team; a lead always has a team;
// every entry with a team carries the budget of that team's @ line in the input, and one without
// a team none; TeamsOf lists exactly the teams of the entries; writing the entries back out in
// the documented format (team declarations included, before or after the callers) and parsing
// that gives the same entries; a key taken from the input, listed by its hash, authenticates as
// its caller exactly when the documented bearer syntax allows it.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fuzz_check.h"
#include "server/auth/api_keys.h"

namespace {

bool IsCallerName(absl::string_view caller) {
  if (caller.empty() || caller.size() > 64) {
    return false;
  }
  for (char c : caller) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return false;
    }
  }
  return true;
}

std::string Hex(const verdictd::Sha256& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : digest) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xf]);
  }
  return out;
}

bool SameEntries(const std::vector<verdictd::ApiKeyEntry>& a,
                 const std::vector<verdictd::ApiKeyEntry>& b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].caller != b[i].caller || a[i].key_sha256 != b[i].key_sha256 ||
        a[i].monthly_budget != b[i].monthly_budget || a[i].auditor != b[i].auditor ||
        a[i].expires != b[i].expires || a[i].team != b[i].team || a[i].lead != b[i].lead ||
        a[i].team_monthly_budget != b[i].team_monthly_budget) {
      return false;
    }
  }
  return true;
}

// The team declarations of a file that parsed, read independently of the parser: lines whose
// first field starts with '@', after the documented comment, CR and field splitting. The parser
// accepted the file, so each is "@NAME BUDGET|-" and each name occurs once. Budget 0: none.
std::map<std::string, int64_t> DeclaredTeams(absl::string_view contents) {
  std::map<std::string, int64_t> teams;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    line = line.substr(0, line.find('#'));
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.empty() || fields[0].front() != '@') {
      continue;
    }
    FUZZ_CHECK(fields.size() == 2);
    int64_t budget = 0;
    FUZZ_CHECK(fields[1] == "-" || absl::SimpleAtoi(fields[1], &budget));
    FUZZ_CHECK(teams.emplace(std::string(fields[0].substr(1)), budget).second);
  }
  return teams;
}

void CheckParse(absl::string_view contents) {
  const absl::StatusOr<std::vector<verdictd::ApiKeyEntry>> parsed =
      verdictd::ParseApiKeys(contents);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    const absl::string_view message = parsed.status().message();
    FUZZ_CHECK(absl::StartsWith(message, "line ") || message == "no callers defined");
    // The longest message quotes one caller name (at most 64 characters).
    FUZZ_CHECK(message.size() <= 200);
    return;
  }

  const std::vector<verdictd::ApiKeyEntry>& entries = *parsed;
  FUZZ_CHECK(!entries.empty());
  const std::map<std::string, int64_t> declared = DeclaredTeams(contents);
  // A caller may have several keys, all with the same budget, role and team.
  struct Caller {
    int64_t monthly_budget;
    bool auditor;
    bool lead;
    std::string team;
    bool operator==(const Caller& o) const {
      return monthly_budget == o.monthly_budget && auditor == o.auditor && lead == o.lead &&
             team == o.team;
    }
  };
  std::map<std::string, Caller> callers;
  std::map<std::string, std::pair<int64_t, std::set<std::string>>> teams;  // budget, callers
  std::set<verdictd::Sha256> hashes;
  std::string keys;
  for (const verdictd::ApiKeyEntry& entry : entries) {
    FUZZ_CHECK(IsCallerName(entry.caller));
    FUZZ_CHECK(entry.monthly_budget >= 0 && entry.monthly_budget <= 1'000'000'000'000);
    FUZZ_CHECK(!(entry.auditor && entry.lead));  // one role field
    FUZZ_CHECK(!entry.lead || !entry.team.empty());
    if (entry.team.empty()) {
      FUZZ_CHECK(entry.team_monthly_budget == 0);
    } else {
      FUZZ_CHECK(IsCallerName(entry.team));
      const auto declaration = declared.find(entry.team);
      FUZZ_CHECK(declaration != declared.end());
      FUZZ_CHECK(entry.team_monthly_budget == declaration->second);
      FUZZ_CHECK(entry.team_monthly_budget >= 0 && entry.team_monthly_budget <= 1'000'000'000'000);
      auto& team = teams[entry.team];
      team.first = entry.team_monthly_budget;
      team.second.insert(entry.caller);
    }
    const Caller caller{entry.monthly_budget, entry.auditor, entry.lead, entry.team};
    const auto [it, first] = callers.emplace(entry.caller, caller);
    FUZZ_CHECK(first || it->second == caller);
    FUZZ_CHECK(hashes.insert(entry.key_sha256).second);
    absl::StrAppend(
        &keys, entry.caller, " ", Hex(entry.key_sha256), " ",
        entry.monthly_budget == 0 ? "-" : absl::StrCat(entry.monthly_budget),
        entry.auditor ? " auditor" : "", entry.lead ? " lead" : "",
        entry.expires == absl::InfiniteFuture()
            ? ""
            : absl::StrCat(" expires=", absl::FormatTime(absl::RFC3339_full, entry.expires,
                                                         absl::UTCTimeZone())),
        entry.team.empty() ? "" : absl::StrCat(" team=", entry.team), "\n");
  }

  // TeamsOf: the teams of the entries, by name, each caller once.
  const std::vector<verdictd::TeamInfo> team_list = verdictd::TeamsOf(entries);
  FUZZ_CHECK(team_list.size() == teams.size());
  size_t i = 0;
  for (const auto& [name, team] : teams) {
    FUZZ_CHECK(team_list[i].name == name);
    FUZZ_CHECK(team_list[i].monthly_budget == team.first);
    FUZZ_CHECK(std::vector<std::string>(team.second.begin(), team.second.end()) ==
               team_list[i].callers);
    ++i;
  }

  // Declarations of the teams in use (the ones nobody uses leave no trace in the entries), before
  // the callers or after them.
  std::string declarations;
  for (const auto& [name, team] : teams) {
    absl::StrAppend(&declarations, "@", name, " ", team.first == 0 ? "-" : absl::StrCat(team.first),
                    "\n");
  }
  const std::string rewritten = entries.size() % 2 == 0 ? declarations + keys : keys + declarations;
  const absl::StatusOr<std::vector<verdictd::ApiKeyEntry>> reparsed =
      verdictd::ParseApiKeys(rewritten);
  FUZZ_CHECK(reparsed.ok());
  FUZZ_CHECK(SameEntries(*reparsed, entries));
}

// The input (up to 600 bytes) as an API key, listed by its hash.
void CheckBearer(absl::string_view key) {
  const std::string contents = absl::StrCat("fuzz ", verdictd::HashApiKeyHex(key), " 7\n");
  const absl::StatusOr<std::vector<verdictd::ApiKeyEntry>> entries =
      verdictd::ParseApiKeys(contents);
  FUZZ_CHECK(entries.ok());
  const verdictd::Authenticator auth = verdictd::Authenticator::Keyed(*entries);

  const std::string authorization = absl::StrCat("Bearer ", key);
  const absl::StatusOr<verdictd::Identity> identity =
      auth.Identify(authorization, /*x_caller=*/std::string("ignored"));
  // "Bearer" then spaces then a key of 1-512 bytes; leading spaces belong to the separator.
  const bool usable = !key.empty() && key.size() <= 512 && key.front() != ' ';
  if (usable) {
    FUZZ_CHECK(identity.ok());
    FUZZ_CHECK(identity->caller == "fuzz");
    FUZZ_CHECK(identity->monthly_budget == 7);
    FUZZ_CHECK(!identity->auditor);
    FUZZ_CHECK(identity->team.empty() && !identity->lead && identity->team_monthly_budget == 0);
  } else {
    FUZZ_CHECK(!identity.ok());
    FUZZ_CHECK(identity.status().code() == absl::StatusCode::kUnauthenticated);
  }
  // Errors are fixed texts, so the key can never leak through them.
  if (!identity.ok()) {
    FUZZ_CHECK(identity.status().message() == "unknown API key" ||
               identity.status().message() ==
                   "missing or malformed authorization: expected 'Bearer <api key>'");
  }
  // Keyed mode ignores x-caller and needs the header.
  FUZZ_CHECK(auth.Identify(std::nullopt, std::string(key)).status().code() ==
             absl::StatusCode::kUnauthenticated);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  CheckParse(input);
  CheckBearer(input.substr(0, 600));
  return 0;
}
