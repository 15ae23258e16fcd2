#include "metrics/metrics_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace verdictd {
namespace metrics {
namespace {

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

struct HostPort {
  std::string host;
  int port = 0;
};

absl::StatusOr<HostPort> ParseHostPort(absl::string_view listen) {
  const size_t colon = listen.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address \"", listen, "\" is not host:port"));
  }
  absl::string_view host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  HostPort parsed;
  parsed.host = std::string(host);
  if (host.empty() || !absl::SimpleAtoi(listen.substr(colon + 1), &parsed.port) ||
      parsed.port < 0 || parsed.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address \"", listen, "\" is not host:port"));
  }
  return parsed;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, const Registry& registry) {
  absl::StatusOr<HostPort> address = ParseHostPort(listen);
  if (!address.ok()) {
    return address.status();
  }
  auto server = std::make_unique<httplib::Server>();
  server->new_task_queue = [] { return new httplib::ThreadPool(2); };
  // httplib's stop() waits for handler threads, which sit in idle keep-alive connections until
  // these expire: keep them short so destruction is prompt.
  server->set_keep_alive_timeout(1);
  server->set_keep_alive_max_count(10);
  // httplib's default sets SO_REUSEPORT, which would let a second process bind the same port
  // and silently take half the scrapes; SO_REUSEADDR alone still allows quick restarts.
  server->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server->set_read_timeout(5, 0);
  server->set_write_timeout(5, 0);
  server->Get("/metrics", [&registry](const httplib::Request&, httplib::Response& response) {
    response.set_content(registry.Render(), kContentType);
  });

  int port = address->port;
  if (port == 0) {
    port = server->bind_to_any_port(address->host);
    if (port < 0) {
      return absl::UnavailableError(absl::StrCat("metrics server cannot bind ", listen));
    }
  } else if (!server->bind_to_port(address->host, port)) {
    return absl::UnavailableError(absl::StrCat("metrics server cannot bind ", listen));
  }

  std::unique_ptr<MetricsHttpServer> result(new MetricsHttpServer(std::move(server), port));
  auto loop_done = std::make_shared<std::atomic<bool>>(false);
  httplib::Server* raw = result->server_.get();
  result->thread_ = std::thread([raw, loop_done] {
    raw->listen_after_bind();
    loop_done->store(true);
  });
  // stop() is a no-op until the loop has started, so the destructor could hang if we returned
  // earlier. is_running() turns true first thing in the loop, so this wait is short; loop_done
  // catches a loop that has already come and gone.
  while (!raw->is_running()) {
    if (loop_done->load()) {
      return absl::UnavailableError(absl::StrCat("metrics server on ", listen, " stopped"));
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  return result;
}

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<httplib::Server> server, int port)
    : server_(std::move(server)), port_(port) {}

MetricsHttpServer::~MetricsHttpServer() {
  server_->stop();
  if (thread_.joinable()) {
    thread_.join();
  }
}

}  // namespace metrics
}  // namespace verdictd
