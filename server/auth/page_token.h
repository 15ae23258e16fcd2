#ifndef VERDICTD_SERVER_AUTH_PAGE_TOKEN_H_
#define VERDICTD_SERVER_AUTH_PAGE_TOKEN_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace verdictd {

// Where a ListVerdictHistory page ended, and the query it belongs to.
struct PageCursor {
  std::string ip;        // canonical
  int64_t since_us = 0;  // the query's range, unix micros (INT64_MIN / INT64_MAX if unset)
  int64_t until_us = 0;
  int64_t checked_at_us = 0;  // the last entry returned
  int64_t id = 0;

  friend bool operator==(const PageCursor& a, const PageCursor& b) {
    return a.ip == b.ip && a.since_us == b.since_us && a.until_us == b.until_us &&
           a.checked_at_us == b.checked_at_us && a.id == b.id;
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
