#ifndef VERDICTD_STORAGE_VERDICT_STORE_H_
#define VERDICTD_STORAGE_VERDICT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/verdict.h"

namespace verdictd {

// How a click (one request to ClickPatrol) ended. Stored as its integer value.
enum class ClickOutcome {
  kPending = 0,        // recorded before sending; never completed (e.g. a crash): still spent
  kVerdict = 1,        // ClickPatrol answered with a verdict
  kUpstreamError = 2,  // sent (or maybe sent) and failed: still spent
  kNotSent = 3,        // provably never left (connect failure): not billed
};

// What is known when a click ends.
struct ClickCompletion {
  ClickOutcome outcome = ClickOutcome::kPending;
  int http_status = 0;
  std::string error;  // short description, no secrets; "" on success
  absl::Duration latency;
  // Present iff outcome == kVerdict: appended to the history in the same transaction.
  std::optional<Verdict> verdict;
  std::string raw_body;  // the response body stored with the verdict
};

// One row of the verdict history.
struct HistoryEntry {
  int64_t id = 0;  // increases with insertion; breaks ties between equal checked_at
  Verdict verdict;
};

// Where a history page ends: the next page holds the entries strictly older than this one in
// (checked_at, id) order.
struct HistoryCursor {
  absl::Time checked_at;
  int64_t id = 0;
};

struct HistoryQuery {
  std::string ip;                             // canonical form
  absl::Time since = absl::InfinitePast();    // inclusive
  absl::Time until = absl::InfiniteFuture();  // exclusive
  int limit = 100;                            // REQUIRES: > 0
  std::optional<HistoryCursor> after;         // resume after this entry
};

// Counters for one caller on one UTC day.
struct UsageCounts {
  int64_t clicks = 0;           // billed requests (ledger rows not marked not-sent)
  int64_t upstream_errors = 0;  // billed requests that produced no verdict
  int64_t cache_hits = 0;       // answers from the store
  int64_t requests = 0;         // checks asked

  UsageCounts& operator+=(const UsageCounts& o) {
    clicks += o.clicks;
    upstream_errors += o.upstream_errors;
    cache_hits += o.cache_hits;
    requests += o.requests;
    return *this;
  }
};

struct DailyUsage {
  std::string caller;
  absl::CivilDay day;  // UTC
  UsageCounts counts;
};

// Increments of the batched per-day counters (cache_hits, requests) for one caller and day.
struct UsageDelta {
  std::string caller;
  absl::CivilDay day;  // UTC
  int64_t cache_hits = 0;
  int64_t requests = 0;
};

// The persistent verdict history and click ledger.
//
// Thread-safe. Reads run on the calling thread. Writes are queued to one writer thread that
// commits them in groups; their callbacks run on that thread after the commit is durable (or
// failed) and must not block.
class VerdictStore {
 public:
  using DoneCallback = std::function<void(absl::Status)>;
  using ClickCallback = std::function<void(absl::StatusOr<int64_t>)>;

  virtual ~VerdictStore() = default;

  // The newest stored verdict for `ip` (canonical form), or nullopt. When `user_agent` is given,
  // only verdicts produced with exactly that user agent count.
  virtual absl::StatusOr<std::optional<Verdict>> LatestFor(
      absl::string_view ip, std::optional<absl::string_view> user_agent) = 0;

  // Durably records that `caller` is about to send a request about `ip`, as a pending click.
  // `done` receives the click's id once the row is committed. Send only after that.
  virtual void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                          ClickCallback done) = 0;

  // Completes a click begun with BeginClick, appending completion.verdict (if any) to the
  // history in the same transaction.
  virtual void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) = 0;

  // Every stored verdict for query.ip with since <= checked_at < until, newest first (then by id
  // descending), at most query.limit, starting after query.after. An index range scan that starts
  // at the cursor, so every page costs about the same. Paging with the last entry of each page
  // as the next cursor returns each entry exactly once, even when entries share a checked_at.
  // INVALID_ARGUMENT when query.limit <= 0.
  virtual absl::StatusOr<std::vector<HistoryEntry>> History(const HistoryQuery& query) = 0;

  // Adds batched counters (upsert per caller and day). Queued to the writer like other writes;
  // the deltas are applied all or none. INVALID_ARGUMENT for a negative delta.
  virtual void AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) = 0;

  // Usage per caller per UTC day, for the days from CivilDay(since) to the day containing
  // until - 1us, both in UTC; caller "" means every caller. Clicks and upstream errors are those of
  // the ledger (by requested_at day; clicks as in ClicksSince, upstream errors only the rows
  // completed as kUpstreamError, not pending ones), cache hits and requests the batched counters.
  // Sorted by caller, then day; days with nothing are omitted. Whole days are counted, also when
  // since falls inside a day. The day range is clamped to 1970-01-01 .. 9999-12-31, so infinite
  // bounds mean "every day"; an empty range gives an empty result. One consistent snapshot.
  //
  // Cost: the ledger's clicks are kept as per-day counters, updated in the same transaction as
  // the ledger row (BeginClick, CompleteClick), so this reads callers x days counter rows however
  // large the ledger is. The counters of a day are pruned only with the whole day (see
  // PruneBefore): for the day a cutoff falls inside, they still include the clicks pruned from the
  // ledger before the cutoff.
  virtual absl::StatusOr<std::vector<DailyUsage>> Usage(absl::string_view caller, absl::Time since,
                                                        absl::Time until) = 0;

  // Billed clicks (ledger rows with requested_at >= since that are not marked not-sent, pending
  // ones included) per caller, sorted by caller; callers with none are absent. Used at start-up
  // to restore budget and allowance counters.
  //
  // Exact for any `since`, and cheapest for a UTC midnight (month and allowance periods always
  // start on one): the whole days from since on are summed from the per-day counters (see Usage),
  // so the cost grows with callers x days, not with the ledger; when since falls inside a day, the
  // rest of that day is counted from the ledger (at most one day of rows). Like Usage, the whole
  // days count clicks pruned from the ledger on a day a prune cutoff fell inside.
  virtual absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> ClicksSince(
      absl::Time since) = 0;

  // Deletes at most `max_rows` of the oldest history rows (checked_at < cutoff), then with what
  // is left of the budget ledger rows (requested_at < cutoff, pending ones included: they are
  // left by a crash long ago) and usage counters of days wholly before cutoff, in one short
  // write transaction on the writer thread; `done` receives the number of rows deleted (0 when
  // nothing is left to prune), so call it again until it reports 0. Readers are never blocked.
  // INVALID_ARGUMENT (through `done`) when max_rows <= 0.
  virtual void PruneBefore(absl::Time cutoff, int max_rows,
                           std::function<void(absl::StatusOr<int64_t>)> done) = 0;

  // A named random secret of `bytes` bytes, created on first use from the kernel's CSPRNG and
  // kept in the database (e.g. the key that signs page tokens, so tokens survive restarts).
  // Concurrent first calls (also from several processes) all get the same secret.
  // FAILED_PRECONDITION when the stored secret has another length; INVALID_ARGUMENT for an empty
  // name or a size outside 1..1024. Blocks until the new secret is committed.
  // REQUIRES: not called from a write callback (it would wait for itself).
  virtual absl::StatusOr<std::string> Secret(absl::string_view name, size_t bytes) = 0;

  // For health checks; never blocks on the writer. UNAVAILABLE "store read failed: ..." when the
  // store cannot be read (a trivial query on a read connection) or the database path no longer
  // names the file the store opened (deleted or replaced: writes would be lost). UNAVAILABLE
  // "store writes failing since <time>: ..." while the latest write transaction failed (or one
  // of its statements failed for a storage reason, e.g. disk full or I/O error); the next
  // successful commit clears it. While writes are failing each Ping queues one trial write (if
  // none is pending), so recovery is noticed even when nothing else writes.
  virtual absl::Status Ping() = 0;

  // Blocks until every write queued before this call is committed or failed and its callback
  // has returned. REQUIRES: not called from a write callback (it would wait for itself).
  virtual void Flush() = 0;
};

}  // namespace verdictd

#endif  // VERDICTD_STORAGE_VERDICT_STORE_H_
