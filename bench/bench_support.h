#ifndef VERDICTD_BENCH_BENCH_SUPPORT_H_
#define VERDICTD_BENCH_BENCH_SUPPORT_H_

// Shared pieces of the benchmark programs: a log-bucketed latency histogram, the real binaries
// as child processes on port 0, simulator control, /proc readings and result lines.

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "tests/support/process.h"
#include "verdict/v1/verdict.grpc.pb.h"

namespace verdictd::bench {

using ::verdictd::testing::ChildProcess;
using ::verdictd::testing::TempDir;

// An HdrHistogram-like histogram of nanosecond values: exact below 128, then 64 buckets per
// power of two (at most 1.6 % relative error), up to 2^40 ns (about 18 minutes).
class Histogram {
 public:
  void Record(uint64_t ns);
  void Merge(const Histogram& other);
  uint64_t count() const { return count_; }
  // The value at quantile q in [0, 1] (the bucket's midpoint), in nanoseconds; 0 if empty.
  double Quantile(double q) const;
  double MeanNs() const { return count_ == 0 ? 0 : sum_ / static_cast<double>(count_); }
  uint64_t max() const { return max_; }

 private:
  static constexpr int kBuckets = 64 * 35;
  static int IndexOf(uint64_t v);
  static double MidpointOf(int index);
  std::array<uint64_t, kBuckets> counts_{};
  uint64_t count_ = 0;
  double sum_ = 0;
  uint64_t max_ = 0;
};

// Monotonic nanoseconds.
int64_t NowNs();

// Call first in main(): parses flags, installs SIGINT/SIGTERM handlers that kill the children
// started below, and makes gRPC clients notice a server's GOAWAY quickly.
void InitBench(int argc, char** argv);

// Prints `message` and the status to stderr, kills the children and exits 1.
[[noreturn]] void Die(const std::string& message, const absl::Status& status = absl::OkStatus());

// A child process serving on 127.0.0.1:port.
struct Server {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
  std::string log_path;
  absl::Duration startup;  // spawn -> port file written
  pid_t pid() const { return process->pid(); }
  std::string target() const;
  // SIGTERM and wait.
  void Stop();
};

// clickpatrol_sim with token "bench-token" plus `flags`.
absl::StatusOr<Server> StartSimulator(const TempDir& dir, const std::vector<std::string>& flags,
                                      const std::string& name = "sim");
// verdictd against the simulator at `sim_port`, with --db=dir/verdicts.db unless `flags` has a
// --db, --log_level=warn unless given.
absl::StatusOr<Server> StartVerdictd(const TempDir& dir, int sim_port,
                                     const std::vector<std::string>& flags,
                                     const std::string& name = "verdictd");
// bench/trivial_server.
absl::StatusOr<Server> StartTrivialServer(const TempDir& dir);

// Where verdictd keeps its verdicts in a benchmark.
enum class Backend { kSqlite, kPostgres };
// "sqlite" or "postgres".
absl::StatusOr<Backend> ParseBackend(absl::string_view name);
std::string BackendName(Backend backend);

// A store for verdictd: a SQLite file in the benchmark's temp dir, or a database of its own on a
// throwaway PostgreSQL server (tests/support/postgres_cluster.h: unix socket in a temp dir, no
// TCP, fsync off, run as nobody when the benchmark runs as root). The PostgreSQL server is
// started once per process on first use (about 1-2 s) and stopped at exit; create the first
// PostgreSQL store from the main thread (the server dies with the thread that started it).
class BenchStore {
 public:
  static absl::StatusOr<BenchStore> Create(Backend backend, const TempDir& dir,
                                           const std::string& name);
  Backend backend() const { return backend_; }
  // verdictd's --db flag for this store.
  std::string DbFlag() const;
  // The first column of the first row of `sql` as an integer. For SQLite, stop the verdictd
  // processes first if the figure must include their last writes.
  absl::StatusOr<int64_t> QueryInt(const std::string& sql) const;
  // The ledger's clicks: rows of `clicks` with outcome != 3 (3: not sent, so not billed).
  absl::StatusOr<int64_t> LedgerClicks() const;
  // PostgreSQL: the server's log so far (errors such as deadlocks); SQLite: "".
  std::string ServerLog() const;

 private:
  BenchStore(Backend backend, std::string location)
      : backend_(backend), location_(std::move(location)) {}
  Backend backend_;
  std::string location_;  // the SQLite file, or the PostgreSQL database's name
};

// `n` verdictd processes ("replicas") on `store`, named `name`-0 .. `name`-(n-1) (their logs
// and port files in `dir`, --replica_id the same name), each with `flags`. Started one after
// the other: the first migrates the schema.
absl::StatusOr<std::vector<Server>> StartReplicas(const TempDir& dir, int sim_port,
                                                  const BenchStore& store, int n,
                                                  const std::vector<std::string>& flags,
                                                  const std::string& name = "replica");

// The metrics port verdictd logs at start-up ("... /metrics (port N)", at level info: start it
// with --metrics_listen=127.0.0.1:0 --log_level=info). Dies if none is logged within 10 s.
int MetricsPortFromLog(const Server& server);
// GET /metrics from verdictd's metrics listener: every sample, by series (name{labels}).
// Dies if the scrape fails.
std::map<std::string, double> ScrapeMetrics(int metrics_port);

// GET /_sim/stats, POST /_sim/reset.
absl::StatusOr<nlohmann::json> SimStats(int sim_port);
absl::Status SimReset(int sim_port);

// A channel with its own TCP connection (no shared subchannel pool).
std::shared_ptr<grpc::Channel> NewChannel(int port);
std::unique_ptr<verdict::v1::VerdictService::Stub> NewStub(int port);
// A context for one call: x-caller `caller` (none when empty) and a deadline `timeout` from now.
std::unique_ptr<grpc::ClientContext> CallContext(std::string caller, absl::Duration timeout);

// User + system CPU seconds of `pid` (from /proc/PID/stat), or of this process.
double ProcessCpuSeconds(pid_t pid);
double SelfCpuSeconds();
// A "VmRSS"-style field of /proc/PID/status in KiB; -1 if unreadable.
int64_t ProcStatusKb(pid_t pid, const std::string& field);

// The public IPv4 address first.(index >> 16).(index >> 8).(index), index < 2^24.
std::string PublicIp(int first_octet, uint32_t index);

// How many lines of `text` contain `needle` (e.g. "deadlock" in a log); the first of them in
// `*first` if given and still empty.
int64_t CountLinesWith(const std::string& text, absl::string_view needle,
                       std::string* first = nullptr);

// A median of `values` (the mean of the middle two for an even count); 0 if empty.
double Median(std::vector<double> values);

// A machine-readable line "RESULT <bench> <metric> <value> <target> <verdict>" that
// run_all.sh collects into its summary table. `target` is e.g. "<=4s" or "-" for none;
// `verdict` PASS, FAIL or "-".
void PrintResult(const std::string& bench, const std::string& metric, const std::string& value,
                 const std::string& target = "-", const std::string& verdict = "-");
std::string PassFail(bool ok);

}  // namespace verdictd::bench

#endif  // VERDICTD_BENCH_BENCH_SUPPORT_H_
