#ifndef VERDICTD_SERVER_METRICS_METRICS_HTTP_H_
#define VERDICTD_SERVER_METRICS_METRICS_HTTP_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "server/metrics/metrics.h"

namespace verdictd {
namespace metrics {

// Serves GET (and HEAD) /metrics: the Registry's Render(), Content-Type
// "text/plain; version=0.0.4; charset=utf-8"; 404 for other paths, 405 for other methods; one
// request per connection (Connection: close).
//
// Built to keep answering while hostile clients hold connections. One thread runs a poll() loop
// over non-blocking sockets, so a connection that sends its request slowly, or never, or never
// reads the answer holds no thread, only a connection slot with a deadline: its request head must
// be complete within kRequestDeadline of accept, however it trickles in, and the response must be
// rendered and sent within kResponseDeadline of that. At most kMaxConnections are open; accepting
// one more closes the oldest that is still sending its request. A second thread runs Render(),
// and requests that arrive while it renders share the next rendering, so a flood of complete
// requests costs at most two renderings in a row, and every answer is rendered after its
// request arrived.
class MetricsHttpServer {
 public:
  // Whole-request deadline, from accept until the blank line that ends the request head.
  static constexpr std::chrono::milliseconds kRequestDeadline{2000};
  // Whole-response deadline, from the end of the request head until the last byte is sent.
  static constexpr std::chrono::milliseconds kResponseDeadline{5000};
  // Open connections at most.
  static constexpr int kMaxConnections = 256;

  // Binds `listen` ("host:port" or "[v6 host]:port"; port 0 picks a free port) and returns
  // once the server accepts connections. INVALID_ARGUMENT for a malformed address, UNAVAILABLE
  // when it cannot bind (a port in use included: no SO_REUSEPORT). `registry` must outlive the
  // server. The deadlines are kept on `clock` (not owned; must outlive the server), the stop
  // grace included; tests pass a FakeClock and move it.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& listen,
                                                                  const Registry& registry,
                                                                  Clock* clock = Clock::Real());

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;
  // Stops accepting, closes the connections still sending their request, gives responses in
  // progress up to 500 ms more (and a rendering in progress its time), and joins the threads:
  // returns within about that, whatever the clients do.
  ~MetricsHttpServer();

  // The bound port (the chosen one when asked for port 0).
  int port() const { return port_; }

 private:
  class Loop;  // The poll() loop and the render thread; in the .cc.

  MetricsHttpServer(std::unique_ptr<Loop> loop, int port);

  const std::unique_ptr<Loop> loop_;
  const int port_;
};

}  // namespace metrics
}  // namespace verdictd

#endif  // VERDICTD_SERVER_METRICS_METRICS_HTTP_H_
