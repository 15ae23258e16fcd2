// The SQLite store's group-commit writer: one thread takes queued writes in groups, applies each
// in its own savepoint of one transaction, commits, and only then runs the callbacks.

#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
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
#include "storage/sqlite/sqlite_connection.h"
#include "storage/sqlite/sqlite_schema.h"
#include "storage/sqlite/sqlite_statement.h"
#include "storage/sqlite/sqlite_store_impl.h"
#include "storage/sqlite/sqlite_store_internal.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace sqlite_store_internal {

void SqliteStore::BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                             ClickCallback done) {
  Enqueue(BeginClickOp{std::move(caller), std::move(ip), absl::ToUnixMicros(requested_at),
                       std::move(done)});
}

void SqliteStore::ClaimClick(ClickClaim claim, ReadCallback<ClaimResult> done) {
  Enqueue(ClaimClickOp{std::move(claim), std::move(done), ClaimResult{}});
}

void SqliteStore::SetAllowanceMark(AllowanceMark mark, DoneCallback done) {
  Enqueue(PutMetaOp{kAllowanceMarkName, EncodeAllowanceMark(mark), std::move(done),
                    /*replace=*/true});
}

void SqliteStore::TryLease(std::string name, std::string owner, absl::Duration lease,
                           ReadCallback<bool> done) {
  Enqueue(TryLeaseOp{std::move(name), std::move(owner), lease, std::move(done)});
}

void SqliteStore::SetFlightListener(FlightListener* listener) {
  absl::MutexLock lock(&listener_mu_);
  listener_ = listener;
}

void SqliteStore::CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) {
  // Stamped now: the click ended when its outcome was known, not when the group commits.
  const int64_t completed_at_us = absl::ToUnixMicros(options_.clock->Now());
  Enqueue(CompleteClickOp{click_id, std::move(completion), completed_at_us, std::move(done)});
}

void SqliteStore::AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) {
  Enqueue(AddUsageOp{std::move(deltas), std::move(done)});
}

void SqliteStore::PruneBefore(absl::Time cutoff, int max_rows,
                              std::function<void(absl::StatusOr<int64_t>)> done) {
  Enqueue(PruneOp{CeilUnixMicros(cutoff), max_rows, std::move(done)});
}

void SqliteStore::Flush() {
  absl::MutexLock lock(&queue_mu_);
  const uint64_t target = enqueued_;
  auto reached = [this, target]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) { return finished_ >= target; };
  queue_mu_.Await(absl::Condition(&reached));
}

void SqliteStore::Enqueue(WriteOp op) {
  absl::MutexLock lock(&queue_mu_);
  queue_.push_back(std::move(op));
  ++enqueued_;
}

void SqliteStore::WriterLoop() {
  const size_t max_group = static_cast<size_t>(options_.max_group);
  std::vector<WriteOp> group;
  for (;;) {
    {
      absl::MutexLock lock(&queue_mu_);
      queue_mu_.Await(absl::Condition(this, &SqliteStore::HasWorkOrStopping));
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

// One transaction per group, one savepoint per operation: an operation that fails (unknown click)
// is undone alone, while a failure of the transaction itself fails the whole group. Callbacks run
// only after COMMIT returned, so a success is never reported for a write that could still vanish.
void SqliteStore::CommitGroup(std::vector<WriteOp>& group) {
  sqlite3* db = writer_->db.get();
  std::vector<absl::StatusOr<int64_t>> results;
  results.reserve(group.size());
  absl::Status status = Run(db, writer_->begin.get());
  if (status.ok()) {
    for (WriteOp& op : group) {
      Applied applied = ApplyInSavepoint(op);
      if (!applied.transaction.ok()) {
        status = std::move(applied.transaction);
        break;
      }
      results.push_back(std::move(applied.result));
    }
  }
  if (status.ok()) {
    status = Run(db, writer_->commit.get());
  }
  if (!status.ok()) {
    if (sqlite3_get_autocommit(db) == 0) {
      Run(db, writer_->rollback.get()).IgnoreError();
    }
    spdlog::error("database {}: a group of {} writes failed: {}", options_.path, group.size(),
                  status.message());
    RecordWriteHealth(status);
    for (WriteOp& op : group) {
      Deliver(op, status);
    }
    return;
  }
  // A statement that failed inside its savepoint for a storage reason (disk full, I/O) also
  // means writes are failing, though the rest of the group committed.
  absl::Status health;
  for (const absl::StatusOr<int64_t>& result : results) {
    if (result.status().code() == absl::StatusCode::kUnavailable) {
      health = result.status();
      break;
    }
  }
  RecordWriteHealth(health);
  for (size_t i = 0; i < group.size(); ++i) {
    Deliver(group[i], results[i]);
  }
  // After the callbacks: a waiter woken by the listener reads a store whose writer has reported
  // this group (the reads see the commit either way).
  absl::MutexLock lock(&listener_mu_);
  if (listener_ == nullptr) {
    return;
  }
  for (size_t i = 0; i < group.size(); ++i) {
    if (auto* complete = std::get_if<CompleteClickOp>(&group[i]);
        complete != nullptr && results[i].ok() && complete->released_key.has_value()) {
      listener_->OnFlightEnded(*complete->released_key);
    }
  }
}

SqliteStore::Applied SqliteStore::ApplyInSavepoint(WriteOp& op) {
  sqlite3* db = writer_->db.get();
  Applied applied{absl::StatusOr<int64_t>(0), absl::OkStatus()};
  applied.transaction = Run(db, writer_->savepoint.get());
  if (!applied.transaction.ok()) {
    return applied;
  }
  applied.result = std::visit([this](auto& o) { return Apply(o); }, op);
  // Some errors (disk full, I/O) make SQLite roll back the whole transaction by itself; carrying
  // on would run the rest of the group in autocommit mode.
  if (sqlite3_get_autocommit(db) != 0) {
    applied.transaction = applied.result.ok()
                              ? absl::UnavailableError("store write failed: transaction aborted")
                              : applied.result.status();
    return applied;
  }
  if (!applied.result.ok()) {
    applied.transaction = Run(db, writer_->rollback_to_savepoint.get());
    if (!applied.transaction.ok()) {
      return applied;
    }
  }
  applied.transaction = Run(db, writer_->release_savepoint.get());
  return applied;
}

absl::StatusOr<int64_t> SqliteStore::Apply(BeginClickOp& op) {
  return InsertClick(op.caller, op.ip, op.requested_at_us);
}

absl::StatusOr<int64_t> SqliteStore::InsertClick(const std::string& caller, const std::string& ip,
                                                 int64_t requested_at_us) {
  sqlite3* db = writer_->db.get();
  sqlite3_stmt* stmt = writer_->insert_click.get();
  BindText(stmt, 1, caller);
  BindText(stmt, 2, ip);
  sqlite3_bind_int64(stmt, 3, requested_at_us);
  absl::Status status = Run(db, stmt);
  if (!status.ok()) {
    return status;
  }
  const int64_t id = sqlite3_last_insert_rowid(db);
  // In the same savepoint: the counters never disagree with the ledger, even after a crash.
  sqlite3_stmt* count = writer_->count_click.get();
  BindText(count, 1, caller);
  sqlite3_bind_int64(count, 2, DayOfMicros(requested_at_us));
  status = Run(db, count);
  if (!status.ok()) {
    return status;
  }
  return id;
}

// One writer applies every claim, so checking and then writing inside its savepoint is atomic:
// no other process writes between the two (SQLite's write lock is held from BEGIN IMMEDIATE).
absl::StatusOr<int64_t> SqliteStore::Apply(ClaimClickOp& op) {
  const ClickClaim& c = op.claim;
  if (c.flight_key.empty() || c.lease <= absl::ZeroDuration() || c.monthly_budget < 0) {
    return absl::InvalidArgumentError(
        "ClaimClick needs a flight key, a positive lease and a budget >= 0");
  }
  if (absl::Status s = store_support::CheckTeamBudget(c); !s.ok()) {
    return s;
  }
  sqlite3* db = writer_->db.get();
  const int64_t now_us = absl::ToUnixMicros(options_.clock->Now());
  const int64_t requested_at_us = absl::ToUnixMicros(c.requested_at);

  // A live claim first: whoever holds it is paying, so this caller's budget does not matter.
  {
    sqlite3_stmt* lease = writer_->flight_lease.get();
    ScopedReset reset(lease);
    BindBytes(lease, 1, c.flight_key);
    const int rc = sqlite3_step(lease);
    if (rc == SQLITE_ROW) {
      const int64_t until_us = sqlite3_column_int64(lease, 0);
      if (until_us > now_us) {
        op.result.kind = ClaimResult::Kind::kFlightHeld;
        op.result.lease_left = absl::Microseconds(until_us - now_us);
        return 0;
      }
    } else if (rc != SQLITE_DONE) {
      return WriteFailed(db);
    }
  }
  if (c.newer_than.has_value()) {
    std::optional<Verdict> latest;
    const int rc =
        StepLatestFor(c.user_agent.has_value() ? writer_->latest_for_ip_and_user_agent.get()
                                               : writer_->latest_for_ip.get(),
                      c.ip, c.user_agent, &latest);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      return WriteFailed(db);
    }
    if (latest.has_value() && latest->checked_at > *c.newer_than) {
      op.result.kind = ClaimResult::Kind::kVerdictLanded;
      op.result.landed = std::move(latest);
      return 0;
    }
  }
  const absl::CivilMonth month = absl::ToCivilMonth(c.requested_at, absl::UTCTimeZone());
  // A caller's billed clicks in the claim's month, from the per-day counters.
  auto month_clicks = [&](const std::string& caller) -> absl::StatusOr<int64_t> {
    sqlite3_stmt* spent = writer_->month_clicks.get();
    ScopedReset reset(spent);
    BindText(spent, 1, caller);
    sqlite3_bind_int64(spent, 2, DayNumber(absl::CivilDay(month)));
    sqlite3_bind_int64(spent, 3, DayNumber(absl::CivilDay(month + 1)));
    if (sqlite3_step(spent) != SQLITE_ROW) {
      return WriteFailed(db);
    }
    return sqlite3_column_int64(spent, 0);
  };
  if (c.monthly_budget > 0) {
    absl::StatusOr<int64_t> spent = month_clicks(c.caller);
    if (!spent.ok()) {
      return spent.status();
    }
    op.result.month_clicks = *spent;
    if (op.result.month_clicks >= c.monthly_budget) {
      op.result.kind = ClaimResult::Kind::kBudgetSpent;
      return 0;
    }
  }
  if (c.team_monthly_budget > 0) {
    // The team's clicks are its callers' (teams are small: one indexed lookup each), read under
    // the same write lock as the caller's, so no claim of a teammate lands in between.
    int64_t team_spent = 0;
    for (const std::string& caller : store_support::DistinctTeamCallers(c)) {
      absl::StatusOr<int64_t> spent = month_clicks(caller);
      if (!spent.ok()) {
        return spent.status();
      }
      team_spent += *spent;
    }
    op.result.team_month_clicks = team_spent;
    if (team_spent >= c.team_monthly_budget) {
      op.result.kind = ClaimResult::Kind::kTeamBudgetSpent;
      return 0;
    }
  }
  if (c.allowance_probe_interval > absl::ZeroDuration()) {
    sqlite3_stmt* read = writer_->read_meta.get();
    ScopedReset reset(read);
    BindText(read, 1, kAllowanceMarkName);
    const int rc = sqlite3_step(read);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      return WriteFailed(db);
    }
    const std::optional<AllowanceMark> mark =
        rc == SQLITE_ROW ? DecodeAllowanceMark(ColumnBytes(read, 0)) : std::nullopt;
    switch (DecideAllowance(mark, c.requested_at)) {
      case AllowanceStep::kProceed:
        break;
      case AllowanceStep::kRefuse:
        op.result.kind = ClaimResult::Kind::kAllowanceExhausted;
        op.result.allowance = *mark;
        return 0;
      case AllowanceStep::kProbe: {
        const std::string probe =
            EncodeAllowanceMark(ProbeTaken(*mark, c.requested_at, c.allowance_probe_interval));
        sqlite3_stmt* put = writer_->replace_meta.get();
        BindText(put, 1, kAllowanceMarkName);
        BindBytes(put, 2, probe);
        if (absl::Status s = Run(db, put); !s.ok()) {
          return s;
        }
        break;
      }
    }
  }
  {
    sqlite3_stmt* claim = writer_->claim_flight.get();
    ScopedReset reset(claim);
    BindBytes(claim, 1, c.flight_key);
    BindText(claim, 2, c.owner);
    sqlite3_bind_int64(claim, 3, now_us + absl::ToInt64Microseconds(c.lease));
    sqlite3_bind_int64(claim, 4, now_us);
    int rc = sqlite3_step(claim);
    if (rc != SQLITE_ROW) {
      // The lease was checked above under the same write lock, so the row must come back.
      return rc == SQLITE_DONE ? absl::InternalError("flight claim vanished") : WriteFailed(db);
    }
    rc = sqlite3_step(claim);
    if (rc != SQLITE_DONE) {
      return WriteFailed(db);
    }
  }
  absl::StatusOr<int64_t> id = InsertClick(c.caller, c.ip, requested_at_us);
  if (!id.ok()) {
    return id.status();
  }
  sqlite3_stmt* set = writer_->set_flight_click.get();
  BindBytes(set, 1, c.flight_key);
  sqlite3_bind_int64(set, 2, *id);
  absl::Status status = Run(db, set);
  if (!status.ok()) {
    return status;
  }
  op.result.kind = ClaimResult::Kind::kBegun;
  op.result.click_id = *id;
  if (c.monthly_budget > 0) {
    ++op.result.month_clicks;
  }
  if (c.team_monthly_budget > 0) {
    ++op.result.team_month_clicks;
  }
  return 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(TryLeaseOp& op) {
  if (op.name.empty() || op.owner.empty() || op.lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("TryLease needs a name, an owner and a positive lease");
  }
  sqlite3* db = writer_->db.get();
  const int64_t now_us = absl::ToUnixMicros(options_.clock->Now());
  sqlite3_stmt* stmt = writer_->try_lease.get();
  ScopedReset reset(stmt);
  BindText(stmt, 1, op.name);
  BindText(stmt, 2, op.owner);
  sqlite3_bind_int64(stmt, 3, now_us + absl::ToInt64Microseconds(op.lease));
  sqlite3_bind_int64(stmt, 4, now_us);
  int rc = sqlite3_step(stmt);
  const bool held = rc == SQLITE_ROW;
  if (held) {
    rc = sqlite3_step(stmt);
  }
  if (rc != SQLITE_DONE) {
    return WriteFailed(db);
  }
  return held ? 1 : 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(CompleteClickOp& op) {
  sqlite3* db = writer_->db.get();
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

  sqlite3_stmt* update = writer_->complete_click.get();
  sqlite3_bind_int64(update, 1, op.click_id);
  sqlite3_bind_int64(update, 2, op.completed_at_us);
  sqlite3_bind_int(update, 3, static_cast<int>(c.outcome));
  sqlite3_bind_int(update, 4, c.http_status);
  BindText(update, 5, c.error);
  sqlite3_bind_int64(update, 6, absl::ToInt64Microseconds(c.latency));
  std::string caller;
  int64_t requested_at_us = 0;
  bool updated = false;
  {
    ScopedReset reset(update);
    int rc = sqlite3_step(update);
    if (rc == SQLITE_ROW) {
      updated = true;
      caller = ColumnBytes(update, 0);
      requested_at_us = sqlite3_column_int64(update, 1);
      rc = sqlite3_step(update);
    }
    if (rc != SQLITE_DONE) {
      return WriteFailed(db);
    }
  }
  if (!updated) {
    sqlite3_stmt* exists = writer_->click_exists.get();
    ScopedReset reset(exists);
    sqlite3_bind_int64(exists, 1, op.click_id);
    const int rc = sqlite3_step(exists);
    if (rc == SQLITE_ROW) {
      return absl::FailedPreconditionError(
          absl::StrCat("click ", op.click_id, " is already completed"));
    }
    if (rc == SQLITE_DONE) {
      return absl::NotFoundError(absl::StrCat("no click with id ", op.click_id));
    }
    return WriteFailed(db);
  }

  absl::Status status;
  if (c.outcome != ClickOutcome::kVerdict) {
    const bool not_sent = c.outcome == ClickOutcome::kNotSent;
    sqlite3_stmt* adjust = writer_->adjust_click_counters.get();
    BindText(adjust, 1, caller);
    sqlite3_bind_int64(adjust, 2, DayOfMicros(requested_at_us));
    sqlite3_bind_int64(adjust, 3, not_sent ? -1 : 0);
    sqlite3_bind_int64(adjust, 4, not_sent ? 0 : 1);
    status = Run(db, adjust);
    if (!status.ok()) {
      return status;
    }
    if (sqlite3_changes64(db) == 0) {
      // BeginClick created the row in the click's own transaction and pruning removes a day's
      // counters only after all of that day's clicks, so only a ledger row written behind the
      // store's back (by hand or by a tool) gets here. The ledger row is right either way;
      // failing the completion would only leave the click pending forever.
      spdlog::warn("database {}: click {} has no usage counters for its day; not adjusted",
                   options_.path, op.click_id);
    }
  }

  {
    sqlite3_stmt* release = writer_->release_flight.get();
    ScopedReset reset(release);
    sqlite3_bind_int64(release, 1, op.click_id);
    int rc = sqlite3_step(release);
    if (rc == SQLITE_ROW) {
      op.released_key = ColumnBytes(release, 0);
      rc = sqlite3_step(release);
    }
    if (rc != SQLITE_DONE) {
      return WriteFailed(db);
    }
  }

  if (c.verdict.has_value()) {
    const Verdict& v = *c.verdict;
    sqlite3_stmt* insert = writer_->insert_verdict.get();
    BindText(insert, 1, v.ip);
    BindBytes(insert, 2, v.user_agent);
    sqlite3_bind_int(insert, 3, static_cast<int>(v.assessment.score));
    sqlite3_bind_int(insert, 4, v.assessment.proxy ? 1 : 0);
    sqlite3_bind_int(insert, 5, v.assessment.tor ? 1 : 0);
    sqlite3_bind_int(insert, 6, v.assessment.vpn ? 1 : 0);
    sqlite3_bind_int(insert, 7, v.assessment.crawler ? 1 : 0);
    sqlite3_bind_int(insert, 8, v.assessment.bot ? 1 : 0);
    sqlite3_bind_int64(insert, 9, absl::ToUnixMicros(v.checked_at));
    BindText(insert, 10, v.caller);
    BindBytes(insert, 11, c.raw_body);
    sqlite3_bind_int64(insert, 12, op.click_id);
    status = Run(db, insert);
    if (!status.ok()) {
      return status;
    }
  }
  return 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(AddUsageOp& op) {
  sqlite3* db = writer_->db.get();
  for (const UsageDelta& d : op.deltas) {
    if (d.cache_hits < 0 || d.requests < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("usage delta for \"", d.caller, "\" is negative"));
    }
  }
  sqlite3_stmt* stmt = writer_->add_usage.get();
  for (const UsageDelta& d : op.deltas) {
    if (d.cache_hits == 0 && d.requests == 0) {
      continue;
    }
    BindText(stmt, 1, d.caller);
    sqlite3_bind_int64(stmt, 2, DayNumber(d.day));
    sqlite3_bind_int64(stmt, 3, d.cache_hits);
    sqlite3_bind_int64(stmt, 4, d.requests);
    absl::Status status = Run(db, stmt);
    if (!status.ok()) {
      return status;
    }
  }
  return 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(PruneOp& op) {
  if (op.max_rows <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PruneBefore max_rows must be positive, got ", op.max_rows));
  }
  sqlite3* db = writer_->db.get();
  // Usage rows whose whole day lies before the cutoff. Floor division: the cutoff may be early.
  const int64_t cutoff_day = DayOfMicros(op.cutoff_us);
  const std::pair<sqlite3_stmt*, int64_t> steps[] = {
      {writer_->prune_verdicts.get(), op.cutoff_us},
      {writer_->prune_clicks.get(), op.cutoff_us},
      {writer_->prune_usage.get(), cutoff_day},
      // Claims whose owner died (their lease ran out, by the store's clock, not the cutoff).
      {writer_->prune_flights.get(), absl::ToUnixMicros(options_.clock->Now())},
  };
  int64_t deleted = 0;
  for (const auto& [stmt, bound] : steps) {
    const int64_t budget = op.max_rows - deleted;
    if (budget <= 0) {
      break;
    }
    sqlite3_bind_int64(stmt, 1, bound);
    sqlite3_bind_int64(stmt, 2, budget);
    absl::Status status = Run(db, stmt);
    if (!status.ok()) {
      return status;
    }
    deleted += sqlite3_changes64(db);
  }
  return deleted;
}

absl::StatusOr<int64_t> SqliteStore::Apply(PutMetaOp& op) {
  sqlite3_stmt* stmt = op.replace ? writer_->replace_meta.get() : writer_->insert_meta.get();
  BindText(stmt, 1, op.name);
  BindBytes(stmt, 2, op.value);
  absl::Status status = Run(writer_->db.get(), stmt);
  if (!status.ok()) {
    return status;
  }
  return 0;
}

absl::StatusOr<int64_t> SqliteStore::Apply(ProbeOp& op) {
  sqlite3_stmt* stmt = writer_->write_probe.get();
  sqlite3_bind_int64(stmt, 1, op.now_us);
  absl::Status status = Run(writer_->db.get(), stmt);
  if (!status.ok()) {
    return status;
  }
  return 0;
}

void SqliteStore::RecordWriteHealth(const absl::Status& status) {
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

void SqliteStore::Deliver(WriteOp& op, const absl::StatusOr<int64_t>& result) {
  std::visit(
      [&](auto& o) {
        using Op = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<Op, ProbeOp>) {
          absl::MutexLock lock(&health_mu_);
          probe_queued_ = false;
        } else if constexpr (std::is_same_v<Op, BeginClickOp> || std::is_same_v<Op, PruneOp>) {
          if (o.done) {
            o.done(result);
          }
        } else if constexpr (std::is_same_v<Op, ClaimClickOp>) {
          if (result.ok()) {
            o.done(o.result);
          } else {
            o.done(result.status());
          }
        } else if constexpr (std::is_same_v<Op, TryLeaseOp>) {
          if (result.ok()) {
            o.done(*result == 1);
          } else {
            o.done(result.status());
          }
        } else {
          if (o.done) {
            o.done(result.status());
          }
        }
      },
      op);
}

}  // namespace sqlite_store_internal
}  // namespace verdictd
