#ifndef VERDICTD_STORAGE_VERDICT_STORE_CONTRACT_TEST_H_
#define VERDICTD_STORAGE_VERDICT_STORE_CONTRACT_TEST_H_

// The contract every VerdictStore backend must meet (storage/verdict_store.h), as a test suite
// parameterized by the backend: a backend's test instantiates it with a StoreBackend, e.g.
//   INSTANTIATE_TEST_SUITE_P(Sqlite, VerdictStoreContractTest,
//                            ::testing::Values(StoreBackend{"sqlite", OpenSqliteForTest}),
//                            StoreBackendName);
// The suite uses only the interface: nothing here may know how a backend keeps its data. The
// helpers below (waiting for callbacks, building verdicts and clicks) serve the backends' own
// tests too.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/verdict.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/verdict_store.h"

namespace verdictd {

// One backend under test.
struct StoreBackend {
  std::string name;  // the instantiation's suffix; letters, digits and '_' only
  // Opens the backend's store kept under `dir`, an empty directory of its own for each test.
  // Opening again with the same `dir` opens the same data, as a restart (or a second process)
  // would. `clock` stamps what the store stamps (completed_at, write failures); it outlives the
  // store.
  std::function<absl::StatusOr<std::unique_ptr<VerdictStore>>(const std::string& dir, Clock* clock)>
      open;
};

// For INSTANTIATE_TEST_SUITE_P's name generator.
inline std::string StoreBackendName(const ::testing::TestParamInfo<StoreBackend>& info) {
  return info.param.name;
}

class VerdictStoreContractTest : public ::testing::TestWithParam<StoreBackend> {
 protected:
  void SetUp() override;
  void TearDown() override;

  // The store under `dir_`, opened (again) with `clock`; null (and a failure) if it cannot be.
  std::unique_ptr<VerdictStore> Open(Clock* clock = Clock::Real());

  std::string dir_;
};

namespace store_test {

// The store's reads answer on its own threads; the tests wait for them.
template <typename T>
class Waiter {
 public:
  std::function<void(T)> Callback() {
    return [this](T value) {
      result_.emplace(std::move(value));
      done_.Notify();
    };
  }
  T Wait() {
    done_.WaitForNotification();
    return *std::move(result_);
  }

 private:
  absl::Notification done_;
  std::optional<T> result_;
};

inline absl::StatusOr<std::optional<Verdict>> LatestForSync(
    VerdictStore& store, std::string ip, std::optional<absl::string_view> user_agent) {
  Waiter<absl::StatusOr<std::optional<Verdict>>> waiter;
  store.LatestFor(std::move(ip),
                  user_agent.has_value() ? std::optional<std::string>(*user_agent) : std::nullopt,
                  waiter.Callback());
  return waiter.Wait();
}

inline absl::StatusOr<std::vector<HistoryEntry>> HistorySync(VerdictStore& store,
                                                             HistoryQuery query) {
  Waiter<absl::StatusOr<std::vector<HistoryEntry>>> waiter;
  store.History(std::move(query), waiter.Callback());
  return waiter.Wait();
}

inline absl::StatusOr<std::vector<DailyUsage>> UsageSync(VerdictStore& store, std::string caller,
                                                         absl::Time since, absl::Time until) {
  Waiter<absl::StatusOr<std::vector<DailyUsage>>> waiter;
  store.Usage(std::move(caller), since, until, waiter.Callback());
  return waiter.Wait();
}

inline absl::StatusOr<VerdictStore::ClickCounts> ClicksSinceSync(VerdictStore& store,
                                                                 absl::Time since) {
  Waiter<absl::StatusOr<VerdictStore::ClickCounts>> waiter;
  store.ClicksSince(since, waiter.Callback());
  return waiter.Wait();
}

inline absl::StatusOr<std::string> SecretSync(VerdictStore& store, std::string name, size_t bytes) {
  Waiter<absl::StatusOr<std::string>> waiter;
  store.Secret(std::move(name), bytes, waiter.Callback());
  return waiter.Wait();
}

inline absl::Status PingSync(VerdictStore& store) {
  Waiter<absl::Status> waiter;
  store.Ping(waiter.Callback());
  return waiter.Wait();
}

inline absl::StatusOr<int64_t> BeginClickSync(VerdictStore& store, std::string caller,
                                              std::string ip, absl::Time requested_at) {
  absl::Notification done;
  absl::StatusOr<int64_t> result;
  store.BeginClick(std::move(caller), std::move(ip), requested_at, [&](absl::StatusOr<int64_t> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

inline absl::Status CompleteClickSync(VerdictStore& store, int64_t click_id,
                                      ClickCompletion completion) {
  absl::Notification done;
  absl::Status result;
  store.CompleteClick(click_id, std::move(completion), [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

inline Verdict MakeVerdict(std::string ip, absl::Time checked_at, std::string user_agent = "ua",
                           std::string caller = "alice") {
  Verdict v;
  v.ip = std::move(ip);
  v.assessment.score = Score::kSuspicious;
  v.assessment.proxy = true;
  v.assessment.vpn = true;
  v.checked_at = checked_at;
  v.user_agent = std::move(user_agent);
  v.caller = std::move(caller);
  return v;
}

// Records a click that produced `verdict`, as the engine would; returns the click id.
inline int64_t Append(VerdictStore& store, const Verdict& verdict) {
  absl::StatusOr<int64_t> id =
      BeginClickSync(store, verdict.caller, verdict.ip, verdict.checked_at - absl::Milliseconds(5));
  EXPECT_TRUE(id.ok()) << id.status();
  ClickCompletion completion;
  completion.outcome = ClickOutcome::kVerdict;
  completion.http_status = 200;
  completion.latency = absl::Milliseconds(5);
  completion.verdict = verdict;
  completion.raw_body = R"({"trusted_ai_score":"Suspicious"})";
  EXPECT_TRUE(CompleteClickSync(store, *id, std::move(completion)).ok());
  return id.value_or(-1);
}

inline const absl::Time kT0 = absl::FromUnixMicros(1'700'000'000'123'457);

inline absl::Status AddUsageSync(VerdictStore& store, std::vector<UsageDelta> deltas) {
  absl::Notification done;
  absl::Status result;
  store.AddUsage(std::move(deltas), [&](absl::Status s) {
    result = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

inline absl::StatusOr<int64_t> PruneSync(VerdictStore& store, absl::Time cutoff, int max_rows) {
  absl::Notification done;
  absl::StatusOr<int64_t> result;
  store.PruneBefore(cutoff, max_rows, [&](absl::StatusOr<int64_t> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

// Records a click by `caller` at `requested_at` that ended with `outcome` (kPending: left open).
inline void Click(VerdictStore& store, const std::string& caller, absl::Time requested_at,
                  ClickOutcome outcome) {
  absl::StatusOr<int64_t> id = BeginClickSync(store, caller, "192.0.2.77", requested_at);
  ASSERT_TRUE(id.ok()) << id.status();
  if (outcome == ClickOutcome::kPending) {
    return;
  }
  ClickCompletion completion;
  completion.outcome = outcome;
  if (outcome == ClickOutcome::kVerdict) {
    completion.verdict = MakeVerdict("192.0.2.77", requested_at, "ua", caller);
  }
  ASSERT_TRUE(CompleteClickSync(store, *id, std::move(completion)).ok());
}

inline absl::Time At(absl::CivilSecond t) { return absl::FromCivil(t, absl::UTCTimeZone()); }

// The callers of `entries`, which tests use to name verdicts.
inline std::vector<std::string> Callers(const std::vector<HistoryEntry>& entries) {
  std::vector<std::string> callers;
  for (const HistoryEntry& e : entries) {
    callers.push_back(e.verdict.caller);
  }
  return callers;
}

// One day of Usage's answer, flattened for matching.
struct Row {
  std::string caller;
  absl::CivilDay day;
  int64_t clicks, upstream_errors, cache_hits, requests;
};

inline std::vector<Row> Rows(const std::vector<DailyUsage>& usage) {
  std::vector<Row> rows;
  for (const DailyUsage& u : usage) {
    rows.push_back({u.caller, u.day, u.counts.clicks, u.counts.upstream_errors, u.counts.cache_hits,
                    u.counts.requests});
  }
  return rows;
}

MATCHER_P6(IsRow, caller, day, clicks, errors, cache_hits, requests, "") {
  return arg.caller == caller && arg.day == day && arg.clicks == clicks &&
         arg.upstream_errors == errors && arg.cache_hits == cache_hits && arg.requests == requests;
}

inline bool operator==(const Row& a, const Row& b) {
  return a.caller == b.caller && a.day == b.day && a.clicks == b.clicks &&
         a.upstream_errors == b.upstream_errors && a.cache_hits == b.cache_hits &&
         a.requests == b.requests;
}

inline std::ostream& operator<<(std::ostream& os, const Row& r) {
  return os << "{" << r.caller << " " << r.day << " clicks=" << r.clicks
            << " errors=" << r.upstream_errors << " hits=" << r.cache_hits
            << " requests=" << r.requests << "}";
}

}  // namespace store_test
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_VERDICT_STORE_CONTRACT_TEST_H_
