#ifndef VERDICTD_UPSTREAM_CLICKPATROL_CLIENT_H_
#define VERDICTD_UPSTREAM_CLICKPATROL_CLIENT_H_

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
};

struct CurlClientOptions {
  // Base URL; query parameters are appended. Default: the documented production endpoint.
  std::string base_url = "https://trck-003.clckptrl.com/";
  // The ClickPatrol API token. Secret: never logged.
  std::string token;
  // Default: 32 requests on the wire at once.
  int max_concurrency = 32;
  // Default: 2 s to connect (TCP + TLS), 10 s for the whole request.
  absl::Duration connect_timeout = absl::Seconds(2);
  absl::Duration request_timeout = absl::Seconds(10);
  // Bodies longer than this are cut off and treated as not a verdict. Default: 64 KiB.
  size_t max_body_bytes = 64 * 1024;
  // PEM file of CAs trusted for HTTPS, in place of the system store. Default: system store.
  std::string ca_file;
};

// A libcurl-multi client: one event thread, keep-alive connections and shared DNS/TLS caches.
// Redirects are never followed (the token is in the query string) and TLS peer verification is
// always on. Destroying the client answers every queued or in-flight request with UNAVAILABLE
// "ClickPatrol client shutting down" (queued ones with maybe_sent=false) before it returns; it
// must not be destroyed from inside one of its own callbacks.
absl::StatusOr<std::unique_ptr<ClickPatrolClient>> NewCurlClickPatrolClient(
    CurlClientOptions options);

}  // namespace verdictd

#endif  // VERDICTD_UPSTREAM_CLICKPATROL_CLIENT_H_
