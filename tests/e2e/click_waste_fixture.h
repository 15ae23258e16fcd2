#ifndef VERDICTD_TESTS_E2E_CLICK_WASTE_FIXTURE_H_
#define VERDICTD_TESTS_E2E_CLICK_WASTE_FIXTURE_H_

// What the click-waste tests (click_waste_*_test.cc) share: the ClickWasteTest fixture, reading
// the click ledger, cold addresses and batches, timed caller contexts and joining threads.
//
// Those tests check clicks that must NOT be spent. Every request to ClickPatrol costs a click, so
// when the answer is already known to be useless, a miss that has not been sent yet must stay
// unsent: no request, and no ledger row. The figure that matters in every test is the
// simulator's own request count (what ClickPatrol would bill), checked against the bound the
// design promises and against verdictd's ledger.

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::click_waste {

namespace pb = ::verdict::v1;

inline constexpr char kToken[] = "cp_ClickWasteToken_5d2e91";

// What a full queue in front of ClickPatrol answers (RESOURCE_EXHAUSTED).
inline constexpr char kQueueFull[] = "too many misses waiting for ClickPatrol";

// --- the ledger ---------------------------------------------------------------------------------
//
// Table `clicks` (storage/sqlite/sqlite_store.cc), one row per attempt, its `outcome` a
// ClickOutcome (storage/verdict_store.h): 0 pending (written before sending and not completed yet),
// 1 verdict, 2 upstream error (sent, or maybe sent, and failed), 3 not sent (provably never left).
// "Spent" rows are those whose outcome is not 3: every click ClickPatrol may bill. Once no request
// is in flight, spent rows must equal the simulator's request count exactly: fewer would be an
// unrecorded click, more a click recorded but never sent.

inline int64_t LedgerRows(const std::string& db) {
  return QueryInt(db, "SELECT count(*) FROM clicks");
}
inline int64_t SpentRows(const std::string& db) {
  return QueryInt(db, "SELECT count(*) FROM clicks WHERE coalesce(outcome, 0) != 3");
}
inline int64_t PendingRows(const std::string& db) {
  return QueryInt(db, "SELECT count(*) FROM clicks WHERE coalesce(outcome, 0) = 0");
}

// Waits (at most 5 s) until no ledger row is pending: completions are written by the store's
// writer thread, possibly just after the answer went out.
inline void WaitForNoPendingRows(const std::string& db) {
  EXPECT_TRUE(WaitUntil(
      "no pending ledger row", [&] { return PendingRows(db); },
      [](int64_t pending) { return pending == 0; }, absl::Seconds(5)))
      << "ledger rows still pending";
}

// --- requests -----------------------------------------------------------------------------------

// A distinct public address per (block, k): 11.block.(k / 256).(k % 256), k < 65536. 11.0.0.0/8
// is public (common/ip.cc), unlike the documentation ranges; each test uses its own block.
inline std::string ColdIp(int block, int k) {
  return absl::StrCat("11.", block, ".", k / 256, ".", k % 256);
}

// `count` never-seen addresses, ColdIp(block, first) onwards.
inline pb::CheckBatchRequest ColdBatch(int block, int first, int count) {
  pb::CheckBatchRequest batch;
  for (int k = first; k < first + count; ++k) {
    batch.add_items()->set_ip(ColdIp(block, k));
  }
  return batch;
}

// A caller context whose deadline is `timeout` from now.
inline std::unique_ptr<grpc::ClientContext> ContextFor(absl::Duration timeout,
                                                       const std::string& caller = "waste") {
  std::unique_ptr<grpc::ClientContext> context = CallerContext(caller);
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

// Opens the stub's connection (GetServerInfo, waiting for the channel), so that a timed call
// that follows is only the call itself.
inline void Connect(pb::VerdictService::Stub& stub) {
  std::unique_ptr<grpc::ClientContext> context = ContextFor(absl::Seconds(20));
  context->set_wait_for_ready(true);
  pb::GetServerInfoResponse info;
  const grpc::Status status = stub.GetServerInfo(context.get(), {}, &info);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Joins the threads when it goes out of scope, so that a failed ASSERT cannot leave one running
// (destroying a joinable std::thread ends the whole test binary). Everything the threads use
// must be declared before it.
class JoinAll {
 public:
  explicit JoinAll(std::vector<std::thread>& threads) : threads_(threads) {}
  ~JoinAll() { Join(); }
  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) {
        t.join();
      }
    }
  }

 private:
  std::vector<std::thread>& threads_;
};

inline grpc::StatusCode ItemCode(const pb::CheckBatchResult& item) {
  return static_cast<grpc::StatusCode>(item.error().code());
}

class ClickWasteTest : public ::testing::Test {
 protected:
  int64_t SimInFlight() const { return sim_.Stats().at("in_flight").get<int64_t>(); }

  TempDir dir_;
  Simulator sim_{dir_, kToken};
};

}  // namespace verdictd::testing::click_waste

#endif  // VERDICTD_TESTS_E2E_CLICK_WASTE_FIXTURE_H_
