// End-to-end graceful shutdown: SIGTERM turns health watchers NOT_SERVING for good, lets the calls
// in flight finish, and --shutdown_grace bounds how long it waits for them.

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/ops_fixture.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::ops {
namespace {

using ::testing::AnyOf;
using ::testing::Contains;
using ::testing::Not;

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

}  // namespace
}  // namespace verdictd::testing::ops
