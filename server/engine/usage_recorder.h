#ifndef VERDICTD_SERVER_ENGINE_USAGE_RECORDER_H_
#define VERDICTD_SERVER_ENGINE_USAGE_RECORDER_H_

#include <array>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "storage/verdict_store.h"

namespace verdictd {

// Counts requests and cache hits per caller per UTC day in memory and writes them to the store
// in batches, so the hit path never writes synchronously. A crash loses at most the counts
// since the last Flush (the engine flushes every second); clicks are never counted here: they
// live in the ledger. Thread-safe.
class UsageRecorder {
 public:
  UsageRecorder(VerdictStore& store, const Clock& clock) : store_(store), clock_(clock) {}

  // One check by `caller`; `cache_hit` when the store answered it. Takes one of several
  // mutexes, chosen by thread, for a hash-map increment.
  void Record(const std::string& caller, bool cache_hit);

  // Queues everything counted so far to the store. Returns without waiting for the write.
  void Flush();

 private:
  struct Key {
    std::string caller;
    int64_t day;  // days since the epoch, UTC
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.caller, k.day);
    }
    friend bool operator==(const Key& a, const Key& b) {
      return a.day == b.day && a.caller == b.caller;
    }
  };
  struct Counts {
    int64_t requests = 0;
    int64_t cache_hits = 0;
  };
  struct alignas(64) Shard {
    absl::Mutex mu;
    absl::flat_hash_map<Key, Counts> counts ABSL_GUARDED_BY(mu);
  };
  static constexpr int kShards = 16;

  VerdictStore& store_;
  const Clock& clock_;
  std::array<Shard, kShards> shards_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_USAGE_RECORDER_H_
