#ifndef VERDICTD_ENGINE_ENGINE_H_
#define VERDICTD_ENGINE_ENGINE_H_

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/scheduler.h"
#include "common/verdict.h"
#include "engine/circuit_breaker.h"
#include "engine/freshness.h"
#include "engine/hot_cache.h"
#include "engine/spend_tracker.h"
#include "engine/usage_recorder.h"
#include "storage/verdict_store.h"
#include "upstream/clickpatrol_client.h"

namespace verdictd {

// Where an answer came from. Values match verdict.v1.Source.
enum class Source { kCache = 1, kUpstream = 2, kStale = 3 };

// What verdicts are remembered by.
enum class CacheKeyMode {
  kIp,           // the IP alone (the verdict is about the IP)
  kIpUserAgent,  // the IP and the exact user agent
};

struct EngineOptions {
  FreshnessPolicy freshness;
  // Default: kIp.
  CacheKeyMode cache_key = CacheKeyMode::kIp;
  // Longest accepted user agent, in bytes. Default: 1024.
  size_t max_user_agent_bytes = 1024;
  // Longest accepted caller name, in bytes. Default: 128.
  size_t max_caller_bytes = 128;
  // Send non-public addresses (private, loopback, documentation, ...) to ClickPatrol.
  // Default: false (FAILED_PRECONDITION, no click).
  bool allow_non_public = false;
  CircuitBreakerOptions breaker;
  AllowanceOptions allowance;
  // Attempts per miss when a request provably never left (connect refused, DNS, TLS): such
  // failures are not billed, so they are retried with backoff. Default: 3 attempts, 100 ms
  // backoff doubling each time.
  int max_attempts = 3;
  absl::Duration retry_backoff = absl::Milliseconds(100);
  // Most misses between their ledger row and ClickPatrol's answer at once; the rest wait in a
  // FIFO queue before their ledger row is written. Set it to the client's concurrency limit, so
  // that a row is written only when its request can leave at once: a crash then leaves pending
  // (billed, possibly unsent) only about this many rows — those in flight and those whose answer
  // was being committed — not every queued miss. 0: no limit. Default: 0.
  int max_upstream_in_flight = 0;
  // History and ledger rows older than this are pruned in the background. Zero: keep forever.
  // Default: 400 days, checked every minute, 500 rows per transaction.
  absl::Duration history_retention = absl::Hours(24 * 400);
  absl::Duration prune_interval = absl::Minutes(1);
  int prune_batch = 500;
  // Newest verdicts kept in memory in front of the store. 0 disables. Default: 100000
  // (roughly 30 MB).
  size_t hot_cache_entries = 100'000;
  // How often batched usage counters are written. Default: 1 s.
  absl::Duration usage_flush_interval = absl::Seconds(1);
};

struct CheckRequest {
  std::string ip;          // as the caller wrote it
  std::string user_agent;  // "" for none
  std::optional<absl::Duration> max_age;
  bool cache_only = false;
  std::string caller;          // who is asking (and pays for a miss)
  int64_t monthly_budget = 0;  // the caller's clicks per calendar month; 0: unlimited
};

struct CheckResult {
  Verdict verdict;
  Source source = Source::kCache;
  bool click_spent = false;  // this request's caller was charged a click for it
};

// Observes the engine for metrics. Methods are called on engine threads and must be cheap.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnAnswer(Source source) {}
  // One finished upstream attempt: outcome "verdict", "error" or "not_sent".
  virtual void OnUpstream(const std::string& caller, absl::string_view outcome, int http_status,
                          absl::Duration latency) {}
  virtual void OnFlightStarted() {}
  virtual void OnFlightEnded() {}
  virtual void OnWaiterJoined() {}
};

// Freshness, single flight, budgets and accounting: decides for each check whether a stored
// verdict answers it or ClickPatrol must be asked, and records every click. Knows nothing of
// gRPC or SQL.
//
// Thread-safe. Never blocks on the network.
class Engine {
 public:
  using Callback = std::function<void(absl::StatusOr<CheckResult>)>;

  // Loads this month's spending from the store's ledger. `store`, `client`, `clock` and
  // `scheduler` must outlive the engine; `observer` may be null.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(EngineOptions options, VerdictStore& store,
                                                        ClickPatrolClient& client,
                                                        const Clock& clock, Scheduler& scheduler,
                                                        EngineObserver* observer = nullptr);
  // Waits for flights in progress and writes the usage counters.
  ~Engine();

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Answers one check. `done` runs exactly once: on the calling thread when the store answers
  // (or the request is invalid), otherwise on a store, client or scheduler thread once the
  // upstream answer is durable. Errors: INVALID_ARGUMENT for malformed input, NOT_FOUND for a
  // cache_only miss, FAILED_PRECONDITION for a non-public address, RESOURCE_EXHAUSTED for a
  // spent budget or allowance, UNAVAILABLE while the circuit breaker is open, and the
  // upstream's error otherwise — each replaced by a STALE answer when one is young enough.
  void Check(CheckRequest request, Callback done);

  // Audit and accounting reads (blocking store reads).
  absl::StatusOr<std::vector<HistoryEntry>> History(const HistoryQuery& query);
  // Writes pending usage counters first, so the answer includes every check made before.
  absl::StatusOr<std::vector<DailyUsage>> Usage(absl::string_view caller, absl::Time since,
                                                absl::Time until);
  AllowanceStatus Allowance() { return spend_.Allowance(); }
  int64_t SpentThisMonth(const std::string& caller) { return spend_.SpentThisMonth(caller); }
  CircuitBreaker::State breaker_state() const { return breaker_.state(); }

  // Blocks until every upstream request in flight has been answered.
  void WaitIdle();

 private:
  struct Waiter {
    Callback done;
  };
  // One upstream request and everyone waiting for it.
  struct Flight {
    std::string ip;
    std::string user_agent;
    std::string caller;                      // the leader, who pays
    std::optional<Verdict> stale_candidate;  // newest stored verdict when the flight began
    Callback leader;
    std::vector<Waiter> waiters;
    int attempts = 0;
  };

  Engine(EngineOptions options, VerdictStore& store, ClickPatrolClient& client, const Clock& clock,
         Scheduler& scheduler, EngineObserver* observer,
         const std::vector<std::pair<std::string, int64_t>>& month_clicks, int64_t period_clicks);

  // Why a miss may not be sent now, or OK. REQUIRES: the caller leads a new flight.
  absl::Status Admit(const CheckRequest& request);
  // Answers `done` with the stale candidate if young enough, else with `error`.
  void FailOrStale(const std::optional<Verdict>& stale, absl::Status error, Callback& done);
  // Starts an attempt for `key` when an upstream slot is free, else queues it. Runs without the
  // lock.
  void StartAttempt(std::string key);
  // Records the click, then sends the request. REQUIRES: holds an upstream slot.
  void SendAttempt(std::string key);
  // Gives up a slot: frees it, or hands it to the next queued attempt, whose key is returned
  // and must be passed to SendAttempt.
  std::optional<std::string> PassSlot();
  void OnFetched(const std::string& key, int64_t click_id, FetchOutcome outcome);
  // Removes the flight for `key` and answers the leader and every waiter. `charged`: a click was
  // spent (the leader's) whatever the result.
  void Resolve(const std::string& key, absl::StatusOr<Verdict> result, bool charged);
  void Answer(Callback& done, absl::StatusOr<CheckResult> result);
  void SchedulePrune(absl::Duration delay);
  void ScheduleUsageFlush();

  // Lets scheduled tasks and store callbacks that outlive a flight find out whether the engine
  // still exists; they hold `mu` while they use it, and the destructor clears `alive` under it.
  struct Lifeline {
    absl::Mutex mu;
    bool alive ABSL_GUARDED_BY(mu) = true;
  };

  const EngineOptions options_;
  std::shared_ptr<Lifeline> lifeline_ = std::make_shared<Lifeline>();
  VerdictStore& store_;
  ClickPatrolClient& client_;
  const Clock& clock_;
  Scheduler& scheduler_;
  EngineObserver* const observer_;
  CircuitBreaker breaker_;
  SpendTracker spend_;
  UsageRecorder usage_;
  HotCache hot_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Flight> flights_ ABSL_GUARDED_BY(mu_);

  absl::Mutex slots_mu_;
  int slots_in_use_ ABSL_GUARDED_BY(slots_mu_) = 0;
  std::deque<std::string> slot_queue_ ABSL_GUARDED_BY(slots_mu_);  // flight keys, FIFO
};

}  // namespace verdictd

#endif  // VERDICTD_ENGINE_ENGINE_H_
