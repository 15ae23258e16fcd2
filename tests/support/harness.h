#ifndef VERDICTD_TESTS_SUPPORT_HARNESS_H_
#define VERDICTD_TESTS_SUPPORT_HARNESS_H_

// The real binaries for end-to-end tests: the simulated ClickPatrol over loopback HTTP and
// verdictd over loopback gRPC, each on a port chosen by the OS, with a SQLite file in a temp dir.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "tests/support/process.h"
#include "tests/support/wait_until.h"  // IWYU pragma: export
#include "verdict/v1/verdict.grpc.pb.h"

namespace verdictd::testing {

class Simulator {
 public:
  // Starts clickpatrol_sim on 127.0.0.1:0 with `token` and extra flags.
  Simulator(const TempDir& dir, std::string token = "sim-token",
            std::vector<std::string> extra_flags = {});

  int port() const { return port_; }
  std::string url() const;
  const std::string& token() const { return token_; }

  nlohmann::json Stats() const;
  // Requests to "/" received so far: the clicks ClickPatrol would bill.
  int64_t Requests() const { return Stats().at("requests").get<int64_t>(); }
  // Requests ClickPatrol is working on right now.
  int64_t InFlight() const { return Stats().at("in_flight").get<int64_t>(); }
  // POST /_sim/config with `config` (e.g. {"mode":"5xx"}).
  void Configure(const nlohmann::json& config) const;

 private:
  std::string token_;
  std::unique_ptr<ChildProcess> process_;
  int port_ = 0;
};

class Verdictd {
 public:
  // Starts verdictd against `upstream_url` with the token in CLICKPATROL_TOKEN, its database at
  // dir/verdicts.db (unless --db is among extra_flags), listening on 127.0.0.1:0.
  Verdictd(const TempDir& dir, const std::string& upstream_url, const std::string& token,
           std::vector<std::string> extra_flags = {});
  ~Verdictd();

  int port() const { return port_; }
  const std::string& db_path() const { return db_path_; }
  const std::string& log_path() const { return log_path_; }
  std::string Log() const { return ReadFileOrEmpty(log_path_); }
  verdict::v1::VerdictService::Stub& stub() { return *stub_; }
  // A new stub on its own channel (for concurrent callers), connected before it is returned
  // (for a plaintext server; against a TLS one it gives up after 10 s and returns the stub).
  std::unique_ptr<verdict::v1::VerdictService::Stub> NewStub() const;

  // SIGTERM and wait; the exit code.
  int Stop();
  // SIGKILL: a crash.
  void Crash();
  // The verdictd process's id (for /proc/PID/status).
  pid_t pid() const { return process_->pid(); }
  // Sends SIGTERM without waiting; Wait() for the exit.
  void Terminate();
  // Waits up to `timeout` for the process to exit; its exit code (128+signal if killed by one),
  // or DEADLINE_EXCEEDED if it is still running.
  absl::StatusOr<int> Wait(absl::Duration timeout);

 private:
  std::string db_path_;
  std::string log_path_;
  std::unique_ptr<ChildProcess> process_;
  int port_ = 0;
  std::unique_ptr<verdict::v1::VerdictService::Stub> stub_;  // connects lazily: TLS servers too
};

// A client context carrying `caller` as x-caller metadata, with a 30 s deadline.
std::unique_ptr<grpc::ClientContext> CallerContext(const std::string& caller = "e2e");

// Runs CheckIp; on error returns the status in `status`.
grpc::Status CheckIp(verdict::v1::VerdictService::Stub& stub, const std::string& ip,
                     verdict::v1::CheckIpResponse* response, const std::string& caller = "e2e",
                     const std::string& user_agent = "");

}  // namespace verdictd::testing

#endif  // VERDICTD_TESTS_SUPPORT_HARNESS_H_
