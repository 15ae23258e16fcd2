// Crash trials: verdictd is SIGKILLed in the middle of a storm of checks, over and over, on one
// shared database file, and after every crash the file is checked with SQLite directly:
//
//   (a) PRAGMA integrity_check is "ok";
//   (b) the ledger's billed clicks (outcome != 3) are at least the requests the simulated
//       ClickPatrol received (cumulative over all trials, one simulator for the whole run):
//       a click is durable before its request leaves, so no request goes unrecorded;
//   (c) every verdict a caller received (ip, checked_at in microseconds, score) is in the
//       verdicts table: a verdict is durable before anyone sees it.
//
// Also checked, because the store promises them: every history row belongs to a click completed
// as a verdict and vice versa (both are written in one transaction); the ledger holds no more
// verdicts than the simulator gave; the per-day click counters (schema 3) agree with the ledger;
// and after the last crash a final restart serves every IP a caller was told about from the
// store (cache_only) and stops cleanly on SIGTERM.
//
// Each trial: simulator latency uniform in [0, --max_latency_ms], verdictd restarted on the same
// file, --callers threads (each its own channel and x-caller) sending CheckIp and CheckBatch
// calls that mix misses (IPs never asked before) and hits (IPs some caller already got a verdict
// for), SIGKILL after a delay uniform in [--min_kill_ms, --max_kill_ms].
//
//   build-h7/bench/crash_trials                # 20 trials
//   build-h7/bench/crash_trials --trials=3     # CI smoke (well under 30 s)
//
// Prints a line per trial and a summary; exits 1 on any violation.

#include <signal.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/bench_support.h"
#include "httplib.h"

ABSL_FLAG(int, trials, 20, "Crash trials (each: start, storm, SIGKILL, check the file)");
ABSL_FLAG(int, callers, 16, "Concurrent callers, each with its own channel and x-caller");
ABSL_FLAG(int, max_latency_ms, 200, "Simulator latency per trial is uniform in [0, this]");
ABSL_FLAG(int, min_kill_ms, 50, "SIGKILL at least this long after the storm starts");
ABSL_FLAG(int, max_kill_ms, 1500, "... and at most this long");
ABSL_FLAG(int, max_batch, 16, "CheckBatch calls carry 2..this items");
ABSL_FLAG(double, hit_fraction, 0.5, "Share of checks that ask for an IP already answered");
ABSL_FLAG(uint64_t, seed, 0, "Random seed (0: from the clock); printed so a run can be repeated");
ABSL_FLAG(std::string, db, "",
          "Use (and keep) this database file instead of one in a temporary directory");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

int64_t MicrosOf(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000 + t.nanos() / 1000;
}

// A verdict as a caller received it.
struct Received {
  std::string ip;
  int64_t checked_at_us = 0;
  int score = 0;
};

// Keyed by ip + checked_at: one history row. Hits return the same row many times.
std::string RowKey(const std::string& ip, int64_t checked_at_us) {
  return absl::StrCat(ip, "@", checked_at_us);
}

// IPs some caller has received a verdict for, shared by all callers and trials.
class KnownIps {
 public:
  void Add(const std::string& ip) {
    absl::MutexLock lock(&mu_);
    if (set_.insert(ip).second) {
      list_.push_back(ip);
    }
  }
  // A random known IP, or "" if none yet.
  std::string Pick(std::mt19937_64& rng) {
    absl::MutexLock lock(&mu_);
    if (list_.empty()) {
      return "";
    }
    return list_[std::uniform_int_distribution<size_t>(0, list_.size() - 1)(rng)];
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return list_.size();
  }

 private:
  absl::Mutex mu_;
  std::unordered_set<std::string> set_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> list_ ABSL_GUARDED_BY(mu_);
};

// What one caller saw in one trial.
struct CallerResult {
  int64_t calls = 0;
  int64_t items = 0;
  int64_t ok_items = 0;
  int64_t hits_asked = 0;
  int64_t misses_asked = 0;
  int64_t errors_before_kill = 0;  // violations: nothing should fail while verdictd runs
  int64_t errors_after_kill = 0;   // expected: the calls the crash cut off
  int64_t wrong_ip = 0;            // a verdict about another IP than asked (violation)
  std::string first_unexpected_error;
  std::vector<Received> received;
};

struct Storm {
  int port = 0;
  const std::atomic<bool>* stop = nullptr;
  const std::atomic<int64_t>* kill_ns = nullptr;  // 0 until the SIGKILL is about to be sent
  std::atomic<uint32_t>* next_fresh = nullptr;
  KnownIps* known = nullptr;
  double hit_fraction = 0.5;
  int max_batch = 16;
};

void RunCaller(const Storm& storm, int index, uint64_t seed, CallerResult* out) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0, 1);
  auto stub = NewStub(storm.port);
  const std::string caller = absl::StrCat("crash-caller-", index);
  auto pick_ip = [&]() {
    if (unit(rng) < storm.hit_fraction) {
      std::string ip = storm.known->Pick(rng);
      if (!ip.empty()) {
        ++out->hits_asked;
        return ip;
      }
    }
    ++out->misses_asked;
    return PublicIp(11, storm.next_fresh->fetch_add(1));
  };
  // Errors that complete before the kill was even decided cannot be the crash's doing.
  auto note_error = [&](const std::string& what) {
    const int64_t killed_at = storm.kill_ns->load();
    if (killed_at == 0 || NowNs() < killed_at) {
      ++out->errors_before_kill;
      if (out->first_unexpected_error.empty()) {
        out->first_unexpected_error = what;
      }
    } else {
      ++out->errors_after_kill;
    }
  };
  auto take = [&](const std::string& asked, const pb::CheckIpResponse& response) {
    ++out->ok_items;
    const pb::Verdict& v = response.verdict();
    if (v.ip() != asked) {
      ++out->wrong_ip;
    }
    out->received.push_back(
        Received{v.ip(), MicrosOf(v.checked_at()), static_cast<int>(v.score())});
    storm.known->Add(v.ip());
  };

  while (!storm.stop->load()) {
    const std::unique_ptr<grpc::ClientContext> context = CallContext(caller, absl::Seconds(10));
    ++out->calls;
    if (unit(rng) < 0.5) {
      pb::CheckIpRequest request;
      request.set_ip(pick_ip());
      pb::CheckIpResponse response;
      ++out->items;
      const grpc::Status status = stub->CheckIp(context.get(), request, &response);
      if (status.ok()) {
        take(request.ip(), response);
      } else {
        note_error(absl::StrCat("CheckIp ", request.ip(), ": code ", status.error_code(), " ",
                                status.error_message()));
      }
      continue;
    }
    pb::CheckBatchRequest request;
    const int n = std::uniform_int_distribution<int>(2, std::max(2, storm.max_batch))(rng);
    for (int i = 0; i < n; ++i) {
      request.add_items()->set_ip(pick_ip());
    }
    out->items += n;
    pb::CheckBatchResponse response;
    const grpc::Status status = stub->CheckBatch(context.get(), request, &response);
    if (!status.ok()) {
      // The whole call failed: every item counts as failed.
      for (int i = 0; i < n; ++i) {
        note_error(
            absl::StrCat("CheckBatch: code ", status.error_code(), " ", status.error_message()));
      }
      continue;
    }
    if (response.results_size() != n) {
      note_error(absl::StrCat("CheckBatch of ", n, " answered ", response.results_size()));
      continue;
    }
    for (int i = 0; i < n; ++i) {
      const pb::CheckBatchResult& r = response.results(i);
      if (r.has_result()) {
        take(request.items(i).ip(), r.result());
      } else {
        note_error(absl::StrCat("CheckBatch item ", request.items(i).ip(), ": code ",
                                r.error().code(), " ", r.error().message()));
      }
    }
  }
}

// A read-only SQLite connection, closed on destruction.
class ReadOnlyDb {
 public:
  static absl::StatusOr<std::unique_ptr<ReadOnlyDb>> Open(const std::string& path) {
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    auto out = std::unique_ptr<ReadOnlyDb>(new ReadOnlyDb(db));
    if (rc != SQLITE_OK) {
      return absl::InternalError(
          absl::StrCat("open ", path, " read-only: ", db != nullptr ? sqlite3_errmsg(db) : "?"));
    }
    sqlite3_busy_timeout(db, 5000);
    return out;
  }
  ~ReadOnlyDb() {
    sqlite3_finalize(lookup_);
    sqlite3_close(db_);
  }
  ReadOnlyDb(const ReadOnlyDb&) = delete;
  ReadOnlyDb& operator=(const ReadOnlyDb&) = delete;

  // The first column of every row, as text.
  absl::StatusOr<std::vector<std::string>> Texts(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
      return Error(sql);
    }
    std::vector<std::string> rows;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      const unsigned char* text = sqlite3_column_text(stmt, 0);
      rows.emplace_back(text != nullptr ? reinterpret_cast<const char*>(text) : "NULL");
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
      return Error(sql);
    }
    return rows;
  }

  absl::StatusOr<int64_t> Int(const std::string& sql) {
    absl::StatusOr<std::vector<std::string>> rows = Texts(sql);
    if (!rows.ok()) {
      return rows.status();
    }
    int64_t value = 0;
    if (rows->size() != 1 || !absl::SimpleAtoi((*rows)[0], &value)) {
      return absl::InternalError(absl::StrCat(sql, ": not one integer"));
    }
    return value;
  }

  // The score stored for the history row (ip, checked_at_us), or -1 if there is none.
  absl::StatusOr<int> ScoreOf(const std::string& ip, int64_t checked_at_us) {
    if (lookup_ == nullptr &&
        sqlite3_prepare_v2(db_,
                           "SELECT score FROM verdicts WHERE ip = ?1 AND checked_at_us = ?2 "
                           "ORDER BY id DESC LIMIT 1",
                           -1, &lookup_, nullptr) != SQLITE_OK) {
      return Error("prepare lookup");
    }
    sqlite3_reset(lookup_);
    sqlite3_bind_text(lookup_, 1, ip.data(), static_cast<int>(ip.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(lookup_, 2, checked_at_us);
    const int rc = sqlite3_step(lookup_);
    if (rc == SQLITE_ROW) {
      return sqlite3_column_int(lookup_, 0);
    }
    if (rc == SQLITE_DONE) {
      return -1;
    }
    return Error("lookup");
  }

  bool HasColumn(const std::string& table, const std::string& column) {
    absl::StatusOr<std::vector<std::string>> names =
        Texts(absl::StrCat("SELECT name FROM pragma_table_info('", table, "')"));
    return names.ok() && std::find(names->begin(), names->end(), column) != names->end();
  }

 private:
  explicit ReadOnlyDb(sqlite3* db) : db_(db) {}
  absl::Status Error(const std::string& what) {
    return absl::InternalError(absl::StrCat(what, ": ", sqlite3_errmsg(db_)));
  }
  sqlite3* db_;
  sqlite3_stmt* lookup_ = nullptr;
};

absl::Status SetSimLatency(int sim_port, int latency_ms) {
  httplib::Client client("127.0.0.1", sim_port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  httplib::Result result = client.Post(
      "/_sim/config", nlohmann::json{{"latency_ms", latency_ms}}.dump(), "application/json");
  if (!result || result->status != 200) {
    return absl::UnavailableError("POST /_sim/config failed");
  }
  return absl::OkStatus();
}

// Simulator counters once nothing is in flight and `requests` has stopped moving: a request
// verdictd wrote before it died may still be on its way in (a kill cannot unsend it), and
// reading too early could hide a click the ledger lacks.
absl::StatusOr<nlohmann::json> SettledSimStats(int sim_port) {
  const int64_t deadline = NowNs() + int64_t{10} * 1'000'000'000;
  absl::StatusOr<nlohmann::json> previous = SimStats(sim_port);
  while (true) {
    absl::SleepFor(absl::Milliseconds(50));
    absl::StatusOr<nlohmann::json> now = SimStats(sim_port);
    if (!previous.ok() || !now.ok()) {
      return now.ok() ? previous.status() : now.status();
    }
    if (now->at("in_flight").get<int64_t>() == 0 &&
        now->at("requests").get<int64_t>() == previous->at("requests").get<int64_t>()) {
      return now;
    }
    if (NowNs() > deadline) {
      return absl::DeadlineExceededError("simulator requests still moving after 10 s");
    }
    previous = std::move(now);
  }
}

struct Totals {
  int trials = 0;
  int integrity_ok = 0;
  int restarts_ok = 0;
  int64_t calls = 0;
  int64_t items = 0;
  int64_t verdicts_received = 0;  // answers, hits included
  int64_t errors_after_kill = 0;
  int64_t clicks = 0;  // ledger, billed, after the last trial
  int64_t pending_clicks = 0;
  int64_t sim_requests = 0;
  int64_t sim_verdicts = 0;
  size_t rows_received = 0;  // distinct history rows callers were told about
  size_t rows_found = 0;
  std::vector<std::string> violations;
};

// Checks the file after a crash; adds violations to `totals`. Returns a one-line summary.
std::string CheckFile(const std::string& db_path, int sim_port,
                      const std::unordered_map<std::string, Received>& rows, Totals& totals,
                      const std::string& trial) {
  auto violation = [&](const std::string& what) {
    totals.violations.push_back(absl::StrCat(trial, ": ", what));
  };
  absl::StatusOr<nlohmann::json> stats = SettledSimStats(sim_port);
  if (!stats.ok()) {
    violation(absl::StrCat("simulator stats: ", stats.status().ToString()));
    return "simulator stats unavailable";
  }
  const int64_t sim_requests = stats->at("requests").get<int64_t>();
  const int64_t sim_verdicts = stats->at("verdicts").get<int64_t>();

  absl::StatusOr<std::unique_ptr<ReadOnlyDb>> db = ReadOnlyDb::Open(db_path);
  if (!db.ok()) {
    violation(db.status().ToString());
    return "cannot open the file";
  }
  std::string line;
  // (a)
  absl::StatusOr<std::vector<std::string>> integrity = (*db)->Texts("PRAGMA integrity_check");
  const bool integrity_ok = integrity.ok() && integrity->size() == 1 && (*integrity)[0] == "ok";
  if (integrity_ok) {
    ++totals.integrity_ok;
  } else {
    violation(absl::StrCat("integrity_check: ", integrity.ok() ? absl::StrJoin(*integrity, "; ")
                                                               : integrity.status().ToString()));
  }
  absl::StrAppend(&line, "integrity ", integrity_ok ? "ok" : "FAILED");

  // (b)
  absl::StatusOr<int64_t> clicks = (*db)->Int("SELECT count(*) FROM clicks WHERE outcome != 3");
  absl::StatusOr<int64_t> pending = (*db)->Int("SELECT count(*) FROM clicks WHERE outcome = 0");
  absl::StatusOr<int64_t> verdict_clicks =
      (*db)->Int("SELECT count(*) FROM clicks WHERE outcome = 1");
  absl::StatusOr<int64_t> history = (*db)->Int("SELECT count(*) FROM verdicts");
  absl::StatusOr<int64_t> orphans = (*db)->Int(
      "SELECT count(*) FROM verdicts v LEFT JOIN clicks c ON c.id = v.click_id "
      "WHERE c.id IS NULL OR c.outcome != 1");
  if (!clicks.ok() || !pending.ok() || !verdict_clicks.ok() || !history.ok() || !orphans.ok()) {
    for (const absl::Status& s : {clicks.status(), pending.status(), verdict_clicks.status(),
                                  history.status(), orphans.status()}) {
      if (!s.ok()) {
        violation(s.ToString());
      }
    }
    return line + ", ledger unreadable";
  }
  totals.clicks = *clicks;
  totals.pending_clicks = *pending;
  totals.sim_requests = sim_requests;
  totals.sim_verdicts = sim_verdicts;
  absl::StrAppend(&line, " | clicks ", *clicks, " (pending ", *pending, ") ",
                  *clicks >= sim_requests ? ">=" : "<", " sim requests ", sim_requests);
  if (*clicks < sim_requests) {
    violation(absl::StrCat("ledger has ", *clicks, " billed clicks but the simulator received ",
                           sim_requests, " requests"));
  }
  // The store's own promises: history rows and verdict clicks are written together.
  if (*history != *verdict_clicks || *orphans != 0) {
    violation(absl::StrCat("history rows ", *history, " vs clicks completed as verdicts ",
                           *verdict_clicks, ", rows without such a click ", *orphans));
  }
  if (*verdict_clicks > sim_verdicts) {
    violation(absl::StrCat("ledger has ", *verdict_clicks, " verdicts but the simulator only gave ",
                           sim_verdicts));
  }
  if ((*db)->HasColumn("usage", "clicks")) {
    absl::StatusOr<int64_t> counted = (*db)->Int("SELECT coalesce(sum(clicks), 0) FROM usage");
    absl::StatusOr<int64_t> errors =
        (*db)->Int("SELECT coalesce(sum(upstream_errors), 0) FROM usage");
    absl::StatusOr<int64_t> ledger_errors =
        (*db)->Int("SELECT count(*) FROM clicks WHERE outcome = 2");
    if (!counted.ok() || !errors.ok() || !ledger_errors.ok()) {
      violation("usage counters unreadable");
    } else if (*counted != *clicks || *errors != *ledger_errors) {
      violation(absl::StrCat("per-day counters say ", *counted, " clicks and ", *errors,
                             " upstream errors; the ledger ", *clicks, " and ", *ledger_errors));
    }
  }

  // (c): every row any caller was told about, in every trial so far.
  size_t found = 0;
  int reported = 0;
  for (const auto& [key, r] : rows) {
    absl::StatusOr<int> score = (*db)->ScoreOf(r.ip, r.checked_at_us);
    if (!score.ok()) {
      violation(score.status().ToString());
      break;
    }
    if (*score == r.score) {
      ++found;
    } else if (reported++ < 5) {
      violation(*score < 0 ? absl::StrCat("verdict ", key, " received but not stored")
                           : absl::StrCat("verdict ", key, " received with score ", r.score,
                                          ", stored with ", *score));
    }
  }
  if (found != rows.size()) {
    violation(absl::StrCat(rows.size() - found, " received verdicts are missing"));
  }
  totals.rows_received = rows.size();
  totals.rows_found = found;
  absl::StrAppend(&line, " | verdicts found ", found, "/", rows.size());
  return line;
}

int Main() {
  const int trials = absl::GetFlag(FLAGS_trials);
  const int callers = absl::GetFlag(FLAGS_callers);
  const int max_latency = absl::GetFlag(FLAGS_max_latency_ms);
  const int min_kill = absl::GetFlag(FLAGS_min_kill_ms);
  const int max_kill = absl::GetFlag(FLAGS_max_kill_ms);
  if (trials < 1 || callers < 1 || max_latency < 0 || min_kill < 0 || max_kill < min_kill) {
    Die("need --trials >= 1, --callers >= 1, 0 <= --min_kill_ms <= --max_kill_ms");
  }
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) {
    seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  }
  std::mt19937_64 rng(seed);

  TempDir dir;
  const std::string db_path =
      absl::GetFlag(FLAGS_db).empty() ? dir.File("shared.db") : absl::GetFlag(FLAGS_db);
  // One simulator for the whole run: its request counter is the cumulative count to compare
  // with the ledger, which also spans every trial.
  absl::StatusOr<Server> sim = StartSimulator(dir, {"--threads=256"});
  if (!sim.ok()) Die("simulator", sim.status());
  std::cout << absl::StrFormat(
                   "crash_trials: %d trials, %d callers, latency 0-%d ms, SIGKILL after %d-%d "
                   "ms, hit share %.2f, seed %d, db %s",
                   trials, callers, max_latency, min_kill, max_kill,
                   absl::GetFlag(FLAGS_hit_fraction), seed, db_path)
            << std::endl;

  KnownIps known;
  std::atomic<uint32_t> next_fresh{static_cast<uint32_t>(rng() % 1000) * 10'000 + 1};
  std::unordered_map<std::string, Received> rows;  // every row received, all trials
  Totals totals;
  const int64_t run_start = NowNs();

  for (int t = 1; t <= trials; ++t) {
    const std::string trial = absl::StrFormat("trial %2d/%d", t, trials);
    const int latency = std::uniform_int_distribution<int>(0, max_latency)(rng);
    const int kill_after = std::uniform_int_distribution<int>(min_kill, max_kill)(rng);
    if (absl::Status s = SetSimLatency(sim->port, latency); !s.ok()) Die("simulator config", s);

    absl::StatusOr<Server> verdictd =
        StartVerdictd(dir, sim->port, {"--db=" + db_path, "--log_level=warn"});
    if (!verdictd.ok()) {
      // A file the server refuses after a crash is exactly what the trials look for.
      totals.violations.push_back(
          absl::StrCat(trial, ": verdictd did not start: ", verdictd.status().ToString()));
      std::cout << trial << ": verdictd did not start: " << verdictd.status() << std::endl;
      break;
    }
    ++totals.restarts_ok;
    ++totals.trials;

    std::atomic<bool> stop{false};
    std::atomic<int64_t> kill_ns{0};
    Storm storm;
    storm.port = verdictd->port;
    storm.stop = &stop;
    storm.kill_ns = &kill_ns;
    storm.next_fresh = &next_fresh;
    storm.known = &known;
    storm.hit_fraction = absl::GetFlag(FLAGS_hit_fraction);
    storm.max_batch = absl::GetFlag(FLAGS_max_batch);
    std::vector<CallerResult> results(callers);
    std::vector<std::thread> threads;
    for (int c = 0; c < callers; ++c) {
      threads.emplace_back(RunCaller, std::cref(storm), c, rng(), &results[c]);
    }
    // The crash lands at a random point of the storm; this sleep is the experiment, not a wait.
    absl::SleepFor(absl::Milliseconds(kill_after));
    kill_ns.store(NowNs());
    kill(verdictd->pid(), SIGKILL);
    verdictd->Stop();  // reaps it (already dead: no SIGTERM effect) and forgets the pid
    stop.store(true);
    for (std::thread& thread : threads) {
      thread.join();
    }

    CallerResult trial_sum;
    for (CallerResult& r : results) {
      trial_sum.calls += r.calls;
      trial_sum.items += r.items;
      trial_sum.ok_items += r.ok_items;
      trial_sum.hits_asked += r.hits_asked;
      trial_sum.misses_asked += r.misses_asked;
      trial_sum.errors_before_kill += r.errors_before_kill;
      trial_sum.errors_after_kill += r.errors_after_kill;
      trial_sum.wrong_ip += r.wrong_ip;
      if (trial_sum.first_unexpected_error.empty()) {
        trial_sum.first_unexpected_error = r.first_unexpected_error;
      }
      for (Received& v : r.received) {
        const std::string key = RowKey(v.ip, v.checked_at_us);
        auto [it, inserted] = rows.emplace(key, v);
        if (!inserted && it->second.score != v.score) {
          totals.violations.push_back(absl::StrCat(trial, ": row ", key, " received with scores ",
                                                   it->second.score, " and ", v.score));
        }
      }
    }
    totals.calls += trial_sum.calls;
    totals.items += trial_sum.items;
    totals.verdicts_received += trial_sum.ok_items;
    totals.errors_after_kill += trial_sum.errors_after_kill;
    if (trial_sum.errors_before_kill > 0) {
      totals.violations.push_back(absl::StrCat(
          trial, ": ", trial_sum.errors_before_kill,
          " checks failed before the kill, first: ", trial_sum.first_unexpected_error));
    }
    if (trial_sum.wrong_ip > 0) {
      totals.violations.push_back(
          absl::StrCat(trial, ": ", trial_sum.wrong_ip, " verdicts about another IP"));
    }

    const size_t violations_before = totals.violations.size();
    const std::string checked = CheckFile(db_path, sim->port, rows, totals, trial);
    std::cout << absl::StrFormat(
                     "%s: latency %3d ms, kill at %4d ms | %5d calls, %6d checks (%d hits, %d "
                     "misses), %d answered, %d cut off | %s | %s",
                     trial, latency, kill_after, trial_sum.calls, trial_sum.items,
                     trial_sum.hits_asked, trial_sum.misses_asked, trial_sum.ok_items,
                     trial_sum.errors_after_kill, checked,
                     totals.violations.size() == violations_before &&
                             trial_sum.errors_before_kill == 0 && trial_sum.wrong_ip == 0
                         ? "OK"
                         : "VIOLATION")
              << std::endl;
  }

  // After the last crash: the file must still serve. Every IP a caller was told about must be
  // answered from the store alone, with a verdict no older than the newest one received.
  std::string final_line = "final restart: not attempted (an earlier start failed)";
  if (totals.restarts_ok == totals.trials && totals.trials == trials) {
    absl::StatusOr<Server> verdictd =
        StartVerdictd(dir, sim->port, {"--db=" + db_path, "--log_level=warn"});
    if (!verdictd.ok()) {
      totals.violations.push_back(
          absl::StrCat("final restart failed: ", verdictd.status().ToString()));
      final_line = "final restart: FAILED";
    } else {
      std::unordered_map<std::string, int64_t> newest;
      for (const auto& [key, r] : rows) {
        int64_t& n = newest[r.ip];
        n = std::max(n, r.checked_at_us);
      }
      std::vector<std::string> ips;
      for (const auto& [ip, at] : newest) {
        ips.push_back(ip);
      }
      auto stub = NewStub(verdictd->port);
      int64_t served = 0;
      int64_t wrong = 0;
      for (size_t i = 0; i < ips.size(); i += 500) {
        pb::CheckBatchRequest request;
        for (size_t j = i; j < std::min(ips.size(), i + 500); ++j) {
          pb::CheckIpRequest* item = request.add_items();
          item->set_ip(ips[j]);
          item->set_cache_only(true);
        }
        const std::unique_ptr<grpc::ClientContext> context =
            CallContext("crash-final", absl::Seconds(30));
        pb::CheckBatchResponse response;
        const grpc::Status status = stub->CheckBatch(context.get(), request, &response);
        if (!status.ok() || response.results_size() != request.items_size()) {
          totals.violations.push_back(
              absl::StrCat("final restart: CheckBatch failed: ", status.error_message()));
          break;
        }
        for (int j = 0; j < response.results_size(); ++j) {
          const pb::CheckBatchResult& r = response.results(j);
          const std::string& ip = request.items(j).ip();
          if (r.has_result() && r.result().verdict().ip() == ip &&
              MicrosOf(r.result().verdict().checked_at()) >= newest[ip]) {
            ++served;
          } else if (wrong++ < 5) {
            totals.violations.push_back(absl::StrCat(
                "final restart: ", ip, ": ",
                r.has_result() ? "an older verdict than one received" : r.error().message()));
          }
        }
      }
      const pid_t pid = verdictd->pid();
      absl::StatusOr<int> code = verdictd->process->Terminate(absl::Seconds(20));
      verdictd->Stop();
      if (!code.ok() || *code != 0) {
        totals.violations.push_back(absl::StrCat(
            "final restart: verdictd (pid ", pid, ") did not stop cleanly on SIGTERM: ",
            code.ok() ? absl::StrCat("exit ", *code) : code.status().ToString()));
      }
      final_line = absl::StrCat("final restart: ", served, "/", ips.size(),
                                " IPs served from the store (cache_only), SIGTERM exit ",
                                code.ok() ? absl::StrCat(*code) : "timeout");
    }
  }
  sim->Stop();

  const double seconds = static_cast<double>(NowNs() - run_start) / 1e9;
  std::cout << final_line << std::endl;
  std::cout << "\n=== crash trials summary (seed " << seed << ", "
            << absl::StrFormat("%.1f", seconds) << " s)\n"
            << absl::StrFormat("trials                      %d (restarts on the same file: %d)\n",
                               totals.trials, totals.restarts_ok)
            << absl::StrFormat("integrity_check ok          %d/%d\n", totals.integrity_ok,
                               totals.trials)
            << absl::StrFormat(
                   "ledger clicks (billed)      %d (pending after the last crash: %d)\n",
                   totals.clicks, totals.pending_clicks)
            << absl::StrFormat("simulator requests          %d (verdicts %d)\n",
                               totals.sim_requests, totals.sim_verdicts)
            << absl::StrFormat("calls / checks              %d / %d (%d cut off by kills)\n",
                               totals.calls, totals.items, totals.errors_after_kill)
            << absl::StrFormat("verdicts received           %d answers, %d distinct rows\n",
                               totals.verdicts_received, totals.rows_received)
            << absl::StrFormat("verdicts found in the file  %d/%d\n", totals.rows_found,
                               totals.rows_received)
            << absl::StrFormat("violations                  %d\n", totals.violations.size());
  for (const std::string& v : totals.violations) {
    std::cout << "  VIOLATION " << v << "\n";
  }
  const bool ok = totals.violations.empty() && totals.trials == trials;
  std::cout << (ok ? "PASS" : "FAIL") << std::endl;
  PrintResult("crash_trials", "violations", absl::StrCat(totals.violations.size()), "0",
              PassFail(ok));
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace verdictd::bench

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  return verdictd::bench::Main();
}
