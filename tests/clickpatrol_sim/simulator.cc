#include "tests/clickpatrol_sim/simulator.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/ip.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace verdictd::sim {
namespace {

constexpr char kJson[] = "application/json";
constexpr char kInvalidToken[] = R"({"error":"invalid token"})";
constexpr char kInvalidIp[] = R"({"error":"invalid ip"})";
constexpr char kExhausted[] = R"({"error":"monthly click allowance exhausted"})";
constexpr char kUnavailable[] = R"({"error":"service unavailable"})";
// How long a `hang` request waits for its client to give up before answering 503 anyway.
constexpr absl::Duration kHangLimit = absl::Seconds(60);
// How often a hanging handler checks whether its client has gone.
constexpr absl::Duration kHangPoll = absl::Milliseconds(50);
constexpr size_t kHugeBodyBytes = 8 * 1024 * 1024;
// Large enough that a burst of connects from a benchmark is not dropped by the kernel (httplib
// listens with a backlog of 5, which makes excess SYNs retry after a second).
constexpr int kListenBacklog = 1024;

constexpr std::pair<FailureMode, absl::string_view> kModeNames[] = {
    {FailureMode::kOk, "ok"},
    {FailureMode::k5xx, "5xx"},
    {FailureMode::kGarbage, "garbage"},
    {FailureMode::kExhausted, "exhausted"},
    {FailureMode::kUnauthorized, "unauthorized"},
    {FailureMode::kHang, "hang"},
    {FailureMode::kReset, "reset"},
    {FailureMode::kHuge, "huge"},
    {FailureMode::kRedirect, "redirect"},
    {FailureMode::kMissingBools, "missing_bools"},
    {FailureMode::kForbidden, "forbidden"},
    {FailureMode::kRateLimited, "rate_limited"},
};

std::string AssessmentJson(const Assessment& a) {
  // Built by hand to keep ClickPatrol's field order (nlohmann::json sorts keys).
  auto b = [](bool v) { return v ? "true" : "false"; };
  return absl::StrCat(R"({"trusted_ai_score":")", ScoreName(a.score), R"(","proxy":)", b(a.proxy),
                      R"(,"tor":)", b(a.tor), R"(,"vpn":)", b(a.vpn), R"(,"crawler":)",
                      b(a.crawler), R"(,"bot":)", b(a.bot), "}");
}

// A well-formed verdict padded to exactly kHugeBodyBytes, built once and shared.
const std::string& HugeBody() {
  static const std::string* body = [] {
    std::string head = R"({"trusted_ai_score":"Safe","proxy":false,"tor":false,"vpn":false,)"
                       R"("crawler":false,"bot":false,"padding":")";
    std::string tail = "\"}";
    auto* s = new std::string(std::move(head));
    s->append(kHugeBodyBytes - s->size() - tail.size(), 'x');
    s->append(tail);
    return s;
  }();
  return *body;
}

void SetJson(httplib::Response& res, int status, std::string body) {
  res.status = status;
  res.set_content(std::move(body), kJson);
}

void SetJsonError(httplib::Response& res, int status, absl::string_view message) {
  SetJson(res, status, nlohmann::json{{"error", std::string(message)}}.dump());
}

// The port of a socket's local or peer address, and its numeric host; false if not TCP/IP.
bool SocketAddress(int fd, bool peer, std::string* host, int* port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                : getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (rc != 0) {
    return false;
  }
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    *port = ntohs(in->sin_port);
    if (host != nullptr) {
      inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    }
  } else if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    *port = ntohs(in6->sin6_port);
    if (host != nullptr) {
      inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    }
  } else {
    return false;
  }
  if (host != nullptr) {
    *host = text;
  }
  return true;
}

// The process's connected sockets whose local port is `local_port`: the connections a server
// on that port accepted. httplib 0.11 exposes neither the sockets nor a way to close idle
// keep-alive connections, so /proc/self/fd is the only handle on them. When `peer_port` >= 0,
// only the connection from (peer_host, peer_port).
std::vector<int> AcceptedSockets(int local_port, absl::string_view peer_host, int peer_port) {
  std::vector<int> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) {
    return fds;
  }
  const int dir_fd = dirfd(dir);
  while (dirent* entry = readdir(dir)) {
    int fd = 0;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == dir_fd) {
      continue;
    }
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
      continue;
    }
    int port = -1;
    if (!SocketAddress(fd, /*peer=*/false, nullptr, &port) || port != local_port) {
      continue;
    }
    std::string host;
    int remote_port = -1;
    if (!SocketAddress(fd, /*peer=*/true, &host, &remote_port)) {
      continue;  // the listening socket
    }
    if (peer_port >= 0 && (remote_port != peer_port || host != peer_host)) {
      continue;
    }
    fds.push_back(fd);
  }
  closedir(dir);
  return fds;
}

bool IsLoopback(const IpAddress& ip) {
  const auto& b = ip.bytes();
  if (ip.is_v4()) {
    return b[12] == 127;
  }
  for (int i = 0; i < 15; ++i) {
    if (b[i] != 0) {
      return false;
    }
  }
  return b[15] == 1;
}

}  // namespace

absl::string_view FailureModeName(FailureMode mode) {
  for (const auto& [m, name] : kModeNames) {
    if (m == mode) {
      return name;
    }
  }
  return "?";
}

absl::StatusOr<FailureMode> ParseFailureMode(absl::string_view name) {
  for (const auto& [m, n] : kModeNames) {
    if (n == name) {
      return m;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown mode '", name,
      "' (want ok, 5xx, garbage, exhausted, unauthorized, hang, reset, huge, redirect, "
      "missing_bools, forbidden or rate_limited)"));
}

absl::StatusOr<Rules> ParseRules(absl::string_view text, absl::string_view source) {
  Rules rules;
  std::map<std::string, int> first_line;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    auto fail = [&](absl::string_view reason) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", line_number, ": ", reason));
    };
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) {
      continue;
    }
    absl::StatusOr<IpAddress> ip = ParseIp(words[0]);
    if (!ip.ok()) {
      return fail(absl::StrCat("invalid ip '", words[0], "'"));
    }
    if (words.size() < 2) {
      return fail("missing SCORE or error=MODE after the ip");
    }
    Rule rule;
    if (absl::ConsumePrefix(&words[1], "error=")) {
      absl::StatusOr<FailureMode> mode = ParseFailureMode(words[1]);
      if (!mode.ok()) {
        return fail(mode.status().message());
      }
      if (*mode == FailureMode::kOk) {
        return fail("error=ok is not a failure; give a SCORE instead");
      }
      if (words.size() > 2) {
        return fail(absl::StrCat("unexpected '", words[2], "' after error=MODE"));
      }
      rule.is_error = true;
      rule.error = *mode;
    } else {
      if (words[1] == "Safe") {
        rule.assessment.score = Score::kSafe;
      } else if (words[1] == "Suspicious") {
        rule.assessment.score = Score::kSuspicious;
      } else if (words[1] == "Fake") {
        rule.assessment.score = Score::kFake;
      } else {
        return fail(absl::StrCat("unknown score '", words[1],
                                 "' (want Safe, Suspicious, Fake or error=MODE)"));
      }
      std::set<absl::string_view> seen;
      for (size_t i = 2; i < words.size(); ++i) {
        absl::string_view flag = words[i];
        bool* field = nullptr;
        if (flag == "proxy") {
          field = &rule.assessment.proxy;
        } else if (flag == "tor") {
          field = &rule.assessment.tor;
        } else if (flag == "vpn") {
          field = &rule.assessment.vpn;
        } else if (flag == "crawler") {
          field = &rule.assessment.crawler;
        } else if (flag == "bot") {
          field = &rule.assessment.bot;
        } else {
          return fail(
              absl::StrCat("unknown flag '", flag, "' (want proxy, tor, vpn, crawler, bot)"));
        }
        if (!seen.insert(flag).second) {
          return fail(absl::StrCat("duplicate flag '", flag, "'"));
        }
        *field = true;
      }
    }
    auto [it, inserted] = first_line.emplace(ip->canonical(), line_number);
    if (!inserted) {
      return fail(absl::StrCat("duplicate rule for ", ip->canonical(), " (first on line ",
                               it->second, ")"));
    }
    rules.emplace(ip->canonical(), rule);
  }
  return rules;
}

absl::StatusOr<Rules> LoadRulesFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path, ": read error"));
  }
  return ParseRules(text.str(), path);
}

uint64_t Fnv1a64(absl::string_view text) {
  uint64_t h = 14695981039346656037ULL;
  for (char c : text) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ULL;
  }
  return h;
}

Assessment SimulatedAssessment(absl::string_view canonical_ip) {
  const uint64_t h = Fnv1a64(canonical_ip);
  Assessment a;
  const uint64_t bucket = h % 100;
  a.score = bucket < 70 ? Score::kSafe : bucket < 90 ? Score::kSuspicious : Score::kFake;
  a.proxy = (h >> 8) % 10 == 0;
  a.tor = (h >> 16) % 50 == 0;
  a.vpn = (h >> 24) % 8 == 0;
  a.crawler = (h >> 32) % 20 == 0;
  a.bot = a.score == Score::kFake && (h >> 40) % 2 == 0;
  return a;
}

// Tracks one `/` request in flight for max_in_flight.
struct ClickPatrolSimulator::RequestGuard {
  explicit RequestGuard(ClickPatrolSimulator* sim) : sim(sim) {
    const int64_t now = sim->in_flight_.fetch_add(1) + 1;
    int64_t max = sim->max_in_flight_.load();
    while (now > max && !sim->max_in_flight_.compare_exchange_weak(max, now)) {
    }
  }
  ~RequestGuard() { sim->in_flight_.fetch_sub(1); }
  ClickPatrolSimulator* sim;
};

ClickPatrolSimulator::ClickPatrolSimulator(SimulatorOptions options)
    : options_(std::move(options)), rules_(std::make_shared<const Rules>(options_.rules)) {
  config_.token = options_.token;
  config_.mode = options_.mode;
  config_.latency = options_.latency;
  config_.allowance = options_.allowance;
}

ClickPatrolSimulator::~ClickPatrolSimulator() { Stop(); }

absl::Status ClickPatrolSimulator::Start() {
  if (started_) {
    return absl::FailedPreconditionError("simulator already started");
  }
  if (options_.port < 0 || options_.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("invalid port ", options_.port));
  }
  if (options_.threads < 1) {
    return absl::InvalidArgumentError("threads must be at least 1");
  }
  std::string host = options_.host == "localhost" ? "127.0.0.1" : options_.host;
  absl::StatusOr<IpAddress> ip = ParseIp(host);
  if (ip.ok()) {
    host = ip->canonical();
    if (!options_.allow_non_loopback && !IsLoopback(*ip)) {
      return absl::PermissionDeniedError(absl::StrCat("refusing to listen on non-loopback address ",
                                                      host, " without allow_non_loopback"));
    }
  } else if (!options_.allow_non_loopback) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen host must be a loopback IP or localhost, got '", host, "'"));
  }
  url_host_ = host.find(':') != std::string::npos ? absl::StrCat("[", host, "]") : host;

  if (options_.tls_cert.empty() != options_.tls_key.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key");
  }
  tls_ = !options_.tls_cert.empty();
  if (tls_) {
    server_ =
        std::make_unique<httplib::SSLServer>(options_.tls_cert.c_str(), options_.tls_key.c_str());
    if (!server_->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot load TLS certificate ", options_.tls_cert, " / key ", options_.tls_key));
    }
  } else {
    server_ = std::make_unique<httplib::Server>();
  }

  // A client that hangs up mid-body (huge, reset) must not kill the process: httplib writes
  // without MSG_NOSIGNAL. Process-wide, but harmless for the test programs that embed this.
  signal(SIGPIPE, SIG_IGN);

  const int threads = options_.threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // Clients reuse connections like a production client would; the real service allows it.
  server_->set_keep_alive_max_count(100000);
  server_->set_keep_alive_timeout(30);
  server_->set_socket_options([this](int fd) {
    // SO_REUSEADDR but not httplib's default SO_REUSEPORT, so a second simulator cannot
    // silently share a fixed port. Accepted sockets inherit TCP_NODELAY, so httplib's
    // separate header and body writes are not held back by Nagle waiting for a delayed ACK.
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    listen_fd_ = fd;
  });
  InstallHandlers();

  if (options_.port == 0) {
    port_ = server_->bind_to_any_port(host);
    if (port_ <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot bind ", url_host_, ":0"));
    }
  } else {
    if (!server_->bind_to_port(host, options_.port)) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind ", url_host_, ":", options_.port, " (in use?)"));
    }
    port_ = options_.port;
  }
  if (listen_fd_ >= 0) {
    // Re-listening only raises the backlog of the already listening socket.
    ::listen(listen_fd_, kListenBacklog);
  }

  started_ = true;
  listener_ = std::thread([this] {
    server_->listen_after_bind();
    listener_done_.Notify();
  });
  // Stop() must not race listen_after_bind(): httplib's stop() is a no-op until it runs.
  while (!server_->is_running() && !listener_done_.HasBeenNotified()) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  return absl::OkStatus();
}

void ClickPatrolSimulator::Stop() {
  if (!started_ || stopped_) {
    return;
  }
  stopped_ = true;
  stopping_.Notify();
  server_->stop();
  // httplib waits for every worker, and a worker idling on a keep-alive connection only
  // notices the stop when its client sends something or the 30 s keep-alive timeout ends.
  // Shutting the accepted sockets down wakes those workers at once; repeat in case a
  // connection was accepted just before the listening socket closed.
  do {
    for (int fd : AcceptedSockets(port_, "", -1)) {
      ::shutdown(fd, SHUT_RDWR);
    }
  } while (!listener_done_.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  listener_.join();
}

std::string ClickPatrolSimulator::base_url() const {
  return absl::StrCat(tls_ ? "https" : "http", "://", url_host_, ":", port_, "/");
}

SimulatorConfig ClickPatrolSimulator::config() const {
  absl::MutexLock lock(&config_mu_);
  return config_;
}

void ClickPatrolSimulator::set_config(const SimulatorConfig& config) {
  absl::MutexLock lock(&config_mu_);
  config_ = config;
}

void ClickPatrolSimulator::set_rules(Rules rules) {
  auto shared = std::make_shared<const Rules>(std::move(rules));
  absl::MutexLock lock(&config_mu_);
  rules_ = std::move(shared);
}

SimulatorStats ClickPatrolSimulator::stats() const {
  SimulatorStats s;
  s.requests = requests_.load();
  s.verdicts = verdicts_.load();
  s.errors = errors_.load();
  s.redirect_follows = redirect_follows_.load();
  s.in_flight = in_flight_.load();
  s.max_in_flight = max_in_flight_.load();
  absl::MutexLock lock(&stats_mu_);
  s.connections = static_cast<int64_t>(connections_.size());
  s.by_ip = by_ip_;
  s.last_user_agent = last_user_agent_;
  s.last_user_http_header = last_user_http_header_;
  s.last_query_keys = last_query_keys_;
  return s;
}

void ClickPatrolSimulator::ResetStats() {
  requests_ = 0;
  verdicts_ = 0;
  errors_ = 0;
  redirect_follows_ = 0;
  // Requests still running keep counting as in flight.
  max_in_flight_ = in_flight_.load();
  absl::MutexLock lock(&stats_mu_);
  by_ip_.clear();
  connections_.clear();
  last_user_agent_.clear();
  last_user_http_header_.clear();
  last_query_keys_.clear();
}

void ClickPatrolSimulator::InstallHandlers() {
  using httplib::Request;
  using httplib::Response;
  server_->Get("/", [this](const Request& req, Response& res) { HandleVerdictRequest(req, res); });
  server_->Get("/redirected",
               [this](const Request& req, Response& res) { HandleRedirected(req, res); });
  server_->Post("/redirected",
                [this](const Request& req, Response& res) { HandleRedirected(req, res); });
  server_->Get("/_sim/stats", [this](const Request& req, Response& res) { HandleStats(req, res); });
  server_->Get("/_sim/config",
               [this](const Request& req, Response& res) { HandleGetConfig(req, res); });
  server_->Post("/_sim/config",
                [this](const Request& req, Response& res) { HandleSetConfig(req, res); });
  server_->Post("/_sim/rules",
                [this](const Request& req, Response& res) { HandleSetRules(req, res); });
  server_->Post("/_sim/reset",
                [this](const Request& req, Response& res) { HandleReset(req, res); });
  // httplib answers 400 to a POST without Content-Length before routing, and `curl -X POST`
  // sends none; a reset needs no body, so take that case before httplib looks for one.
  server_->set_pre_routing_handler([this](const Request& req, Response& res) {
    if (req.method == "POST" && req.path == "/_sim/reset" && !req.has_header("Content-Length") &&
        !req.has_header("Transfer-Encoding")) {
      HandleReset(req, res);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
}

bool ClickPatrolSimulator::TakeVerdict(int64_t allowance) {
  int64_t used = verdicts_.load();
  do {
    if (allowance > 0 && used >= allowance) {
      return false;
    }
  } while (!verdicts_.compare_exchange_weak(used, used + 1));
  return true;
}

void ClickPatrolSimulator::HandleVerdictRequest(const httplib::Request& req,
                                                httplib::Response& res) {
  // Counted first, whatever happens next: ClickPatrol bills every request.
  requests_.fetch_add(1);
  RequestGuard in_flight(this);

  // Query keys in the order sent (httplib's params are a sorted multimap).
  std::vector<std::string> keys;
  if (size_t q = req.target.find('?'); q != std::string::npos) {
    for (absl::string_view part :
         absl::StrSplit(absl::string_view(req.target).substr(q + 1), '&', absl::SkipEmpty())) {
      std::string key(part.substr(0, part.find('=')));
      keys.push_back(httplib::detail::decode_url(key, /*convert_plus_to_space=*/true));
    }
  }
  const std::string token = req.get_param_value("token");
  const bool has_token = req.has_param("token");
  absl::StatusOr<IpAddress> ip = absl::InvalidArgumentError("no ip");
  if (req.has_param("ip")) {
    ip = ParseIp(req.get_param_value("ip"));
  }
  {
    absl::MutexLock lock(&stats_mu_);
    connections_.insert(absl::StrCat(req.remote_addr, " ", req.remote_port));
    if (ip.ok()) {
      ++by_ip_[ip->canonical()];
    }
    last_user_agent_ = req.get_header_value("User-Agent");
    last_user_http_header_ = req.get_param_value("user_http_header");
    last_query_keys_ = std::move(keys);
  }

  SimulatorConfig config;
  std::shared_ptr<const Rules> rules;
  {
    absl::MutexLock lock(&config_mu_);
    config = config_;
    rules = rules_;
  }
  if (config.latency > absl::ZeroDuration()) {
    // Wakes early on shutdown so a long latency cannot hold up exit.
    stopping_.WaitForNotificationWithTimeout(config.latency);
  }

  // Request validation first, so 401/400 behave the same in every mode.
  if (!has_token || token != config.token) {
    errors_.fetch_add(1);
    SetJson(res, 401, kInvalidToken);
    return;
  }
  if (!ip.ok()) {
    errors_.fetch_add(1);
    SetJson(res, 400, kInvalidIp);
    return;
  }
  const Rule* rule = nullptr;
  if (auto it = rules->find(ip->canonical()); it != rules->end()) {
    rule = &it->second;
  }
  // A per-IP error rule is more specific than the global mode.
  FailureMode mode = rule != nullptr && rule->is_error ? rule->error : config.mode;
  if (mode != FailureMode::kOk) {
    errors_.fetch_add(1);
    AnswerFailure(mode, req, res);
    return;
  }
  if (!TakeVerdict(config.allowance)) {
    errors_.fetch_add(1);
    SetJson(res, 402, kExhausted);
    return;
  }
  const Assessment assessment =
      rule != nullptr ? rule->assessment : SimulatedAssessment(ip->canonical());
  SetJson(res, 200, AssessmentJson(assessment));
}

void ClickPatrolSimulator::AnswerFailure(FailureMode mode, const httplib::Request& req,
                                         httplib::Response& res) {
  switch (mode) {
    case FailureMode::kOk:
      break;
    case FailureMode::k5xx:
      SetJson(res, 503, kUnavailable);
      return;
    case FailureMode::kGarbage:
      res.status = 200;
      res.set_content("<html>oops</html>", "text/html");
      return;
    case FailureMode::kExhausted:
      SetJson(res, 402, kExhausted);
      return;
    case FailureMode::kUnauthorized:
      SetJson(res, 401, kInvalidToken);
      return;
    case FailureMode::kHang:
      WaitForClientToGiveUp(req, kHangLimit);
      SetJson(res, 503, kUnavailable);
      return;
    case FailureMode::kReset: {
      // A plausible verdict, cut in half: the headers promise all of it, then returning
      // false from the provider makes httplib drop the connection.
      auto body = std::make_shared<const std::string>(AssessmentJson(Assessment{Score::kSafe}));
      res.status = 200;
      res.set_content_provider(body->size(), kJson,
                               [body](size_t offset, size_t length, httplib::DataSink& sink) {
                                 sink.write(body->data(), body->size() / 2);
                                 return false;
                               });
      return;
    }
    case FailureMode::kHuge: {
      // A content provider rather than set_content: no 8 MiB copy per request, and httplib
      // never gzips a sized provider (it would for a JSON body if the client accepts gzip).
      res.status = 200;
      res.set_content_provider(
          HugeBody().size(), kJson, [](size_t offset, size_t length, httplib::DataSink& sink) {
            const std::string& body = HugeBody();
            return sink.write(body.data() + offset, std::min<size_t>(length, 64 * 1024));
          });
      return;
    }
    case FailureMode::kRedirect:
      res.set_redirect("/redirected", 302);
      return;
    case FailureMode::kMissingBools:
      SetJson(res, 200, R"({"trusted_ai_score":"Safe"})");
      return;
    case FailureMode::kForbidden:
      SetJson(res, 403, R"({"error":"forbidden"})");
      return;
    case FailureMode::kRateLimited:
      SetJson(res, 429, R"({"error":"too many requests"})");
      return;
  }
  SetJson(res, 500, R"({"error":"simulator bug: unhandled mode"})");
}

void ClickPatrolSimulator::WaitForClientToGiveUp(const httplib::Request& req,
                                                 absl::Duration limit) {
  // This handler runs on the connection's own worker thread, so its socket stays open while
  // we poll it; the client giving up shows as a hang-up.
  std::vector<int> fds = AcceptedSockets(port_, req.remote_addr, req.remote_port);
  const int fd = fds.size() == 1 ? fds[0] : -1;
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    if (stopping_.WaitForNotificationWithTimeout(std::min(kHangPoll, deadline - absl::Now()))) {
      return;
    }
    if (fd >= 0) {
      pollfd p{fd, POLLRDHUP, 0};
      if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) {
        return;
      }
    }
  }
}

void ClickPatrolSimulator::HandleRedirected(const httplib::Request& req, httplib::Response& res) {
  redirect_follows_.fetch_add(1);
  // A valid verdict, so a client that wrongly follows the redirect gets an answer it would
  // accept; the redirect_follows counter is what exposes it.
  SetJson(res, 200, AssessmentJson(Assessment{Score::kSafe}));
}

void ClickPatrolSimulator::HandleStats(const httplib::Request& req, httplib::Response& res) {
  const SimulatorStats s = stats();
  nlohmann::json by_ip = nlohmann::json::object();
  for (const auto& [ip, n] : s.by_ip) {
    by_ip[ip] = n;
  }
  nlohmann::json out = {
      {"requests", s.requests},
      {"verdicts", s.verdicts},
      {"errors", s.errors},
      {"redirect_follows", s.redirect_follows},
      {"connections", s.connections},
      {"in_flight", s.in_flight},
      {"max_in_flight", s.max_in_flight},
      {"by_ip", std::move(by_ip)},
      {"last_user_agent", s.last_user_agent},
      {"last_user_http_header", s.last_user_http_header},
      {"last_query_keys", s.last_query_keys},
  };
  // Replace, not throw, on odd bytes in a user agent: this is a diagnostic endpoint.
  SetJson(res, 200, out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

namespace {
nlohmann::json ConfigJson(const SimulatorConfig& c) {
  nlohmann::json latency_ms;
  const double ms = absl::ToDoubleMilliseconds(c.latency);
  if (ms == std::floor(ms)) {
    latency_ms = static_cast<int64_t>(ms);
  } else {
    latency_ms = ms;
  }
  return {{"mode", std::string(FailureModeName(c.mode))},
          {"latency_ms", latency_ms},
          {"allowance", c.allowance}};
}
}  // namespace

void ClickPatrolSimulator::HandleGetConfig(const httplib::Request& req, httplib::Response& res) {
  SetJson(res, 200, ConfigJson(config()).dump());
}

void ClickPatrolSimulator::HandleSetConfig(const httplib::Request& req, httplib::Response& res) {
  const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    SetJsonError(res, 400, "body must be a JSON object");
    return;
  }
  // Validate everything before applying anything, so a bad request changes nothing.
  absl::MutexLock lock(&config_mu_);
  SimulatorConfig next = config_;
  for (const auto& [key, value] : body.items()) {
    if (key == "mode") {
      if (!value.is_string()) {
        SetJsonError(res, 400, "mode must be a string");
        return;
      }
      absl::StatusOr<FailureMode> mode = ParseFailureMode(value.get<std::string>());
      if (!mode.ok()) {
        SetJsonError(res, 400, mode.status().message());
        return;
      }
      next.mode = *mode;
    } else if (key == "latency_ms") {
      // At most an hour: anything longer is a typo, and latency holds a worker thread.
      if (!value.is_number() || !(value.get<double>() >= 0) || value.get<double>() > 3600000) {
        SetJsonError(res, 400, "latency_ms must be a number from 0 to 3600000");
        return;
      }
      next.latency = absl::Microseconds(std::llround(value.get<double>() * 1000));
    } else if (key == "token") {
      // A regenerated token: the old one is refused at once (requests already past the check
      // are not affected). Not echoed back.
      if (!value.is_string() || value.get<std::string>().empty()) {
        SetJsonError(res, 400, "token must be a non-empty string");
        return;
      }
      next.token = value.get<std::string>();
    } else if (key == "allowance") {
      if (!value.is_number_integer() || value.get<int64_t>() < 0) {
        SetJsonError(res, 400, "allowance must be an integer >= 0 (0 = unlimited)");
        return;
      }
      next.allowance = value.get<int64_t>();
    } else {
      SetJsonError(
          res, 400,
          absl::StrCat("unknown key '", key, "' (want mode, latency_ms, allowance, token)"));
      return;
    }
  }
  config_ = next;
  SetJson(res, 200, ConfigJson(next).dump());
}

void ClickPatrolSimulator::HandleSetRules(const httplib::Request& req, httplib::Response& res) {
  absl::StatusOr<Rules> rules = ParseRules(req.body, "rules");
  if (!rules.ok()) {
    SetJsonError(res, 400, rules.status().message());
    return;
  }
  const size_t count = rules->size();
  set_rules(*std::move(rules));
  SetJson(res, 200, nlohmann::json{{"rules", count}}.dump());
}

void ClickPatrolSimulator::HandleReset(const httplib::Request& req, httplib::Response& res) {
  ResetStats();
  SetJson(res, 200, R"({"reset":true})");
}

}  // namespace verdictd::sim
