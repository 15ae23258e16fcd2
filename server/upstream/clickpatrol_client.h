#ifndef VERDICTD_SERVER_UPSTREAM_CLICKPATROL_CLIENT_H_
#define VERDICTD_SERVER_UPSTREAM_CLICKPATROL_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/verdict.h"

namespace verdictd {

// The result of one attempt to ask ClickPatrol about one IP.
struct FetchOutcome {
  // The parsed verdict, or the error mapped as in DESIGN.md:
  //   UNAVAILABLE          unreachable, timed out, reset, 5xx
  //   FAILED_PRECONDITION  401/403: ClickPatrol rejected the service's token
  //   RESOURCE_EXHAUSTED   402/429: the account's allowance is spent
  //   INTERNAL             anything else that is not a well-formed verdict
  // Error messages never contain the token or the request URL.
  absl::StatusOr<Assessment> assessment;
  // The response body as received (capped), for the audit history and log excerpts.
  std::string raw_body;
  int http_status = 0;  // 0 when no HTTP response arrived
  // False only when the request provably never left this process (DNS failure, connection
  // refused, TLS handshake failure): the only failures that are safe to retry unbilled.
  bool maybe_sent = true;
  // Time the request spent on the wire (from when it left the FIFO queue until it finished);
  // time spent waiting for a concurrency slot is not included.
  absl::Duration latency;
};

// Asks ClickPatrol about IPs. Implementations are thread-safe and never block the caller on
// network I/O.
class ClickPatrolClient {
 public:
  using Callback = std::function<void(FetchOutcome)>;

  virtual ~ClickPatrolClient() = default;

  // Sends one GET for `ip` (canonical form) with `user_agent` ("" for none). `done` runs exactly
  // once, on a thread owned by the client; it must not block for long. Requests beyond the
  // client's concurrency limit wait in a FIFO queue.
  virtual void Fetch(std::string ip, std::string user_agent, Callback done) = 0;

  // Sends `token` (secret) with every request started after this returns; requests already
  // started keep the one they were sent with. UNIMPLEMENTED unless the client supports it.
  virtual absl::Status SetToken(std::string token) {
    return absl::UnimplementedError("this ClickPatrol client cannot change its token");
  }
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_UPSTREAM_CLICKPATROL_CLIENT_H_
