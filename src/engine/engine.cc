#include "engine/engine.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/ip.h"
#include "common/logging.h"

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

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(EngineOptions options, VerdictStore& store,
                                                       ClickPatrolClient& client,
                                                       const Clock& clock, Scheduler& scheduler,
                                                       EngineObserver* observer) {
  const absl::Time now = clock.Now();
  absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> month =
      store.ClicksSince(SpendTracker::MonthStart(now));
  if (!month.ok()) {
    return month.status();
  }
  absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> period =
      store.ClicksSince(SpendTracker::Period(now, options.allowance.reset_day).first);
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
  if (options_.history_retention > absl::ZeroDuration()) {
    SchedulePrune(absl::ZeroDuration());
  }
}

Engine::~Engine() {
  WaitIdle();
  {
    absl::MutexLock lock(&lifeline_->mu);
    lifeline_->alive = false;
  }
  usage_.Flush();
  store_.Flush();
}

void Engine::WaitIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](absl::flat_hash_map<std::string, Flight>* flights) { return flights->empty(); },
      &flights_));
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
    // Not under the lifeline lock: a store may answer on this thread.
    store->PruneBefore(cutoff, batch, [this, life, cutoff, batch](absl::StatusOr<int64_t> deleted) {
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
        spdlog::info("retention: pruned {} rows older than {}", *deleted, absl::FormatTime(cutoff));
      }
      // A full batch means more is waiting: continue soon, in small steps, so writers and
      // readers are never held up for long.
      SchedulePrune(*deleted >= batch ? absl::Milliseconds(10) : options_.prune_interval);
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
  absl::StatusOr<IpAddress> ip = ParseIp(request.ip);
  if (!ip.ok()) {
    done(ip.status());
    return;
  }
  const std::string& canonical = ip->canonical();
  const bool by_user_agent = options_.cache_key == CacheKeyMode::kIpUserAgent;
  std::string key = CacheKey(options_.cache_key, canonical, request.user_agent);

  absl::StatusOr<std::optional<Verdict>> latest = hot_.Get(key);
  if (!latest->has_value()) {
    latest = store_.LatestFor(canonical, by_user_agent
                                             ? std::optional<absl::string_view>(request.user_agent)
                                             : std::nullopt);
    if (!latest.ok()) {
      // Without the store we can neither answer from it nor record a click.
      usage_.Record(request.caller, /*cache_hit=*/false);
      done(absl::UnavailableError(
          absl::StrCat("verdict store unavailable: ", latest.status().message())));
      return;
    }
    if (latest->has_value()) {
      hot_.Put(key, **latest);
    }
  }
  const absl::Time now = clock_.Now();
  if (latest->has_value()) {
    const Verdict& stored = **latest;
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
  if (!options_.allow_non_public && !ip->IsPublic()) {
    done(absl::FailedPreconditionError(
        absl::StrCat(canonical,
                     " is not a public address (private, loopback, link-local, CGNAT, multicast, "
                     "reserved or documentation); it is never sent to ClickPatrol")));
    return;
  }

  absl::Status admitted;
  std::optional<Verdict> raced;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    if (it != flights_.end()) {
      // Joining costs nothing, so neither budgets nor the breaker apply.
      it->second.waiters.push_back(Waiter{std::move(done)});
      if (observer_ != nullptr) {
        observer_->OnWaiterJoined();
      }
      return;
    }
    // The flight for this key may have finished between the lookup above and this lock: it
    // fills the hot cache before it leaves `flights_`, so look there again rather than paying
    // for a second request.
    if (std::optional<Verdict> cached = hot_.Get(key);
        cached.has_value() &&
        (!latest->has_value() || cached->checked_at > (*latest)->checked_at) &&
        IsFresh(clock_.Now(), cached->checked_at,
                options_.freshness.LimitFor(cached->assessment.score, request.max_age))) {
      raced = std::move(cached);
    } else {
      // Admission happens under the lock so that nobody joins a flight that is then refused.
      admitted = Admit(request);
    }
    if (admitted.ok() && !raced.has_value()) {
      Flight& flight = flights_[key];
      flight.ip = canonical;
      flight.user_agent = std::move(request.user_agent);
      flight.caller = std::move(request.caller);
      flight.stale_candidate = *latest;
      flight.leader = std::move(done);
    }
  }
  if (raced.has_value()) {
    Answer(done, CheckResult{*std::move(raced), Source::kCache, /*click_spent=*/false});
    return;
  }
  if (!admitted.ok()) {
    FailOrStale(*latest, std::move(admitted), done);
    return;
  }
  if (observer_ != nullptr) {
    observer_->OnFlightStarted();
  }
  StartAttempt(std::move(key));
}

absl::Status Engine::Admit(const CheckRequest& request) {
  if (!spend_.AllowUnderAllowance()) {
    const AllowanceStatus allowance = spend_.Allowance();
    return absl::ResourceExhaustedError(absl::StrCat(
        "the ClickPatrol click allowance is exhausted until ",
        absl::FormatTime("%Y-%m-%d %H:%M UTC", allowance.period_end, absl::UTCTimeZone())));
  }
  if (!spend_.TryReserve(request.caller, request.monthly_budget)) {
    return absl::ResourceExhaustedError(absl::StrCat("caller ", request.caller,
                                                     " has spent its monthly budget of ",
                                                     request.monthly_budget, " clicks"));
  }
  if (!breaker_.Allow()) {
    spend_.Refund(request.caller);
    return absl::UnavailableError(
        "ClickPatrol is failing; requests are paused for a while (circuit breaker open)");
  }
  return absl::OkStatus();
}

void Engine::StartAttempt(std::string key) {
  if (options_.max_upstream_in_flight > 0) {
    absl::MutexLock lock(&slots_mu_);
    if (slots_in_use_ >= options_.max_upstream_in_flight) {
      slot_queue_.push_back(std::move(key));
      return;
    }
    ++slots_in_use_;
  }
  SendAttempt(std::move(key));
}

std::optional<std::string> Engine::PassSlot() {
  if (options_.max_upstream_in_flight <= 0) {
    return std::nullopt;
  }
  absl::MutexLock lock(&slots_mu_);
  if (slot_queue_.empty()) {
    --slots_in_use_;
    return std::nullopt;
  }
  std::string next = std::move(slot_queue_.front());
  slot_queue_.pop_front();
  return next;
}

void Engine::SendAttempt(std::string key) {
  std::string ip;
  std::string caller;
  {
    absl::MutexLock lock(&mu_);
    Flight& flight = flights_.at(key);
    ++flight.attempts;
    ip = flight.ip;
    caller = flight.caller;
  }
  // The ledger row is durable before the request leaves: a crash after this point still
  // counts the click as spent.
  store_.BeginClick(caller, ip, clock_.Now(), [this, key](absl::StatusOr<int64_t> click_id) {
    if (!click_id.ok()) {
      std::string caller;
      {
        absl::MutexLock lock(&mu_);
        caller = flights_.at(key).caller;
      }
      spdlog::error("click ledger write failed, nothing sent: {}", click_id.status().message());
      if (std::optional<std::string> next = PassSlot()) {
        SendAttempt(*std::move(next));
      }
      spend_.Refund(caller);
      breaker_.Cancel();
      Resolve(key,
              absl::UnavailableError(absl::StrCat("cannot record the click, so nothing was sent: ",
                                                  click_id.status().message())),
              /*charged=*/false);
      return;
    }
    std::string ip;
    std::string user_agent;
    {
      absl::MutexLock lock(&mu_);
      const Flight& flight = flights_.at(key);
      ip = flight.ip;
      user_agent = flight.user_agent;
    }
    client_.Fetch(std::move(ip), std::move(user_agent),
                  [this, key, id = *click_id](FetchOutcome outcome) {
                    OnFetched(key, id, std::move(outcome));
                  });
  });
}

void Engine::OnFetched(const std::string& key, int64_t click_id, FetchOutcome outcome) {
  // The request is over: its slot goes to the next queued miss, which is started only once this
  // completion is queued to the store, so that its ledger row is written after this one is
  // completed. (Taken now, while this flight still exists: once the completion is queued, the
  // flight may resolve and the engine be destroyed; a queued miss keeps the engine alive.)
  std::optional<std::string> next = PassSlot();
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
  if (status.ok()) {
    breaker_.RecordSuccess();
    spend_.MarkUpstreamAvailable();
  } else if (status.code() == absl::StatusCode::kResourceExhausted) {
    spend_.MarkUpstreamExhausted();
    breaker_.RecordSuccess();  // ClickPatrol is healthy; it just will not serve us
  } else if (!retry) {
    if (CountsAgainstBreaker(status)) {
      breaker_.RecordFailure();
    } else {
      breaker_.RecordSuccess();
    }
  }
  if (not_sent && !retry) {
    spend_.Refund(caller);
  }

  std::optional<Verdict> verdict = completion.verdict;
  const bool charged = !not_sent;
  store_.CompleteClick(
      click_id, std::move(completion),
      [this, key, status, charged, retry, attempts,
       verdict = std::move(verdict)](absl::Status stored) mutable {
        if (!stored.ok()) {
          spdlog::error("could not complete click ledger row: {}", stored.message());
        }
        if (retry) {
          // Never sent, so never billed: try again after a backoff.
          const absl::Duration backoff = options_.retry_backoff * (1 << (attempts - 1));
          scheduler_.RunAfter(backoff, [this, key] { StartAttempt(key); });
          return;
        }
        if (!status.ok()) {
          Resolve(key, status, charged);
          return;
        }
        if (!stored.ok()) {
          // A verdict is durable before anyone sees it: auditors must find what callers got.
          Resolve(key,
                  absl::UnavailableError(
                      absl::StrCat("the verdict could not be stored: ", stored.message())),
                  charged);
          return;
        }
        hot_.Put(key, *verdict);
        Resolve(key, std::move(*verdict), charged);
      });
  if (next.has_value()) {
    SendAttempt(*std::move(next));
  }
}

void Engine::Resolve(const std::string& key, absl::StatusOr<Verdict> result, bool charged) {
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
  if (result.ok()) {
    Answer(flight.leader, CheckResult{*result, Source::kUpstream, /*click_spent=*/charged});
    for (Waiter& waiter : flight.waiters) {
      Answer(waiter.done, CheckResult{*result, Source::kUpstream, /*click_spent=*/false});
    }
    return;
  }
  const absl::Duration window = options_.freshness.stale_if_error;
  if (flight.stale_candidate.has_value() &&
      IsFresh(clock_.Now(), flight.stale_candidate->checked_at, window)) {
    Answer(flight.leader,
           CheckResult{*flight.stale_candidate, Source::kStale, /*click_spent=*/charged});
    for (Waiter& waiter : flight.waiters) {
      Answer(waiter.done,
             CheckResult{*flight.stale_candidate, Source::kStale, /*click_spent=*/false});
    }
    return;
  }
  Answer(flight.leader, result.status());
  for (Waiter& waiter : flight.waiters) {
    Answer(waiter.done, result.status());
  }
}

absl::StatusOr<std::vector<HistoryEntry>> Engine::History(const HistoryQuery& query) {
  return store_.History(query);
}

absl::StatusOr<std::vector<DailyUsage>> Engine::Usage(absl::string_view caller, absl::Time since,
                                                      absl::Time until) {
  usage_.Flush();
  store_.Flush();
  return store_.Usage(caller, since, until);
}

}  // namespace verdictd
