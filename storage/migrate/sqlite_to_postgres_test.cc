#include "storage/migrate/sqlite_to_postgres.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/postgres/postgres_store.h"
#include "storage/sqlite/sqlite_store.h"
#include "storage/verdict_store.h"
#include "tests/support/postgres_cluster.h"

namespace verdictd {
namespace {

using ::testing::HasSubstr;
using testing::PostgresCluster;

// Waits for one write's callback (the store answers on its own thread).
absl::Status AwaitDone(const std::function<void(VerdictStore::DoneCallback)>& start) {
  absl::Notification done;
  absl::Status status;
  start([&](absl::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return status;
}

class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "verdictd_migrate_XXXXXX").string();
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

const absl::Time kDay = absl::FromCivil(absl::CivilDay(2026, 11, 20), absl::UTCTimeZone());

Verdict MakeVerdict(const std::string& ip, absl::Time at, std::string user_agent,
                    const std::string& caller, Score score) {
  Verdict v;
  v.ip = ip;
  v.assessment.score = score;
  v.assessment.proxy = score == Score::kFake;
  v.assessment.tor = at > kDay + absl::Hours(5);
  v.assessment.vpn = true;
  v.assessment.crawler = false;
  v.assessment.bot = score != Score::kSafe;
  v.checked_at = at;
  v.user_agent = std::move(user_agent);
  v.caller = caller;
  return v;
}

// Every field, so that a column the copy drops or mangles is seen.
void ExpectSameVerdict(const Verdict& a, const Verdict& b) {
  EXPECT_EQ(a.ip, b.ip);
  EXPECT_TRUE(a.assessment == b.assessment) << a.ip << " at " << a.checked_at;
  EXPECT_EQ(a.checked_at, b.checked_at);
  EXPECT_EQ(a.user_agent, b.user_agent);
  EXPECT_EQ(a.caller, b.caller);
}

struct Snapshot {
  std::map<std::string, std::vector<HistoryEntry>> history;
  std::map<std::string, std::optional<Verdict>> latest;  // key: ip + '|' + user agent or "*"
  std::vector<DailyUsage> usage;
  VerdictStore::ClickCounts clicks_since_start;
  VerdictStore::ClickCounts clicks_since_midday;
  std::string secret;
};

const std::vector<std::string> kIps = {"192.0.2.1", "192.0.2.2", "2001:db8::7", "198.51.100.9"};
// Bytes a user agent may hold that COPY's text format must escape, or that are not UTF-8.
const std::vector<std::string> kUserAgents = {"", "Mozilla/5.0 (X11)",
                                              std::string("tab\there\nnewline\\back\rslash"),
                                              std::string("nul\0byte\xff\xfe", 10)};

Snapshot Read(VerdictStore& store) {
  Snapshot s;
  for (const std::string& ip : kIps) {
    HistoryQuery query;
    query.ip = ip;
    query.limit = 1000;
    absl::StatusOr<std::vector<HistoryEntry>> history =
        AwaitRead<std::vector<HistoryEntry>>([&](auto done) { store.History(query, done); });
    EXPECT_TRUE(history.ok()) << history.status();
    s.history[ip] = history.ok() ? *history : std::vector<HistoryEntry>();
    std::vector<std::optional<std::string>> agents = {std::nullopt};
    agents.insert(agents.end(), kUserAgents.begin(), kUserAgents.end());
    for (const std::optional<std::string>& ua : agents) {
      absl::StatusOr<std::optional<Verdict>> latest =
          AwaitRead<std::optional<Verdict>>([&](auto done) { store.LatestFor(ip, ua, done); });
      EXPECT_TRUE(latest.ok()) << latest.status();
      s.latest[absl::StrCat(ip, "|", ua.has_value() ? *ua : "*")] =
          latest.ok() ? *latest : std::nullopt;
    }
  }
  absl::StatusOr<std::vector<DailyUsage>> usage = AwaitRead<std::vector<DailyUsage>>(
      [&](auto done) { store.Usage("", absl::InfinitePast(), absl::InfiniteFuture(), done); });
  EXPECT_TRUE(usage.ok()) << usage.status();
  s.usage = usage.ok() ? *usage : std::vector<DailyUsage>();
  for (auto [since, out] : {std::make_pair(kDay - absl::Hours(48), &s.clicks_since_start),
                            std::make_pair(kDay + absl::Hours(12), &s.clicks_since_midday)}) {
    absl::StatusOr<VerdictStore::ClickCounts> clicks = AwaitRead<VerdictStore::ClickCounts>(
        [&, since = since](auto done) { store.ClicksSince(since, done); });
    EXPECT_TRUE(clicks.ok()) << clicks.status();
    *out = clicks.ok() ? *clicks : VerdictStore::ClickCounts();
  }
  absl::StatusOr<std::string> secret =
      AwaitRead<std::string>([&](auto done) { store.Secret("page_token_key", 32, done); });
  EXPECT_TRUE(secret.ok()) << secret.status();
  s.secret = secret.ok() ? *secret : "";
  return s;
}

void ExpectSameSnapshot(const Snapshot& want, const Snapshot& got) {
  for (const auto& [ip, entries] : want.history) {
    SCOPED_TRACE(ip);
    const std::vector<HistoryEntry>& other = got.history.at(ip);
    ASSERT_EQ(entries.size(), other.size());
    for (size_t i = 0; i < entries.size(); ++i) {
      EXPECT_EQ(entries[i].id, other[i].id) << "ids are preserved";
      ExpectSameVerdict(entries[i].verdict, other[i].verdict);
    }
  }
  for (const auto& [key, latest] : want.latest) {
    SCOPED_TRACE(key);
    const std::optional<Verdict>& other = got.latest.at(key);
    ASSERT_EQ(latest.has_value(), other.has_value());
    if (latest.has_value()) ExpectSameVerdict(*latest, *other);
  }
  ASSERT_EQ(want.usage.size(), got.usage.size());
  for (size_t i = 0; i < want.usage.size(); ++i) {
    const DailyUsage& a = want.usage[i];
    const DailyUsage& b = got.usage[i];
    SCOPED_TRACE(absl::StrCat(a.caller, " ", absl::FormatCivilTime(a.day)));
    EXPECT_EQ(a.caller, b.caller);
    EXPECT_EQ(a.day, b.day);
    EXPECT_EQ(a.counts.clicks, b.counts.clicks);
    EXPECT_EQ(a.counts.upstream_errors, b.counts.upstream_errors);
    EXPECT_EQ(a.counts.cache_hits, b.counts.cache_hits);
    EXPECT_EQ(a.counts.requests, b.counts.requests);
  }
  EXPECT_EQ(want.clicks_since_start, got.clicks_since_start);
  EXPECT_EQ(want.clicks_since_midday, got.clicks_since_midday);
  EXPECT_EQ(want.secret, got.secret) << "page tokens must survive the move";
}

class MigrateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    VERDICTD_REQUIRE_POSTGRES();
    absl::StatusOr<PostgresCluster*> cluster = PostgresCluster::Shared();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *cluster;
    static std::atomic<int> next{0};
    dbname_ = absl::StrCat("migrate_", getpid(), "_", next++);
    ASSERT_TRUE(cluster_->CreateDatabase(dbname_).ok());
    uri_ = cluster_->Uri(dbname_);
    sqlite_path_ = dir_.File("verdicts.db");
  }

  // A SQLite store with history (several verdicts per IP and user agent), a ledger with every
  // outcome (verdict, upstream error, pending, not sent), batched usage and a secret; closed.
  void FillSqlite() {
    SqliteStoreOptions options;
    options.path = sqlite_path_;
    absl::StatusOr<std::unique_ptr<VerdictStore>> opened = OpenSqliteStore(options);
    ASSERT_TRUE(opened.ok()) << opened.status();
    VerdictStore& store = **opened;
    int n = 0;
    for (const std::string& ip : kIps) {
      for (const std::string& ua : kUserAgents) {
        for (int k = 0; k < 3; ++k, ++n) {
          const absl::Time at = kDay + absl::Minutes(47 * n);  // spans two days
          const std::string caller = n % 3 == 0 ? "alice" : (n % 3 == 1 ? "bob" : "carol\tx");
          absl::StatusOr<int64_t> click = AwaitRead<int64_t>(
              [&](auto done) { store.BeginClick(caller, ip, at - absl::Seconds(1), done); });
          ASSERT_TRUE(click.ok()) << click.status();
          ClickCompletion completion;
          completion.latency = absl::Milliseconds(120 + n);
          switch (n % 4) {
            case 0:
            case 1:
              completion.outcome = ClickOutcome::kVerdict;
              completion.http_status = 200;
              completion.verdict = MakeVerdict(ip, at, ua, caller, static_cast<Score>(1 + n % 3));
              completion.raw_body = absl::StrCat("{\"n\":", n, ",\"tab\":\"\t\"}");
              break;
            case 2:
              completion.outcome = ClickOutcome::kUpstreamError;
              completion.http_status = 503;
              completion.error = "HTTP 503\nfrom \\upstream";
              break;
            case 3:
              if (k == 2) continue;  // left pending: billed, never completed
              completion.outcome = ClickOutcome::kNotSent;
              completion.error = "connect refused";
              break;
          }
          ASSERT_TRUE(AwaitDone([&](auto done) {
                        store.CompleteClick(*click, std::move(completion), done);
                      }).ok());
        }
      }
    }
    std::vector<UsageDelta> deltas = {
        {"alice", absl::CivilDay(2026, 11, 20), 40, 55},
        {"bob", absl::CivilDay(2026, 11, 21), 3, 9},
        {"dave", absl::CivilDay(2026, 11, 19), 7, 7},  // hits only, no clicks
    };
    ASSERT_TRUE(AwaitDone([&](auto done) { store.AddUsage(deltas, done); }).ok());
    sqlite_ = Read(store);
    ASSERT_EQ(sqlite_.secret.size(), 32u);
    store.Flush();
  }

  MigrationOptions Options() {
    MigrationOptions options;
    options.sqlite_path = sqlite_path_;
    options.postgres_uri = uri_;
    options.progress_every = 7;
    options.progress = [this](const MigrationProgress& p) { progress_.push_back(p); };
    return options;
  }

  absl::StatusOr<std::unique_ptr<VerdictStore>> OpenPg() {
    PostgresStoreOptions options;
    options.uri = uri_;
    return OpenPostgresStore(options);
  }

  std::string Count(const std::string& table_sql) {
    absl::StatusOr<std::string> count = cluster_->Query(dbname_, table_sql);
    EXPECT_TRUE(count.ok()) << count.status();
    return count.ok() ? *count : "?";
  }

  PostgresCluster* cluster_ = nullptr;
  std::string dbname_;
  std::string uri_;
  TempDir dir_;
  std::string sqlite_path_;
  Snapshot sqlite_;
  std::vector<MigrationProgress> progress_;
};

TEST_F(MigrateTest, CopiesEverythingTheStoreAnswersExactly) {
  ASSERT_NO_FATAL_FAILURE(FillSqlite());
  absl::StatusOr<MigrationReport> report = MigrateSqliteToPostgres(Options());
  ASSERT_TRUE(report.ok()) << report.status();

  ASSERT_EQ(report->tables.size(), 4u);
  std::map<std::string, int64_t> copied;
  for (const TableCounts& t : report->tables) {
    EXPECT_EQ(t.source, t.target) << t.table;
    copied[t.table] = t.target;
  }
  // 4 IPs x 4 user agents x 3 clicks, every one in the ledger (pending ones included); half
  // of them produced a verdict.
  EXPECT_EQ(copied["clicks"], 48);
  EXPECT_EQ(copied["verdicts"], 24);
  EXPECT_EQ(copied["meta"], 1) << "the page-token key";
  EXPECT_EQ(report->source_usage.requests, 71);
  EXPECT_EQ(report->target_usage.clicks, report->source_usage.clicks);
  EXPECT_EQ(Count("SELECT count(*) FROM clicks WHERE outcome = 0"), "4") << "pending stays pending";

  // Progress: each table from 0 to its total, never past it.
  std::map<std::string, int64_t> last;
  for (const MigrationProgress& p : progress_) {
    EXPECT_LE(p.copied, p.total) << p.table;
    EXPECT_GE(p.copied, last[p.table]) << p.table;
    last[p.table] = p.copied;
  }
  EXPECT_EQ(last, copied);

  absl::StatusOr<std::unique_ptr<VerdictStore>> pg = OpenPg();
  ASSERT_TRUE(pg.ok()) << pg.status();
  ExpectSameSnapshot(sqlite_, Read(**pg));

  // New rows get ids past the copied ones: the sequences were advanced.
  int64_t max_verdict_id = 0;
  for (const auto& [ip, entries] : sqlite_.history) {
    for (const HistoryEntry& e : entries) max_verdict_id = std::max(max_verdict_id, e.id);
  }
  absl::StatusOr<int64_t> click = AwaitRead<int64_t>(
      [&](auto done) { (*pg)->BeginClick("alice", "192.0.2.1", kDay + absl::Hours(30), done); });
  ASSERT_TRUE(click.ok()) << click.status();
  EXPECT_GT(*click, 48);
  ClickCompletion completion;
  completion.outcome = ClickOutcome::kVerdict;
  completion.http_status = 200;
  completion.verdict = MakeVerdict("192.0.2.1", kDay + absl::Hours(30), "", "alice", Score::kSafe);
  ASSERT_TRUE(AwaitDone([&](auto done) { (*pg)->CompleteClick(*click, completion, done); }).ok());
  HistoryQuery query;
  query.ip = "192.0.2.1";
  query.limit = 1;
  absl::StatusOr<std::vector<HistoryEntry>> newest =
      AwaitRead<std::vector<HistoryEntry>>([&](auto done) { (*pg)->History(query, done); });
  ASSERT_TRUE(newest.ok() && newest->size() == 1) << newest.status();
  EXPECT_GT(newest->front().id, max_verdict_id);
}

TEST_F(MigrateTest, NonEmptyTargetIsRefusedAndLeftAsItWas) {
  ASSERT_NO_FATAL_FAILURE(FillSqlite());
  ASSERT_TRUE(MigrateSqliteToPostgres(Options()).ok());
  const std::string verdicts = Count("SELECT count(*) FROM verdicts");
  const std::string clicks = Count("SELECT count(*) FROM clicks");

  absl::StatusOr<MigrationReport> again = MigrateSqliteToPostgres(Options());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  EXPECT_THAT(again.status().message(), HasSubstr("empty database"));
  EXPECT_EQ(Count("SELECT count(*) FROM verdicts"), verdicts);
  EXPECT_EQ(Count("SELECT count(*) FROM clicks"), clicks);
  absl::StatusOr<std::unique_ptr<VerdictStore>> pg = OpenPg();
  ASSERT_TRUE(pg.ok()) << pg.status();
  ExpectSameSnapshot(sqlite_, Read(**pg));
}

// Usage rows alone make a database non-empty, and its own secret is then left alone too.
TEST_F(MigrateTest, TargetWithOnlyUsageIsRefusedAndKeepsItsSecret) {
  ASSERT_NO_FATAL_FAILURE(FillSqlite());
  std::string pg_secret;
  {
    absl::StatusOr<std::unique_ptr<VerdictStore>> pg = OpenPg();
    ASSERT_TRUE(pg.ok()) << pg.status();
    ASSERT_TRUE(AwaitDone([&](auto done) {
                  (*pg)->AddUsage({{"zed", absl::CivilDay(2026, 11, 1), 1, 1}}, done);
                }).ok());
    absl::StatusOr<std::string> secret =
        AwaitRead<std::string>([&](auto done) { (*pg)->Secret("page_token_key", 32, done); });
    ASSERT_TRUE(secret.ok()) << secret.status();
    pg_secret = *secret;
  }
  absl::StatusOr<MigrationReport> refused = MigrateSqliteToPostgres(Options());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_EQ(Count("SELECT count(*) FROM verdicts"), "0");
  EXPECT_EQ(Count("SELECT count(*) FROM usage"), "1");
  absl::StatusOr<std::unique_ptr<VerdictStore>> pg = OpenPg();
  ASSERT_TRUE(pg.ok()) << pg.status();
  absl::StatusOr<std::string> secret =
      AwaitRead<std::string>([&](auto done) { (*pg)->Secret("page_token_key", 32, done); });
  ASSERT_TRUE(secret.ok()) << secret.status();
  EXPECT_EQ(*secret, pg_secret);
  EXPECT_NE(*secret, sqlite_.secret);
}

// A row that cannot be copied, late in the copy (after every verdict went), fails the whole
// transaction: the target is left empty, and a later migration of the fixed file succeeds.
TEST_F(MigrateTest, FailureHalfWayLeavesTheTargetEmpty) {
  ASSERT_NO_FATAL_FAILURE(FillSqlite());
  auto exec = [this](const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(sqlite_path_.c_str(), &db), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  };
  // SQLite keeps whatever it is given: text in an integer column.
  exec("UPDATE clicks SET http_status = 'teapot' WHERE id = 40");
  absl::StatusOr<MigrationReport> failed = MigrateSqliteToPostgres(Options());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kFailedPrecondition) << failed.status();
  EXPECT_THAT(failed.status().message(), HasSubstr("clicks row 40"));
  for (const char* count : {"SELECT count(*) FROM verdicts", "SELECT count(*) FROM clicks",
                            "SELECT count(*) FROM usage", "SELECT count(*) FROM meta"}) {
    EXPECT_EQ(Count(count), "0") << count;
  }

  exec("UPDATE clicks SET http_status = 418 WHERE id = 40");
  absl::StatusOr<MigrationReport> report = MigrateSqliteToPostgres(Options());
  ASSERT_TRUE(report.ok()) << report.status();
}

// A wrong path is found before the target is touched: no schema is created there.
TEST_F(MigrateTest, MissingSqliteFileTouchesNothing) {
  MigrationOptions options = Options();
  options.sqlite_path = dir_.File("no-such.db");
  absl::StatusOr<MigrationReport> report = MigrateSqliteToPostgres(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kNotFound) << report.status();
  EXPECT_FALSE(std::filesystem::exists(options.sqlite_path)) << "never created";
  EXPECT_EQ(Count("SELECT to_regclass('verdicts') IS NULL"), "t");
}

TEST_F(MigrateTest, UriWithPasswordIsRefused) {
  ASSERT_NO_FATAL_FAILURE(FillSqlite());
  MigrationOptions options = Options();
  options.postgres_uri = "postgresql://verdictd:Pw_Migrate_1d2e@localhost/" + dbname_;
  absl::StatusOr<MigrationReport> report = MigrateSqliteToPostgres(options);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument) << report.status();
  EXPECT_THAT(report.status().message(), ::testing::Not(HasSubstr("Pw_Migrate_1d2e")));
}

// The password travels to the server (scram-sha-256 for a role of this test's own), and a
// wrong or missing one fails without a row written or the password in the message.
TEST_F(MigrateTest, PasswordReachesTheServerAndNoMessage) {
  ASSERT_NO_FATAL_FAILURE(FillSqlite());
  const std::string role = absl::StrCat(dbname_, "_pw");
  const std::string password = "Pw_Scram_Migrate_8f3a";
  // Fixed test SQL (names and password made here, not taken from outside).
  ASSERT_TRUE(cluster_
                  ->Query(dbname_, absl::StrCat("CREATE ROLE ", role, " LOGIN PASSWORD '", password,
                                                "'; ALTER DATABASE ", dbname_, " OWNER TO ", role))
                  .ok());
  {
    // The first matching line wins: this role must authenticate, every other still trusts.
    const std::string hba = cluster_->data_dir() + "/pg_hba.conf";
    std::ifstream in(hba);
    std::stringstream rest;
    rest << in.rdbuf();
    std::ofstream out(hba, std::ios::trunc);
    out << "local all " << role << " scram-sha-256\n" << rest.str();
  }
  ASSERT_TRUE(cluster_->Query("postgres", "SELECT pg_reload_conf()").ok());

  MigrationOptions options = Options();
  options.postgres_uri =
      absl::StrCat("postgresql:///", dbname_, "?host=", cluster_->socket_dir(), "&user=", role);
  options.connect_timeout = absl::Seconds(5);
  for (const std::string& wrong : {std::string(), std::string("Pw_Wrong_Guess_77")}) {
    options.password = wrong;
    absl::StatusOr<MigrationReport> refused = MigrateSqliteToPostgres(options);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
    if (!wrong.empty()) {
      EXPECT_THAT(refused.status().message(), ::testing::Not(HasSubstr(wrong)));
    }
  }
  EXPECT_EQ(Count("SELECT to_regclass('verdicts') IS NULL"), "t") << "nothing was created";

  options.password = password;
  absl::StatusOr<MigrationReport> report = MigrateSqliteToPostgres(options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->tables.front().target, 24);
}

}  // namespace
}  // namespace verdictd
