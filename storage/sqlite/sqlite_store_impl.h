#ifndef VERDICTD_STORAGE_SQLITE_SQLITE_STORE_IMPL_H_
#define VERDICTD_STORAGE_SQLITE_SQLITE_STORE_IMPL_H_

// The SQLite implementation of VerdictStore.
//
// One write connection, owned by one writer thread, commits queued writes in groups
// (sqlite_writer.cc); reads are queued to a few reader threads, each with a read-only connection
// of its own, so no caller's thread ever waits for the file (sqlite_reads.cc). WAL lets the
// readers run while the writer commits. Every connection is used by one thread at a time
// (SQLITE_OPEN_NOMUTEX). Connections are opened in sqlite_connection.cc, the schema and the
// statements' text are in sqlite_schema.{h,cc}.

#include <sqlite3.h>

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
#include "absl/time/time.h"
#include "storage/sqlite/sqlite_connection.h"
#include "storage/sqlite/sqlite_store.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace sqlite_store_internal {

// Reader threads, each with its own connection: WAL lets them read concurrently, and a few cover
// the hit path's misses and the audit reads without one slow History page holding up LatestFor.
constexpr int kReaderThreads = 4;

class SqliteStore final : public VerdictStore {
 public:
  // `file` identifies the database file the writer opened (see Ping).
  SqliteStore(SqliteStoreOptions options, std::unique_ptr<WriteConnection> writer,
              FileIdentity file)
      : options_(std::move(options)), file_(file), writer_(std::move(writer)) {
    writer_thread_ = std::thread([this] { WriterLoop(); });
    for (int i = 0; i < kReaderThreads; ++i) {
      reader_threads_.emplace_back([this] { ReaderLoop(); });
    }
  }

  // Answers every queued read and closes the readers, then commits (or fails) and reports every
  // queued write and finally closes the writer, whose close checkpoints the WAL into the main
  // file. A read issued meanwhile (by a write's callback, e.g. Secret's) runs on the issuing
  // store thread.
  ~SqliteStore() override {
    {
      absl::MutexLock lock(&reads_mu_);
      readers_stopping_ = true;
    }
    for (std::thread& reader : reader_threads_) {
      reader.join();
    }
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    writer_thread_.join();
  }

  void LatestFor(std::string ip, std::optional<std::string> user_agent,
                 ReadCallback<std::optional<Verdict>> done) override;
  void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                  ClickCallback done) override;
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
  void ClaimClick(ClickClaim claim, ReadCallback<ClaimResult> done) override;
  void SetAllowanceMark(AllowanceMark mark, DoneCallback done) override;
  void SetFlightListener(FlightListener* listener) override;
  void TryLease(std::string name, std::string owner, absl::Duration lease,
                ReadCallback<bool> done) override;

 private:
  struct BeginClickOp {
    std::string caller;
    std::string ip;
    int64_t requested_at_us;
    ClickCallback done;
  };
  struct ClaimClickOp {
    ClickClaim claim;
    ReadCallback<ClaimResult> done;
    ClaimResult result;  // set by Apply
  };
  struct CompleteClickOp {
    int64_t click_id;
    ClickCompletion completion;
    int64_t completed_at_us;
    DoneCallback done;
    std::optional<std::string> released_key;  // set by Apply: the claim it released
  };
  struct TryLeaseOp {
    std::string name;
    std::string owner;
    absl::Duration lease;
    ReadCallback<bool> done;
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
  using WriteOp = std::variant<BeginClickOp, ClaimClickOp, CompleteClickOp, AddUsageOp, PruneOp,
                               PutMetaOp, ProbeOp, TryLeaseOp>;

  // The result of one operation inside a group, and whether the group's transaction survived it.
  struct Applied {
    absl::StatusOr<int64_t> result;
    absl::Status transaction;
  };

  void Enqueue(WriteOp op);
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return !queue_.empty() || stopping_;
  }
  void WriterLoop();
  void CommitGroup(std::vector<WriteOp>& group);
  Applied ApplyInSavepoint(WriteOp& op);
  absl::StatusOr<int64_t> Apply(BeginClickOp& op);
  // Inserts the pending ledger row and counts it; the click's id.
  absl::StatusOr<int64_t> InsertClick(const std::string& caller, const std::string& ip,
                                      int64_t requested_at_us);
  absl::StatusOr<int64_t> Apply(ClaimClickOp& op);
  absl::StatusOr<int64_t> Apply(TryLeaseOp& op);
  absl::StatusOr<int64_t> Apply(CompleteClickOp& op);
  absl::StatusOr<int64_t> Apply(AddUsageOp& op);
  absl::StatusOr<int64_t> Apply(PruneOp& op);
  absl::StatusOr<int64_t> Apply(PutMetaOp& op);
  absl::StatusOr<int64_t> Apply(ProbeOp& op);
  void Deliver(WriteOp& op, const absl::StatusOr<int64_t>& result);
  // Records how the latest write attempt went, for Ping.
  void RecordWriteHealth(const absl::Status& status);

  // A reader thread's connection: opened on first use, and dropped when a read on it fails
  // (it may be the cause), so the next read opens a fresh one.
  using Reader = std::unique_ptr<ReadConnection>;
  using ReadTask = std::function<void(Reader&)>;
  // Queues `task` to a reader thread; once the readers are stopping, runs it here instead (only
  // store threads issue reads then).
  void PostRead(ReadTask task);
  bool HasReadOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(reads_mu_) {
    return !read_queue_.empty() || readers_stopping_;
  }
  void ReaderLoop();
  // Runs `read` on `reader`, opening it first if needed.
  template <typename T>
  absl::StatusOr<T> WithReader(Reader& reader,
                               const std::function<absl::StatusOr<T>(ReadConnection&)>& read);
  absl::StatusOr<std::optional<Verdict>> ReadLatestFor(Reader& reader, absl::string_view ip,
                                                       std::optional<absl::string_view> user_agent);
  absl::StatusOr<std::vector<HistoryEntry>> ReadHistory(Reader& reader, const HistoryQuery& query);
  absl::StatusOr<std::vector<ClickRecord>> ReadClicks(Reader& reader, const ClickQuery& query);
  absl::StatusOr<std::vector<DailyUsage>> ReadUsage(Reader& reader, absl::string_view caller,
                                                    absl::Time since, absl::Time until);
  absl::StatusOr<ClickCounts> ReadClicksSince(Reader& reader, absl::Time since);
  absl::StatusOr<std::optional<std::string>> ReadMeta(Reader& reader, const std::string& name);
  absl::Status PingNow(Reader& reader);

  const SqliteStoreOptions options_;
  // The database file as opened: Ping notices when the path names another file.
  const FileIdentity file_;

  // Used only by the writer thread while it runs.
  const std::unique_ptr<WriteConnection> writer_;

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

  // Held while a flight listener runs, so that SetFlightListener can wait for it.
  absl::Mutex listener_mu_;
  FlightListener* listener_ ABSL_GUARDED_BY(listener_mu_) = nullptr;

  std::thread writer_thread_;
  std::vector<std::thread> reader_threads_;
};

}  // namespace sqlite_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_SQLITE_STORE_IMPL_H_
