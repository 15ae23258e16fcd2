#ifndef VERDICTD_SERVER_AUTH_API_KEYS_H_
#define VERDICTD_SERVER_AUTH_API_KEYS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace verdictd {

using Sha256 = std::array<uint8_t, 32>;

// SHA-256 of an API key, and its lowercase hex form (what the keys file holds).
Sha256 HashApiKey(absl::string_view key);
std::string HashApiKeyHex(absl::string_view key);

// One line of the keys file: one key of a caller.
struct ApiKeyEntry {
  std::string caller;          // [A-Za-z0-9._-]{1,64}
  Sha256 key_sha256{};         // only the hash is ever held
  int64_t monthly_budget = 0;  // clicks per calendar month (UTC); 0: no budget
  bool auditor = false;        // may read every caller's usage
  // The key is refused from this instant on; InfiniteFuture(): never.
  absl::Time expires = absl::InfiniteFuture();
  std::string team;                 // the caller's team (same rule as a caller name); "": none
  bool lead = false;                // the caller is a lead of its team (only with a team)
  int64_t team_monthly_budget = 0;  // the team's budget from its @ line; 0: none (or no team)
};

// Parses the keys file. `#` starts a comment; blank lines are ignored; fields are separated by
// spaces or tabs. Two kinds of line:
//
//   CALLER SHA256_HEX [BUDGET|-] [auditor|lead] [team=NAME] [expires=WHEN]
//     One key of a caller. BUDGET is a positive integer no larger than 10^12; `-` or omitted
//     means none. The role is `auditor` (may read every caller's usage) or `lead` (the lead of
//     its team; needs team=NAME). The options (name=value) come after the positional fields, in
//     any order, each at most once. WHEN is a UTC date (2027-01-31: refused from its first
//     second) or an RFC 3339 time (2027-01-31T12:00:00Z, 2027-01-31T13:00:00+01:00).
//     Several lines may name one caller (its keys: rotation is adding the new key, moving the
//     clients, removing the old one); they must agree on the budget, the role and the team,
//     which belong to the caller. A hash on two lines is an error.
//
//   @NAME BUDGET|-
//     Declares the team NAME (same rule as a caller name) and its monthly budget (`-`: none).
//     Exactly these two fields; each team is declared once, anywhere in the file (before or
//     after its callers). Every team=NAME must be declared, so that a typo cannot quietly make a
//     team without its budget; a declared team without callers is allowed.
//
// For example:
//
//   @payments 50000
//   pay-api  <sha256 hex> 20000 team=payments
//   pay-lead <sha256 hex> -     lead team=payments expires=2027-06-30
//   ops      <sha256 hex> -     auditor
//
// Errors name the line: `line 3: ...`; "no callers defined" when no caller line is present.
// Each entry carries its team's budget (team_monthly_budget). Messages never quote a hash.
absl::StatusOr<std::vector<ApiKeyEntry>> ParseApiKeys(absl::string_view contents);

// Reads and parses `path`; errors are prefixed with the path (`keys.txt: line 3: ...`).
absl::StatusOr<std::vector<ApiKeyEntry>> LoadApiKeysFile(const std::string& path);

// Checks a caller name that a request supplies: the x-caller metadata (open mode) and
// GetUsage.caller are both checked with this. A valid name is 1-128 printable ASCII bytes
// (0x21-0x7e, so no spaces or control characters); every caller name of a keys file is one.
// INVALID_ARGUMENT "<what> must be 1-128 printable ASCII characters" otherwise; the message
// never quotes `name`, so it stays short whatever the input.
absl::Status CheckCallerName(absl::string_view name, absl::string_view what);

// Who is calling.
struct Identity {
  std::string caller;
  bool auditor = false;
  int64_t monthly_budget = 0;       // 0: none
  std::string team;                 // "": none (always so in open mode)
  bool lead = false;                // a lead of `team`
  int64_t team_monthly_budget = 0;  // 0: none
};

// A team of the keys file, as the engine sees it.
struct TeamInfo {
  std::string name;
  int64_t monthly_budget = 0;        // from the team's @ line; 0: none
  std::vector<std::string> callers;  // its callers, sorted, each once
};

// The teams that `entries` (as ParseApiKeys returns them) name: every team with at least one
// caller, sorted by name; a caller with several keys is listed once. A team declared in the file
// but used by no caller is not among them (entries do not record it). The budget is taken from
// the entries (ParseApiKeys gives every entry of a team the same one).
std::vector<TeamInfo> TeamsOf(const std::vector<ApiKeyEntry>& entries);

// What a keys-file reload changed, by caller name (no key material).
struct KeySetChange {
  size_t callers = 0;  // after the reload
  size_t added = 0;    // callers new in the file
  size_t removed = 0;  // callers no longer in it
  // Callers kept whose keys, expiries, budget, auditor flag, team, lead flag or team budget
  // changed.
  size_t changed = 0;
  size_t keys = 0;   // keys after the reload (a caller may have several)
  size_t teams = 0;  // distinct teams of the callers after the reload
};

// Maps request credentials to an Identity. Thread-safe. In keyed mode the key set is an immutable
// snapshot behind a shared_ptr that Replace swaps atomically: a call that has loaded the old
// snapshot finishes with it, every later call sees the new one.
class Authenticator {
 public:
  // Open mode: the caller is the x-caller value (or "anonymous"); everyone may read all usage.
  static Authenticator Open();
  // Keyed mode: `authorization: Bearer <key>` is required and x-caller is ignored. Key expiry
  // is judged by `clock` (never null; outlives the authenticator).
  static Authenticator Keyed(std::vector<ApiKeyEntry> entries, const Clock* clock = Clock::Real());

  bool keyed() const { return keyed_; }
  // The current key set (a snapshot: a later Replace does not change it).
  std::vector<ApiKeyEntry> entries() const { return *Snapshot(); }

  // Keyed mode only (an open-mode authenticator stays open; the call is refused with
  // FAILED_PRECONDITION): swaps in `entries` for every call that starts after it returns.
  absl::StatusOr<KeySetChange> Replace(std::vector<ApiKeyEntry> entries);

  // `authorization` and `x_caller` are the metadata values, nullopt when absent.
  // Keyed mode: UNAUTHENTICATED when the header is missing, not "Bearer <key>", or the key is
  // unknown (the hash is compared against every entry in constant time; messages never echo the
  // key), or expired (the message says when). Open mode: x-caller must be 1-128 printable ASCII
  // bytes (INVALID_ARGUMENT otherwise).
  absl::StatusOr<Identity> Identify(std::optional<absl::string_view> authorization,
                                    std::optional<absl::string_view> x_caller) const;

 private:
  using Entries = std::vector<ApiKeyEntry>;
  Authenticator(bool keyed, Entries entries, const Clock* clock)
      : keyed_(keyed),
        clock_(clock),
        entries_(std::make_shared<const Entries>(std::move(entries))) {}
  std::shared_ptr<const Entries> Snapshot() const;

  bool keyed_;
  const Clock* clock_;
  // Read and written only with std::atomic_load / std::atomic_store.
  std::shared_ptr<const Entries> entries_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_AUTH_API_KEYS_H_
