#ifndef VERDICTD_SERVER_AUTH_PAGE_TOKEN_H_
#define VERDICTD_SERVER_AUTH_PAGE_TOKEN_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace verdictd {

// Where a page of a listing ended, and the query it belongs to: a ListVerdictHistory page
// (kHistory) or a ListClicks page (kClicks). A token of one kind never decodes as the other.
struct PageCursor {
  enum class Kind { kHistory, kClicks };

  std::string ip;        // canonical; for kClicks the IP filter ("" for every IP)
  int64_t since_us = 0;  // the query's range, unix micros (INT64_MIN / INT64_MAX if unset)
  int64_t until_us = 0;
  int64_t checked_at_us = 0;  // the last entry returned (for kClicks its requested_at)
  int64_t id = 0;
  Kind kind = Kind::kHistory;
  std::string caller;  // kClicks: the caller filter ("" for every caller); at most 255 bytes
  std::string team;    // kClicks: the team filter ("" for none); at most 255 bytes

  friend bool operator==(const PageCursor& a, const PageCursor& b) {
    return a.ip == b.ip && a.since_us == b.since_us && a.until_us == b.until_us &&
           a.checked_at_us == b.checked_at_us && a.id == b.id && a.kind == b.kind &&
           a.caller == b.caller && a.team == b.team;
  }
};

// Opaque, tamper-evident page tokens: a versioned binary encoding of the cursor followed by an
// HMAC-SHA256 tag under a server secret, base64url without padding. Thread-safe.
class PageTokenCodec {
 public:
  // REQUIRES: secret.size() >= 32.
  explicit PageTokenCodec(std::string secret);

  std::string Encode(const PageCursor& cursor) const;
  // INVALID_ARGUMENT "page_token is invalid" for anything not produced by Encode with this
  // secret (bad base64, wrong length or version, bad tag — compared in constant time). Never
  // crashes on any input; tokens over 1 KiB are rejected before decoding.
  absl::StatusOr<PageCursor> Decode(absl::string_view token) const;

 private:
  std::string secret_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_AUTH_PAGE_TOKEN_H_
