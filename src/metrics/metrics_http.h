#ifndef VERDICTD_METRICS_METRICS_HTTP_H_
#define VERDICTD_METRICS_METRICS_HTTP_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "metrics/metrics.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace verdictd {
namespace metrics {

// Serves GET /metrics (the Registry's Render(), Content-Type
// "text/plain; version=0.0.4; charset=utf-8") and 404 for anything else, on its own threads:
// one accepting, two handling requests. Idle keep-alive connections are closed after 1 s, so
// destruction takes at most about that long.
class MetricsHttpServer {
 public:
  // Binds `listen` ("host:port" or "[v6 host]:port"; port 0 picks a free port) and returns
  // once the server accepts connections. INVALID_ARGUMENT for a malformed address, UNAVAILABLE
  // when it cannot bind. `registry` must outlive the server.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& listen,
                                                                  const Registry& registry);

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;
  // Stops accepting, waits for requests in progress, and joins the threads.
  ~MetricsHttpServer();

  // The bound port (the chosen one when asked for port 0).
  int port() const { return port_; }

 private:
  MetricsHttpServer(std::unique_ptr<httplib::Server> server, int port);

  const std::unique_ptr<httplib::Server> server_;
  const int port_;
  std::thread thread_;  // Runs the accept loop.
};

}  // namespace metrics
}  // namespace verdictd

#endif  // VERDICTD_METRICS_METRICS_HTTP_H_
