// The contract suite, continued: the click audit (VerdictStore::Clicks), the ledger read back
// newest first with the verdict each click produced, filtered by caller, IP and time, in pages
// that return every click exactly once.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/verdict_store.h"
#include "storage/verdict_store_contract_test.h"

namespace verdictd {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using namespace store_test;

absl::StatusOr<std::vector<ClickRecord>> ClicksSync(VerdictStore& store, ClickQuery query) {
  Waiter<absl::StatusOr<std::vector<ClickRecord>>> waiter;
  store.Clicks(std::move(query), waiter.Callback());
  return waiter.Wait();
}

std::vector<int64_t> Ids(const std::vector<ClickRecord>& clicks) {
  std::vector<int64_t> ids;
  for (const ClickRecord& c : clicks) {
    ids.push_back(c.id);
  }
  return ids;
}

// Begins a click and completes it with `completion` unless it is to stay pending; its id.
int64_t Ledger(VerdictStore& store, const std::string& caller, const std::string& ip,
               absl::Time requested_at, std::optional<ClickCompletion> completion) {
  absl::StatusOr<int64_t> id = BeginClickSync(store, caller, ip, requested_at);
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) {
    return 0;
  }
  if (completion.has_value()) {
    EXPECT_TRUE(CompleteClickSync(store, *id, *std::move(completion)).ok());
  }
  return *id;
}

ClickCompletion Failed(int http_status, std::string error, ClickOutcome outcome) {
  ClickCompletion c;
  c.outcome = outcome;
  c.http_status = http_status;
  c.error = std::move(error);
  c.latency = absl::Milliseconds(250);
  return c;
}

TEST_P(VerdictStoreContractTest, ClicksAreTheLedgerNewestFirstWithEveryFieldAndTheirVerdict) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  const Verdict produced = MakeVerdict("192.0.2.1", kT0 + absl::Seconds(1), "ua/1", "alice");
  const int64_t answered = Append(*store, produced);  // requested 5 ms before checked_at
  const int64_t failed =
      Ledger(*store, "bob", "192.0.2.2", kT0 + absl::Seconds(2),
             Failed(503, "ClickPatrol returned HTTP 503", ClickOutcome::kUpstreamError));
  const int64_t unsent = Ledger(*store, "bob", "192.0.2.3", kT0 + absl::Seconds(3),
                                Failed(0, "connection refused", ClickOutcome::kNotSent));
  const int64_t pending =
      Ledger(*store, "carol", "192.0.2.4", kT0 + absl::Seconds(4), std::nullopt);

  absl::StatusOr<std::vector<ClickRecord>> got = ClicksSync(*store, ClickQuery());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_THAT(Ids(*got), ElementsAre(pending, unsent, failed, answered));

  const ClickRecord& p = (*got)[0];
  EXPECT_EQ(p.caller, "carol");
  EXPECT_EQ(p.ip, "192.0.2.4");
  EXPECT_EQ(p.requested_at, kT0 + absl::Seconds(4));
  EXPECT_EQ(p.outcome, ClickOutcome::kPending);
  EXPECT_FALSE(p.completed_at.has_value());
  EXPECT_EQ(p.http_status, 0);
  EXPECT_EQ(p.error, "");
  EXPECT_FALSE(p.verdict.has_value());

  const ClickRecord& n = (*got)[1];
  EXPECT_EQ(n.outcome, ClickOutcome::kNotSent);
  EXPECT_EQ(n.error, "connection refused");
  EXPECT_TRUE(n.completed_at.has_value());
  EXPECT_FALSE(n.verdict.has_value());

  const ClickRecord& f = (*got)[2];
  EXPECT_EQ(f.caller, "bob");
  EXPECT_EQ(f.ip, "192.0.2.2");
  EXPECT_EQ(f.outcome, ClickOutcome::kUpstreamError);
  EXPECT_EQ(f.http_status, 503);
  EXPECT_EQ(f.error, "ClickPatrol returned HTTP 503");
  EXPECT_EQ(f.latency, absl::Milliseconds(250));
  EXPECT_FALSE(f.verdict.has_value());

  const ClickRecord& a = (*got)[3];
  EXPECT_EQ(a.caller, "alice");
  EXPECT_EQ(a.ip, "192.0.2.1");
  EXPECT_EQ(a.requested_at, produced.checked_at - absl::Milliseconds(5));
  EXPECT_EQ(a.outcome, ClickOutcome::kVerdict);
  EXPECT_EQ(a.http_status, 200);
  EXPECT_EQ(a.latency, absl::Milliseconds(5));
  ASSERT_TRUE(a.verdict.has_value()) << "the verdict the click produced";
  EXPECT_EQ(a.verdict->ip, produced.ip);
  EXPECT_EQ(a.verdict->user_agent, produced.user_agent);
  EXPECT_EQ(a.verdict->caller, produced.caller);
  EXPECT_EQ(a.verdict->checked_at, produced.checked_at);
  EXPECT_EQ(a.verdict->assessment, produced.assessment);
}

TEST_P(VerdictStoreContractTest, ClicksFilterByCallerIpAndTime) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  // clicks[i] is requested at kT0 + i s; callers and IPs cycle so that each filter picks some.
  const std::string callers[] = {"alice", "bob", "carol"};
  const std::string ips[] = {"192.0.2.1", "192.0.2.2"};
  std::vector<int64_t> clicks;
  for (int i = 0; i < 12; ++i) {
    clicks.push_back(Ledger(*store, callers[i % 3], ips[i % 2], kT0 + absl::Seconds(i),
                            Failed(500, "x", ClickOutcome::kUpstreamError)));
  }
  ClickQuery query;
  query.caller = "bob";  // i = 1, 4, 7, 10
  absl::StatusOr<std::vector<ClickRecord>> got = ClicksSync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Ids(*got), ElementsAre(clicks[10], clicks[7], clicks[4], clicks[1]));

  query.ip = "192.0.2.2";  // and odd i: 1, 7
  got = ClicksSync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Ids(*got), ElementsAre(clicks[7], clicks[1]));

  query.caller = "";  // every odd i
  query.since = kT0 + absl::Seconds(3);
  query.until = kT0 + absl::Seconds(9);  // exclusive: 3, 5, 7
  got = ClicksSync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Ids(*got), ElementsAre(clicks[7], clicks[5], clicks[3]));

  query.ip = "";
  query.since = kT0 + absl::Seconds(10);
  query.until = absl::InfiniteFuture();
  got = ClicksSync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(Ids(*got), ElementsAre(clicks[11], clicks[10]));

  query.caller = "dave";
  got = ClicksSync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(*got, IsEmpty());

  query.caller = "";
  query.ip = "192.0.2.99";
  query.since = absl::InfinitePast();
  got = ClicksSync(*store, query);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(*got, IsEmpty());
}

// Pages end at a cursor (requested_at, id); the next page starts strictly after it, also inside
// a microsecond that many clicks share, and for every kind of filter.
TEST_P(VerdictStoreContractTest, ClickPagesReturnEachClickExactlyOnce) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  std::vector<int64_t> all;  // newest first, as Clicks answers
  for (int i = 0; i < 7; ++i) {
    // Three clicks in each of kT0 + i ms: ties broken by id.
    for (int j = 0; j < 3; ++j) {
      all.insert(all.begin(), Ledger(*store, "alice", "192.0.2.5", kT0 + absl::Milliseconds(i),
                                     Failed(500, "x", ClickOutcome::kUpstreamError)));
    }
  }
  for (int filter = 0; filter < 3; ++filter) {
    ClickQuery query;
    query.caller = filter == 1 ? "alice" : "";
    query.ip = filter == 2 ? "192.0.2.5" : "";
    query.limit = 4;
    std::vector<ClickRecord> seen;
    for (int page = 0; page < 10; ++page) {
      absl::StatusOr<std::vector<ClickRecord>> got = ClicksSync(*store, query);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_LE(got->size(), 4u);
      seen.insert(seen.end(), got->begin(), got->end());
      if (got->size() < 4) {
        break;
      }
      query.after = ClickCursor{got->back().requested_at, got->back().id};
    }
    std::vector<int64_t> expected = all;
    std::vector<int64_t> ids = Ids(seen);
    EXPECT_EQ(ids.size(), expected.size()) << "filter " << filter;
    for (size_t i = 0; i + 1 < seen.size(); ++i) {
      const bool ordered =
          seen[i].requested_at > seen[i + 1].requested_at ||
          (seen[i].requested_at == seen[i + 1].requested_at && seen[i].id > seen[i + 1].id);
      EXPECT_TRUE(ordered) << "filter " << filter << " at " << i;
    }
    std::sort(ids.begin(), ids.end());
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(ids, expected) << "filter " << filter << ": every click once";
  }
}

TEST_P(VerdictStoreContractTest, ClicksLimitMustBePositive) {
  std::unique_ptr<VerdictStore> store = Open();
  ASSERT_NE(store, nullptr);
  ClickQuery query;
  query.limit = 0;
  EXPECT_EQ(ClicksSync(*store, query).status().code(), absl::StatusCode::kInvalidArgument);
  query.limit = -1;
  EXPECT_EQ(ClicksSync(*store, query).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace verdictd
