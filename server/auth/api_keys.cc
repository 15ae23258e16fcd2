#include "server/auth/api_keys.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"

namespace verdictd {
namespace {

constexpr size_t kMaxCallerLength = 64;
constexpr int64_t kMaxBudget = 1'000'000'000'000;  // 10^12
constexpr size_t kMaxApiKeyLength = 512;
constexpr size_t kMaxXCallerLength = 128;
constexpr off_t kMaxKeysFileSize = 16 << 20;  // far more than any sane keys file
constexpr char kAnonymous[] = "anonymous";
constexpr char kFormat[] =
    "expected CALLER SHA256_HEX [BUDGET|-] [auditor|lead] [team=NAME] [expires=WHEN]";
constexpr char kTeamFormat[] = "a team line is exactly two fields: @NAME BUDGET|-";
constexpr char kBudgetRule[] =
    "budget must be a positive integer no larger than 10^12, or \"-\" for none";
constexpr char kMalformedAuthorization[] =
    "missing or malformed authorization: expected 'Bearer <api key>'";

bool IsCallerChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

bool IsValidCaller(absl::string_view caller) {
  if (caller.empty() || caller.size() > kMaxCallerLength) {
    return false;
  }
  for (char c : caller) {
    if (!IsCallerChar(c)) {
      return false;
    }
  }
  return true;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

// Decodes exactly 64 hex digits (either case) into a digest.
std::optional<Sha256> ParseSha256Hex(absl::string_view hex) {
  Sha256 out{};
  if (hex.size() != 2 * out.size()) {
    return std::nullopt;
  }
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = HexValue(hex[2 * i]);
    const int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return std::nullopt;
    }
    out[i] = static_cast<uint8_t>((hi << 4) | lo);
  }
  return out;
}

// A positive decimal integer no larger than kMaxBudget; digits only (no sign, no spaces).
std::optional<int64_t> ParseBudget(absl::string_view field) {
  if (field.empty() || field.size() > 13) {
    return std::nullopt;
  }
  for (char c : field) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(field, &value) || value <= 0 || value > kMaxBudget) {
    return std::nullopt;
  }
  return value;
}

// expires=WHEN: a UTC date (its first second) or an RFC 3339 time with a zone.
std::optional<absl::Time> ParseExpiry(absl::string_view when) {
  absl::CivilDay day;
  if (when.size() == 10 && absl::ParseCivilTime(when, &day)) {
    return absl::FromCivil(day, absl::UTCTimeZone());
  }
  absl::Time t;
  std::string error;
  if (when.size() <= 40 && absl::ParseTime(absl::RFC3339_full, when, &t, &error) &&
      t != absl::InfiniteFuture() && t != absl::InfinitePast()) {
    return t;
  }
  return std::nullopt;
}

bool IsFieldSeparator(char c) { return c == ' ' || c == '\t'; }

// Splits on runs of spaces/tabs, dropping empty pieces.
std::vector<absl::string_view> SplitFields(absl::string_view line) {
  std::vector<absl::string_view> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && IsFieldSeparator(line[i])) {
      ++i;
    }
    const size_t start = i;
    while (i < line.size() && !IsFieldSeparator(line[i])) {
      ++i;
    }
    if (i > start) {
      fields.push_back(line.substr(start, i - start));
    }
  }
  return fields;
}

absl::Status LineError(int line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", message));
}

bool IsPrintableAscii(absl::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x21 || u > 0x7e) {
      return false;
    }
  }
  return true;
}

// Parses `authorization` as "Bearer <key>": the scheme in any case, one or more spaces, then a
// non-empty key of at most kMaxApiKeyLength bytes.
std::optional<absl::string_view> BearerKey(absl::string_view authorization) {
  constexpr absl::string_view kScheme = "bearer";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme) ||
      authorization[kScheme.size()] != ' ') {
    return std::nullopt;
  }
  absl::string_view key = authorization.substr(kScheme.size());
  while (!key.empty() && key.front() == ' ') {
    key.remove_prefix(1);
  }
  if (key.empty() || key.size() > kMaxApiKeyLength) {
    return std::nullopt;
  }
  return key;
}

}  // namespace

Sha256 HashApiKey(absl::string_view key) {
  Sha256 out{};
  unsigned int len = 0;
  if (EVP_Digest(key.data(), key.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != out.size()) {
    // Only possible on allocation failure. Carrying on with a zero digest would be wrong in a
    // way nobody would notice, so stop here.
    std::fprintf(stderr, "verdictd: EVP_Digest(SHA-256) failed\n");
    std::abort();
  }
  return out;
}

std::string HashApiKeyHex(absl::string_view key) {
  const Sha256 digest = HashApiKey(key);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * digest.size());
  for (uint8_t b : digest) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xf]);
  }
  return out;
}

absl::StatusOr<std::vector<ApiKeyEntry>> ParseApiKeys(absl::string_view contents) {
  std::vector<ApiKeyEntry> entries;
  std::map<std::string, size_t> caller_first;  // caller -> index of its first entry
  std::map<Sha256, size_t> hash_index;         // digest -> index into entries
  std::vector<int> entry_line;                 // parallel to entries
  struct Team {
    int64_t monthly_budget = 0;
    int line = 0;
  };
  std::map<std::string, Team> teams;  // declared teams (@NAME lines)

  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    const std::vector<absl::string_view> fields = SplitFields(line);
    if (fields.empty()) {
      continue;
    }
    if (fields[0].front() == '@') {
      // A team declaration: @NAME BUDGET|-.
      const absl::string_view name = fields[0].substr(1);
      if (!IsValidCaller(name)) {
        return LineError(line_number, absl::StrCat("team name must be 1-", kMaxCallerLength,
                                                   " characters of [A-Za-z0-9._-]"));
      }
      if (fields.size() != 2) {
        return LineError(line_number, kTeamFormat);
      }
      Team team;
      team.line = line_number;
      if (fields[1] != "-") {
        std::optional<int64_t> budget = ParseBudget(fields[1]);
        if (!budget.has_value()) {
          return LineError(line_number, absl::StrCat("team ", kBudgetRule));
        }
        team.monthly_budget = *budget;
      }
      if (auto it = teams.find(std::string(name)); it != teams.end()) {
        return LineError(line_number, absl::StrFormat("team \"%s\" already declared on line %d",
                                                      name, it->second.line));
      }
      teams.emplace(std::string(name), team);
      continue;
    }
    // No message below quotes the hash field (or the key, if one was pasted by mistake): only a
    // caller or team name is quoted, and only once it is known to be a valid name.
    if (!IsValidCaller(fields[0])) {
      return LineError(line_number, absl::StrCat("caller name must be 1-", kMaxCallerLength,
                                                 " characters of [A-Za-z0-9._-]"));
    }
    if (fields.size() < 2) {
      return LineError(line_number, absl::StrCat("missing key hash (", kFormat, ")"));
    }
    // Positional fields first (budget, role), then options (name=value).
    std::vector<absl::string_view> positional(fields.begin(), fields.begin() + 2);
    std::vector<absl::string_view> options;
    for (size_t i = 2; i < fields.size(); ++i) {
      if (absl::StrContains(fields[i], '=')) {
        options.push_back(fields[i]);
      } else if (!options.empty()) {
        return LineError(line_number,
                         absl::StrCat("options (name=value) come last (", kFormat, ")"));
      } else {
        positional.push_back(fields[i]);
      }
    }
    if (positional.size() > 4) {
      return LineError(line_number, absl::StrCat("too many fields (", kFormat, ")"));
    }

    ApiKeyEntry entry;
    entry.caller = std::string(fields[0]);
    std::optional<Sha256> digest = ParseSha256Hex(fields[1]);
    if (!digest.has_value()) {
      return LineError(line_number,
                       "key hash must be exactly 64 hex characters (the SHA-256 of the key)");
    }
    entry.key_sha256 = *digest;
    if (positional.size() >= 3 && positional[2] != "-") {
      std::optional<int64_t> budget = ParseBudget(positional[2]);
      if (!budget.has_value()) {
        std::string hint;
        if (positional[2] == "auditor") {
          hint = " (write \"- auditor\" for an auditor without a budget)";
        } else if (positional[2] == "lead") {
          hint = " (write \"- lead\" for a lead without a budget)";
        }
        return LineError(line_number, absl::StrCat(kBudgetRule, hint));
      }
      entry.monthly_budget = *budget;
    }
    if (positional.size() == 4) {
      if (positional[3] == "auditor") {
        entry.auditor = true;
      } else if (positional[3] == "lead") {
        entry.lead = true;
      } else {
        return LineError(line_number,
                         "the fourth field, the role, may only be \"auditor\" or \"lead\"");
      }
    }
    bool expires_seen = false;
    bool team_seen = false;
    for (absl::string_view option : options) {
      const size_t eq = option.find('=');
      const absl::string_view name = option.substr(0, eq);
      const absl::string_view value = option.substr(eq + 1);
      if (name == "expires") {
        if (expires_seen) {
          return LineError(line_number, "expires= given twice");
        }
        expires_seen = true;
        std::optional<absl::Time> expires = ParseExpiry(value);
        if (!expires.has_value()) {
          return LineError(line_number,
                           "expires= must be a UTC date (2027-01-31) or an RFC 3339 time "
                           "(2027-01-31T12:00:00Z)");
        }
        entry.expires = *expires;
      } else if (name == "team") {
        if (team_seen) {
          return LineError(line_number, "team= given twice");
        }
        team_seen = true;
        if (!IsValidCaller(value)) {
          return LineError(line_number, absl::StrCat("team= must be 1-", kMaxCallerLength,
                                                     " characters of [A-Za-z0-9._-]"));
        }
        entry.team = std::string(value);
      } else {
        return LineError(line_number,
                         "unknown option (the options are team=NAME and expires=WHEN)");
      }
    }
    if (entry.lead && entry.team.empty()) {
      return LineError(line_number, "role lead needs team=NAME");
    }

    if (auto it = caller_first.find(entry.caller); it != caller_first.end()) {
      // Another key of a known caller: the caller's own settings must not differ between its
      // keys, or which one applies would depend on the key a client happens to hold.
      const ApiKeyEntry& first = entries[it->second];
      if (first.monthly_budget != entry.monthly_budget || first.auditor != entry.auditor ||
          first.lead != entry.lead || first.team != entry.team) {
        return LineError(line_number,
                         absl::StrFormat("caller \"%s\" has another budget, role or team on line "
                                         "%d; every key of a caller carries the same ones",
                                         entry.caller, entry_line[it->second]));
      }
    }
    if (auto it = hash_index.find(entry.key_sha256); it != hash_index.end()) {
      return LineError(line_number,
                       absl::StrFormat("key hash already used by caller \"%s\" on line %d",
                                       entries[it->second].caller, entry_line[it->second]));
    }
    caller_first.emplace(entry.caller, entries.size());
    hash_index.emplace(entry.key_sha256, entries.size());
    entry_line.push_back(line_number);
    entries.push_back(std::move(entry));
  }
  // Declarations may follow their callers, so teams are resolved once the whole file is read;
  // the first line (in file order) naming an undeclared team is the one reported.
  for (size_t i = 0; i < entries.size(); ++i) {
    ApiKeyEntry& entry = entries[i];
    if (entry.team.empty()) {
      continue;
    }
    auto it = teams.find(entry.team);
    if (it == teams.end()) {
      return LineError(entry_line[i],
                       absl::StrFormat("team \"%s\" is not declared (add a line \"@%s BUDGET|-\")",
                                       entry.team, entry.team));
    }
    entry.team_monthly_budget = it->second.monthly_budget;
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError("no callers defined");
  }
  return entries;
}

std::vector<TeamInfo> TeamsOf(const std::vector<ApiKeyEntry>& entries) {
  std::map<std::string, TeamInfo> by_name;
  for (const ApiKeyEntry& entry : entries) {
    if (entry.team.empty()) {
      continue;
    }
    TeamInfo& team = by_name[entry.team];
    team.name = entry.team;
    team.monthly_budget = entry.team_monthly_budget;
    team.callers.push_back(entry.caller);
  }
  std::vector<TeamInfo> out;
  out.reserve(by_name.size());
  for (auto& [name, team] : by_name) {
    std::sort(team.callers.begin(), team.callers.end());
    team.callers.erase(std::unique(team.callers.begin(), team.callers.end()), team.callers.end());
    out.push_back(std::move(team));
  }
  return out;
}

absl::StatusOr<std::vector<ApiKeyEntry>> LoadApiKeysFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, path);
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

  // Checked on the open descriptor, so the file we check is the file we read.
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return absl::ErrnoToStatus(errno, path);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": not a regular file"));
  }
  // The keys file is the list of who may call and with what rights: anyone who can write it
  // can mint callers (add a hash for a key they know, give themselves the auditor role, lift a
  // budget). A file that accounts other than its owner may write is therefore as good as no
  // authentication at all, so refuse to start rather than run with it.
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: keys file is group- or world-writable (mode %04o); anyone who can write it can "
        "add callers. Fix with: chmod go-w %s",
        path, static_cast<unsigned>(st.st_mode & 07777), path));
  }
  if (st.st_size > kMaxKeysFileSize) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": keys file is larger than ", kMaxKeysFileSize, " bytes"));
  }

  std::string contents;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return absl::ErrnoToStatus(errno, path);
    }
    if (n == 0) {
      break;
    }
    contents.append(buf, static_cast<size_t>(n));
    if (contents.size() > static_cast<size_t>(kMaxKeysFileSize)) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": keys file is larger than ", kMaxKeysFileSize, " bytes"));
    }
  }

  absl::StatusOr<std::vector<ApiKeyEntry>> entries = ParseApiKeys(contents);
  if (!entries.ok()) {
    return absl::Status(entries.status().code(),
                        absl::StrCat(path, ": ", entries.status().message()));
  }
  return entries;
}

absl::Status CheckCallerName(absl::string_view name, absl::string_view what) {
  if (name.empty() || name.size() > kMaxXCallerLength || !IsPrintableAscii(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1-", kMaxXCallerLength, " printable ASCII characters"));
  }
  return absl::OkStatus();
}

Authenticator Authenticator::Open() { return Authenticator(false, {}, Clock::Real()); }

Authenticator Authenticator::Keyed(std::vector<ApiKeyEntry> entries, const Clock* clock) {
  return Authenticator(true, std::move(entries), clock);
}

std::shared_ptr<const Authenticator::Entries> Authenticator::Snapshot() const {
  return std::atomic_load(&entries_);
}

absl::StatusOr<KeySetChange> Authenticator::Replace(std::vector<ApiKeyEntry> entries) {
  if (!keyed_) {
    return absl::FailedPreconditionError(
        "open mode (no --api_keys_file at start): keys cannot be loaded");
  }
  // What a caller is, for the comparison: its settings and its keys with their expiries.
  struct Caller {
    int64_t monthly_budget = 0;
    bool auditor = false;
    std::string team;
    bool lead = false;
    int64_t team_monthly_budget = 0;
    std::map<Sha256, absl::Time> keys;
    bool operator==(const Caller& o) const {
      return monthly_budget == o.monthly_budget && auditor == o.auditor && team == o.team &&
             lead == o.lead && team_monthly_budget == o.team_monthly_budget && keys == o.keys;
    }
  };
  auto by_caller = [](const Entries& list) {
    std::map<std::string, Caller> out;
    for (const ApiKeyEntry& entry : list) {
      Caller& caller = out[entry.caller];
      caller.monthly_budget = entry.monthly_budget;
      caller.auditor = entry.auditor;
      caller.team = entry.team;
      caller.lead = entry.lead;
      caller.team_monthly_budget = entry.team_monthly_budget;
      caller.keys[entry.key_sha256] = entry.expires;
    }
    return out;
  };
  const std::map<std::string, Caller> before = by_caller(*Snapshot());
  const std::map<std::string, Caller> after = by_caller(entries);
  KeySetChange change;
  change.callers = after.size();
  change.keys = entries.size();
  change.teams = TeamsOf(entries).size();
  for (const auto& [name, caller] : after) {
    auto it = before.find(name);
    if (it == before.end()) {
      ++change.added;
    } else if (!(it->second == caller)) {
      ++change.changed;
    }
  }
  for (const auto& [name, caller] : before) {
    change.removed += after.count(name) == 0 ? 1 : 0;
  }
  std::atomic_store(&entries_, std::shared_ptr<const Entries>(
                                   std::make_shared<const Entries>(std::move(entries))));
  return change;
}

absl::StatusOr<Identity> Authenticator::Identify(std::optional<absl::string_view> authorization,
                                                 std::optional<absl::string_view> x_caller) const {
  if (!keyed_) {
    Identity identity;
    identity.auditor = true;  // open mode: anyone may read all usage
    if (!x_caller.has_value() || x_caller->empty()) {
      identity.caller = kAnonymous;
      return identity;
    }
    if (absl::Status valid = CheckCallerName(*x_caller, "x-caller"); !valid.ok()) {
      return valid;
    }
    identity.caller = std::string(*x_caller);
    return identity;
  }

  // Keyed mode: x-caller is deliberately ignored.
  std::optional<absl::string_view> key;
  if (authorization.has_value()) {
    key = BearerKey(*authorization);
  }
  if (!key.has_value()) {
    return absl::UnauthenticatedError(kMalformedAuthorization);
  }
  const Sha256 digest = HashApiKey(*key);
  // One snapshot for the whole lookup: a concurrent Replace does not change it under us.
  const std::shared_ptr<const Entries> snapshot = Snapshot();
  const Entries& current = *snapshot;
  // Compare against every entry, without stopping at a match, so the time taken does not say
  // where in the file (or whether early or late) the key sits.
  size_t match = current.size();
  for (size_t i = 0; i < current.size(); ++i) {
    const bool equal =
        CRYPTO_memcmp(digest.data(), current[i].key_sha256.data(), digest.size()) == 0;
    match = (equal && match == current.size()) ? i : match;
  }
  if (match == current.size()) {
    return absl::UnauthenticatedError("unknown API key");
  }
  const ApiKeyEntry& entry = current[match];
  if (clock_->Now() >= entry.expires) {
    // Says when, so whoever holds the key knows it was retired on purpose; names no caller.
    return absl::UnauthenticatedError(
        absl::StrCat("API key expired at ",
                     absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", entry.expires, absl::UTCTimeZone())));
  }
  Identity identity;
  identity.caller = entry.caller;
  identity.auditor = entry.auditor;
  identity.monthly_budget = entry.monthly_budget;
  identity.team = entry.team;
  identity.lead = entry.lead;
  identity.team_monthly_budget = entry.team_monthly_budget;
  return identity;
}

}  // namespace verdictd
