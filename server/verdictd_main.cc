// verdictd: answers "is this IP real human traffic?" over gRPC from a persistent verdict history,
// asking ClickPatrol (one paid click per request) only for misses.
//
// The only place that reads flags and the environment. The ClickPatrol token comes from
// $CLICKPATROL_TOKEN or --token_file, never from a flag; so does a PostgreSQL password
// (--db_password_file, or libpq's own PGPASSWORD / PGPASSFILE / ~/.pgpass).

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/duration.h"
#include "common/logging.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "server/config_file.h"
#include "server/engine/engine.h"
#include "server/engine/scheduler.h"
#include "server/log_setup.h"
#include "server/metrics/metrics.h"
#include "server/metrics/metrics_http.h"
#include "server/service/server_metrics.h"
#include "server/service/service.h"
#include "server/service/timed_store.h"
#include "server/upstream/clickpatrol_client.h"
#include "server/upstream/curl_client.h"
#include "storage/postgres/postgres_store.h"
#include "storage/sqlite/sqlite_store.h"
#include "storage/verdict_store.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC address to listen on (port 0: any free port)");
ABSL_FLAG(std::string, port_file, "", "Write the bound gRPC port to this file once serving");
ABSL_FLAG(std::string, max_connection_idle, "5m",
          "Close a gRPC connection that has had no call in flight for this long (a GOAWAY: "
          "clients reconnect on their next call), so idle or abandoned connections do not hold "
          "file descriptors and memory for ever. gRPC checks once per period, so the close comes "
          "between one and two periods after the last call (0: never)");
ABSL_FLAG(std::string, handshake_timeout, "10s",
          "Close a gRPC connection that has not finished its TLS handshake and sent the HTTP/2 "
          "preface and SETTINGS within this long after connecting (gRPC's own default is 2m)");
ABSL_FLAG(int, max_concurrent_streams, 100,
          "Most calls in flight at once on one gRPC connection (HTTP/2 "
          "SETTINGS_MAX_CONCURRENT_STREAMS); a client's further calls wait in its own queue");
ABSL_FLAG(std::string, db, "./verdicts.db",
          "Where the verdict history and ledger live: a SQLite file path, or a PostgreSQL "
          "libpq URI (postgresql://USER@HOST:PORT/DBNAME or postgres://..., query parameters "
          "such as ?host=/run/postgresql allowed) that several replicas can share. A URI must "
          "not carry a password: use --db_password_file, PGPASSWORD or PGPASSFILE");
ABSL_FLAG(std::string, db_password_file, "",
          "PostgreSQL only: file holding the database password (one trailing newline is "
          "stripped; keep it mode 0600). Unset: libpq looks for one itself (PGPASSWORD, "
          "PGPASSFILE, ~/.pgpass)");
ABSL_FLAG(std::string, db_connect_wait, "30s",
          "PostgreSQL only: how long start-up keeps retrying (about once a second, logging a "
          "failure at most every 5s) while the database server cannot be reached, before "
          "exiting with an error (status 1); 0: one attempt. Every failure to connect counts as "
          "unreachable (also a refused password: each failure's reason is logged); other "
          "errors, such as a schema from a newer build, fail at once");
ABSL_FLAG(std::string, replica_id, "",
          "This process's name in single-flight claims and leases in a shared database, for "
          "operators (default: HOSTNAME:PID:4 random hex digits, unique per start)");
ABSL_FLAG(std::string, flight_lease, "",
          "How long a single-flight claim holds before another replica may take it over "
          "(presuming this one dead). Must exceed the longest upstream request with its "
          "retries; default and minimum: (--upstream_connect_timeout + --upstream_timeout) x "
          "--upstream_attempts + the retry backoffs + 5s");
ABSL_FLAG(bool, db_sync_full, false,
          "SQLite only: synchronous=FULL, durable against power loss, not only process crashes");
ABSL_FLAG(std::string, db_busy_timeout, "5s",
          "SQLite only: how long a write waits for another process's lock on the database "
          "before failing");
ABSL_FLAG(std::string, upstream_url, "https://trck-003.clckptrl.com/", "ClickPatrol API base URL");
ABSL_FLAG(std::string, upstream_ca_file, "",
          "PEM file of CAs to trust for the upstream's TLS certificate (default: system store)");
ABSL_FLAG(std::string, upstream_connect_timeout, "2s", "Time allowed to connect to ClickPatrol");
ABSL_FLAG(std::string, upstream_timeout, "10s", "Time allowed for one ClickPatrol request");
ABSL_FLAG(int, upstream_concurrency, 32, "Most ClickPatrol requests in flight at once");
ABSL_FLAG(int64_t, max_queued_misses, 10000,
          "Most misses waiting for a free upstream slot; a miss beyond it fails fast with "
          "RESOURCE_EXHAUSTED and costs nothing (0: no limit)");
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
ABSL_FLAG(int64_t, hot_cache_entries, 100000,
          "Newest verdicts kept in memory in front of SQLite (0: off; ~300 bytes each)");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error");
ABSL_FLAG(std::string, log_format, "text", "text, or json (one object per line)");
ABSL_FLAG(std::string, config, "",
          "JSON file of flag values (keys are flag names); flags on the command line override it");
ABSL_FLAG(std::string, api_keys_file, "",
          "Callers and SHA-256 hashes of their API keys (see README); unset: open mode");
ABSL_FLAG(int64_t, monthly_allowance, 0, "The ClickPatrol plan's clicks per period (0: unknown)");
ABSL_FLAG(int, allowance_reset_day, 1, "Day of the month (1-28, UTC) the allowance resets");
ABSL_FLAG(std::string, history_retention, "400d",
          "Prune verdict history and ledger rows older than this (0: keep forever)");
ABSL_FLAG(int, breaker_failures, 5,
          "Consecutive ClickPatrol failures that open the circuit breaker (0: never)");
ABSL_FLAG(std::string, breaker_open_for, "30s", "How long the breaker stays open before a probe");
ABSL_FLAG(int, upstream_attempts, 3,
          "Attempts per miss when the request provably never left (connect/DNS/TLS failure)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain for gRPC TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for gRPC TLS");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require and verify client certificates (mutual TLS)");
ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9464); off if unset");
ABSL_FLAG(std::string, shutdown_grace, "10s",
          "On SIGTERM/SIGINT, how long in-flight calls may take to finish before they are "
          "cancelled; the process still waits (up to --upstream_timeout) for ClickPatrol "
          "requests already sent, so their paid verdicts are recorded");

namespace verdictd {
namespace {

struct Settings {
  std::string listen;
  std::string port_file;
  bool postgres = false;  // --db is a PostgreSQL URI: `pg` applies, else `store`
  SqliteStoreOptions store;
  PostgresStoreOptions pg;
  std::string db_password_source;  // where the PostgreSQL password comes from, for the log
  absl::Duration db_connect_wait;
  CurlClientOptions upstream;
  EngineOptions engine;
  ServiceOptions service;
  std::string token_source;
  std::string api_keys_file;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::string metrics_listen;
  absl::Duration shutdown_grace;
  absl::Duration max_connection_idle;  // zero: never
  absl::Duration handshake_timeout;
  int max_concurrent_streams = 0;
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

// The PostgreSQL password from --db_password_file: the file's contents without one trailing
// newline ("\n" or "\r\n"; anything else is part of the password). Never logged, never in an
// error message. A file others may read is used (as --token_file is) but warned about.
absl::StatusOr<std::string> ReadDbPassword(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read --db_password_file ", file));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string password = buffer.str();
  if (absl::EndsWith(password, "\n")) {
    password.pop_back();
    if (absl::EndsWith(password, "\r")) {
      password.pop_back();
    }
  }
  if (password.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("--db_password_file ", file, " is empty"));
  }
  if (password.find('\n') != std::string::npos || password.find('\0') != std::string::npos) {
    // libpq would cut the password at a NUL; a second line is almost surely a mistake.
    return absl::FailedPreconditionError(
        absl::StrCat("--db_password_file ", file, " holds more than one line (or a NUL byte)"));
  }
  struct stat st;
  if (stat(file.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    spdlog::warn("--db_password_file {} can be read by others (mode {:o}): chmod 600 it", file,
                 st.st_mode & 0777);
  }
  return password;
}

// HOSTNAME:PID:XXXX, unique per start even when a container's hostname and pid repeat.
std::string DefaultReplicaId() {
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    std::snprintf(host, sizeof(host), "unknown-host");
  }
  std::random_device random;
  return absl::StrFormat("%s:%d:%04x", host, static_cast<int>(getpid()), random() & 0xffff);
}

// The shortest claim lease that outlasts one miss's whole upstream exchange: every attempt may
// take its connect timeout plus its request timeout, and between attempts the engine waits
// retry_backoff, doubling each time. 5 s on top covers the store's commits either side of the
// request and scheduling delays. A lease shorter than this would let another replica presume a
// live owner dead and pay for the same IP twice.
absl::Duration MinimumFlightLease(const CurlClientOptions& upstream, const EngineOptions& engine) {
  absl::Duration backoffs;
  for (int retry = 1; retry < engine.max_attempts; ++retry) {
    backoffs += engine.retry_backoff * (1 << (retry - 1));
  }
  return (upstream.connect_timeout + upstream.request_timeout) * engine.max_attempts + backoffs +
         absl::Seconds(5);
}

absl::Status LoadDbSettings(Settings& s) {
  const std::string db = absl::GetFlag(FLAGS_db);
  if (db.empty()) {
    return absl::InvalidArgumentError("--db must name a SQLite file or a PostgreSQL URI");
  }
  const std::string password_file = absl::GetFlag(FLAGS_db_password_file);
  absl::StatusOr<absl::Duration> wait =
      DurationFlag("db_connect_wait", absl::GetFlag(FLAGS_db_connect_wait));
  if (!wait.ok()) return wait.status();
  if (*wait < absl::ZeroDuration() || *wait > absl::Hours(24)) {
    return absl::InvalidArgumentError("--db_connect_wait must be between 0 and 24h");
  }
  s.db_connect_wait = *wait;
  absl::StatusOr<absl::Duration> busy =
      DurationFlag("db_busy_timeout", absl::GetFlag(FLAGS_db_busy_timeout));
  if (!busy.ok()) return busy.status();

  s.postgres = IsPostgresUri(db);
  if (!s.postgres) {
    if (!password_file.empty()) {
      return absl::InvalidArgumentError(
          "--db_password_file applies only when --db is a PostgreSQL URI (postgresql://...)");
    }
    s.store.path = db;
    s.store.synchronous_full = absl::GetFlag(FLAGS_db_sync_full);
    s.store.busy_timeout = *busy;
    return absl::OkStatus();
  }
  // The message says where a password goes instead, and never repeats the URI's.
  if (absl::Status uri = CheckPostgresUri(db); !uri.ok()) {
    return Prefix("db", uri);
  }
  s.pg.uri = db;
  if (!password_file.empty()) {
    absl::StatusOr<std::string> password = ReadDbPassword(password_file);
    if (!password.ok()) return password.status();
    s.pg.password = *std::move(password);
    s.db_password_source = absl::StrCat("file ", password_file);
  } else if (std::getenv("PGPASSWORD") != nullptr) {
    s.db_password_source = "environment variable PGPASSWORD";
  } else if (const char* passfile = std::getenv("PGPASSFILE"); passfile != nullptr) {
    s.db_password_source = absl::StrCat("PGPASSFILE ", passfile);
  } else {
    s.db_password_source = "libpq's default (~/.pgpass, or none)";
  }
  // Each connection attempt gives up within this, so the whole wait stays near
  // --db_connect_wait; libpq counts whole seconds, and takes less than 2 as 2.
  s.pg.connect_timeout =
      std::clamp(absl::Ceil(*wait, absl::Seconds(1)), absl::Seconds(2), absl::Seconds(5));
  if (absl::GetFlag(FLAGS_db_sync_full)) {
    spdlog::warn(
        "--db_sync_full is a SQLite setting: ignored for PostgreSQL (the server's "
        "synchronous_commit decides)");
  }
  return absl::OkStatus();
}

// --replica_id and --flight_lease; after the upstream flags, which the lease must outlast.
absl::Status LoadFlightSettings(Settings& s) {
  std::string replica_id = absl::GetFlag(FLAGS_replica_id);
  if (replica_id.empty()) {
    replica_id = DefaultReplicaId();
  }
  if (replica_id.size() > 200) {
    return absl::InvalidArgumentError("--replica_id must be at most 200 bytes");
  }
  for (char c : replica_id) {
    if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          "--replica_id must be printable ASCII without spaces or control characters");
    }
  }
  s.engine.replica_id = std::move(replica_id);

  const absl::Duration minimum = MinimumFlightLease(s.upstream, s.engine);
  absl::StatusOr<std::optional<absl::Duration>> lease =
      OptionalDurationFlag("flight_lease", absl::GetFlag(FLAGS_flight_lease));
  if (!lease.ok()) return lease.status();
  if (!lease->has_value()) {
    s.engine.flight_lease = minimum;
  } else if (**lease <= minimum) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--flight_lease ", DurationToString(**lease), " must be above ", DurationToString(minimum),
        ", the longest upstream exchange ((--upstream_connect_timeout + --upstream_timeout) x "
        "--upstream_attempts + retry backoffs + 5s): a shorter lease lets another replica pay "
        "for the same IP while this one is still waiting for ClickPatrol"));
  } else {
    s.engine.flight_lease = **lease;
  }
  return absl::OkStatus();
}

absl::StatusOr<Settings> LoadSettings() {
  Settings s;
  s.listen = absl::GetFlag(FLAGS_listen);
  s.port_file = absl::GetFlag(FLAGS_port_file);

  if (absl::Status db = LoadDbSettings(s); !db.ok()) {
    return db;
  }

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
  // Misses beyond the limit wait in the engine, before their ledger row (see EngineOptions).
  s.engine.max_upstream_in_flight = s.upstream.max_concurrency;
  const int64_t max_queued = absl::GetFlag(FLAGS_max_queued_misses);
  if (max_queued < 0 || max_queued > 10'000'000) {
    return absl::InvalidArgumentError("--max_queued_misses must be between 0 and 10000000");
  }
  s.engine.max_queued_misses = static_cast<size_t>(max_queued);

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
  const int64_t hot_cache_entries = absl::GetFlag(FLAGS_hot_cache_entries);
  if (hot_cache_entries < 0 || hot_cache_entries > 100'000'000) {
    return absl::InvalidArgumentError("--hot_cache_entries must be between 0 and 100000000");
  }
  s.engine.hot_cache_entries = static_cast<size_t>(hot_cache_entries);

  s.service.cache_key_name = cache_key;
  s.engine.allowance.monthly_allowance = absl::GetFlag(FLAGS_monthly_allowance);
  if (s.engine.allowance.monthly_allowance < 0) {
    return absl::InvalidArgumentError("--monthly_allowance must not be negative");
  }
  s.engine.allowance.reset_day = absl::GetFlag(FLAGS_allowance_reset_day);
  if (s.engine.allowance.reset_day < 1 || s.engine.allowance.reset_day > 28) {
    return absl::InvalidArgumentError("--allowance_reset_day must be between 1 and 28");
  }
  d = DurationFlag("history_retention", absl::GetFlag(FLAGS_history_retention));
  if (!d.ok()) return d.status();
  s.engine.history_retention = *d;
  s.engine.breaker.failure_threshold = absl::GetFlag(FLAGS_breaker_failures);
  if (s.engine.breaker.failure_threshold < 0) {
    return absl::InvalidArgumentError("--breaker_failures must not be negative");
  }
  d = DurationFlag("breaker_open_for", absl::GetFlag(FLAGS_breaker_open_for));
  if (!d.ok()) return d.status();
  s.engine.breaker.open_for = *d;
  s.engine.max_attempts = absl::GetFlag(FLAGS_upstream_attempts);
  if (s.engine.max_attempts < 1 || s.engine.max_attempts > 10) {
    return absl::InvalidArgumentError("--upstream_attempts must be between 1 and 10");
  }
  if (absl::Status flights = LoadFlightSettings(s); !flights.ok()) {
    return flights;
  }
  s.api_keys_file = absl::GetFlag(FLAGS_api_keys_file);
  s.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  s.tls_key = absl::GetFlag(FLAGS_tls_key);
  s.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (s.tls_cert.empty() != s.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key must be given together");
  }
  if (!s.tls_client_ca.empty() && s.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  s.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  d = DurationFlag("shutdown_grace", absl::GetFlag(FLAGS_shutdown_grace));
  if (!d.ok()) return d.status();
  s.shutdown_grace = *d;
  // gRPC takes these in milliseconds, as an int: at most 2^31-1 ms, a little over 24 days.
  constexpr absl::Duration kMaxChannelArgDuration = absl::Hours(24 * 24);
  d = DurationFlag("max_connection_idle", absl::GetFlag(FLAGS_max_connection_idle));
  if (!d.ok()) return d.status();
  s.max_connection_idle = *d;
  if (s.max_connection_idle > kMaxChannelArgDuration ||
      (s.max_connection_idle > absl::ZeroDuration() &&
       s.max_connection_idle < absl::Milliseconds(1))) {
    return absl::InvalidArgumentError("--max_connection_idle must be 0 (never) or 1ms to 24d");
  }
  d = DurationFlag("handshake_timeout", absl::GetFlag(FLAGS_handshake_timeout));
  if (!d.ok()) return d.status();
  s.handshake_timeout = *d;
  if (s.handshake_timeout < absl::Milliseconds(1) || s.handshake_timeout > kMaxChannelArgDuration) {
    return absl::InvalidArgumentError("--handshake_timeout must be between 1ms and 24d");
  }
  s.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  if (s.max_concurrent_streams < 1 || s.max_concurrent_streams > 1'000'000) {
    return absl::InvalidArgumentError("--max_concurrent_streams must be between 1 and 1000000");
  }

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
      "configuration: listen={} db={} upstream_url={} token=<redacted, from {}> "
      "upstream_concurrency={} max_queued_misses={} upstream_connect_timeout={} "
      "upstream_timeout={} "
      "upstream_attempts={} max_age={} max_age_safe={} max_age_suspicious={} max_age_fake={} "
      "stale_if_error={} cache_key={} allow_non_public={} max_batch={} db_sync_full={} "
      "api_keys_file={} monthly_allowance={} allowance_reset_day={} history_retention={} "
      "breaker_failures={} breaker_open_for={} tls={} mtls={} metrics_listen={} "
      "shutdown_grace={} max_connection_idle={} handshake_timeout={} max_concurrent_streams={} "
      "replica_id={} flight_lease={}",
      // A URI carrying a password was refused by LoadSettings, so the URI is safe to show.
      s.listen, s.postgres ? s.pg.uri : s.store.path, s.upstream.base_url, s.token_source,
      s.upstream.max_concurrency, s.engine.max_queued_misses,
      DurationToString(s.upstream.connect_timeout), DurationToString(s.upstream.request_timeout),
      s.engine.max_attempts, DurationToString(f.default_max_age), opt(f.max_age_safe),
      opt(f.max_age_suspicious), opt(f.max_age_fake), DurationToString(f.stale_if_error),
      s.service.cache_key_name, s.engine.allow_non_public, s.service.max_batch,
      s.store.synchronous_full, s.api_keys_file.empty() ? "(open mode)" : s.api_keys_file,
      s.engine.allowance.monthly_allowance, s.engine.allowance.reset_day,
      DurationToString(s.engine.history_retention), s.engine.breaker.failure_threshold,
      DurationToString(s.engine.breaker.open_for), !s.tls_cert.empty(), !s.tls_client_ca.empty(),
      s.metrics_listen.empty() ? "(off)" : s.metrics_listen, DurationToString(s.shutdown_grace),
      s.max_connection_idle == absl::ZeroDuration() ? std::string("0 (never)")
                                                    : DurationToString(s.max_connection_idle),
      DurationToString(s.handshake_timeout), s.max_concurrent_streams, s.engine.replica_id,
      DurationToString(s.engine.flight_lease));
  if (s.postgres) {
    spdlog::info("database: PostgreSQL, password=<redacted, from {}> db_connect_wait={}",
                 s.db_password_source, DurationToString(s.db_connect_wait));
  }
}

// `message` with every occurrence of `secret` replaced. The store promises never to repeat the
// password; this is a second lock on that door, for messages that come from libpq.
std::string Redacted(absl::string_view message, const std::string& secret) {
  if (secret.empty()) {
    return std::string(message);
  }
  return absl::StrReplaceAll(message, {{secret, "<redacted>"}});
}

// Opens the PostgreSQL store, waiting up to s.db_connect_wait for a server that cannot be
// reached yet (one starting alongside verdictd, or restarting): UNAVAILABLE attempts are retried
// about once a second and logged at most every 5 s. The store reports every failed connection
// as UNAVAILABLE (libpq does not tell a server that is down from one refusing the password), so
// those are retried too, their reason in the log; any other failure (a schema from a newer
// build) is final at once, since waiting would not change it.
// SIGTERM/SIGINT end the wait (nullptr and OK: stop quietly).
absl::StatusOr<std::unique_ptr<VerdictStore>> OpenPostgresWithWait(const Settings& s,
                                                                   const sigset_t& signals) {
  const absl::Time start = absl::Now();
  const absl::Time give_up = start + s.db_connect_wait;
  absl::Time next_log = absl::InfinitePast();
  int attempts = 0;
  while (true) {
    ++attempts;
    absl::StatusOr<std::unique_ptr<VerdictStore>> store = OpenPostgresStore(s.pg);
    if (store.ok()) {
      if (attempts > 1) {
        spdlog::info("connected to PostgreSQL after {} attempts ({})", attempts,
                     DurationToString(absl::Trunc(absl::Now() - start, absl::Milliseconds(1))));
      }
      return store;
    }
    const std::string error = Redacted(store.status().message(), s.pg.password);
    if (!absl::IsUnavailable(store.status())) {
      return absl::Status(store.status().code(), error);
    }
    const absl::Time now = absl::Now();
    if (now >= give_up) {
      return absl::UnavailableError(absl::StrCat(
          "gave up connecting to PostgreSQL (", attempts, " attempt", attempts == 1 ? "" : "s",
          " over ", DurationToString(absl::Trunc(now - start, absl::Seconds(1))),
          ", --db_connect_wait=", DurationToString(s.db_connect_wait), "): ", error));
    }
    if (now >= next_log) {
      spdlog::warn("cannot connect to PostgreSQL yet, retrying for up to {} more: {}",
                   DurationToString(absl::Trunc(give_up - now, absl::Seconds(1))), error);
      next_log = now + absl::Seconds(5);
    }
    // The pause is a wait for the stop signals, so that an orchestrator giving up on a replica
    // that cannot reach its database is obeyed at once rather than after the whole wait.
    const absl::Duration pause = std::min(absl::Seconds(1), give_up - now);
    const timespec timeout = absl::ToTimespec(pause);
    const int signal_number = sigtimedwait(&signals, nullptr, &timeout);
    if (signal_number > 0) {
      spdlog::info("received signal {} while waiting for PostgreSQL: stopping", signal_number);
      return std::unique_ptr<VerdictStore>();
    }
  }
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read --", flag, " ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The gRPC TLS files, served through grpc's FileWatcherCertificateProvider from copies in a
// private directory (mode 0700, under $TMPDIR) that only verdictd writes: Load checks the
// configured files (PEM parses, the key matches the certificate, the CA bundle has a
// certificate) and only then renames fresh copies into place, so the watcher never sees a file
// that does not load. The watcher looks once a second; existing connections keep their
// session, new handshakes get the new files.
class TlsFiles {
 public:
  static constexpr unsigned kRefreshSeconds = 1;

  ~TlsFiles() {
    for (const std::string& file : {Key(), Cert(), Ca()}) {
      std::remove(file.c_str());
    }
    if (!dir_.empty()) {
      rmdir(dir_.c_str());
    }
  }

  absl::Status Init() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        absl::StrCat(tmp != nullptr && tmp[0] != '\0' ? tmp : "/tmp", "/verdictd-tls-XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot make a private directory for the TLS files: ", pattern));
    }
    dir_ = pattern;
    return absl::OkStatus();
  }

  // The configured files, read and checked (nothing is written yet).
  struct Files {
    std::string cert, key, ca;
    Sha256 digest{};
  };
  absl::StatusOr<Files> Read(const Settings& s) const {
    Files files;
    absl::StatusOr<std::string> cert = ReadSmallFile(s.tls_cert, "tls_cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadSmallFile(s.tls_key, "tls_key");
    if (!key.ok()) return key.status();
    files.cert = *std::move(cert);
    files.key = *std::move(key);
    if (!s.tls_client_ca.empty()) {
      absl::StatusOr<std::string> ca = ReadSmallFile(s.tls_client_ca, "tls_client_ca");
      if (!ca.ok()) return ca.status();
      files.ca = *std::move(ca);
    }
    if (absl::Status st = Check(s, files.cert, files.key, files.ca); !st.ok()) return st;
    files.digest = HashApiKey(absl::StrCat(files.cert, "\n--\n", files.key, "\n--\n", files.ca));
    return files;
  }

  bool Differs(const Files& files) const { return files.digest != digest_; }

  // Puts copies of `files` where the watcher reads them (the key first: the watcher reads the
  // key, then the certificate, and grpc keeps the old pair, trying again a second later, when
  // the two it read do not match).
  absl::Status Install(const Files& files) {
    for (const auto& [path, contents] :
         {std::pair<std::string, const std::string*>{Key(), &files.key},
          {Cert(), &files.cert},
          {Ca(), &files.ca}}) {
      if (absl::Status st = WriteAtomically(path, *contents); !st.ok()) return st;
    }
    digest_ = files.digest;
    return absl::OkStatus();
  }

  std::shared_ptr<grpc::ServerCredentials> Credentials(bool mutual) const {
    auto provider = mutual ? std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                                 Key(), Cert(), Ca(), kRefreshSeconds)
                           : std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                                 Key(), Cert(), kRefreshSeconds);
    grpc::experimental::TlsServerCredentialsOptions options(provider);
    options.watch_identity_key_cert_pairs();
    if (mutual) {
      options.watch_root_certs();
      options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    }
    return grpc::experimental::TlsServerCredentials(options);
  }

 private:
  std::string Key() const { return dir_.empty() ? "" : dir_ + "/key.pem"; }
  std::string Cert() const { return dir_.empty() ? "" : dir_ + "/cert.pem"; }
  std::string Ca() const { return dir_.empty() ? "" : dir_ + "/ca.pem"; }

  static absl::Status Check(const Settings& s, const std::string& cert, const std::string& key,
                            const std::string& ca) {
    std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(
        BIO_new_mem_buf(cert.data(), static_cast<int>(cert.size())), &BIO_free);
    std::unique_ptr<X509, decltype(&X509_free)> leaf(
        PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
    if (leaf == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_cert ", s.tls_cert, ": no PEM certificate in it"));
    }
    std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(
        BIO_new_mem_buf(key.data(), static_cast<int>(key.size())), &BIO_free);
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(
        PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
    if (pkey == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_key ", s.tls_key, ": no PEM private key in it"));
    }
    if (X509_check_private_key(leaf.get(), pkey.get()) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("--tls_key ", s.tls_key,
                                                     " does not match the certificate of "
                                                     "--tls_cert ",
                                                     s.tls_cert));
    }
    if (!s.tls_client_ca.empty()) {
      std::unique_ptr<BIO, decltype(&BIO_free)> ca_bio(
          BIO_new_mem_buf(ca.data(), static_cast<int>(ca.size())), &BIO_free);
      std::unique_ptr<X509, decltype(&X509_free)> first(
          PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr), &X509_free);
      if (first == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls_client_ca ", s.tls_client_ca, ": no PEM certificate in it"));
      }
    }
    ERR_clear_error();
    return absl::OkStatus();
  }

  static absl::Status WriteAtomically(const std::string& path, const std::string& contents) {
    const std::string tmp = path + ".new";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << contents;
      out.close();
      if (!out) {
        return absl::FailedPreconditionError(absl::StrCat("cannot write ", tmp));
      }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::FailedPreconditionError(absl::StrCat("cannot rename ", tmp, " to ", path));
    }
    return absl::OkStatus();
  }

  std::string dir_;
  Sha256 digest_{};
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const Settings& s,
                                                                           TlsFiles* tls) {
  if (s.tls_cert.empty()) {
    return grpc::InsecureServerCredentials();
  }
  if (absl::Status st = tls->Init(); !st.ok()) return st;
  absl::StatusOr<TlsFiles::Files> files = tls->Read(s);
  if (!files.ok()) return files.status();
  if (absl::Status st = tls->Install(*files); !st.ok()) return st;
  return tls->Credentials(!s.tls_client_ca.empty());
}

bool IsLoopbackListen(absl::string_view listen) {
  return absl::StartsWith(listen, "127.") || absl::StartsWith(listen, "localhost:") ||
         absl::StartsWith(listen, "[::1]:");
}

// Keeps the health service in step with the store: NOT_SERVING while it cannot be used. Pings
// the store once a second, each ping a second after the previous one answered (on a store
// thread), so a slow store is never pinged twice at once.
class StoreHealthWatch {
 public:
  // `serving` follows each ping's result (the verdictd_store_serving gauge).
  StoreHealthWatch(VerdictStore& store, grpc::HealthCheckServiceInterface& health,
                   Scheduler& scheduler, std::shared_ptr<std::atomic<bool>> serving)
      : state_(std::make_shared<State>(store, health, scheduler, std::move(serving))) {}
  ~StoreHealthWatch() { Stop(); }

  void Start() { Ping(state_, /*previously_ok=*/true); }

  // Once this returns, nothing touches the store, the health service or the scheduler again; a
  // ping still under way is answered into nothing (its callback holds the state alive).
  void Stop() {
    absl::MutexLock lock(&state_->mu);
    state_->stopped = true;
  }

 private:
  struct State {
    State(VerdictStore& store, grpc::HealthCheckServiceInterface& health, Scheduler& scheduler,
          std::shared_ptr<std::atomic<bool>> serving)
        : store(store), health(health), scheduler(scheduler), serving(std::move(serving)) {}
    VerdictStore& store;
    grpc::HealthCheckServiceInterface& health;
    Scheduler& scheduler;
    const std::shared_ptr<std::atomic<bool>> serving;
    absl::Mutex mu;
    bool stopped ABSL_GUARDED_BY(mu) = false;
  };

  static void Ping(const std::shared_ptr<State>& state, bool previously_ok) {
    absl::MutexLock lock(&state->mu);
    if (state->stopped) {
      return;
    }
    // The store answers on a thread of its own, never inline, so holding the lock is safe.
    state->store.Ping([state, previously_ok](absl::Status ping) {
      absl::MutexLock lock(&state->mu);
      if (state->stopped) {
        return;
      }
      if (ping.ok() != previously_ok) {
        if (ping.ok()) {
          spdlog::info("verdict store usable again: health SERVING");
        } else {
          spdlog::error("verdict store unusable, health NOT_SERVING: {}", ping.message());
        }
      }
      state->health.SetServingStatus(ping.ok());
      state->serving->store(ping.ok(), std::memory_order_relaxed);
      state->scheduler.RunAfter(absl::Seconds(1), [state, ok = ping.ok()] { Ping(state, ok); });
    });
  }

  std::shared_ptr<State> state_;
};

// The monthly budgets the engine reports (GetUsage, the budget gauge), from the keys file.
std::vector<std::pair<std::string, int64_t>> BudgetsOf(const std::vector<ApiKeyEntry>& entries) {
  // A caller with several keys has one budget (the parser checked that its keys agree).
  std::vector<std::pair<std::string, int64_t>> budgets;
  std::set<std::string> seen;
  for (const ApiKeyEntry& entry : entries) {
    if (seen.insert(entry.caller).second) {
      budgets.emplace_back(entry.caller, entry.monthly_budget);
    }
  }
  return budgets;
}

// The teams the engine enforces and reports (team budgets, the lead's reads), from the keys file.
std::vector<TeamAccount> TeamAccountsOf(const std::vector<ApiKeyEntry>& entries) {
  std::vector<TeamAccount> accounts;
  for (TeamInfo& team : TeamsOf(entries)) {
    accounts.push_back(
        TeamAccount{std::move(team.name), team.monthly_budget, std::move(team.callers)});
  }
  return accounts;
}

// SIGHUP: re-reads --api_keys_file, --token_file and the TLS files and swaps them in. All or
// nothing: every file is read and checked first, and a failure in any leaves the whole
// configuration as it was (and is counted and logged, naming the file and line, never a
// secret). Then the TLS copies (TlsFiles), the keys (with the budgets the engine reports) and
// the token are swapped, each atomically, one after the other: a call already past
// authentication finishes as it started, a request already sent keeps its token, a connection
// already made keeps its TLS session.
class ConfigReloader {
 public:
  ConfigReloader(const Settings& s, Authenticator& auth, ClickPatrolClient& client, Engine& engine,
                 TlsFiles& tls, metrics::Registry& registry)
      : settings_(s),
        tls_(tls),
        api_keys_file_(s.api_keys_file),
        token_file_(absl::GetFlag(FLAGS_token_file)),
        token_hash_(HashApiKey(s.upstream.token)),
        auth_(auth),
        client_(client),
        engine_(engine),
        failures_(registry
                      .AddCounter("verdictd_config_reload_failures_total",
                                  "SIGHUP reloads refused because a file did not load (the "
                                  "configuration in force stayed as it was).")
                      .WithLabels({})),
        last_success_(registry
                          .AddGauge("verdictd_config_last_reload_success_timestamp_seconds",
                                    "Unix time of the last successful configuration load (start-up "
                                    "or SIGHUP).")
                          .WithLabels({})) {
    last_success_.Set(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
  }

  void Reload() {
    spdlog::info("received SIGHUP: reloading --api_keys_file, --token_file and the TLS files");
    // Read and check everything before changing anything.
    std::optional<std::vector<ApiKeyEntry>> entries;
    if (!api_keys_file_.empty()) {
      absl::StatusOr<std::vector<ApiKeyEntry>> loaded = LoadApiKeysFile(api_keys_file_);
      if (!loaded.ok()) {
        Fail(absl::StrCat("--api_keys_file ", loaded.status().message()));
        return;
      }
      entries = *std::move(loaded);
    }
    std::optional<std::string> token;
    if (!token_file_.empty()) {
      std::string source;
      absl::StatusOr<std::string> read = ReadToken(&source);
      if (!read.ok()) {
        Fail(read.status().message());
        return;
      }
      token = *std::move(read);
    }

    std::optional<TlsFiles::Files> tls;
    if (!settings_.tls_cert.empty()) {
      absl::StatusOr<TlsFiles::Files> read = tls_.Read(settings_);
      if (!read.ok()) {
        Fail(read.status().message());
        return;
      }
      tls = *std::move(read);
    }

    // Everything loads: swap it in.
    std::string tls_summary = "none (plaintext)";
    if (tls.has_value()) {
      tls_summary = "unchanged";
      if (tls_.Differs(*tls)) {
        if (absl::Status st = tls_.Install(*tls); !st.ok()) {
          Fail(st.message());
          return;
        }
        tls_summary = absl::StrFormat("replaced (served to new connections within %ds)",
                                      TlsFiles::kRefreshSeconds + 1);
      }
    }
    // The token after the TLS copy and before the keys: the swaps that can refuse (writing the
    // TLS copies, SetToken) come before those that cannot, so a refusal of the first leaves the
    // whole old configuration in force, as the log line says.
    std::string token_summary;
    if (token.has_value()) {
      const Sha256 hash = HashApiKey(*token);
      const bool replaced = hash != token_hash_;
      if (replaced) {
        if (absl::Status st = client_.SetToken(*std::move(token)); !st.ok()) {
          Fail(st.message());  // ReadToken refuses what SetToken would
          return;
        }
        token_hash_ = hash;
      }
      // A reload is the operator saying the token is fixed: the next miss goes out at once.
      engine_.OnTokenReplaced();
      token_summary = replaced ? "replaced" : "unchanged";
    } else {
      token_summary = "from $CLICKPATROL_TOKEN, not reloadable";
      if (!warned_token_from_environment_) {
        warned_token_from_environment_ = true;
        spdlog::warn(
            "SIGHUP cannot change the ClickPatrol token: it comes from the CLICKPATROL_TOKEN "
            "environment variable (use --token_file to rotate it without a restart)");
      }
    }
    std::string keys_summary = "open mode, unchanged (no --api_keys_file)";
    if (entries.has_value()) {
      std::vector<std::pair<std::string, int64_t>> budgets = BudgetsOf(*entries);
      std::vector<TeamAccount> teams = TeamAccountsOf(*entries);
      // The teams before the keys: a check that authenticates with a new key must find its
      // team's callers in place (its claim names them, and the store sums their clicks for the
      // team budget). A check of an old key meanwhile still counts its caller among the team's
      // (Engine::TeamCallers adds it).
      engine_.SetMonthlyBudgets(std::move(budgets));
      engine_.SetTeams(std::move(teams));
      absl::StatusOr<KeySetChange> change = auth_.Replace(*std::move(entries));
      if (!change.ok()) {  // not reached: keyed at start whenever --api_keys_file is set
        Fail(change.status().message());
        return;
      }
      keys_summary = absl::StrFormat(
          "%d callers with %d keys%s (%d added, %d removed, %d changed)", change->callers,
          change->keys,
          change->teams == 0
              ? ""
              : absl::StrFormat(" in %d team%s", change->teams, change->teams == 1 ? "" : "s"),
          change->added, change->removed, change->changed);
    }
    last_success_.Set(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
    spdlog::info("configuration reloaded: keys: {}; token: {}; tls: {}", keys_summary,
                 token_summary, tls_summary);
  }

 private:
  void Fail(absl::string_view why) {
    failures_.Increment();
    spdlog::error("configuration reload failed, the previous configuration stays in force: {}",
                  why);
  }

  const Settings& settings_;
  TlsFiles& tls_;
  const std::string api_keys_file_;
  const std::string token_file_;
  Sha256 token_hash_;  // of the token in use: tells "replaced" from "unchanged" without a copy
  Authenticator& auth_;
  ClickPatrolClient& client_;
  Engine& engine_;
  metrics::Counter& failures_;
  metrics::Gauge& last_success_;
  bool warned_token_from_environment_ = false;
};

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

  Authenticator auth = Authenticator::Open();
  if (s.api_keys_file.empty()) {
    spdlog::warn(
        "OPEN MODE: no --api_keys_file, so callers are not authenticated; the caller "
        "is whatever the x-caller metadata says (or \"anonymous\")");
  } else {
    absl::StatusOr<std::vector<ApiKeyEntry>> entries = LoadApiKeysFile(s.api_keys_file);
    if (!entries.ok()) {
      spdlog::critical("verdictd cannot start: --api_keys_file {}", entries.status().message());
      return 2;
    }
    spdlog::info("keyed mode: {} callers from {}", entries->size(), s.api_keys_file);
    auth = Authenticator::Keyed(*std::move(entries));
  }
  TlsFiles tls;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ServerCredentials(s, &tls);
  if (!credentials.ok()) {
    spdlog::critical("verdictd cannot start: {}", credentials.status().message());
    return 2;
  }
  if (s.tls_cert.empty() && !IsLoopbackListen(s.listen)) {
    spdlog::warn(
        "listening on {} WITHOUT TLS: API keys and verdicts cross the network in "
        "clear text; use --tls_cert/--tls_key",
        s.listen);
  }

  metrics::Registry registry;
  ServerMetrics server_metrics(registry);

  // Signals were blocked in main() before any thread started; the PostgreSQL wait and the
  // serving loop below take them with sigtimedwait/sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);

  absl::StatusOr<std::unique_ptr<VerdictStore>> backing =
      s.postgres ? OpenPostgresWithWait(s, signals) : OpenSqliteStore(s.store);
  if (!backing.ok()) {
    spdlog::critical("verdictd cannot start: {}", backing.status().message());
    return 1;
  }
  if (*backing == nullptr) {
    spdlog::info("verdictd stopped");
    return 0;
  }
  spdlog::info("verdict store: {}", s.postgres ? "PostgreSQL" : "SQLite");
  TimedStore store(**backing, server_metrics.store_read_latency());
  // Start-up, not a reactor thread: waiting for the store here is fine.
  absl::StatusOr<std::string> secret =
      AwaitRead<std::string>([&store](VerdictStore::ReadCallback<std::string> done) {
        store.Secret("page_token_key", 32, std::move(done));
      });
  if (!secret.ok()) {
    spdlog::critical("verdictd cannot start: {}", secret.status().message());
    return 1;
  }
  PageTokenCodec page_tokens(*secret);
  absl::StatusOr<std::unique_ptr<ClickPatrolClient>> client = NewCurlClickPatrolClient(s.upstream);
  if (!client.ok()) {
    spdlog::critical("verdictd cannot start: {}", client.status().message());
    return 1;
  }
  // The engine reports budgets (GetUsage, the budget gauge); checks carry their caller's own.
  s.engine.monthly_budgets = BudgetsOf(auth.entries());
  s.engine.teams = TeamAccountsOf(auth.entries());
  auto scheduler = std::make_unique<ThreadScheduler>();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(s.engine, store, **client, *Clock::Real(), *scheduler, &server_metrics);
  if (!engine.ok()) {
    spdlog::critical("verdictd cannot start: {}", engine.status().message());
    return 1;
  }
  Engine* engine_ptr = engine->get();
  registry.AddCallbackGauge("verdictd_allowance_clicks_left",
                            "Clicks left of --monthly_allowance in the current period.",
                            [engine_ptr] { return engine_ptr->Allowance().clicks_left; });
  registry.AddCallbackGauge(
      "verdictd_allowance_clicks",
      "--monthly_allowance: the ClickPatrol plan's clicks per period (0: not configured).",
      [engine_ptr] { return engine_ptr->Allowance().monthly_allowance; });
  registry.AddCallbackGauge(
      "verdictd_allowance_clicks_used",
      "Clicks billed in the current allowance period, as this replica counts them.",
      [engine_ptr] { return engine_ptr->Allowance().clicks_used; });
  registry.AddCallbackGauge(
      "verdictd_allowance_exhausted",
      "1 while ClickPatrol says the allowance is exhausted (misses refused until the reset).",
      [engine_ptr] { return engine_ptr->Allowance().exhausted_upstream ? 1.0 : 0.0; });
  registry.AddCallbackGauge(
      "verdictd_circuit_breaker_open",
      "1 while the circuit breaker refuses to send to ClickPatrol.", [engine_ptr] {
        return engine_ptr->breaker_state() == CircuitBreaker::State::kOpen ? 1.0 : 0.0;
      });
  registry.AddCallbackGauge(
      "verdictd_token_rejected",
      "1 while ClickPatrol rejects the API token (HTTP 401/403): misses fail fast until it works.",
      [engine_ptr] { return engine_ptr->TokenRejected() ? 1.0 : 0.0; });
  // The store opened at start-up, so it serves until the health watch's first ping says not.
  auto store_serving = std::make_shared<std::atomic<bool>>(true);
  registry.AddCallbackGauge(
      "verdictd_store_serving",
      "1 while the verdict store answers the health check's ping (every second); 0 while it "
      "makes health NOT_SERVING.",
      [store_serving] { return store_serving->load(std::memory_order_relaxed) ? 1.0 : 0.0; });
  registry.AddCallbackGauge(
      "verdictd_budget_clicks_left", "Clicks left of each caller's monthly budget.", {"caller"},
      [engine_ptr] {
        metrics::LabeledValues values;
        for (const BudgetStatus& budget : engine_ptr->Budgets()) {
          values.push_back({{budget.caller}, static_cast<double>(budget.left)});
        }
        return values;
      });
  registry.AddCallbackGauge("verdictd_team_budget_clicks_left",
                            "Clicks left of each team's monthly budget (teams with a budget only).",
                            {"team"}, [engine_ptr] {
                              metrics::LabeledValues values;
                              for (const TeamBudgetStatus& team : engine_ptr->TeamBudgets()) {
                                if (team.monthly_budget > 0) {
                                  values.push_back({{team.team}, static_cast<double>(team.left)});
                                }
                              }
                              return values;
                            });
  registry.AddCallbackGauge(
      "verdictd_team_month_clicks",
      "Billed clicks of each team's callers this calendar month (UTC), as this replica counts "
      "them.",
      {"team"}, [engine_ptr] {
        metrics::LabeledValues values;
        for (const TeamBudgetStatus& team : engine_ptr->TeamBudgets()) {
          values.push_back({{team.team}, static_cast<double>(team.spent)});
        }
        return values;
      });
  ConfigReloader reloader(s, auth, **client, **engine, tls, registry);

  std::unique_ptr<metrics::MetricsHttpServer> metrics_server;
  if (!s.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> started =
        metrics::MetricsHttpServer::Start(s.metrics_listen, registry);
    if (!started.ok()) {
      spdlog::critical("verdictd cannot start: --metrics_listen: {}", started.status().message());
      return 1;
    }
    metrics_server = *std::move(started);
    spdlog::info("metrics at http://{}/metrics (port {})", s.metrics_listen,
                 metrics_server->port());
  }

  VerdictServiceImpl service(s.service, **engine, auth, page_tokens, &server_metrics);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(s.listen, *credentials, &port);
  // gRPC sets SO_REUSEPORT by default, so a second verdictd on a taken port would listen beside
  // the first, and the kernel would split callers between two servers with different stores
  // and ledgers. Off: a taken port ends start-up.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&service);
  // A batch of --max_batch items with maximal user agents must fit; anything far larger is
  // refused before it is parsed.
  builder.SetMaxReceiveMessageSize(std::max(4 << 20, s.service.max_batch * 1200 + (64 << 10)));
  builder.SetMaxSendMessageSize(64 << 20);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 << 10);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Connections that cost the server without doing anything: one with no call in flight for
  // --max_connection_idle is sent a GOAWAY (keepalive pings do not count as calls), and one
  // that never completes its handshake and HTTP/2 preface within --handshake_timeout (a bare
  // TCP connect, a stalled TLS hello) is closed. One connection carries at most
  // --max_concurrent_streams calls at once.
  if (s.max_connection_idle > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               static_cast<int>(absl::ToInt64Milliseconds(s.max_connection_idle)));
  }
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(s.handshake_timeout)));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, s.max_concurrent_streams);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    spdlog::critical(
        "verdictd cannot start: cannot listen on {}: the address is in use (another verdictd or "
        "another program listens there; verdictd never shares a port) or cannot be bound",
        s.listen);
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  // Answers for the service by name too (clients that ask per service, e.g. Envoy), and follows
  // the store like the whole server does ("").
  health->SetServingStatus(verdict::v1::VerdictService::service_full_name(), true);
  StoreHealthWatch health_watch(store, *health, *scheduler, store_serving);
  health_watch.Start();
  spdlog::info("verdictd {} listening on {} (port {}, {})", VERDICTD_VERSION, s.listen, port,
               s.tls_cert.empty() ? "plaintext" : (s.tls_client_ca.empty() ? "TLS" : "mutual TLS"));
  if (!s.port_file.empty()) {
    if (absl::Status st = WritePortFile(s.port_file, port); !st.ok()) {
      spdlog::critical("{}", st.message());
      return 1;
    }
  }

  // Signals were blocked in main() before any thread started, so only this sigwait sees them.
  // SIGHUP reloads (ConfigReloader); SIGTERM or SIGINT ends the loop.
  sigset_t serving_signals = signals;
  sigaddset(&serving_signals, SIGHUP);
  int signal_number = 0;
  while (sigwait(&serving_signals, &signal_number) == 0 && signal_number == SIGHUP) {
    reloader.Reload();
  }
  spdlog::info("received signal {}: draining in-flight calls (grace {})", signal_number,
               DurationToString(s.shutdown_grace));

  // NOT_SERVING for good: the store watcher's later SetServingStatus calls are ignored.
  health->Shutdown();
  // Nothing leaves after the signal that had not left before it: misses waiting for a slot (or
  // a retry) are answered UNAVAILABLE now, without a request, and no new miss is admitted.
  (*engine)->Shutdown();
  const absl::Time deadline = absl::Now() + s.shutdown_grace;
  // Stops accepting, lets in-flight calls finish until the deadline, then cancels the rest.
  server->Shutdown(absl::ToChronoTime(deadline));
  server->Wait();
  spdlog::debug("gRPC server stopped");
  // Requests already on the wire are billed: their answers are still stored if they come
  // within the grace. Past it they are abandoned; destroying the client answers them as
  // errors, so their ledger rows stay spent.
  if (!(*engine)->WaitIdleUntil(deadline)) {
    spdlog::warn(
        "ClickPatrol requests still in flight at the end of the shutdown grace: "
        "abandoned (their clicks stay in the ledger)");
    client->reset();
  }
  health_watch.Stop();
  scheduler.reset();  // no more background ticks
  // The gauges read the engine (budgets, allowance, breaker): no rendering may outlive it.
  metrics_server.reset();
  engine->reset();  // writes the batched usage counters
  client->reset();
  backing->reset();  // commits what is queued and closes the database
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
  sigaddset(&signals, SIGHUP);  // a reload: taken by the serving loop's sigwait
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  // Debian's Abseil checks lock ordering on every Mutex acquisition (about 6% of a cache hit's
  // CPU, measured with perf); the tests run with it on, production does not need it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  absl::SetProgramUsageMessage(
      "verdictd [flags]\n"
      "The ClickPatrol token comes from $CLICKPATROL_TOKEN or --token_file, never a flag.");
  // The config file is applied first so that flags on the command line override it.
  absl::StatusOr<std::string> config = verdictd::FindConfigFlag(argc, argv);
  if (!config.ok()) {
    std::fprintf(stderr, "verdictd cannot start: %s\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  if (!config->empty()) {
    if (absl::Status st = verdictd::ApplyConfigFile(*config, "verdictd_main.cc"); !st.ok()) {
      std::fprintf(stderr, "verdictd cannot start: %s\n", std::string(st.message()).c_str());
      return 2;
    }
  }
  absl::ParseCommandLine(argc, argv);
  if (absl::Status st =
          verdictd::SetUpLogging(absl::GetFlag(FLAGS_log_format), absl::GetFlag(FLAGS_log_level));
      !st.ok()) {
    std::fprintf(stderr, "verdictd cannot start: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  return verdictd::Run();
}
