// verdictd: answers "is this IP real human traffic?" over gRPC from a persistent verdict history,
// asking ClickPatrol (one paid click per request) only for misses.
//
// The only place that reads flags and the environment. The ClickPatrol token comes from
// $CLICKPATROL_TOKEN or --token_file, never from a flag.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/clock.h"
#include "common/duration.h"
#include "common/logging.h"
#include "engine/engine.h"
#include "grpcpp/grpcpp.h"
#include "server/service.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "storage/verdict_store.h"
#include "upstream/clickpatrol_client.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC address to listen on (port 0: any free port)");
ABSL_FLAG(std::string, port_file, "", "Write the bound gRPC port to this file once serving");
ABSL_FLAG(std::string, db, "./verdicts.db", "SQLite file holding the verdict history and ledger");
ABSL_FLAG(bool, db_sync_full, false,
          "SQLite synchronous=FULL: durable against power loss, not only process crashes");
ABSL_FLAG(std::string, upstream_url, "https://trck-003.clckptrl.com/", "ClickPatrol API base URL");
ABSL_FLAG(std::string, upstream_ca_file, "",
          "PEM file of CAs to trust for the upstream's TLS certificate (default: system store)");
ABSL_FLAG(std::string, upstream_connect_timeout, "2s", "Time allowed to connect to ClickPatrol");
ABSL_FLAG(std::string, upstream_timeout, "10s", "Time allowed for one ClickPatrol request");
ABSL_FLAG(int, upstream_concurrency, 32, "Most ClickPatrol requests in flight at once");
ABSL_FLAG(std::string, token_file, "",
          "File holding the ClickPatrol token (else $CLICKPATROL_TOKEN)");
ABSL_FLAG(std::string, max_age, "24h", "How old a stored verdict may be and still be served");
ABSL_FLAG(std::string, max_age_safe, "", "Overrides --max_age for Safe verdicts");
ABSL_FLAG(std::string, max_age_suspicious, "", "Overrides --max_age for Suspicious verdicts");
ABSL_FLAG(std::string, max_age_fake, "", "Overrides --max_age for Fake verdicts");
ABSL_FLAG(std::string, stale_if_error, "7d",
          "Serve a verdict this old as SOURCE_STALE when ClickPatrol fails (0: never)");
ABSL_FLAG(std::string, cache_key, "ip", "What verdicts are remembered by: ip or ip_user_agent");
ABSL_FLAG(bool, allow_non_public, false,
          "Send private, loopback, documentation and other non-public addresses to ClickPatrol");
ABSL_FLAG(int, max_batch, 1000, "Most items in one CheckBatch");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error");

namespace verdictd {
namespace {

struct Settings {
  std::string listen;
  std::string port_file;
  SqliteStoreOptions store;
  CurlClientOptions upstream;
  EngineOptions engine;
  ServiceOptions service;
  std::string token_source;
};

absl::Status Prefix(absl::string_view flag, const absl::Status& status) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", status.message()));
}

absl::StatusOr<absl::Duration> DurationFlag(absl::string_view name, const std::string& value) {
  absl::StatusOr<absl::Duration> d = ParseDuration(value);
  if (!d.ok()) {
    return Prefix(name, d.status());
  }
  return *d;
}

absl::StatusOr<std::optional<absl::Duration>> OptionalDurationFlag(absl::string_view name,
                                                                   const std::string& value) {
  if (value.empty()) {
    return std::nullopt;
  }
  absl::StatusOr<absl::Duration> d = DurationFlag(name, value);
  if (!d.ok()) {
    return d.status();
  }
  return std::optional<absl::Duration>(*d);
}

// The token, from --token_file or $CLICKPATROL_TOKEN. Never logged, never in an error message.
absl::StatusOr<std::string> ReadToken(std::string* source) {
  const std::string file = absl::GetFlag(FLAGS_token_file);
  std::string token;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) {
      return absl::FailedPreconditionError(absl::StrCat("cannot read --token_file ", file));
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    token = std::string(absl::StripAsciiWhitespace(buffer.str()));
    *source = absl::StrCat("file ", file);
  } else if (const char* env = std::getenv("CLICKPATROL_TOKEN"); env != nullptr) {
    token = std::string(absl::StripAsciiWhitespace(env));
    *source = "environment variable CLICKPATROL_TOKEN";
  }
  if (token.empty()) {
    return absl::FailedPreconditionError(
        "no ClickPatrol token: set the CLICKPATROL_TOKEN environment variable or "
        "--token_file=PATH (the token is a secret and is never accepted as a flag). "
        "To try verdictd without a token, run ./scripts/run.sh, which starts the simulated "
        "ClickPatrol");
  }
  for (char c : token) {
    if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) {
      return absl::FailedPreconditionError(
          absl::StrCat("the ClickPatrol token from the ", *source,
                       " contains whitespace or control characters"));
    }
  }
  return token;
}

absl::StatusOr<Settings> LoadSettings() {
  Settings s;
  s.listen = absl::GetFlag(FLAGS_listen);
  s.port_file = absl::GetFlag(FLAGS_port_file);

  s.store.path = absl::GetFlag(FLAGS_db);
  if (s.store.path.empty()) {
    return absl::InvalidArgumentError("--db must name a file");
  }
  s.store.synchronous_full = absl::GetFlag(FLAGS_db_sync_full);

  s.upstream.base_url = absl::GetFlag(FLAGS_upstream_url);
  if (!absl::StartsWith(s.upstream.base_url, "https://") &&
      !absl::StartsWith(s.upstream.base_url, "http://")) {
    return absl::InvalidArgumentError("--upstream_url must start with https:// or http://");
  }
  s.upstream.ca_file = absl::GetFlag(FLAGS_upstream_ca_file);
  absl::StatusOr<absl::Duration> d =
      DurationFlag("upstream_connect_timeout", absl::GetFlag(FLAGS_upstream_connect_timeout));
  if (!d.ok()) return d.status();
  s.upstream.connect_timeout = *d;
  d = DurationFlag("upstream_timeout", absl::GetFlag(FLAGS_upstream_timeout));
  if (!d.ok()) return d.status();
  s.upstream.request_timeout = *d;
  if (s.upstream.connect_timeout <= absl::ZeroDuration() ||
      s.upstream.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("upstream timeouts must be positive");
  }
  s.upstream.max_concurrency = absl::GetFlag(FLAGS_upstream_concurrency);
  if (s.upstream.max_concurrency < 1 || s.upstream.max_concurrency > 1024) {
    return absl::InvalidArgumentError("--upstream_concurrency must be between 1 and 1024");
  }

  FreshnessPolicy& f = s.engine.freshness;
  d = DurationFlag("max_age", absl::GetFlag(FLAGS_max_age));
  if (!d.ok()) return d.status();
  f.default_max_age = *d;
  absl::StatusOr<std::optional<absl::Duration>> o =
      OptionalDurationFlag("max_age_safe", absl::GetFlag(FLAGS_max_age_safe));
  if (!o.ok()) return o.status();
  f.max_age_safe = *o;
  o = OptionalDurationFlag("max_age_suspicious", absl::GetFlag(FLAGS_max_age_suspicious));
  if (!o.ok()) return o.status();
  f.max_age_suspicious = *o;
  o = OptionalDurationFlag("max_age_fake", absl::GetFlag(FLAGS_max_age_fake));
  if (!o.ok()) return o.status();
  f.max_age_fake = *o;
  d = DurationFlag("stale_if_error", absl::GetFlag(FLAGS_stale_if_error));
  if (!d.ok()) return d.status();
  f.stale_if_error = *d;

  const std::string cache_key = absl::GetFlag(FLAGS_cache_key);
  if (cache_key == "ip") {
    s.engine.cache_key = CacheKeyMode::kIp;
  } else if (cache_key == "ip_user_agent") {
    s.engine.cache_key = CacheKeyMode::kIpUserAgent;
  } else {
    return absl::InvalidArgumentError("--cache_key must be ip or ip_user_agent");
  }
  s.engine.allow_non_public = absl::GetFlag(FLAGS_allow_non_public);

  s.service.max_batch = absl::GetFlag(FLAGS_max_batch);
  if (s.service.max_batch < 1 || s.service.max_batch > 100'000) {
    return absl::InvalidArgumentError("--max_batch must be between 1 and 100000");
  }

  absl::StatusOr<std::string> token = ReadToken(&s.token_source);
  if (!token.ok()) return token.status();
  s.upstream.token = *std::move(token);
  return s;
}

bool IsLoopbackUrl(absl::string_view url) {
  if (!absl::ConsumePrefix(&url, "http://")) {
    absl::ConsumePrefix(&url, "https://");
  }
  return absl::StartsWith(url, "127.") || absl::StartsWith(url, "localhost") ||
         absl::StartsWith(url, "[::1]");
}

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out) {
      return absl::InternalError(absl::StrCat("cannot write --port_file ", path));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot write --port_file ", path));
  }
  return absl::OkStatus();
}

void LogConfiguration(const Settings& s) {
  const FreshnessPolicy& f = s.engine.freshness;
  auto opt = [](const std::optional<absl::Duration>& d) {
    return d.has_value() ? DurationToString(*d) : std::string("(--max_age)");
  };
  spdlog::info(
      "configuration: db={} upstream_url={} token=<redacted, from {}> upstream_concurrency={} "
      "upstream_connect_timeout={} upstream_timeout={} max_age={} max_age_safe={} "
      "max_age_suspicious={} max_age_fake={} stale_if_error={} cache_key={} "
      "allow_non_public={} max_batch={} db_sync_full={}",
      s.store.path, s.upstream.base_url, s.token_source, s.upstream.max_concurrency,
      DurationToString(s.upstream.connect_timeout), DurationToString(s.upstream.request_timeout),
      DurationToString(f.default_max_age), opt(f.max_age_safe), opt(f.max_age_suspicious),
      opt(f.max_age_fake), DurationToString(f.stale_if_error),
      s.engine.cache_key == CacheKeyMode::kIp ? "ip" : "ip_user_agent", s.engine.allow_non_public,
      s.service.max_batch, s.store.synchronous_full);
}

int Run() {
  absl::StatusOr<Settings> settings = LoadSettings();
  if (!settings.ok()) {
    spdlog::critical("verdictd cannot start: {}", settings.status().message());
    return 2;
  }
  Settings& s = *settings;
  LogConfiguration(s);
  if (IsLoopbackUrl(s.upstream.base_url)) {
    spdlog::warn("*************************************************************************");
    spdlog::warn("*  UPSTREAM IS ON LOOPBACK ({}): this is the SIMULATED ClickPatrol,",
                 s.upstream.base_url);
    spdlog::warn("*  not the real service. Verdicts are made up; no real clicks are spent.");
    spdlog::warn("*************************************************************************");
  }

  absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenSqliteStore(s.store);
  if (!store.ok()) {
    spdlog::critical("verdictd cannot start: {}", store.status().message());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<ClickPatrolClient>> client = NewCurlClickPatrolClient(s.upstream);
  if (!client.ok()) {
    spdlog::critical("verdictd cannot start: {}", client.status().message());
    return 1;
  }
  auto engine = std::make_unique<Engine>(s.engine, **store, **client, *Clock::Real());
  VerdictServiceImpl service(s.service, *engine);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(s.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    spdlog::critical("verdictd cannot start: cannot listen on {}", s.listen);
    return 1;
  }
  spdlog::info("verdictd listening on {} (port {})", s.listen, port);
  if (!s.port_file.empty()) {
    if (absl::Status st = WritePortFile(s.port_file, port); !st.ok()) {
      spdlog::critical("{}", st.message());
      return 1;
    }
  }

  // Signals were blocked in main() before any thread started, so only this sigwait sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("received signal {}, shutting down", signal_number);

  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
  server->Wait();
  spdlog::debug("gRPC server stopped");
  engine.reset();
  client->reset();
  spdlog::debug("upstream client stopped");
  store->reset();
  spdlog::info("verdictd stopped");
  return 0;
}

}  // namespace
}  // namespace verdictd

int main(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::SetProgramUsageMessage(
      "verdictd [flags]\n"
      "The ClickPatrol token comes from $CLICKPATROL_TOKEN or --token_file, never a flag.");
  absl::ParseCommandLine(argc, argv);
  spdlog::set_default_logger(spdlog::stderr_logger_mt("verdictd"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ %v", spdlog::pattern_time_type::utc);
  const std::string level = absl::GetFlag(FLAGS_log_level);
  if (level != "trace" && level != "debug" && level != "info" && level != "warn" &&
      level != "error") {
    spdlog::critical(
        "verdictd cannot start: --log_level must be trace, debug, info, warn or error");
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(level));
  return verdictd::Run();
}
