#ifndef VERDICTD_SERVER_ENGINE_HOT_CACHE_H_
#define VERDICTD_SERVER_ENGINE_HOT_CACHE_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/verdict.h"

namespace verdictd {

// A bounded in-memory copy of the newest verdict per cache key, in front of the store: a hit
// costs a hash lookup under one of many shard locks instead of a SQLite read transaction.
// Holds only verdicts that are already durable. Thread-safe.
//
// Eviction is per shard and approximate (second chance over a few entries), which is enough to
// keep hot keys resident without a global LRU list that every hit would have to touch.
class HotCache {
 public:
  // `capacity` entries in total; 0 disables the cache.
  explicit HotCache(size_t capacity);

  std::optional<Verdict> Get(const std::string& key) const;
  // Remembers `verdict` for `key` unless a newer one (by checked_at) is already there.
  void Put(const std::string& key, const Verdict& verdict);
  size_t size() const;

 private:
  struct Entry {
    Verdict verdict;
    mutable std::atomic<bool> referenced{true};
    explicit Entry(Verdict v) : verdict(std::move(v)) {}
  };
  struct alignas(64) Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<std::string, std::unique_ptr<Entry>> entries ABSL_GUARDED_BY(mu);
  };
  static constexpr size_t kShards = 64;

  Shard& ShardFor(const std::string& key) const;

  size_t per_shard_capacity_;
  std::unique_ptr<Shard[]> shards_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_HOT_CACHE_H_
