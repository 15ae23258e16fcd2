#ifndef VERDICTD_SERVER_ENGINE_ENGINE_H_
#define VERDICTD_SERVER_ENGINE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/verdict.h"
#include "server/engine/circuit_breaker.h"
#include "server/engine/freshness.h"
#include "server/engine/hot_cache.h"
#include "server/engine/scheduler.h"
#include "server/engine/spend_tracker.h"
#include "server/engine/usage_recorder.h"
#include "server/upstream/clickpatrol_client.h"
#include "storage/verdict_store.h"

namespace verdictd {

// Where an answer came from. Values match verdict.v1.Source.
enum class Source { kCache = 1, kUpstream = 2, kStale = 3 };

// What verdicts are remembered by.
enum class CacheKeyMode {
  kIp,           // the IP alone (the verdict is about the IP)
  kIpUserAgent,  // the IP and the exact user agent
};

// A team: callers that share a monthly budget and a lead who may read their usage and clicks.
// Who is in which team is the keys file's (current membership): a team's clicks are its
// callers' clicks.
struct TeamAccount {
  std::string name;
  int64_t monthly_budget = 0;        // clicks per calendar month (UTC) for all of them; 0: none
  std::vector<std::string> callers;  // sorted, no duplicates
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
  // that a row is written only when its request can leave at once: a slot passes on only once
  // the previous row's completion is committed, so a crash leaves pending (billed, possibly
  // unsent) at most this many rows, not every queued miss. 0: no limit. Default: 0.
  int max_upstream_in_flight = 0;
  // Most misses waiting in that queue; a miss beyond it fails fast with RESOURCE_EXHAUSTED
  // ("too many misses waiting for ClickPatrol") and costs nothing, so a hung ClickPatrol and a
  // flood of cold IPs cannot grow memory without bound. Only with max_upstream_in_flight > 0.
  // 0: no limit. Default: 0.
  size_t max_queued_misses = 0;
  // After ClickPatrol rejects the token (HTTP 401/403) misses fail fast with
  // FAILED_PRECONDITION, letting one probe through per this interval (a rejected token stays
  // rejected until the operator replaces it; each probe may cost a click). Default: 1 min.
  absl::Duration token_probe_interval = absl::Minutes(1);
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
  // How often the budgets' and the allowance's counts are read again from the store, so that
  // what this process reports (GetUsage, Budgets, Allowance, the metrics) includes the clicks
  // of every other process sharing it, also when nobody asks GetUsage. The store enforces the
  // budgets itself; this is only what is reported. Zero: only at start-up and on GetUsage.
  // Default: 30 s.
  absl::Duration spend_sync_interval = absl::Seconds(30);
  // Each caller's clicks per calendar month, as the API keys file gives them (a caller listed
  // twice: the last one counts), for the budgets reported by Usage and Budgets. 0: unlimited.
  // Checks carry their own (CheckRequest::monthly_budget). Default: none.
  std::vector<std::pair<std::string, int64_t>> monthly_budgets;
  // The teams, as the API keys file gives them, for the team budgets checks carry
  // (CheckRequest::team), the access rule (a lead reads its team's) and the team reports.
  // Default: none.
  std::vector<TeamAccount> teams;
  // This process among those sharing the store (written into its flight claims, for operators).
  // Default: "verdictd".
  std::string replica_id = "verdictd";
  // How long a flight's claim holds without completion (VerdictStore::ClaimClick): must exceed
  // the whole upstream request with its retries, so that a live owner never loses it; after it
  // the owner is presumed dead and a waiter on another replica takes over. Default: 2 min.
  absl::Duration flight_lease = absl::Minutes(2);
  // After a click's completion could not be written (the store failed), how long until it is
  // written again; doubling, at most 30 s. Default: 1 s.
  absl::Duration completion_retry_backoff = absl::Seconds(1);
  // How often a miss waiting for another replica's flight looks at the store again when no
  // notification has woken it (notifications can be lost with a connection). Default: 1 s.
  absl::Duration remote_flight_poll = absl::Seconds(1);
};

// Who asks to read usage or clicks; what they may read is Engine's one rule: a caller its own,
// the lead of a team its team's callers', an auditor everyone's.
struct Reader {
  std::string caller;    // the authenticated caller asking
  std::string team;      // its team ("" for none)
  bool lead = false;     // it leads `team`
  bool auditor = false;  // it may read everything
};

// A GetUsage request, decoded.
struct UsageQuery {
  Reader reader;
  std::string caller;  // whose usage: "" for every caller's (or the team's)
  std::string team;    // "" or a team: its callers' usage. Not together with caller.
  // The window asked for; nullopt: from the start of the current UTC month, and until now. A
  // timestamp that did not decode is reported only after the permission check, so that who may
  // ask is decided first whatever else the request says.
  absl::StatusOr<std::optional<absl::Time>> since = std::optional<absl::Time>();
  absl::StatusOr<std::optional<absl::Time>> until = std::optional<absl::Time>();
};

// A ListClicks request: whose clicks, asked by whom.
struct ClicksQuery {
  Reader reader;
  std::string team;  // "" or a team: its callers' clicks. Not together with query.caller.
  ClickQuery query;  // query.caller "" for every caller's (or the team's)
};

// A caller's monthly budget and what is left of it this month.
struct BudgetStatus {
  std::string caller;
  int64_t monthly_budget = 0;
  int64_t left = 0;
};

struct CallerUsageReport {
  std::string caller;
  UsageCounts total;                   // the sum of `days`
  std::vector<DailyUsage> days;        // by day
  std::optional<BudgetStatus> budget;  // absent: no budget (unlimited)
  std::string team;                    // its team now ("" for none)
};

// A team's budget and what is left of it this month, and what its callers spent.
struct TeamBudgetStatus {
  std::string team;
  int64_t monthly_budget = 0;  // 0: none
  int64_t spent = 0;           // its callers' billed clicks this month
  int64_t left = 0;            // 0 when there is no budget
};

struct TeamUsageReport {
  std::string team;
  UsageCounts total;                 // the sum of its callers' in the report
  std::vector<std::string> callers;  // its callers in the report, sorted
  TeamBudgetStatus budget;
};

struct UsageReport {
  std::vector<CallerUsageReport> callers;  // by caller; the one asked for even without usage
  std::vector<TeamUsageReport> teams;      // by name: the teams of `callers` (the one asked for)
  AllowanceStatus allowance;
};

// One RPC's stake in its checks, shared by every item of a batch: its deadline, and whether the
// caller has gone away. A miss that is still waiting for an upstream slot when every caller
// waiting for it has gone is dropped without a ledger row or a request.
class CallState {
 public:
  explicit CallState(absl::Time deadline = absl::InfiniteFuture()) : deadline_(deadline) {}
  CallState(const CallState&) = delete;
  CallState& operator=(const CallState&) = delete;

  absl::Time deadline() const { return deadline_; }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // Whether someone may still read the answer at `now`.
  bool Alive(absl::Time now) const { return !cancelled() && now < deadline_; }

 private:
  friend class Engine;
  const absl::Time deadline_;
  std::atomic<bool> cancelled_{false};
  absl::Mutex keys_mu_;
  std::vector<std::string> keys_ ABSL_GUARDED_BY(keys_mu_);  // the reads and flights it waits for
};

struct CheckRequest {
  std::string ip;          // as the caller wrote it
  std::string user_agent;  // "" for none
  std::optional<absl::Duration> max_age;
  bool cache_only = false;
  std::string caller;               // who is asking (and pays for a miss)
  int64_t monthly_budget = 0;       // the caller's clicks per calendar month; 0: unlimited
  std::string team;                 // the caller's team ("" for none)
  int64_t team_monthly_budget = 0;  // the team's clicks per calendar month; 0: unlimited
  // The RPC this check belongs to; null: someone always waits for the answer.
  std::shared_ptr<CallState> call;
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
  // A miss was answered without a request because `reason`: "abandoned" (nobody waited any
  // more), "refused" (breaker, allowance or token state when its turn came), "shutdown" or
  // "queue_full".
  virtual void OnNotSent(absl::string_view reason) {}
  // Misses waiting for an upstream slot.
  virtual void OnQueueDepth(size_t depth) {}
};

// Freshness, single flight, budgets and accounting: decides for each check whether a stored
// verdict answers it or ClickPatrol must be asked, and records every click. Knows nothing of
// gRPC or SQL.
//
// Thread-safe. Never blocks on the network.
class Engine : private FlightListener {
 public:
  using Callback = std::function<void(absl::StatusOr<CheckResult>)>;
  using HistoryCallback = std::function<void(absl::StatusOr<std::vector<HistoryEntry>>)>;
  using UsageCallback = std::function<void(absl::StatusOr<UsageReport>)>;
  using ClicksCallback = std::function<void(absl::StatusOr<std::vector<ClickRecord>>)>;

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

  // Answers one check. `done` runs exactly once: on the calling thread when the hot cache
  // answers (or the request is invalid), otherwise on a store, client or scheduler thread: once
  // the store's read answers, or once the upstream answer is durable. Never waits for the store.
  // Errors: INVALID_ARGUMENT for malformed input, NOT_FOUND for a cache_only miss,
  // FAILED_PRECONDITION for a non-public address, RESOURCE_EXHAUSTED for a spent budget or
  // allowance, UNAVAILABLE while the circuit breaker is open, and the upstream's error otherwise —
  // each replaced by a STALE answer when one is young enough. Misses are admitted twice: when they
  // arrive, and again (breaker, allowance, token) when their turn for an upstream slot comes, so a
  // queued miss is never sent into a known failure.
  void Check(CheckRequest request, Callback done);

  // The RPC behind `call` is gone (cancelled, deadline passed): its checks are answered
  // CANCELLED at once, and a miss nobody else waits for is dropped unless already sent (a sent
  // request is billed; its verdict is still stored).
  void Cancel(const std::shared_ptr<CallState>& call);

  // Stops admitting misses (UNAVAILABLE "shutting down"), and answers every miss that has not
  // been sent (queued, or waiting to retry) UNAVAILABLE at once, without a request. Misses
  // already sent finish. Hits are still served.
  void Shutdown();

  // Audit and accounting reads. `done` runs once, on a store thread; WaitIdle waits for it.
  void History(HistoryQuery query, HistoryCallback done);
  // GetUsage: a caller may read its own usage, a lead its team's, an auditor everyone's
  // (PERMISSION_DENIED otherwise; INVALID_ARGUMENT for a caller and a team at once, or an
  // unknown team); the window defaults to the current UTC month by the engine's clock
  // (INVALID_ARGUMENT unless since < until); each caller's budget is joined in. Writes pending
  // usage counters first, so the answer includes every check made before. `done` runs once: at
  // once for a refused query, otherwise on a store thread; UNAVAILABLE when the store fails.
  void Usage(UsageQuery query, UsageCallback done);
  // ListClicks: the ledger's clicks, with the access rule of Usage (a caller its own, a lead its
  // team's, an auditor everyone's; PERMISSION_DENIED at once otherwise). A team's page merges
  // one page of each of its callers (each an index range scan). `done` runs once; UNAVAILABLE
  // when the store fails.
  void Clicks(ClicksQuery query, ClicksCallback done);
  // Every caller with a monthly budget (EngineOptions::monthly_budgets, or the last
  // SetMonthlyBudgets), in that order.
  std::vector<BudgetStatus> Budgets();
  // Replaces EngineOptions::monthly_budgets (a keys-file reload): Usage and Budgets report the new
  // ones from now on. Checks carry their own budget, so this changes no enforcement.
  void SetMonthlyBudgets(std::vector<std::pair<std::string, int64_t>> monthly_budgets);
  // Replaces EngineOptions::teams (a keys-file reload): membership, team budgets and the access
  // rule follow from now on (a check carries its team's name and budget; the callers who share
  // it are looked up here).
  void SetTeams(std::vector<TeamAccount> teams);
  // Every team (EngineOptions::teams, or the last SetTeams), by name, with this month's spend.
  std::vector<TeamBudgetStatus> TeamBudgets();
  // `caller`'s team now, "" for none.
  std::string TeamOf(const std::string& caller);
  // The upstream client now sends a new token (a token reload): forgets a token rejection, so
  // that the next miss is sent at once instead of waiting for the probe interval; and a
  // rejection answering a request sent before this call is not taken as one of the new token.
  void OnTokenReplaced();
  AllowanceStatus Allowance() { return spend_.Allowance(); }
  int64_t SpentThisMonth(const std::string& caller) { return spend_.SpentThisMonth(caller); }
  CircuitBreaker::State breaker_state() const { return breaker_.state(); }

  // Blocks until every upstream request in flight has been answered and every store read the
  // engine issued (a check's lookup, History, Usage) has been answered.
  void WaitIdle();
  // As WaitIdle, until `deadline`; whether it became idle.
  bool WaitIdleUntil(absl::Time deadline);
  // Misses waiting for an upstream slot now.
  size_t QueuedMisses();
  // Whether ClickPatrol rejected the token (HTTP 401/403) and no request has succeeded since:
  // misses fail fast but for one probe per interval.
  bool TokenRejected();

 private:
  struct Waiter {
    Callback done;
    std::shared_ptr<CallState> call;  // null: always waiting
    std::string caller;
    int64_t monthly_budget = 0;
    std::string team;
    int64_t team_monthly_budget = 0;
  };
  enum class Stage {
    kQueued,   // waiting for an upstream slot (in slot_queue_), nothing written yet
    kSending,  // holds a slot: ledger row being written, request on the wire, or completing
    kBackoff,  // a request that provably never left, waiting to be retried
    // Another process sharing the store holds the key's claim: waiting for its verdict (a
    // notification or a poll), then looking at the store again. Holds no slot.
    kRemote,
  };
  // One upstream request and everyone waiting for it.
  struct Flight {
    uint64_t id = 0;  // tells a flight from a later one for the same key
    std::string ip;
    std::string user_agent;
    std::string caller;          // who pays: the caller in the ledger row
    int64_t monthly_budget = 0;  // the payer's
    std::string team;            // the payer's team, and its budget
    int64_t team_monthly_budget = 0;
    // waiters.front() is the payer, who gets click_spent, until it goes away.
    bool payer_waiting = true;
    std::optional<Verdict> stale_candidate;  // newest stored verdict when the flight began
    std::vector<Waiter> waiters;
    Stage stage = Stage::kQueued;
    int attempts = 0;
    // The store said a claim on this key ended while this flight was claiming it (the claim may
    // yet come back as held by the one that just ended): look again at once if it does.
    bool ended_seen = false;
    bool rechecking = false;     // kRemote: a store read for the other process's verdict is out
    bool recheck_again = false;  // woken again meanwhile
    uint64_t poll = 0;           // the newest poll scheduled for it
    // It waited (for a slot or a retry) since the store was last read for it: read it again
    // before claiming.
    bool waited = false;
  };
  struct QueueEntry {
    std::string key;
    uint64_t id = 0;  // the flight's: a later flight for the same key has its own entry
  };
  // Answers to deliver once the lock is released.
  using Outbox = std::vector<std::pair<Callback, absl::StatusOr<CheckResult>>>;

  Engine(EngineOptions options, VerdictStore& store, ClickPatrolClient& client, const Clock& clock,
         Scheduler& scheduler, EngineObserver* observer,
         const std::vector<std::pair<std::string, int64_t>>& month_clicks, int64_t period_clicks);

  static absl::Status ShuttingDownError();
  // CANCELLED or DEADLINE_EXCEEDED, for a check whose call is gone.
  static absl::Status GoneError(const CallState& call);
  static absl::Status BudgetSpentError(absl::string_view caller, int64_t monthly_budget);
  static absl::Status TeamBudgetSpentError(absl::string_view team, int64_t monthly_budget);
  // Reserves a click for `caller` (SpendTracker::Reserve with its team's callers): OK, or
  // RESOURCE_EXHAUSTED naming the caller or the team whose budget is spent.
  absl::Status Reserve(const std::string& caller, int64_t monthly_budget, const std::string& team,
                       int64_t team_monthly_budget);
  // The callers of `team` now, sorted, and `caller` among them (unless ""): {caller} when the
  // team is unknown (a reload removed it).
  std::vector<std::string> TeamCallers(const std::string& team, const std::string& caller);
  // PERMISSION_DENIED unless `reader` may read `what` of `caller` (or of `team`; both "": of
  // everyone).
  absl::Status MayRead(absl::string_view what, const Reader& reader, const std::string& caller,
                       const std::string& team);
  static absl::Status BreakerOpenError();
  absl::Status AllowanceError();
  absl::Status TokenRejectedError(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why a new miss may not wait for a slot, without using up a breaker or allowance probe.
  absl::Status PeekAdmission(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why a miss may not be sent now, or OK, using up a probe if it is one. On OK the breaker has
  // admitted the request: exactly one RecordSuccess, RecordFailure or Cancel must follow.
  absl::Status AdmitToSend(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Answers `done` with the stale candidate if young enough, else with `error`.
  void FailOrStale(const std::optional<Verdict>& stale, absl::Status error, Callback& done);
  // The same, for delivery once the lock is released.
  void FailOrStaleLater(const std::optional<Verdict>& stale, absl::Status error, Callback done,
                        Outbox& out);
  void Deliver(Outbox& out);
  using FlightMap = absl::flat_hash_map<std::string, Flight>;
  // Removes the flight at `it` and answers every waiter with `error` or stale, and returns the
  // payer's reservation. Nothing was sent for it.
  void RefuseLocked(FlightMap::iterator it, absl::Status error, absl::string_view reason,
                    Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes an unsent flight nobody waits for any more (its waiters already answered).
  void EraseAbandonedLocked(FlightMap::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the waiters nobody waits for any more (`cancelled`'s, and those whose call is gone),
  // answering them CANCELLED or DEADLINE_EXCEEDED. While the flight has not been sent, a payer
  // who left is refunded and the next waiter that can pay takes over. Whether anyone still
  // waits.
  bool PruneWaitersLocked(Flight& flight, absl::Time now, const CallState* cancelled, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records that `call` waits for `key` (a store read or a flight), so that Cancel() finds it;
  // when the call is already cancelled, drops its checks of `key` at once.
  void WatchKey(CallState& call, const std::string& key) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes `call`'s waiters from the flight for `key`, and the flight itself if it has not
  // been sent and nobody else waits.
  void DropCancelled(const std::string& key, const CallState* call);
  void DropCancelledFromFlightLocked(FlightMap::iterator it, const CallState* call, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool SlotFreeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // No flight, no Cancel() under way and no store read outstanding: what WaitIdle waits for.
  bool IdleLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Count a store read the engine issued, until its callback has done everything it does.
  void BeginStoreRead() ABSL_LOCKS_EXCLUDED(mu_);
  void EndStoreRead() ABSL_LOCKS_EXCLUDED(mu_);
  // A check waiting for its key's store read.
  struct PendingCheck {
    CheckRequest request;
    Callback done;
    std::string canonical;
    bool is_public = false;
  };
  // The store's answer for `key`: continues every check waiting for it, in arrival order.
  void OnLatest(const std::string& key, absl::StatusOr<std::optional<Verdict>> latest);
  // The rest of Check once the newest stored verdict for `key` (`latest`) is known.
  void CheckWithLatest(CheckRequest request, Callback done, const std::string& canonical,
                       bool is_public, std::string key, std::optional<Verdict> latest);
  // Whether `entry` is still its flight's place in the queue.
  bool IsQueuedLocked(const QueueEntry& entry) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops dead entries once they outnumber the live ones.
  void CompactQueueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives `flight` an upstream slot (the caller then sends it) or puts it at the back of the
  // queue.
  void PlaceLocked(const std::string& key, Flight& flight, bool take_slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives up a slot: hands it to the next queued flight that is still wanted and admitted
  // (dropping or refusing the others), whose key is returned and must be passed to
  // SendAttempt; or frees it.
  std::optional<std::string> PassSlotLocked(Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Retries a flight whose request provably never left, after its backoff.
  void Retry(const std::string& key, uint64_t id);
  // Records the click, then sends the request (first reading the store again if the flight
  // waited: another process may have answered it meanwhile). REQUIRES: the flight holds an
  // upstream slot.
  void SendAttempt(std::string key);
  // Whether `latest` is a fresh verdict newer than the one that made `flight` a miss: another
  // process answered it.
  bool LandedSince(const Flight& flight,
                   const absl::StatusOr<std::optional<Verdict>>& latest) const;
  void OnPreClaimRead(const std::string& key, absl::StatusOr<std::optional<Verdict>> latest);
  // Claims the key and begins the click, then sends the request.
  void ClaimAndSend(std::string key);
  // `token_generation`: token_generation_ when the request was handed to the client.
  void OnFetched(const std::string& key, int64_t click_id, uint64_t token_generation,
                 FetchOutcome outcome);
  // Once the completion of `key`'s click is committed (`stored`): retries, or resolves the
  // flight with `status` or `verdict`.
  // Writes `completion` of `click_id` again after `delay`, until the store takes it.
  void RetryCompletionLater(std::string key, int64_t click_id, ClickCompletion completion,
                            absl::Duration delay);
  void OnCompleted(const std::string& key, const absl::Status& status, bool charged, bool retry,
                   int attempts, std::optional<Verdict> verdict, const absl::Status& stored);
  // Removes the flight for `key` and answers every waiter. `charged`: a click was spent (the
  // payer's) whatever the result.
  void Resolve(const std::string& key, absl::StatusOr<Verdict> result, bool charged,
               Source source = Source::kUpstream);
  // The claim for `key`'s flight was not granted: another process holds the key (wait for it),
  // or the payer's budget is spent across every process sharing the store.
  // Records `mark` for every process sharing the store (ClickPatrol said the allowance is
  // exhausted, or a probe found it is not); a failure is logged, the local state holds anyway.
  void ShareAllowanceMark(AllowanceMark mark);
  // The claim found a verdict stored since this flight read the store (ClaimResult::
  // kVerdictLanded): answers with it if it is fresh, else claims again knowing it.
  void OnClaimLanded(const std::string& key, Verdict landed);
  void OnClaimRefused(const std::string& key, const ClaimResult& claim);
  // A kRemote flight looks at the store again (woken by a notification or its poll).
  // `poll`: the poll that woke it (ignored unless it is the flight's newest); nullopt for a
  // notification.
  void RemoteWake(const std::string& key, uint64_t id, std::optional<uint64_t> poll = std::nullopt);
  void OnRemoteChecked(const std::string& key, uint64_t id,
                       absl::StatusOr<std::optional<Verdict>> latest);
  void ScheduleRemotePoll(const std::string& key, uint64_t id, absl::Duration lease_left);
  // The payer left or cannot pay: the next waiter who can pay leads, the ones who cannot are
  // answered RESOURCE_EXHAUSTED. Whether anyone still waits.
  bool ElectPayerLocked(Flight& flight, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // FlightListener, on store threads.
  void OnFlightEnded(const std::string& flight_key) override;
  void OnFlightsMayHaveEnded() override;
  void Answer(Callback& done, absl::StatusOr<CheckResult> result);
  void SchedulePrune(absl::Duration delay);
  // `caller`'s budget, if it has one.
  std::optional<BudgetStatus> BudgetOf(const std::string& caller);
  // The report for `days` (sorted by caller, then day); `caller` is the one asked for, or "";
  // `team` the team asked for ("" for none).
  UsageReport MakeUsageReport(const std::string& caller, const std::string& team,
                              std::vector<DailyUsage> days);
  TeamBudgetStatus TeamBudgetOf(const TeamAccount& team);
  void ScheduleUsageFlush();
  void ScheduleSpendSync();
  // Brings this process's budget and allowance counts up to the store's (which counts every
  // process sharing it), then runs `then` on a store thread. A failed read leaves them as they
  // are: they are reports, and the store enforces budgets itself.
  void SyncSpendThen(std::function<void()> then);

  // Lets scheduled tasks and store callbacks that outlive a flight find out whether the engine
  // still exists; they hold `mu` while they use it, and the destructor clears `alive` under it.
  struct Lifeline {
    absl::Mutex mu;
    bool alive ABSL_GUARDED_BY(mu) = true;
  };

  const EngineOptions options_;
  // options_.monthly_budgets (or the last SetMonthlyBudgets), and the same by caller, the last
  // entry of a caller winning.
  absl::Mutex budgets_mu_;
  std::vector<std::pair<std::string, int64_t>> monthly_budgets_ ABSL_GUARDED_BY(budgets_mu_);
  absl::flat_hash_map<std::string, int64_t> budget_by_caller_ ABSL_GUARDED_BY(budgets_mu_);
  // options_.teams (or the last SetTeams) by name, and each caller's team.
  std::map<std::string, TeamAccount> teams_ ABSL_GUARDED_BY(budgets_mu_);
  absl::flat_hash_map<std::string, std::string> team_of_caller_ ABSL_GUARDED_BY(budgets_mu_);
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
  FlightMap flights_ ABSL_GUARDED_BY(mu_);
  uint64_t next_flight_id_ ABSL_GUARDED_BY(mu_) = 1;
  int slots_in_use_ ABSL_GUARDED_BY(mu_) = 0;
  // kQueued flights, FIFO, and dead entries of flights dropped while they waited.
  std::deque<QueueEntry> slot_queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_ ABSL_GUARDED_BY(mu_) = 0;  // live entries
  size_t dead_queue_entries_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  int cancels_in_progress_ ABSL_GUARDED_BY(mu_) = 0;
  int store_reads_ ABSL_GUARDED_BY(mu_) = 0;  // issued and not yet fully handled
  // Keys whose LatestFor is outstanding, and the checks waiting for it, oldest first.
  absl::flat_hash_map<std::string, std::vector<PendingCheck>> reads_ ABSL_GUARDED_BY(mu_);
  // ClickPatrol rejected the token: misses fail fast but for one probe per interval.
  bool token_rejected_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time next_token_probe_ ABSL_GUARDED_BY(mu_);
  // How many times OnTokenReplaced ran: a rejection of a request sent before the latest token
  // replacement does not set token_rejected_.
  uint64_t token_generation_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_ENGINE_H_
