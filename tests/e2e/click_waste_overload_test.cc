// End-to-end: under shutdown and overload, nothing is spent that need not be: SIGTERM drops the
// unsent misses and sends nothing more, a full queue in front of ClickPatrol fails new misses
// fast and free, and a flood of cold batches keeps memory bounded and the server responsive.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/click_waste_fixture.h"

namespace verdictd::testing::click_waste {
namespace {

using ::testing::HasSubstr;

// --- SIGTERM -----------------------------------------------------------------------------------

// 400 misses from 4 callers queue behind 4 slots to a ClickPatrol that takes 1 s. SIGTERM comes
// about 0.1 s after the first 4 requests left: verdictd must drop the 396 unsent misses at once
// (UNAVAILABLE), let the 4 in flight finish within --shutdown_grace=2s and exit 0 — sending
// nothing after the signal. The next slot would free about 0.9 s after the signal, so a request
// counted after it is a miss sent during shutdown, not a race with the signal.
TEST_F(ClickWasteTest, SigtermDropsUnsentMissesAndSendsNothingMore) {
  constexpr int kConcurrency = 4;
  constexpr int kCallers = 4;
  constexpr int kPerCaller = 100;
  const absl::Duration kGrace = absl::Seconds(2);
  Verdictd verdictd(dir_, sim_.url(), kToken,
                    {absl::StrCat("--upstream_concurrency=", kConcurrency), "--shutdown_grace=2s"});
  const std::string db = verdictd.db_path();
  sim_.Configure({{"latency_ms", 1000}});

  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  for (int c = 0; c < kCallers; ++c) {
    stubs.push_back(verdictd.NewStub());
  }
  std::vector<grpc::Status> statuses(kCallers);
  std::vector<pb::CheckBatchResponse> responses(kCallers);
  absl::BlockingCounter ready(kCallers);
  absl::Notification go;
  std::vector<std::thread> threads;
  JoinAll join(threads);
  for (int c = 0; c < kCallers; ++c) {
    threads.emplace_back([&, c] {
      Connect(*stubs[c]);
      const pb::CheckBatchRequest batch = ColdBatch(24, c * kPerCaller, kPerCaller);
      ready.DecrementCount();
      go.WaitForNotification();
      statuses[c] = stubs[c]->CheckBatch(
          ContextFor(absl::Seconds(15), absl::StrCat("caller-", c)).get(), batch, &responses[c]);
    });
  }
  ready.Wait();
  go.Notify();
  ASSERT_TRUE(WaitUntil(
      absl::StrCat(kConcurrency, " requests in flight at ClickPatrol"),
      [&] { return SimInFlight(); }, [&](int64_t in_flight) { return in_flight == kConcurrency; },
      absl::Seconds(5), absl::Milliseconds(5)))
      << "ClickPatrol never had " << kConcurrency << " requests in flight";
  // Not a poll: nothing outside verdictd shows the queue, so this gives every batch the time to
  // arrive and queue its misses before the signal.
  absl::SleepFor(absl::Milliseconds(100));

  const int64_t at_signal = sim_.Requests();
  const absl::Time signalled = absl::Now();
  verdictd.Terminate();
  const absl::StatusOr<int> exit_code = verdictd.Wait(absl::Seconds(20));
  const absl::Duration exited_after = absl::Now() - signalled;
  join.Join();
  const int64_t requests = sim_.Requests();
  RecordProperty("requests_at_signal", static_cast<int>(at_signal));
  RecordProperty("requests_after_signal", static_cast<int>(requests - at_signal));
  RecordProperty("exit_ms", static_cast<int>(absl::ToInt64Milliseconds(exited_after)));
  std::printf("[ measured ] SIGTERM: %lld requests before it, %lld after; exited after %s\n",
              static_cast<long long>(at_signal), static_cast<long long>(requests - at_signal),
              absl::FormatDuration(exited_after).c_str());

  ASSERT_TRUE(exit_code.ok()) << "verdictd did not exit: " << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << verdictd.Log();
  EXPECT_LE(exited_after, kGrace + absl::Seconds(1));
  EXPECT_EQ(at_signal, kConcurrency);
  EXPECT_EQ(requests - at_signal, 0) << "misses not sent before SIGTERM were sent after it";

  int answered = 0;
  int dropped = 0;
  for (int c = 0; c < kCallers; ++c) {
    SCOPED_TRACE(absl::StrCat("caller-", c));
    if (!statuses[c].ok()) {
      // The whole call may fail instead of per item, but only as "unavailable".
      EXPECT_EQ(statuses[c].error_code(), grpc::StatusCode::UNAVAILABLE)
          << statuses[c].error_message();
      dropped += kPerCaller;
      continue;
    }
    ASSERT_EQ(responses[c].results_size(), kPerCaller);
    for (const pb::CheckBatchResult& item : responses[c].results()) {
      if (item.has_result()) {
        ++answered;
        EXPECT_EQ(item.result().source(), pb::SOURCE_UPSTREAM);
      } else {
        ++dropped;
        EXPECT_EQ(ItemCode(item), grpc::StatusCode::UNAVAILABLE) << item.error().message();
      }
    }
  }
  std::printf("[ measured ] SIGTERM: %d items answered, %d dropped\n", answered, dropped);
  EXPECT_LE(answered, requests) << "an item reported a verdict that was never asked for";
  EXPECT_GE(dropped, kCallers * kPerCaller - requests);

  // verdictd has exited: its ledger is final.
  EXPECT_EQ(PendingRows(db), 0) << "requests in flight at the signal were not completed";
  EXPECT_EQ(SpentRows(db), requests);
}

// --- the queue in front of ClickPatrol is bounded ----------------------------------------------

// ClickPatrol hangs. With 4 slots and --max_queued_misses=50, a batch of 200 puts 4 in flight, 50
// in the queue, and the other 146 fail fast at no cost. While the queue is full, a new miss —
// alone or in a batch — fails RESOURCE_EXHAUSTED at once, and only the 4 in-flight requests were
// sent or written to the ledger (pending, as ClickPatrol has not answered).
TEST_F(ClickWasteTest, FullQueueFailsNewMissesFastAndFree) {
  constexpr int kConcurrency = 4;
  constexpr int kMaxQueued = 50;
  Verdictd verdictd(dir_, sim_.url(), kToken,
                    {absl::StrCat("--upstream_concurrency=", kConcurrency),
                     absl::StrCat("--max_queued_misses=", kMaxQueued)});
  const std::string db = verdictd.db_path();
  std::unique_ptr<pb::VerdictService::Stub> flood_stub = verdictd.NewStub();
  Connect(*flood_stub);
  Connect(verdictd.stub());
  sim_.Configure({{"mode", "hang"}});

  grpc::Status flood_status;
  std::vector<std::thread> threads;
  JoinAll join(threads);
  threads.emplace_back([&] {
    pb::CheckBatchResponse response;
    flood_status = flood_stub->CheckBatch(ContextFor(absl::Seconds(3)).get(), ColdBatch(25, 0, 200),
                                          &response);
  });
  ASSERT_TRUE(WaitUntil(
      absl::StrCat(kConcurrency, " requests in flight at ClickPatrol"),
      [&] { return SimInFlight(); }, [&](int64_t in_flight) { return in_flight == kConcurrency; },
      absl::Seconds(2), absl::Milliseconds(5)))
      << "ClickPatrol never had " << kConcurrency << " requests in flight";
  // Not a poll: nothing outside verdictd shows the queue, so this gives the rest of the batch
  // the time to be queued or refused before the queue is probed.
  absl::SleepFor(absl::Milliseconds(200));

  // A single new miss.
  pb::CheckIpRequest single;
  single.set_ip(ColdIp(26, 1));
  pb::CheckIpResponse single_response;
  absl::Time start = absl::Now();
  const grpc::Status single_status =
      verdictd.stub().CheckIp(ContextFor(absl::Seconds(2)).get(), single, &single_response);
  const absl::Duration single_took = absl::Now() - start;
  EXPECT_EQ(single_status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << single_status.error_message();
  EXPECT_THAT(single_status.error_message(), HasSubstr(kQueueFull));
  EXPECT_LT(single_took, absl::Milliseconds(500));

  // A batch of new misses: answered at once, every item refused.
  pb::CheckBatchResponse batch_response;
  start = absl::Now();
  const grpc::Status batch_status = verdictd.stub().CheckBatch(
      ContextFor(absl::Seconds(2)).get(), ColdBatch(26, 100, 10), &batch_response);
  const absl::Duration batch_took = absl::Now() - start;
  ASSERT_TRUE(batch_status.ok()) << batch_status.error_message();
  EXPECT_LT(batch_took, absl::Milliseconds(500));
  ASSERT_EQ(batch_response.results_size(), 10);
  for (const pb::CheckBatchResult& item : batch_response.results()) {
    ASSERT_TRUE(item.has_error());
    EXPECT_EQ(ItemCode(item), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(item.error().message(), HasSubstr(kQueueFull));
  }
  RecordProperty("single_ms", static_cast<int>(absl::ToInt64Milliseconds(single_took)));
  std::printf("[ measured ] full queue: a new miss refused in %s, a batch of 10 in %s\n",
              absl::FormatDuration(single_took).c_str(), absl::FormatDuration(batch_took).c_str());

  EXPECT_EQ(sim_.Requests(), kConcurrency) << "only the requests in flight were sent";
  EXPECT_EQ(LedgerRows(db), kConcurrency) << "queued and refused misses have no ledger row";
  EXPECT_EQ(PendingRows(db), kConcurrency);

  join.Join();
  EXPECT_EQ(flood_status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << flood_status.error_message();
  EXPECT_EQ(sim_.Requests(), kConcurrency);
}

// 50 callers each send a batch of 1000 cold IPs to a hanging ClickPatrol (32 slots, default
// queue bound): 50,000 misses at once. verdictd's memory stays bounded (peak VmRSS under 200 MB),
// only the requests in flight are sent, and it keeps answering other calls during the flood.
TEST_F(ClickWasteTest, FloodOfColdBatchesKeepsMemoryBoundedAndServerResponsive) {
  constexpr int kConcurrency = 32;
  constexpr int kCallers = 50;
  constexpr int kItems = 1000;
#if defined(__SANITIZE_ADDRESS__)
  // Under ASan (scripts/sanitize.sh) freed memory sits in a quarantine of up to 256 MB and
  // shadow memory comes on top: only the bound itself is checked there. The figure in the README
  // is the plain build's.
  constexpr int64_t kLimitKib = 1024 * 1024;
#else
  constexpr int64_t kLimitKib = 200 * 1024;
#endif
  Verdictd verdictd(dir_, sim_.url(), kToken,
                    {absl::StrCat("--upstream_concurrency=", kConcurrency)});
  const pid_t pid = verdictd.pid();
  const std::string stored_ip = ColdIp(27, 1);
  pb::CheckIpResponse stored;
  ASSERT_TRUE(CheckIp(verdictd.stub(), stored_ip, &stored).ok());  // answers from cache later
  sim_.Configure({{"mode", "hang"}});

  std::vector<std::unique_ptr<pb::VerdictService::Stub>> stubs;
  std::vector<pb::CheckBatchRequest> batches;
  for (int c = 0; c < kCallers; ++c) {
    stubs.push_back(verdictd.NewStub());
    batches.push_back(ColdBatch(28, c * kItems, kItems));  // 11.28.0.0 - 11.28.195.79
  }
  std::vector<grpc::Status> statuses(kCallers);
  std::vector<pb::CheckBatchResponse> responses(kCallers);
  std::atomic<int> outstanding{kCallers};
  absl::BlockingCounter ready(kCallers);
  absl::Notification go;
  int64_t peak_kib = 0;
  bool probed = false;
  grpc::Status info_status;
  grpc::Status cached_status;
  absl::Duration info_took;
  absl::Duration cached_took;
  pb::CheckIpResponse cached;
  std::vector<std::thread> threads;
  JoinAll join(threads);
  for (int c = 0; c < kCallers; ++c) {
    threads.emplace_back([&, c] {
      Connect(*stubs[c]);
      ready.DecrementCount();
      go.WaitForNotification();
      statuses[c] =
          stubs[c]->CheckBatch(ContextFor(absl::Seconds(5)).get(), batches[c], &responses[c]);
      outstanding.fetch_sub(1);
    });
  }
  ready.Wait();
  const int64_t baseline_kib = ProcStatusFieldKib(pid, "VmRSS");
  EXPECT_GT(baseline_kib, 0);
  go.Notify();

  const absl::Time start = absl::Now();
  peak_kib = baseline_kib;
  // Until every batch has returned (at most 20 s; the join below waits for them regardless),
  // sampling VmRSS every 100 ms and, after a second, probing the server once.
  WaitUntil(
      "every flooding batch to return",
      [&] {
        peak_kib = std::max(peak_kib, ProcStatusFieldKib(pid, "VmRSS"));
        if (!probed && absl::Now() - start > absl::Seconds(1)) {
          probed = true;  // in the thick of it: every batch sent, none past its deadline
          pb::GetServerInfoResponse info;
          absl::Time t = absl::Now();
          info_status =
              verdictd.stub().GetServerInfo(ContextFor(absl::Seconds(2)).get(), {}, &info);
          info_took = absl::Now() - t;
          pb::CheckIpRequest request;
          request.set_ip(stored_ip);
          request.set_cache_only(true);
          t = absl::Now();
          cached_status =
              verdictd.stub().CheckIp(ContextFor(absl::Seconds(2)).get(), request, &cached);
          cached_took = absl::Now() - t;
        }
        return outstanding.load();
      },
      [](int calls) { return calls == 0; }, absl::Seconds(20), absl::Milliseconds(100));
  join.Join();
  peak_kib = std::max(peak_kib, ProcStatusFieldKib(pid, "VmRSS"));
  const int64_t hwm_kib = ProcStatusFieldKib(pid, "VmHWM");

  int ok_calls = 0;
  int deadline_calls = 0;
  int queue_full_items = 0;
  for (int c = 0; c < kCallers; ++c) {
    SCOPED_TRACE(absl::StrCat("caller ", c));
    if (statuses[c].error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      ++deadline_calls;  // some of its misses were in flight or queued
      continue;
    }
    if (!statuses[c].ok()) {
      ADD_FAILURE() << "caller " << c << ": " << statuses[c].error_message();
      continue;
    }
    ++ok_calls;
    for (const pb::CheckBatchResult& item : responses[c].results()) {
      ASSERT_TRUE(item.has_error()) << "no verdict can come from a hanging ClickPatrol";
      EXPECT_EQ(ItemCode(item), grpc::StatusCode::RESOURCE_EXHAUSTED) << item.error().message();
      if (absl::StrContains(item.error().message(), kQueueFull)) {
        ++queue_full_items;
      }
    }
  }
  const int64_t requests = sim_.Requests() - 1;  // less the stored IP's
  RecordProperty("baseline_rss_kib", static_cast<int>(baseline_kib));
  RecordProperty("peak_rss_kib", static_cast<int>(peak_kib));
  RecordProperty("vm_hwm_kib", static_cast<int>(hwm_kib));
  RecordProperty("requests", static_cast<int>(requests));
  std::printf(
      "[ measured ] flood of %d x %d cold IPs: VmRSS %.1f MB before, peak %.1f MB sampled "
      "(VmHWM %.1f MB); %lld requests; %d calls answered (%d items refused, queue full), %d past "
      "their deadline; GetServerInfo took %s, a cache-only hit %s\n",
      kCallers, kItems, baseline_kib / 1024.0, peak_kib / 1024.0, hwm_kib / 1024.0,
      static_cast<long long>(requests), ok_calls, queue_full_items, deadline_calls,
      absl::FormatDuration(info_took).c_str(), absl::FormatDuration(cached_took).c_str());

  EXPECT_LT(peak_kib, kLimitKib);
  EXPECT_LT(hwm_kib, kLimitKib);
  // The queue holds at most 5,000 (the default --max_queued_misses) of the 50,000 misses, so
  // most calls hold none and come back at once, every item refused; without a bound all 50 wait
  // out their deadline (and the queue grows with the flood).
  EXPECT_GE(ok_calls, 1) << "no call was refused fast: the queue is not bounded";
  EXPECT_EQ(queue_full_items, ok_calls * kItems);
  EXPECT_LE(requests, kConcurrency) << "only the requests in flight were sent";
  EXPECT_EQ(LedgerRows(verdictd.db_path()), requests + 1)  // + the stored IP's row
      << "queued and refused misses have no ledger row";

  ASSERT_TRUE(probed);
  EXPECT_TRUE(info_status.ok()) << info_status.error_message();
  EXPECT_LT(info_took, absl::Seconds(1));
  ASSERT_TRUE(cached_status.ok()) << cached_status.error_message();
  EXPECT_EQ(cached.source(), pb::SOURCE_CACHE);
  EXPECT_LT(cached_took, absl::Seconds(1));
}

}  // namespace
}  // namespace verdictd::testing::click_waste
