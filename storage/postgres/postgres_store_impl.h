#ifndef VERDICTD_STORAGE_POSTGRES_POSTGRES_STORE_IMPL_H_
#define VERDICTD_STORAGE_POSTGRES_POSTGRES_STORE_IMPL_H_

// The PostgreSQL implementation of VerdictStore, the SQLite store's twin (sqlite_store_impl.h):
//
// - One writer thread with its own connection commits queued writes in groups: one transaction
//   per group, one savepoint per operation, so an operation that fails (an unknown click, a bad
//   argument) is undone alone; callbacks run after COMMIT (postgres_writer.cc).
// - Reader threads, each with its own connection in autocommit, serve the reads
//   (postgres_reads.cc).
// - A listener thread holds one more connection in autocommit, LISTENing on the flights
//   channel, and tells the registered FlightListener of every claim released anywhere
//   (postgres_listener.cc).
//
// Every connection is used by one thread only. A connection that fails is dropped and opened
// again (its statements prepared again) on next use; while the server cannot be reached each
// slot waits kReconnectBackoff between attempts and fails at once in between, so that calls fail
// fast with UNAVAILABLE instead of each waiting a connect timeout. A connection found dead at
// its first statement (it died while idle: a server restart) is replaced and the read, or the
// whole group, run once more: nothing of it can have happened. A group whose COMMIT failed is
// not rerun: its outcome is unknown, and it is reported UNAVAILABLE.
//
// Across processes sharing the database (see ClaimClick in verdict_store.h):
// - Claims: the flights upsert takes a key only when absent or expired (lease_until <=
//   clock_timestamp()), so of concurrent claimants exactly one gets a row back; a live claim is
//   reported before the budget is looked at, as in the SQLite store. The claim is released by
//   the completion of its own click only (DELETE ... WHERE click_id = the click: fencing), in
//   the completion's transaction, which also NOTIFYs the key.
// - Budgets: a transaction-scoped advisory lock per caller (kLockBudget) serialises the budget
//   checks of one caller across processes until the claiming group commits; the month's clicks
//   are read from the per-day usage counters after taking it, under READ COMMITTED, so they
//   include every click committed before.
// - Groups take turns: each group's transaction first takes one advisory lock (kLockWriters),
//   so the write transactions of all processes run one at a time. Without it two processes'
//   groups lock usage rows, claims and budget locks in their operations' orders, which differ,
//   and deadlock. It also makes a claim's checks (live claim, landed verdict, budget) and its
//   writes atomic across processes, as the SQLite store's one writer makes them. A deadlock
//   that still happens (another client of the database) aborts the group, which is rolled back
//   whole and run again (kGroupRetries).
// - Times: leases are the database's clock (clock_timestamp(): a group's transaction may have
//   started a while before the statement); completed_at and write failures the store's Clock.
// - Sessions carry statement, lock and idle-in-transaction timeouts (postgres_connection.cc), so
//   no call waits forever on another process's locks, and the server ends a session whose
//   client vanished mid-transaction, releasing what it held.

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "storage/postgres/postgres_connection.h"
#include "storage/postgres/postgres_schema.h"
#include "storage/postgres/postgres_store.h"
#include "storage/store_support.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace postgres_store_internal {

using store_support::AllowanceStep;
using store_support::CeilUnixMicros;
using store_support::CheckSecretRequest;
using store_support::ClicksSinceSplit;
using store_support::DayNumber;
using store_support::DayOfMicros;
using store_support::DayRange;
using store_support::DecideAllowance;
using store_support::DecodeAllowanceMark;
using store_support::EncodeAllowanceMark;
using store_support::FillRandom;
using store_support::FinishSecret;
using store_support::kAllowanceMarkName;
using store_support::kEpochDay;
using store_support::kMicrosPerDay;
using store_support::ProbeTaken;
using store_support::SplitClicksSince;
using store_support::UsageDays;
// How long a connection slot whose connect failed answers with that failure before dialing
// again.
constexpr absl::Duration kReconnectBackoff = absl::Milliseconds(200);
// Leases (of claims and named leases) are clamped to this, which keeps now() + lease inside
// timestamptz's range.
constexpr absl::Duration kMaxLease = absl::Hours(24 * 365 * 100);
// A group whose transaction a deadlock or a serialization failure aborted is run again, up to
// this many attempts in all (two replicas' groups can lock the same usage rows, flight rows and
// budget locks in opposite orders; PostgreSQL aborts one of them after deadlock_timeout).
constexpr int kGroupRetries = 3;

// The second key of a caller's budget lock: FNV-1a of the caller's bytes.
int32_t BudgetLockKey(absl::string_view caller);
// "ab" -> "6162"; and back (nullopt for text that is not hex).
std::string HexEncode(absl::string_view bytes);
std::optional<std::string> HexDecode(absl::string_view hex);

// A connection that opens on first use and reopens after it broke; see the file comment.
class Slot {
 public:
  Slot(ConnectSpec spec, absl::Span<const Sql* const> statements,
       std::unique_ptr<Connection> conn = nullptr)
      : spec_(std::move(spec)), statements_(statements), conn_(std::move(conn)) {}

  // The connection, opened if needed; the last connect failure while backing off (measured by
  // the real clock: a test's fake clock must not stop reconnection).
  // `fresh` (if given) tells whether the connection was opened by this call.
  absl::StatusOr<Connection*> Get(bool* fresh = nullptr);
  // Drops the connection if a failure `status` on it may have broken it.
  void AfterFailure(const absl::Status& status);
  void Drop() { conn_.reset(); }
  bool connected() const { return conn_ != nullptr; }

 private:
  const ConnectSpec spec_;
  const absl::Span<const Sql* const> statements_;
  std::unique_ptr<Connection> conn_;
  absl::Time retry_after_ = absl::InfinitePast();
  absl::Status last_failure_;
};

// The newest stored verdict for ip (and user_agent, when set): LatestFor's query, which
// ClaimClick also runs inside the writer's transaction.
absl::StatusOr<std::optional<Verdict>> QueryLatestFor(Connection& conn, absl::string_view ip,
                                                      std::optional<absl::string_view> user_agent);

class PostgresStore final : public VerdictStore {
 public:
  // Takes the connections OpenPostgresStore opened: the writer (schema migrated), one per
  // reader thread, and the listener's (already LISTENing).
  PostgresStore(PostgresStoreOptions options, ConnectSpec spec, std::unique_ptr<Connection> writer,
                std::vector<std::unique_ptr<Connection>> readers,
                std::unique_ptr<Connection> listener);

  // Answers every queued read and closes the readers, then commits (or fails) and reports every
  // queued write, then stops the listener. A read issued meanwhile (by a write's callback)
  // runs on the issuing store thread.
  ~PostgresStore() override;

  void LatestFor(std::string ip, std::optional<std::string> user_agent,
                 ReadCallback<std::optional<Verdict>> done) override;
  void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                  ClickCallback done) override;
  void ClaimClick(ClickClaim claim, ReadCallback<ClaimResult> done) override;
  void SetAllowanceMark(AllowanceMark mark, DoneCallback done) override;
  void SetFlightListener(FlightListener* listener) override;
  void TryLease(std::string name, std::string owner, absl::Duration lease,
                ReadCallback<bool> done) override;
  void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) override;
  void History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) override;
  void Clicks(ClickQuery query, ReadCallback<std::vector<ClickRecord>> done) override;
  void AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) override;
  void Usage(std::string caller, absl::Time since, absl::Time until,
             ReadCallback<std::vector<DailyUsage>> done) override;
  void ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) override;
  void PruneBefore(absl::Time cutoff, int max_rows,
                   std::function<void(absl::StatusOr<int64_t>)> done) override;
  void Secret(std::string name, size_t bytes, ReadCallback<std::string> done) override;
  void Ping(DoneCallback done) override;
  void Flush() override;

 private:
  struct BeginClickOp {
    std::string caller;
    std::string ip;
    int64_t requested_at_us;
    ClickCallback done;
  };
  struct ClaimOp {
    ClickClaim claim;
    ReadCallback<ClaimResult> done;
  };
  struct LeaseOp {
    std::string name;
    std::string owner;
    absl::Duration lease;
    ReadCallback<bool> done;
  };
  struct CompleteClickOp {
    int64_t click_id;
    ClickCompletion completion;
    int64_t completed_at_us;
    DoneCallback done;
  };
  struct AddUsageOp {
    std::vector<UsageDelta> deltas;
    DoneCallback done;
  };
  struct PruneOp {
    int64_t cutoff_us;
    int64_t max_rows;
    std::function<void(absl::StatusOr<int64_t>)> done;
  };
  struct PutMetaOp {
    std::string name;
    std::string value;
    DoneCallback done;
    bool replace = false;  // false: a row already there is kept (Secret's first writer wins)
  };
  // Ping's trial write; its result is what it does to the recorded write health.
  struct ProbeOp {
    int64_t now_us;
  };
  using WriteOp = std::variant<BeginClickOp, ClaimOp, LeaseOp, CompleteClickOp, AddUsageOp, PruneOp,
                               PutMetaOp, ProbeOp>;

  // What one operation produced inside its group.
  struct Outcome {
    int64_t value = 0;    // a click id, rows deleted, ...
    ClaimResult claim;    // ClaimOp
    bool leased = false;  // LeaseOp
    // Flight keys whose claims this operation released (CompleteClickOp).
    std::vector<std::string> ended_flights;
  };
  using OpResult = absl::StatusOr<Outcome>;

  void Enqueue(WriteOp op);
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return !queue_.empty() || stopping_;
  }
  void WriterLoop();
  void CommitGroup(std::vector<WriteOp>& group);
  // One attempt at the group's transaction: OK once committed, with one result per operation.
  // `at_commit` is set once COMMIT was sent (a failure then leaves the outcome unknown).
  absl::Status TryGroup(Connection& conn, const std::vector<WriteOp>& group,
                        std::vector<OpResult>& results, bool& at_commit);
  OpResult Apply(Connection& conn, const BeginClickOp& op);
  OpResult Apply(Connection& conn, const ClaimOp& op);
  OpResult Apply(Connection& conn, const LeaseOp& op);
  OpResult Apply(Connection& conn, const CompleteClickOp& op);
  OpResult Apply(Connection& conn, const AddUsageOp& op);
  OpResult Apply(Connection& conn, const PruneOp& op);
  OpResult Apply(Connection& conn, const PutMetaOp& op);
  OpResult Apply(Connection& conn, const ProbeOp& op);
  // Inserts the pending ledger row and counts it: BeginClick's work, also ClaimClick's.
  absl::StatusOr<int64_t> InsertClick(Connection& conn, absl::string_view caller,
                                      absl::string_view ip, int64_t requested_at_us);
  void Deliver(WriteOp& op, const OpResult& result);
  // Records how the latest write attempt went, for Ping.
  void RecordWriteHealth(const absl::Status& status);

  using ReadTask = std::function<void(Slot&)>;
  // Queues `task` to a reader thread; once the readers are stopping, runs it here instead on a
  // connection of its own (only store threads issue reads then).
  void PostRead(ReadTask task);
  bool HasReadOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(reads_mu_) {
    return !read_queue_.empty() || readers_stopping_;
  }
  void ReaderLoop(Slot& slot);
  // Runs `read` on the slot's connection, opening it first if needed, and drops the connection
  // if the read broke it.
  template <typename T>
  absl::StatusOr<T> WithReader(Slot& slot,
                               const std::function<absl::StatusOr<T>(Connection&)>& read);
  absl::StatusOr<std::optional<Verdict>> ReadLatestFor(Slot& slot, absl::string_view ip,
                                                       std::optional<absl::string_view> user_agent);
  absl::StatusOr<std::vector<HistoryEntry>> ReadHistory(Slot& slot, const HistoryQuery& query);
  absl::StatusOr<std::vector<ClickRecord>> ReadClicks(Slot& slot, const ClickQuery& query);
  absl::StatusOr<std::vector<DailyUsage>> ReadUsage(Slot& slot, absl::string_view caller,
                                                    absl::Time since, absl::Time until);
  absl::StatusOr<ClickCounts> ReadClicksSince(Slot& slot, absl::Time since);
  absl::StatusOr<std::optional<std::string>> ReadMeta(Slot& slot, const std::string& name);
  absl::Status PingNow(Slot& slot);

  void ListenerLoop();
  // Waits up to `timeout` for the store to stop; true if it is stopping.
  bool ListenerWaitForStop(absl::Duration timeout);
  void TellFlightEnded(const std::string& key);
  void TellFlightsMayHaveEnded();

  ConnectSpec SpecFor(const char* role) const;

  const PostgresStoreOptions options_;
  const ConnectSpec spec_;

  // Used only by the writer thread while it runs.
  Slot writer_;
  // One per reader thread, each used only by its thread.
  std::deque<Slot> readers_;
  // Used only by the listener thread (which reconnects it itself: it must LISTEN again).
  std::unique_ptr<Connection> listener_conn_;

  absl::Mutex reads_mu_;
  std::deque<ReadTask> read_queue_ ABSL_GUARDED_BY(reads_mu_);
  bool readers_stopping_ ABSL_GUARDED_BY(reads_mu_) = false;

  absl::Mutex queue_mu_;
  std::deque<WriteOp> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  // Operations ever queued, and ever finished (committed or failed, callback returned). Ops are
  // finished in queue order, so "finished_ >= n" means the first n are done.
  uint64_t enqueued_ ABSL_GUARDED_BY(queue_mu_) = 0;
  uint64_t finished_ ABSL_GUARDED_BY(queue_mu_) = 0;

  absl::Mutex health_mu_;
  // The failure of the latest write attempt and when it happened; OK after a successful commit.
  absl::Status write_error_ ABSL_GUARDED_BY(health_mu_);
  absl::Time write_error_at_ ABSL_GUARDED_BY(health_mu_);
  bool probe_queued_ ABSL_GUARDED_BY(health_mu_) = false;

  // Held while a listener callback runs, so that SetFlightListener returns only once no
  // callback of the listener it replaced is running.
  absl::Mutex flight_listener_mu_;
  FlightListener* flight_listener_ ABSL_GUARDED_BY(flight_listener_mu_) = nullptr;

  // Wakes the listener thread's poll() when the store stops (an eventfd).
  int listener_wake_fd_ = -1;
  absl::Mutex listener_stop_mu_;
  bool listener_stopping_ ABSL_GUARDED_BY(listener_stop_mu_) = false;

  std::thread writer_thread_;
  std::vector<std::thread> reader_threads_;
  std::thread listener_thread_;
};

}  // namespace postgres_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_POSTGRES_POSTGRES_STORE_IMPL_H_
