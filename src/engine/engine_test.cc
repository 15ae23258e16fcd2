#include "engine/engine.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// An in-memory store whose writes complete immediately, recording the order of operations.
class FakeStore : public VerdictStore {
 public:
  absl::StatusOr<std::optional<Verdict>> LatestFor(
      absl::string_view ip, std::optional<absl::string_view> user_agent) override {
    absl::MutexLock lock(&mu_);
    if (!read_error.ok()) {
      return read_error;
    }
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

  void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) override {
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

  struct Click {
    std::string caller;
    std::string ip;
    ClickOutcome outcome;
  };
  absl::Mutex mu_;
  std::vector<Verdict> history;
  std::vector<Click> clicks;
  std::vector<std::string> events;
  absl::Status read_error;
  absl::Status begin_error;
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

  Engine& engine() {
    if (engine_ == nullptr) {
      engine_ = std::make_unique<Engine>(options_, store_, client_, clock_);
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

}  // namespace
}  // namespace verdictd
