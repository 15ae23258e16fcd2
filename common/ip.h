#ifndef VERDICTD_COMMON_IP_H_
#define VERDICTD_COMMON_IP_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace verdictd {

// A validated IP address. Construct with ParseIp().
class IpAddress {
 public:
  bool is_v4() const { return is_v4_; }
  // 16 bytes; an IPv4 address is stored IPv4-mapped (::ffff:a.b.c.d).
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }

  // Canonical text: dotted quad for IPv4 (and IPv4-mapped IPv6), RFC 5952 for IPv6.
  const std::string& canonical() const { return canonical_; }

  // True when the address is globally routable: not private, loopback, link-local, CGNAT,
  // multicast, reserved, documentation, benchmarking, unspecified or otherwise special-purpose
  // (IANA special-purpose registries).
  bool IsPublic() const;

 private:
  friend absl::StatusOr<IpAddress> ParseIp(absl::string_view text);
  bool is_v4_ = false;
  std::array<uint8_t, 16> bytes_{};
  std::string canonical_;
};

// Parses an IPv4 dotted quad (exactly four decimal parts, no leading zeros) or an IPv6 address.
// Rejects ports, prefixes, zone ids, brackets, whitespace and anything else with
// INVALID_ARGUMENT. IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes its IPv4 address.
absl::StatusOr<IpAddress> ParseIp(absl::string_view text);

}  // namespace verdictd

#endif  // VERDICTD_COMMON_IP_H_
