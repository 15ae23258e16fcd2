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
};

// Parses the keys file. One key per line, fields separated by whitespace:
//   CALLER SHA256_HEX [BUDGET|-] [auditor] [expires=WHEN]
// `#` starts a comment; blank lines are ignored. BUDGET is a positive integer, `-` or omitted
// means none. WHEN is a UTC date (2027-01-31: refused from its first second) or an RFC 3339
// time (2027-01-31T12:00:00Z, 2027-01-31T13:00:00+01:00). Several lines may name one caller
// (its keys: rotation is adding the new key, moving the clients, removing the old one); they
// must agree on the budget and the role, which belong to the caller. Errors name the line:
// `line 3: ...`. A hash on two lines is an error.
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
  int64_t monthly_budget = 0;  // 0: none
};

// What a keys-file reload changed, by caller name (no key material).
struct KeySetChange {
  size_t callers = 0;  // after the reload
  size_t added = 0;    // callers new in the file
  size_t removed = 0;  // callers no longer in it
  size_t changed = 0;  // callers kept whose keys, expiries, budget or auditor flag changed
  size_t keys = 0;     // keys after the reload (a caller may have several)
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
