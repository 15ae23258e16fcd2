#include "bench/bench_support.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "bench/h2load.h"
#include "client/cpp/verdict_client.h"
#include "httplib.h"
#include "sqlite3.h"
#include "tests/support/postgres_cluster.h"

ABSL_FLAG(std::string, verdictd_bin, VERDICTD_BIN, "The verdictd binary to measure");
ABSL_FLAG(std::string, sim_bin, SIM_BIN, "The clickpatrol_sim binary");
ABSL_FLAG(std::string, trivial_server_bin, TRIVIAL_SERVER_BIN, "The trivial_server binary");

namespace verdictd::bench {
namespace {

constexpr char kSimToken[] = "bench-token";

// Children to kill on a signal or Die(); slots hold 0 when free.
constexpr int kMaxChildren = 16;
std::atomic<pid_t> g_children[kMaxChildren];

void RegisterChild(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t expected = 0;
    if (slot.compare_exchange_strong(expected, pid)) {
      return;
    }
  }
}

void KillChildren() {
  for (auto& slot : g_children) {
    const pid_t pid = slot.exchange(0);
    if (pid > 0) {
      kill(pid, SIGKILL);
    }
  }
}

void OnSignal(int signal_number) {
  KillChildren();
  _exit(128 + signal_number);
}

httplib::Client SimClient(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(30);
  return client;
}

// Starts argv with the port file argument appended and waits for the port.
absl::StatusOr<Server> StartServer(std::vector<std::string> argv,
                                   const std::map<std::string, std::string>& env,
                                   const TempDir& dir, const std::string& name) {
  Server server;
  server.log_path = dir.File(name + ".log");
  const std::string port_file = dir.File(name + ".port");
  std::remove(port_file.c_str());
  argv.push_back("--port_file=" + port_file);
  const int64_t start_ns = NowNs();
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(argv, env, server.log_path);
  if (!process.ok()) {
    return process.status();
  }
  server.process = *std::move(process);
  RegisterChild(server.process->pid());
  // Poll every millisecond (not WaitForPortFile's 10 ms): start-up time is a measured figure.
  const int64_t deadline_ns = start_ns + int64_t{30} * 1'000'000'000;
  while (NowNs() < deadline_ns) {
    const std::string text = testing::ReadFileOrEmpty(port_file);
    int port = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) && port > 0) {
      server.port = port;
      server.startup = absl::Nanoseconds(NowNs() - start_ns);
      return server;
    }
    if (!server.process->Running()) {
      return absl::FailedPreconditionError(absl::StrCat(name, " exited before writing its port:\n",
                                                        testing::ReadFileOrEmpty(server.log_path)));
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  return absl::DeadlineExceededError(absl::StrCat(name, " wrote no port within 30 s"));
}

}  // namespace

int Histogram::IndexOf(uint64_t v) {
  if (v < 128) {
    return static_cast<int>(v);
  }
  if (v >= (uint64_t{1} << 40)) {
    v = (uint64_t{1} << 40) - 1;
  }
  const int msb = 63 - __builtin_clzll(v);
  const int shift = msb - 6;
  const int top = static_cast<int>(v >> shift);  // in [64, 128)
  return 64 * shift + top;
}

double Histogram::MidpointOf(int index) {
  if (index < 128) {
    return index;
  }
  const int shift = index / 64 - 1;
  const int top = index - 64 * shift;
  const double low = std::ldexp(static_cast<double>(top), shift);
  return low + std::ldexp(0.5, shift);
}

void Histogram::Record(uint64_t ns) {
  ++counts_[IndexOf(ns)];
  ++count_;
  sum_ += static_cast<double>(ns);
  max_ = std::max(max_, ns);
}

void Histogram::Merge(const Histogram& other) {
  for (int i = 0; i < kBuckets; ++i) {
    counts_[i] += other.counts_[i];
  }
  count_ += other.count_;
  sum_ += other.sum_;
  max_ = std::max(max_, other.max_);
}

double Histogram::Quantile(double q) const {
  if (count_ == 0) {
    return 0;
  }
  uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::clamp<uint64_t>(rank, 1, count_);
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      return std::min(MidpointOf(i), static_cast<double>(max_));
    }
  }
  return static_cast<double>(max_);
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void InitBench(int argc, char** argv) {
  setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "50", /*overwrite=*/0);
  absl::ParseCommandLine(argc, argv);
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGHUP, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

void Die(const std::string& message, const absl::Status& status) {
  std::cerr << "FATAL: " << message;
  if (!status.ok()) {
    std::cerr << ": " << status;
  }
  std::cerr << std::endl;
  KillChildren();
  std::exit(1);
}

std::string Server::target() const { return absl::StrCat("127.0.0.1:", port); }

void Server::Stop() {
  if (process != nullptr) {
    const pid_t pid = process->pid();
    (void)process->Terminate(absl::Seconds(15));
    for (auto& slot : g_children) {
      pid_t expected = pid;
      slot.compare_exchange_strong(expected, 0);
    }
  }
}

absl::StatusOr<Server> StartSimulator(const TempDir& dir, const std::vector<std::string>& flags,
                                      const std::string& name) {
  std::vector<std::string> argv = {absl::GetFlag(FLAGS_sim_bin), "--listen=127.0.0.1:0",
                                   absl::StrCat("--token=", kSimToken)};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return StartServer(argv, {}, dir, name);
}

absl::StatusOr<Server> StartVerdictd(const TempDir& dir, int sim_port,
                                     const std::vector<std::string>& flags,
                                     const std::string& name) {
  std::vector<std::string> argv = {absl::GetFlag(FLAGS_verdictd_bin), "--listen=127.0.0.1:0",
                                   absl::StrCat("--upstream_url=http://127.0.0.1:", sim_port, "/")};
  bool has_db = false;
  bool has_log_level = false;
  for (const std::string& flag : flags) {
    has_db = has_db || flag.rfind("--db=", 0) == 0;
    has_log_level = has_log_level || flag.rfind("--log_level=", 0) == 0;
  }
  if (!has_db) {
    argv.push_back("--db=" + dir.File(name + ".db"));
  }
  if (!has_log_level) {
    argv.push_back("--log_level=warn");
  }
  argv.insert(argv.end(), flags.begin(), flags.end());
  return StartServer(argv, {{"CLICKPATROL_TOKEN", kSimToken}}, dir, name);
}

absl::StatusOr<Server> StartTrivialServer(const TempDir& dir) {
  return StartServer({absl::GetFlag(FLAGS_trivial_server_bin), "--listen=127.0.0.1:0"}, {}, dir,
                     "trivial");
}

absl::StatusOr<Backend> ParseBackend(absl::string_view name) {
  if (name == "sqlite") return Backend::kSqlite;
  if (name == "postgres") return Backend::kPostgres;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend \"", name, "\" (sqlite or postgres)"));
}

std::string BackendName(Backend backend) {
  return backend == Backend::kSqlite ? "sqlite" : "postgres";
}

absl::StatusOr<BenchStore> BenchStore::Create(Backend backend, const TempDir& dir,
                                              const std::string& name) {
  if (backend == Backend::kSqlite) {
    return BenchStore(backend, dir.File(name + ".db"));
  }
  absl::StatusOr<testing::PostgresCluster*> cluster = testing::PostgresCluster::Shared();
  if (!cluster.ok()) {
    return cluster.status();
  }
  if (absl::Status created = (*cluster)->CreateDatabase(name); !created.ok()) {
    return created;
  }
  return BenchStore(backend, name);
}

std::string BenchStore::DbFlag() const {
  if (backend_ == Backend::kSqlite) {
    return "--db=" + location_;
  }
  return "--db=" + testing::PostgresCluster::Shared().value()->Uri(location_);
}

absl::StatusOr<int64_t> BenchStore::QueryInt(const std::string& sql) const {
  std::string text;
  if (backend_ == Backend::kPostgres) {
    absl::StatusOr<std::string> value =
        testing::PostgresCluster::Shared().value()->Query(location_, sql);
    if (!value.ok()) {
      return value.status();
    }
    text = *value;
  } else {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(location_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
      std::string message = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
      sqlite3_close(db);
      return absl::InternalError(absl::StrCat("open ", location_, ": ", message));
    }
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      text = absl::StrCat(sqlite3_column_int64(stmt, 0));
    }
    std::string message = sqlite3_errmsg(db);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    if (text.empty()) {
      return absl::InternalError(absl::StrCat(sql, ": ", message));
    }
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InternalError(absl::StrCat(sql, " gave \"", text, "\", not an integer"));
  }
  return value;
}

absl::StatusOr<int64_t> BenchStore::LedgerClicks() const {
  return QueryInt("SELECT count(*) FROM clicks WHERE outcome != 3");
}

std::string BenchStore::ServerLog() const {
  return backend_ == Backend::kPostgres ? testing::PostgresCluster::Shared().value()->ServerLog()
                                        : std::string();
}

absl::StatusOr<std::vector<Server>> StartReplicas(const TempDir& dir, int sim_port,
                                                  const BenchStore& store, int n,
                                                  const std::vector<std::string>& flags,
                                                  const std::string& name) {
  std::vector<Server> replicas;
  for (int i = 0; i < n; ++i) {
    const std::string id = absl::StrCat(name, "-", i);
    std::vector<std::string> all = {store.DbFlag(), "--replica_id=" + id};
    all.insert(all.end(), flags.begin(), flags.end());
    absl::StatusOr<Server> replica = StartVerdictd(dir, sim_port, all, id);
    if (!replica.ok()) {
      return replica.status();
    }
    replicas.push_back(*std::move(replica));
  }
  return replicas;
}

int MetricsPortFromLog(const Server& server) {
  const std::string marker = "/metrics (port ";
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    const std::string log = testing::ReadFileOrEmpty(server.log_path);
    const size_t at = log.find(marker);
    if (at != std::string::npos) {
      const size_t start = at + marker.size();
      const size_t end = log.find(')', start);
      int port = 0;
      if (end != std::string::npos && absl::SimpleAtoi(log.substr(start, end - start), &port)) {
        return port;
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  Die("verdictd logged no metrics port:\n" + testing::ReadFileOrEmpty(server.log_path));
}

std::map<std::string, double> ScrapeMetrics(int metrics_port) {
  httplib::Client client("127.0.0.1", metrics_port);
  client.set_connection_timeout(5);
  client.set_read_timeout(30);
  httplib::Result result = client.Get("/metrics");
  if (!result || result->status != 200) {
    Die(absl::StrCat("GET http://127.0.0.1:", metrics_port, "/metrics failed"));
  }
  std::map<std::string, double> samples;
  for (const auto& [series, value] : ParsePrometheusText(result->body)) {
    samples[series] += value;
  }
  return samples;
}

absl::StatusOr<nlohmann::json> SimStats(int sim_port) {
  httplib::Client client = SimClient(sim_port);
  httplib::Result result = client.Get("/_sim/stats");
  if (!result || result->status != 200) {
    return absl::UnavailableError("GET /_sim/stats failed");
  }
  return nlohmann::json::parse(result->body);
}

absl::Status SimReset(int sim_port) {
  httplib::Client client = SimClient(sim_port);
  httplib::Result result = client.Post("/_sim/reset", "", "application/json");
  if (!result || result->status != 200) {
    return absl::UnavailableError("POST /_sim/reset failed");
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> NewChannel(int port) {
  client::ChannelOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  options.own_connection = true;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = client::NewChannel(options);
  if (!channel.ok()) {  // only for options a plaintext loopback channel never has
    std::cerr << "bench: " << channel.status() << "\n";
    std::abort();
  }
  return *std::move(channel);
}

std::unique_ptr<verdict::v1::VerdictService::Stub> NewStub(int port) {
  return verdict::v1::VerdictService::NewStub(NewChannel(port));
}

std::unique_ptr<grpc::ClientContext> CallContext(std::string caller, absl::Duration timeout) {
  client::CallOptions options;
  options.caller = std::move(caller);
  options.timeout = timeout;
  return client::NewContext(options);
}

double ProcessCpuSeconds(pid_t pid) {
  const std::string stat = testing::ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/stat"));
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) {
    return -1;
  }
  std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
  if (fields.size() < 13) {
    return -1;
  }
  double utime = 0;
  double stime = 0;
  if (!absl::SimpleAtod(fields[11], &utime) || !absl::SimpleAtod(fields[12], &stime)) {
    return -1;
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  struct rusage usage = {};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

int64_t ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, field) && absl::ConsumePrefix(&rest, ":")) {
      rest = absl::StripAsciiWhitespace(rest);
      absl::ConsumeSuffix(&rest, "kB");
      int64_t kb = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kb)) {
        return kb;
      }
    }
  }
  return -1;
}

std::string PublicIp(int first_octet, uint32_t index) {
  return absl::StrCat(first_octet, ".", (index >> 16) & 255, ".", (index >> 8) & 255, ".",
                      index & 255);
}

int64_t CountLinesWith(const std::string& text, absl::string_view needle, std::string* first) {
  int64_t n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StrContains(line, needle)) {
      if (n++ == 0 && first != nullptr && first->empty()) {
        *first = std::string(line);
      }
    }
  }
  return n;
}

double Median(std::vector<double> values) {
  if (values.empty()) {
    return 0;
  }
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

void PrintResult(const std::string& bench, const std::string& metric, const std::string& value,
                 const std::string& target, const std::string& verdict) {
  std::cout << "RESULT " << bench << " " << metric << " " << value << " " << target << " "
            << verdict << std::endl;
}

std::string PassFail(bool ok) { return ok ? "PASS" : "FAIL"; }

}  // namespace verdictd::bench
