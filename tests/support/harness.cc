#include "tests/support/harness.h"

#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <stdexcept>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace verdictd::testing {
namespace {

// An idle gRPC client notices a server's GOAWAY only on its backup poller, every 5 s by
// default, and the server's graceful shutdown waits for that. Tests poll faster.
const bool kFastBackupPoll = [] {
  setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "50", /*overwrite=*/0);
  return true;
}();

httplib::Client SimClient(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  return client;
}

}  // namespace

Simulator::Simulator(const TempDir& dir, std::string token, std::vector<std::string> extra_flags)
    : token_(std::move(token)) {
  const std::string port_file = dir.File("sim.port");
  std::remove(port_file.c_str());  // a simulator started earlier in this dir wrote one too
  std::vector<std::string> argv = {SIM_BIN, "--listen=127.0.0.1:0", "--token=" + token_,
                                   "--port_file=" + port_file};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(argv, {}, dir.File("sim.log"));
  if (!process.ok()) {
    throw std::runtime_error(std::string(process.status().message()));
  }
  process_ = *std::move(process);
  absl::StatusOr<int> port = WaitForPortFile(port_file, *process_);
  if (!port.ok()) {
    throw std::runtime_error(absl::StrCat("simulator did not start: ", port.status().message(),
                                          "\n", ReadFileOrEmpty(dir.File("sim.log"))));
  }
  port_ = *port;
}

std::string Simulator::url() const { return absl::StrCat("http://127.0.0.1:", port_, "/"); }

nlohmann::json Simulator::Stats() const {
  httplib::Client client = SimClient(port_);
  httplib::Result result = client.Get("/_sim/stats");
  if (!result || result->status != 200) {
    throw std::runtime_error("GET /_sim/stats failed");
  }
  return nlohmann::json::parse(result->body);
}

void Simulator::Configure(const nlohmann::json& config) const {
  httplib::Client client = SimClient(port_);
  httplib::Result result = client.Post("/_sim/config", config.dump(), "application/json");
  if (!result || result->status != 200) {
    throw std::runtime_error("POST /_sim/config failed: " + config.dump());
  }
}

namespace {

std::shared_ptr<grpc::Channel> OwnPlaintextChannel(int port) {
  grpc::ChannelArguments args;
  // A separate connection per stub, so concurrent callers really are concurrent.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

}  // namespace

Verdictd::Verdictd(const TempDir& dir, const std::string& upstream_url, const std::string& token,
                   std::vector<std::string> extra_flags)
    : db_path_(dir.File("verdicts.db")), log_path_(dir.File("verdictd.log")) {
  const std::string port_file = dir.File("verdictd.port");
  std::remove(port_file.c_str());
  std::vector<std::string> argv = {VERDICTD_BIN, "--listen=127.0.0.1:0", "--port_file=" + port_file,
                                   "--upstream_url=" + upstream_url};
  bool has_db = false;
  for (const std::string& flag : extra_flags) {
    if (flag.rfind("--db=", 0) == 0) {
      has_db = true;
      db_path_ = flag.substr(5);
    }
  }
  if (!has_db) {
    argv.push_back("--db=" + db_path_);
  }
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(argv, {{"CLICKPATROL_TOKEN", token}}, log_path_);
  if (!process.ok()) {
    throw std::runtime_error(std::string(process.status().message()));
  }
  process_ = *std::move(process);
  absl::StatusOr<int> port = WaitForPortFile(port_file, *process_);
  if (!port.ok()) {
    throw std::runtime_error(absl::StrCat("verdictd did not start: ", port.status().message(), "\n",
                                          ReadFileOrEmpty(log_path_)));
  }
  port_ = *port;
  stub_ = verdict::v1::VerdictService::NewStub(OwnPlaintextChannel(port_));
}

Verdictd::~Verdictd() = default;

std::unique_ptr<verdict::v1::VerdictService::Stub> Verdictd::NewStub() const {
  std::shared_ptr<grpc::Channel> channel = OwnPlaintextChannel(port_);
  // Connected before it is handed out: channels connect lazily, and a connect attempt that
  // fails on a loaded machine would fail the first calls at once (fail-fast) instead of being
  // retried. Waiting here rides through such a failure with gRPC's reconnect backoff; a server
  // that is not there still fails the test's own calls.
  channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return verdict::v1::VerdictService::NewStub(std::move(channel));
}

int Verdictd::Stop() {
  absl::StatusOr<int> code = process_->Terminate();
  return code.ok() ? *code : -1;
}

void Verdictd::Crash() { process_->Kill(); }

void Verdictd::Terminate() { process_->Signal(SIGTERM); }

absl::StatusOr<int> Verdictd::Wait(absl::Duration timeout) { return process_->Wait(timeout); }

std::unique_ptr<grpc::ClientContext> CallerContext(const std::string& caller) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->AddMetadata("x-caller", caller);
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return context;
}

grpc::Status CheckIp(verdict::v1::VerdictService::Stub& stub, const std::string& ip,
                     verdict::v1::CheckIpResponse* response, const std::string& caller,
                     const std::string& user_agent) {
  verdict::v1::CheckIpRequest request;
  request.set_ip(ip);
  request.set_user_agent(user_agent);
  return stub.CheckIp(CallerContext(caller).get(), request, response);
}

}  // namespace verdictd::testing
