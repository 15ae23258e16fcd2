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
#include "absl/synchronization/notification.h"
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
  // Unique among the entries of one IP, and orders them together with checked_at: it breaks ties
  // between equal checked_at. Not assumed to come from a single writer, nor to follow insertion
  // order across processes (a shared database has many writers).
  int64_t id = 0;
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

// One row of the click ledger (one request to ClickPatrol, or one that provably never left),
// with the verdict it produced.
struct ClickRecord {
  int64_t id = 0;  // unique; orders the clicks of one requested_at together with it
  std::string caller;
  std::string ip;  // canonical form
  absl::Time requested_at;
  std::optional<absl::Time> completed_at;  // nullopt while pending
  ClickOutcome outcome = ClickOutcome::kPending;
  int http_status = 0;  // 0 when none was received
  std::string error;    // as completed ("" on success or while pending)
  absl::Duration latency;
  // The verdict the click produced (outcome kVerdict), unless it was pruned since.
  std::optional<Verdict> verdict;
};

// Where a ledger page ends: the next page holds the clicks strictly older than this one in
// (requested_at, id) order.
struct ClickCursor {
  absl::Time requested_at;
  int64_t id = 0;
};

struct ClickQuery {
  std::string caller;                         // "" means every caller
  std::string ip;                             // "" means every IP; else canonical form
  absl::Time since = absl::InfinitePast();    // requested_at, inclusive
  absl::Time until = absl::InfiniteFuture();  // requested_at, exclusive
  int limit = 100;                            // REQUIRES: > 0
  std::optional<ClickCursor> after;           // resume after this click
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

// A click to begin under a single-flight claim, with the caller's budget (and its team's)
// reserved in the same transaction (see VerdictStore::ClaimClick).
struct ClickClaim {
  std::string caller;
  std::string ip;  // canonical form
  absl::Time requested_at;
  // What single flight is keyed by (the IP, or the IP and the user agent); opaque bytes. Every
  // process sharing the store that claims the same key while the claim is held is told
  // kFlightHeld instead of beginning a click.
  std::string flight_key;
  // Who holds the claim (a replica's id), for operators; not used for fencing (the click id is).
  std::string owner;
  // How long the claim holds without completion: longer than the whole upstream request (with
  // its retries), so that a live owner never loses it. After it, the owner is presumed dead and
  // the next claimant takes over. Measured by the store's time (the database's clock for a
  // shared database), so the clocks of the processes never matter. REQUIRES: > 0.
  absl::Duration lease;
  // The caller's clicks per calendar month (UTC; the month containing requested_at); 0:
  // unlimited. Checked against the billed clicks of that month (as ClicksSince counts them) by
  // every process sharing the store, atomically with beginning the click.
  int64_t monthly_budget = 0;
  // What the claimant already read of the key's stored verdicts: when set, a stored verdict for
  // `ip` (and `user_agent`, when set: the LatestFor lookup) checked after *newer_than
  // (absl::InfinitePast(): the claimant found none) ends the claim with kVerdictLanded instead:
  // another process's flight answered the key between the claimant's read and its claim, and
  // paying for it again would be a second click for one answer. Checked in the claim's own
  // atomic step, so no verdict can land between the check and the claim.
  std::optional<absl::Time> newer_than;
  std::optional<std::string> user_agent;
  // When > 0, the shared "allowance exhausted" mark (VerdictStore::SetAllowanceMark) is
  // honoured: while it holds at requested_at, the claim begins only as the probe — at most one
  // per this interval among every process sharing the store, the mark recording when the next
  // may go — and is otherwise refused with kAllowanceExhausted.
  absl::Duration allowance_probe_interval = absl::ZeroDuration();
  // The caller's team, when its clicks also count against a team budget: every caller of the
  // team (claim.caller among them) and the team's clicks per calendar month (UTC; 0: none).
  // Checked like monthly_budget, against the summed billed clicks of team_callers that month,
  // atomically with beginning the click, by every process sharing the store.
  std::string team;
  std::vector<std::string> team_callers;
  int64_t team_monthly_budget = 0;
};

// ClickPatrol said the plan's click allowance is exhausted: until exhausted_until no claim
// begins except one probe per interval, the next not before next_probe.
struct AllowanceMark {
  absl::Time exhausted_until = absl::InfinitePast();  // InfinitePast(): not exhausted
  absl::Time next_probe = absl::InfinitePast();
};

struct ClaimResult {
  enum class Kind {
    kBegun,          // the claim is ours and the pending click is committed: send the request
    kFlightHeld,     // another claim on the key holds: wait for it (nothing was written)
    kBudgetSpent,    // monthly_budget clicks are already billed this month (nothing was written)
    kVerdictLanded,  // a verdict newer than newer_than is stored: `landed` (nothing was written)
    kAllowanceExhausted,  // the allowance mark holds and the probe is not due: `allowance`
    // team_monthly_budget clicks are already billed this month by the team's callers (nothing
    // was written). Checked after kBudgetSpent, before kAllowanceExhausted.
    kTeamBudgetSpent,
  };
  Kind kind = Kind::kBegun;
  int64_t click_id = 0;  // kBegun
  // kFlightHeld: how long the holder's lease has left (by the store's time).
  absl::Duration lease_left;
  // kBegun, kBudgetSpent with a monthly_budget: the caller's billed clicks this month, this one
  // included (for kBegun). Also kTeamBudgetSpent with a monthly_budget: the caller's, without it.
  int64_t month_clicks = 0;
  // kBegun, kTeamBudgetSpent with a team_monthly_budget: the team's billed clicks this month,
  // this one included (for kBegun).
  int64_t team_month_clicks = 0;
  std::optional<Verdict> landed;  // kVerdictLanded: the newest stored verdict for the lookup
  AllowanceMark allowance;        // kAllowanceExhausted: the mark that refused it
};

// Hears, on a store thread, that a claimed flight ended (its click was completed, in this process
// or, where the backend can hear it, in another one sharing the store). Must not block.
class FlightListener {
 public:
  virtual ~FlightListener() = default;
  // The claim on `flight_key` was released: its verdict (if any) is durable.
  virtual void OnFlightEnded(const std::string& flight_key) = 0;
  // Some endings may have been missed (e.g. a notification connection was re-established):
  // every waiter should look again.
  virtual void OnFlightsMayHaveEnded() = 0;
};

// The persistent verdict history and click ledger.
//
// The contract promises only what a networked, shared database can keep (the next backend is a
// PostgreSQL that several verdictd processes use at once), so that callers never depend on one
// embedded file or one process:
// - Thread-safe, and no call blocks on I/O except Flush.
// - Every read and write takes a completion callback, invoked exactly once on a thread owned by
//   the store, after the call has returned: never inline on the caller's thread. So a gRPC
//   reactor thread never waits for the store, and a caller may issue a call while holding a
//   lock its callback takes (it will not deadlock on itself). Callbacks must not block.
// - A write's callback runs once its result is durable (or the write failed).
// - No order between independent calls: two writes issued one after the other may commit in
//   either order, and a read issued after a write was issued may or may not see it. A caller
//   that needs an order issues the second call from the first one's callback; a read issued
//   from a write's callback sees that write.
class VerdictStore {
 public:
  using DoneCallback = std::function<void(absl::Status)>;
  using ClickCallback = std::function<void(absl::StatusOr<int64_t>)>;
  template <typename T>
  using ReadCallback = std::function<void(absl::StatusOr<T>)>;
  using ClickCounts = std::vector<std::pair<std::string, int64_t>>;

  virtual ~VerdictStore() = default;

  // The newest stored verdict for `ip` (canonical form), or nullopt. When `user_agent` is given,
  // only verdicts produced with exactly that user agent count.
  virtual void LatestFor(std::string ip, std::optional<std::string> user_agent,
                         ReadCallback<std::optional<Verdict>> done) = 0;

  // Durably records that `caller` is about to send a request about `ip`, as a pending click.
  // `done` receives the click's id once the row is committed. Send only after that.
  virtual void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                          ClickCallback done) = 0;

  // Begins a click as BeginClick does, but only if no other live claim holds
  // `claim.flight_key` and the caller's budget and its team's budget each allow one more click:
  // the claim, the budget checks and the pending ledger row are one transaction, so processes
  // sharing the store together send at most one request per key at a time and never overshoot a
  // budget, a caller's or a team's. A team's clicks are those billed to the callers the claim
  // names in team_callers (the store keeps no team of its own: membership is the claimant's, as
  // of the claim), so claims of one team must name the same callers for the team budget to hold.
  // The claim is released by CompleteClick of its click (and only by it: a claim taken over
  // after its lease ran out is not released by the old owner's completion), or lapses with its
  // lease. Claiming a key whose lease ran out takes it over; the old owner's pending click stays
  // pending (billed). Checked in this order: a live claim (kFlightHeld), a verdict newer than
  // claim.newer_than (kVerdictLanded), the caller's budget (kBudgetSpent), the team's budget
  // (kTeamBudgetSpent), the allowance mark (kAllowanceExhausted); each of them writes nothing.
  // A not-sent click (ClickOutcome::kNotSent) gives its click back to both budgets. A claim that
  // begins as the allowance probe moves the mark's next_probe to requested_at +
  // allowance_probe_interval in the same transaction.
  // INVALID_ARGUMENT for an empty flight_key, a lease <= 0, a negative monthly_budget or
  // team_monthly_budget, or a team_monthly_budget > 0 with an empty team or with team_callers not
  // naming claim.caller.
  virtual void ClaimClick(ClickClaim claim, ReadCallback<ClaimResult> done) = 0;

  // Registers the listener told when claimed flights end (see FlightListener); nullptr
  // unregisters it. Once this returns no callback of a listener it replaced is running or will
  // run. At most one listener at a time. REQUIRES: not called from a store callback.
  virtual void SetFlightListener(FlightListener* listener) = 0;

  // Takes or renews the named lease `name` for `owner` for `lease` (store time), unless another
  // owner holds it unexpired: true when `owner` holds it now. For chores that must run on one
  // process at a time among those sharing the store (pruning).
  // INVALID_ARGUMENT for an empty name or owner or a lease <= 0.
  // Sets the "allowance exhausted" mark that claims honour (see ClickClaim) for every process
  // sharing the store; a mark with exhausted_until = InfinitePast() clears it.
  virtual void SetAllowanceMark(AllowanceMark mark, DoneCallback done) = 0;

  virtual void TryLease(std::string name, std::string owner, absl::Duration lease,
                        ReadCallback<bool> done) = 0;

  // Completes a click begun with BeginClick, appending completion.verdict (if any) to the
  // history in the same transaction. A click begun by ClaimClick releases its claim in that
  // transaction too (if the claim is still its own), and once committed the flight listeners of
  // every process sharing the store are told (FlightListener::OnFlightEnded).
  virtual void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) = 0;

  // Every stored verdict for query.ip with since <= checked_at < until, newest first (then by id
  // descending), at most query.limit, starting after query.after. An index range scan that starts
  // at the cursor, so every page costs about the same. Paging with the last entry of each page
  // as the next cursor returns each entry exactly once, even when entries share a checked_at.
  // INVALID_ARGUMENT when query.limit <= 0.
  virtual void History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) = 0;

  // The ledger's clicks with since <= requested_at < until, of query.caller and query.ip when
  // set, newest first (then by id descending), at most query.limit, starting after query.after,
  // each with the verdict it produced. Like History, an index range scan that starts at the
  // cursor (by IP, by caller, or by time, whichever the query narrows to), so every page costs
  // about the same however large the ledger grows; paging with the last click of each page as
  // the next cursor returns each click exactly once. INVALID_ARGUMENT when query.limit <= 0.
  virtual void Clicks(ClickQuery query, ReadCallback<std::vector<ClickRecord>> done) = 0;

  // Adds batched counters (upsert per caller and day). The deltas are applied all or none.
  // INVALID_ARGUMENT for a negative delta.
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
  virtual void Usage(std::string caller, absl::Time since, absl::Time until,
                     ReadCallback<std::vector<DailyUsage>> done) = 0;

  // Billed clicks (ledger rows with requested_at >= since that are not marked not-sent, pending
  // ones included) per caller, sorted by caller; callers with none are absent. Used at start-up
  // to restore budget and allowance counters.
  //
  // Exact for any `since`, and cheapest for a UTC midnight (month and allowance periods always
  // start on one): the whole days from since on are summed from the per-day counters (see Usage),
  // so the cost grows with callers x days, not with the ledger; when since falls inside a day, the
  // rest of that day is counted from the ledger (at most one day of rows). Like Usage, the whole
  // days count clicks pruned from the ledger on a day a prune cutoff fell inside.
  virtual void ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) = 0;

  // Deletes at most `max_rows` of the oldest history rows (checked_at < cutoff), then with what
  // is left of the budget ledger rows (requested_at < cutoff, pending ones included: they are
  // left by a crash long ago) and usage counters of days wholly before cutoff, in one short
  // write transaction, and flight claims whose lease ran out (their owners died; see ClaimClick);
  // `done` receives the number of rows deleted (0 when nothing is left to
  // prune), so call it again until it reports 0. Readers are never blocked.
  // INVALID_ARGUMENT (through `done`) when max_rows <= 0.
  virtual void PruneBefore(absl::Time cutoff, int max_rows,
                           std::function<void(absl::StatusOr<int64_t>)> done) = 0;

  // A named random secret of `bytes` bytes, created on first use from the kernel's CSPRNG and
  // kept in the database (e.g. the key that signs page tokens, so tokens survive restarts).
  // Concurrent first calls (also from several processes) all get the same secret.
  // FAILED_PRECONDITION when the stored secret has another length; INVALID_ARGUMENT for an empty
  // name or a size outside 1..1024. `done` runs once a new secret is committed.
  virtual void Secret(std::string name, size_t bytes, ReadCallback<std::string> done) = 0;

  // Whether the store is usable now, for health checks (polled): OK, or UNAVAILABLE "store read
  // failed: ..." when the store cannot be read or would lose what is written to it, or
  // UNAVAILABLE "store writes failing since <time>: ..." while the latest write failed for a
  // storage reason (e.g. disk full, I/O error, connection lost); the next successful write
  // clears it. While writes are failing each Ping starts one trial write (if none is pending),
  // so recovery is noticed even when nothing else writes. Never waits for queued writes.
  virtual void Ping(DoneCallback done) = 0;

  // Blocks until every write issued before this call has completed and its callback has
  // returned. For shutdown and tests only: never called on a request path.
  // REQUIRES: not called from a store callback (it would wait for itself).
  virtual void Flush() = 0;
};

// Issues a read through `start` (which passes the callback it is given to one VerdictStore
// call) and blocks until its answer. For start-up and tests only: never on a gRPC reactor
// thread, and never from a store callback (it would wait for itself).
template <typename T, typename Start>
absl::StatusOr<T> AwaitRead(Start start) {
  absl::Notification answered;
  absl::StatusOr<T> result;
  start([&](absl::StatusOr<T> answer) {
    result = std::move(answer);
    answered.Notify();
  });
  answered.WaitForNotification();
  return result;
}

}  // namespace verdictd

#endif  // VERDICTD_STORAGE_VERDICT_STORE_H_
