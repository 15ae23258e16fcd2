#ifndef VERDICTD_ENGINE_ENGINE_H_
#define VERDICTD_ENGINE_ENGINE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/verdict.h"
#include "engine/freshness.h"
#include "storage/verdict_store.h"
#include "upstream/clickpatrol_client.h"

namespace verdictd {

// Where an answer came from. Values match verdict.v1.Source.
enum class Source { kCache = 1, kUpstream = 2, kStale = 3 };

// What verdicts are remembered by.
enum class CacheKeyMode {
  kIp,           // the IP alone (the verdict is about the IP)
  kIpUserAgent,  // the IP and the exact user agent
};

struct EngineOptions {
  FreshnessPolicy freshness;
  // Default: kIp.
  CacheKeyMode cache_key = CacheKeyMode::kIp;
  // Longest accepted user agent, in bytes. Default: 1024.
  size_t max_user_agent_bytes = 1024;
  // Longest accepted caller name, in bytes. Default: 128.
  size_t max_caller_bytes = 128;
  // Send non-public addresses (private, loopback, documentation, ...) to ClickPatrol.
  // Default: false (FAILED_PRECONDITION, no click).
  bool allow_non_public = false;
};

struct CheckRequest {
  std::string ip;          // as the caller wrote it
  std::string user_agent;  // "" for none
  std::optional<absl::Duration> max_age;
  bool cache_only = false;
  std::string caller;  // who is asking (and pays for a miss)
};

struct CheckResult {
  Verdict verdict;
  Source source = Source::kCache;
  bool click_spent = false;  // this request's caller was charged a click for it
};

// Freshness, single flight and accounting: decides for each check whether a stored verdict
// answers it or ClickPatrol must be asked, and records every click. Knows nothing of gRPC or SQL.
//
// Thread-safe. Never blocks on the network.
class Engine {
 public:
  using Callback = std::function<void(absl::StatusOr<CheckResult>)>;

  // `store`, `client` and `clock` must outlive the engine.
  Engine(EngineOptions options, VerdictStore& store, ClickPatrolClient& client, const Clock& clock);
  ~Engine();

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Answers one check. `done` runs exactly once: on the calling thread when the store answers
  // (or the request is invalid), otherwise on a store or client thread once the upstream answer
  // is durable. Errors: INVALID_ARGUMENT for malformed input, NOT_FOUND for a cache_only miss,
  // FAILED_PRECONDITION for a non-public address, and the upstream's error otherwise.
  void Check(CheckRequest request, Callback done);

  // Blocks until every upstream request in flight has been answered.
  void WaitIdle();

 private:
  struct Waiter {
    Callback done;
  };
  // One upstream request and everyone waiting for it.
  struct Flight {
    std::string ip;
    std::string user_agent;
    std::string caller;                      // the leader, who pays
    std::optional<Verdict> stale_candidate;  // newest stored verdict when the flight began
    Callback leader;
    std::vector<Waiter> waiters;
  };

  // Records the click, then sends the request. Runs without the lock.
  void StartFlight(std::string key, std::string ip, std::string user_agent, std::string caller);
  void OnFetched(const std::string& key, int64_t click_id, FetchOutcome outcome);
  // Removes the flight for `key` and answers the leader and every waiter. `charged`: a click was
  // spent (the leader's) whatever the result.
  void Resolve(const std::string& key, absl::StatusOr<Verdict> result, bool charged);

  const EngineOptions options_;
  VerdictStore& store_;
  ClickPatrolClient& client_;
  const Clock& clock_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Flight> flights_ ABSL_GUARDED_BY(mu_);
};

}  // namespace verdictd

#endif  // VERDICTD_ENGINE_ENGINE_H_
