// Soak: --seconds (default 60) of closed-loop CheckIp load from --channels (default 64) callers,
// each with its own channel and x-caller, mixing
//
//   70 % hits:   IPs answered before the run (must come from the store: SOURCE_CACHE);
//   25 % misses: IPs never asked before (must be asked upstream: SOURCE_UPSTREAM, click spent);
//    5 % faults: IPs the simulator's rules fail with error=5xx, error=garbage or error=hang
//                (verdictd --upstream_timeout=500ms). Half of them were never answered: they
//                must fail with UNAVAILABLE (5xx, hang) or INTERNAL (garbage). The other half were
//                answered before the rules went in and are asked with max_age=0: they may be
//                answered SOURCE_STALE (the older stored verdict) or fail the same way.
//
// Any other error, any error for a hit or a miss, a hit not from the store or a fault IP
// answered as if ClickPatrol had succeeded is a failure. verdictd's VmRSS is sampled every
// second; growth from the sample at --rss_warmup_seconds to the last one must stay within
// --max_rss_growth. At the end verdictd is stopped with SIGTERM and its ledger's billed clicks
// must equal the requests the simulator received.
//
// The circuit breaker is disabled (--breaker_failures=0) by default: it opens on N consecutive
// upstream failures regardless of IP, and with overlapping 500 ms hangs a run of failures is
// likely; while open it fails the legitimate misses too (UNAVAILABLE, no click), which this
// program would have to excuse as errors on non-fault IPs. Pass --breaker_failures=5 to soak
// with it on; breaker refusals are then counted separately and tolerated for misses.
//
// verdictd runs with --hot_cache_entries=5000 by default: the misses bring several hundred new
// IPs a second, and with the default 100000-entry cache (about 250 bytes an entry, measured)
// the cache would still be filling for the whole minute, a bounded growth of up to ~25 MB that
// the RSS check would mistake for a leak. 5000 entries are full well before the warm-up sample,
// so what grows after it is not the cache. --hot_cache_entries=-1 soaks with the default.
//
//   build-h7/bench/soak                 # 60 s
//   build-h7/bench/soak --seconds=15    # a short run

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/bench_support.h"
#include "httplib.h"

ABSL_FLAG(int, seconds, 60, "How long the load runs");
ABSL_FLAG(int, channels, 64, "Concurrent callers, each with its own channel and x-caller");
ABSL_FLAG(double, hit_share, 0.70, "Share of calls for IPs answered before the run");
ABSL_FLAG(double, miss_share, 0.25, "Share of calls for IPs never asked before");
// The rest (default 5 %) goes to fault IPs.
ABSL_FLAG(int, warm_ips, 2000, "IPs answered before the run, for the hits");
ABSL_FLAG(int, fault_ips, 12, "Fault IPs per group (never answered / answered before)");
ABSL_FLAG(int, latency_ms, 20, "Simulator latency per request");
ABSL_FLAG(std::string, upstream_timeout, "500ms", "verdictd --upstream_timeout");
ABSL_FLAG(int, breaker_failures, 0, "verdictd --breaker_failures (0: breaker off; see above)");
ABSL_FLAG(int64_t, hot_cache_entries, 5000,
          "verdictd --hot_cache_entries (-1: verdictd's default of 100000; see above)");
ABSL_FLAG(int, rss_warmup_seconds, 10, "The RSS sample that growth is measured from");
ABSL_FLAG(double, max_rss_growth, 0.10, "Most RSS growth allowed after the warm-up sample");
ABSL_FLAG(uint64_t, seed, 0, "Random seed (0: from the clock)");

namespace verdictd::bench {
namespace {

namespace pb = ::verdict::v1;

constexpr const char* kFaultModes[] = {"5xx", "garbage", "hang"};
constexpr int kModes = 3;

// What is asked for: hits, misses, and fault IPs (never answered, or answered before).
enum Kind { kHit = 0, kMiss, kFaultFresh, kFaultStale, kKinds };
constexpr const char* kKindNames[] = {"hit", "miss", "fault (never answered)",
                                      "fault (answered before)"};

std::string CodeName(int code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : absl::StrCat("code ", code);
}

// One caller's counts.
struct Tally {
  int64_t calls[kKinds] = {};
  std::map<int, int64_t> codes[kKinds];        // grpc status code -> calls (OK included)
  std::map<int, int64_t> fault_codes[kModes];  // fault calls by the rule's mode
  int64_t stale[kKinds] = {};
  int64_t hits_not_cache = 0;
  int64_t misses_not_upstream = 0;  // not SOURCE_UPSTREAM with click_spent
  int64_t fault_fabricated = 0;     // a fault IP answered as if ClickPatrol had succeeded
  int64_t breaker_refusals = 0;     // UNAVAILABLE "circuit breaker open" for non-fault IPs
  int64_t wrong_ip = 0;
  std::vector<std::string> samples;  // the first unexpected errors
  Histogram latency[kKinds];

  void Merge(const Tally& o) {
    for (int k = 0; k < kKinds; ++k) {
      calls[k] += o.calls[k];
      stale[k] += o.stale[k];
      for (const auto& [code, n] : o.codes[k]) {
        codes[k][code] += n;
      }
      latency[k].Merge(o.latency[k]);
    }
    for (int m = 0; m < kModes; ++m) {
      for (const auto& [code, n] : o.fault_codes[m]) {
        fault_codes[m][code] += n;
      }
    }
    hits_not_cache += o.hits_not_cache;
    misses_not_upstream += o.misses_not_upstream;
    fault_fabricated += o.fault_fabricated;
    breaker_refusals += o.breaker_refusals;
    wrong_ip += o.wrong_ip;
    for (const std::string& s : o.samples) {
      if (samples.size() < 10) {
        samples.push_back(s);
      }
    }
  }
};

struct Plan {
  int port = 0;
  double hit_share = 0.7;
  double miss_share = 0.25;
  const std::vector<std::string>* hit_ips = nullptr;
  const std::vector<std::string>* fault_fresh = nullptr;  // [i] fails with kFaultModes[i % 3]
  const std::vector<std::string>* fault_stale = nullptr;
  std::atomic<uint32_t>* next_fresh = nullptr;
  const std::atomic<bool>* stop = nullptr;
  std::atomic<int64_t>* total_calls = nullptr;
  bool breaker_on = false;
};

void RunCaller(const Plan& plan, int index, uint64_t seed, Tally* out) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0, 1);
  auto stub = NewStub(plan.port);
  const std::string caller = absl::StrCat("soak-", index);
  auto unexpected = [&](const std::string& what) {
    if (out->samples.size() < 10) {
      out->samples.push_back(what);
    }
  };
  while (!plan.stop->load(std::memory_order_relaxed)) {
    const double r = unit(rng);
    Kind kind;
    int mode = -1;
    pb::CheckIpRequest request;
    if (r < plan.hit_share) {
      kind = kHit;
      request.set_ip((*plan.hit_ips)[rng() % plan.hit_ips->size()]);
    } else if (r < plan.hit_share + plan.miss_share) {
      kind = kMiss;
      request.set_ip(PublicIp(11, plan.next_fresh->fetch_add(1)));
    } else {
      const bool fresh = rng() % 2 == 0;
      const std::vector<std::string>& ips = fresh ? *plan.fault_fresh : *plan.fault_stale;
      const size_t i = rng() % ips.size();
      kind = fresh ? kFaultFresh : kFaultStale;
      mode = static_cast<int>(i % kModes);
      request.set_ip(ips[i]);
      if (!fresh) {
        request.mutable_max_age();  // zero: ask ClickPatrol despite the stored verdict
      }
    }
    const std::unique_ptr<grpc::ClientContext> context = CallContext(caller, absl::Seconds(10));
    pb::CheckIpResponse response;
    const int64_t start = NowNs();
    const grpc::Status status = stub->CheckIp(context.get(), request, &response);
    out->latency[kind].Record(static_cast<uint64_t>(NowNs() - start));
    ++out->calls[kind];
    plan.total_calls->fetch_add(1, std::memory_order_relaxed);
    const int code = static_cast<int>(status.error_code());
    ++out->codes[kind][code];
    if (mode >= 0) {
      ++out->fault_codes[mode][code];
    }
    if (!status.ok()) {
      const std::string what = absl::StrCat(kKindNames[kind], " ", request.ip(), ": ",
                                            CodeName(code), " ", status.error_message());
      if (kind == kFaultFresh || kind == kFaultStale) {
        if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::INTERNAL) {
          unexpected(what);
        }
      } else if (plan.breaker_on && kind == kMiss && code == grpc::StatusCode::UNAVAILABLE &&
                 absl::StrContains(status.error_message(), "circuit breaker")) {
        ++out->breaker_refusals;
      } else {
        unexpected(what);
      }
      continue;
    }
    if (response.verdict().ip() != request.ip()) {
      ++out->wrong_ip;
      unexpected(absl::StrCat(kKindNames[kind], " ", request.ip(), ": verdict about ",
                              response.verdict().ip()));
    }
    if (response.source() == pb::SOURCE_STALE) {
      ++out->stale[kind];
    }
    switch (kind) {
      case kHit:
        if (response.source() != pb::SOURCE_CACHE) {
          ++out->hits_not_cache;
          unexpected(absl::StrCat("hit ", request.ip(), ": source ", response.source()));
        }
        break;
      case kMiss:
        if (response.source() != pb::SOURCE_UPSTREAM || !response.click_spent()) {
          ++out->misses_not_upstream;
          unexpected(absl::StrCat("miss ", request.ip(), ": source ", response.source(),
                                  " click_spent ", response.click_spent()));
        }
        break;
      case kFaultFresh:
      case kFaultStale:
        // Nothing can be fresh or from ClickPatrol; only the older stored verdict is honest.
        if (response.source() != pb::SOURCE_STALE) {
          ++out->fault_fabricated;
          unexpected(absl::StrCat(kKindNames[kind], " ", request.ip(), ": answered with source ",
                                  response.source()));
        }
        break;
      default:
        break;
    }
  }
}

absl::Status SimPost(int sim_port, const std::string& path, const std::string& body,
                     const std::string& type) {
  httplib::Client client("127.0.0.1", sim_port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  httplib::Result result = client.Post(path, body, type);
  if (!result || result->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("POST ", path, " failed", result ? absl::StrCat(": ", result->body) : ""));
  }
  return absl::OkStatus();
}

// Answers every IP once (CheckBatch of 500), so that they are stored.
void Warm(int port, const std::vector<std::string>& ips) {
  auto stub = NewStub(port);
  for (size_t i = 0; i < ips.size(); i += 500) {
    pb::CheckBatchRequest request;
    for (size_t j = i; j < std::min(ips.size(), i + 500); ++j) {
      request.add_items()->set_ip(ips[j]);
    }
    const std::unique_ptr<grpc::ClientContext> context =
        CallContext("soak-warm", absl::Seconds(60));
    pb::CheckBatchResponse response;
    const grpc::Status status = stub->CheckBatch(context.get(), request, &response);
    if (!status.ok()) Die(absl::StrCat("warm-up CheckBatch: ", status.error_message()));
    for (const pb::CheckBatchResult& r : response.results()) {
      if (!r.has_result()) Die(absl::StrCat("warm-up item failed: ", r.error().message()));
    }
  }
}

absl::StatusOr<int64_t> LedgerCount(const std::string& db_path, const std::string& where) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    const std::string message = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("open ", db_path, ": ", message));
  }
  sqlite3_stmt* stmt = nullptr;
  int64_t count = -1;
  const std::string sql = absl::StrCat("SELECT count(*) FROM clicks WHERE ", where);
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    count = sqlite3_column_int64(stmt, 0);
  }
  const std::string message = sqlite3_errmsg(db);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  if (count < 0) {
    return absl::InternalError(absl::StrCat(sql, ": ", message));
  }
  return count;
}

std::string Ms(double ns) { return absl::StrFormat("%.2f ms", ns / 1e6); }

std::string Codes(const std::map<int, int64_t>& codes) {
  std::vector<std::string> parts;
  for (const auto& [code, n] : codes) {
    parts.push_back(absl::StrCat(CodeName(code), " ", n));
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, ", ");
}

int Main() {
  const int seconds = absl::GetFlag(FLAGS_seconds);
  const int channels = absl::GetFlag(FLAGS_channels);
  const double hit_share = absl::GetFlag(FLAGS_hit_share);
  const double miss_share = absl::GetFlag(FLAGS_miss_share);
  const int warmup = absl::GetFlag(FLAGS_rss_warmup_seconds);
  const int n_fault = absl::GetFlag(FLAGS_fault_ips);
  if (seconds < 1 || channels < 1 || hit_share < 0 || miss_share < 0 ||
      hit_share + miss_share > 1 || warmup < 0 || warmup >= seconds || n_fault < 1 ||
      absl::GetFlag(FLAGS_warm_ips) < 1) {
    Die("bad flags: need --seconds > --rss_warmup_seconds >= 0, --channels >= 1, shares in [0,1]");
  }
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) {
    seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  }
  std::mt19937_64 rng(seed);

  TempDir dir;
  const std::string db_path = dir.File("soak.db");
  absl::StatusOr<Server> sim = StartSimulator(
      dir, {absl::StrCat("--latency=", absl::GetFlag(FLAGS_latency_ms), "ms"), "--threads=256"});
  if (!sim.ok()) Die("simulator", sim.status());
  std::vector<std::string> flags = {
      "--db=" + db_path, "--upstream_timeout=" + absl::GetFlag(FLAGS_upstream_timeout),
      absl::StrCat("--breaker_failures=", absl::GetFlag(FLAGS_breaker_failures))};
  if (absl::GetFlag(FLAGS_hot_cache_entries) >= 0) {
    flags.push_back(absl::StrCat("--hot_cache_entries=", absl::GetFlag(FLAGS_hot_cache_entries)));
  }
  absl::StatusOr<Server> verdictd = StartVerdictd(dir, sim->port, flags);
  if (!verdictd.ok()) Die("verdictd", verdictd.status());
  const pid_t pid = verdictd->pid();

  std::vector<std::string> hit_ips;
  for (int i = 0; i < absl::GetFlag(FLAGS_warm_ips); ++i) {
    hit_ips.push_back(PublicIp(14, static_cast<uint32_t>(i + 1)));
  }
  std::vector<std::string> fault_fresh;
  std::vector<std::string> fault_stale;
  for (int i = 0; i < n_fault; ++i) {
    fault_fresh.push_back(PublicIp(12, static_cast<uint32_t>(i + 1)));
    fault_stale.push_back(PublicIp(13, static_cast<uint32_t>(i + 1)));
  }
  Warm(verdictd->port, hit_ips);
  Warm(verdictd->port, fault_stale);  // while they still succeed
  std::string rules;
  for (int i = 0; i < n_fault; ++i) {
    absl::StrAppend(&rules, fault_fresh[i], " error=", kFaultModes[i % kModes], "\n",
                    fault_stale[i], " error=", kFaultModes[i % kModes], "\n");
  }
  if (absl::Status s = SimPost(sim->port, "/_sim/rules", rules, "text/plain"); !s.ok()) {
    Die("simulator rules", s);
  }

  std::cout << absl::StrFormat(
                   "soak: %d s, %d channels, %.0f%% hits (%d IPs) / %.0f%% misses / %.0f%% "
                   "faults (%d IPs: 5xx, garbage, hang; half answered before), simulator latency "
                   "%d ms, verdictd --upstream_timeout=%s --breaker_failures=%d%s, seed %d",
                   seconds, channels, hit_share * 100, hit_ips.size(), miss_share * 100,
                   (1 - hit_share - miss_share) * 100, 2 * n_fault, absl::GetFlag(FLAGS_latency_ms),
                   absl::GetFlag(FLAGS_upstream_timeout), absl::GetFlag(FLAGS_breaker_failures),
                   absl::GetFlag(FLAGS_hot_cache_entries) >= 0
                       ? absl::StrCat(" --hot_cache_entries=",
                                      absl::GetFlag(FLAGS_hot_cache_entries))
                       : "",
                   seed)
            << std::endl;

  std::atomic<bool> stop{false};
  std::atomic<uint32_t> next_fresh{1};
  std::atomic<int64_t> total_calls{0};
  Plan plan;
  plan.port = verdictd->port;
  plan.hit_share = hit_share;
  plan.miss_share = miss_share;
  plan.hit_ips = &hit_ips;
  plan.fault_fresh = &fault_fresh;
  plan.fault_stale = &fault_stale;
  plan.next_fresh = &next_fresh;
  plan.stop = &stop;
  plan.total_calls = &total_calls;
  plan.breaker_on = absl::GetFlag(FLAGS_breaker_failures) > 0;

  const int64_t rss_start = ProcStatusKb(pid, "VmRSS");
  std::vector<Tally> tallies(channels);
  std::vector<std::thread> threads;
  const int64_t start = NowNs();
  for (int c = 0; c < channels; ++c) {
    threads.emplace_back(RunCaller, std::cref(plan), c, rng(), &tallies[c]);
  }
  // RSS once a second, on this thread; also a progress line every 10 s.
  std::vector<int64_t> rss;  // rss[i]: after i + 1 seconds
  bool died = false;
  int64_t last_calls = 0;
  for (int s = 1; s <= seconds; ++s) {
    const int64_t due = start + int64_t{s} * 1'000'000'000;
    while (NowNs() < due) {
      absl::SleepFor(absl::Nanoseconds(std::min<int64_t>(due - NowNs(), 100'000'000)));
    }
    if (!verdictd->process->Running()) {
      died = true;
      break;
    }
    rss.push_back(ProcStatusKb(pid, "VmRSS"));
    if (s % 10 == 0 || s == seconds) {
      const int64_t calls = total_calls.load();
      std::cout << absl::StrFormat("  %3d s: %9d calls (%6.0f/s over the last %d s), RSS %.1f MB",
                                   s, calls, (calls - last_calls) / (s % 10 == 0 ? 10.0 : s % 10),
                                   s % 10 == 0 ? 10 : s % 10, rss.back() / 1024.0)
                << std::endl;
      last_calls = calls;
    }
  }
  stop.store(true);
  for (std::thread& thread : threads) {
    thread.join();
  }
  const double elapsed = static_cast<double>(NowNs() - start) / 1e9;
  Tally total;
  for (const Tally& t : tallies) {
    total.Merge(t);
  }

  // SIGTERM: verdictd drains and commits, so the ledger is final.
  absl::StatusOr<int> exit_code = verdictd->process->Terminate(absl::Seconds(30));
  verdictd->Stop();
  // The simulator counts a request when it arrives; none can still be on its way now.
  absl::StatusOr<nlohmann::json> stats = SimStats(sim->port);
  if (!stats.ok()) Die("simulator stats", stats.status());
  const int64_t sim_requests = stats->at("requests").get<int64_t>();
  const int64_t sim_max_in_flight = stats->at("max_in_flight").get<int64_t>();
  sim->Stop();
  absl::StatusOr<int64_t> clicks = LedgerCount(db_path, "outcome != 3");
  absl::StatusOr<int64_t> clicks_error = LedgerCount(db_path, "outcome = 2");
  absl::StatusOr<int64_t> clicks_pending = LedgerCount(db_path, "outcome = 0");
  absl::StatusOr<int64_t> not_sent = LedgerCount(db_path, "outcome = 3");
  if (!clicks.ok() || !clicks_error.ok() || !clicks_pending.ok() || !not_sent.ok()) {
    Die("ledger", clicks.ok() ? clicks_error.status() : clicks.status());
  }

  // RSS: the warm-up sample is rss[warmup - 1] (after `warmup` seconds).
  const bool rss_known = !died && static_cast<int>(rss.size()) >= std::max(warmup, 1) &&
                         rss.back() > 0 && rss[std::max(warmup, 1) - 1] > 0;
  const int64_t rss_warm = rss_known ? rss[std::max(warmup, 1) - 1] : -1;
  const int64_t rss_final = rss_known ? rss.back() : -1;
  int64_t rss_max = 0;
  for (int64_t kb : rss) {
    rss_max = std::max(rss_max, kb);
  }
  const double growth =
      rss_known ? static_cast<double>(rss_final - rss_warm) / static_cast<double>(rss_warm) : 0;

  int64_t calls = 0;
  int64_t errors = 0;
  for (int k = 0; k < kKinds; ++k) {
    calls += total.calls[k];
    for (const auto& [code, n] : total.codes[k]) {
      errors += code == 0 ? 0 : n;
    }
  }
  const int64_t unexpected_errors = [&] {
    int64_t n = 0;
    for (int k = 0; k < kKinds; ++k) {
      for (const auto& [code, count] : total.codes[k]) {
        const bool fault = k == kFaultFresh || k == kFaultStale;
        const bool allowed = code == 0 || (fault && (code == grpc::StatusCode::UNAVAILABLE ||
                                                     code == grpc::StatusCode::INTERNAL));
        n += allowed ? 0 : count;
      }
    }
    return n - total.breaker_refusals;
  }();

  std::vector<std::string> failures;
  if (died) failures.push_back("verdictd died during the run");
  if (unexpected_errors > 0) {
    failures.push_back(absl::StrCat(unexpected_errors, " unexpected errors"));
  }
  if (total.hits_not_cache > 0) {
    failures.push_back(absl::StrCat(total.hits_not_cache, " hits not from the store"));
  }
  if (total.misses_not_upstream > 0) {
    failures.push_back(absl::StrCat(total.misses_not_upstream, " misses not asked upstream"));
  }
  if (total.fault_fabricated > 0) {
    failures.push_back(
        absl::StrCat(total.fault_fabricated, " fault IPs answered as if ClickPatrol succeeded"));
  }
  if (total.wrong_ip > 0) {
    failures.push_back(absl::StrCat(total.wrong_ip, " verdicts about another IP"));
  }
  if (!rss_known) {
    failures.push_back("RSS not sampled");
  } else if (growth > absl::GetFlag(FLAGS_max_rss_growth)) {
    failures.push_back(absl::StrFormat("RSS grew %.1f%% after warm-up", growth * 100));
  }
  if (*clicks != sim_requests) {
    failures.push_back(
        absl::StrCat("ledger clicks ", *clicks, " != simulator requests ", sim_requests));
  }
  if (!exit_code.ok() || *exit_code != 0) {
    failures.push_back(absl::StrCat(
        "verdictd did not stop cleanly: ",
        exit_code.ok() ? absl::StrCat("exit ", *exit_code) : exit_code.status().ToString()));
  }

  std::cout << "\n=== soak summary (" << absl::StrFormat("%.1f", elapsed) << " s, " << channels
            << " channels, seed " << seed << ")\n";
  std::cout << absl::StrFormat("calls                  %d (%.0f/s), errors %d\n", calls,
                               calls / elapsed, errors);
  for (int k = 0; k < kKinds; ++k) {
    std::cout << absl::StrFormat("  %-24s %8d  p50 %s  p99 %s  stale %d  | %s\n", kKindNames[k],
                                 total.calls[k], Ms(total.latency[k].Quantile(0.5)),
                                 Ms(total.latency[k].Quantile(0.99)), total.stale[k],
                                 Codes(total.codes[k]));
  }
  for (int m = 0; m < kModes; ++m) {
    std::cout << absl::StrFormat("  fault error=%-12s %8s  %s\n", kFaultModes[m], "",
                                 Codes(total.fault_codes[m]));
  }
  std::cout << absl::StrFormat(
      "unexpected errors      %d (breaker refusals of misses: %d)\n"
      "hits not from store    %d\n"
      "misses not upstream    %d\n"
      "fault IPs fabricated   %d\n",
      unexpected_errors, total.breaker_refusals, total.hits_not_cache, total.misses_not_upstream,
      total.fault_fabricated);
  std::cout << absl::StrFormat(
      "verdictd RSS           start %.1f MB, at %d s %.1f MB, final %.1f MB, max %.1f MB; "
      "growth after warm-up %+.1f%% (limit %.0f%%)\n",
      rss_start / 1024.0, warmup, rss_warm / 1024.0, rss_final / 1024.0, rss_max / 1024.0,
      growth * 100, absl::GetFlag(FLAGS_max_rss_growth) * 100);
  std::cout << absl::StrFormat(
      "ledger clicks          %d (upstream errors %d, pending %d; not sent %d)\n"
      "simulator requests     %d (max in flight %d) -> %s\n",
      *clicks, *clicks_error, *clicks_pending, *not_sent, sim_requests, sim_max_in_flight,
      *clicks == sim_requests ? "equal" : "DIFFERENT");
  std::cout << "verdictd exit on SIGTERM "
            << (exit_code.ok() ? absl::StrCat(*exit_code) : exit_code.status().ToString()) << "\n";
  for (const std::string& s : total.samples) {
    std::cout << "  unexpected: " << s << "\n";
  }
  for (const std::string& f : failures) {
    std::cout << "  FAILURE " << f << "\n";
  }
  std::cout << (failures.empty() ? "PASS" : "FAIL") << std::endl;
  PrintResult("soak", "calls_per_second", absl::StrFormat("%.0f", calls / elapsed));
  PrintResult("soak", "unexpected_errors", absl::StrCat(unexpected_errors), "0",
              PassFail(unexpected_errors == 0));
  PrintResult("soak", "rss_growth_pct", absl::StrFormat("%.1f", growth * 100),
              absl::StrFormat("<=%.0f", absl::GetFlag(FLAGS_max_rss_growth) * 100),
              PassFail(rss_known && growth <= absl::GetFlag(FLAGS_max_rss_growth)));
  PrintResult("soak", "clicks_minus_sim_requests", absl::StrCat(*clicks - sim_requests), "0",
              PassFail(*clicks == sim_requests));
  return failures.empty() ? 0 : 1;
}

}  // namespace
}  // namespace verdictd::bench

int main(int argc, char** argv) {
  verdictd::bench::InitBench(argc, argv);
  return verdictd::bench::Main();
}
