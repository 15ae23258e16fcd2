// The baseline for bench_hit: VerdictService::CheckIp on gRPC's callback API, answering a fixed
// CheckIpResponse (shaped like a verdictd cache hit) immediately. Same server defaults as
// verdictd, so the difference is verdictd's own work. It counts the CheckIp calls it answers (one
// relaxed atomic increment) and GetUsage reports that count as `requests` of one caller
// "trivial", so that bench_hit can check that every call h2load counted as HTTP 200 was a real
// gRPC answer. Everything else is UNIMPLEMENTED.

#include <signal.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "grpcpp/grpcpp.h"
#include "verdict/v1/verdict.grpc.pb.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "gRPC address; port 0 picks a free port");
ABSL_FLAG(std::string, port_file, "", "Write the bound port here once serving");

namespace {

namespace pb = ::verdict::v1;

class TrivialService final : public pb::VerdictService::CallbackService {
 public:
  TrivialService() {
    pb::Verdict* v = fixed_.mutable_verdict();
    v->set_ip("11.0.0.1");
    v->set_score(pb::SCORE_SAFE);
    v->mutable_checked_at()->set_seconds(1'795'000'000);
    v->mutable_checked_at()->set_nanos(505'072'000);
    v->set_user_agent("Mozilla/5.0");
    v->set_caller("bench");
    fixed_.set_source(pb::SOURCE_CACHE);
  }

  grpc::ServerUnaryReactor* CheckIp(grpc::CallbackServerContext* context,
                                    const pb::CheckIpRequest* request,
                                    pb::CheckIpResponse* response) override {
    *response = fixed_;
    answered_.fetch_add(1, std::memory_order_relaxed);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const pb::GetUsageRequest* request,
                                     pb::GetUsageResponse* response) override {
    pb::CallerUsage* usage = response->add_callers();
    usage->set_caller("trivial");
    usage->set_requests(answered_.load(std::memory_order_relaxed));
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  pb::CheckIpResponse fixed_;
  std::atomic<int64_t> answered_{0};
};

bool WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out) {
      return false;
    }
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  absl::ParseCommandLine(argc, argv);

  TrivialService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "trivial_server: cannot listen on " << absl::GetFlag(FLAGS_listen) << std::endl;
    return 1;
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty() && !WritePortFile(port_file, port)) {
    std::cerr << "trivial_server: cannot write " << port_file << std::endl;
    return 1;
  }
  std::cerr << "trivial_server listening on port " << port << std::endl;
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  return 0;
}
