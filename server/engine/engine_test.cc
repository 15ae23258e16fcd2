#include "server/engine/engine.h"

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/engine/scheduler.h"

namespace verdictd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// An in-memory store whose writes complete immediately, recording the order of operations.
// Unlike a real store it answers inline, on the calling thread, so tests stay deterministic
// (the engine relies on neither behaviour). With `defer_reads`, LatestFor answers only when the
// test calls RunReads, as a store thread would later: the window a real read opens.
class FakeStore : public VerdictStore {
 public:
  void LatestFor(std::string ip, std::optional<std::string> user_agent,
                 ReadCallback<std::optional<Verdict>> done) override {
    auto read = [this, ip = std::move(ip), user_agent = std::move(user_agent),
                 done = std::move(done)] {
      absl::StatusOr<std::optional<Verdict>> result;
      {
        absl::MutexLock lock(&mu_);
        ++reads;
        if (read_error.ok()) {
          result = Latest(ip, user_agent);
        } else {
          result = read_error;
        }
      }
      done(std::move(result));
    };
    {
      absl::MutexLock lock(&mu_);
      if (defer_reads) {
        deferred_reads.push_back(std::move(read));
        return;
      }
    }
    read();
  }

  // Answers the deferred reads, oldest first.
  void RunReads() {
    std::deque<std::function<void()>> ready;
    {
      absl::MutexLock lock(&mu_);
      ready.swap(deferred_reads);
    }
    for (auto& read : ready) {
      read();
    }
  }

  void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                  ClickCallback done) override {
    absl::StatusOr<int64_t> id;
    {
      absl::MutexLock lock(&mu_);
      events.push_back("begin " + ip);
      if (!begin_error.ok()) {
        id = begin_error;
      } else {
        clicks.push_back({caller, ip, ClickOutcome::kPending});
        id = static_cast<int64_t>(clicks.size());
      }
    }
    done(id);
  }

  // As BeginClick, unless the key is in `held`, a verdict newer than claim.newer_than is
  // stored (kVerdictLanded; `lands_on_claim` stores one for its IP just before the check, as
  // another process's flight landing between the engine's read and its claim would),  (another
  // process's flight: kFlightHeld) or the caller is in `cluster_spent` (its budget spent elsewhere:
  // kBudgetSpent with that count).
  void ClaimClick(ClickClaim claim, ReadCallback<ClaimResult> done) override {
    ClaimResult result;
    {
      absl::MutexLock lock(&mu_);
      claims.push_back(claim);
      if (auto lands = lands_on_claim.find(claim.ip); lands != lands_on_claim.end()) {
        history.push_back(lands->second);
        lands_on_claim.erase(lands);
      }
      std::optional<Verdict> latest = Latest(claim.ip, claim.user_agent);
      if (auto held_it = held.find(claim.flight_key); held_it != held.end()) {
        events.push_back("held " + claim.ip);
        result.kind = ClaimResult::Kind::kFlightHeld;
        result.lease_left = held_it->second;
      } else if (claim.newer_than.has_value() && latest.has_value() &&
                 latest->checked_at > *claim.newer_than) {
        events.push_back("landed " + claim.ip);
        result.kind = ClaimResult::Kind::kVerdictLanded;
        result.landed = latest;
      } else if (auto spent = cluster_spent.find(claim.caller); spent != cluster_spent.end()) {
        events.push_back("spent " + claim.ip);
        result.kind = ClaimResult::Kind::kBudgetSpent;
        result.month_clicks = spent->second;
      } else if (auto team = team_cluster_spent.find(claim.team);
                 claim.team_monthly_budget > 0 && team != team_cluster_spent.end()) {
        events.push_back("team spent " + claim.ip);
        result.kind = ClaimResult::Kind::kTeamBudgetSpent;
        result.team_month_clicks = team->second;
      } else if (claim.allowance_probe_interval > absl::ZeroDuration() &&
                 claim.requested_at < allowance_mark.exhausted_until) {
        if (claim.requested_at < allowance_mark.next_probe) {
          events.push_back("allowance " + claim.ip);
          result.kind = ClaimResult::Kind::kAllowanceExhausted;
          result.allowance = allowance_mark;
        } else {
          allowance_mark.next_probe = claim.requested_at + claim.allowance_probe_interval;
        }
      }
    }
    if (result.kind != ClaimResult::Kind::kBegun) {
      done(result);
      return;
    }
    BeginClick(claim.caller, claim.ip, claim.requested_at,
               [done = std::move(done)](absl::StatusOr<int64_t> id) {
                 if (!id.ok()) {
                   done(id.status());
                   return;
                 }
                 ClaimResult begun;
                 begun.click_id = *id;
                 done(begun);
               });
  }
  void SetAllowanceMark(AllowanceMark mark, DoneCallback done) override {
    {
      absl::MutexLock lock(&mu_);
      allowance_mark = mark;
      ++allowance_marks_set;
    }
    done(absl::OkStatus());
  }
  void SetFlightListener(FlightListener* l) override {
    absl::MutexLock lock(&mu_);
    listener = l;
  }
  void TryLease(std::string name, std::string owner, absl::Duration lease,
                ReadCallback<bool> done) override {
    bool held = false;
    {
      absl::MutexLock lock(&mu_);
      leases_asked.push_back(name + " " + owner);
      held = lease_held;
    }
    done(held);
  }
  // Another process's flight for `key` ended with `verdict` (nullopt: without one).
  void EndRemoteFlight(const std::string& key, std::optional<Verdict> verdict) {
    FlightListener* l = nullptr;
    {
      absl::MutexLock lock(&mu_);
      held.erase(key);
      if (verdict.has_value()) {
        history.push_back(*verdict);
      }
      l = listener;
    }
    if (l != nullptr) {
      l->OnFlightEnded(key);
    }
  }

  void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) override {
    absl::Status error;
    {
      absl::MutexLock lock(&mu_);
      error = complete_error;
      if (!error.ok()) {
        events.push_back("complete failed " + clicks.at(click_id - 1).ip);
      }
    }
    if (!error.ok()) {
      done(error);
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      events.push_back("complete " + clicks.at(click_id - 1).ip);
      clicks.at(click_id - 1).outcome = completion.outcome;
      if (completion.verdict.has_value()) {
        history.push_back(*completion.verdict);
      }
    }
    done(absl::OkStatus());
  }

  void Flush() override {}

  void History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) override {
    done(std::vector<HistoryEntry>());
  }
  // The clicks of `ledger` (kept newest first) that the query selects.
  void Clicks(ClickQuery query, ReadCallback<std::vector<ClickRecord>> done) override {
    std::vector<ClickRecord> page;
    {
      absl::MutexLock lock(&mu_);
      click_queries.push_back(query);
      for (const ClickRecord& click : ledger) {
        const bool after =
            !query.after.has_value() || click.requested_at < query.after->requested_at ||
            (click.requested_at == query.after->requested_at && click.id < query.after->id);
        if (after && (query.caller.empty() || click.caller == query.caller) &&
            static_cast<int>(page.size()) < query.limit) {
          page.push_back(click);
        }
      }
    }
    done(std::move(page));
  }
  void AddUsage(std::vector<UsageDelta> deltas, DoneCallback done) override {
    {
      absl::MutexLock lock(&mu_);
      for (UsageDelta& d : deltas) {
        usage.push_back(std::move(d));
      }
    }
    done(absl::OkStatus());
  }
  void Usage(std::string caller, absl::Time since, absl::Time until,
             ReadCallback<std::vector<DailyUsage>> done) override {
    {
      absl::MutexLock lock(&mu_);
      usage_reads.push_back({caller, since, until});
    }
    done(std::vector<DailyUsage>(daily_usage));
  }
  void ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) override {
    ClickCounts clicks;
    {
      absl::MutexLock lock(&mu_);
      clicks = initial_clicks;
    }
    done(std::move(clicks));
  }
  void PruneBefore(absl::Time cutoff, int max_rows,
                   std::function<void(absl::StatusOr<int64_t>)> done) override {
    {
      absl::MutexLock lock(&mu_);
      prune_cutoffs.push_back(cutoff);
    }
    done(int64_t{0});
  }
  void Secret(std::string name, size_t bytes, ReadCallback<std::string> done) override {
    done(std::string(bytes, 'k'));
  }
  void Ping(DoneCallback done) override { done(absl::OkStatus()); }

  struct Click {
    std::string caller;
    std::string ip;
    ClickOutcome outcome;
  };
  struct UsageRead {
    std::string caller;
    absl::Time since;
    absl::Time until;
  };

  std::optional<Verdict> Latest(const std::string& ip, const std::optional<std::string>& user_agent)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::optional<Verdict> best;
    for (const Verdict& v : history) {
      if (v.ip == ip && (!user_agent.has_value() || v.user_agent == *user_agent)) {
        if (!best.has_value() || v.checked_at >= best->checked_at) {
          best = v;
        }
      }
    }
    return best;
  }

  absl::Mutex mu_;
  std::vector<Verdict> history;
  std::map<std::string, Verdict> lands_on_claim;  // by IP; see ClaimClick
  AllowanceMark allowance_mark;                   // as the store's; see ClaimClick
  int allowance_marks_set = 0;
  std::vector<Click> clicks;
  std::vector<std::string> events;
  absl::Status read_error;
  absl::Status begin_error;
  absl::Status complete_error;
  std::vector<UsageDelta> usage;
  std::vector<std::pair<std::string, int64_t>> initial_clicks;
  std::vector<absl::Time> prune_cutoffs;
  bool defer_reads = false;
  std::deque<std::function<void()>> deferred_reads;
  int reads = 0;
  std::vector<DailyUsage> daily_usage;  // what Usage answers
  std::vector<UsageRead> usage_reads;
  absl::flat_hash_map<std::string, absl::Duration> held;  // flight key -> lease left
  absl::flat_hash_map<std::string, int64_t> cluster_spent;
  absl::flat_hash_map<std::string, int64_t> team_cluster_spent;  // team -> its count elsewhere
  std::vector<ClickRecord> ledger;                               // what Clicks reads, newest first
  std::vector<ClickQuery> click_queries;
  std::vector<ClickClaim> claims;
  FlightListener* listener = nullptr;
  bool lease_held = true;                 // what TryLease answers
  std::vector<std::string> leases_asked;  // "name owner"
};

// A client whose requests stay pending until the test answers them.
class FakeClient : public ClickPatrolClient {
 public:
  explicit FakeClient(FakeStore& store) : store_(store) {}

  void Fetch(std::string ip, std::string user_agent, Callback done) override {
    {
      absl::MutexLock lock(&store_.mu_);
      store_.events.push_back("fetch " + ip);
    }
    pending.push_back({std::move(ip), std::move(user_agent), std::move(done)});
  }

  // Answers the oldest pending request.
  void Answer(absl::StatusOr<Assessment> assessment, bool maybe_sent = true) {
    ASSERT_FALSE(pending.empty());
    Pending p = std::move(pending.front());
    pending.pop_front();
    FetchOutcome outcome;
    outcome.assessment = std::move(assessment);
    outcome.http_status = outcome.assessment.ok() ? 200 : 503;
    outcome.maybe_sent = maybe_sent;
    outcome.raw_body = "{}";
    p.done(std::move(outcome));
  }

  struct Pending {
    std::string ip;
    std::string user_agent;
    Callback done;
  };
  std::deque<Pending> pending;

 private:
  FakeStore& store_;
};

Assessment Fake() {
  Assessment a;
  a.score = Score::kFake;
  a.proxy = true;
  return a;
}

Assessment Safe() {
  Assessment a;
  a.score = Score::kSafe;
  return a;
}

class EngineTest : public ::testing::Test {
 protected:
  EngineTest() : client_(store_) {}
  // Answers reads and requests a failed test left open: the engine's destructor waits for them
  // (a failed expectation must fail the test, not hang it).
  ~EngineTest() override {
    store_.RunReads();
    for (int i = 0; i < 1000 && !client_.pending.empty(); ++i) {
      client_.Answer(absl::UnavailableError("the test ended"));
    }
    engine_.reset();
  }

  Engine& engine() {
    if (engine_ == nullptr) {
      absl::StatusOr<std::unique_ptr<Engine>> engine =
          Engine::Create(options_, store_, client_, clock_, scheduler_);
      EXPECT_TRUE(engine.ok()) << engine.status();
      engine_ = *std::move(engine);
    }
    return *engine_;
  }

  // Starts a check; the result lands in the returned slot when the engine answers.
  std::shared_ptr<std::optional<absl::StatusOr<CheckResult>>> Start(CheckRequest request) {
    auto slot = std::make_shared<std::optional<absl::StatusOr<CheckResult>>>();
    engine().Check(std::move(request),
                   [slot](absl::StatusOr<CheckResult> result) { *slot = std::move(result); });
    return slot;
  }

  static CheckRequest Request(std::string ip, std::string caller = "team-a") {
    CheckRequest r;
    r.ip = std::move(ip);
    r.caller = std::move(caller);
    return r;
  }

  EngineOptions options_;
  FakeStore store_;
  FakeClient client_;
  FakeClock clock_;
  FakeScheduler scheduler_{clock_};
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, MissAsksUpstreamAndStoresThenHitIsServedFromStore) {
  auto first = Start(Request("8.8.8.8", "team-a"));
  ASSERT_EQ(client_.pending.size(), 1u);
  EXPECT_FALSE(first->has_value());
  client_.Answer(Fake());
  ASSERT_TRUE(first->has_value());
  ASSERT_TRUE((*first)->ok());
  const CheckResult& miss = ***first;
  EXPECT_EQ(miss.source, Source::kUpstream);
  EXPECT_TRUE(miss.click_spent);
  EXPECT_EQ(miss.verdict.ip, "8.8.8.8");
  EXPECT_EQ(miss.verdict.assessment, Fake());
  EXPECT_EQ(miss.verdict.caller, "team-a");
  EXPECT_EQ(miss.verdict.checked_at, clock_.Now());

  clock_.Advance(absl::Hours(23));
  auto second = Start(Request("8.8.8.8", "team-b"));
  ASSERT_TRUE(second->has_value());
  ASSERT_TRUE((*second)->ok());
  EXPECT_EQ((**second)->source, Source::kCache);
  EXPECT_FALSE((**second)->click_spent);
  EXPECT_EQ((**second)->verdict.caller, "team-a");
  EXPECT_TRUE(client_.pending.empty());
  ASSERT_EQ(store_.clicks.size(), 1u);
  EXPECT_EQ(store_.clicks[0].caller, "team-a");
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kVerdict);
}

TEST_F(EngineTest, LedgerRowIsWrittenBeforeTheRequestLeaves) {
  Start(Request("8.8.4.4"));
  client_.Answer(Safe());
  EXPECT_THAT(store_.events, ElementsAre("begin 8.8.4.4", "fetch 8.8.4.4", "complete 8.8.4.4"));
}

// With an upstream bound, a miss gets its ledger row only when a slot is free: a crash can leave
// at most `max_upstream_in_flight` rows pending, not one per queued miss.
TEST_F(EngineTest, LedgerRowWaitsForAnUpstreamSlot) {
  options_.max_upstream_in_flight = 2;
  auto a = Start(Request("11.0.0.1"));
  auto b = Start(Request("11.0.0.2"));
  auto c = Start(Request("11.0.0.3"));
  auto d = Start(Request("11.0.0.4"));
  EXPECT_EQ(client_.pending.size(), 2u);
  EXPECT_EQ(store_.clicks.size(), 2u) << "queued misses have no ledger row yet";
  client_.Answer(Safe());  // 11.0.0.1 done; 11.0.0.3 takes its slot
  EXPECT_EQ(client_.pending.size(), 2u);
  EXPECT_EQ(store_.clicks.size(), 3u);
  client_.Answer(Safe());
  client_.Answer(Safe());
  client_.Answer(Safe());
  EXPECT_TRUE(client_.pending.empty());
  for (const auto& r : {a, b, c, d}) {
    ASSERT_TRUE(r->has_value());
    EXPECT_TRUE((*r)->ok());
  }
  EXPECT_THAT(
      store_.events,
      ElementsAre("begin 11.0.0.1", "fetch 11.0.0.1", "begin 11.0.0.2", "fetch 11.0.0.2",
                  "complete 11.0.0.1", "begin 11.0.0.3", "fetch 11.0.0.3", "complete 11.0.0.2",
                  "begin 11.0.0.4", "fetch 11.0.0.4", "complete 11.0.0.3", "complete 11.0.0.4"))
      << "a queued miss's ledger row is written after the completion of the one it follows";
}

// A slot is given back on every path: a failed ledger write, and an unsent request that is
// retried after a backoff (which queues for a slot again).
TEST_F(EngineTest, UpstreamSlotsAreReleasedOnFailureAndRetry) {
  options_.max_upstream_in_flight = 1;
  store_.begin_error = absl::UnavailableError("disk I/O error");
  auto refused = Start(Request("11.0.1.1"));
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kUnavailable);
  store_.begin_error = absl::OkStatus();

  auto retried = Start(Request("11.0.1.2"));
  ASSERT_EQ(client_.pending.size(), 1u) << "the failed write gave its slot back";
  auto queued = Start(Request("11.0.1.3"));
  EXPECT_EQ(client_.pending.size(), 1u);
  client_.Answer(absl::UnavailableError("connection refused"), /*maybe_sent=*/false);
  ASSERT_EQ(client_.pending.size(), 1u);
  EXPECT_EQ(client_.pending.front().ip, "11.0.1.3") << "the queued miss took the slot";
  clock_.Advance(absl::Seconds(1));
  scheduler_.RunDue();  // the retry queues behind 11.0.1.3
  EXPECT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
  ASSERT_EQ(client_.pending.size(), 1u);
  EXPECT_EQ(client_.pending.front().ip, "11.0.1.2");
  client_.Answer(Fake());
  ASSERT_TRUE(retried->has_value() && queued->has_value());
  EXPECT_TRUE((*retried)->ok());
  EXPECT_TRUE((*queued)->ok());
}

TEST_F(EngineTest, VerdictOlderThanMaxAgeIsRefreshed) {
  Start(Request("1.1.1.1"));
  client_.Answer(Safe());
  clock_.Advance(absl::Hours(24));  // age == limit: no longer fresh
  auto again = Start(Request("1.1.1.1"));
  ASSERT_EQ(client_.pending.size(), 1u);
  client_.Answer(Fake());
  ASSERT_TRUE((*again)->ok());
  EXPECT_EQ((**again)->source, Source::kUpstream);
  EXPECT_EQ((**again)->verdict.assessment.score, Score::kFake);
}

TEST_F(EngineTest, RequestMaxAgeOverridesTheDefault) {
  Start(Request("1.1.1.1"));
  client_.Answer(Safe());
  clock_.Advance(absl::Minutes(10));
  CheckRequest strict = Request("1.1.1.1");
  strict.max_age = absl::Minutes(5);
  Start(strict);
  EXPECT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());

  clock_.Advance(absl::Hours(30));
  CheckRequest lenient = Request("1.1.1.1");
  lenient.max_age = absl::Hours(48);
  auto hit = Start(lenient);
  ASSERT_TRUE((*hit)->ok());
  EXPECT_EQ((**hit)->source, Source::kCache);

  CheckRequest zero = Request("1.1.1.1");
  zero.max_age = absl::ZeroDuration();
  Start(zero);
  EXPECT_EQ(client_.pending.size(), 1u) << "max_age=0 always asks ClickPatrol";
  client_.Answer(Safe());
}

TEST_F(EngineTest, PerScoreMaxAgeApplies) {
  options_.freshness.max_age_fake = absl::Hours(1);
  Start(Request("9.9.9.9"));
  client_.Answer(Fake());
  clock_.Advance(absl::Hours(2));
  Start(Request("9.9.9.9"));
  EXPECT_EQ(client_.pending.size(), 1u);
  client_.Answer(Fake());
}

TEST_F(EngineTest, ConcurrentMissesShareOneRequestAndOneClick) {
  auto leader = Start(Request("4.4.4.4", "team-a"));
  auto follower = Start(Request("4.4.4.4", "team-b"));
  auto mapped = Start(Request("::ffff:4.4.4.4", "team-c"));
  ASSERT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
  ASSERT_TRUE((*leader)->ok());
  ASSERT_TRUE((*follower)->ok());
  ASSERT_TRUE((*mapped)->ok());
  EXPECT_TRUE((**leader)->click_spent);
  EXPECT_FALSE((**follower)->click_spent);
  EXPECT_FALSE((**mapped)->click_spent);
  EXPECT_EQ((**follower)->source, Source::kUpstream);
  EXPECT_EQ((**follower)->verdict.caller, "team-a");
  EXPECT_EQ(store_.clicks.size(), 1u);
}

TEST_F(EngineTest, UpstreamErrorIsSharedAndNotCached) {
  auto a = Start(Request("5.5.5.5"));
  auto b = Start(Request("5.5.5.5"));
  client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  ASSERT_FALSE((*a)->ok());
  EXPECT_EQ((*a)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*b)->status(), (*a)->status());
  EXPECT_THAT(store_.history, IsEmpty());
  ASSERT_EQ(store_.clicks.size(), 1u);
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kUpstreamError);

  Start(Request("5.5.5.5"));
  EXPECT_EQ(client_.pending.size(), 1u) << "an error must not be remembered";
  client_.Answer(Safe());
}

TEST_F(EngineTest, ConnectFailureIsRecordedAsNotSent) {
  options_.max_attempts = 1;
  Start(Request("5.5.5.5"));
  client_.Answer(absl::UnavailableError("could not connect"), /*maybe_sent=*/false);
  ASSERT_EQ(store_.clicks.size(), 1u);
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kNotSent);
}

TEST_F(EngineTest, StaleVerdictServedWhenUpstreamFails) {
  Start(Request("6.6.6.6"));
  client_.Answer(Fake());
  clock_.Advance(absl::Hours(48));
  auto stale = Start(Request("6.6.6.6"));
  client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  ASSERT_TRUE((*stale)->ok());
  EXPECT_EQ((**stale)->source, Source::kStale);
  EXPECT_TRUE((**stale)->click_spent) << "the failed request was still billed";
  EXPECT_EQ((**stale)->verdict.assessment, Fake());

  clock_.Advance(absl::Hours(24 * 7));
  auto too_old = Start(Request("6.6.6.6"));
  client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  EXPECT_EQ((*too_old)->status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, InvalidInputSpendsNothing) {
  for (const char* ip : {"", "1.2.3.4:80", "1.2.3.0/24", " 1.2.3.4", "fe80::1%eth0", "nope"}) {
    SCOPED_TRACE(ip);
    auto r = Start(Request(ip));
    ASSERT_TRUE(r->has_value());
    EXPECT_EQ((*r)->status().code(), absl::StatusCode::kInvalidArgument);
  }
  CheckRequest negative = Request("8.8.8.8");
  negative.max_age = absl::Seconds(-1);
  EXPECT_EQ((*Start(negative))->status().code(), absl::StatusCode::kInvalidArgument);
  CheckRequest long_ua = Request("8.8.8.8");
  long_ua.user_agent = std::string(1025, 'a');
  EXPECT_EQ((*Start(long_ua))->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_THAT(store_.clicks, IsEmpty());
}

TEST_F(EngineTest, NonPublicAddressesNeverReachUpstream) {
  for (const char* ip : {"10.0.0.1", "127.0.0.1", "192.168.1.1", "100.64.0.1", "::1", "fe80::1",
                         "2001:db8::1", "203.0.113.9"}) {
    SCOPED_TRACE(ip);
    auto r = Start(Request(ip));
    EXPECT_EQ((*r)->status().code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_TRUE(client_.pending.empty());

  options_.allow_non_public = true;
  engine_.reset();
  Start(Request("10.0.0.1"));
  EXPECT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
}

TEST_F(EngineTest, CacheOnlyNeverSpends) {
  CheckRequest look = Request("7.7.7.7");
  look.cache_only = true;
  EXPECT_EQ((*Start(look))->status().code(), absl::StatusCode::kNotFound);
  Start(Request("7.7.7.7"));
  client_.Answer(Safe());
  auto hit = Start(look);
  ASSERT_TRUE((*hit)->ok());
  EXPECT_EQ((**hit)->source, Source::kCache);
  EXPECT_EQ(store_.clicks.size(), 1u);
}

TEST_F(EngineTest, LedgerWriteFailureSendsNothing) {
  store_.begin_error = absl::UnavailableError("disk full");
  auto r = Start(Request("8.8.8.8"));
  EXPECT_EQ((*r)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(client_.pending.empty());
}

TEST_F(EngineTest, StoreReadFailureIsUnavailable) {
  store_.read_error = absl::InternalError("disk I/O error");
  auto r = Start(Request("8.8.8.8"));
  EXPECT_EQ((*r)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(client_.pending.empty());
}

TEST_F(EngineTest, IpUserAgentKeyModeKeepsVerdictsPerUserAgent) {
  options_.cache_key = CacheKeyMode::kIpUserAgent;
  CheckRequest chrome = Request("8.8.8.8");
  chrome.user_agent = "Chrome";
  CheckRequest curl = Request("8.8.8.8");
  curl.user_agent = "curl";
  Start(chrome);
  Start(curl);
  ASSERT_EQ(client_.pending.size(), 2u) << "different user agents are different keys";
  EXPECT_EQ(client_.pending[0].user_agent, "Chrome");
  client_.Answer(Safe());
  client_.Answer(Fake());
  EXPECT_EQ((**Start(chrome))->verdict.assessment.score, Score::kSafe);
  EXPECT_EQ((**Start(curl))->verdict.assessment.score, Score::kFake);
}

TEST_F(EngineTest, BudgetStopsMissesButNotHitsOrSharedAnswers) {
  CheckRequest r = Request("8.8.8.8", "team-a");
  r.monthly_budget = 2;
  Start(r);
  client_.Answer(Safe());
  r.ip = "8.8.4.4";
  Start(r);
  client_.Answer(Safe());
  r.ip = "1.1.1.1";
  auto refused = Start(r);
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string((*refused)->status().message()), ::testing::HasSubstr("budget of 2"));
  EXPECT_TRUE(client_.pending.empty());
  r.ip = "8.8.8.8";
  auto hit = Start(r);
  ASSERT_TRUE((*hit)->ok()) << "hits are served past the budget";
  // Another caller's flight may be joined: it costs nothing.
  Start(Request("9.9.9.9", "team-b"));
  r.ip = "9.9.9.9";
  auto joined = Start(r);
  client_.Answer(Safe());
  ASSERT_TRUE((*joined)->ok());
  EXPECT_FALSE((**joined)->click_spent);
  EXPECT_EQ(engine().SpentThisMonth("team-a"), 2);
}

TEST_F(EngineTest, BudgetCountsClicksAlreadyInTheLedgerAndResetsMonthly) {
  clock_.Set(absl::FromCivil(absl::CivilSecond(2026, 11, 30, 23, 0, 0), absl::UTCTimeZone()));
  store_.initial_clicks = {{"team-a", 5}};
  CheckRequest r = Request("8.8.8.8", "team-a");
  r.monthly_budget = 5;
  EXPECT_EQ((*Start(r))->status().code(), absl::StatusCode::kResourceExhausted);
  clock_.Advance(absl::Hours(2));  // December
  Start(r);
  EXPECT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
}

TEST_F(EngineTest, StaleIsServedWhenTheBudgetIsSpent) {
  Start(Request("8.8.8.8", "team-b"));
  client_.Answer(Fake());
  clock_.Advance(absl::Hours(30));
  store_.initial_clicks = {{"team-a", 1}};
  engine_.reset();
  CheckRequest r = Request("8.8.8.8", "team-a");
  r.monthly_budget = 1;
  auto stale = Start(r);
  ASSERT_TRUE((*stale)->ok());
  EXPECT_EQ((**stale)->source, Source::kStale);
  EXPECT_FALSE((**stale)->click_spent);
}

TEST_F(EngineTest, ConnectFailuresAreRetriedWithBackoffAndNotBilled) {
  auto r = Start(Request("8.8.8.8"));
  client_.Answer(absl::UnavailableError("could not connect"), /*maybe_sent=*/false);
  EXPECT_TRUE(client_.pending.empty());
  scheduler_.RunDue();
  EXPECT_TRUE(client_.pending.empty()) << "backoff not yet elapsed";
  clock_.Advance(absl::Milliseconds(100));
  scheduler_.RunDue();
  ASSERT_EQ(client_.pending.size(), 1u) << "second attempt after 100 ms";
  client_.Answer(absl::UnavailableError("could not connect"), /*maybe_sent=*/false);
  clock_.Advance(absl::Milliseconds(200));
  scheduler_.RunDue();
  ASSERT_EQ(client_.pending.size(), 1u) << "third attempt after 200 ms more";
  client_.Answer(Safe());
  ASSERT_TRUE((*r)->ok());
  EXPECT_TRUE((**r)->click_spent);
  ASSERT_EQ(store_.clicks.size(), 3u);
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kNotSent);
  EXPECT_EQ(store_.clicks[1].outcome, ClickOutcome::kNotSent);
  EXPECT_EQ(store_.clicks[2].outcome, ClickOutcome::kVerdict);
}

TEST_F(EngineTest, RequestsThatMayHaveBeenSentAreNeverRetried) {
  auto r = Start(Request("8.8.8.8"));
  client_.Answer(absl::UnavailableError("ClickPatrol timed out"), /*maybe_sent=*/true);
  clock_.Advance(absl::Seconds(10));
  scheduler_.RunDue();
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_EQ((*r)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store_.clicks.size(), 1u);
}

TEST_F(EngineTest, CircuitBreakerOpensFailsFastAndRecovers) {
  options_.breaker.failure_threshold = 3;
  options_.breaker.open_for = absl::Seconds(30);
  for (int i = 0; i < 3; ++i) {
    Start(Request(absl::StrCat("8.8.8.", i + 1)));
    client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  }
  EXPECT_EQ(engine().breaker_state(), CircuitBreaker::State::kOpen);
  auto fast = Start(Request("8.8.8.50"));
  EXPECT_EQ((*fast)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string((*fast)->status().message()), ::testing::HasSubstr("circuit breaker"));
  EXPECT_TRUE(client_.pending.empty()) << "fails fast without a request";
  const size_t clicks = store_.clicks.size();

  clock_.Advance(absl::Seconds(30));
  auto probe = Start(Request("8.8.8.51"));
  ASSERT_EQ(client_.pending.size(), 1u) << "half-open lets one probe through";
  auto blocked = Start(Request("8.8.8.52"));
  EXPECT_EQ((*blocked)->status().code(), absl::StatusCode::kUnavailable);
  client_.Answer(Safe());
  ASSERT_TRUE((*probe)->ok());
  EXPECT_EQ(engine().breaker_state(), CircuitBreaker::State::kClosed);
  Start(Request("8.8.8.53"));
  EXPECT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
  EXPECT_EQ(store_.clicks.size(), clicks + 2);
}

TEST_F(EngineTest, AllowanceExhaustionStopsSendingUntilProbeOrReset) {
  options_.allowance.exhausted_probe_interval = absl::Minutes(10);
  clock_.Set(absl::FromCivil(absl::CivilSecond(2026, 11, 27, 12, 0, 0), absl::UTCTimeZone()));
  Start(Request("8.8.8.8"));
  client_.Answer(absl::ResourceExhaustedError("ClickPatrol click allowance exhausted (HTTP 402)"));
  EXPECT_TRUE(engine().Allowance().exhausted_upstream);
  auto refused = Start(Request("8.8.4.4"));
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string((*refused)->status().message()),
              ::testing::HasSubstr("until 2026-12-01 00:00 UTC"));
  EXPECT_TRUE(client_.pending.empty());
  clock_.Advance(absl::Minutes(10));
  Start(Request("8.8.4.4"));
  EXPECT_EQ(client_.pending.size(), 1u) << "a rare probe";
  client_.Answer(Safe());
  EXPECT_FALSE(engine().Allowance().exhausted_upstream) << "the probe found it topped up";
}

TEST_F(EngineTest, AllowancePeriodFollowsTheResetDay) {
  options_.allowance.monthly_allowance = 1000;
  options_.allowance.reset_day = 15;
  clock_.Set(absl::FromCivil(absl::CivilSecond(2026, 11, 27, 12, 0, 0), absl::UTCTimeZone()));
  store_.initial_clicks = {{"a", 10}, {"b", 5}};
  AllowanceStatus a = engine().Allowance();
  EXPECT_EQ(a.period_start, absl::FromCivil(absl::CivilDay(2026, 11, 15), absl::UTCTimeZone()));
  EXPECT_EQ(a.period_end, absl::FromCivil(absl::CivilDay(2026, 12, 15), absl::UTCTimeZone()));
  EXPECT_EQ(a.clicks_used, 15);
  EXPECT_EQ(a.clicks_left, 985);
  Start(Request("8.8.8.8"));
  client_.Answer(Safe());
  EXPECT_EQ(engine().Allowance().clicks_used, 16);
  clock_.Set(absl::FromCivil(absl::CivilDay(2026, 12, 15), absl::UTCTimeZone()));
  EXPECT_EQ(engine().Allowance().clicks_used, 0) << "a new period";
}

TEST_F(EngineTest, UsageIsCountedInMemoryAndFlushedInBatches) {
  Start(Request("8.8.8.8", "a"));
  client_.Answer(Safe());
  Start(Request("8.8.8.8", "a"));
  Start(Request("8.8.8.8", "b"));
  EXPECT_TRUE(store_.usage.empty()) << "nothing written on the hot path";
  clock_.Advance(absl::Seconds(1));
  scheduler_.RunDue();
  int64_t requests = 0;
  int64_t hits = 0;
  for (const UsageDelta& d : store_.usage) {
    requests += d.requests;
    hits += d.cache_hits;
  }
  EXPECT_EQ(requests, 3);
  EXPECT_EQ(hits, 2);
}

TEST_F(EngineTest, RetentionPrunesWithTheInjectedClock) {
  options_.history_retention = absl::Hours(24 * 400);
  engine();
  scheduler_.RunDue();
  ASSERT_EQ(store_.prune_cutoffs.size(), 1u);
  EXPECT_EQ(store_.prune_cutoffs[0], clock_.Now() - absl::Hours(24 * 400));
  clock_.Advance(absl::Minutes(1));
  scheduler_.RunDue();
  ASSERT_EQ(store_.prune_cutoffs.size(), 2u);
  EXPECT_EQ(store_.prune_cutoffs[1], clock_.Now() - absl::Hours(24 * 400));
}

// --- Never send a click nobody can use -------------------------------------------------------

// Misses queued behind a failing ClickPatrol are admitted again when their turn comes: once the
// breaker opens they fail fast, with neither a ledger row nor a request, and their reservations
// are returned.
TEST_F(EngineTest, QueuedMissesAreRefusedOnceTheBreakerOpens) {
  options_.max_upstream_in_flight = 2;
  options_.breaker.failure_threshold = 2;
  std::vector<std::shared_ptr<std::optional<absl::StatusOr<CheckResult>>>> results;
  for (int i = 0; i < 6; ++i) {
    CheckRequest r = Request(absl::StrCat("11.1.0.", i + 1));
    r.monthly_budget = 100;
    results.push_back(Start(r));
  }
  EXPECT_EQ(engine().QueuedMisses(), 4u);
  client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  ASSERT_EQ(client_.pending.size(), 2u) << "one failure: the next queued miss is sent";
  client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  EXPECT_EQ(engine().breaker_state(), CircuitBreaker::State::kOpen);
  // The second failure opened the breaker: the three still queued are refused at their turn.
  EXPECT_EQ(client_.pending.size(), 1u);
  EXPECT_EQ(engine().QueuedMisses(), 0u);
  for (int i = 3; i < 6; ++i) {
    ASSERT_TRUE(results[i]->has_value()) << i;
    EXPECT_EQ((*results[i])->status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string((*results[i])->status().message()),
                ::testing::HasSubstr("circuit breaker"));
  }
  client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  EXPECT_EQ(store_.clicks.size(), 3u) << "ledger rows only for the requests sent";
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_EQ(engine().SpentThisMonth("team-a"), 3) << "the refused misses were refunded";
}

TEST_F(EngineTest, QueuedMissesAreRefusedOnceTheAllowanceIsExhausted) {
  options_.max_upstream_in_flight = 1;
  auto first = Start(Request("11.1.1.1"));
  auto second = Start(Request("11.1.1.2"));
  auto third = Start(Request("11.1.1.3"));
  client_.Answer(absl::ResourceExhaustedError("ClickPatrol click allowance exhausted (HTTP 402)"));
  EXPECT_TRUE(client_.pending.empty());
  for (const auto& r : {first, second, third}) {
    ASSERT_TRUE(r->has_value());
    EXPECT_EQ((*r)->status().code(), absl::StatusCode::kResourceExhausted);
  }
  EXPECT_THAT(std::string((*second)->status().message()),
              ::testing::HasSubstr("allowance is exhausted"));
  EXPECT_EQ(store_.clicks.size(), 1u);
}

// A rejected token stays rejected until the operator replaces it: queued and new misses fail
// fast, and one probe per interval finds out whether it works again.
TEST_F(EngineTest, RejectedTokenStopsQueuedAndNewMissesUntilAProbeSucceeds) {
  options_.max_upstream_in_flight = 1;
  options_.token_probe_interval = absl::Minutes(1);
  Start(Request("11.1.2.1"));
  auto queued = Start(Request("11.1.2.2"));
  client_.Answer(absl::FailedPreconditionError("ClickPatrol rejected the API token (HTTP 401)"));
  ASSERT_TRUE(queued->has_value());
  EXPECT_EQ((*queued)->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string((*queued)->status().message()), ::testing::HasSubstr("rejected"));
  auto fresh = Start(Request("11.1.2.3"));
  EXPECT_EQ((*fresh)->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_EQ(store_.clicks.size(), 1u);

  clock_.Advance(absl::Minutes(1));
  auto probe = Start(Request("11.1.2.4"));
  ASSERT_EQ(client_.pending.size(), 1u) << "one probe a minute";
  auto during_probe = Start(Request("11.1.2.5"));
  ASSERT_TRUE(during_probe->has_value());
  EXPECT_EQ((*during_probe)->status().code(), absl::StatusCode::kFailedPrecondition)
      << "while the probe is out, others fail fast (as with the breaker's half-open probe)";
  client_.Answer(Safe());
  ASSERT_TRUE((*probe)->ok());
  auto after = Start(Request("11.1.2.5"));
  ASSERT_EQ(client_.pending.size(), 1u) << "the token works again";
  client_.Answer(Safe());
  EXPECT_TRUE((*after)->ok());
  EXPECT_EQ(store_.clicks.size(), 3u);
}

// A token reload (SIGHUP) ends the wait for the probe: the next miss goes out at once, with the
// new token, instead of a minute later.
TEST_F(EngineTest, AReplacedTokenSendsTheNextMissAtOnce) {
  options_.token_probe_interval = absl::Minutes(1);
  Start(Request("11.1.9.1"));
  client_.Answer(absl::FailedPreconditionError("ClickPatrol rejected the API token (HTTP 401)"));
  auto refused = Start(Request("11.1.9.2"));
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(client_.pending.empty());

  engine().OnTokenReplaced();  // no time passes
  auto next = Start(Request("11.1.9.3"));
  ASSERT_EQ(client_.pending.size(), 1u) << "sent at once";
  auto beside = Start(Request("11.1.9.4"));
  ASSERT_EQ(client_.pending.size(), 2u) << "not a probe: every miss goes";
  client_.Answer(Safe());
  client_.Answer(Safe());
  EXPECT_TRUE((*next)->ok());
  EXPECT_TRUE((*beside)->ok());
}

// A miss still waiting for a slot when its caller goes away is dropped: no ledger row, no
// request, its reservation returned. The caller is answered CANCELLED at once.
TEST_F(EngineTest, CancelledQueuedMissIsDroppedWithoutARequest) {
  options_.max_upstream_in_flight = 1;
  Start(Request("11.1.3.1"));
  auto call = std::make_shared<CallState>();
  CheckRequest r = Request("11.1.3.2", "team-b");
  r.monthly_budget = 10;
  r.call = call;
  auto abandoned = Start(r);
  EXPECT_EQ(engine().QueuedMisses(), 1u);
  EXPECT_EQ(engine().SpentThisMonth("team-b"), 1) << "reserved while it waits";
  engine().Cancel(call);
  ASSERT_TRUE(abandoned->has_value());
  EXPECT_EQ((*abandoned)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine().QueuedMisses(), 0u);
  EXPECT_EQ(engine().SpentThisMonth("team-b"), 0);
  client_.Answer(Safe());
  EXPECT_TRUE(client_.pending.empty());
  ASSERT_EQ(store_.clicks.size(), 1u);
  EXPECT_EQ(store_.clicks[0].ip, "11.1.3.1");
  auto after = Start(Request("11.1.3.3"));
  EXPECT_EQ(client_.pending.size(), 1u) << "the slot is free";
  client_.Answer(Safe());
  EXPECT_TRUE((*after)->ok());
}

// Every item of a batch shares one CallState: cancelling it drops all of them.
TEST_F(EngineTest, CancellingABatchDropsAllItsQueuedMisses) {
  options_.max_upstream_in_flight = 1;
  auto call = std::make_shared<CallState>();
  std::vector<std::shared_ptr<std::optional<absl::StatusOr<CheckResult>>>> items;
  for (int i = 0; i < 5; ++i) {
    CheckRequest r = Request(absl::StrCat("11.1.4.", i + 1));
    r.call = call;
    items.push_back(Start(r));
  }
  ASSERT_EQ(client_.pending.size(), 1u);
  engine().Cancel(call);
  for (const auto& item : items) {
    ASSERT_TRUE(item->has_value());
    EXPECT_EQ((*item)->status().code(), absl::StatusCode::kCancelled);
  }
  EXPECT_EQ(engine().QueuedMisses(), 0u);
  // The one already sent is billed and never recalled; its verdict is still stored.
  client_.Answer(Fake());
  EXPECT_TRUE(client_.pending.empty());
  ASSERT_EQ(store_.clicks.size(), 1u);
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kVerdict);
  ASSERT_EQ(store_.history.size(), 1u);
  EXPECT_EQ(store_.history[0].ip, "11.1.4.1");
  auto hit = Start(Request("11.1.4.1"));
  ASSERT_TRUE((*hit)->ok());
  EXPECT_EQ((**hit)->source, Source::kCache);
  // A check that arrives for a call already cancelled is answered at once.
  CheckRequest late = Request("11.1.4.9");
  late.call = call;
  auto refused = Start(late);
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(client_.pending.empty());
}

// Deadlines are read from the engine's clock when a queued miss's turn comes.
TEST_F(EngineTest, QueuedMissPastItsDeadlineIsNotSent) {
  options_.max_upstream_in_flight = 1;
  Start(Request("11.1.5.1"));
  CheckRequest r = Request("11.1.5.2");
  r.call = std::make_shared<CallState>(clock_.Now() + absl::Seconds(1));
  auto late = Start(r);
  clock_.Advance(absl::Seconds(2));
  client_.Answer(Safe());
  ASSERT_TRUE(late->has_value());
  EXPECT_EQ((*late)->status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_EQ(store_.clicks.size(), 1u);
}

// The payer of a queued miss goes away while someone else waits for the same IP: the other
// caller pays instead, and the payer gets its click back.
TEST_F(EngineTest, WhenThePayerLeavesAQueuedMissTheNextWaiterPays) {
  options_.max_upstream_in_flight = 1;
  Start(Request("11.1.6.1"));
  auto payer_call = std::make_shared<CallState>();
  CheckRequest a = Request("11.1.6.2", "team-a");
  a.call = payer_call;
  a.monthly_budget = 10;
  auto left = Start(a);
  CheckRequest b = Request("11.1.6.2", "team-b");
  b.monthly_budget = 10;
  auto stayed = Start(b);
  engine().Cancel(payer_call);
  EXPECT_EQ((*left)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine().SpentThisMonth("team-a"), 1) << "only 11.1.6.1";
  EXPECT_EQ(engine().SpentThisMonth("team-b"), 1) << "reserved on taking over";
  client_.Answer(Safe());
  ASSERT_EQ(client_.pending.size(), 1u) << "still wanted: sent";
  client_.Answer(Fake());
  ASSERT_TRUE(stayed->has_value() && (*stayed)->ok());
  EXPECT_TRUE((**stayed)->click_spent);
  ASSERT_EQ(store_.clicks.size(), 2u);
  EXPECT_EQ(store_.clicks[1].caller, "team-b");
  EXPECT_EQ((**stayed)->verdict.caller, "team-b");
}

// A waiter of a request already on the wire who goes away is answered at once; the request is
// billed to its payer and its verdict stored for the others.
TEST_F(EngineTest, CancellingASentMissAnswersTheCallerButKeepsTheVerdict) {
  auto call = std::make_shared<CallState>();
  CheckRequest r = Request("11.1.7.1");
  r.call = call;
  auto gone = Start(r);
  auto other = Start(Request("11.1.7.1", "team-b"));
  ASSERT_EQ(client_.pending.size(), 1u);
  engine().Cancel(call);
  EXPECT_EQ((*gone)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(other->has_value());
  client_.Answer(Safe());
  ASSERT_TRUE((*other)->ok());
  EXPECT_FALSE((**other)->click_spent);
  ASSERT_EQ(store_.clicks.size(), 1u);
  EXPECT_EQ(store_.clicks[0].caller, "team-a");
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kVerdict);
  EXPECT_EQ(store_.history.size(), 1u);
}

// A storm of cancelled batches behind a hung ClickPatrol: the dropped misses neither count
// against the queue bound nor get sent when a slot finally frees.
TEST_F(EngineTest, CancelledMissesFreeTheirQueuePlacesAtOnce) {
  options_.max_upstream_in_flight = 1;
  options_.max_queued_misses = 10;
  Start(Request("11.2.0.1"));  // holds the only slot
  for (int round = 0; round < 50; ++round) {
    auto call = std::make_shared<CallState>();
    for (int i = 0; i < 10; ++i) {
      CheckRequest r = Request(absl::StrCat("11.2.", 1 + round, ".", i + 1));
      r.call = call;
      auto queued = Start(r);
      ASSERT_FALSE(queued->has_value()) << "round " << round << ": refused " << (*queued)->status();
    }
    EXPECT_EQ(engine().QueuedMisses(), 10u);
    engine().Cancel(call);
    ASSERT_EQ(engine().QueuedMisses(), 0u);
  }
  auto live = Start(Request("11.2.99.1"));
  client_.Answer(Safe());
  ASSERT_EQ(client_.pending.size(), 1u);
  EXPECT_EQ(client_.pending.front().ip, "11.2.99.1") << "dead entries are skipped";
  client_.Answer(Safe());
  EXPECT_TRUE((*live)->ok());
  EXPECT_EQ(store_.clicks.size(), 2u);
}

TEST_F(EngineTest, MissesPastTheQueueBoundFailFastAndCostNothing) {
  options_.max_upstream_in_flight = 1;
  options_.max_queued_misses = 2;
  Start(Request("11.1.8.1"));
  Start(Request("11.1.8.2"));
  Start(Request("11.1.8.3"));
  CheckRequest r = Request("11.1.8.4");
  r.monthly_budget = 10;
  auto refused = Start(r);
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string((*refused)->status().message()),
              ::testing::HasSubstr("too many misses waiting for ClickPatrol"));
  EXPECT_EQ(engine().SpentThisMonth("team-a"), 3);
  auto joined = Start(Request("11.1.8.3", "team-b"));
  EXPECT_FALSE(joined->has_value()) << "joining a queued miss costs no queue place";
  client_.Answer(Safe());
  auto now_fits = Start(Request("11.1.8.5"));
  EXPECT_FALSE(now_fits->has_value()) << "a place came free";
  while (!client_.pending.empty()) {
    client_.Answer(Safe());
  }
  EXPECT_TRUE((*joined)->ok());
  EXPECT_TRUE((*now_fits)->ok());
  EXPECT_EQ(store_.clicks.size(), 4u);
}

// Shutdown: nothing that has not left leaves. Queued misses and retries waiting for their
// backoff are answered UNAVAILABLE at once; what is on the wire finishes; new misses are
// refused while hits are still served.
TEST_F(EngineTest, ShutdownAnswersUnsentMissesAndAdmitsNoMore) {
  options_.max_upstream_in_flight = 2;
  Start(Request("11.1.9.1"));
  client_.Answer(Safe());
  auto on_wire = Start(Request("11.1.9.2"));
  auto retrying = Start(Request("11.1.9.3"));
  client_.pending.back().done(FetchOutcome{absl::UnavailableError("could not connect"), "", 0,
                                           /*maybe_sent=*/false, absl::ZeroDuration()});
  client_.pending.pop_back();
  auto queued = Start(Request("11.1.9.4"));
  auto queued2 = Start(Request("11.1.9.5"));
  ASSERT_EQ(client_.pending.size(), 2u);  // 11.1.9.2 and 11.1.9.4 (took the retry's slot)
  EXPECT_EQ(engine().QueuedMisses(), 1u);
  const size_t rows = store_.clicks.size();

  engine().Shutdown();
  for (const auto& r : {retrying, queued2}) {
    ASSERT_TRUE(r->has_value());
    EXPECT_EQ((*r)->status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string((*r)->status().message()), ::testing::HasSubstr("shutting down"));
  }
  auto refused = Start(Request("11.1.9.6"));
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kUnavailable);
  auto hit = Start(Request("11.1.9.1"));
  ASSERT_TRUE((*hit)->ok());
  clock_.Advance(absl::Seconds(1));
  scheduler_.RunDue();
  EXPECT_EQ(client_.pending.size(), 2u) << "no retry after shutdown";
  client_.Answer(Safe());
  client_.Answer(Fake());
  EXPECT_TRUE((*on_wire)->ok());
  EXPECT_TRUE((*queued)->ok());
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_EQ(store_.clicks.size(), rows) << "no ledger row after shutdown";
  EXPECT_TRUE(engine().WaitIdleUntil(clock_.Now()));
}

// --- GetUsage ---------------------------------------------------------------------------------

// Runs Usage and returns its answer (the fake store answers inline).
absl::StatusOr<UsageReport> UsageOf(Engine& engine, UsageQuery query) {
  std::optional<absl::StatusOr<UsageReport>> answer;
  engine.Usage(std::move(query), [&](absl::StatusOr<UsageReport> r) { answer = std::move(r); });
  EXPECT_TRUE(answer.has_value());
  return answer.value_or(absl::InternalError("no answer"));
}

UsageQuery UsageQueryBy(std::string requester, std::string caller, bool auditor = false) {
  UsageQuery q;
  q.reader.caller = std::move(requester);
  q.caller = std::move(caller);
  q.reader.auditor = auditor;
  return q;
}

TEST_F(EngineTest, UsageDefaultWindowIsThisUtcMonthByTheInjectedClock) {
  clock_.Set(absl::FromCivil(absl::CivilSecond(2026, 3, 17, 10, 30, 0), absl::UTCTimeZone()));
  absl::StatusOr<UsageReport> report = UsageOf(engine(), UsageQueryBy("team-a", "team-a"));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(store_.usage_reads.size(), 1u);
  EXPECT_EQ(store_.usage_reads[0].caller, "team-a");
  EXPECT_EQ(store_.usage_reads[0].since,
            absl::FromCivil(absl::CivilDay(2026, 3, 1), absl::UTCTimeZone()));
  EXPECT_EQ(store_.usage_reads[0].until, clock_.Now() + absl::Seconds(1));

  // An explicit since keeps the default until; an explicit until is used as given.
  UsageQuery q = UsageQueryBy("team-a", "team-a");
  q.since = std::optional<absl::Time>(clock_.Now() - absl::Hours(24 * 60));
  ASSERT_TRUE(UsageOf(engine(), q).ok());
  ASSERT_EQ(store_.usage_reads.size(), 2u);
  EXPECT_EQ(store_.usage_reads[1].since, clock_.Now() - absl::Hours(24 * 60));
  EXPECT_EQ(store_.usage_reads[1].until, clock_.Now() + absl::Seconds(1));
  q.until = std::optional<absl::Time>(clock_.Now() - absl::Hours(24));
  ASSERT_TRUE(UsageOf(engine(), q).ok());
  ASSERT_EQ(store_.usage_reads.size(), 3u);
  EXPECT_EQ(store_.usage_reads[2].until, clock_.Now() - absl::Hours(24));

  // The default since is after an explicit until in the past: an empty window.
  UsageQuery empty = UsageQueryBy("team-a", "team-a");
  empty.until = std::optional<absl::Time>(clock_.Now() - absl::Hours(24 * 30));
  EXPECT_EQ(UsageOf(engine(), empty).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_.usage_reads.size(), 3u) << "nothing read for a refused query";
}

TEST_F(EngineTest, UsageCallersSeeTheirOwnAndAuditorsEveryones) {
  EXPECT_TRUE(UsageOf(engine(), UsageQueryBy("team-a", "team-a")).ok());
  absl::Status other = UsageOf(engine(), UsageQueryBy("team-a", "team-b")).status();
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(other.message()), ::testing::HasSubstr("\"team-b\""));
  absl::Status every = UsageOf(engine(), UsageQueryBy("team-a", "")).status();
  EXPECT_EQ(every.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(every.message()), ::testing::HasSubstr("only auditors"));
  EXPECT_TRUE(UsageOf(engine(), UsageQueryBy("auditor", "team-b", /*auditor=*/true)).ok());
  EXPECT_TRUE(UsageOf(engine(), UsageQueryBy("auditor", "", /*auditor=*/true)).ok());
  ASSERT_EQ(store_.usage_reads.size(), 3u) << "refused queries read nothing";
  EXPECT_EQ(store_.usage_reads[2].caller, "");

  // Who may ask is decided before the window is looked at.
  UsageQuery bad = UsageQueryBy("team-a", "team-b");
  bad.since = absl::InvalidArgumentError("since is not a valid google.protobuf.Timestamp");
  EXPECT_EQ(UsageOf(engine(), bad).status().code(), absl::StatusCode::kPermissionDenied);
  bad.caller = "team-a";
  EXPECT_EQ(UsageOf(engine(), bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EngineTest, UsageJoinsBudgetsAndWritesPendingCountersFirst) {
  options_.monthly_budgets = {{"team-a", 10}, {"team-b", 0}, {"team-c", 3}};
  store_.initial_clicks = {{"team-a", 4}, {"team-c", 5}};
  Start(Request("8.8.8.8", "team-a"));
  client_.Answer(Safe());
  EXPECT_TRUE(store_.usage.empty());
  const absl::CivilDay today = absl::ToCivilDay(clock_.Now(), absl::UTCTimeZone());
  store_.daily_usage = {
      {"team-a", today - 1, UsageCounts{2, 0, 1, 3}},
      {"team-a", today, UsageCounts{1, 1, 0, 1}},
      {"team-b", today, UsageCounts{0, 0, 4, 4}},
  };
  absl::StatusOr<UsageReport> report =
      UsageOf(engine(), UsageQueryBy("auditor", "", /*auditor=*/true));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(store_.usage.empty()) << "pending counters are written before the read";
  ASSERT_EQ(report->callers.size(), 2u);
  const CallerUsageReport& a = report->callers[0];
  EXPECT_EQ(a.caller, "team-a");
  EXPECT_EQ(a.days.size(), 2u);
  EXPECT_EQ(a.total.clicks, 3);
  EXPECT_EQ(a.total.upstream_errors, 1);
  EXPECT_EQ(a.total.cache_hits, 1);
  EXPECT_EQ(a.total.requests, 4);
  ASSERT_TRUE(a.budget.has_value());
  EXPECT_EQ(a.budget->monthly_budget, 10);
  EXPECT_EQ(a.budget->left, 5) << "4 clicks at start-up and 1 since";
  EXPECT_EQ(report->callers[1].caller, "team-b");
  EXPECT_FALSE(report->callers[1].budget.has_value()) << "0 is unlimited";
  EXPECT_EQ(report->allowance.clicks_used, engine().Allowance().clicks_used);

  // A caller asked for by name is reported even without usage; a spent budget is 0 left.
  store_.daily_usage.clear();
  report = UsageOf(engine(), UsageQueryBy("team-c", "team-c"));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->callers.size(), 1u);
  EXPECT_EQ(report->callers[0].caller, "team-c");
  EXPECT_TRUE(report->callers[0].days.empty());
  ASSERT_TRUE(report->callers[0].budget.has_value());
  EXPECT_EQ(report->callers[0].budget->left, 0);

  std::vector<BudgetStatus> budgets = engine().Budgets();
  ASSERT_EQ(budgets.size(), 2u);
  EXPECT_EQ(budgets[0].caller, "team-a");
  EXPECT_EQ(budgets[0].left, 5);
  EXPECT_EQ(budgets[1].caller, "team-c");
  EXPECT_EQ(budgets[1].left, 0);
}

// --- Store reads answer later, on a store thread ----------------------------------------------

// Misses of one key whose store reads are all outstanding at once still share one request: they
// meet in the flight table when the reads answer.
TEST_F(EngineTest, ConcurrentMissesDuringTheStoreReadShareOneRequest) {
  store_.defer_reads = true;
  auto a = Start(Request("11.2.0.1", "team-a"));
  auto b = Start(Request("11.2.0.1", "team-b"));
  EXPECT_FALSE(a->has_value());
  EXPECT_FALSE(b->has_value());
  EXPECT_TRUE(client_.pending.empty()) << "nothing is sent before the store has answered";
  EXPECT_EQ(store_.deferred_reads.size(), 1u) << "one read for both";
  store_.RunReads();
  ASSERT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
  ASSERT_TRUE(a->has_value() && b->has_value());
  ASSERT_TRUE((*a)->ok());
  ASSERT_TRUE((*b)->ok());
  EXPECT_TRUE((**a)->click_spent) << "the first to arrive pays, as with reads answered at once";
  EXPECT_FALSE((**b)->click_spent);
  EXPECT_EQ(store_.clicks.size(), 1u);
}

// A read that answers after the flight it would have joined has finished finds the verdict in
// the hot cache instead of paying for a second request.
TEST_F(EngineTest, AReadThatAnswersAfterTheFlightEndedUsesItsVerdict) {
  store_.defer_reads = true;
  auto first = Start(Request("11.2.1.1"));
  store_.RunReads();
  ASSERT_EQ(client_.pending.size(), 1u);
  auto late = Start(Request("11.2.1.1", "team-b"));  // its read saw no verdict yet...
  client_.Answer(Fake());                            // ...when the flight ends
  ASSERT_TRUE(first->has_value() && (*first)->ok());
  {
    absl::MutexLock lock(&store_.mu_);
    store_.history.clear();  // the read answers as it would have when it was issued
  }
  store_.RunReads();
  ASSERT_TRUE(late->has_value());
  ASSERT_TRUE((*late)->ok());
  EXPECT_EQ((**late)->source, Source::kCache);
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_EQ(store_.clicks.size(), 1u);
}

// WaitIdle (and so the destructor) waits for the store's answer to a check's lookup.
TEST_F(EngineTest, AnOutstandingStoreReadKeepsTheEngineBusy) {
  store_.defer_reads = true;
  auto r = Start(Request("11.2.2.1"));
  EXPECT_FALSE(engine().WaitIdleUntil(absl::InfinitePast()));
  store_.read_error = absl::InternalError("disk I/O error");
  store_.RunReads();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(engine().WaitIdleUntil(absl::InfinitePast()));
}

// A miss whose read answers after Shutdown is refused without a ledger row or a request.
TEST_F(EngineTest, AMissWhoseReadAnswersAfterShutdownIsNotSent) {
  store_.defer_reads = true;
  auto r = Start(Request("11.2.3.1"));
  engine().Shutdown();
  store_.RunReads();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string((*r)->status().message()), ::testing::HasSubstr("shutting down"));
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_TRUE(store_.clicks.empty());
  EXPECT_TRUE(engine().WaitIdleUntil(absl::InfinitePast()));
}

// A check cancelled while its read is outstanding sends nothing.
TEST_F(EngineTest, ACheckCancelledDuringItsReadSendsNothing) {
  store_.defer_reads = true;
  CheckRequest request = Request("11.2.4.1");
  request.call = std::make_shared<CallState>();
  auto call = request.call;
  auto r = Start(std::move(request));
  engine().Cancel(call);
  ASSERT_TRUE(r->has_value()) << "answered at once, not when the store answers";
  store_.RunReads();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_TRUE(store_.clicks.empty());
}

// Cancelling one call answers only its checks; another call's check of the same key, waiting
// for the same read, goes on.
TEST_F(EngineTest, CancellingOneCallDuringASharedReadLeavesTheOthersCheck) {
  store_.defer_reads = true;
  CheckRequest request = Request("11.2.5.1");
  request.call = std::make_shared<CallState>();
  auto call = request.call;
  auto r = Start(std::move(request));
  auto other = Start(Request("11.2.5.1", "team-b"));
  engine().Cancel(call);
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(other->has_value());
  EXPECT_FALSE(engine().WaitIdleUntil(absl::InfinitePast())) << "the read is still outstanding";
  store_.RunReads();
  ASSERT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
  ASSERT_TRUE(other->has_value());
  ASSERT_TRUE((*other)->ok());
  EXPECT_TRUE((**other)->click_spent);
  ASSERT_EQ(store_.clicks.size(), 1u);
  EXPECT_EQ(store_.clicks[0].caller, "team-b");
  EXPECT_TRUE(engine().WaitIdleUntil(absl::InfinitePast()));
}

TEST(CircuitBreakerTest, HalfOpenFailureReopens) {
  FakeClock clock;
  CircuitBreaker breaker({/*failure_threshold=*/2, /*open_for=*/absl::Seconds(10)}, clock);
  EXPECT_TRUE(breaker.Allow());
  breaker.RecordFailure();
  EXPECT_TRUE(breaker.Allow());
  breaker.RecordFailure();
  EXPECT_FALSE(breaker.Allow());
  clock.Advance(absl::Seconds(10));
  EXPECT_TRUE(breaker.Allow());
  EXPECT_FALSE(breaker.Allow()) << "one probe at a time";
  breaker.RecordFailure();
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kOpen);
  EXPECT_FALSE(breaker.Allow());
  clock.Advance(absl::Seconds(10));
  EXPECT_TRUE(breaker.Allow());
  breaker.Cancel();
  EXPECT_TRUE(breaker.Allow()) << "a cancelled probe frees the slot";
  breaker.RecordSuccess();
  EXPECT_EQ(breaker.state(), CircuitBreaker::State::kClosed);
}

TEST(FreshnessTest, Boundaries) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_TRUE(IsFresh(t0, t0, absl::Seconds(1)));
  EXPECT_FALSE(IsFresh(t0 + absl::Seconds(1), t0, absl::Seconds(1)));
  EXPECT_TRUE(IsFresh(t0 + absl::Milliseconds(999), t0, absl::Seconds(1)));
  EXPECT_FALSE(IsFresh(t0, t0, absl::ZeroDuration()));
  EXPECT_TRUE(IsFresh(t0 - absl::Hours(1), t0, absl::Seconds(1))) << "future verdicts: age 0";
}

TEST(FreshnessTest, LimitPrecedence) {
  FreshnessPolicy p;
  p.default_max_age = absl::Hours(24);
  p.max_age_fake = absl::Hours(1);
  EXPECT_EQ(p.LimitFor(Score::kFake, std::nullopt), absl::Hours(1));
  EXPECT_EQ(p.LimitFor(Score::kSafe, std::nullopt), absl::Hours(24));
  EXPECT_EQ(p.LimitFor(Score::kFake, absl::Minutes(3)), absl::Minutes(3));
}

// --- Flights across processes sharing the store (the store's claims) ---

Verdict RemoteVerdict(const std::string& ip, absl::Time at) {
  return Verdict{ip, Assessment{Score::kFake, true, false, true, false, false}, at, "",
                 "other-replica"};
}

TEST_F(EngineTest, AMissWhoseKeyAnotherProcessHoldsIsAnsweredByItsVerdict) {
  store_.held["8.8.8.8"] = absl::Seconds(30);
  CheckRequest a = Request("8.8.8.8", "team-a");
  a.monthly_budget = 10;
  auto first = Start(a);
  auto second = Start(Request("8.8.8.8", "team-b"));
  EXPECT_TRUE(client_.pending.empty()) << "nothing is sent while another process holds the key";
  EXPECT_FALSE(first->has_value());
  EXPECT_FALSE(second->has_value());
  EXPECT_EQ(store_.claims.size(), 1u) << "the second check joined the local flight";
  EXPECT_EQ(store_.claims[0].flight_key, "8.8.8.8");
  EXPECT_EQ(store_.claims[0].monthly_budget, 10);
  EXPECT_EQ(store_.claims[0].lease, options_.flight_lease);

  store_.EndRemoteFlight("8.8.8.8", RemoteVerdict("8.8.8.8", clock_.Now()));
  for (const auto& r : {first, second}) {
    ASSERT_TRUE(r->has_value());
    ASSERT_TRUE((*r)->ok()) << (*r)->status();
    EXPECT_EQ((**r)->source, Source::kUpstream) << "it shared a concurrent request";
    EXPECT_FALSE((**r)->click_spent);
    EXPECT_EQ((**r)->verdict.caller, "other-replica");
  }
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_TRUE(store_.clicks.empty());
  EXPECT_EQ(engine().SpentThisMonth("team-a"), 0) << "the waiting payer's reservation returns";
  // The verdict is in the hot cache now: the next check reads nothing.
  const int reads = store_.reads;
  auto hit = Start(Request("8.8.8.8", "team-c"));
  ASSERT_TRUE((*hit)->ok());
  EXPECT_EQ(store_.reads, reads);
}

TEST_F(EngineTest, ARemoteFlightThatEndsWithoutAVerdictIsClaimedAgainHere) {
  store_.held["8.8.8.8"] = absl::Seconds(30);
  auto waiting = Start(Request("8.8.8.8", "team-a"));
  store_.EndRemoteFlight("8.8.8.8", std::nullopt);  // the other process's request failed
  ASSERT_EQ(client_.pending.size(), 1u) << "the claim is free: this process asks";
  EXPECT_EQ(store_.claims.size(), 2u);
  client_.Answer(Safe());
  ASSERT_TRUE((*waiting)->ok());
  EXPECT_EQ((**waiting)->source, Source::kUpstream);
  EXPECT_TRUE((**waiting)->click_spent);
}

// The holder died: no notification ever comes. The waiter polls; while the lease holds the
// store keeps saying "held"; once it ran out the claim is granted here.
TEST_F(EngineTest, AWaiterTakesOverOnceTheHoldersLeaseRunsOut) {
  options_.remote_flight_poll = absl::Seconds(1);
  store_.held["8.8.8.8"] = absl::Milliseconds(2500);
  auto waiting = Start(Request("8.8.8.8", "team-a"));
  EXPECT_EQ(store_.claims.size(), 1u);
  clock_.Advance(absl::Milliseconds(999));
  scheduler_.RunDue();
  EXPECT_EQ(store_.claims.size(), 1u) << "no poll before the interval";
  clock_.Advance(absl::Milliseconds(1));
  scheduler_.RunDue();
  EXPECT_EQ(store_.claims.size(), 2u) << "the poll looked, found nothing, and asked again";
  EXPECT_TRUE(client_.pending.empty());
  {
    absl::MutexLock lock(&store_.mu_);
    store_.held.erase("8.8.8.8");  // the lease ran out, silently
  }
  clock_.Advance(absl::Seconds(1));
  scheduler_.RunDue();
  ASSERT_EQ(client_.pending.size(), 1u);
  client_.Answer(Fake());
  ASSERT_TRUE((*waiting)->ok());
  EXPECT_TRUE((**waiting)->click_spent);
}

// A lost notification (or a backend that cannot hear other processes) costs a poll interval,
// not a click: the poll finds the verdict in the store.
TEST_F(EngineTest, APollFindsTheOtherProcessesVerdictWithoutANotification) {
  store_.held["8.8.8.8"] = absl::Seconds(30);
  auto waiting = Start(Request("8.8.8.8", "team-a"));
  {
    absl::MutexLock lock(&store_.mu_);
    store_.history.push_back(RemoteVerdict("8.8.8.8", clock_.Now()));
  }
  clock_.Advance(options_.remote_flight_poll);
  scheduler_.RunDue();
  ASSERT_TRUE(waiting->has_value());
  ASSERT_TRUE((*waiting)->ok());
  EXPECT_EQ((**waiting)->source, Source::kUpstream);
  EXPECT_EQ(store_.claims.size(), 1u);
  EXPECT_TRUE(client_.pending.empty());
}

// An old verdict that was already there when the miss began is not mistaken for the new one.
TEST_F(EngineTest, TheVerdictThatMadeItAMissDoesNotEndTheWait) {
  {
    absl::MutexLock lock(&store_.mu_);
    store_.history.push_back(RemoteVerdict("8.8.8.8", clock_.Now()));
  }
  clock_.Advance(absl::Hours(25));  // older than max_age: a miss
  store_.held["8.8.8.8"] = absl::Seconds(30);
  auto waiting = Start(Request("8.8.8.8", "team-a"));
  store_.EndRemoteFlight("8.8.8.8", std::nullopt);
  ASSERT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
  ASSERT_TRUE((*waiting)->ok());
  EXPECT_EQ((**waiting)->source, Source::kUpstream);
}

TEST_F(EngineTest, ABudgetSpentOnOtherProcessesRefusesThePayerAndTheNextWaiterPays) {
  options_.max_upstream_in_flight = 1;
  Start(Request("11.2.0.1", "team-x"));  // holds the only slot
  CheckRequest a = Request("11.2.0.2", "team-a");
  a.monthly_budget = 5;
  auto refused = Start(a);  // queued: this process counts nothing spent by team-a
  auto other = Start(Request("11.2.0.2", "team-b"));
  store_.cluster_spent["team-a"] = 5;  // ... but the other replicas spent it all
  client_.Answer(Safe());              // the slot passes to 11.2.0.2: its claim is refused
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(engine().SpentThisMonth("team-a"), 5) << "the store's count is learned";
  ASSERT_EQ(client_.pending.size(), 1u) << "team-b pays instead";
  client_.Answer(Safe());
  ASSERT_TRUE((*other)->ok());
  EXPECT_TRUE((**other)->click_spent);
  ASSERT_EQ(store_.clicks.size(), 2u);
  EXPECT_EQ(store_.clicks[1].caller, "team-b");
  // The next miss of team-a is refused by this process's own count, without asking the store.
  const size_t claims = store_.claims.size();
  a.ip = "11.2.0.3";
  auto again = Start(a);
  EXPECT_EQ((*again)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store_.claims.size(), claims);
}

TEST_F(EngineTest, CancellingOrShuttingDownARemoteWaitSendsNothing) {
  store_.held["8.8.8.8"] = absl::Seconds(30);
  store_.held["8.8.4.4"] = absl::Seconds(30);
  auto call = std::make_shared<CallState>();
  CheckRequest r = Request("8.8.8.8", "team-a");
  r.monthly_budget = 3;
  r.call = call;
  auto cancelled = Start(r);
  auto stopped = Start(Request("8.8.4.4", "team-b"));
  engine().Cancel(call);
  ASSERT_TRUE(cancelled->has_value());
  EXPECT_EQ((*cancelled)->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine().SpentThisMonth("team-a"), 0);
  engine().Shutdown();
  ASSERT_TRUE(stopped->has_value());
  EXPECT_EQ((*stopped)->status().code(), absl::StatusCode::kUnavailable);
  store_.EndRemoteFlight("8.8.8.8", std::nullopt);
  store_.EndRemoteFlight("8.8.4.4", std::nullopt);
  clock_.Advance(absl::Minutes(1));
  scheduler_.RunDue();
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_TRUE(store_.clicks.empty());
}

// Only the process holding the retention lease prunes a store shared by several.
TEST_F(EngineTest, RetentionPrunesOnlyWhileHoldingTheChoreLease) {
  options_.replica_id = "replica-7";
  store_.lease_held = false;
  engine();
  scheduler_.RunDue();
  EXPECT_THAT(store_.leases_asked, ElementsAre("retention replica-7"));
  EXPECT_TRUE(store_.prune_cutoffs.empty()) << "another replica holds the chore";
  store_.lease_held = true;
  clock_.Advance(options_.prune_interval);
  scheduler_.RunDue();
  EXPECT_EQ(store_.leases_asked.size(), 2u);
  ASSERT_EQ(store_.prune_cutoffs.size(), 1u);
}

// GetUsage reports budgets and the allowance as the store counts them (every replica's clicks),
// not only this process's.
TEST_F(EngineTest, UsageReportsBudgetsAndTheAllowanceAsTheStoreCountsThem) {
  options_.monthly_budgets = {{"team-a", 10}};
  engine();                                                // starts with nothing spent
  store_.initial_clicks = {{"team-a", 8}, {"team-b", 3}};  // other replicas' clicks since
  absl::StatusOr<UsageReport> report =
      UsageOf(engine(), UsageQueryBy("auditor", "", /*auditor=*/true));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->allowance.clicks_used, 11);
  ASSERT_EQ(engine().Budgets().size(), 1u);
  EXPECT_EQ(engine().Budgets()[0].left, 2);
  report = UsageOf(engine(), UsageQueryBy("team-a", "team-a"));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->callers.size(), 1u);
  ASSERT_TRUE(report->callers[0].budget.has_value());
  EXPECT_EQ(report->callers[0].budget->left, 2);
}

// What this process reports (the allowance, the budgets: GetUsage and the metrics) takes in the
// clicks of every other process sharing the store every spend_sync_interval, also when nobody
// asks GetUsage (else a cluster's "80 % of the allowance used" alert would trail its clicks).
TEST_F(EngineTest, OtherProcessesClicksAreReadAgainEverySpendSyncInterval) {
  options_.allowance.monthly_allowance = 100;
  options_.monthly_budgets = {{"team-a", 10}};
  options_.spend_sync_interval = absl::Seconds(30);
  EXPECT_EQ(engine().Allowance().clicks_used, 0);
  store_.initial_clicks = {{"team-a", 8}, {"team-b", 3}};  // other replicas' clicks since
  clock_.Advance(absl::Seconds(29));
  scheduler_.RunDue();
  EXPECT_EQ(engine().Allowance().clicks_used, 0) << "not before the interval";
  clock_.Advance(absl::Seconds(1));
  scheduler_.RunDue();
  EXPECT_EQ(engine().Allowance().clicks_used, 11);
  ASSERT_EQ(engine().Budgets().size(), 1u);
  EXPECT_EQ(engine().Budgets()[0].left, 2);
  store_.initial_clicks = {{"team-a", 9}, {"team-b", 3}};
  clock_.Advance(absl::Seconds(30));
  scheduler_.RunDue();
  EXPECT_EQ(engine().Allowance().clicks_used, 12) << "and again, every interval";
  EXPECT_EQ(engine().Budgets()[0].left, 1);
}

// A completion the store could not write (it went away mid-request) is written again once it is
// back: the verdict that was paid for is kept and the key's claim released, not left to its
// lease.
TEST_F(EngineTest, ACompletionTheStoreRefusedIsWrittenAgainOnceItIsBack) {
  store_.complete_error = absl::UnavailableError("connection to the database lost");
  auto first = Start(Request("8.8.8.8", "team-a"));
  client_.Answer(Fake());
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->status().code(), absl::StatusCode::kUnavailable)
      << "a verdict is served only once durable";
  clock_.Advance(options_.completion_retry_backoff);
  scheduler_.RunDue();  // still down: tried again, and again later (backoff doubles)
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kPending);
  store_.complete_error = absl::OkStatus();
  clock_.Advance(options_.completion_retry_backoff);
  scheduler_.RunDue();
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kPending) << "not before the doubled backoff";
  clock_.Advance(options_.completion_retry_backoff);
  scheduler_.RunDue();
  EXPECT_EQ(store_.clicks[0].outcome, ClickOutcome::kVerdict);
  ASSERT_EQ(store_.history.size(), 1u);
  EXPECT_THAT(store_.events,
              ElementsAre("begin 8.8.8.8", "fetch 8.8.8.8", "complete failed 8.8.8.8",
                          "complete failed 8.8.8.8", "complete 8.8.8.8"));
  auto hit = Start(Request("8.8.8.8", "team-b"));
  ASSERT_TRUE((*hit)->ok());
  EXPECT_EQ((**hit)->source, Source::kCache);
  EXPECT_TRUE(client_.pending.empty());
}

// This process's hot-cache entry has aged, but another replica has stored a newer verdict: the
// store is read before anything is claimed, and nobody pays again.
TEST_F(EngineTest, AnAgedHotCacheEntryIsCheckedAgainstTheStoreBeforeClaiming) {
  Start(Request("8.8.8.8", "team-a"));
  client_.Answer(Safe());  // in the hot cache now
  clock_.Advance(absl::Hours(25));
  {
    absl::MutexLock lock(&store_.mu_);
    store_.history.push_back(RemoteVerdict("8.8.8.8", clock_.Now() - absl::Minutes(5)));
  }
  const size_t claims = store_.claims.size();
  auto checked = Start(Request("8.8.8.8", "team-b"));
  ASSERT_TRUE(checked->has_value());
  ASSERT_TRUE((*checked)->ok());
  EXPECT_EQ((**checked)->source, Source::kCache);
  EXPECT_EQ((**checked)->verdict.caller, "other-replica");
  EXPECT_EQ(store_.claims.size(), claims);
  EXPECT_TRUE(client_.pending.empty());
}

// Another process's flight for the key lands after this miss read the store but before its
// claim: the claim finds the verdict and the miss is answered with it, without a request.
TEST_F(EngineTest, AVerdictLandedBetweenTheReadAndTheClaimIsTakenNotPaidFor) {
  store_.lands_on_claim["8.8.8.8"] = RemoteVerdict("8.8.8.8", clock_.Now());
  auto checked = Start(Request("8.8.8.8", "team-a"));
  ASSERT_TRUE(checked->has_value());
  ASSERT_TRUE((*checked)->ok()) << (*checked)->status();
  EXPECT_EQ((**checked)->source, Source::kUpstream) << "a request shared with another process";
  EXPECT_FALSE((**checked)->click_spent);
  EXPECT_EQ((**checked)->verdict.caller, "other-replica");
  ASSERT_EQ(store_.claims.size(), 1u);
  ASSERT_TRUE(store_.claims[0].newer_than.has_value());
  EXPECT_EQ(*store_.claims[0].newer_than, absl::InfinitePast()) << "it had read no verdict";
  EXPECT_TRUE(store_.clicks.empty());
  EXPECT_TRUE(client_.pending.empty());
  auto again = Start(Request("8.8.8.8", "team-b"));
  ASSERT_TRUE((*again)->ok());
  EXPECT_EQ((**again)->source, Source::kCache) << "and it is in the hot cache";
}

// A verdict stored since the read that is itself too old to answer with (another process's
// clock or freshness) is not paid for twice either way: the miss claims again knowing it.
TEST_F(EngineTest, ALandedVerdictTooOldToServeIsClaimedPastOnce) {
  {
    absl::MutexLock lock(&store_.mu_);
    store_.history.push_back(RemoteVerdict("8.8.8.8", clock_.Now()));
  }
  clock_.Advance(absl::Hours(72));
  store_.lands_on_claim["8.8.8.8"] = RemoteVerdict("8.8.8.8", clock_.Now() - absl::Hours(48));
  auto checked = Start(Request("8.8.8.8", "team-a"));
  ASSERT_EQ(store_.claims.size(), 2u);
  EXPECT_EQ(*store_.claims[1].newer_than, clock_.Now() - absl::Hours(48));
  ASSERT_EQ(client_.pending.size(), 1u);
  client_.Answer(Safe());
  ASSERT_TRUE((*checked)->ok());
  EXPECT_TRUE((**checked)->click_spent);
  EXPECT_EQ(store_.clicks.size(), 1u);
}

// ClickPatrol told another process the allowance is exhausted: misses here are refused too,
// without a request, until the shared probe is due; the probe that gets a verdict clears it.
TEST_F(EngineTest, AnAllowanceExhaustedElsewhereRefusesMissesHereUntilTheSharedProbe) {
  const absl::Time next_probe = clock_.Now() + options_.allowance.exhausted_probe_interval;
  store_.allowance_mark = AllowanceMark{clock_.Now() + absl::Hours(24 * 20), next_probe};
  auto refused = Start(Request("11.1.1.1"));
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string((*refused)->status().message()),
              ::testing::HasSubstr("allowance is exhausted"));
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_TRUE(store_.clicks.empty());
  EXPECT_TRUE(engine().Allowance().exhausted_upstream) << "this process knows it now";
  // The next miss is refused here, without asking the store again.
  const size_t claims = store_.claims.size();
  auto local = Start(Request("11.1.1.2"));
  EXPECT_EQ((*local)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store_.claims.size(), claims);

  clock_.Advance(next_probe - clock_.Now());
  auto probe = Start(Request("11.1.1.3"));
  ASSERT_EQ(client_.pending.size(), 1u) << "the shared probe is due: this miss is it";
  EXPECT_EQ(store_.allowance_mark.next_probe,
            clock_.Now() + options_.allowance.exhausted_probe_interval);
  client_.Answer(Safe());
  ASSERT_TRUE((*probe)->ok());
  EXPECT_EQ(store_.allowance_mark.exhausted_until, absl::InfinitePast()) << "cleared for all";
  EXPECT_FALSE(engine().Allowance().exhausted_upstream);
}

// What ClickPatrol tells this process about the allowance is told to the store for the others.
TEST_F(EngineTest, ClickPatrolsAllowanceExhaustedIsSharedThroughTheStore) {
  auto first = Start(Request("11.1.1.1"));
  client_.Answer(absl::ResourceExhaustedError("ClickPatrol click allowance exhausted (HTTP 402)"));
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store_.allowance_marks_set, 1);
  EXPECT_EQ(store_.allowance_mark.exhausted_until, engine().Allowance().period_end);
  EXPECT_EQ(store_.allowance_mark.next_probe,
            clock_.Now() + options_.allowance.exhausted_probe_interval);
}

// Extra wake-ups (a listener reconnect) do not leave extra chains of polls behind: while
// another process holds the key, this one claims once per poll interval, however often it was
// woken.
TEST_F(EngineTest, AWaitingMissPollsOncePerIntervalHoweverOftenItWasWoken) {
  store_.held["8.8.8.8"] = absl::Seconds(30);
  Start(Request("8.8.8.8", "team-a"));
  ASSERT_EQ(store_.claims.size(), 1u);
  store_.listener->OnFlightsMayHaveEnded();  // looks again at once: still held
  store_.listener->OnFlightsMayHaveEnded();
  ASSERT_EQ(store_.claims.size(), 3u);
  for (size_t round = 1; round <= 3; ++round) {
    clock_.Advance(options_.remote_flight_poll);
    scheduler_.RunDue();
    EXPECT_EQ(store_.claims.size(), 3u + round);
  }
  store_.EndRemoteFlight("8.8.8.8", RemoteVerdict("8.8.8.8", clock_.Now()));
}

// TokenRejected (the verdictd_token_rejected gauge) is true from a 401/403 until a request
// succeeds again, and not set by other failures.
TEST_F(EngineTest, TokenRejectedHoldsFromARejectionUntilASuccess) {
  options_.token_probe_interval = absl::Minutes(1);
  Start(Request("11.9.1.1"));
  EXPECT_FALSE(engine().TokenRejected());
  client_.Answer(absl::UnavailableError("ClickPatrol returned HTTP 503"));
  EXPECT_FALSE(engine().TokenRejected()) << "a 503 is not a rejected token";
  Start(Request("11.9.1.2"));
  client_.Answer(absl::FailedPreconditionError("ClickPatrol rejected the API token (HTTP 403)"));
  EXPECT_TRUE(engine().TokenRejected());
  clock_.Advance(absl::Minutes(1));
  auto probe = Start(Request("11.9.1.3"));
  EXPECT_TRUE(engine().TokenRejected()) << "while the probe is out";
  client_.Answer(Safe());
  ASSERT_TRUE((*probe)->ok());
  EXPECT_FALSE(engine().TokenRejected());
}

// A request sent with the old token and rejected after the token was replaced says nothing
// about the new token: the misses after it still go out.
TEST_F(EngineTest, ARejectionOfTheOldTokenAfterTheReplacementDoesNotStopMisses) {
  options_.token_probe_interval = absl::Minutes(1);
  auto old = Start(Request("11.1.9.5"));
  ASSERT_EQ(client_.pending.size(), 1u);
  engine().OnTokenReplaced();  // while the request is on the wire
  client_.Answer(absl::FailedPreconditionError("ClickPatrol rejected the API token (HTTP 401)"));
  EXPECT_EQ((*old)->status().code(), absl::StatusCode::kFailedPrecondition);
  auto next = Start(Request("11.1.9.6"));
  ASSERT_EQ(client_.pending.size(), 1u) << "sent, not refused for the probe interval";
  client_.Answer(Safe());
  EXPECT_TRUE((*next)->ok());
  // A rejection of the new token does count.
  Start(Request("11.1.9.7"));
  client_.Answer(absl::FailedPreconditionError("ClickPatrol rejected the API token (HTTP 401)"));
  auto refused = Start(Request("11.1.9.8"));
  EXPECT_TRUE(client_.pending.empty());
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kFailedPrecondition);
}

// A keys-file reload replaces the budgets the engine reports.
TEST_F(EngineTest, SetMonthlyBudgetsReplacesTheReportedBudgets) {
  options_.monthly_budgets = {{"team-a", 10}, {"team-b", 5}};
  store_.initial_clicks = {{"team-a", 4}};
  ASSERT_EQ(engine().Budgets().size(), 2u);
  engine().SetMonthlyBudgets({{"team-a", 6}, {"team-c", 3}, {"team-d", 0}});
  std::vector<BudgetStatus> budgets = engine().Budgets();
  ASSERT_EQ(budgets.size(), 2u);
  EXPECT_EQ(budgets[0].caller, "team-a");
  EXPECT_EQ(budgets[0].monthly_budget, 6);
  EXPECT_EQ(budgets[0].left, 2);
  EXPECT_EQ(budgets[1].caller, "team-c");
  absl::StatusOr<UsageReport> report = UsageOf(engine(), UsageQueryBy("team-b", "team-b"));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->callers.size(), 1u);
  EXPECT_FALSE(report->callers[0].budget.has_value()) << "team-b has no budget any more";
  report = UsageOf(engine(), UsageQueryBy("team-c", "team-c"));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_TRUE(report->callers[0].budget.has_value());
  EXPECT_EQ(report->callers[0].budget->monthly_budget, 3);
}

// --- teams ------------------------------------------------------------------------------------

CheckRequest TeamRequest(std::string ip, std::string caller, int64_t team_budget) {
  CheckRequest r;
  r.ip = std::move(ip);
  r.caller = std::move(caller);
  r.team = "growth";
  r.team_monthly_budget = team_budget;
  return r;
}

Reader LeadOf(std::string team, std::string caller = "lead") {
  Reader r;
  r.caller = std::move(caller);
  r.team = std::move(team);
  r.lead = true;
  return r;
}

TEST_F(EngineTest, ATeamBudgetIsSharedByItsCallersAndNamesTheTeamWhenSpent) {
  options_.teams = {{"growth", 3, {"web", "ads"}}, {"ops", 0, {"cron"}}};
  store_.initial_clicks = {{"ads", 1}};
  Start(TeamRequest("11.3.0.1", "web", 3));
  client_.Answer(Safe());
  Start(TeamRequest("11.3.0.2", "ads", 3));
  client_.Answer(Safe());
  auto refused = Start(TeamRequest("11.3.0.3", "web", 3));  // 1 + 2 of 3 spent
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*refused)->status().message(), "team growth has spent its monthly budget of 3 clicks");
  EXPECT_TRUE(client_.pending.empty());
  // Each claim carried the team's callers, so the store checks the same sum.
  ASSERT_EQ(store_.claims.size(), 2u);
  EXPECT_EQ(store_.claims[0].team, "growth");
  EXPECT_THAT(store_.claims[0].team_callers, ElementsAre("ads", "web"));
  EXPECT_EQ(store_.claims[0].team_monthly_budget, 3);
  // A caller's own budget is checked first and named.
  CheckRequest own = TeamRequest("11.3.0.4", "web", 100);
  own.monthly_budget = 1;
  auto caller_spent = Start(own);
  EXPECT_THAT(std::string((*caller_spent)->status().message()),
              ::testing::HasSubstr("caller web has spent"));
  // The team's spend is reported (the budget gauge reads it).
  std::vector<TeamBudgetStatus> teams = engine().TeamBudgets();
  ASSERT_EQ(teams.size(), 2u);
  EXPECT_EQ(teams[0].team, "growth");
  EXPECT_EQ(teams[0].spent, 3);
  EXPECT_EQ(teams[0].left, 0);
  EXPECT_EQ(teams[1].team, "ops");
  EXPECT_EQ(teams[1].monthly_budget, 0);
  // A reload that moves web out of the team gives the team its room back.
  engine().SetTeams({{"growth", 3, {"ads"}}});
  Start(TeamRequest("11.3.0.5", "ads", 3));
  EXPECT_EQ(client_.pending.size(), 1u) << "ads alone has spent 2 of 3";
  client_.Answer(Safe());
  EXPECT_EQ(engine().TeamOf("web"), "");
  EXPECT_EQ(engine().TeamOf("ads"), "growth");
}

TEST_F(EngineTest, ATeamBudgetSpentOnOtherProcessesIsLearnedAndRefusesLocallyAfter) {
  options_.teams = {{"growth", 5, {"ads", "web"}}};
  store_.team_cluster_spent["growth"] = 5;  // the other replicas spent it all
  auto refused = Start(TeamRequest("11.3.1.1", "ads", 5));
  ASSERT_TRUE(refused->has_value());
  EXPECT_EQ((*refused)->status().message(), "team growth has spent its monthly budget of 5 clicks");
  EXPECT_TRUE(client_.pending.empty());
  EXPECT_EQ(engine().SpentThisMonth("ads"), 0) << "the reservation was handed back";
  EXPECT_EQ(engine().TeamBudgets()[0].spent, 5) << "the store's count is learned";
  const size_t claims = store_.claims.size();
  auto again = Start(TeamRequest("11.3.1.2", "web", 5));
  EXPECT_EQ((*again)->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store_.claims.size(), claims) << "refused by this process's count";
}

TEST_F(EngineTest, ALeadReadsItsTeamsCallersAndAMemberOnlyItsOwn) {
  options_.teams = {{"growth", 0, {"ads", "web"}}, {"ops", 0, {"cron"}}};
  UsageQuery q;
  q.reader = LeadOf("growth");
  q.caller = "ads";
  EXPECT_TRUE(UsageOf(engine(), q).ok());
  q.caller = "";
  q.team = "growth";
  EXPECT_TRUE(UsageOf(engine(), q).ok());
  q.team = "ops";
  absl::Status other_team = UsageOf(engine(), q).status();
  EXPECT_EQ(other_team.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(other_team.message(),
            "the lead of team \"growth\" may read only its team's callers' usage, not that of "
            "team \"ops\"");
  q.team = "";
  q.caller = "cron";
  EXPECT_EQ(UsageOf(engine(), q).status().code(), absl::StatusCode::kPermissionDenied);
  q.caller = "";
  absl::Status everyone = UsageOf(engine(), q).status();
  EXPECT_EQ(everyone.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(everyone.message()), ::testing::HasSubstr("or your team's"));
  // A member that is not the lead: its own only.
  UsageQuery member;
  member.reader = Reader{"web", "growth", /*lead=*/false, /*auditor=*/false};
  member.team = "growth";
  EXPECT_EQ(UsageOf(engine(), member).status().code(), absl::StatusCode::kPermissionDenied);
  member.team = "";
  member.caller = "ads";
  EXPECT_EQ(UsageOf(engine(), member).status().code(), absl::StatusCode::kPermissionDenied);
  member.caller = "web";
  EXPECT_TRUE(UsageOf(engine(), member).ok());
  // Auditors read every team; a team nobody is in, or a caller and a team at once, are errors.
  UsageQuery auditor = UsageQueryBy("audit", "", /*auditor=*/true);
  auditor.team = "ops";
  EXPECT_TRUE(UsageOf(engine(), auditor).ok());
  auditor.team = "opps";
  absl::Status unknown = UsageOf(engine(), auditor).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(unknown.message(), "no caller of the keys file is in team \"opps\"");
  auditor.team = "ops";
  auditor.caller = "cron";
  EXPECT_EQ(UsageOf(engine(), auditor).status().code(), absl::StatusCode::kInvalidArgument);
  // The same rule guards the click audit.
  ClicksQuery clicks;
  clicks.reader = LeadOf("growth");
  clicks.team = "ops";
  std::optional<absl::Status> answer;
  engine().Clicks(clicks, [&](absl::StatusOr<std::vector<ClickRecord>> r) { answer = r.status(); });
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(store_.click_queries.empty());
  // After a reload that moves cron into growth, its lead may read cron.
  engine().SetTeams({{"growth", 0, {"ads", "cron", "web"}}});
  q.caller = "cron";
  EXPECT_TRUE(UsageOf(engine(), q).ok());
}

TEST_F(EngineTest, UsageByTeamSumsItsCallersWithThemBeneath) {
  options_.teams = {{"growth", 10, {"ads", "mobile", "web"}}, {"ops", 0, {"cron"}}};
  options_.monthly_budgets = {{"ads", 4}};
  store_.initial_clicks = {{"ads", 2}, {"web", 1}, {"cron", 7}};
  const absl::CivilDay today = absl::ToCivilDay(clock_.Now(), absl::UTCTimeZone());
  store_.daily_usage = {
      {"ads", today, UsageCounts{2, 0, 5, 7}},
      {"cron", today, UsageCounts{7, 1, 0, 7}},
      {"solo", today, UsageCounts{1, 0, 0, 1}},
      {"web", today, UsageCounts{1, 1, 2, 3}},
  };
  UsageQuery q;
  q.reader = LeadOf("growth");
  q.team = "growth";
  absl::StatusOr<UsageReport> report = UsageOf(engine(), q);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(store_.usage_reads.size(), 1u);
  EXPECT_EQ(store_.usage_reads[0].caller, "") << "read for everyone, cut to the team";
  ASSERT_EQ(report->callers.size(), 3u) << "mobile is listed without usage";
  EXPECT_EQ(report->callers[0].caller, "ads");
  EXPECT_EQ(report->callers[0].team, "growth");
  ASSERT_TRUE(report->callers[0].budget.has_value());
  EXPECT_EQ(report->callers[0].budget->left, 2);
  EXPECT_EQ(report->callers[1].caller, "mobile");
  EXPECT_EQ(report->callers[1].total.requests, 0);
  EXPECT_EQ(report->callers[2].caller, "web");
  ASSERT_EQ(report->teams.size(), 1u);
  const TeamUsageReport& growth = report->teams[0];
  EXPECT_EQ(growth.team, "growth");
  EXPECT_THAT(growth.callers, ElementsAre("ads", "mobile", "web"));
  EXPECT_EQ(growth.total.clicks, 3);
  EXPECT_EQ(growth.total.upstream_errors, 1);
  EXPECT_EQ(growth.total.cache_hits, 7);
  EXPECT_EQ(growth.total.requests, 10);
  EXPECT_EQ(growth.budget.monthly_budget, 10);
  EXPECT_EQ(growth.budget.spent, 3);
  EXPECT_EQ(growth.budget.left, 7);

  // An auditor's view of everyone: each team of the callers listed, and callers in no team.
  report = UsageOf(engine(), UsageQueryBy("audit", "", /*auditor=*/true));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->callers.size(), 4u);
  EXPECT_EQ(report->callers[2].caller, "solo");
  EXPECT_EQ(report->callers[2].team, "");
  ASSERT_EQ(report->teams.size(), 2u);
  EXPECT_EQ(report->teams[0].team, "growth");
  EXPECT_THAT(report->teams[0].callers, ElementsAre("ads", "web"));
  EXPECT_EQ(report->teams[1].team, "ops");
  EXPECT_EQ(report->teams[1].total.clicks, 7);
  EXPECT_EQ(report->teams[1].budget.left, 0) << "no team budget";
}

ClickRecord LedgerClick(int64_t id, std::string caller, absl::Time at) {
  ClickRecord click;
  click.id = id;
  click.caller = std::move(caller);
  click.ip = "11.4.0.1";
  click.requested_at = at;
  return click;
}

TEST_F(EngineTest, ATeamsClicksMergeOnePageOfEachCallerNewestFirst) {
  options_.teams = {{"growth", 0, {"ads", "web"}}};
  const absl::Time t = clock_.Now();
  // Newest first, as the store keeps them; two share a requested_at (the id orders them).
  store_.ledger = {
      LedgerClick(9, "web", t),
      LedgerClick(8, "cron", t - absl::Seconds(1)),
      LedgerClick(7, "ads", t - absl::Seconds(2)),
      LedgerClick(6, "web", t - absl::Seconds(2)),
      LedgerClick(5, "ads", t - absl::Seconds(3)),
      LedgerClick(4, "ads", t - absl::Seconds(4)),
      LedgerClick(3, "web", t - absl::Seconds(5)),
  };
  auto page = [&](std::optional<ClickCursor> after) {
    ClicksQuery q;
    q.reader = LeadOf("growth");
    q.team = "growth";
    q.query.limit = 3;
    q.query.after = after;
    std::optional<absl::StatusOr<std::vector<ClickRecord>>> answer;
    engine().Clicks(q, [&](absl::StatusOr<std::vector<ClickRecord>> r) { answer = std::move(r); });
    EXPECT_TRUE(answer.has_value());
    std::vector<int64_t> ids;
    if (answer.has_value() && answer->ok()) {
      for (const ClickRecord& click : **answer) {
        ids.push_back(click.id);
      }
    }
    return ids;
  };
  EXPECT_THAT(page(std::nullopt), ElementsAre(9, 7, 6));
  ASSERT_EQ(store_.click_queries.size(), 2u) << "one read per caller of the team";
  EXPECT_EQ(store_.click_queries[0].caller, "ads");
  EXPECT_EQ(store_.click_queries[1].caller, "web");
  EXPECT_EQ(store_.click_queries[0].limit, 3);
  EXPECT_THAT(page(ClickCursor{t - absl::Seconds(2), 6}), ElementsAre(5, 4, 3));
  EXPECT_THAT(page(ClickCursor{t - absl::Seconds(5), 3}), IsEmpty());
}

}  // namespace
}  // namespace verdictd
