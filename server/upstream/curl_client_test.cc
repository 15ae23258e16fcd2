#include "server/upstream/curl_client.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/upstream/clickpatrol_client.h"

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Contains characters that need escaping, so a leak in escaped or raw form would both show.
constexpr char kToken[] = "cp_Secr3t+Tok/en=&x";
constexpr char kVerdictBody[] =
    R"({"trusted_ai_score":"Suspicious","proxy":true,"tor":false,"vpn":true,"crawler":false,)"
    R"("bot":false})";

// An in-process stand-in for ClickPatrol on 127.0.0.1. Register handlers on `server` before
// Start(). Declare it before the client so the client (and its connections) go first.
class FakeClickPatrol {
 public:
  FakeClickPatrol() {
    // httplib closes a connection after 5 requests by default, which would hide whether the
    // client keeps connections alive.
    server.set_keep_alive_max_count(1000);
    // Without it the server's separate header and body writes meet the client's delayed ACK and
    // every response takes ~40 ms.
    server.set_tcp_nodelay(true);
  }
  ~FakeClickPatrol() {
    server.stop();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  void Start() {
    port_ = server.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    // The socket is already listening, so connections made before listen_after_bind() runs
    // simply wait in the backlog.
    thread_ = std::thread([this] { server.listen_after_bind(); });
    // httplib's stop() is a no-op until the listen loop has started, so a test that finishes
    // quickly could otherwise leave the listen thread blocked in accept() forever.
    while (!server.is_running()) {
      std::this_thread::yield();
    }
  }

  std::string Url(absl::string_view path = "/") const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

  httplib::Server server;

 private:
  int port_ = 0;
  std::thread thread_;
};

CurlClientOptions Options(const FakeClickPatrol& fake, absl::string_view path = "/") {
  CurlClientOptions options;
  options.base_url = fake.Url(path);
  options.token = kToken;
  options.max_concurrency = 4;
  options.connect_timeout = absl::Seconds(2);
  options.request_timeout = absl::Seconds(5);
  return options;
}

std::unique_ptr<ClickPatrolClient> MakeClient(CurlClientOptions options) {
  absl::StatusOr<std::unique_ptr<ClickPatrolClient>> client =
      NewCurlClickPatrolClient(std::move(options));
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

FetchOutcome FetchAndWait(ClickPatrolClient& client, std::string ip, std::string user_agent) {
  FetchOutcome result;
  absl::Notification done;
  client.Fetch(std::move(ip), std::move(user_agent), [&](FetchOutcome outcome) {
    result = std::move(outcome);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

// Every status message produced in these tests passes through here.
void ExpectNoSecret(const absl::Status& status) {
  const std::string message(status.message());
  EXPECT_THAT(message, Not(HasSubstr(kToken)));
  EXPECT_THAT(message, Not(HasSubstr("Secr3t")));
  EXPECT_THAT(message, Not(HasSubstr("token=")));
}

// A port on which nothing listens: bound, never listened on, then closed.
int UnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(CurlClickPatrolClientTest, SendsEscapedParametersAndParsesVerdict) {
  const std::string user_agent =
      "Mozilla/5.0 (X11; Linux x86_64) a&b=c+d %41 100% \xc3\xbc\xe2\x9c\x93 ?#";
  absl::Mutex mu;
  std::string got_token, got_ip, got_param_ua, got_header_ua;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request& req, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    got_token = req.get_param_value("token");
    got_ip = req.get_param_value("ip");
    got_param_ua = req.get_param_value("user_http_header");
    got_header_ua = req.get_header_value("User-Agent");
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "2001:db8::1", user_agent);

  ASSERT_TRUE(outcome.assessment.ok()) << outcome.assessment.status();
  Assessment want;
  want.score = Score::kSuspicious;
  want.proxy = true;
  want.vpn = true;
  EXPECT_EQ(*outcome.assessment, want);
  EXPECT_EQ(outcome.http_status, 200);
  EXPECT_EQ(outcome.raw_body, kVerdictBody);
  EXPECT_TRUE(outcome.maybe_sent);
  EXPECT_GT(outcome.latency, absl::ZeroDuration());
  absl::MutexLock lock(&mu);
  EXPECT_EQ(got_token, kToken);
  EXPECT_EQ(got_ip, "2001:db8::1");
  EXPECT_EQ(got_param_ua, user_agent);
  // httplib 0.11 percent-decodes header values ("%41" arrives as "A"); curl sends the header
  // verbatim, so compare against what httplib makes of the exact string.
  EXPECT_EQ(got_header_ua, httplib::detail::decode_url(user_agent, false));
}

// A token reload: requests started after SetToken carry the new token; one already on the wire
// was sent with the old one and is answered as usual.
TEST(CurlClickPatrolClientTest, SetTokenAppliesToLaterRequests) {
  constexpr char kNewToken[] = "cp_RotatedSecr3tToken_51";
  absl::Mutex mu;
  std::vector<std::string> tokens;
  absl::Notification release;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request& req, httplib::Response& res) {
    {
      absl::MutexLock lock(&mu);
      tokens.push_back(req.get_param_value("token"));
    }
    if (req.get_param_value("ip") == "192.0.2.1") {
      release.WaitForNotification();
    }
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->SetToken("").code(), absl::StatusCode::kInvalidArgument);

  FetchOutcome held;
  absl::Notification held_done;
  client->Fetch("192.0.2.1", "", [&](FetchOutcome outcome) {
    held = std::move(outcome);
    held_done.Notify();
  });
  {
    absl::MutexLock lock(&mu);  // until the first request is at the server
    mu.Await(absl::Condition(
        +[](std::vector<std::string>* seen) { return !seen->empty(); }, &tokens));
  }
  ASSERT_TRUE(client->SetToken(kNewToken).ok());
  const FetchOutcome next = FetchAndWait(*client, "192.0.2.2", "");
  release.Notify();
  held_done.WaitForNotification();
  EXPECT_TRUE(held.assessment.ok()) << held.assessment.status();
  EXPECT_TRUE(next.assessment.ok()) << next.assessment.status();
  absl::MutexLock lock(&mu);
  EXPECT_THAT(tokens, ::testing::ElementsAre(kToken, kNewToken));
}

TEST(CurlClickPatrolClientTest, BaseUrlWithQueryGetsAmpersand) {
  absl::Mutex mu;
  std::string got_extra, got_token;
  FakeClickPatrol fake;
  fake.server.Get("/api", [&](const httplib::Request& req, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    got_extra = req.get_param_value("v");
    got_token = req.get_param_value("token");
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake, "/api?v=2"));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.7", "");

  ASSERT_TRUE(outcome.assessment.ok()) << outcome.assessment.status();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(got_extra, "2");
  EXPECT_EQ(got_token, kToken);
}

TEST(CurlClickPatrolClientTest, NoUserAgentSendsNeitherParameterNorHeader) {
  absl::Mutex mu;
  bool has_param = true, has_header = true;
  std::string got_ip;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request& req, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    has_param = req.has_param("user_http_header");
    has_header = req.has_header("User-Agent");
    got_ip = req.get_param_value("ip");
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "203.0.113.9", "");

  ASSERT_TRUE(outcome.assessment.ok()) << outcome.assessment.status();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(got_ip, "203.0.113.9");
  EXPECT_FALSE(has_param);
  EXPECT_FALSE(has_header);
}

TEST(CurlClickPatrolClientTest, UserAgentWithLineBreakCannotInjectHeaders) {
  absl::Mutex mu;
  bool injected = true;
  std::string got_param_ua;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request& req, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    injected = req.has_header("X-Injected");
    got_param_ua = req.get_param_value("user_http_header");
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "ua\r\nX-Injected: 1");

  ASSERT_TRUE(outcome.assessment.ok()) << outcome.assessment.status();
  absl::MutexLock lock(&mu);
  EXPECT_FALSE(injected);
  EXPECT_EQ(got_param_ua, "ua\r\nX-Injected: 1");
}

TEST(CurlClickPatrolClientTest, ServerErrorIsUnavailable) {
  FakeClickPatrol fake;
  fake.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.status = 503;
    res.set_content("try later", "text/plain");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(outcome.http_status, 503);
  EXPECT_EQ(outcome.raw_body, "try later");
  EXPECT_TRUE(outcome.maybe_sent);
  ExpectNoSecret(outcome.assessment.status());
}

TEST(CurlClickPatrolClientTest, RejectedTokenIsFailedPrecondition) {
  FakeClickPatrol fake;
  fake.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.status = 401;
    res.set_content(R"({"error":"invalid token"})", "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(outcome.http_status, 401);
  EXPECT_TRUE(outcome.maybe_sent);
  ExpectNoSecret(outcome.assessment.status());
}

TEST(CurlClickPatrolClientTest, ConnectionRefusedIsUnavailableAndNotSent) {
  CurlClientOptions options;
  options.base_url = absl::StrCat("http://127.0.0.1:", UnusedPort(), "/");
  options.token = kToken;
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "ua");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(outcome.assessment.status().message()),
              HasSubstr("could not connect to ClickPatrol"));
  EXPECT_FALSE(outcome.maybe_sent);
  EXPECT_EQ(outcome.http_status, 0);
  ExpectNoSecret(outcome.assessment.status());
}

TEST(CurlClickPatrolClientTest, UnresolvableHostIsUnavailableAndNotSent) {
  CurlClientOptions options;
  // .invalid is reserved (RFC 6761) and never resolves; no network is needed to learn that.
  options.base_url = "http://clickpatrol.invalid/";
  options.token = kToken;
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(outcome.maybe_sent);
  ExpectNoSecret(outcome.assessment.status());
}

TEST(CurlClickPatrolClientTest, RequestTimeoutIsUnavailableAndMaybeSent) {
  absl::Notification release;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    // Simulated latency, far beyond the client's timeout; released at the end of the test so
    // the server can stop promptly.
    release.WaitForNotificationWithTimeout(absl::Seconds(3));
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  CurlClientOptions options = Options(fake);
  options.request_timeout = absl::Milliseconds(300);
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");
  release.Notify();

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(outcome.assessment.status().message()),
              HasSubstr("ClickPatrol timed out after 300ms"));
  EXPECT_TRUE(outcome.maybe_sent);
  EXPECT_GE(outcome.latency, absl::Milliseconds(250));
  ExpectNoSecret(outcome.assessment.status());
}

TEST(CurlClickPatrolClientTest, OversizedBodyIsInternalAndKeepsCappedExcerpt) {
  FakeClickPatrol fake;
  fake.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(100 * 1024, 'x'), "application/json");
  });
  fake.Start();
  CurlClientOptions options = Options(fake);
  options.max_body_bytes = 1024;
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(outcome.assessment.status().message(), "ClickPatrol response exceeds 1024 bytes");
  EXPECT_EQ(outcome.raw_body, std::string(1024, 'x'));
  EXPECT_EQ(outcome.http_status, 200);
  EXPECT_TRUE(outcome.maybe_sent);
}

TEST(CurlClickPatrolClientTest, BodyExactlyAtCapIsAccepted) {
  std::string body = kVerdictBody;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(body, "application/json");
  });
  fake.Start();
  CurlClientOptions options = Options(fake);
  options.max_body_bytes = body.size();
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_TRUE(outcome.assessment.ok()) << outcome.assessment.status();
}

TEST(CurlClickPatrolClientTest, NotAVerdictIsInternalWithRawBody) {
  FakeClickPatrol fake;
  fake.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("<html>maintenance</html>", "text/html");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(outcome.raw_body, "<html>maintenance</html>");
  EXPECT_THAT(std::string(outcome.assessment.status().message()), Not(HasSubstr("maintenance")));
}

TEST(CurlClickPatrolClientTest, RedirectIsNotFollowed) {
  std::atomic<int> target_hits{0};
  FakeClickPatrol fake;
  fake.server.Get(
      "/", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("/elsewhere"); });
  fake.server.Get("/elsewhere", [&](const httplib::Request&, httplib::Response& res) {
    ++target_hits;
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(outcome.http_status, 302);
  EXPECT_EQ(target_hits.load(), 0);
  ExpectNoSecret(outcome.assessment.status());
}

TEST(CurlClickPatrolClientTest, SequentialRequestsReuseOneConnection) {
  absl::Mutex mu;
  std::set<int> remote_ports;
  int requests = 0;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request& req, httplib::Response& res) {
    absl::MutexLock lock(&mu);
    remote_ports.insert(req.remote_port);
    ++requests;
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  for (int i = 0; i < 20; ++i) {
    const FetchOutcome outcome = FetchAndWait(*client, absl::StrCat("192.0.2.", i), "ua");
    ASSERT_TRUE(outcome.assessment.ok()) << outcome.assessment.status();
  }

  absl::MutexLock lock(&mu);
  EXPECT_EQ(requests, 20);
  EXPECT_EQ(remote_ports.size(), 1u);
}

TEST(CurlClickPatrolClientTest, ConcurrencyIsBounded) {
  absl::Mutex mu;
  int in_flight = 0;
  int max_in_flight = 0;
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    {
      absl::MutexLock lock(&mu);
      max_in_flight = std::max(max_in_flight, ++in_flight);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // simulated latency
    {
      absl::MutexLock lock(&mu);
      --in_flight;
    }
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  CurlClientOptions options = Options(fake);
  options.max_concurrency = 3;
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  constexpr int kRequests = 12;
  absl::BlockingCounter finished(kRequests);
  std::atomic<int> succeeded{0};
  for (int i = 0; i < kRequests; ++i) {
    client->Fetch(absl::StrCat("192.0.2.", i), "", [&](FetchOutcome outcome) {
      if (outcome.assessment.ok()) {
        ++succeeded;
      }
      finished.DecrementCount();
    });
  }
  finished.Wait();

  EXPECT_EQ(succeeded.load(), kRequests);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(max_in_flight, 3);
}

TEST(CurlClickPatrolClientTest, CallbackMayFetchAgain) {
  FakeClickPatrol fake;
  fake.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  auto client = MakeClient(Options(fake));
  ASSERT_NE(client, nullptr);

  absl::Notification second_done;
  client->Fetch("192.0.2.1", "", [&](FetchOutcome first) {
    EXPECT_TRUE(first.assessment.ok());
    client->Fetch("192.0.2.2", "", [&](FetchOutcome second) {
      EXPECT_TRUE(second.assessment.ok());
      second_done.Notify();
    });
  });
  second_done.WaitForNotification();
}

TEST(CurlClickPatrolClientTest, DestructorAnswersQueuedAndActiveRequestsOnce) {
  absl::Notification release;
  std::atomic<int> handled{0};
  FakeClickPatrol fake;
  fake.server.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    ++handled;
    release.WaitForNotificationWithTimeout(absl::Seconds(3));
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  CurlClientOptions options = Options(fake);
  options.max_concurrency = 1;
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  constexpr int kRequests = 10;
  std::vector<std::atomic<int>> calls(kRequests);
  std::vector<absl::Status> statuses(kRequests);
  absl::Mutex mu;
  for (int i = 0; i < kRequests; ++i) {
    client->Fetch(absl::StrCat("192.0.2.", i), "", [&, i](FetchOutcome outcome) {
      ++calls[i];
      absl::MutexLock lock(&mu);
      statuses[i] = outcome.assessment.status();
    });
  }
  client.reset();
  release.Notify();

  EXPECT_LE(handled.load(), 1);
  absl::MutexLock lock(&mu);
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_EQ(calls[i].load(), 1) << i;
    EXPECT_EQ(statuses[i].code(), absl::StatusCode::kUnavailable) << i;
    EXPECT_EQ(statuses[i].message(), "ClickPatrol client shutting down") << i;
  }
}

TEST(CurlClickPatrolClientTest, RejectsBadOptions) {
  CurlClientOptions no_token;
  EXPECT_EQ(NewCurlClickPatrolClient(no_token).status().code(), absl::StatusCode::kInvalidArgument);
  CurlClientOptions no_concurrency;
  no_concurrency.token = kToken;
  no_concurrency.max_concurrency = 0;
  EXPECT_EQ(NewCurlClickPatrolClient(no_concurrency).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CurlClickPatrolClientTest, HttpsToPlainServerFailsWithoutLeakingToken) {
  // Speaking TLS to a plain-HTTP server fails in the handshake: the request never left.
  FakeClickPatrol fake;
  fake.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kVerdictBody, "application/json");
  });
  fake.Start();
  CurlClientOptions options = Options(fake);
  options.base_url = "https" + options.base_url.substr(4);
  auto client = MakeClient(options);
  ASSERT_NE(client, nullptr);

  const FetchOutcome outcome = FetchAndWait(*client, "192.0.2.1", "");

  EXPECT_EQ(outcome.assessment.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(outcome.maybe_sent);
  ExpectNoSecret(outcome.assessment.status());
}

}  // namespace
}  // namespace verdictd
