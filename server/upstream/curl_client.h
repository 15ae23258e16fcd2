#ifndef VERDICTD_SERVER_UPSTREAM_CURL_CLIENT_H_
#define VERDICTD_SERVER_UPSTREAM_CURL_CLIENT_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/upstream/clickpatrol_client.h"

namespace verdictd {

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

#endif  // VERDICTD_SERVER_UPSTREAM_CURL_CLIENT_H_
