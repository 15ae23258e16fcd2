// MetricsHttpServer against hostile connections: slowloris clients that trickle header lines,
// connections that never send a byte, clients that never read their response, floods above the
// connection cap, and malformed requests. Real sockets on 127.0.0.1.

#include "server/metrics/metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/metrics.h"

namespace verdictd {
namespace metrics {
namespace {

using Clock = std::chrono::steady_clock;  // for the tests that measure real-time behaviour
using std::chrono::milliseconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kRequestLine[] = "GET /metrics HTTP/1.1\r\n";
// How often a slowloris client sends its next header line.
constexpr milliseconds kTrickle{300};

long long Ms(Clock::duration d) { return std::chrono::duration_cast<milliseconds>(d).count(); }

// A TCP connection to 127.0.0.1:port (with SO_RCVBUF set first when rcvbuf > 0), or -1.
int Connect(int port, int rcvbuf = 0) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  if (rcvbuf > 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads whatever is there without blocking (appending it to `out` if given); true once the peer
// has closed the connection (EOF, or an error such as ECONNRESET).
bool PeerClosed(int fd, std::string* out = nullptr) {
  char buffer[16384];
  for (;;) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n > 0) {
      if (out != nullptr) {
        out->append(buffer, static_cast<size_t>(n));
      }
      continue;
    }
    if (n == 0) {
      return true;
    }
    if (errno == EINTR) {
      continue;
    }
    return errno != EAGAIN && errno != EWOULDBLOCK;
  }
}

// Waits (at most `limit`) for the peer to close `fd`, collecting what it sent into `out`.
bool WaitForClose(int fd, Clock::duration limit, std::string* out = nullptr) {
  const Clock::time_point give_up = Clock::now() + limit;
  for (;;) {
    if (PeerClosed(fd, out)) {
      return true;
    }
    const Clock::time_point now = Clock::now();
    if (now >= give_up) {
      return false;
    }
    pollfd p{fd, POLLIN, 0};
    poll(&p, 1, static_cast<int>(Ms(give_up - now)) + 1);
  }
}

// Sends `request` on a fresh connection, half-closes it, and returns everything the server sent
// until it closed (at most 3 s).
std::string RawExchange(int port, absl::string_view request) {
  const int fd = Connect(port);
  if (fd < 0) {
    return "connect failed";
  }
  std::string response;
  if (SendAll(fd, request) && shutdown(fd, SHUT_WR) == 0 &&
      !WaitForClose(fd, std::chrono::seconds(3), &response)) {
    response += "<server did not close>";
  }
  close(fd);
  return response;
}

struct Scrape {
  bool ok = false;
  std::string error;
  int status = 0;
  std::string body;
  Clock::duration elapsed{};
};

// A normal scrape: a fresh connection and a whole request, with a 5 s timeout.
Scrape DoScrape(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(5, 0);
  client.set_write_timeout(5, 0);
  Scrape scrape;
  const Clock::time_point start = Clock::now();
  httplib::Result result = client.Get("/metrics");
  scrape.elapsed = Clock::now() - start;
  if (!result) {
    scrape.error = httplib::to_string(result.error());
    return scrape;
  }
  scrape.ok = true;
  scrape.status = result->status;
  scrape.body = result->body;
  return scrape;
}

// Connections that try to hold the server: `slow` of them send a request line and then one
// header line every kTrickle, never finishing the request; `silent` ones never send a byte.
// Whenever the server drops one, it is opened again at once, as a persistent attacker would.
class Hostile {
 public:
  Hostile(int port, int slow, int silent) : port_(port) {
    for (int i = 0; i < slow + silent; ++i) {
      conns_.push_back(Conn{-1, i < slow});
      Open(conns_.back());
    }
    thread_ = std::thread([this] { Run(); });
  }

  ~Hostile() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    for (const Conn& conn : conns_) {
      if (conn.fd >= 0) {
        close(conn.fd);
      }
    }
  }

  // Blocks until `round` trickle rounds have been sent (false after 10 s, which is a failure).
  bool WaitForRound(int round) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return rounds_ >= round; });
  }

  // How many connections the server has closed so far (each was reopened).
  int reopened() {
    std::lock_guard<std::mutex> lock(mu_);
    return reopened_;
  }

 private:
  struct Conn {
    int fd;
    bool slow;
  };

  void Open(Conn& conn) {
    conn.fd = Connect(port_);
    if (conn.fd >= 0 && conn.slow) {
      SendAll(conn.fd, kRequestLine);
    }
  }

  void Run() {
    int header = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (cv_.wait_for(lock, kTrickle, [&] { return stop_; })) {
        return;
      }
      lock.unlock();
      int reopened = 0;
      const std::string line = absl::StrCat("X-Slow-", header++, ": 1\r\n");
      for (Conn& conn : conns_) {
        bool closed = conn.fd < 0 || PeerClosed(conn.fd);
        if (!closed && conn.slow) {
          closed = !SendAll(conn.fd, line);
        }
        if (closed) {
          if (conn.fd >= 0) {
            close(conn.fd);
          }
          Open(conn);
          ++reopened;
        }
      }
      lock.lock();
      reopened_ += reopened;
      ++rounds_;
      cv_.notify_all();
    }
  }

  const int port_;
  std::vector<Conn> conns_;  // Only the constructor, then thread_, then the destructor.
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  int rounds_ = 0;
  int reopened_ = 0;
  std::thread thread_;
};

std::unique_ptr<MetricsHttpServer> StartOrDie(const Registry& registry) {
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1:0", registry);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// (a) Slowloris clients and silent connections, reopened whenever the server drops them, do not
// delay a normal scrape. Scrapes are spread over 12 trickle rounds (about 3.6 s), past the
// request deadline, so they also meet the server while it drops and the attackers reconnect.
// Against the previous server (httplib, two workers, a 5 s read timeout renewed by every header
// line) the first scrape failed after its 5 s timeout.
TEST(MetricsHttpHostileTest, SlowAndSilentClientsDoNotDelayScrapes) {
  Registry registry;
  registry.AddCounter("hits_total", "Hits.").WithLabels({}).Increment(5);
  std::unique_ptr<MetricsHttpServer> server = StartOrDie(registry);
  ASSERT_NE(server, nullptr);

  Hostile hostile(server->port(), /*slow=*/16, /*silent=*/16);
  Clock::duration worst{};
  for (int i = 1; i <= 6; ++i) {
    ASSERT_TRUE(hostile.WaitForRound(2 * i));
    const Scrape scrape = DoScrape(server->port());
    ASSERT_TRUE(scrape.ok) << "scrape " << i << ": " << scrape.error << " after "
                           << Ms(scrape.elapsed) << " ms";
    EXPECT_EQ(scrape.status, 200);
    EXPECT_EQ(scrape.body, registry.Render());
    EXPECT_LT(Ms(scrape.elapsed), 1000) << "scrape " << i;
    worst = std::max(worst, scrape.elapsed);
  }
  // The attack outlived the deadline: the server dropped hostile connections and they came back.
  EXPECT_GT(hostile.reopened(), 0);
  std::cout << "slowest of 6 scrapes under 16 slow + 16 silent connections: "
            << std::chrono::duration_cast<std::chrono::microseconds>(worst).count()
            << " us; hostile connections dropped and reopened: " << hostile.reopened() << "\n";
}

std::unique_ptr<MetricsHttpServer> StartOrDie(const Registry& registry, FakeClock& clock) {
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1:0", registry, &clock);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// Answered without rendering, on a fresh connection. Accepted after the clock was moved, so its
// request is read in a later loop iteration, which first checks every deadline against the moved
// clock: once it is answered, a connection not closed yet was not due.
void ExpectProbeAnswered(int port) {
  EXPECT_THAT(RawExchange(port, "GET /probe HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 404 Not Found\r\n"));
}

// (b) A slowloris connection and a silent one are closed once the request deadline has passed
// on the server's clock, however the header lines trickle in, and not before. The clock is a
// FakeClock moved by hand: no sleeps, no wall-clock bounds.
TEST(MetricsHttpHostileTest, SlowAndSilentConnectionsAreClosedAfterTheRequestDeadline) {
  Registry registry;
  FakeClock clock;
  std::unique_ptr<MetricsHttpServer> server = StartOrDie(registry, clock);
  ASSERT_NE(server, nullptr);

  const int slow = Connect(server->port());
  const int silent = Connect(server->port());
  ASSERT_GE(slow, 0);
  ASSERT_GE(silent, 0);
  ASSERT_TRUE(SendAll(slow, kRequestLine));
  ExpectProbeAnswered(server->port());  // both accepted at the clock's start
  const absl::Duration deadline = absl::FromChrono(MetricsHttpServer::kRequestDeadline);
  const absl::Duration step = absl::FromChrono(kTrickle);
  absl::Duration moved;
  for (int header = 0; moved + step < deadline; ++header) {
    clock.Advance(step);
    moved += step;
    ExpectProbeAnswered(server->port());
    ASSERT_FALSE(PeerClosed(slow)) << "slowloris closed " << moved << " after accept";
    ASSERT_FALSE(PeerClosed(silent)) << "silent connection closed " << moved << " after accept";
    ASSERT_TRUE(SendAll(slow, absl::StrCat("X-Slow-", header, ": 1\r\n")));
  }
  clock.Advance(deadline - moved - absl::Milliseconds(1));
  ExpectProbeAnswered(server->port());
  EXPECT_FALSE(PeerClosed(slow)) << "closed 1 ms before the deadline";
  EXPECT_FALSE(PeerClosed(silent)) << "closed 1 ms before the deadline";

  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(WaitForClose(slow, std::chrono::seconds(10))) << "slowloris open at the deadline";
  EXPECT_TRUE(WaitForClose(silent, std::chrono::seconds(10))) << "silent open at the deadline";
  close(slow);
  close(silent);
}

// Makes the registry's text longer than the kernel buffers for a client that does not read
// (tcp_wmem's maximum plus 2 MB), so that the server cannot finish sending it; returns its size.
size_t AddBig(Registry& registry) {
  size_t wmem_max = 4 << 20;
  std::ifstream sysctl("/proc/sys/net/ipv4/tcp_wmem");
  size_t min = 0, initial = 0, max = 0;
  if (sysctl >> min >> initial >> max) {
    wmem_max = max;
  }
  const std::string blob(wmem_max + (2 << 20), 'x');
  registry.AddCallbackGauge("big", "Big.", {"blob"}, [blob] { return LabeledValues{{{blob}, 1}}; });
  return registry.Render().size();
}

// A connection (with a small receive buffer) that asks for /metrics and never reads the answer;
// returns once the server has started sending it.
int NonReader(int port) {
  const int fd = Connect(port, /*rcvbuf=*/4096);
  if (fd < 0 || !SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) {
    return -1;
  }
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 3000) != 1) {
    close(fd);
    return -1;
  }
  return fd;
}

// (c) Destruction returns promptly with slow, silent and non-reading clients attached.
TEST(MetricsHttpHostileTest, DestructionIsPromptWithHostileClientsAttached) {
  Registry registry;
  AddBig(registry);
  std::unique_ptr<MetricsHttpServer> server = StartOrDie(registry);
  ASSERT_NE(server, nullptr);
  const int reader = NonReader(server->port());
  ASSERT_GE(reader, 0);
  auto hostile = std::make_unique<Hostile>(server->port(), /*slow=*/16, /*silent=*/16);
  ASSERT_TRUE(hostile->WaitForRound(2));

  const Clock::time_point start = Clock::now();
  std::future<void> destroyed = std::async(std::launch::async, [&server] { server.reset(); });
  const bool prompt = destroyed.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  const Clock::duration elapsed = Clock::now() - start;
  // Let a server that hangs finish (its clients go away) so that the test itself ends.
  hostile.reset();
  close(reader);
  destroyed.get();
  ASSERT_TRUE(prompt) << "destructor still running after 5 s";
  EXPECT_LT(Ms(elapsed), 2000);
  std::cout << "destroyed in " << Ms(elapsed) << " ms\n";
}

// Clients that never read their response are reset once the response deadline has passed on
// the server's clock, and not before; scrapes go on meanwhile.
TEST(MetricsHttpHostileTest, NonReadingClientsAreResetAfterTheResponseDeadline) {
  Registry registry;
  const size_t size = AddBig(registry);
  FakeClock clock;
  std::unique_ptr<MetricsHttpServer> server = StartOrDie(registry, clock);
  ASSERT_NE(server, nullptr);
  std::vector<int> readers;
  for (int i = 0; i < 4; ++i) {
    readers.push_back(NonReader(server->port()));
    ASSERT_GE(readers.back(), 0);
  }
  const Scrape scrape = DoScrape(server->port());
  ASSERT_TRUE(scrape.ok) << scrape.error;
  EXPECT_EQ(scrape.status, 200);
  EXPECT_EQ(scrape.body.size(), size);

  // Only look for the reset, without reading: reading would let the server progress.
  auto reset = [](int fd, int wait_ms) {
    pollfd p{fd, POLLRDHUP, 0};
    poll(&p, 1, wait_ms);
    return (p.revents & (POLLHUP | POLLERR)) != 0;
  };
  const absl::Duration deadline = absl::FromChrono(MetricsHttpServer::kResponseDeadline);
  clock.Advance(deadline - absl::Milliseconds(1));
  ExpectProbeAnswered(server->port());
  for (int fd : readers) {
    EXPECT_FALSE(reset(fd, 0)) << "reset 1 ms before the response deadline";
  }
  clock.Advance(absl::Milliseconds(1));
  for (int fd : readers) {
    EXPECT_TRUE(reset(fd, 10'000)) << "not reset at the response deadline";
    std::string received;
    EXPECT_TRUE(WaitForClose(fd, std::chrono::seconds(1), &received));
    EXPECT_LT(received.size(), size);
    close(fd);
  }
}

// Complete requests that arrive while a rendering is in progress share the next one, so a flood
// of them costs two renderings rather than one each; every answer is still rendered after its
// request arrived.
TEST(MetricsHttpHostileTest, RequestsArrivingDuringARenderingShareTheNextOne) {
  Registry registry;
  std::mutex mu;
  std::condition_variable cv;
  int renders = 0;
  bool release = false;
  // Counts renderings, and holds the first one until released.
  registry.AddCallbackGauge("renders", "Renderings.", [&] {
    std::unique_lock<std::mutex> lock(mu);
    const int number = ++renders;
    cv.notify_all();
    if (number == 1) {
      cv.wait_for(lock, std::chrono::seconds(10), [&] { return release; });
    }
    return static_cast<double>(number);
  });
  std::unique_ptr<MetricsHttpServer> server = StartOrDie(registry);
  ASSERT_NE(server, nullptr);
  constexpr char kRequest[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

  const int first = Connect(server->port());
  ASSERT_GE(first, 0);
  ASSERT_TRUE(SendAll(first, kRequest));
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return renders == 1; }));
  }
  std::vector<int> flood;
  for (int i = 0; i < 50; ++i) {
    flood.push_back(Connect(server->port()));
    ASSERT_GE(flood.back(), 0);
    ASSERT_TRUE(SendAll(flood.back(), kRequest));
  }
  // A request answered without rendering, sent last: once it is answered, the server has read
  // the others (their bytes were queued before it connected), and they wait for the rendering.
  EXPECT_THAT(RawExchange(server->port(), "GET /probe HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 404 Not Found\r\n"));
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(renders, 1);
    release = true;
  }
  cv.notify_all();

  // The first gets rendering 1, or a later one if that was done before the server handed it on.
  std::string response;
  EXPECT_TRUE(WaitForClose(first, std::chrono::seconds(3), &response));
  EXPECT_THAT(response, StartsWith("HTTP/1.1 200 OK\r\n"));
  close(first);
  for (int fd : flood) {
    response.clear();
    EXPECT_TRUE(WaitForClose(fd, std::chrono::seconds(3), &response));
    close(fd);
    EXPECT_THAT(response, StartsWith("HTTP/1.1 200 OK\r\n"));
    const size_t at = response.rfind("\nrenders ");
    ASSERT_NE(at, std::string::npos) << response;
    int number = 0;
    EXPECT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(response.substr(at + 9)), &number));
    EXPECT_GE(number, 2) << "rendered before the request arrived";
  }
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(renders, 2);
  std::cout << "51 requests, " << renders << " renderings\n";
}

// More connections than the cap: each new one closes the oldest that has not sent its request,
// so a scrape still gets in.
TEST(MetricsHttpHostileTest, FloodAboveTheConnectionCapDoesNotLockScrapesOut) {
  Registry registry;
  registry.AddCounter("hits_total", "Hits.").WithLabels({}).Increment(5);
  std::unique_ptr<MetricsHttpServer> server = StartOrDie(registry);
  ASSERT_NE(server, nullptr);
  std::vector<int> flood;
  for (int i = 0; i < MetricsHttpServer::kMaxConnections + 64; ++i) {
    flood.push_back(Connect(server->port()));
    ASSERT_GE(flood.back(), 0);
  }
  const Scrape scrape = DoScrape(server->port());
  ASSERT_TRUE(scrape.ok) << scrape.error << " after " << Ms(scrape.elapsed) << " ms";
  EXPECT_EQ(scrape.status, 200);
  EXPECT_EQ(scrape.body, registry.Render());
  EXPECT_LT(Ms(scrape.elapsed), 1000);
  // The oldest flood connections were closed to make room.
  EXPECT_TRUE(WaitForClose(flood.front(), std::chrono::seconds(1)));
  for (int fd : flood) {
    close(fd);
  }
}

TEST(MetricsHttpRequestTest, MethodsPathsAndMalformedRequests) {
  Registry registry;
  registry.AddCounter("hits_total", "Hits.").WithLabels({}).Increment(5);
  std::unique_ptr<MetricsHttpServer> server = StartOrDie(registry);
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  const std::string body = registry.Render();

  const std::string get = RawExchange(port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
  EXPECT_THAT(get, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(get, HasSubstr("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  EXPECT_THAT(get, HasSubstr(absl::StrCat("\r\nContent-Length: ", body.size(), "\r\n")));
  EXPECT_THAT(get, HasSubstr("\r\nConnection: close\r\n"));
  EXPECT_THAT(get, ::testing::EndsWith("\r\n\r\n" + body));

  // Bare LF line ends, and a request body that is never read.
  EXPECT_THAT(RawExchange(port, "GET /metrics HTTP/1.1\nHost: x\nContent-Length: 3\n\nabc"),
              StartsWith("HTTP/1.1 200 OK\r\n"));
  const std::string head = RawExchange(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(head, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(head, HasSubstr(absl::StrCat("\r\nContent-Length: ", body.size(), "\r\n")));
  EXPECT_THAT(head, ::testing::EndsWith("\r\n\r\n"));

  EXPECT_THAT(RawExchange(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
              StartsWith("HTTP/1.1 405 Method Not Allowed\r\n"));
  EXPECT_THAT(RawExchange(port, "GET /metricsx HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 404 Not Found\r\n"));
  EXPECT_THAT(RawExchange(port, "GET / HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 404 Not Found\r\n"));
  EXPECT_THAT(RawExchange(port, "GET /metrics HTTP/2.0\r\n\r\n"),
              StartsWith("HTTP/1.1 505 HTTP Version Not Supported\r\n"));
  EXPECT_THAT(RawExchange(port, "nonsense\r\n\r\n"), StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_THAT(RawExchange(port, "GET  /metrics HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_THAT(
      RawExchange(
          port, absl::StrCat("GET /metrics HTTP/1.1\r\nX: ", std::string(20000, 'a'), "\r\n\r\n")),
      StartsWith("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
  // A client that gives up half-way gets nothing and costs nothing.
  EXPECT_EQ(RawExchange(port, "GET /metr"), "");

  // Still serving.
  const Scrape scrape = DoScrape(port);
  ASSERT_TRUE(scrape.ok) << scrape.error;
  EXPECT_EQ(scrape.body, body);
}

}  // namespace
}  // namespace metrics
}  // namespace verdictd
