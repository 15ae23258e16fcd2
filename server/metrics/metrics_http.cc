#include "server/metrics/metrics_http.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

// Why not cpp-httplib (which this used to be): its server hands each accepted socket to a worker
// thread that then blocks reading the request, with a read timeout renewed by every line, so a
// few clients trickling header lines hold every worker and scrapes queue behind them. A deadline
// per connection would bound each one, but not the queue: as many attackers as workers,
// reconnecting, still stall every scrape by up to the deadline. Here reading a request costs no
// thread at all.

namespace verdictd {
namespace metrics {
namespace {

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";
// A longer request head is answered 431.
constexpr size_t kMaxRequestHead = 8192;
// Once the response is written the connection is half-closed and whatever the client still
// sends is read and dropped until it closes, for at most this long: closing with unread input
// would send a reset, which can destroy the response before the client has read it.
constexpr absl::Duration kLinger = absl::Milliseconds(1000);
// On destruction, responses being written get this much longer.
constexpr absl::Duration kStopGrace = absl::Milliseconds(500);
// After accept() fails for want of descriptors or memory, it is retried after this.
constexpr absl::Duration kAcceptPause = absl::Milliseconds(100);
// Connections accepted per loop iteration at most, so that a flood cannot starve the others.
constexpr int kAcceptBurst = 64;
// Bytes read from one connection per loop iteration at most.
constexpr size_t kReadBurst = 64 * 1024;

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

// Binds and listens (non-blocking) on the first address `host`:`port` resolves to that can be
// bound; the socket, or UNAVAILABLE.
absl::StatusOr<int> Listen(const HostPort& address, absl::string_view listen) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(address.port);
  const int gai = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found);
  if (gai != 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics server cannot bind ", listen, ": ", gai_strerror(gai)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owned(found, &freeaddrinfo);
  int error = EADDRNOTAVAIL;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd =
        socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = errno;
      continue;
    }
    // SO_REUSEADDR allows quick restarts; SO_REUSEPORT is left off, as it would let a second
    // process bind the same port and silently take half the scrapes.
    const int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, SOMAXCONN) == 0) {
      return fd;
    }
    error = errno;
    close(fd);
  }
  return absl::UnavailableError(
      absl::StrCat("metrics server cannot bind ", listen, ": ", std::strerror(error)));
}

int BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return -1;
  }
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  }
  return -1;
}

// One line of `text` from `*pos` (without its LF, or CRLF); advances `*pos` past it. False if
// there is no complete line left.
bool NextLine(absl::string_view text, size_t* pos, absl::string_view* line) {
  const size_t lf = text.find('\n', *pos);
  if (lf == absl::string_view::npos) {
    return false;
  }
  *line = text.substr(*pos, lf - *pos);
  if (!line->empty() && line->back() == '\r') {
    line->remove_suffix(1);
  }
  *pos = lf + 1;
  return true;
}

// Where the request head in `buffer` ends (just past its blank line), or npos while it is
// incomplete. Lines may end in CRLF or a bare LF; blank lines before the request line are
// skipped, as RFC 9112 allows.
size_t HeadEnd(absl::string_view buffer) {
  size_t pos = 0;
  bool request_line = false;
  absl::string_view line;
  while (NextLine(buffer, &pos, &line)) {
    if (!line.empty()) {
      request_line = true;
    } else if (request_line) {
      return pos;
    }
  }
  return absl::string_view::npos;
}

std::string MakeResponse(absl::string_view status, absl::string_view content_type,
                         absl::string_view body, bool with_body,
                         absl::string_view extra_headers = "") {
  std::string response = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                                      "\r\nContent-Length: ", body.size(), "\r\n", extra_headers,
                                      "Connection: close\r\n\r\n");
  if (with_body) {
    response.append(body.data(), body.size());
  }
  return response;
}

std::string ErrorResponse(absl::string_view status, absl::string_view extra_headers = "") {
  return MakeResponse(status, "text/plain; charset=utf-8", absl::StrCat(status, "\n"),
                      /*with_body=*/true, extra_headers);
}

// What a complete request head calls for: either `response` as it is, or (render) a rendering
// of the registry, with or without the body (HEAD).
struct Reply {
  std::string response;
  bool render = false;
  bool with_body = true;
};

// Its headers, and any body, are ignored: nothing here needs them, and the connection is closed
// after one response.
Reply Respond(absl::string_view head) {
  Reply reply;
  size_t pos = 0;
  absl::string_view line;
  while (NextLine(head, &pos, &line) && line.empty()) {
  }
  // method SP request-target SP HTTP-version, nothing else.
  const size_t first = line.find(' ');
  const size_t second =
      first == absl::string_view::npos ? absl::string_view::npos : line.find(' ', first + 1);
  if (second == absl::string_view::npos || line.find(' ', second + 1) != absl::string_view::npos ||
      first == 0 || second == first + 1 || second + 1 == line.size()) {
    reply.response = ErrorResponse("400 Bad Request");
    return reply;
  }
  const absl::string_view method = line.substr(0, first);
  absl::string_view target = line.substr(first + 1, second - first - 1);
  const absl::string_view version = line.substr(second + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    reply.response = absl::StartsWith(version, "HTTP/")
                         ? ErrorResponse("505 HTTP Version Not Supported")
                         : ErrorResponse("400 Bad Request");
    return reply;
  }
  // The absolute form (http://host/path), which a proxy would send, becomes its path.
  if (const size_t scheme = target.find("://");
      scheme != absl::string_view::npos && target.front() != '/') {
    const size_t path = target.find('/', scheme + 3);
    target = path == absl::string_view::npos ? "/" : target.substr(path);
  }
  const absl::string_view path = target.substr(0, target.find_first_of("?#"));
  if (path != "/metrics") {
    reply.response = ErrorResponse("404 Not Found");
  } else if (method != "GET" && method != "HEAD") {
    reply.response = ErrorResponse("405 Method Not Allowed", "Allow: GET, HEAD\r\n");
  } else {
    reply.render = true;
    reply.with_body = method == "GET";
  }
  return reply;
}

enum class State {
  kReading,    // the request head, until kRequestDeadline from accept
  kRendering,  // waiting for a rendering that started after the request arrived
  kWriting,    // the response; rendering and writing end by kResponseDeadline from the request
  kLingering,  // half-closed, dropping what the client still sends until it closes
};

struct Connection {
  int fd = -1;  // -1 once closed
  State state = State::kReading;
  absl::Time deadline;
  std::string in;                           // the request head so far
  uint64_t rendering = 0;                   // kRendering: the rendering it waits for
  bool with_body = true;                    // kRendering: false for HEAD
  std::string head;                         // kWriting: the response (or its head)
  std::shared_ptr<const std::string> body;  // kWriting: the rendering, shared, or null
  size_t sent = 0;                          // kWriting: bytes of head, then body, sent
};

void Close(Connection& conn) {
  if (conn.fd >= 0) {
    close(conn.fd);
    conn.fd = -1;
  }
  std::string().swap(conn.in);
  std::string().swap(conn.head);
  conn.body.reset();
}

// Closes with a reset, which also frees at once what the kernel still holds to send (a plain
// close would leave it retrying a client that does not read).
void Abort(Connection& conn) {
  if (conn.fd >= 0) {
    const linger reset{1, 0};
    setsockopt(conn.fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  }
  Close(conn);
}

// Sends what it can of the response; once all is sent, half-closes and lingers.
void Write(Connection& conn, absl::Time now) {
  const size_t body_size = conn.body == nullptr ? 0 : conn.body->size();
  const size_t total = conn.head.size() + body_size;
  while (conn.sent < total) {
    iovec parts[2];
    int count = 0;
    if (conn.sent < conn.head.size()) {
      parts[count++] = iovec{conn.head.data() + conn.sent, conn.head.size() - conn.sent};
    }
    if (body_size > 0) {
      const size_t body_sent = conn.sent > conn.head.size() ? conn.sent - conn.head.size() : 0;
      parts[count++] =
          iovec{const_cast<char*>(conn.body->data()) + body_sent, body_size - body_sent};
    }
    msghdr message{};
    message.msg_iov = parts;
    message.msg_iovlen = count;
    const ssize_t n = sendmsg(conn.fd, &message, MSG_NOSIGNAL);
    if (n > 0) {
      conn.sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      Close(conn);
      return;
    }
  }
  shutdown(conn.fd, SHUT_WR);
  std::string().swap(conn.head);
  conn.body.reset();
  conn.state = State::kLingering;
  conn.deadline = now + kLinger;
}

// Starts sending `head` and then (if given) `body`.
void StartWriting(Connection& conn, std::string head, std::shared_ptr<const std::string> body,
                  absl::Time now) {
  conn.head = std::move(head);
  conn.body = std::move(body);
  conn.sent = 0;
  conn.state = State::kWriting;
  Write(conn, now);
}

// Reads and drops what the client sends; closes on its EOF (or error).
void Linger(Connection& conn) {
  char buffer[16384];
  for (size_t total = 0; total < kReadBurst;) {
    const ssize_t n = recv(conn.fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      total += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      Close(conn);
      return;
    }
  }
}

// Reads the request head; returns what it calls for once it is complete (or too long, 431).
std::optional<Reply> Read(Connection& conn) {
  char buffer[4096];
  while (conn.in.size() <= kMaxRequestHead) {
    const ssize_t n = recv(conn.fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return std::nullopt;
    }
    if (n <= 0) {  // The client went away (or half-closed) before finishing its request.
      Close(conn);
      return std::nullopt;
    }
    conn.in.append(buffer, static_cast<size_t>(n));
    const size_t end = HeadEnd(conn.in);
    if (end != absl::string_view::npos && end <= kMaxRequestHead) {
      Reply reply = Respond(absl::string_view(conn.in).substr(0, end));
      std::string().swap(conn.in);
      return reply;
    }
  }
  std::string().swap(conn.in);
  Reply reply;
  reply.response = ErrorResponse("431 Request Header Fields Too Large");
  return reply;
}

// Milliseconds from `now` until `then`, rounded up so that a poll() with it does not wake early.
int TimeoutMs(absl::Time now, absl::Time then) {
  if (then <= now) {
    return 0;
  }
  const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(then - now, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, 60'000));
}

void Wake(int wake_fd) {
  const uint64_t one = 1;
  while (write(wake_fd, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

}  // namespace

class MetricsHttpServer::Loop {
 public:
  // Takes both descriptors; starts the threads. Deadlines are kept on `clock`; when a test moves
  // it by hand the loop is woken to re-check them.
  Loop(const Registry& registry, int listen_fd, int wake_fd, Clock* clock)
      : registry_(registry), listen_fd_(listen_fd), wake_fd_(wake_fd), clock_(clock) {
    clock_listener_ = clock_->AddListener([this] { Wake(wake_fd_); });
    render_thread_ = std::thread([this] { RenderLoop(); });
    loop_thread_ = std::thread([this] { Run(); });
  }

  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  ~Loop() {
    clock_->RemoveListener(clock_listener_);
    stopping_.store(true);
    Wake(wake_fd_);
    loop_thread_.join();  // Connections waiting for a rendering still get it meanwhile.
    {
      std::lock_guard<std::mutex> lock(mu_);
      render_stop_ = true;
    }
    render_cv_.notify_one();
    render_thread_.join();
    close(wake_fd_);
  }

 private:
  // The render thread: renders whenever a rendering is asked for that has not started.
  void RenderLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      render_cv_.wait(lock, [this] { return render_stop_ || asked_ > started_; });
      if (render_stop_) {
        return;
      }
      started_ = asked_;
      lock.unlock();
      auto text = std::make_shared<const std::string>(registry_.Render());
      lock.lock();
      rendered_ = std::move(text);
      finished_ = started_;
      Wake(wake_fd_);
    }
  }

  // Asks for a rendering that starts from now on, and returns its number: the one after the
  // rendering in progress, if any, which all requests arriving meanwhile share.
  uint64_t AskForRendering() {
    uint64_t number;
    {
      std::lock_guard<std::mutex> lock(mu_);
      number = started_ + 1;
      asked_ = number;
    }
    render_cv_.notify_one();
    return number;
  }

  // Acts on a complete request head.
  void Answer(Connection& conn, Reply reply, absl::Time now) {
    conn.deadline = now + absl::FromChrono(kResponseDeadline);
    if (!reply.render) {
      StartWriting(conn, std::move(reply.response), nullptr, now);
      return;
    }
    conn.state = State::kRendering;
    conn.with_body = reply.with_body;
    conn.rendering = AskForRendering();
  }

  // Hands the latest rendering to the connections waiting for it.
  void DeliverRendering(std::vector<Connection>& conns, absl::Time now) {
    uint64_t finished;
    std::shared_ptr<const std::string> text;
    {
      std::lock_guard<std::mutex> lock(mu_);
      finished = finished_;
      text = rendered_;
    }
    for (Connection& conn : conns) {
      if (conn.fd < 0 || conn.state != State::kRendering || conn.rendering > finished) {
        continue;
      }
      StartWriting(conn, MakeResponse("200 OK", kContentType, *text, /*with_body=*/false),
                   conn.with_body ? text : nullptr, now);
    }
  }

  void Run();

  const Registry& registry_;
  const int listen_fd_;  // Non-blocking; closed by Run() when it stops.
  const int wake_fd_;    // An eventfd: the destructor and the render thread wake Run() with it.
  Clock* const clock_;
  int clock_listener_ = 0;
  std::atomic<bool> stopping_{false};

  std::mutex mu_;  // Between Run() and RenderLoop().
  std::condition_variable render_cv_;
  bool render_stop_ = false;                     // Guarded by mu_, as are the four below.
  uint64_t asked_ = 0;                           // The latest rendering asked for,
  uint64_t started_ = 0;                         // started,
  uint64_t finished_ = 0;                        // and finished,
  std::shared_ptr<const std::string> rendered_;  // whose text this is.

  std::thread render_thread_;
  std::thread loop_thread_;
};

void MetricsHttpServer::Loop::Run() {
  std::vector<Connection> conns;  // In accept order, so the oldest first.
  std::vector<pollfd> fds;
  bool listening = true;
  absl::Time stop_by = absl::InfiniteFuture();     // Set when stopping starts.
  absl::Time accept_again = absl::InfinitePast();  // accept() is paused until then.
  auto drop_closed = [&conns] {
    conns.erase(std::remove_if(conns.begin(), conns.end(),
                               [](const Connection& conn) { return conn.fd < 0; }),
                conns.end());
  };

  for (;;) {
    absl::Time now = clock_->Now();
    if (listening && stopping_.load()) {
      listening = false;
      close(listen_fd_);
      stop_by = now + kStopGrace;
    }
    for (Connection& conn : conns) {
      if (conn.state == State::kLingering) {
        if (!listening || now >= conn.deadline) {
          Close(conn);
        }
      } else if ((!listening && conn.state == State::kReading) ||
                 now >= std::min(conn.deadline, stop_by)) {
        Abort(conn);
      }
    }
    drop_closed();
    if (!listening && conns.empty()) {
      return;
    }

    absl::Time wake_at = stop_by;
    fds.clear();
    fds.push_back(pollfd{wake_fd_, POLLIN, 0});
    const bool accepting = listening && now >= accept_again;
    if (accepting) {
      fds.push_back(pollfd{listen_fd_, POLLIN, 0});
    } else if (listening) {
      wake_at = std::min(wake_at, accept_again);
    }
    const size_t first_conn = fds.size();
    for (const Connection& conn : conns) {
      // A connection waiting for a rendering is not polled (-1), only timed.
      const bool writing = conn.state == State::kWriting;
      fds.push_back(pollfd{conn.state == State::kRendering ? -1 : conn.fd,
                           static_cast<short>(writing ? POLLOUT : POLLIN), 0});
      wake_at = std::min(wake_at, conn.deadline);
    }
    const int timeout = wake_at == absl::InfiniteFuture() ? -1 : TimeoutMs(now, wake_at);
    if (poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno != EINTR) {  // ENOMEM: try again shortly rather than spin.
        poll(nullptr, 0, 10);
      }
      continue;
    }
    now = clock_->Now();
    for (size_t i = 0; i < conns.size(); ++i) {
      Connection& conn = conns[i];
      if (fds[first_conn + i].revents == 0) {
        continue;
      }
      switch (conn.state) {
        case State::kReading:
          if (std::optional<Reply> reply = Read(conn)) {
            Answer(conn, *std::move(reply), now);
          }
          break;
        case State::kRendering:
          break;
        case State::kWriting:
          Write(conn, now);
          break;
        case State::kLingering:
          Linger(conn);
          break;
      }
    }
    if (fds[0].revents != 0) {  // Drained before reading what the render thread left.
      uint64_t count;
      while (read(wake_fd_, &count, sizeof(count)) < 0 && errno == EINTR) {
      }
      DeliverRendering(conns, now);
    }
    drop_closed();

    if (!accepting || (fds[1].revents & POLLIN) == 0) {
      continue;
    }
    for (int accepted = 0; accepted < kAcceptBurst; ++accepted) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          break;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          accept_again = now + kAcceptPause;
          break;
        }
        continue;  // EINTR, or a connection that went away before we took it.
      }
      if (conns.size() >= static_cast<size_t>(kMaxConnections)) {
        // Make room by closing the oldest connection that has not sent its request: a
        // legitimate scrape sends its request at once, so a flood can push it out only by
        // opening kMaxConnections connections in the meantime.
        auto oldest = std::find_if(conns.begin(), conns.end(), [](const Connection& conn) {
          return conn.state == State::kReading;
        });
        if (oldest == conns.end()) {  // All are being answered: refuse the newcomer instead.
          close(fd);
          continue;
        }
        Abort(*oldest);
        conns.erase(oldest);
      }
      const int yes = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
      Connection conn;
      conn.fd = fd;
      conn.deadline = now + absl::FromChrono(kRequestDeadline);
      conns.push_back(std::move(conn));
    }
  }
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, const Registry& registry, Clock* clock) {
  absl::StatusOr<HostPort> address = ParseHostPort(listen);
  if (!address.ok()) {
    return address.status();
  }
  absl::StatusOr<int> listen_fd = Listen(*address, listen);
  if (!listen_fd.ok()) {
    return listen_fd.status();
  }
  const int port = BoundPort(*listen_fd);
  const int wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (port <= 0 || wake_fd < 0) {
    const int error = errno;
    close(*listen_fd);
    if (wake_fd >= 0) {
      close(wake_fd);
    }
    return absl::UnavailableError(
        absl::StrCat("metrics server on ", listen, ": ", std::strerror(error)));
  }
  // The socket already listens, so connections made from now on wait in its backlog until the
  // loop accepts them.
  return std::unique_ptr<MetricsHttpServer>(
      new MetricsHttpServer(std::make_unique<Loop>(registry, *listen_fd, wake_fd, clock), port));
}

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<Loop> loop, int port)
    : loop_(std::move(loop)), port_(port) {}

MetricsHttpServer::~MetricsHttpServer() = default;

}  // namespace metrics
}  // namespace verdictd
