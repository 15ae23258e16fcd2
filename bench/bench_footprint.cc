// Benchmark 5, footprint: a database with --rows history rows (written directly with SQLite in
// verdictd's own schema: verdictd creates the file first, then the rows go in one transaction),
// then verdictd's start-up time (spawn -> port file written) and RSS after start and after
// --hits CheckIp hits on random stored IPs.
//
//   build-bench/bench/bench_footprint            # 1,000,000 rows over 250,000 IPs, 10,000 hits
//   build-bench/bench/bench_footprint --smoke    # 50,000 rows, 1,000 hits

#include <sys/stat.h>

#include <atomic>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench/bench_support.h"
#include "sqlite3.h"

ABSL_FLAG(int, rows, 1'000'000, "History rows to write");
ABSL_FLAG(int, ips, 250'000, "Distinct IPs the rows are spread over");
ABSL_FLAG(bool, with_clicks, true, "Write a ledger row for every history row too");
ABSL_FLAG(int, hits, 10'000, "CheckIp hits on random stored IPs after start-up");
ABSL_FLAG(int, hit_threads, 8, "Concurrent callers for the hits");
ABSL_FLAG(int, starts, 3, "verdictd start-ups to time (the first also takes the hits)");
ABSL_FLAG(bool, smoke, false, "CI mode: 50,000 rows over 12,500 IPs, 1,000 hits, 1 start");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

absl::Status Exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status status = absl::InternalError(absl::StrCat(sql, ": ", error ? error : "?"));
    sqlite3_free(error);
    return status;
  }
  return absl::OkStatus();
}

// Writes the rows: row i is for IP index i % ips, 1 ms after row i-1, the newest now.
absl::Status Fill(const std::string& path, int rows, int ips, bool with_clicks) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("open ", path));
  }
  absl::Status status = Exec(db, "PRAGMA cache_size=-262144");
  if (status.ok()) status = Exec(db, "BEGIN");
  sqlite3_stmt* verdict = nullptr;
  sqlite3_stmt* click = nullptr;
  if (status.ok() &&
      (sqlite3_prepare_v2(db,
                          "INSERT INTO verdicts(ip, user_agent, score, proxy, tor, vpn, crawler, "
                          "bot, checked_at_us, caller, raw_body, click_id) "
                          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                          -1, &verdict, nullptr) != SQLITE_OK ||
       sqlite3_prepare_v2(db,
                          "INSERT INTO clicks(caller, ip, requested_at_us, completed_at_us, "
                          "outcome, http_status, error, latency_us) "
                          "VALUES (?1, ?2, ?3, ?4, 1, 200, '', ?5)",
                          -1, &click, nullptr) != SQLITE_OK)) {
    status = absl::InternalError(absl::StrCat("prepare: ", sqlite3_errmsg(db)));
  }
  const std::string user_agent =
      "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0";
  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  std::mt19937 rng(7);
  for (int i = 0; status.ok() && i < rows; ++i) {
    const std::string ip = PublicIp(11, static_cast<uint32_t>(i % ips + 1));
    const std::string caller = absl::StrCat("service-", i % 16);
    const int64_t at_us = now_us - static_cast<int64_t>(rows - i) * 1000;
    const uint32_t r = rng();
    const int score = r % 10 < 7 ? 1 : (r % 10 < 9 ? 2 : 3);
    const bool proxy = (r >> 8) % 7 == 0;
    const bool vpn = (r >> 12) % 11 == 0;
    const std::string body = absl::StrCat(
        R"({"trusted_ai_score":")", score == 1 ? "Safe" : (score == 2 ? "Suspicious" : "Fake"),
        R"(","proxy":)", proxy ? "true" : "false", R"(,"tor":false,"vpn":)", vpn ? "true" : "false",
        R"(,"crawler":false,"bot":false})");
    int64_t click_id = 0;
    if (with_clicks) {
      sqlite3_bind_text(click, 1, caller.data(), caller.size(), SQLITE_STATIC);
      sqlite3_bind_text(click, 2, ip.data(), ip.size(), SQLITE_STATIC);
      sqlite3_bind_int64(click, 3, at_us - 900);
      sqlite3_bind_int64(click, 4, at_us);
      sqlite3_bind_int64(click, 5, 900);
      if (sqlite3_step(click) != SQLITE_DONE) {
        status = absl::InternalError(absl::StrCat("insert click: ", sqlite3_errmsg(db)));
        break;
      }
      sqlite3_reset(click);
      click_id = sqlite3_last_insert_rowid(db);
    }
    sqlite3_bind_text(verdict, 1, ip.data(), ip.size(), SQLITE_STATIC);
    sqlite3_bind_blob(verdict, 2, user_agent.data(), user_agent.size(), SQLITE_STATIC);
    sqlite3_bind_int(verdict, 3, score);
    sqlite3_bind_int(verdict, 4, proxy ? 1 : 0);
    sqlite3_bind_int(verdict, 5, 0);
    sqlite3_bind_int(verdict, 6, vpn ? 1 : 0);
    sqlite3_bind_int(verdict, 7, 0);
    sqlite3_bind_int(verdict, 8, 0);
    sqlite3_bind_int64(verdict, 9, at_us);
    sqlite3_bind_text(verdict, 10, caller.data(), caller.size(), SQLITE_STATIC);
    sqlite3_bind_blob(verdict, 11, body.data(), body.size(), SQLITE_STATIC);
    if (with_clicks) {
      sqlite3_bind_int64(verdict, 12, click_id);
    } else {
      sqlite3_bind_null(verdict, 12);
    }
    if (sqlite3_step(verdict) != SQLITE_DONE) {
      status = absl::InternalError(absl::StrCat("insert verdict: ", sqlite3_errmsg(db)));
      break;
    }
    sqlite3_reset(verdict);
  }
  sqlite3_finalize(verdict);
  sqlite3_finalize(click);
  if (status.ok() && with_clicks) {
    // verdictd keeps per-day click counters next to the ledger (schema v3) and reads those at
    // start-up; rows written behind its back need their counters too, as its migration does.
    status = Exec(db,
                  "INSERT INTO usage(caller, day, clicks, upstream_errors) "
                  "SELECT caller, requested_at_us / 86400000000 AS d, sum(outcome != 3), "
                  "sum(outcome = 2) FROM clicks GROUP BY caller, d "
                  "ON CONFLICT(caller, day) DO UPDATE SET clicks = excluded.clicks, "
                  "upstream_errors = excluded.upstream_errors");
  }
  if (status.ok()) status = Exec(db, "COMMIT");
  if (status.ok()) status = Exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
  sqlite3_close(db);
  return status;
}

int64_t FileSize(const std::string& path) {
  struct stat st = {};
  return stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0;
}

int Main() {
  const bool smoke = absl::GetFlag(FLAGS_smoke);
  const int rows = smoke ? 50'000 : absl::GetFlag(FLAGS_rows);
  const int ips = smoke ? 12'500 : std::min(absl::GetFlag(FLAGS_ips), rows);
  const int hits = smoke ? 1'000 : absl::GetFlag(FLAGS_hits);
  const int starts = smoke ? 1 : std::max(1, absl::GetFlag(FLAGS_starts));
  const int hit_threads = std::max(1, absl::GetFlag(FLAGS_hit_threads));

  TempDir dir;
  const std::string db_path = dir.File("footprint.db");
  absl::StatusOr<Server> sim = StartSimulator(dir, {});
  if (!sim.ok()) Die("simulator", sim.status());
  {
    // verdictd creates the file and runs its migration.
    absl::StatusOr<Server> first = StartVerdictd(dir, sim->port, {"--db=" + db_path});
    if (!first.ok()) Die("verdictd on an empty file", first.status());
    std::cout << absl::StrFormat("bench_footprint: verdictd on an empty file started in %.1f ms",
                                 absl::ToDoubleMilliseconds(first->startup))
              << std::endl;
    first->Stop();
  }
  const int64_t fill_start = NowNs();
  if (absl::Status s = Fill(db_path, rows, ips, absl::GetFlag(FLAGS_with_clicks)); !s.ok()) {
    Die("filling the database", s);
  }
  std::cout << absl::StrFormat("  wrote %d history rows over %d IPs%s in %.1f s; database %.1f MB",
                               rows, ips,
                               absl::GetFlag(FLAGS_with_clicks) ? " (+ a ledger row each)" : "",
                               static_cast<double>(NowNs() - fill_start) / 1e9,
                               static_cast<double>(FileSize(db_path)) / 1e6)
            << std::endl;

  std::vector<double> startup_ms;
  int64_t rss_start_kb = -1;
  int64_t rss_hits_kb = -1;
  int64_t hwm_kb = -1;
  for (int s = 0; s < starts; ++s) {
    absl::StatusOr<Server> verdictd =
        StartVerdictd(dir, sim->port, {"--db=" + db_path}, absl::StrCat("verdictd", s));
    if (!verdictd.ok()) Die("verdictd on the full file", verdictd.status());
    startup_ms.push_back(absl::ToDoubleMilliseconds(verdictd->startup));
    const int64_t rss_now = ProcStatusKb(verdictd->pid(), "VmRSS");
    std::cout << absl::StrFormat("  start %d: %.1f ms to port file, VmRSS %.1f MB", s + 1,
                                 startup_ms.back(), rss_now / 1024.0)
              << std::endl;
    if (s > 0) {
      verdictd->Stop();
      continue;
    }
    rss_start_kb = rss_now;
    std::atomic<int> next{0};
    std::atomic<int> not_cache{0};
    std::atomic<int> errors{0};
    const int64_t hits_start = NowNs();
    std::vector<std::thread> threads;
    for (int t = 0; t < hit_threads; ++t) {
      threads.emplace_back([&, t] {
        auto stub = NewStub(verdictd->port);
        std::mt19937 rng(100 + t);
        std::uniform_int_distribution<uint32_t> pick(1, static_cast<uint32_t>(ips));
        while (next.fetch_add(1) < hits) {
          const std::unique_ptr<grpc::ClientContext> context =
              CallContext("footprint", absl::Seconds(30));
          pb::CheckIpRequest request;
          request.set_ip(PublicIp(11, pick(rng)));
          pb::CheckIpResponse response;
          grpc::Status status = stub->CheckIp(context.get(), request, &response);
          if (!status.ok()) {
            errors.fetch_add(1);
          } else if (response.source() != pb::SOURCE_CACHE) {
            not_cache.fetch_add(1);
          }
        }
      });
    }
    for (std::thread& thread : threads) {
      thread.join();
    }
    const double hit_s = static_cast<double>(NowNs() - hits_start) / 1e9;
    rss_hits_kb = ProcStatusKb(verdictd->pid(), "VmRSS");
    hwm_kb = ProcStatusKb(verdictd->pid(), "VmHWM");
    std::cout << absl::StrFormat(
                     "  %d hits on random stored IPs from %d callers in %.2f s (%.0f/s), "
                     "errors %d, not from cache %d; VmRSS %.1f MB, VmHWM %.1f MB",
                     hits, hit_threads, hit_s, hits / hit_s, errors.load(), not_cache.load(),
                     rss_hits_kb / 1024.0, hwm_kb / 1024.0)
              << std::endl;
    if (errors.load() > 0 || not_cache.load() > 0) {
      Die("hits on stored IPs failed or were not answered from the store");
    }
    verdictd->Stop();
  }
  sim->Stop();

  const double startup_median = Median(startup_ms);
  const double startup_max = *std::max_element(startup_ms.begin(), startup_ms.end());
  const double rss_max_mb = std::max({rss_start_kb, rss_hits_kb, hwm_kb}) / 1024.0;
  std::cout << absl::StrFormat(
                   "start-up median %.1f ms, max %.1f ms (target <= 1000 ms); RSS after start "
                   "%.1f MB, after hits %.1f MB, peak %.1f MB (target <= 200 MB)",
                   startup_median, startup_max, rss_start_kb / 1024.0, rss_hits_kb / 1024.0,
                   hwm_kb / 1024.0)
            << std::endl;
  PrintResult("footprint", "rows", absl::StrCat(rows));
  PrintResult("footprint", "startup_median_ms", absl::StrFormat("%.1f", startup_median), "<=1000",
              PassFail(startup_median <= 1000));
  PrintResult("footprint", "startup_max_ms", absl::StrFormat("%.1f", startup_max));
  PrintResult("footprint", "rss_after_start_mb", absl::StrFormat("%.1f", rss_start_kb / 1024.0),
              "<=200", PassFail(rss_start_kb / 1024.0 <= 200));
  PrintResult("footprint", "rss_after_hits_mb", absl::StrFormat("%.1f", rss_hits_kb / 1024.0),
              "<=200", PassFail(rss_hits_kb / 1024.0 <= 200));
  PrintResult("footprint", "rss_peak_mb", absl::StrFormat("%.1f", hwm_kb / 1024.0), "<=200",
              PassFail(rss_max_mb <= 200));
  return 0;
}

}  // namespace
}  // namespace verdictd::bench

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  return verdictd::bench::Main();
}
