#ifndef VERDICTD_TESTS_E2E_OPS_FIXTURE_H_
#define VERDICTD_TESTS_E2E_OPS_FIXTURE_H_

// What the operations tests (ops_*_test.cc) share: the OpsTest fixture (verdictd and a simulator
// it can restart), plain and TLS channels, the health and reflection services spoken through the
// generic stub, /metrics scraping, and a throwaway PKI made with the openssl CLI.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"

namespace verdictd::testing::ops {

namespace pb = ::verdict::v1;

// A distinctive token, so a leak is easy to grep for.
inline constexpr char kToken[] = "cp_OpsSecretToken_7c3e91d04a";

inline std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

inline void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

inline std::shared_ptr<grpc::Channel> PlainChannel(int port) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
}

inline grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

inline std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (buffer.Dump(&slices).ok()) {
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
  }
  return bytes;
}

// grpc.health.v1.HealthCheckResponse.ServingStatus values.
inline constexpr int kServing = 1;
inline constexpr int kNotServing = 2;

// grpc.health.v1.Health/Check for the whole server (service ""), by hand: grpc++ ships no public
// health.pb.h. The request is an empty message; the response is field 1, a varint status
// (absent when 0, UNKNOWN). Returns the status, or -1 when the call fails or the bytes are not
// a HealthCheckResponse.
inline int HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(absl::Seconds(2)));
  const grpc::ByteBuffer request = ToByteBuffer("");
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) {
    return -1;
  }
  const std::string bytes = FromByteBuffer(response);
  if (bytes.empty()) {
    return 0;
  }
  // Tag 0x08 (field 1, varint) and a one-byte value: every defined status fits.
  if (bytes.size() != 2 || bytes[0] != 0x08 || (bytes[1] & 0x80) != 0) {
    return -1;
  }
  return bytes[1];
}

// Polls the health status until it is `want`; elapsed() is the time that took.
inline WaitResult<int> WaitForHealth(const std::shared_ptr<grpc::Channel>& channel, int want,
                                     absl::Duration timeout) {
  return WaitUntil(
      absl::StrCat("health status ", want), [&] { return HealthStatus(channel); },
      [want](int status) { return status == want; }, timeout, absl::Milliseconds(50));
}

// Waits for the next event on `cq`, which must be `want`: streams here run one operation at a
// time, so the next event is always the one just started (the context's deadline bounds every
// wait). Whether it succeeded.
inline bool AwaitTag(grpc::CompletionQueue& cq, intptr_t want) {
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok)) {
    return false;
  }
  EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
  return ok;
}

// Every response message of one ServerReflectionInfo stream that sends `request` and then
// half-closes; `status` gets the call's status.
inline std::vector<std::string> ReflectionExchange(const std::shared_ptr<grpc::Channel>& channel,
                                                   const std::string& request,
                                                   grpc::Status* status) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(absl::Seconds(10)));
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto await = [&cq](intptr_t want) { return AwaitTag(cq, want); };
  std::vector<std::string> responses;
  call->StartCall(reinterpret_cast<void*>(1));
  if (await(1)) {
    call->Write(ToByteBuffer(request), reinterpret_cast<void*>(2));
    if (await(2)) {
      call->WritesDone(reinterpret_cast<void*>(3));
      if (await(3)) {
        grpc::ByteBuffer response;
        call->Read(&response, reinterpret_cast<void*>(4));
        while (await(4)) {
          responses.push_back(FromByteBuffer(response));
          call->Read(&response, reinterpret_cast<void*>(4));
        }
      }
    }
  }
  call->Finish(status, reinterpret_cast<void*>(5));
  await(5);
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return responses;
}

// GET /metrics; the body, or "" on failure.
inline std::string Scrape(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  httplib::Result result = client.Get("/metrics");
  if (!result || result->status != 200) {
    return "";
  }
  return result->body;
}

// Samples of a Prometheus text exposition: "name{labels}" -> value.
inline std::map<std::string, double> ParseSamples(const std::string& text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "#")) {
      continue;
    }
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &value)) {
      ADD_FAILURE() << "malformed sample line: " << line;
      continue;
    }
    samples[std::string(line.substr(0, space))] = value;
  }
  return samples;
}

// Polls the log until it has "metrics at http://... (port N)"; N, or 0 on timeout.
inline int MetricsPortFromLog(const Verdictd& verdictd) {
  const std::string marker = "/metrics (port ";
  auto port_in_log = [&] {
    const std::string log = verdictd.Log();
    const size_t at = log.find(marker);
    int port = 0;
    if (at != std::string::npos) {
      const size_t start = at + marker.size();
      const size_t end = log.find(')', start);
      if (end == std::string::npos || !absl::SimpleAtoi(log.substr(start, end - start), &port)) {
        port = 0;
      }
    }
    return port;
  };
  return WaitUntil(
             "the metrics port in the log", port_in_log, [](int port) { return port > 0; },
             absl::Seconds(10))
      .last();
}

class OpsTest : public ::testing::Test {
 protected:
  void StartVerdictd(std::vector<std::string> flags = {}) {
    verdictd_.reset();
    verdictd_ = std::make_unique<Verdictd>(dir_, sim_->url(), kToken, std::move(flags));
  }
  void StartSimulator(std::vector<std::string> flags) {
    // Simulator reads dir/sim.port as soon as it starts, so the previous one's port must go.
    sim_.reset();
    std::remove(dir_.File("sim.port").c_str());
    sim_ = std::make_unique<Simulator>(dir_, kToken, std::move(flags));
  }

  TempDir dir_;
  std::unique_ptr<Simulator> sim_ = std::make_unique<Simulator>(dir_, kToken);
  std::unique_ptr<Verdictd> verdictd_;
};

// The full path of `program` in $PATH (RunCommand does not search it), or "".
inline std::string FindOnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir :
       absl::StrSplit(path == nullptr ? "/usr/bin:/bin" : path, ':', absl::SkipEmpty())) {
    const std::string candidate = absl::StrCat(dir, "/", program);
    if (access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with the
// openssl CLI in `dir`.
class TestPki {
 public:
  explicit TestPki(const TempDir& dir) : dir_(dir) {}

  std::string ca() const { return dir_.File("ca.pem"); }
  std::string server_cert() const { return dir_.File("server.pem"); }
  std::string server_key() const { return dir_.File("server.key"); }
  std::string client_cert() const { return dir_.File("client.pem"); }
  std::string client_key() const { return dir_.File("client.key"); }

  // Makes every file; a test failure (and false) if any openssl command fails.
  bool Generate() const {
    const std::string cnf = dir_.File("openssl.cnf");
    WriteFile(cnf,
              "[req]\n"
              "distinguished_name = dn\n"
              "prompt = no\n"
              "[dn]\n"
              "CN = unused\n"
              "[ca_ext]\n"
              "basicConstraints = critical, CA:TRUE\n"
              "keyUsage = critical, keyCertSign, cRLSign\n"
              "subjectKeyIdentifier = hash\n"
              "[server_ext]\n"
              "basicConstraints = critical, CA:FALSE\n"
              "keyUsage = critical, digitalSignature, keyEncipherment\n"
              "extendedKeyUsage = serverAuth\n"
              "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
              "[client_ext]\n"
              "basicConstraints = critical, CA:FALSE\n"
              "keyUsage = critical, digitalSignature, keyEncipherment\n"
              "extendedKeyUsage = clientAuth\n");
    const std::vector<std::string> ec = {"-newkey", "ec", "-pkeyopt",
                                         "ec_paramgen_curve:prime256v1", "-nodes"};
    const std::string openssl = FindOnPath("openssl");
    if (openssl.empty()) {
      ADD_FAILURE() << "openssl is not on PATH";
      return false;
    }
    auto req = [&](std::vector<std::string> argv) {
      std::vector<std::string> full = {openssl, "req", "-config", cnf};
      full.insert(full.end(), ec.begin(), ec.end());
      full.insert(full.end(), argv.begin(), argv.end());
      return Run(full);
    };
    auto sign = [&](const std::string& name, const std::string& ext, const std::string& serial) {
      return Run({openssl, "x509", "-req", "-in", dir_.File(name + ".csr"), "-CA", ca(), "-CAkey",
                  dir_.File("ca.key"), "-set_serial", serial, "-days", "2", "-extfile", cnf,
                  "-extensions", ext, "-out", dir_.File(name + ".pem")});
    };
    return req({"-x509", "-days", "2", "-subj", "/CN=verdictd ops test CA", "-extensions", "ca_ext",
                "-keyout", dir_.File("ca.key"), "-out", ca()}) &&
           req({"-subj", "/CN=localhost", "-keyout", server_key(), "-out",
                dir_.File("server.csr")}) &&
           sign("server", "server_ext", "2") &&
           req({"-subj", "/CN=ops-test-client", "-keyout", client_key(), "-out",
                dir_.File("client.csr")}) &&
           sign("client", "client_ext", "3");
  }

  std::shared_ptr<grpc::ChannelCredentials> Credentials(bool with_client_cert) const {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadFileOrEmpty(ca());
    if (with_client_cert) {
      options.pem_private_key = ReadFileOrEmpty(client_key());
      options.pem_cert_chain = ReadFileOrEmpty(client_cert());
    }
    return grpc::SslCredentials(options);
  }

 private:
  static bool Run(const std::vector<std::string>& argv) {
    absl::StatusOr<CommandResult> result = RunCommand(argv, "", {}, absl::Seconds(30));
    if (!result.ok() || result->exit_code != 0) {
      ADD_FAILURE() << absl::StrJoin(argv, " ") << ": "
                    << (result.ok() ? result->err : std::string(result.status().message()));
      return false;
    }
    return true;
  }

  const TempDir& dir_;
};

// CheckIp on a new channel with `credentials`, bounded by `timeout`.
inline grpc::Status CheckIpOver(int port,
                                const std::shared_ptr<grpc::ChannelCredentials>& credentials,
                                absl::Duration timeout, pb::CheckIpResponse* response) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::unique_ptr<pb::VerdictService::Stub> stub = pb::VerdictService::NewStub(
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), credentials, args));
  grpc::ClientContext context;
  context.AddMetadata("x-caller", "tls");
  context.set_deadline(DeadlineIn(timeout));
  pb::CheckIpRequest request;
  request.set_ip("1.1.1.1");
  return stub->CheckIp(&context, request, response);
}

}  // namespace verdictd::testing::ops

#endif  // VERDICTD_TESTS_E2E_OPS_FIXTURE_H_
