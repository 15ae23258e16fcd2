// The PostgreSQL store's group-commit writer: one thread takes queued writes in groups, applies
// each in its own savepoint of one transaction, commits, and only then runs the callbacks (as
// sqlite_writer.cc does).

#include <libpq-fe.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "storage/postgres/postgres_connection.h"
#include "storage/postgres/postgres_schema.h"
#include "storage/postgres/postgres_store_impl.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace postgres_store_internal {
namespace {

// Rows a DELETE or UPDATE touched.
int64_t RowsAffected(const PGresult* result) {
  return std::strtoll(PQcmdTuples(const_cast<PGresult*>(result)), nullptr, 10);
}

int64_t LeaseMicros(absl::Duration lease) {
  return absl::ToInt64Microseconds(std::min(lease, kMaxLease));
}

}  // namespace

void PostgresStore::BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                               ClickCallback done) {
  Enqueue(BeginClickOp{std::move(caller), std::move(ip), absl::ToUnixMicros(requested_at),
                       std::move(done)});
}

void PostgresStore::ClaimClick(ClickClaim claim, ReadCallback<ClaimResult> done) {
  Enqueue(ClaimOp{std::move(claim), std::move(done)});
}

void PostgresStore::SetAllowanceMark(AllowanceMark mark, DoneCallback done) {
  Enqueue(PutMetaOp{kAllowanceMarkName, EncodeAllowanceMark(mark), std::move(done),
                    /*replace=*/true});
}

void PostgresStore::TryLease(std::string name, std::string owner, absl::Duration lease,
                             ReadCallback<bool> done) {
  Enqueue(LeaseOp{std::move(name), std::move(owner), lease, std::move(done)});
}

void PostgresStore::CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) {
  // Stamped now: the click ended when its outcome was known, not when the group commits.
  const int64_t completed_at_us = absl::ToUnixMicros(options_.clock->Now());
  Enqueue(CompleteClickOp{click_id, std::move(completion), completed_at_us, std::move(done)});
}

void PostgresStore::AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) {
  Enqueue(AddUsageOp{std::move(deltas), std::move(done)});
}

void PostgresStore::PruneBefore(absl::Time cutoff, int max_rows,
                                std::function<void(absl::StatusOr<int64_t>)> done) {
  Enqueue(PruneOp{CeilUnixMicros(cutoff), max_rows, std::move(done)});
}

void PostgresStore::Flush() {
  absl::MutexLock lock(&queue_mu_);
  const uint64_t target = enqueued_;
  auto reached = [this, target]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) { return finished_ >= target; };
  queue_mu_.Await(absl::Condition(&reached));
}

void PostgresStore::Enqueue(WriteOp op) {
  absl::MutexLock lock(&queue_mu_);
  queue_.push_back(std::move(op));
  ++enqueued_;
}

void PostgresStore::WriterLoop() {
  const size_t max_group = static_cast<size_t>(options_.max_group);
  std::vector<WriteOp> group;
  for (;;) {
    {
      absl::MutexLock lock(&queue_mu_);
      queue_mu_.Await(absl::Condition(this, &PostgresStore::HasWorkOrStopping));
      if (queue_.empty()) {
        return;  // stopping, and everything queued is done
      }
      const size_t n = std::min(queue_.size(), max_group);
      for (size_t i = 0; i < n; ++i) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    CommitGroup(group);
    {
      absl::MutexLock lock(&queue_mu_);
      finished_ += group.size();
    }
    group.clear();
  }
}

// One transaction per group, one savepoint per operation: an operation that fails (unknown
// click, bad argument) is undone alone, while a failure of the transaction itself (connection
// lost, COMMIT refused) fails the whole group, so nothing of it is half-written. A group that a
// deadlock with another replica's transaction aborted is run again from the start: nothing of
// it was committed, and the other side has gone on. Callbacks run only after COMMIT returned.
void PostgresStore::CommitGroup(std::vector<WriteOp>& group) {
  std::vector<OpResult> results;
  absl::Status status;
  bool reconnected = false;
  for (int attempt = 0;; ++attempt) {
    results.clear();
    bool fresh = false;
    absl::StatusOr<Connection*> conn = writer_.Get(&fresh);
    if (!conn.ok()) {
      status = conn.status();
      break;
    }
    bool at_commit = false;
    status = TryGroup(**conn, group, results, at_commit);
    if (status.ok()) {
      break;
    }
    if (!(*conn)->broken() && PQtransactionStatus((*conn)->get()) != PQTRANS_IDLE) {
      Exec(**conn, "ROLLBACK").IgnoreError();
    }
    const bool lost = (*conn)->broken();
    if (lost || PQtransactionStatus((*conn)->get()) != PQTRANS_IDLE) {
      writer_.Drop();
    } else {
      writer_.AfterFailure(status);
    }
    // A connection that died while idle (the server restarted, an idle timeout) fails the first
    // statement sent on it; nothing of the group was committed, so run it once more on a fresh
    // one. Not after a failed COMMIT, whose outcome is unknown.
    if (lost && !fresh && !at_commit && !reconnected) {
      reconnected = true;
      continue;
    }
    if (status.code() != absl::StatusCode::kAborted || attempt + 1 >= kGroupRetries) {
      break;
    }
    spdlog::warn("PostgreSQL store: a group of {} writes was aborted ({}); running it again",
                 group.size(), status.message());
  }
  if (!status.ok()) {
    if (status.code() == absl::StatusCode::kAborted) {
      status = absl::UnavailableError(status.message());
    }
    spdlog::error("PostgreSQL store: a group of {} writes failed: {}", group.size(),
                  status.message());
    RecordWriteHealth(status);
    for (WriteOp& op : group) {
      Deliver(op, status);
    }
    return;
  }
  // A statement that failed inside its savepoint for a storage reason also means writes are
  // failing, though the rest of the group committed.
  absl::Status health;
  for (const OpResult& result : results) {
    if (result.status().code() == absl::StatusCode::kUnavailable) {
      health = result.status();
      break;
    }
  }
  RecordWriteHealth(health);
  if (!health.ok()) {
    // The session may be what refuses writes (e.g. one left read-only on a demoted primary):
    // the next group starts on a fresh one.
    writer_.Drop();
  }
  for (size_t i = 0; i < group.size(); ++i) {
    Deliver(group[i], results[i]);
  }
  // Our own NOTIFY reaches our listener too, but only through the server and only while the
  // listener is connected: tell the waiters of this process at once as well.
  for (const OpResult& result : results) {
    if (result.ok()) {
      for (const std::string& key : result->ended_flights) {
        TellFlightEnded(key);
      }
    }
  }
}

absl::Status PostgresStore::TryGroup(Connection& conn, const std::vector<WriteOp>& group,
                                     std::vector<OpResult>& results, bool& at_commit) {
  if (absl::Status s = Exec(conn, "BEGIN"); !s.ok()) {
    return s;
  }
  if (absl::StatusOr<Result> s = Exec(conn, kLockWriters, Params().Int64(kWriterLockKey));
      !s.ok()) {
    return s.status();
  }
  for (const WriteOp& op : group) {
    if (absl::Status s = Exec(conn, "SAVEPOINT op"); !s.ok()) {
      return s;
    }
    OpResult result = std::visit([&](const auto& o) { return Apply(conn, o); }, op);
    if (!result.ok()) {
      // A lost connection, or a deadlock that must undo the whole transaction (its locks are
      // what the other side waits for), ends the group; any other failure only this operation.
      if (conn.broken() || result.status().code() == absl::StatusCode::kAborted) {
        return result.status();
      }
      if (absl::Status s = Exec(conn, "ROLLBACK TO SAVEPOINT op"); !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = Exec(conn, "RELEASE SAVEPOINT op"); !s.ok()) {
      return s;
    }
    results.push_back(std::move(result));
  }
  if (PQtransactionStatus(conn.get()) != PQTRANS_INTRANS) {
    return absl::UnavailableError("store write failed: the transaction was aborted");
  }
  at_commit = true;
  return Exec(conn, "COMMIT");
}

absl::StatusOr<int64_t> PostgresStore::InsertClick(Connection& conn, absl::string_view caller,
                                                   absl::string_view ip, int64_t requested_at_us) {
  absl::StatusOr<Result> inserted =
      Exec(conn, kInsertClick, Params().Bytes(caller).Bytes(ip).Int64(requested_at_us));
  if (!inserted.ok()) {
    return inserted.status();
  }
  const int64_t id = GetInt64(inserted->get(), 0, 0);
  // In the same savepoint: the counters never disagree with the ledger, even after a crash.
  absl::StatusOr<Result> counted =
      Exec(conn, kCountClick, Params().Bytes(caller).Int64(DayOfMicros(requested_at_us)));
  if (!counted.ok()) {
    return counted.status();
  }
  return id;
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const BeginClickOp& op) {
  absl::StatusOr<int64_t> id = InsertClick(conn, op.caller, op.ip, op.requested_at_us);
  if (!id.ok()) {
    return id.status();
  }
  Outcome outcome;
  outcome.value = *id;
  return outcome;
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const ClaimOp& op) {
  const ClickClaim& claim = op.claim;
  if (claim.flight_key.empty()) {
    return absl::InvalidArgumentError("ClaimClick: flight_key is empty");
  }
  if (claim.lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClaimClick: the lease must be positive");
  }
  if (claim.monthly_budget < 0) {
    return absl::InvalidArgumentError("ClaimClick: monthly_budget must not be negative");
  }
  if (absl::Status s = store_support::CheckTeamBudget(claim); !s.ok()) {
    return s;
  }
  Outcome outcome;
  // The holder's lease left, if a live claim holds the key; nullopt if none does.
  auto live_lease = [&]() -> absl::StatusOr<std::optional<absl::Duration>> {
    absl::StatusOr<Result> left = Exec(conn, kFlightLeaseLeft, Params().Bytes(claim.flight_key));
    if (!left.ok()) {
      return left.status();
    }
    if (PQntuples(left->get()) == 0 || GetInt64(left->get(), 0, 0) <= 0) {
      return std::nullopt;
    }
    return absl::Microseconds(GetInt64(left->get(), 0, 0));
  };
  auto held = [&](absl::Duration lease_left) {
    outcome.claim.kind = ClaimResult::Kind::kFlightHeld;
    outcome.claim.lease_left = lease_left;
    return outcome;
  };
  // A live claim first, as the SQLite store does: whoever holds it is paying, so this caller's
  // budget does not matter.
  absl::StatusOr<std::optional<absl::Duration>> holder = live_lease();
  if (!holder.ok()) {
    return holder.status();
  }
  if (holder->has_value()) {
    return held(**holder);
  }
  if (claim.newer_than.has_value()) {
    // Under the writer lock every other process's completed flight has committed, so its
    // verdict is visible here, and none can commit before this group does.
    absl::StatusOr<std::optional<Verdict>> latest = QueryLatestFor(
        conn, claim.ip,
        claim.user_agent.has_value() ? std::optional<absl::string_view>(*claim.user_agent)
                                     : std::nullopt);
    if (!latest.ok()) {
      return latest.status();
    }
    if (latest->has_value() && (*latest)->checked_at > *claim.newer_than) {
      outcome.claim.kind = ClaimResult::Kind::kVerdictLanded;
      outcome.claim.landed = *std::move(latest);
      return outcome;
    }
  }
  // The budget locks are held until the group commits: every process's budget check for this
  // caller (or team) waits for the clicks this transaction counts, so together they never
  // overshoot. Lock order: the team's lock (kTeamBudgetLockClass) first, then the caller's
  // (kBudgetLockClass), always, whichever budget is checked first; so two claimants of one team
  // never each hold the lock the other waits for. (Across the claims of one group the locks
  // accumulate in arrival order, which differs between groups; the writer lock every group takes
  // first, kLockWriters, is what keeps that from deadlocking.)
  const absl::CivilMonth month = absl::ToCivilMonth(claim.requested_at, absl::UTCTimeZone());
  const int64_t first_day = DayNumber(absl::CivilDay(month));
  const int64_t end_day = DayNumber(absl::CivilDay(month + 1));
  if (claim.team_monthly_budget > 0) {
    absl::StatusOr<Result> locked = Exec(
        conn, kLockBudget, Params().Int32(kTeamBudgetLockClass).Int32(BudgetLockKey(claim.team)));
    if (!locked.ok()) {
      return locked.status();
    }
  }
  int64_t month_clicks = 0;
  if (claim.monthly_budget > 0) {
    absl::StatusOr<Result> locked = Exec(
        conn, kLockBudget, Params().Int32(kBudgetLockClass).Int32(BudgetLockKey(claim.caller)));
    if (!locked.ok()) {
      return locked.status();
    }
    absl::StatusOr<Result> counted =
        Exec(conn, kMonthClicks, Params().Bytes(claim.caller).Int64(first_day).Int64(end_day));
    if (!counted.ok()) {
      return counted.status();
    }
    month_clicks = GetInt64(counted->get(), 0, 0);
    if (month_clicks >= claim.monthly_budget) {
      outcome.claim.kind = ClaimResult::Kind::kBudgetSpent;
      outcome.claim.month_clicks = month_clicks;
      return outcome;
    }
  }
  int64_t team_month_clicks = 0;
  if (claim.team_monthly_budget > 0) {
    absl::StatusOr<Result> counted = Exec(conn, kTeamMonthClicks,
                                          Params()
                                              .ByteaArray(store_support::DistinctTeamCallers(claim))
                                              .Int64(first_day)
                                              .Int64(end_day));
    if (!counted.ok()) {
      return counted.status();
    }
    team_month_clicks = GetInt64(counted->get(), 0, 0);
    if (team_month_clicks >= claim.team_monthly_budget) {
      outcome.claim.kind = ClaimResult::Kind::kTeamBudgetSpent;
      outcome.claim.month_clicks = month_clicks;
      outcome.claim.team_month_clicks = team_month_clicks;
      return outcome;
    }
  }
  if (claim.allowance_probe_interval > absl::ZeroDuration()) {
    absl::StatusOr<Result> read =
        Exec(conn, kReadMetaForUpdate, Params().Bytes(kAllowanceMarkName));
    if (!read.ok()) {
      return read.status();
    }
    const std::optional<AllowanceMark> mark = PQntuples(read->get()) > 0
                                                  ? DecodeAllowanceMark(GetBytes(read->get(), 0, 0))
                                                  : std::nullopt;
    switch (DecideAllowance(mark, claim.requested_at)) {
      case AllowanceStep::kProceed:
        break;
      case AllowanceStep::kRefuse:
        outcome.claim.kind = ClaimResult::Kind::kAllowanceExhausted;
        outcome.claim.allowance = *mark;
        return outcome;
      case AllowanceStep::kProbe: {
        const std::string probe = EncodeAllowanceMark(
            ProbeTaken(*mark, claim.requested_at, claim.allowance_probe_interval));
        absl::StatusOr<Result> put =
            Exec(conn, kReplaceMeta, Params().Bytes(kAllowanceMarkName).Bytes(probe));
        if (!put.ok()) {
          return put.status();
        }
        break;
      }
    }
  }
  absl::StatusOr<Result> taken =
      Exec(conn, kTakeFlight,
           Params().Bytes(claim.flight_key).Bytes(claim.owner).Int64(LeaseMicros(claim.lease)));
  if (!taken.ok()) {
    return taken.status();
  }
  if (PQntuples(taken->get()) == 0) {
    // Another process claimed the key since we looked. Its row is locked by the failed upsert
    // until this transaction ends, so it is still there to read.
    holder = live_lease();
    if (!holder.ok()) {
      return holder.status();
    }
    return held(holder->value_or(absl::ZeroDuration()));
  }
  absl::StatusOr<int64_t> id =
      InsertClick(conn, claim.caller, claim.ip, absl::ToUnixMicros(claim.requested_at));
  if (!id.ok()) {
    return id.status();
  }
  absl::StatusOr<Result> owned =
      Exec(conn, kSetFlightClick, Params().Bytes(claim.flight_key).Int64(*id));
  if (!owned.ok()) {
    return owned.status();
  }
  outcome.claim.kind = ClaimResult::Kind::kBegun;
  outcome.claim.click_id = *id;
  outcome.claim.month_clicks = claim.monthly_budget > 0 ? month_clicks + 1 : 0;
  outcome.claim.team_month_clicks = claim.team_monthly_budget > 0 ? team_month_clicks + 1 : 0;
  return outcome;
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const LeaseOp& op) {
  if (op.name.empty() || op.owner.empty()) {
    return absl::InvalidArgumentError("TryLease: name and owner must not be empty");
  }
  if (op.lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("TryLease: the lease must be positive");
  }
  absl::StatusOr<Result> taken =
      Exec(conn, kTakeLease, Params().Bytes(op.name).Bytes(op.owner).Int64(LeaseMicros(op.lease)));
  if (!taken.ok()) {
    return taken.status();
  }
  Outcome outcome;
  outcome.leased = PQntuples(taken->get()) > 0;
  return outcome;
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const CompleteClickOp& op) {
  const ClickCompletion& c = op.completion;
  if (c.outcome != ClickOutcome::kVerdict && c.outcome != ClickOutcome::kUpstreamError &&
      c.outcome != ClickOutcome::kNotSent) {
    return absl::InvalidArgumentError(
        absl::StrCat("click ", op.click_id, ": completion outcome must not be pending"));
  }
  if ((c.outcome == ClickOutcome::kVerdict) != c.verdict.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "click ", op.click_id, ": a verdict must be given exactly when the outcome is kVerdict"));
  }
  absl::StatusOr<Result> updated = Exec(conn, kCompleteClick,
                                        Params()
                                            .Int64(op.click_id)
                                            .Int64(op.completed_at_us)
                                            .Int64(static_cast<int>(c.outcome))
                                            .Int64(c.http_status)
                                            .Bytes(c.error)
                                            .Int64(absl::ToInt64Microseconds(c.latency)));
  if (!updated.ok()) {
    return updated.status();
  }
  if (PQntuples(updated->get()) == 0) {
    absl::StatusOr<Result> exists = Exec(conn, kClickExists, Params().Int64(op.click_id));
    if (!exists.ok()) {
      return exists.status();
    }
    if (PQntuples(exists->get()) > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("click ", op.click_id, " is already completed"));
    }
    return absl::NotFoundError(absl::StrCat("no click with id ", op.click_id));
  }
  const std::string caller = GetBytes(updated->get(), 0, 0);
  const int64_t requested_at_us = GetInt64(updated->get(), 0, 1);

  if (c.outcome != ClickOutcome::kVerdict) {
    const bool not_sent = c.outcome == ClickOutcome::kNotSent;
    absl::StatusOr<Result> adjusted = Exec(conn, kAdjustClickCounters,
                                           Params()
                                               .Bytes(caller)
                                               .Int64(DayOfMicros(requested_at_us))
                                               .Int64(not_sent ? -1 : 0)
                                               .Int64(not_sent ? 0 : 1));
    if (!adjusted.ok()) {
      return adjusted.status();
    }
    if (RowsAffected(adjusted->get()) == 0) {
      // BeginClick created the row in the click's own transaction and pruning removes a day's
      // counters only after all of that day's clicks, so only a ledger row written behind the
      // store's back gets here. The ledger row is right either way; failing the completion
      // would only leave the click pending forever.
      spdlog::warn("PostgreSQL store: click {} has no usage counters for its day; not adjusted",
                   op.click_id);
    }
  }

  if (c.verdict.has_value()) {
    const Verdict& v = *c.verdict;
    absl::StatusOr<Result> inserted = Exec(conn, kInsertVerdict,
                                           Params()
                                               .Bytes(v.ip)
                                               .Bytes(v.user_agent)
                                               .Int64(static_cast<int>(v.assessment.score))
                                               .Bool(v.assessment.proxy)
                                               .Bool(v.assessment.tor)
                                               .Bool(v.assessment.vpn)
                                               .Bool(v.assessment.crawler)
                                               .Bool(v.assessment.bot)
                                               .Int64(absl::ToUnixMicros(v.checked_at))
                                               .Bytes(v.caller)
                                               .Bytes(c.raw_body)
                                               .Int64(op.click_id));
    if (!inserted.ok()) {
      return inserted.status();
    }
  }

  // The claim goes with the completion, in its transaction: once it is committed, a waiter
  // that looks again finds the verdict (or the error's outcome) and no claim.
  absl::StatusOr<Result> released = Exec(conn, kReleaseFlight, Params().Int64(op.click_id));
  if (!released.ok()) {
    return released.status();
  }
  Outcome outcome;
  for (int row = 0; row < PQntuples(released->get()); ++row) {
    std::string key = GetBytes(released->get(), row, 0);
    absl::StatusOr<Result> notified = Exec(conn, kNotifyFlightEnded, Params().Bytes(key));
    if (!notified.ok()) {
      return notified.status();
    }
    outcome.ended_flights.push_back(std::move(key));
  }
  return outcome;
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const AddUsageOp& op) {
  for (const UsageDelta& d : op.deltas) {
    if (d.cache_hits < 0 || d.requests < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("usage delta for \"", d.caller, "\" is negative"));
    }
  }
  for (const UsageDelta& d : op.deltas) {
    if (d.cache_hits == 0 && d.requests == 0) {
      continue;
    }
    absl::StatusOr<Result> added = Exec(
        conn, kAddUsage,
        Params().Bytes(d.caller).Int64(DayNumber(d.day)).Int64(d.cache_hits).Int64(d.requests));
    if (!added.ok()) {
      return added.status();
    }
  }
  return Outcome();
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const PruneOp& op) {
  if (op.max_rows <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PruneBefore max_rows must be positive, got ", op.max_rows));
  }
  // Usage rows whose whole day lies before the cutoff. Floor division: the cutoff may be early.
  const int64_t cutoff_day = DayOfMicros(op.cutoff_us);
  int64_t deleted = 0;
  // One step: at most what is left of max_rows of the rows older than `bound`.
  auto prune = [&](const Sql& sql, int64_t bound) -> absl::Status {
    const int64_t budget = op.max_rows - deleted;
    if (budget <= 0) {
      return absl::OkStatus();
    }
    absl::StatusOr<Result> pruned = Exec(conn, sql, Params().Int64(bound).Int64(budget));
    if (!pruned.ok()) {
      return pruned.status();
    }
    deleted += RowsAffected(pruned->get());
    return absl::OkStatus();
  };
  if (absl::Status s = prune(kPruneVerdicts, op.cutoff_us); !s.ok()) {
    return s;
  }
  if (absl::Status s = prune(kPruneClicks, op.cutoff_us); !s.ok()) {
    return s;
  }
  if (absl::Status s = prune(kPruneUsage, cutoff_day); !s.ok()) {
    return s;
  }
  if (const int64_t budget = op.max_rows - deleted; budget > 0) {
    absl::StatusOr<Result> pruned = Exec(conn, kPruneFlights, Params().Int64(budget));
    if (!pruned.ok()) {
      return pruned.status();
    }
    deleted += RowsAffected(pruned->get());
  }
  Outcome outcome;
  outcome.value = deleted;
  return outcome;
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const PutMetaOp& op) {
  Params params;
  params.Bytes(op.name).Bytes(op.value);
  absl::StatusOr<Result> put =
      op.replace ? Exec(conn, kReplaceMeta, params) : Exec(conn, kInsertMeta, params);
  if (!put.ok()) {
    return put.status();
  }
  return Outcome();
}

PostgresStore::OpResult PostgresStore::Apply(Connection& conn, const ProbeOp& op) {
  const std::string value = absl::StrCat(op.now_us);
  absl::StatusOr<Result> probed = Exec(conn, kWriteProbe, Params().Bytes(value));
  if (!probed.ok()) {
    return probed.status();
  }
  return Outcome();
}

void PostgresStore::RecordWriteHealth(const absl::Status& status) {
  const absl::Time now = status.ok() ? absl::Time() : options_.clock->Now();
  absl::MutexLock lock(&health_mu_);
  if (status.ok()) {
    write_error_ = absl::OkStatus();
  } else if (write_error_.ok()) {
    // Keep the time of the first failure of a run of failures: "failing since".
    write_error_ = status;
    write_error_at_ = now;
  } else {
    write_error_ = status;
  }
}

void PostgresStore::Deliver(WriteOp& op, const OpResult& result) {
  std::visit(
      [&](auto& o) {
        using Op = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<Op, ProbeOp>) {
          absl::MutexLock lock(&health_mu_);
          probe_queued_ = false;
        } else if constexpr (std::is_same_v<Op, BeginClickOp> || std::is_same_v<Op, PruneOp>) {
          if (o.done) {
            o.done(result.ok() ? absl::StatusOr<int64_t>(result->value)
                               : absl::StatusOr<int64_t>(result.status()));
          }
        } else if constexpr (std::is_same_v<Op, ClaimOp>) {
          if (o.done) {
            o.done(result.ok() ? absl::StatusOr<ClaimResult>(result->claim)
                               : absl::StatusOr<ClaimResult>(result.status()));
          }
        } else if constexpr (std::is_same_v<Op, LeaseOp>) {
          if (o.done) {
            o.done(result.ok() ? absl::StatusOr<bool>(result->leased)
                               : absl::StatusOr<bool>(result.status()));
          }
        } else {
          if (o.done) {
            o.done(result.status());
          }
        }
      },
      op);
}

}  // namespace postgres_store_internal
}  // namespace verdictd
