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

}  // namespace

Engine::Engine(EngineOptions options, VerdictStore& store, ClickPatrolClient& client,
               const Clock& clock)
    : options_(std::move(options)), store_(store), client_(client), clock_(clock) {}

Engine::~Engine() { WaitIdle(); }

void Engine::WaitIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](absl::flat_hash_map<std::string, Flight>* flights) { return flights->empty(); },
      &flights_));
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

  absl::StatusOr<std::optional<Verdict>> latest = store_.LatestFor(
      canonical,
      by_user_agent ? std::optional<absl::string_view>(request.user_agent) : std::nullopt);
  if (!latest.ok()) {
    // Without the store we can neither answer from it nor record a click.
    done(absl::UnavailableError(
        absl::StrCat("verdict store unavailable: ", latest.status().message())));
    return;
  }
  const absl::Time now = clock_.Now();
  if (latest->has_value()) {
    const Verdict& stored = **latest;
    const absl::Duration limit =
        options_.freshness.LimitFor(stored.assessment.score, request.max_age);
    if (IsFresh(now, stored.checked_at, limit)) {
      done(CheckResult{stored, Source::kCache, /*click_spent=*/false});
      return;
    }
  }
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

  std::string key = CacheKey(options_.cache_key, canonical, request.user_agent);
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = flights_.try_emplace(key);
    if (!inserted) {
      it->second.waiters.push_back(Waiter{std::move(done)});
      return;
    }
    Flight& flight = it->second;
    flight.ip = canonical;
    flight.user_agent = request.user_agent;
    flight.caller = request.caller;
    flight.stale_candidate = std::move(*latest);
    flight.leader = std::move(done);
  }
  StartFlight(std::move(key), canonical, std::move(request.user_agent), std::move(request.caller));
}

void Engine::StartFlight(std::string key, std::string ip, std::string user_agent,
                         std::string caller) {
  // The ledger row is durable before the request leaves: a crash after this point still
  // counts the click as spent.
  store_.BeginClick(caller, ip, clock_.Now(),
                    [this, key, ip, user_agent](absl::StatusOr<int64_t> click_id) mutable {
                      if (!click_id.ok()) {
                        spdlog::error("click ledger write failed, nothing sent for {}: {}", ip,
                                      click_id.status().message());
                        Resolve(key,
                                absl::UnavailableError(
                                    absl::StrCat("cannot record the click, so nothing was sent: ",
                                                 click_id.status().message())),
                                /*charged=*/false);
                        return;
                      }
                      client_.Fetch(std::move(ip), std::move(user_agent),
                                    [this, key, id = *click_id](FetchOutcome outcome) {
                                      OnFetched(key, id, std::move(outcome));
                                    });
                    });
}

void Engine::OnFetched(const std::string& key, int64_t click_id, FetchOutcome outcome) {
  std::string ip;
  std::string user_agent;
  std::string caller;
  {
    absl::MutexLock lock(&mu_);
    const Flight& flight = flights_.at(key);
    ip = flight.ip;
    user_agent = flight.user_agent;
    caller = flight.caller;
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
  if (!status.ok() && status.code() == absl::StatusCode::kInternal) {
    // Undocumented answers are logged in short so an operator can see what ClickPatrol said.
    spdlog::warn("ClickPatrol answer for {} was not a verdict; body starts: {}", ip,
                 absl::CHexEscape(absl::string_view(completion.raw_body).substr(0, 200)));
  }

  std::optional<Verdict> verdict = completion.verdict;
  const bool charged = completion.outcome != ClickOutcome::kNotSent;
  store_.CompleteClick(
      click_id, std::move(completion),
      [this, key, status, charged, verdict = std::move(verdict)](absl::Status stored) mutable {
        if (!status.ok()) {
          if (!stored.ok()) {
            spdlog::error("could not complete click ledger row: {}", stored.message());
          }
          Resolve(key, status, charged);
          return;
        }
        if (!stored.ok()) {
          // A verdict is durable before anyone sees it: auditors must find what callers got.
          spdlog::error("verdict for {} could not be stored: {}", verdict->ip, stored.message());
          Resolve(key,
                  absl::UnavailableError(
                      absl::StrCat("the verdict could not be stored: ", stored.message())),
                  charged);
          return;
        }
        Resolve(key, std::move(*verdict), charged);
      });
}

void Engine::Resolve(const std::string& key, absl::StatusOr<Verdict> result, bool charged) {
  Flight flight;
  {
    absl::MutexLock lock(&mu_);
    auto it = flights_.find(key);
    flight = std::move(it->second);
    flights_.erase(it);
  }
  if (result.ok()) {
    flight.leader(CheckResult{*result, Source::kUpstream, /*click_spent=*/charged});
    for (Waiter& waiter : flight.waiters) {
      waiter.done(CheckResult{*result, Source::kUpstream, /*click_spent=*/false});
    }
    return;
  }
  const absl::Duration window = options_.freshness.stale_if_error;
  if (flight.stale_candidate.has_value() &&
      IsFresh(clock_.Now(), flight.stale_candidate->checked_at, window)) {
    flight.leader(CheckResult{*flight.stale_candidate, Source::kStale, /*click_spent=*/charged});
    for (Waiter& waiter : flight.waiters) {
      waiter.done(CheckResult{*flight.stale_candidate, Source::kStale, /*click_spent=*/false});
    }
    return;
  }
  flight.leader(result.status());
  for (Waiter& waiter : flight.waiters) {
    waiter.done(result.status());
  }
}

}  // namespace verdictd
