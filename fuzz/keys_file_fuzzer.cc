// Fuzzes verdictd::ParseApiKeys (the keys file: who may call, with which budget and role) and the
// bearer-key path of Authenticator::Identify.
//
// Properties: parsing never crashes; an error is INVALID_ARGUMENT, names the line (or says no
// caller is defined) and stays short; every accepted entry obeys the documented field rules, with
// unique callers and hashes; writing the entries back out in the documented format and parsing
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
#include "absl/strings/str_cat.h"
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
        a[i].expires != b[i].expires) {
      return false;
    }
  }
  return true;
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
  // A caller may have several keys, all with the same budget and role.
  std::map<std::string, std::pair<int64_t, bool>> callers;
  std::set<verdictd::Sha256> hashes;
  std::string rewritten;
  for (const verdictd::ApiKeyEntry& entry : entries) {
    FUZZ_CHECK(IsCallerName(entry.caller));
    FUZZ_CHECK(entry.monthly_budget >= 0 && entry.monthly_budget <= 1'000'000'000'000);
    const auto [it, first] =
        callers.emplace(entry.caller, std::make_pair(entry.monthly_budget, entry.auditor));
    FUZZ_CHECK(first || it->second == std::make_pair(entry.monthly_budget, entry.auditor));
    FUZZ_CHECK(hashes.insert(entry.key_sha256).second);
    absl::StrAppend(
        &rewritten, entry.caller, " ", Hex(entry.key_sha256), " ",
        entry.monthly_budget == 0 ? "-" : absl::StrCat(entry.monthly_budget),
        entry.auditor ? " auditor" : "",
        entry.expires == absl::InfiniteFuture()
            ? ""
            : absl::StrCat(" expires=", absl::FormatTime(absl::RFC3339_full, entry.expires,
                                                         absl::UTCTimeZone())),
        "\n");
  }
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
