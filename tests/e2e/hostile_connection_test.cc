// End-to-end hostile connections: connections that hold a file descriptor and memory without
// doing anything (idle ones, ones that never speak HTTP/2, slow-loris and silent clients of
// /metrics) are closed or do not get in the way, and one connection carries at most
// --max_concurrent_streams calls at once.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/e2e/hostile_fixture.h"
#include "tests/support/process.h"

namespace verdictd::testing::hostile {
namespace {

using ::testing::HasSubstr;

// Connections that hold a file descriptor and memory without doing anything: idle ones, ones that
// never speak HTTP/2, and one connection opening many calls at once.

// A channel of this test's own (the harness's stubs share nothing with it), so its state says
// what happened to its one connection.
std::shared_ptr<grpc::Channel> OwnChannel(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

grpc::Status ServerInfo(pb::VerdictService::Stub& stub) {
  pb::GetServerInfoResponse info;
  return stub.GetServerInfo(Context({{"x-caller", "conn"}}).get(), pb::GetServerInfoRequest(),
                            &info);
}

// A raw loopback TCP connection to `port` that sends `bytes`, then nothing; -1 on failure.
int ConnectRaw(int port, const std::string& bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0 ||
      (!bytes.empty() &&
       send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size()))) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads (and drops: the server may send its SETTINGS first) until the server closes `fd`, i.e.
// read() returns 0 or fails with ECONNRESET; how long after `since` that was, nullopt if `fd`
// is still open at `deadline`.
std::optional<absl::Duration> WaitForClose(int fd, absl::Time since, absl::Time deadline) {
  char buffer[4096];
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return std::nullopt;
    }
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno == EINTR) {
      continue;
    }
    if (ready <= 0) {
      continue;  // the loop's deadline check ends it
    }
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
      return absl::Now() - since;
    }
    if (n < 0 && errno != EINTR && errno != EAGAIN) {
      ADD_FAILURE() << "read: " << std::strerror(errno);
      return std::nullopt;
    }
  }
}

TEST(HostileConnectionTest, IdleConnectionIsClosedAfterMaxConnectionIdle) {
  TempDir dir;
  Simulator sim(dir, kToken);
  // Through the config file, which takes the connection flags like any other.
  const std::string config = dir.File("verdictd.json");
  {
    std::ofstream out(config, std::ios::trunc);
    out << R"({"max_connection_idle": "1s", "handshake_timeout": "3s",)"
        << R"( "max_concurrent_streams": 50})";
  }
  Verdictd verdictd(dir, sim.url(), kToken, {"--config=" + config});
  EXPECT_THAT(verdictd.Log(),
              HasSubstr("max_connection_idle=1s handshake_timeout=3s max_concurrent_streams=50"));

  std::shared_ptr<grpc::Channel> channel = OwnChannel(verdictd.port());
  std::unique_ptr<pb::VerdictService::Stub> stub = pb::VerdictService::NewStub(channel);
  ASSERT_TRUE(ServerInfo(*stub).ok());
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  // The server's GOAWAY takes the channel out of READY (to IDLE: it reconnects when next used).
  // gRPC checks for idleness once per --max_connection_idle, and a period with a call in it does
  // not count, so the close comes between one and two periods after the last call.
  const WaitResult<grpc_connectivity_state> closed = WaitUntil(
      "the idle channel to leave READY", [&] { return channel->GetState(false); },
      [](grpc_connectivity_state state) { return state != GRPC_CHANNEL_READY; },
      absl::Seconds(2 * 1 + 2), absl::Milliseconds(10));
  ASSERT_TRUE(closed) << "still connected 4 s after the last call";
  std::printf("[ observed ] idle connection closed %s after its last call (state %d)\n",
              absl::FormatDuration(closed.elapsed()).c_str(), static_cast<int>(closed.last()));
  EXPECT_GE(closed.elapsed(), absl::Milliseconds(900)) << "closed before --max_connection_idle";
  // A well-behaved client loses nothing: its next call reconnects.
  EXPECT_TRUE(ServerInfo(*stub).ok());
  EXPECT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
}

TEST(HostileConnectionTest, ConnectionsThatNeverSpeakHttp2AreClosedAfterTheHandshakeTimeout) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, {"--handshake_timeout=1s"});
  // For contrast, a connection that did its handshake: neither limit touches it (the idle limit
  // is the default 5 minutes).
  std::shared_ptr<grpc::Channel> channel = OwnChannel(verdictd.port());
  std::unique_ptr<pb::VerdictService::Stub> stub = pb::VerdictService::NewStub(channel);
  ASSERT_TRUE(ServerInfo(*stub).ok());

  const absl::Time connected = absl::Now();
  const int silent = ConnectRaw(verdictd.port(), "");
  // Half of the 24-byte HTTP/2 client preface, then nothing (a slow-loris client).
  const int partial = ConnectRaw(verdictd.port(), "PRI * HTTP/2.0\r\n");
  ASSERT_GE(silent, 0) << std::strerror(errno);
  ASSERT_GE(partial, 0) << std::strerror(errno);
  const absl::Time deadline = connected + absl::Seconds(1 + 2);
  const std::optional<absl::Duration> silent_closed = WaitForClose(silent, connected, deadline);
  const std::optional<absl::Duration> partial_closed = WaitForClose(partial, connected, deadline);
  close(silent);
  close(partial);
  ASSERT_TRUE(silent_closed.has_value()) << "a connection that sent nothing is still open at 3 s";
  ASSERT_TRUE(partial_closed.has_value()) << "a half-preface connection is still open at 3 s";
  std::printf("[ observed ] silent connection closed after %s, half-preface after %s\n",
              absl::FormatDuration(*silent_closed).c_str(),
              absl::FormatDuration(*partial_closed).c_str());
  EXPECT_GE(*silent_closed, absl::Milliseconds(900)) << "closed before --handshake_timeout";
  EXPECT_GE(*partial_closed, absl::Milliseconds(900)) << "closed before --handshake_timeout";

  EXPECT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  EXPECT_TRUE(ServerInfo(*stub).ok());
}

// Slow-loris clients (a header line every 300 ms, never finishing the request) and silent ones
// hold connections to /metrics; a scrape still answers in under a second every time.
TEST(HostileConnectionTest, MetricsAnswerWhileSlowAndSilentClientsHoldConnections) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, {"--metrics_listen=127.0.0.1:0"});
  const int port = MetricsPort(verdictd.Log());
  ASSERT_GT(port, 0) << verdictd.Log();
  constexpr int kSlow = 16;
  std::vector<int> held;
  for (int i = 0; i < kSlow; ++i) {
    held.push_back(ConnectRaw(port, "GET /metrics HTTP/1.1\r\n"));
    held.push_back(ConnectRaw(port, ""));
    ASSERT_GE(held[held.size() - 2], 0) << std::strerror(errno);
    ASSERT_GE(held.back(), 0) << std::strerror(errno);
  }
  absl::Duration slowest;
  for (int round = 0; round < 6; ++round) {
    for (size_t i = 0; i < held.size(); i += 2) {
      constexpr char kLine[] = "X-Slow: 1\r\n";
      send(held[i], kLine, sizeof(kLine) - 1, MSG_NOSIGNAL);  // fails once the server gave up
    }
    httplib::Client client("127.0.0.1", port);
    client.set_connection_timeout(5, 0);
    client.set_read_timeout(5, 0);
    const absl::Time start = absl::Now();
    httplib::Result result = client.Get("/metrics");
    const absl::Duration took = absl::Now() - start;
    ASSERT_TRUE(result) << "scrape " << round << " failed after " << took;
    EXPECT_EQ(result->status, 200);
    EXPECT_THAT(result->body, HasSubstr("verdictd_rpcs_total"));
    EXPECT_LT(took, absl::Seconds(1)) << "scrape " << round;
    slowest = std::max(slowest, took);
    // Not a poll: the pace of the slow-loris clients (a header line every 300 ms), so that the
    // six scrapes span their whole attack.
    absl::SleepFor(absl::Milliseconds(300));
  }
  for (int fd : held) {
    close(fd);
  }
  std::printf("[ observed ] %d slow-loris + %d silent connections: slowest of 6 scrapes %s\n",
              kSlow, kSlow, absl::FormatDuration(slowest).c_str());
}

TEST(HostileConnectionTest, OneConnectionCarriesAtMostMaxConcurrentStreamsCalls) {
  TempDir dir;
  Simulator sim(dir, kToken);
  Verdictd verdictd(dir, sim.url(), kToken, {"--max_concurrent_streams=1"});
  constexpr int kCalls = 3;
  constexpr absl::Duration kLatency = absl::Milliseconds(300);
  sim.Configure({{"latency_ms", absl::ToInt64Milliseconds(kLatency)}});

  // kCalls misses at once, each on `stubs[i]`; every one must succeed.
  auto misses = [&](const std::vector<pb::VerdictService::Stub*>& stubs, int first_ip) {
    std::vector<std::future<grpc::Status>> calls;
    for (int i = 0; i < kCalls; ++i) {
      calls.push_back(std::async(std::launch::async, [&stubs, i, first_ip] {
        pb::CheckIpResponse response;
        return CheckIp(*stubs[i], absl::StrCat("11.12.0.", first_ip + i), &response, "streams");
      }));
    }
    for (std::future<grpc::Status>& call : calls) {
      grpc::Status status = call.get();
      EXPECT_TRUE(status.ok()) << status.error_message();
    }
  };

  // One connection: its first call brings the server's SETTINGS (before them a client may open
  // more streams than the limit), then the misses are queued by the client, one at a time.
  std::shared_ptr<grpc::Channel> channel = OwnChannel(verdictd.port());
  std::unique_ptr<pb::VerdictService::Stub> shared = pb::VerdictService::NewStub(channel);
  ASSERT_TRUE(ServerInfo(*shared).ok());
  const absl::Time start = absl::Now();
  misses(std::vector<pb::VerdictService::Stub*>(kCalls, shared.get()), 1);
  const absl::Duration one_connection = absl::Now() - start;
  EXPECT_EQ(sim.Stats().at("max_in_flight").get<int64_t>(), 1);
  EXPECT_GE(one_connection, kCalls * kLatency);

  // The limit is per connection: the same misses on a connection each do run at once.
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> own;
  std::vector<pb::VerdictService::Stub*> stubs;
  for (int i = 0; i < kCalls; ++i) {
    std::shared_ptr<grpc::Channel> own_channel = OwnChannel(verdictd.port());
    // Connected first, so that the misses start together rather than each after its own
    // connection set-up on a loaded machine.
    ASSERT_TRUE(
        own_channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)));
    own.push_back(pb::VerdictService::NewStub(own_channel));
    stubs.push_back(own.back().get());
  }
  misses(stubs, 1 + kCalls);
  EXPECT_GE(sim.Stats().at("max_in_flight").get<int64_t>(), 2);
  std::printf("[ observed ] %d misses on one connection took %s (max 1 in flight upstream)\n",
              kCalls, absl::FormatDuration(one_connection).c_str());
}

}  // namespace
}  // namespace verdictd::testing::hostile
