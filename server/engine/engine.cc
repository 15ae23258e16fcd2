#include "server/engine/engine.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/ip.h"
#include "common/logging.h"
#include "common/quote.h"

namespace verdictd {
namespace {

std::string CacheKey(CacheKeyMode mode, const std::string& ip, const std::string& user_agent) {
  if (mode == CacheKeyMode::kIpUserAgent) {
    // '\n' cannot occur in a canonical IP, so the key is unambiguous.
    return absl::StrCat(ip, "\n", user_agent);
  }
  return ip;
}

ClickOutcome OutcomeOf(const FetchOutcome& outcome) {
  if (outcome.assessment.ok()) {
    return ClickOutcome::kVerdict;
  }
  return outcome.maybe_sent ? ClickOutcome::kUpstreamError : ClickOutcome::kNotSent;
}

absl::string_view OutcomeName(ClickOutcome outcome) {
  switch (outcome) {
    case ClickOutcome::kVerdict:
      return "verdict";
    case ClickOutcome::kUpstreamError:
      return "error";
    case ClickOutcome::kNotSent:
      return "not_sent";
    case ClickOutcome::kPending:
      break;
  }
  return "pending";
}

absl::Status ValidateRequest(const CheckRequest& request, const EngineOptions& options) {
  if (request.user_agent.size() > options.max_user_agent_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("user_agent is ", request.user_agent.size(),
                                                   " bytes; the limit is ",
                                                   options.max_user_agent_bytes));
  }
  if (request.caller.size() > options.max_caller_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "caller is ", request.caller.size(), " bytes; the limit is ", options.max_caller_bytes));
  }
  if (request.max_age.has_value() && *request.max_age < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_age must not be negative");
  }
  return absl::OkStatus();
}

// Failures that say ClickPatrol (or the path to it) is unhealthy, for the circuit breaker.
bool CountsAgainstBreaker(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kInternal ||
         status.code() == absl::StatusCode::kFailedPrecondition;
}

// Start-up only, never on a reactor thread: waits for the store's answer.
absl::StatusOr<VerdictStore::ClickCounts> WaitForClicksSince(VerdictStore& store,
                                                             absl::Time since) {
  return AwaitRead<VerdictStore::ClickCounts>(
      [&](VerdictStore::ReadCallback<VerdictStore::ClickCounts> done) {
        store.ClicksSince(since, std::move(done));
      });
}

absl::flat_hash_map<std::string, int64_t> BudgetByCaller(
    const std::vector<std::pair<std::string, int64_t>>& budgets) {
  absl::flat_hash_map<std::string, int64_t> by_caller;
  for (const auto& [caller, budget] : budgets) {
    by_caller[caller] = budget;
  }
  return by_caller;
}

// Sorts a team's callers and drops duplicates.
std::map<std::string, TeamAccount> TeamsByName(std::vector<TeamAccount> teams) {
  std::map<std::string, TeamAccount> by_name;
  for (TeamAccount& team : teams) {
    std::sort(team.callers.begin(), team.callers.end());
    team.callers.erase(std::unique(team.callers.begin(), team.callers.end()), team.callers.end());
    std::string name = team.name;
    by_name[std::move(name)] = std::move(team);
  }
  return by_name;
}

absl::flat_hash_map<std::string, std::string> TeamOfCaller(
    const std::map<std::string, TeamAccount>& teams) {
  absl::flat_hash_map<std::string, std::string> team_of;
  for (const auto& [name, team] : teams) {
    for (const std::string& caller : team.callers) {
      team_of[caller] = name;
    }
  }
  return team_of;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(EngineOptions options, VerdictStore& store,
                                                       ClickPatrolClient& client,
                                                       const Clock& clock, Scheduler& scheduler,
                                                       EngineObserver* observer) {
  const absl::Time now = clock.Now();
  absl::StatusOr<VerdictStore::ClickCounts> month =
      WaitForClicksSince(store, SpendTracker::MonthStart(now));
  if (!month.ok()) {
    return month.status();
  }
  absl::StatusOr<VerdictStore::ClickCounts> period =
      WaitForClicksSince(store, SpendTracker::Period(now, options.allowance.reset_day).first);
  if (!period.ok()) {
    return period.status();
  }
  int64_t period_clicks = 0;
  for (const auto& [caller, clicks] : *period) {
    period_clicks += clicks;
  }
  return std::unique_ptr<Engine>(new Engine(std::move(options), store, client, clock, scheduler,
                                            observer, *month, period_clicks));
}

Engine::Engine(EngineOptions options, VerdictStore& store, ClickPatrolClient& client,
               const Clock& clock, Scheduler& scheduler, EngineObserver* observer,
               const std::vector<std::pair<std::string, int64_t>>& month_clicks,
               int64_t period_clicks)
    : options_(std::move(options)),
      monthly_budgets_(options_.monthly_budgets),
      budget_by_caller_(BudgetByCaller(options_.monthly_budgets)),
      teams_(TeamsByName(options_.teams)),
      team_of_caller_(TeamOfCaller(teams_)),
      store_(store),
      client_(client),
      clock_(clock),
      scheduler_(scheduler),
      observer_(observer),
      breaker_(options_.breaker, clock),
      spend_(options_.allowance, clock, month_clicks, period_clicks),
      usage_(store, clock),
      hot_(options_.hot_cache_entries) {
  ScheduleUsageFlush();
  if (options_.spend_sync_interval > absl::ZeroDuration()) {
    ScheduleSpendSync();
  }
  if (options_.history_retention > absl::ZeroDuration()) {
    SchedulePrune(absl::ZeroDuration());
  }
  store_.SetFlightListener(this);
}

Engine::~Engine() {
  WaitIdle();
  // No flight is left for a notification to wake; once this returns none is being delivered.
  store_.SetFlightListener(nullptr);
  {
    absl::MutexLock lock(&lifeline_->mu);
    lifeline_->alive = false;
  }
  usage_.Flush();
  store_.Flush();
}

void Engine::WaitIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &Engine::IdleLocked));
}

bool Engine::IdleLocked() const {
  return flights_.empty() && cancels_in_progress_ == 0 && store_reads_ == 0;
}

void Engine::BeginStoreRead() {
  absl::MutexLock lock(&mu_);
  ++store_reads_;
}

void Engine::EndStoreRead() {
  // The last use of the engine in a read's callback: WaitIdle may return, and the engine be
  // destroyed, as soon as the lock is released.
  absl::MutexLock lock(&mu_);
  --store_reads_;
}

bool Engine::WaitIdleUntil(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(absl::Condition(this, &Engine::IdleLocked), deadline);
}

void Engine::ScheduleUsageFlush() {
  scheduler_.RunAfter(options_.usage_flush_interval, [this, life = lifeline_] {
    absl::MutexLock lock(&life->mu);
    if (!life->alive) {
      return;
    }
    usage_.Flush();
    ScheduleUsageFlush();
  });
}

void Engine::ScheduleSpendSync() {
  scheduler_.RunAfter(options_.spend_sync_interval, [this, life = lifeline_] {
    VerdictStore* store = nullptr;
    absl::Time month;
    absl::Time period;
    {
      absl::MutexLock lock(&life->mu);
      if (!life->alive) {
        return;
      }
      store = &store_;  // outlives the engine
      const absl::Time now = clock_.Now();
      month = SpendTracker::MonthStart(now);
      period = SpendTracker::Period(now, options_.allowance.reset_day).first;
    }
    // As SyncSpendThen, but each callback finds out first whether the engine still exists (the
    // destructor does not wait for a chore), and uses it only under the lifeline's lock. Not
    // under that lock while asking: a store may answer on this thread.
    store->ClicksSince(
        month, [this, life, store, period](absl::StatusOr<VerdictStore::ClickCounts> month_clicks) {
          {
            absl::MutexLock lock(&life->mu);
            if (!life->alive) {
              return;
            }
            if (month_clicks.ok()) {
              for (const auto& [caller, clicks] : *month_clicks) {
                spend_.Observe(caller, clicks);
              }
              // Every team's callers now include every process's clicks.
              spend_.ForgetTeamCounts();
            }
          }
          store->ClicksSince(
              period, [this, life](absl::StatusOr<VerdictStore::ClickCounts> period_clicks) {
                absl::MutexLock lock(&life->mu);
                if (!life->alive) {
                  return;
                }
                if (period_clicks.ok()) {
                  int64_t total = 0;
                  for (const auto& [caller, clicks] : *period_clicks) {
                    total += clicks;
                  }
                  spend_.ObservePeriod(total);
                } else {
                  spdlog::warn("reading the clicks of the allowance period failed: {}",
                               period_clicks.status().message());
                }
                ScheduleSpendSync();
              });
        });
  });
}

void Engine::SchedulePrune(absl::Duration delay) {
  scheduler_.RunAfter(delay, [this, life = lifeline_] {
    VerdictStore* store = nullptr;
    absl::Time cutoff;
    int batch = 0;
    {
      absl::MutexLock lock(&life->mu);
      if (!life->alive) {
        return;
      }
      store = &store_;  // outlives the engine
      cutoff = clock_.Now() - options_.history_retention;
      batch = options_.prune_batch;
    }
    // One process at a time prunes a shared store: the chore's lease outlasts a few rounds, so
    // the process holding it keeps it while it renews, and another takes over if it stops.
    const absl::Duration lease = 3 * options_.prune_interval + absl::Seconds(10);
    // Not under the lifeline lock: a store may answer on this thread.
    store->TryLease(
        "retention", options_.replica_id, lease,
        [this, life, store, cutoff, batch](absl::StatusOr<bool> held) {
          {
            absl::MutexLock lock(&life->mu);
            if (!life->alive) {
              return;
            }
            if (!held.ok() || !*held) {
              if (!held.ok()) {
                spdlog::warn("retention pruning skipped: {}", held.status().message());
              }
              SchedulePrune(options_.prune_interval);
              return;
            }
          }
          store->PruneBefore(
              cutoff, batch, [this, life, cutoff, batch](absl::StatusOr<int64_t> deleted) {
                absl::MutexLock lock(&life->mu);
                if (!life->alive) {
                  return;
                }
                if (!deleted.ok()) {
                  spdlog::warn("retention pruning failed: {}", deleted.status().message());
                  SchedulePrune(options_.prune_interval);
                  return;
                }
                if (*deleted > 0) {
                  spdlog::info("retention: pruned {} rows older than {}", *deleted,
                               absl::FormatTime(cutoff));
                }
                // A full batch means more is waiting: continue soon, in small steps, so writers and
                // readers are never held up for long.
                SchedulePrune(*deleted >= batch ? absl::Milliseconds(10) : options_.prune_interval);
              });
        });
  });
}

void Engine::Answer(Callback& done, absl::StatusOr<CheckResult> result) {
  if (observer_ != nullptr && result.ok()) {
    observer_->OnAnswer(result->source);
  }
  done(std::move(result));
}

void Engine::FailOrStale(const std::optional<Verdict>& stale, absl::Status error, Callback& done) {
  if (stale.has_value() &&
      IsFresh(clock_.Now(), stale->checked_at, options_.freshness.stale_if_error)) {
    Answer(done, CheckResult{*stale, Source::kStale, /*click_spent=*/false});
    return;
  }
  Answer(done, std::move(error));
}

void Engine::Check(CheckRequest request, Callback done) {
  if (absl::Status valid = ValidateRequest(request, options_); !valid.ok()) {
    done(std::move(valid));
    return;
  }
  // A batch cancelled half-way: its remaining items need no work. (Deadlines are read where a
  // miss waits, so the hit path reads no clock for them.)
  if (request.call != nullptr && request.call->cancelled()) {
    done(GoneError(*request.call));
    return;
  }
  absl::StatusOr<IpAddress> ip = ParseIp(request.ip);
  if (!ip.ok()) {
    done(ip.status());
    return;
  }
  const std::string& canonical = ip->canonical();
  const bool by_user_agent = options_.cache_key == CacheKeyMode::kIpUserAgent;
  std::string key = CacheKey(options_.cache_key, canonical, request.user_agent);

  const bool is_public = ip->IsPublic();
  std::optional<Verdict> cached = hot_.Get(key);
  // Only a fresh enough entry answers from memory. One that is too old sends the check to the
  // store, which may hold a newer verdict (another replica's): a replica never pays for what
  // another already knows.
  if (cached.has_value() &&
      IsFresh(clock_.Now(), cached->checked_at,
              options_.freshness.LimitFor(cached->assessment.score, request.max_age))) {
    CheckWithLatest(std::move(request), std::move(done), canonical, is_public, std::move(key),
                    std::move(cached));
    return;
  }
  // One read per key at a time: a check that misses while the key's read is outstanding waits
  // for that read, and the checks continue in arrival order when it answers. So the first of
  // several concurrent misses of a key (e.g. a batch's duplicates) starts the flight and pays
  // for it, as when reads answered at once, and the store is read once for all of them.
  std::optional<std::string> user_agent;
  if (by_user_agent) {
    user_agent = request.user_agent;
  }
  std::shared_ptr<CallState> call = request.call;
  bool first = false;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = reads_.try_emplace(key);
    it->second.push_back(PendingCheck{std::move(request), std::move(done), canonical, is_public});
    first = inserted;
    if (first) {
      // Counted until every continuation has run, so that WaitIdle (and so the destructor)
      // waits.
      ++store_reads_;
    }
  }
  if (call != nullptr) {
    // As for a flight (see CheckWithLatest): a call cancelled while its check waits for the
    // read is answered CANCELLED at once, not when the store answers.
    WatchKey(*call, key);
  }
  if (!first) {
    return;
  }
  store_.LatestFor(canonical, std::move(user_agent),
                   [this, key = std::move(key)](absl::StatusOr<std::optional<Verdict>> latest) {
                     OnLatest(key, std::move(latest));
                   });
}

void Engine::OnLatest(const std::string& key, absl::StatusOr<std::optional<Verdict>> latest) {
  if (latest.ok() && latest->has_value()) {
    hot_.Put(key, **latest);
  }
  std::vector<PendingCheck> checks;
  {
    absl::MutexLock lock(&mu_);
    auto it = reads_.find(key);
    checks = std::move(it->second);
    reads_.erase(it);
  }
  for (PendingCheck& check : checks) {
    CheckRequest& request = check.request;
    if (request.call != nullptr && request.call->cancelled()) {
      // Gone while the store read: as for a check that arrives cancelled, no work.
      check.done(GoneError(*request.call));
    } else if (!latest.ok()) {
      // Without the store we can neither answer from it nor record a click.
      usage_.Record(request.caller, /*cache_hit=*/false);
      check.done(absl::UnavailableError(
          absl::StrCat("verdict store unavailable: ", latest.status().message())));
    } else {
      CheckWithLatest(std::move(request), std::move(check.done), check.canonical, check.is_public,
                      key, *latest);
    }
  }
  EndStoreRead();
}

void Engine::CheckWithLatest(CheckRequest request, Callback done, const std::string& canonical,
                             bool is_public, std::string key, std::optional<Verdict> latest) {
  const absl::Time now = clock_.Now();
  if (latest.has_value()) {
    const Verdict& stored = *latest;
    const absl::Duration limit =
        options_.freshness.LimitFor(stored.assessment.score, request.max_age);
    if (IsFresh(now, stored.checked_at, limit)) {
      usage_.Record(request.caller, /*cache_hit=*/true);
      Answer(done, CheckResult{stored, Source::kCache, /*click_spent=*/false});
      return;
    }
  }
  usage_.Record(request.caller, /*cache_hit=*/false);
  if (request.cache_only) {
    done(absl::NotFoundError(absl::StrCat("no fresh verdict for ", canonical, " is stored")));
    return;
  }
  if (!options_.allow_non_public && !is_public) {
    done(absl::FailedPreconditionError(
        absl::StrCat(canonical,
                     " is not a public address (private, loopback, link-local, CGNAT, multicast, "
                     "reserved or documentation); it is never sent to ClickPatrol")));
    return;
  }

  Outbox out;
  absl::Status refused;
  std::optional<Verdict> raced;
  bool watch = false;
  bool created = false;
  bool send = false;
  std::shared_ptr<CallState> call = request.call;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    if (it != flights_.end()) {
      // Joining costs nothing, so neither budgets nor the breaker apply.
      it->second.waiters.push_back(Waiter{std::move(done), std::move(request.call),
                                          std::move(request.caller), request.monthly_budget,
                                          std::move(request.team), request.team_monthly_budget});
      if (observer_ != nullptr) {
        observer_->OnWaiterJoined();
      }
      watch = true;
    } else if (std::optional<Verdict> cached = hot_.Get(key);
               cached.has_value() &&
               (!latest.has_value() || cached->checked_at > latest->checked_at) &&
               IsFresh(now, cached->checked_at,
                       options_.freshness.LimitFor(cached->assessment.score, request.max_age))) {
      // The flight for this key may have finished between the lookup above (a store read that
      // may have taken a while) and this lock: it fills the hot cache before it leaves
      // `flights_`, so look there again rather than paying for a second request.
      raced = std::move(cached);
    } else if (shutting_down_) {
      refused = ShuttingDownError();
    } else {
      // Admission happens under the lock so that nobody joins a flight that is then refused.
      const bool slot_free = SlotFreeLocked();
      if (!slot_free && options_.max_queued_misses > 0 && queued_ >= options_.max_queued_misses) {
        refused = absl::ResourceExhaustedError(absl::StrCat(
            "too many misses waiting for ClickPatrol (", queued_, " queued, the limit is ",
            options_.max_queued_misses, "); nothing was sent"));
        if (observer_ != nullptr) {
          observer_->OnNotSent("queue_full");
        }
      } else {
        // A miss that must wait is admitted for real when its turn comes.
        refused = slot_free ? AdmitToSend(now) : PeekAdmission(now);
        if (refused.ok()) {
          refused = Reserve(request.caller, request.monthly_budget, request.team,
                            request.team_monthly_budget);
          if (!refused.ok() && slot_free) {
            breaker_.Cancel();
          }
        }
      }
      if (refused.ok()) {
        Flight& flight = flights_[key];
        flight.id = next_flight_id_++;
        flight.ip = canonical;
        flight.user_agent = request.user_agent;
        flight.caller = request.caller;
        flight.monthly_budget = request.monthly_budget;
        flight.team = request.team;
        flight.team_monthly_budget = request.team_monthly_budget;
        flight.stale_candidate = latest;
        flight.waiters.push_back(Waiter{std::move(done), std::move(request.call),
                                        std::move(request.caller), request.monthly_budget,
                                        std::move(request.team), request.team_monthly_budget});
        PlaceLocked(key, flight, /*take_slot=*/slot_free);
        send = slot_free;
        watch = true;
        created = true;
      }
    }
  }
  if (raced.has_value()) {
    Answer(done, CheckResult{*std::move(raced), Source::kCache, /*click_spent=*/false});
    return;
  }
  if (!watch) {
    FailOrStale(latest, std::move(refused), done);
    return;
  }
  if (created && observer_ != nullptr) {
    observer_->OnFlightStarted();
  }
  if (call != nullptr) {
    WatchKey(*call, key);
  }
  if (send) {
    SendAttempt(std::move(key));
  }
}

absl::Status Engine::ShuttingDownError() {
  return absl::UnavailableError(
      "verdictd is shutting down; the check was not sent to ClickPatrol (no click spent)");
}

absl::Status Engine::GoneError(const CallState& call) {
  return call.cancelled() ? absl::CancelledError("the call was cancelled")
                          : absl::DeadlineExceededError("the deadline passed first");
}

absl::Status Engine::BudgetSpentError(absl::string_view caller, int64_t monthly_budget) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "caller ", caller, " has spent its monthly budget of ", monthly_budget, " clicks"));
}

absl::Status Engine::TeamBudgetSpentError(absl::string_view team, int64_t monthly_budget) {
  return absl::ResourceExhaustedError(
      absl::StrCat("team ", team, " has spent its monthly budget of ", monthly_budget, " clicks"));
}

std::vector<std::string> Engine::TeamCallers(const std::string& team, const std::string& caller) {
  std::vector<std::string> callers;
  {
    absl::MutexLock lock(&budgets_mu_);
    if (auto it = teams_.find(team); it != teams_.end()) {
      callers = it->second.callers;
    }
  }
  // A check that authenticated just before a reload moved its caller out of the team still
  // counts as the team's (the store requires the payer among the team's callers).
  if (!caller.empty() && !std::binary_search(callers.begin(), callers.end(), caller)) {
    callers.insert(std::lower_bound(callers.begin(), callers.end(), caller), caller);
  }
  return callers;
}

absl::Status Engine::Reserve(const std::string& caller, int64_t monthly_budget,
                             const std::string& team, int64_t team_monthly_budget) {
  SpendTracker::Reservation reserved;
  if (team.empty() || team_monthly_budget <= 0) {
    reserved = spend_.Reserve(caller, monthly_budget);
  } else {
    const TeamBudget share{team, TeamCallers(team, caller), team_monthly_budget};
    reserved = spend_.Reserve(caller, monthly_budget, &share);
  }
  switch (reserved) {
    case SpendTracker::Reservation::kReserved:
      return absl::OkStatus();
    case SpendTracker::Reservation::kCallerBudgetSpent:
      return BudgetSpentError(caller, monthly_budget);
    case SpendTracker::Reservation::kTeamBudgetSpent:
      return TeamBudgetSpentError(team, team_monthly_budget);
  }
  return absl::InternalError("unknown reservation");
}

absl::Status Engine::AllowanceError() {
  const AllowanceStatus allowance = spend_.Allowance();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the ClickPatrol click allowance is exhausted until ",
      absl::FormatTime("%Y-%m-%d %H:%M UTC", allowance.period_end, absl::UTCTimeZone())));
}

absl::Status Engine::TokenRejectedError(absl::Time now) {
  return absl::FailedPreconditionError(absl::StrCat(
      "ClickPatrol rejected the API token; misses fail fast until it is replaced (next probe in ",
      absl::FormatDuration(absl::Ceil(next_token_probe_ - now, absl::Seconds(1))), ")"));
}

absl::Status Engine::BreakerOpenError() {
  return absl::UnavailableError(
      "ClickPatrol is failing; requests are paused for a while (circuit breaker open)");
}

absl::Status Engine::PeekAdmission(absl::Time now) {
  if (!spend_.WouldAllowUnderAllowance()) {
    return AllowanceError();
  }
  if (token_rejected_ && now < next_token_probe_) {
    return TokenRejectedError(now);
  }
  if (!breaker_.WouldAllow()) {
    return BreakerOpenError();
  }
  return absl::OkStatus();
}

absl::Status Engine::AdmitToSend(absl::Time now) {
  if (!spend_.AllowUnderAllowance()) {
    return AllowanceError();
  }
  if (token_rejected_) {
    if (now < next_token_probe_) {
      return TokenRejectedError(now);
    }
    next_token_probe_ = now + options_.token_probe_interval;  // this miss is the probe
  }
  if (!breaker_.Allow()) {
    return BreakerOpenError();
  }
  return absl::OkStatus();
}

void Engine::FailOrStaleLater(const std::optional<Verdict>& stale, absl::Status error,
                              Callback done, Outbox& out) {
  if (stale.has_value() &&
      IsFresh(clock_.Now(), stale->checked_at, options_.freshness.stale_if_error)) {
    out.emplace_back(std::move(done), CheckResult{*stale, Source::kStale, /*click_spent=*/false});
    return;
  }
  out.emplace_back(std::move(done), std::move(error));
}

void Engine::Deliver(Outbox& out) {
  for (auto& [done, result] : out) {
    Answer(done, std::move(result));
  }
  out.clear();
}

void Engine::EraseAbandonedLocked(FlightMap::iterator it) {
  flights_.erase(it);
  if (observer_ != nullptr) {
    observer_->OnNotSent("abandoned");
    observer_->OnFlightEnded();
  }
}

void Engine::RefuseLocked(FlightMap::iterator it, absl::Status error, absl::string_view reason,
                          Outbox& out) {
  Flight flight = std::move(it->second);
  flights_.erase(it);
  if (flight.payer_waiting) {
    spend_.Refund(flight.caller);
  }
  for (Waiter& waiter : flight.waiters) {
    FailOrStaleLater(flight.stale_candidate, error, std::move(waiter.done), out);
  }
  if (observer_ != nullptr) {
    observer_->OnNotSent(reason);
    observer_->OnFlightEnded();
  }
}

bool Engine::PruneWaitersLocked(Flight& flight, absl::Time now, const CallState* cancelled,
                                Outbox& out) {
  bool payer_left = false;
  std::vector<Waiter> kept;
  kept.reserve(flight.waiters.size());
  for (size_t i = 0; i < flight.waiters.size(); ++i) {
    Waiter& waiter = flight.waiters[i];
    const CallState* call = waiter.call.get();
    if (call == nullptr || (call != cancelled && call->Alive(now))) {
      kept.push_back(std::move(waiter));
      continue;
    }
    if (i == 0 && flight.payer_waiting) {
      payer_left = true;
    }
    out.emplace_back(std::move(waiter.done), GoneError(*call));
  }
  flight.waiters = std::move(kept);
  if (payer_left) {
    flight.payer_waiting = false;
    if (flight.stage != Stage::kSending) {
      // Nothing was sent: the payer who left gets its click back, and the next waiter who can
      // pay leads (it alone would otherwise get an answer nobody paid for).
      spend_.Refund(flight.caller);
      ElectPayerLocked(flight, out);
    }
  }
  return !flight.waiters.empty();
}

bool Engine::ElectPayerLocked(Flight& flight, Outbox& out) {
  while (!flight.waiters.empty()) {
    Waiter& next = flight.waiters.front();
    absl::Status reserved =
        Reserve(next.caller, next.monthly_budget, next.team, next.team_monthly_budget);
    if (reserved.ok()) {
      flight.caller = next.caller;
      flight.monthly_budget = next.monthly_budget;
      flight.team = next.team;
      flight.team_monthly_budget = next.team_monthly_budget;
      flight.payer_waiting = true;
      return true;
    }
    FailOrStaleLater(flight.stale_candidate, std::move(reserved), std::move(next.done), out);
    flight.waiters.erase(flight.waiters.begin());
  }
  return false;
}

void Engine::WatchKey(CallState& call, const std::string& key) {
  // Cancel() reads the keys after setting the flag, and this reads the flag after adding the
  // key, so one of the two sees the other.
  bool cancelled = false;
  {
    absl::MutexLock lock(&call.keys_mu_);
    call.keys_.push_back(key);
    cancelled = call.cancelled();
  }
  if (cancelled) {
    DropCancelled(key, &call);
  }
}

void Engine::DropCancelled(const std::string& key, const CallState* call) {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    if (auto read = reads_.find(key); read != reads_.end()) {
      // Checks still waiting for the store: answered now. The entry stays until the read
      // answers, even if empty, so that the read finds it.
      std::vector<PendingCheck>& checks = read->second;
      auto gone = std::stable_partition(checks.begin(), checks.end(), [call](const auto& c) {
        return c.request.call.get() != call;
      });
      for (auto c = gone; c != checks.end(); ++c) {
        out.emplace_back(std::move(c->done), GoneError(*c->request.call));
      }
      checks.erase(gone, checks.end());
    }
    auto it = flights_.find(key);
    if (it != flights_.end()) {
      DropCancelledFromFlightLocked(it, call, out);
    }
  }
  Deliver(out);
}

void Engine::DropCancelledFromFlightLocked(FlightMap::iterator it, const CallState* call,
                                           Outbox& out) {
  Flight& flight = it->second;
  if (!PruneWaitersLocked(flight, clock_.Now(), call, out) && flight.stage != Stage::kSending) {
    // Unsent and unwanted: it leaves without a ledger row (its payer was refunded above).
    if (flight.stage == Stage::kQueued) {
      // Its queue entry stays behind, dead, and is skipped at its turn: finding it would cost
      // a scan of the queue per dropped miss, under the lock, in a cancellation storm.
      --queued_;
      ++dead_queue_entries_;
      if (observer_ != nullptr) {
        observer_->OnQueueDepth(queued_);
      }
    }
    EraseAbandonedLocked(it);
    CompactQueueLocked();
  }
}

bool Engine::IsQueuedLocked(const QueueEntry& entry) const {
  auto it = flights_.find(entry.key);
  return it != flights_.end() && it->second.id == entry.id && it->second.stage == Stage::kQueued;
}

void Engine::CompactQueueLocked() {
  // Dead entries are at most as many as live ones (and a few), so the queue's memory stays
  // bounded by --max_queued_misses even while nothing leaves it (a hung ClickPatrol).
  if (dead_queue_entries_ <= 64 || dead_queue_entries_ <= queued_) {
    return;
  }
  std::deque<QueueEntry> live;
  for (QueueEntry& entry : slot_queue_) {
    if (IsQueuedLocked(entry)) {
      live.push_back(std::move(entry));
    }
  }
  slot_queue_ = std::move(live);
  dead_queue_entries_ = 0;
}

void Engine::Cancel(const std::shared_ptr<CallState>& call) {
  // Counted, so that the engine is not destroyed under a cancellation that answers a call (and
  // so lets gRPC's shutdown finish) while it still has other keys to drop.
  {
    absl::MutexLock lock(&mu_);
    ++cancels_in_progress_;
  }
  call->cancelled_.store(true, std::memory_order_release);
  std::vector<std::string> keys;
  {
    absl::MutexLock lock(&call->keys_mu_);
    keys = call->keys_;
  }
  for (const std::string& key : keys) {
    DropCancelled(key, call.get());
  }
  absl::MutexLock lock(&mu_);
  --cancels_in_progress_;
}

void Engine::Shutdown() {
  Outbox out;
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    for (auto it = flights_.begin(); it != flights_.end();) {
      if (it->second.stage == Stage::kSending) {
        ++it;
        continue;
      }
      RefuseLocked(it++, ShuttingDownError(), "shutdown", out);
    }
    slot_queue_.clear();
    queued_ = 0;
    dead_queue_entries_ = 0;
    if (observer_ != nullptr) {
      observer_->OnQueueDepth(0);
    }
  }
  Deliver(out);
}

size_t Engine::QueuedMisses() {
  absl::MutexLock lock(&mu_);
  return queued_;
}

bool Engine::TokenRejected() {
  absl::MutexLock lock(&mu_);
  return token_rejected_;
}

bool Engine::SlotFreeLocked() const {
  return options_.max_upstream_in_flight <= 0 || slots_in_use_ < options_.max_upstream_in_flight;
}

void Engine::PlaceLocked(const std::string& key, Flight& flight, bool take_slot) {
  if (take_slot) {
    if (options_.max_upstream_in_flight > 0) {
      ++slots_in_use_;
    }
    flight.stage = Stage::kSending;
    return;
  }
  flight.stage = Stage::kQueued;
  flight.waited = true;
  slot_queue_.push_back(QueueEntry{key, flight.id});
  ++queued_;
  if (observer_ != nullptr) {
    observer_->OnQueueDepth(queued_);
  }
}

std::optional<std::string> Engine::PassSlotLocked(Outbox& out) {
  if (options_.max_upstream_in_flight <= 0) {
    return std::nullopt;
  }
  const absl::Time now = clock_.Now();
  std::optional<std::string> next;
  while (!slot_queue_.empty() && !next.has_value()) {
    QueueEntry entry = std::move(slot_queue_.front());
    slot_queue_.pop_front();
    if (!IsQueuedLocked(entry)) {
      dead_queue_entries_ -= dead_queue_entries_ > 0 ? 1 : 0;  // its flight was dropped
      continue;
    }
    --queued_;
    std::string key = std::move(entry.key);
    auto it = flights_.find(key);
    Flight& flight = it->second;
    if (!PruneWaitersLocked(flight, now, nullptr, out)) {
      EraseAbandonedLocked(it);
      continue;
    }
    // Its turn: admitted again, now that the breaker, the allowance and the token may have
    // changed while it waited.
    absl::Status admitted = shutting_down_ ? ShuttingDownError() : AdmitToSend(now);
    if (!admitted.ok()) {
      RefuseLocked(it, std::move(admitted), "refused", out);
      continue;
    }
    flight.stage = Stage::kSending;
    next = std::move(key);
  }
  if (observer_ != nullptr) {
    observer_->OnQueueDepth(queued_);
  }
  if (!next.has_value()) {
    --slots_in_use_;
  }
  return next;
}

void Engine::Retry(const std::string& key, uint64_t id) {
  Outbox out;
  bool send = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    if (it == flights_.end() || it->second.id != id || it->second.stage != Stage::kBackoff) {
      return;  // dropped while it waited
    }
    Flight& flight = it->second;
    const absl::Time now = clock_.Now();
    if (!PruneWaitersLocked(flight, now, nullptr, out)) {
      EraseAbandonedLocked(it);
    } else if (!SlotFreeLocked()) {
      PlaceLocked(key, flight, /*take_slot=*/false);
    } else if (absl::Status admitted = shutting_down_ ? ShuttingDownError() : AdmitToSend(now);
               !admitted.ok()) {
      RefuseLocked(it, std::move(admitted), "refused", out);
    } else {
      PlaceLocked(key, flight, /*take_slot=*/true);
      send = true;
    }
  }
  Deliver(out);
  if (send) {
    SendAttempt(key);
  }
}

void Engine::SendAttempt(std::string key) {
  std::string ip;
  std::optional<std::string> user_agent;
  bool look = false;
  {
    absl::MutexLock lock(&mu_);
    Flight& flight = flights_.at(key);
    look = flight.waited || flight.ended_seen;
    flight.waited = false;
    flight.ended_seen = false;
    if (look) {
      ip = flight.ip;
      if (options_.cache_key == CacheKeyMode::kIpUserAgent) {
        user_agent = flight.user_agent;
      }
    }
  }
  if (!look) {
    ClaimAndSend(std::move(key));
    return;
  }
  // It waited for a slot or a retry (or heard a flight for its key end): another process may
  // have stored the verdict meanwhile, and claiming now would pay for it again.
  BeginStoreRead();
  store_.LatestFor(std::move(ip), std::move(user_agent),
                   [this, key](absl::StatusOr<std::optional<Verdict>> latest) {
                     OnPreClaimRead(key, std::move(latest));
                     EndStoreRead();
                   });
}

bool Engine::LandedSince(const Flight& flight,
                         const absl::StatusOr<std::optional<Verdict>>& latest) const {
  if (!latest.ok() || !latest->has_value()) {
    return false;
  }
  const Verdict& v = **latest;
  const std::optional<Verdict>& before = flight.stale_candidate;
  return (!before.has_value() || v.checked_at > before->checked_at) &&
         IsFresh(clock_.Now(), v.checked_at,
                 options_.freshness.LimitFor(v.assessment.score, std::nullopt));
}

void Engine::OnPreClaimRead(const std::string& key, absl::StatusOr<std::optional<Verdict>> latest) {
  Outbox out;
  std::optional<std::string> next;
  std::optional<Verdict> landed;
  {
    absl::MutexLock lock(&mu_);
    Flight& flight = flights_.at(key);  // kSending: nobody else removes it
    if (LandedSince(flight, latest)) {
      landed = **latest;
      if (flight.payer_waiting) {
        spend_.Refund(flight.caller);
      }
      next = PassSlotLocked(out);
    }
  }
  if (!landed.has_value()) {
    ClaimAndSend(key);
    return;
  }
  breaker_.Cancel();
  Deliver(out);
  hot_.Put(key, *landed);
  Resolve(key, *std::move(landed), /*charged=*/false);
  if (next.has_value()) {
    SendAttempt(*std::move(next));
  }
}

void Engine::ClaimAndSend(std::string key) {
  ClickClaim claim;
  {
    absl::MutexLock lock(&mu_);
    Flight& flight = flights_.at(key);
    ++flight.attempts;
    flight.ended_seen = false;
    claim.caller = flight.caller;
    claim.ip = flight.ip;
    claim.monthly_budget = flight.monthly_budget;
    if (!flight.team.empty() && flight.team_monthly_budget > 0) {
      claim.team = flight.team;
      claim.team_monthly_budget = flight.team_monthly_budget;
      claim.team_callers = TeamCallers(flight.team, flight.caller);
    }
    // What this flight read of the store: a verdict stored since (another process's flight
    // landed between that read and this claim) is taken instead of paid for again.
    claim.newer_than = flight.stale_candidate.has_value() ? flight.stale_candidate->checked_at
                                                          : absl::InfinitePast();
    if (options_.cache_key == CacheKeyMode::kIpUserAgent) {
      claim.user_agent = flight.user_agent;
    }
  }
  // ClickPatrol's "allowance exhausted", told to any process sharing the store, holds here too.
  claim.allowance_probe_interval = options_.allowance.exhausted_probe_interval;
  claim.requested_at = clock_.Now();
  claim.flight_key = key;
  claim.owner = options_.replica_id;
  claim.lease = options_.flight_lease;
  // The ledger row is durable before the request leaves: a crash after this point still
  // counts the click as spent. The claim makes the flight single across every process sharing
  // the store, and the budget hold across them.
  std::string team = claim.team;
  store_.ClaimClick(std::move(claim), [this, key, team = std::move(team)](
                                          absl::StatusOr<ClaimResult> claimed) {
    if (claimed.ok() && claimed->kind == ClaimResult::Kind::kVerdictLanded) {
      OnClaimLanded(key, *std::move(claimed->landed));
      return;
    }
    if (claimed.ok() && claimed->kind != ClaimResult::Kind::kBegun) {
      OnClaimRefused(key, *claimed);
      return;
    }
    if (claimed.ok() && !team.empty()) {
      // The team's count across every process sharing the store, this click included.
      spend_.ObserveTeam(team, claimed->team_month_clicks);
    }
    absl::StatusOr<int64_t> click_id =
        claimed.ok() ? absl::StatusOr<int64_t>(claimed->click_id) : claimed.status();
    Outbox out;
    std::optional<std::string> next;
    std::string caller;
    std::string ip;
    std::string user_agent;
    absl::Status drop;  // why the request will not leave after all
    uint64_t token_generation = 0;
    {
      absl::MutexLock lock(&mu_);
      token_generation = token_generation_;
      Flight& flight = flights_.at(key);
      caller = flight.caller;
      if (claimed.ok() && claimed->month_clicks > 0) {
        spend_.Observe(caller, claimed->month_clicks);
      }
      if (!click_id.ok()) {
        drop = absl::UnavailableError(absl::StrCat("cannot record the click, so nothing was sent: ",
                                                   click_id.status().message()));
      } else if (shutting_down_) {
        drop = ShuttingDownError();
      } else if (!PruneWaitersLocked(flight, clock_.Now(), nullptr, out)) {
        drop = absl::CancelledError("nobody waits for the answer any more");
      }
      if (!drop.ok()) {
        next = PassSlotLocked(out);
      } else {
        ip = flight.ip;
        user_agent = flight.user_agent;
      }
    }
    Deliver(out);
    if (drop.ok()) {
      client_.Fetch(std::move(ip), std::move(user_agent),
                    [this, key, id = *click_id, token_generation](FetchOutcome outcome) {
                      OnFetched(key, id, token_generation, std::move(outcome));
                    });
      return;
    }
    spend_.Refund(caller);
    breaker_.Cancel();
    if (!click_id.ok()) {
      spdlog::error("click ledger write failed, nothing sent: {}", click_id.status().message());
      if (next.has_value()) {
        SendAttempt(*std::move(next));
      }
      Resolve(key, std::move(drop), /*charged=*/false);
      return;
    }
    if (observer_ != nullptr) {
      observer_->OnNotSent(drop.code() == absl::StatusCode::kCancelled ? "abandoned" : "shutdown");
    }
    // The row was written but the request never leaves: it is completed as not sent (no click).
    ClickCompletion completion;
    completion.outcome = ClickOutcome::kNotSent;
    completion.error = std::string(drop.message());
    // The next miss's ledger row is written only once this one is completed (see OnFetched).
    store_.CompleteClick(*click_id, std::move(completion),
                         [this, key, drop, next = std::move(next)](absl::Status stored) mutable {
                           if (!stored.ok()) {
                             spdlog::error("could not complete click ledger row: {}",
                                           stored.message());
                           }
                           Resolve(key, drop, /*charged=*/false);
                           if (next.has_value()) {
                             SendAttempt(*std::move(next));
                           }
                         });
  });
}

void Engine::ShareAllowanceMark(AllowanceMark mark) {
  const bool clear = mark.exhausted_until == absl::InfinitePast();
  store_.SetAllowanceMark(mark, [clear](absl::Status stored) {
    if (!stored.ok()) {
      spdlog::warn("could not {} the shared allowance-exhausted mark: {}",
                   clear ? "clear" : "record", stored.message());
    }
  });
}

void Engine::OnClaimLanded(const std::string& key, Verdict landed) {
  bool fresh = false;
  {
    absl::MutexLock lock(&mu_);
    Flight& flight = flights_.at(key);  // kSending: nobody else removes it
    --flight.attempts;                  // not an attempt: nothing was sent
    fresh = LandedSince(flight, std::optional<Verdict>(landed));
    if (!fresh) {
      // Newer than what this flight read but not fresh enough to answer with (stored by a
      // process with another clock or freshness): it is what the flight knows now.
      flight.stale_candidate = landed;
    }
  }
  if (!fresh) {
    ClaimAndSend(key);
    return;
  }
  OnPreClaimRead(key, std::optional<Verdict>(std::move(landed)));
}

void Engine::OnClaimRefused(const std::string& key, const ClaimResult& claim) {
  // Nothing was written and nothing leaves: the breaker's admission is handed back and the slot
  // passes on.
  breaker_.Cancel();
  Outbox out;
  std::optional<std::string> next;
  uint64_t id = 0;
  bool look_now = false;
  bool retry = false;
  bool stopping = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    Flight& flight = it->second;
    --flight.attempts;  // not an attempt: nothing was sent
    id = flight.id;
    next = PassSlotLocked(out);
    stopping = shutting_down_;
    if (stopping) {
      // Shutdown passed over this flight while it was claiming: nothing was sent, so it ends
      // now rather than waiting for another process.
      RefuseLocked(it, ShuttingDownError(), "shutdown", out);
    } else if (claim.kind == ClaimResult::Kind::kAllowanceExhausted) {
      // Another process heard ClickPatrol say so (this one may not have): everyone waiting
      // here is refused as if this process had, and its own probes keep to the shared time.
      spend_.ObserveUpstreamExhausted(claim.allowance.next_probe);
      RefuseLocked(it, AllowanceError(), "refused", out);
    } else if (claim.kind == ClaimResult::Kind::kFlightHeld) {
      // The payer keeps its reservation while it waits, as a queued miss does.
      flight.stage = Stage::kRemote;
      look_now = flight.ended_seen;
      flight.ended_seen = false;
    } else {
      // Spent across the cluster, though not by this process's count: this process learns the
      // count, the payer is refused, and the next waiter who can pay leads.
      spend_.Refund(flight.caller);
      absl::Status spent;
      if (claim.kind == ClaimResult::Kind::kTeamBudgetSpent) {
        spend_.ObserveTeam(flight.team, claim.team_month_clicks);
        spent = TeamBudgetSpentError(flight.team, flight.team_monthly_budget);
      } else {
        spend_.Observe(flight.caller, claim.month_clicks);
        spent = BudgetSpentError(flight.caller, flight.monthly_budget);
      }
      if (flight.payer_waiting && !flight.waiters.empty()) {
        FailOrStaleLater(flight.stale_candidate, std::move(spent),
                         std::move(flight.waiters.front().done), out);
        flight.waiters.erase(flight.waiters.begin());
      }
      flight.payer_waiting = false;
      if (ElectPayerLocked(flight, out)) {
        flight.stage = Stage::kBackoff;  // Retry places it again
        retry = true;
      } else {
        flights_.erase(it);
        if (observer_ != nullptr) {
          observer_->OnNotSent("refused");
          observer_->OnFlightEnded();
        }
      }
    }
  }
  Deliver(out);
  if (next.has_value()) {
    SendAttempt(*std::move(next));
  }
  if (retry) {
    Retry(key, id);
  } else if (claim.kind == ClaimResult::Kind::kFlightHeld && !stopping) {
    ScheduleRemotePoll(key, id, claim.lease_left);
    if (look_now) {
      RemoteWake(key, id);
    }
  }
}

void Engine::ScheduleRemotePoll(const std::string& key, uint64_t id, absl::Duration lease_left) {
  // At the poll interval, and just after the lease runs out (the holder died: take over).
  const absl::Duration delay =
      std::min(options_.remote_flight_poll,
               std::max(lease_left, absl::ZeroDuration()) + absl::Milliseconds(10));
  // Only the newest poll of a flight counts: every refused claim schedules one, and extra
  // wake-ups (notifications) must not leave chains of polls behind, each a claim per interval.
  uint64_t poll = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    if (it == flights_.end() || it->second.id != id) {
      return;
    }
    poll = ++it->second.poll;
  }
  scheduler_.RunAfter(delay, [this, life = lifeline_, key, id, poll] {
    absl::MutexLock lock(&life->mu);
    if (life->alive) {
      RemoteWake(key, id, poll);
    }
  });
}

void Engine::RemoteWake(const std::string& key, uint64_t id, std::optional<uint64_t> poll) {
  Outbox out;
  std::string ip;
  std::optional<std::string> user_agent;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    if (it == flights_.end() || it->second.id != id || it->second.stage != Stage::kRemote) {
      return;  // answered, dropped, or claiming again already
    }
    Flight& flight = it->second;
    if (poll.has_value() && *poll != flight.poll) {
      return;  // a later poll replaced this one
    }
    if (flight.rechecking) {
      flight.recheck_again = true;
      return;
    }
    if (!PruneWaitersLocked(flight, clock_.Now(), nullptr, out)) {
      EraseAbandonedLocked(it);
    } else {
      flight.rechecking = true;
      ip = flight.ip;
      if (options_.cache_key == CacheKeyMode::kIpUserAgent) {
        user_agent = flight.user_agent;
      }
    }
  }
  Deliver(out);
  if (ip.empty()) {
    return;
  }
  BeginStoreRead();
  store_.LatestFor(std::move(ip), std::move(user_agent),
                   [this, key, id](absl::StatusOr<std::optional<Verdict>> latest) {
                     OnRemoteChecked(key, id, std::move(latest));
                     EndStoreRead();
                   });
}

void Engine::OnRemoteChecked(const std::string& key, uint64_t id,
                             absl::StatusOr<std::optional<Verdict>> latest) {
  Outbox out;
  std::optional<Verdict> landed;
  bool again = false;
  bool send = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    if (it == flights_.end() || it->second.id != id || it->second.stage != Stage::kRemote) {
      return;
    }
    Flight& flight = it->second;
    flight.rechecking = false;
    const absl::Time now = clock_.Now();
    if (LandedSince(flight, latest)) {
      // The other process's verdict: everyone here shared its request (SOURCE_UPSTREAM, as a
      // local joiner would), nobody here paid.
      landed = **latest;
      if (flight.payer_waiting) {
        spend_.Refund(flight.caller);
      }
    } else if (flight.recheck_again) {
      flight.recheck_again = false;
      again = true;
    } else if (!latest.ok()) {
      // Nothing can be claimed through a failing store either: wait for the next poll.
      again = false;
    } else if (shutting_down_) {
      RefuseLocked(it, ShuttingDownError(), "shutdown", out);
    } else if (!SlotFreeLocked()) {
      // No verdict landed: the holder failed, died or is still at it; claiming again tells.
      PlaceLocked(key, flight, /*take_slot=*/false);
    } else if (absl::Status admitted = AdmitToSend(now); !admitted.ok()) {
      RefuseLocked(it, std::move(admitted), "refused", out);
    } else {
      PlaceLocked(key, flight, /*take_slot=*/true);
      send = true;
    }
  }
  Deliver(out);
  if (landed.has_value()) {
    hot_.Put(key, *landed);
    Resolve(key, *std::move(landed), /*charged=*/false);
  } else if (again) {
    RemoteWake(key, id);
  } else if (!latest.ok()) {
    ScheduleRemotePoll(key, id, options_.remote_flight_poll);
  } else if (send) {
    SendAttempt(key);
  }
}

void Engine::OnFlightEnded(const std::string& flight_key) {
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(flight_key);
    if (it == flights_.end()) {
      return;
    }
    if (it->second.stage != Stage::kRemote) {
      it->second.ended_seen = true;
      return;
    }
    id = it->second.id;
  }
  RemoteWake(flight_key, id);
}

void Engine::OnFlightsMayHaveEnded() {
  std::vector<std::pair<std::string, uint64_t>> remote;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, flight] : flights_) {
      if (flight.stage == Stage::kRemote) {
        remote.emplace_back(key, flight.id);
      }
    }
  }
  for (const auto& [key, id] : remote) {
    RemoteWake(key, id);
  }
}

void Engine::OnFetched(const std::string& key, int64_t click_id, uint64_t token_generation,
                       FetchOutcome outcome) {
  std::string ip;
  std::string user_agent;
  std::string caller;
  int attempts = 0;
  {
    absl::MutexLock lock(&mu_);
    const Flight& flight = flights_.at(key);
    ip = flight.ip;
    user_agent = flight.user_agent;
    caller = flight.caller;
    attempts = flight.attempts;
  }
  ClickCompletion completion;
  completion.outcome = OutcomeOf(outcome);
  completion.http_status = outcome.http_status;
  completion.latency = outcome.latency;
  completion.raw_body = std::move(outcome.raw_body);
  const absl::Status status = outcome.assessment.status();
  if (outcome.assessment.ok()) {
    completion.verdict = Verdict{ip, *outcome.assessment, clock_.Now(), user_agent, caller};
  } else {
    completion.error = std::string(status.message());
  }
  spdlog::info("upstream caller={} ip={} outcome={} http_status={} latency_ms={:.1f}{}{}",
               absl::CHexEscape(caller), ip, OutcomeName(completion.outcome),
               completion.http_status, absl::ToDoubleMilliseconds(completion.latency),
               status.ok() ? "" : " error=", status.message());
  if (observer_ != nullptr) {
    observer_->OnUpstream(caller, OutcomeName(completion.outcome), completion.http_status,
                          completion.latency);
  }
  if (status.code() == absl::StatusCode::kInternal) {
    // Undocumented answers are logged in short so an operator can see what ClickPatrol said.
    spdlog::warn("ClickPatrol answer for {} was not a verdict; body starts: {}", ip,
                 absl::CHexEscape(absl::string_view(completion.raw_body).substr(0, 200)));
  }
  if (status.code() == absl::StatusCode::kFailedPrecondition) {
    spdlog::critical(
        "ClickPatrol REJECTED THE API TOKEN (HTTP {}): every miss will fail until "
        "the token is replaced",
        completion.http_status);
  }

  const bool not_sent = completion.outcome == ClickOutcome::kNotSent;
  const bool retry = not_sent && attempts < options_.max_attempts;
  // What this answer says about ClickPatrol is recorded before the slot passes on, so that the
  // next queued miss is admitted in its light.
  if (status.ok()) {
    breaker_.RecordSuccess();
    if (spend_.MarkUpstreamAvailable()) {
      ShareAllowanceMark(AllowanceMark{});  // a probe found it topped up: tell the others
    }
  } else if (status.code() == absl::StatusCode::kResourceExhausted) {
    spend_.MarkUpstreamExhausted();
    breaker_.RecordSuccess();  // ClickPatrol is healthy; it just will not serve us
    const AllowanceStatus allowance = spend_.Allowance();
    ShareAllowanceMark(AllowanceMark{allowance.period_end,
                                     clock_.Now() + options_.allowance.exhausted_probe_interval});
  } else if (retry) {
    breaker_.Cancel();  // the retry is admitted again when its turn comes
  } else if (CountsAgainstBreaker(status)) {
    breaker_.RecordFailure();
  } else {
    breaker_.RecordSuccess();
  }
  if (not_sent && !retry) {
    spend_.Refund(caller);
  }
  Outbox out;
  std::optional<std::string> next;
  {
    absl::MutexLock lock(&mu_);
    if (status.ok()) {
      token_rejected_ = false;
    } else if (status.code() == absl::StatusCode::kFailedPrecondition && !not_sent &&
               token_generation == token_generation_) {
      // (A rejection of a token replaced since this request left says nothing about the new one.)
      token_rejected_ = true;
      next_token_probe_ = clock_.Now() + options_.token_probe_interval;
    }
    // The request is over: its slot goes to the next queued miss, which is started only from
    // this completion's callback, so that its ledger row is written after this one is completed
    // (the store does not order independent writes): a crash then leaves at most
    // max_upstream_in_flight rows pending. (Taken now, while this flight still exists: once the
    // completion is queued, the flight may resolve and the engine be destroyed; a miss holding
    // the slot keeps the engine alive.)
    next = PassSlotLocked(out);
  }
  Deliver(out);

  std::optional<Verdict> verdict = completion.verdict;
  const bool charged = !not_sent;
  ClickCompletion kept = completion;  // written again later if this write fails
  store_.CompleteClick(
      click_id, std::move(completion),
      [this, key, click_id, status, charged, retry, attempts, verdict = std::move(verdict),
       kept = std::move(kept), next = std::move(next)](absl::Status stored) mutable {
        if (stored.code() == absl::StatusCode::kUnavailable) {
          RetryCompletionLater(key, click_id, std::move(kept), options_.completion_retry_backoff);
        }
        OnCompleted(key, status, charged, retry, attempts, std::move(verdict), stored);
        if (next.has_value()) {
          SendAttempt(*std::move(next));
        }
      });
}

void Engine::RetryCompletionLater(std::string key, int64_t click_id, ClickCompletion completion,
                                  absl::Duration delay) {
  // The request was answered (or failed after it may have left) but the store could not record
  // it: the click stays pending (billed) and its claim held until this lands. Written again in
  // the background until it does, so that the verdict that was paid for is kept and the key's
  // claim released as soon as the store is back, not when the lease runs out. Bounded: only
  // requests in flight when the store failed get here (misses send nothing while it is down).
  spdlog::warn("click {}: completion not written; writing it again in {}", click_id,
               absl::FormatDuration(delay));
  // The store outlives the engine: the task may reach it after the engine is gone, and then
  // only finds out, under the lifeline's lock, that it has nothing more to do.
  VerdictStore* store = &store_;
  scheduler_.RunAfter(delay, [this, life = lifeline_, store, key = std::move(key), click_id,
                              completion = std::move(completion), delay]() mutable {
    {
      absl::MutexLock lock(&life->mu);
      if (!life->alive) {
        spdlog::warn("click {}: completion never written (shutting down); it stays pending",
                     click_id);
        return;
      }
    }
    std::optional<Verdict> verdict = completion.verdict;
    ClickCompletion again = completion;
    store->CompleteClick(
        click_id, std::move(again),
        [this, life, key = std::move(key), click_id, completion = std::move(completion), delay,
         verdict = std::move(verdict)](absl::Status stored) mutable {
          absl::MutexLock lock(&life->mu);
          if (!life->alive) {
            return;
          }
          if (stored.code() == absl::StatusCode::kUnavailable) {
            RetryCompletionLater(std::move(key), click_id, std::move(completion),
                                 std::min(2 * delay, absl::Seconds(30)));
            return;
          }
          if (!stored.ok()) {
            // e.g. FAILED_PRECONDITION: the first write had committed after all.
            spdlog::warn("click {}: completion written again: {}", click_id, stored.message());
            return;
          }
          spdlog::info("click {}: completion written after the store came back", click_id);
          if (verdict.has_value()) {
            hot_.Put(key, *verdict);
          }
        });
  });
}

void Engine::OnCompleted(const std::string& key, const absl::Status& status, bool charged,
                         bool retry, int attempts, std::optional<Verdict> verdict,
                         const absl::Status& stored) {
  if (!stored.ok()) {
    spdlog::error("could not complete click ledger row: {}", stored.message());
  }
  if (retry) {
    // Never sent, so never billed: try again after a backoff, unless shutting down.
    uint64_t id = 0;
    bool stopping = false;
    {
      absl::MutexLock lock(&mu_);
      Flight& flight = flights_.at(key);
      id = flight.id;
      stopping = shutting_down_;
      if (!stopping) {
        flight.stage = Stage::kBackoff;
        flight.waited = true;
      }
    }
    if (stopping) {
      Resolve(key, ShuttingDownError(), /*charged=*/false);
      return;
    }
    const absl::Duration backoff = options_.retry_backoff * (1 << (attempts - 1));
    scheduler_.RunAfter(backoff, [this, life = lifeline_, key, id] {
      absl::MutexLock lock(&life->mu);
      if (life->alive) {
        Retry(key, id);
      }
    });
    return;
  }
  if (!status.ok()) {
    Resolve(key, status, charged);
    return;
  }
  if (!stored.ok()) {
    // A verdict is durable before anyone sees it: auditors must find what callers got.
    Resolve(
        key,
        absl::UnavailableError(absl::StrCat("the verdict could not be stored: ", stored.message())),
        charged);
    return;
  }
  hot_.Put(key, *verdict);
  Resolve(key, std::move(*verdict), charged);
}

void Engine::Resolve(const std::string& key, absl::StatusOr<Verdict> result, bool charged,
                     Source source) {
  Flight flight;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    flight = std::move(it->second);
    flights_.erase(it);
  }
  if (observer_ != nullptr) {
    observer_->OnFlightEnded();
  }
  // The payer, if still waiting, is first; only it was charged.
  auto spent = [&](size_t i) { return charged && i == 0 && flight.payer_waiting; };
  if (result.ok()) {
    for (size_t i = 0; i < flight.waiters.size(); ++i) {
      Answer(flight.waiters[i].done, CheckResult{*result, source, spent(i)});
    }
    return;
  }
  const absl::Duration window = options_.freshness.stale_if_error;
  if (flight.stale_candidate.has_value() &&
      IsFresh(clock_.Now(), flight.stale_candidate->checked_at, window)) {
    for (size_t i = 0; i < flight.waiters.size(); ++i) {
      Answer(flight.waiters[i].done,
             CheckResult{*flight.stale_candidate, Source::kStale, spent(i)});
    }
    return;
  }
  for (Waiter& waiter : flight.waiters) {
    Answer(waiter.done, result.status());
  }
}

void Engine::History(HistoryQuery query, HistoryCallback done) {
  BeginStoreRead();
  store_.History(std::move(query),
                 [this, done = std::move(done)](absl::StatusOr<std::vector<HistoryEntry>> page) {
                   done(std::move(page));
                   EndStoreRead();
                 });
}

// Who may read whose usage and clicks: a caller its own, a lead its team's callers', an
// auditor everyone's. Membership is the current one (the keys file's), as for team budgets.
absl::Status Engine::MayRead(absl::string_view what, const Reader& reader,
                             const std::string& caller, const std::string& team) {
  if (!caller.empty() && !team.empty()) {
    return absl::InvalidArgumentError("give a caller or a team, not both");
  }
  bool known_team = true;
  std::string caller_team;
  {
    absl::MutexLock lock(&budgets_mu_);
    if (!team.empty()) {
      known_team = teams_.count(team) > 0;
    }
    if (auto it = team_of_caller_.find(caller); !caller.empty() && it != team_of_caller_.end()) {
      caller_team = it->second;
    }
  }
  if (reader.auditor || (!caller.empty() && caller == reader.caller)) {
    // An auditor is told when no caller is in the team (a typo, or a team declared without
    // callers); anyone else gets PERMISSION_DENIED below and learns no team's name.
    if (!known_team) {
      return absl::InvalidArgumentError(
          absl::StrCat("no caller of the keys file is in team ", QuoteForError(team)));
    }
    return absl::OkStatus();
  }
  const bool leads = reader.lead && !reader.team.empty();
  if (leads && !team.empty() && team == reader.team) {
    return absl::OkStatus();
  }
  if (leads && !caller.empty() && caller_team == reader.team) {
    return absl::OkStatus();
  }
  const std::string who = absl::StrCat(leads ? "the lead of team " : "caller ",
                                       QuoteForError(leads ? reader.team : reader.caller));
  const std::string own = leads ? "its team's callers'" : "its own";
  if (caller.empty() && team.empty()) {
    return absl::PermissionDeniedError(absl::StrCat("only auditors may read every caller's ", what,
                                                    "; ask for your own",
                                                    leads ? " or your team's" : ""));
  }
  return absl::PermissionDeniedError(
      absl::StrCat(who, " may read only ", own, " ", what,
                   what == "usage" ? ", not that of " : ", not those of ",
                   team.empty() ? "" : "team ", QuoteForError(team.empty() ? caller : team)));
}

void Engine::Clicks(ClicksQuery query, ClicksCallback done) {
  if (absl::Status may = MayRead("clicks", query.reader, query.query.caller, query.team);
      !may.ok()) {
    done(std::move(may));
    return;
  }
  // A team's page: the first query.limit clicks of each of its callers after the cursor, merged
  // newest first, cut to query.limit. Each is an index range scan of one caller, so a page costs
  // callers x limit rows however large the ledger grows. Without a team it is the one query.
  const std::vector<std::string> callers = query.team.empty()
                                               ? std::vector<std::string>{query.query.caller}
                                               : TeamCallers(query.team, "");
  if (callers.empty()) {
    done(std::vector<ClickRecord>());
    return;
  }
  struct Merge {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    absl::Status error ABSL_GUARDED_BY(mu);
    std::vector<ClickRecord> clicks ABSL_GUARDED_BY(mu);
    ClicksCallback done;
    int limit = 0;
  };
  auto merge = std::make_shared<Merge>();
  merge->done = std::move(done);
  merge->limit = query.query.limit;
  {
    absl::MutexLock lock(&merge->mu);
    merge->left = callers.size();
  }
  BeginStoreRead();
  for (const std::string& caller : callers) {
    ClickQuery one = query.query;
    one.caller = caller;
    store_.Clicks(std::move(one), [this, merge](absl::StatusOr<std::vector<ClickRecord>> clicks) {
      std::vector<ClickRecord> all;
      absl::Status error;
      {
        absl::MutexLock lock(&merge->mu);
        if (!clicks.ok()) {
          if (merge->error.ok()) {
            merge->error = clicks.status();
          }
        } else {
          for (ClickRecord& click : *clicks) {
            merge->clicks.push_back(std::move(click));
          }
        }
        if (--merge->left > 0) {
          return;
        }
        all = std::move(merge->clicks);
        error = merge->error;
      }
      if (!error.ok()) {
        merge->done(error.code() == absl::StatusCode::kInvalidArgument
                        ? error
                        : absl::UnavailableError(
                              absl::StrCat("verdict store unavailable: ", error.message())));
      } else {
        std::sort(all.begin(), all.end(), [](const ClickRecord& a, const ClickRecord& b) {
          return a.requested_at != b.requested_at ? a.requested_at > b.requested_at : a.id > b.id;
        });
        if (static_cast<int>(all.size()) > merge->limit) {
          all.resize(merge->limit);
        }
        merge->done(std::move(all));
      }
      EndStoreRead();
    });
  }
}

void Engine::Usage(UsageQuery query, UsageCallback done) {
  if (absl::Status may = MayRead("usage", query.reader, query.caller, query.team); !may.ok()) {
    done(std::move(may));
    return;
  }
  for (const auto* t : {&query.since, &query.until}) {
    if (!t->ok()) {
      done(t->status());
      return;
    }
  }
  const absl::Time now = clock_.Now();
  const absl::Time since = query.since->value_or(SpendTracker::MonthStart(now));
  absl::Time until = query.until->value_or(absl::InfiniteFuture());
  if (since >= until) {
    done(absl::InvalidArgumentError("since must be before until"));
    return;
  }
  if (until == absl::InfiniteFuture()) {
    until = now + absl::Seconds(1);
  }
  BeginStoreRead();
  // Read once the pending counters are written, so the answer includes every check made
  // before; chained, since the store does not order a read after a write issued before it.
  // A team's usage is read for every caller and cut to the team's (callers x days rows).
  usage_.Flush([this, caller = std::move(query.caller), team = std::move(query.team), since, until,
                done = std::move(done)]() mutable {
    std::string asked = caller;
    store_.Usage(std::move(caller), since, until,
                 [this, asked = std::move(asked), team = std::move(team),
                  done = std::move(done)](absl::StatusOr<std::vector<DailyUsage>> days) {
                   if (days.ok()) {
                     // Budgets and the allowance as the store counts them, so that every
                     // process sharing it reports the same.
                     SyncSpendThen([this, asked, team, days = *std::move(days),
                                    done = std::move(done)]() mutable {
                       done(MakeUsageReport(asked, team, std::move(days)));
                       EndStoreRead();
                     });
                     return;
                   }
                   done(absl::UnavailableError(
                       absl::StrCat("verdict store unavailable: ", days.status().message())));
                   EndStoreRead();
                 });
  });
}

void Engine::SyncSpendThen(std::function<void()> then) {
  const absl::Time now = clock_.Now();
  const absl::Time month = SpendTracker::MonthStart(now);
  const absl::Time period = SpendTracker::Period(now, options_.allowance.reset_day).first;
  store_.ClicksSince(month, [this, period, then = std::move(then)](
                                absl::StatusOr<VerdictStore::ClickCounts> month_clicks) mutable {
    if (month_clicks.ok()) {
      for (const auto& [caller, clicks] : *month_clicks) {
        spend_.Observe(caller, clicks);
      }
      // Every team's callers now include every process's clicks.
      spend_.ForgetTeamCounts();
    }
    store_.ClicksSince(period, [this, then = std::move(then)](
                                   absl::StatusOr<VerdictStore::ClickCounts> period_clicks) {
      if (period_clicks.ok()) {
        int64_t total = 0;
        for (const auto& [caller, clicks] : *period_clicks) {
          total += clicks;
        }
        spend_.ObservePeriod(total);
      }
      then();
    });
  });
}

UsageReport Engine::MakeUsageReport(const std::string& caller, const std::string& team,
                                    std::vector<DailyUsage> days) {
  UsageReport report;
  std::map<std::string, TeamAccount> teams;
  absl::flat_hash_map<std::string, std::string> team_of;
  {
    absl::MutexLock lock(&budgets_mu_);
    teams = teams_;
    team_of = team_of_caller_;
  }
  auto team_of_caller = [&team_of](const std::string& name) {
    auto it = team_of.find(name);
    return it == team_of.end() ? std::string() : it->second;
  };
  // Rows arrive sorted by caller, then day.
  for (DailyUsage& day : days) {
    if (!team.empty() && team_of_caller(day.caller) != team) {
      continue;
    }
    if (report.callers.empty() || report.callers.back().caller != day.caller) {
      report.callers.push_back(CallerUsageReport{day.caller, {}, {}, std::nullopt, ""});
    }
    CallerUsageReport& usage = report.callers.back();
    usage.total += day.counts;
    usage.days.push_back(std::move(day));
  }
  if (!caller.empty() && report.callers.empty()) {
    report.callers.push_back(CallerUsageReport{caller, {}, {}, std::nullopt, ""});
  }
  if (auto it = teams.find(team); !team.empty() && it != teams.end()) {
    // Every caller of the team asked for, also those without usage in the window.
    for (const std::string& member : it->second.callers) {
      auto at = std::lower_bound(
          report.callers.begin(), report.callers.end(), member,
          [](const CallerUsageReport& r, const std::string& name) { return r.caller < name; });
      if (at == report.callers.end() || at->caller != member) {
        report.callers.insert(at, CallerUsageReport{member, {}, {}, std::nullopt, ""});
      }
    }
  }
  std::map<std::string, TeamUsageReport> by_team;
  for (CallerUsageReport& usage : report.callers) {
    usage.team = team_of_caller(usage.caller);
    usage.budget = BudgetOf(usage.caller);
    if (usage.team.empty()) {
      continue;
    }
    TeamUsageReport& t = by_team[usage.team];
    t.team = usage.team;
    t.total += usage.total;
    t.callers.push_back(usage.caller);  // report.callers is sorted
  }
  for (auto& [name, t] : by_team) {
    if (auto it = teams.find(name); it != teams.end()) {
      t.budget = TeamBudgetOf(it->second);
    } else {
      t.budget.team = name;
    }
    report.teams.push_back(std::move(t));
  }
  report.allowance = spend_.Allowance();
  return report;
}

TeamBudgetStatus Engine::TeamBudgetOf(const TeamAccount& team) {
  TeamBudgetStatus status;
  status.team = team.name;
  status.monthly_budget = team.monthly_budget;
  status.spent = spend_.TeamSpentThisMonth(team.name, team.callers);
  status.left =
      team.monthly_budget > 0 ? std::max<int64_t>(0, team.monthly_budget - status.spent) : 0;
  return status;
}

void Engine::SetTeams(std::vector<TeamAccount> teams) {
  std::map<std::string, TeamAccount> by_name = TeamsByName(std::move(teams));
  absl::flat_hash_map<std::string, std::string> team_of = TeamOfCaller(by_name);
  {
    absl::MutexLock lock(&budgets_mu_);
    teams_ = std::move(by_name);
    team_of_caller_ = std::move(team_of);
  }
  // A team's count from the store was of its old callers.
  spend_.ForgetTeamCounts();
}

std::vector<TeamBudgetStatus> Engine::TeamBudgets() {
  std::map<std::string, TeamAccount> teams;
  {
    absl::MutexLock lock(&budgets_mu_);
    teams = teams_;
  }
  std::vector<TeamBudgetStatus> out;
  out.reserve(teams.size());
  for (const auto& [name, team] : teams) {
    out.push_back(TeamBudgetOf(team));
  }
  return out;
}

std::string Engine::TeamOf(const std::string& caller) {
  absl::MutexLock lock(&budgets_mu_);
  auto it = team_of_caller_.find(caller);
  return it == team_of_caller_.end() ? std::string() : it->second;
}

std::optional<BudgetStatus> Engine::BudgetOf(const std::string& caller) {
  int64_t budget = 0;
  {
    absl::MutexLock lock(&budgets_mu_);
    auto it = budget_by_caller_.find(caller);
    if (it != budget_by_caller_.end()) {
      budget = it->second;
    }
  }
  if (budget <= 0) {
    return std::nullopt;
  }
  return BudgetStatus{caller, budget, std::max<int64_t>(0, budget - spend_.SpentThisMonth(caller))};
}

void Engine::SetMonthlyBudgets(std::vector<std::pair<std::string, int64_t>> monthly_budgets) {
  absl::flat_hash_map<std::string, int64_t> by_caller = BudgetByCaller(monthly_budgets);
  absl::MutexLock lock(&budgets_mu_);
  monthly_budgets_ = std::move(monthly_budgets);
  budget_by_caller_ = std::move(by_caller);
}

void Engine::OnTokenReplaced() {
  absl::MutexLock lock(&mu_);
  token_rejected_ = false;
  ++token_generation_;
}

std::vector<BudgetStatus> Engine::Budgets() {
  std::vector<std::pair<std::string, int64_t>> monthly_budgets;
  {
    absl::MutexLock lock(&budgets_mu_);
    monthly_budgets = monthly_budgets_;
  }
  std::vector<BudgetStatus> budgets;
  for (const auto& [caller, budget] : monthly_budgets) {
    if (budget > 0) {
      budgets.push_back(BudgetStatus{caller, budget,
                                     std::max<int64_t>(0, budget - spend_.SpentThisMonth(caller))});
    }
  }
  return budgets;
}

}  // namespace verdictd
