#ifndef VERDICTD_SERVER_ENGINE_USAGE_RECORDER_H_
#define VERDICTD_SERVER_ENGINE_USAGE_RECORDER_H_

#include <array>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

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

  // Hands everything counted so far to the store, without waiting for the write. `done`, if
  // given, runs once that write and every earlier one of this recorder have completed (written,
  // or failed and logged: the counts are then lost), so a read issued from it sees every check
  // recorded before this call; it runs at once when nothing is left to complete, otherwise on a
  // store thread. Writes may complete in any order (the store promises none), hence the
  // bookkeeping.
  void Flush(std::function<void()> done = nullptr);

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

  // Marks write `seq` complete and runs the Flush callbacks that no longer wait for anything.
  void WriteDone(uint64_t seq);

  VerdictStore& store_;
  const Clock& clock_;
  std::array<Shard, kShards> shards_;

  absl::Mutex writes_mu_;
  uint64_t next_write_ ABSL_GUARDED_BY(writes_mu_) = 0;
  // Writes handed to the store and not yet completed.
  std::set<uint64_t> unfinished_ ABSL_GUARDED_BY(writes_mu_);
  // Flush callbacks, each with the number of writes it waits for: it runs once no write numbered
  // below that is unfinished.
  std::vector<std::pair<uint64_t, std::function<void()>>> waiting_ ABSL_GUARDED_BY(writes_mu_);
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_USAGE_RECORDER_H_
