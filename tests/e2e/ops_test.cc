// End-to-end operations: health, reflection, metrics, TLS and mutual TLS, graceful shutdown, the
// config file and JSON logs, all against the real verdictd binary, a SQLite file in a temp dir
// and the simulated ClickPatrol over loopback HTTP.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing {
namespace {

namespace pb = ::verdict::v1;
using ::testing::AnyOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// A distinctive token, so a leak is easy to grep for.
constexpr char kToken[] = "cp_OpsSecretToken_7c3e91d04a";

std::chrono::system_clock::time_point DeadlineIn(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

std::shared_ptr<grpc::Channel> PlainChannel(int port) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
}

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
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
constexpr int kServing = 1;
constexpr int kNotServing = 2;

// grpc.health.v1.Health/Check for the whole server (service ""), by hand: grpc++ ships no public
// health.pb.h. The request is an empty message; the response is field 1, a varint status
// (absent when 0, UNKNOWN). Returns the status, or -1 when the call fails or the bytes are not
// a HealthCheckResponse.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
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
WaitResult<int> WaitForHealth(const std::shared_ptr<grpc::Channel>& channel, int want,
                              absl::Duration timeout) {
  return WaitUntil(
      absl::StrCat("health status ", want), [&] { return HealthStatus(channel); },
      [want](int status) { return status == want; }, timeout, absl::Milliseconds(50));
}

// Waits for the next event on `cq`, which must be `want`: streams here run one operation at a
// time, so the next event is always the one just started (the context's deadline bounds every
// wait). Whether it succeeded.
bool AwaitTag(grpc::CompletionQueue& cq, intptr_t want) {
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
std::vector<std::string> ReflectionExchange(const std::shared_ptr<grpc::Channel>& channel,
                                            const std::string& request, grpc::Status* status) {
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
std::string Scrape(int port) {
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
std::map<std::string, double> ParseSamples(const std::string& text) {
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
int MetricsPortFromLog(const Verdictd& verdictd) {
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

// --- health --------------------------------------------------------------------------------

TEST_F(OpsTest, HealthFollowsTheStore) {
  StartVerdictd();
  std::shared_ptr<grpc::Channel> channel = PlainChannel(verdictd_->port());
  ASSERT_TRUE(WaitForHealth(channel, kServing, absl::Seconds(5)));

  // Moving the file away leaves the writer on an inode that the path no longer names.
  const std::string moved = verdictd_->db_path() + ".moved";
  ASSERT_EQ(std::rename(verdictd_->db_path().c_str(), moved.c_str()), 0);
  const WaitResult<int> down = WaitForHealth(channel, kNotServing, absl::Seconds(5));
  ASSERT_TRUE(down) << "with the database moved away";
  EXPECT_THAT(verdictd_->Log(), HasSubstr("NOT_SERVING"));

  ASSERT_EQ(std::rename(moved.c_str(), verdictd_->db_path().c_str()), 0);
  const WaitResult<int> up = WaitForHealth(channel, kServing, absl::Seconds(5));
  ASSERT_TRUE(up) << "with the database back";
  std::printf("[ measured ] NOT_SERVING after %s, SERVING again after %s\n",
              absl::FormatDuration(down.elapsed()).c_str(),
              absl::FormatDuration(up.elapsed()).c_str());

  // Back in service for real, not only in the health status.
  pb::CheckIpResponse r;
  EXPECT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r).ok());
}

TEST_F(OpsTest, HealthReplacedDatabaseIsNotServing) {
  StartVerdictd();
  std::shared_ptr<grpc::Channel> channel = PlainChannel(verdictd_->port());
  ASSERT_TRUE(WaitForHealth(channel, kServing, absl::Seconds(5)));
  // Another file under the same name: a different inode, so commits would be lost.
  const std::string moved = verdictd_->db_path() + ".moved";
  ASSERT_EQ(std::rename(verdictd_->db_path().c_str(), moved.c_str()), 0);
  WriteFile(verdictd_->db_path(), "this is not a database");
  EXPECT_TRUE(WaitForHealth(channel, kNotServing, absl::Seconds(5)))
      << "with garbage in place of the database";
}

// --- reflection ----------------------------------------------------------------------------

TEST_F(OpsTest, ReflectionListsServices) {
  StartVerdictd();
  grpc::Status status;
  // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
  const std::vector<std::string> responses =
      ReflectionExchange(PlainChannel(verdictd_->port()), std::string("\x3a\x00", 2), &status);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_THAT(responses[0], HasSubstr("verdict.v1.VerdictService"));
  EXPECT_THAT(responses[0], HasSubstr("grpc.health.v1.Health"));
  EXPECT_THAT(responses[0], HasSubstr("grpc.reflection.v1alpha.ServerReflection"));
}

// --- metrics -------------------------------------------------------------------------------

TEST_F(OpsTest, MetricsCountMissHitAndNeverShowTheToken) {
  StartVerdictd({"--metrics_listen=127.0.0.1:0"});
  const int metrics_port = MetricsPortFromLog(*verdictd_);
  ASSERT_GT(metrics_port, 0) << verdictd_->Log();

  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "ads").ok());
  ASSERT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  ASSERT_TRUE(CheckIp(verdictd_->stub(), "8.8.8.8", &r, "ads").ok());
  ASSERT_EQ(r.source(), pb::SOURCE_CACHE);

  const std::string scrape = Scrape(metrics_port);
  ASSERT_FALSE(scrape.empty());
  std::map<std::string, double> samples = ParseSamples(scrape);
  auto value = [&samples](const std::string& series) {
    auto it = samples.find(series);
    return it == samples.end() ? -1.0 : it->second;
  };
  EXPECT_EQ(value(R"(verdictd_clicks_total{caller="ads"})"), 1);
  EXPECT_EQ(value(R"(verdictd_answers_total{source="cache"})"), 1);
  EXPECT_EQ(value(R"(verdictd_answers_total{source="upstream"})"), 1);
  EXPECT_EQ(value(R"(verdictd_answers_total{source="stale"})"), 0);
  EXPECT_EQ(value(R"(verdictd_rpcs_total{method="CheckIp",code="OK"})"), 2);
  EXPECT_EQ(value(R"(verdictd_upstream_requests_total{outcome="verdict",http_status="200"})"), 1);
  EXPECT_EQ(value("verdictd_upstream_latency_seconds_count"), 1);
  EXPECT_GT(value("verdictd_upstream_latency_seconds_sum"), 0);
  EXPECT_EQ(value(R"(verdictd_upstream_latency_seconds_bucket{le="+Inf"})"), 1);
  EXPECT_THAT(scrape, Not(HasSubstr(kToken)));
  EXPECT_EQ(sim_->Requests(), 1);
}

// --- TLS -----------------------------------------------------------------------------------

// The full path of `program` in $PATH (RunCommand does not search it), or "".
std::string FindOnPath(const std::string& program) {
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
grpc::Status CheckIpOver(int port, const std::shared_ptr<grpc::ChannelCredentials>& credentials,
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

TEST_F(OpsTest, TlsServesTlsClientsAndRefusesPlaintext) {
  TestPki pki(dir_);
  ASSERT_TRUE(pki.Generate());
  StartVerdictd({"--tls_cert=" + pki.server_cert(), "--tls_key=" + pki.server_key()});
  EXPECT_THAT(verdictd_->Log(), HasSubstr("(port " + std::to_string(verdictd_->port()) + ", TLS)"));

  pb::CheckIpResponse r;
  grpc::Status status =
      CheckIpOver(verdictd_->port(), pki.Credentials(false), absl::Seconds(10), &r);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(r.verdict().ip(), "1.1.1.1");

  const absl::Time start = absl::Now();
  status = CheckIpOver(verdictd_->port(), grpc::InsecureChannelCredentials(), absl::Seconds(5), &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(sim_->Requests(), 1);
}

TEST_F(OpsTest, MutualTlsRequiresAClientCertificate) {
  TestPki pki(dir_);
  ASSERT_TRUE(pki.Generate());
  StartVerdictd({"--tls_cert=" + pki.server_cert(), "--tls_key=" + pki.server_key(),
                 "--tls_client_ca=" + pki.ca()});
  EXPECT_THAT(verdictd_->Log(), HasSubstr("mutual TLS"));

  pb::CheckIpResponse r;
  grpc::Status status =
      CheckIpOver(verdictd_->port(), pki.Credentials(false), absl::Seconds(5), &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(sim_->Requests(), 0);

  status = CheckIpOver(verdictd_->port(), pki.Credentials(true), absl::Seconds(10), &r);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(r.verdict().ip(), "1.1.1.1");
  EXPECT_EQ(sim_->Requests(), 1);
}

// --- graceful shutdown ---------------------------------------------------------------------

// `count` concurrent CheckIp misses (11.0.0.1, 11.0.0.2, ...) on their own connections.
class ConcurrentMisses {
 public:
  ConcurrentMisses(Verdictd& verdictd, int count)
      : statuses_(count), responses_(count), ended_(count) {
    for (int i = 0; i < count; ++i) {
      stubs_.push_back(verdictd.NewStub());
    }
    for (int i = 0; i < count; ++i) {
      threads_.emplace_back([this, i] {
        statuses_[i] = CheckIp(*stubs_[i], absl::StrCat("11.0.0.", i + 1), &responses_[i]);
        ended_[i] = absl::Now();
      });
    }
  }
  ~ConcurrentMisses() { Join(); }

  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) {
        t.join();
      }
    }
  }
  const std::vector<grpc::Status>& statuses() const { return statuses_; }
  const std::vector<pb::CheckIpResponse>& responses() const { return responses_; }
  // When the last call returned (after Join).
  absl::Time LastEnded() const { return *std::max_element(ended_.begin(), ended_.end()); }

 private:
  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs_;
  std::vector<grpc::Status> statuses_;
  std::vector<pb::CheckIpResponse> responses_;
  std::vector<absl::Time> ended_;
  std::vector<std::thread> threads_;
};

// Polls the simulator until `want` requests are in flight there.
WaitResult<int64_t> WaitForInFlight(const Simulator& sim, int64_t want, absl::Duration timeout) {
  return WaitUntil(
      absl::StrCat(want, " requests in flight at the simulator"), [&] { return sim.InFlight(); },
      [want](int64_t in_flight) { return in_flight >= want; }, timeout, absl::Milliseconds(10));
}

// SIGTERM tells health watchers (load balancers) NOT_SERVING, and it stays so while in-flight
// calls drain: the store watcher must not turn it back to SERVING.
TEST_F(OpsTest, ShutdownTurnsHealthWatchersNotServingForGood) {
  StartVerdictd({"--shutdown_grace=3s"});
  std::shared_ptr<grpc::Channel> channel = PlainChannel(verdictd_->port());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(absl::Seconds(20)));
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub.PrepareCall(&context, "/grpc.health.v1.Health/Watch", &cq);
  auto await = [&cq](intptr_t want) { return AwaitTag(cq, want); };
  const std::string kServing("\x08\x01", 2);
  const std::string kNotServing("\x08\x02", 2);
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(await(1));
  call->Write(ToByteBuffer(""), reinterpret_cast<void*>(2));  // service "": the whole server
  ASSERT_TRUE(await(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(await(3));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  ASSERT_TRUE(await(4));
  ASSERT_EQ(FromByteBuffer(response), kServing);

  int exit_code = -1;
  std::thread stopper([&] { exit_code = verdictd_->Stop(); });
  // Everything the watcher hears until the server ends the stream (at the 3 s grace).
  std::vector<std::string> heard;
  call->Read(&response, reinterpret_cast<void*>(4));
  while (await(4)) {
    heard.push_back(FromByteBuffer(response));
    call->Read(&response, reinterpret_cast<void*>(4));
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  await(5);
  stopper.join();
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  ASSERT_FALSE(heard.empty()) << "no status after SIGTERM; stream ended with "
                              << status.error_message();
  EXPECT_EQ(heard.front(), kNotServing);
  EXPECT_THAT(heard, Not(Contains(kServing))) << "SERVING again during shutdown";
  EXPECT_EQ(exit_code, 0);
}

TEST_F(OpsTest, ShutdownLetsInFlightCallsFinish) {
  // 2 s of upstream latency leaves a wide window to see all five requests in flight.
  StartSimulator({"--latency=2s"});
  StartVerdictd();
  ConcurrentMisses misses(*verdictd_, 5);
  ASSERT_TRUE(WaitForInFlight(*sim_, 5, absl::Seconds(10))) << sim_->Stats().dump();

  const absl::Time start = absl::Now();
  EXPECT_EQ(verdictd_->Stop(), 0) << verdictd_->Log();
  const absl::Duration stop_took = absl::Now() - start;
  misses.Join();
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(misses.statuses()[i].ok())
        << misses.statuses()[i].error_code() << " " << misses.statuses()[i].error_message();
    EXPECT_EQ(misses.responses()[i].source(), pb::SOURCE_UPSTREAM);
    EXPECT_EQ(misses.responses()[i].verdict().ip(), absl::StrCat("11.0.0.", i + 1));
    EXPECT_NE(misses.responses()[i].verdict().score(), pb::SCORE_UNSPECIFIED);
  }
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM verdicts"), 5);
  EXPECT_EQ(QueryInt(verdictd_->db_path(), "SELECT count(*) FROM clicks"), 5);
  EXPECT_EQ(sim_->Requests(), 5);
  std::printf("[ measured ] graceful stop with 5 calls in flight took %s\n",
              absl::FormatDuration(stop_took).c_str());
}

// Past --shutdown_grace, in-flight calls are cancelled: callers get their error at about the
// grace, not when the slow ClickPatrol answers (3 s), and the process exits cleanly. (The exit
// itself still waits for the upstream requests already sent, whose clicks are paid for, so it is
// bounded by the upstream latency here, not by the grace.)
TEST_F(OpsTest, ShutdownGraceBoundsTheWait) {
  StartSimulator({"--latency=3s"});
  StartVerdictd({"--shutdown_grace=200ms"});
  ConcurrentMisses misses(*verdictd_, 2);
  ASSERT_TRUE(WaitForInFlight(*sim_, 2, absl::Seconds(10))) << sim_->Stats().dump();

  const absl::Time start = absl::Now();
  EXPECT_EQ(verdictd_->Stop(), 0) << verdictd_->Log();
  const absl::Duration stop_took = absl::Now() - start;
  misses.Join();
  const absl::Duration callers_took = misses.LastEnded() - start;
  std::printf(
      "[ measured ] stop with grace 200ms and 3 s upstream took %s; callers ended after %s\n",
      absl::FormatDuration(stop_took).c_str(), absl::FormatDuration(callers_took).c_str());
  EXPECT_LT(stop_took, absl::Seconds(5));
  // Well below the 3 s upstream latency: the grace, not ClickPatrol, ended the calls.
  EXPECT_LT(callers_took, absl::Milliseconds(2500)) << "callers waited past the grace";
  for (const grpc::Status& status : misses.statuses()) {
    EXPECT_THAT(status.error_code(),
                AnyOf(grpc::StatusCode::CANCELLED, grpc::StatusCode::UNAVAILABLE))
        << status.error_message();
  }
}

// --- config file ---------------------------------------------------------------------------

TEST_F(OpsTest, ConfigFileSetsFlagsAndCommandLineOverrides) {
  const std::string config = dir_.File("verdictd.json");
  WriteFile(config, R"({"max_age": "1h", "max_batch": 5})");
  StartVerdictd({"--config=" + config});
  pb::GetServerInfoResponse info;
  grpc::Status status =
      verdictd_->stub().GetServerInfo(CallerContext().get(), pb::GetServerInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.max_batch(), 5);
  EXPECT_THAT(verdictd_->Log(), HasSubstr("max_age=1h"));

  StartVerdictd({"--config=" + config, "--max_batch=7"});
  status =
      verdictd_->stub().GetServerInfo(CallerContext().get(), pb::GetServerInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.max_batch(), 7);
  EXPECT_THAT(verdictd_->Log(), HasSubstr("max_age=1h")) << "the rest of the file still applies";
}

// Runs verdictd with `config` as its config file until it exits; its exit code and output.
struct StartupResult {
  int exit_code = -1;
  std::string log;
};
StartupResult StartWithConfig(const TempDir& dir, const std::string& config) {
  const std::string path = dir.File("bad.json");
  WriteFile(path, config);
  const std::string log = dir.File("bad.log");
  std::remove(log.c_str());
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + dir.File("bad.db"), "--config=" + path},
      {{"CLICKPATROL_TOKEN", kToken}}, log);
  StartupResult result;
  if (!process.ok()) {
    ADD_FAILURE() << process.status();
    return result;
  }
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  EXPECT_TRUE(code.ok()) << "verdictd kept running with config " << config;
  result.exit_code = code.ok() ? *code : -1;
  result.log = ReadFileOrEmpty(log);
  return result;
}

TEST_F(OpsTest, ConfigFileErrorsAreFatalAndNamed) {
  StartupResult unknown = StartWithConfig(dir_, R"({"max_age": "1h", "no_such_flag_xyz": 3})");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.log, HasSubstr("no_such_flag_xyz"));

  StartupResult token = StartWithConfig(dir_, R"({"token": "x"})");
  EXPECT_EQ(token.exit_code, 2);
  EXPECT_THAT(token.log, HasSubstr("\"token\""));
  EXPECT_THAT(token.log, HasSubstr("ClickPatrol token"));

  StartupResult bad_value = StartWithConfig(dir_, R"({"max_age": "soon"})");
  EXPECT_EQ(bad_value.exit_code, 2);
  EXPECT_THAT(bad_value.log, HasSubstr("max_age"));
  EXPECT_THAT(bad_value.log, HasSubstr("soon"));

  for (const StartupResult* r : {&unknown, &token, &bad_value}) {
    EXPECT_THAT(r->log, Not(HasSubstr("listening on")));
    EXPECT_THAT(r->log, Not(HasSubstr(kToken)));
  }
}

// --- JSON logs -----------------------------------------------------------------------------

// Every line, including what gRPC core logs on its own (a failed TLS handshake), is one JSON
// object with ts, level and msg.
TEST_F(OpsTest, JsonLogLinesAreObjects) {
  TestPki pki(dir_);
  ASSERT_TRUE(pki.Generate());
  StartVerdictd(
      {"--log_format=json", "--tls_cert=" + pki.server_cert(), "--tls_key=" + pki.server_key()});
  pb::CheckIpResponse r;
  grpc::Status status =
      CheckIpOver(verdictd_->port(), pki.Credentials(false), absl::Seconds(10), &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // A plaintext client: gRPC core itself logs the failed handshake.
  status = CheckIpOver(verdictd_->port(), grpc::InsecureChannelCredentials(), absl::Seconds(5), &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_EQ(verdictd_->Stop(), 0);

  const std::string log = verdictd_->Log();
  int lines = 0;
  bool saw_listening = false;
  bool saw_upstream = false;
  bool saw_handshake = false;
  bool saw_stopped = false;
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    ++lines;
    SCOPED_TRACE(line);
    nlohmann::json object = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(object.is_object());
    ASSERT_TRUE(object.contains("ts") && object["ts"].is_string());
    ASSERT_TRUE(object.contains("level") && object["level"].is_string());
    ASSERT_TRUE(object.contains("msg") && object["msg"].is_string());
    const std::string msg = object["msg"].get<std::string>();
    saw_listening = saw_listening || absl::StrContains(msg, "listening on");
    saw_upstream = saw_upstream || absl::StrContains(msg, "upstream caller=tls ip=1.1.1.1");
    saw_handshake = saw_handshake || absl::StrContains(msg, "Handshake failed");
    saw_stopped = saw_stopped || absl::StrContains(msg, "verdictd stopped");
  }
  EXPECT_GE(lines, 4);
  EXPECT_TRUE(saw_listening);
  EXPECT_TRUE(saw_upstream);
  EXPECT_TRUE(saw_handshake) << "gRPC's own log line is missing; the test no longer covers it";
  EXPECT_TRUE(saw_stopped);
  EXPECT_THAT(log, Not(HasSubstr(kToken)));
}

}  // namespace
}  // namespace verdictd::testing
