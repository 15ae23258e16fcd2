#include "server/engine/hot_cache.h"

#include "absl/hash/hash.h"

namespace verdictd {

HotCache::HotCache(size_t capacity)
    : per_shard_capacity_(capacity == 0 ? 0 : (capacity + kShards - 1) / kShards),
      shards_(new Shard[kShards]) {}

HotCache::Shard& HotCache::ShardFor(const std::string& key) const {
  return shards_[absl::Hash<std::string>()(key) % kShards];
}

std::optional<Verdict> HotCache::Get(const std::string& key) const {
  if (per_shard_capacity_ == 0) {
    return std::nullopt;
  }
  Shard& shard = ShardFor(key);
  absl::ReaderMutexLock lock(&shard.mu);
  auto it = shard.entries.find(key);
  if (it == shard.entries.end()) {
    return std::nullopt;
  }
  it->second->referenced.store(true, std::memory_order_relaxed);
  return it->second->verdict;
}

void HotCache::Put(const std::string& key, const Verdict& verdict) {
  if (per_shard_capacity_ == 0) {
    return;
  }
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.entries.find(key);
  if (it != shard.entries.end()) {
    if (verdict.checked_at >= it->second->verdict.checked_at) {
      it->second->verdict = verdict;
    }
    it->second->referenced.store(true, std::memory_order_relaxed);
    return;
  }
  if (shard.entries.size() >= per_shard_capacity_) {
    // Second chance: entries read since they were last passed over survive one more round.
    // Looking at a handful of entries bounds the work; the last one looked at goes if all of
    // them were referenced.
    auto victim = shard.entries.begin();
    for (int looked = 0; looked < 8 && victim != shard.entries.end(); ++looked) {
      if (!victim->second->referenced.exchange(false, std::memory_order_relaxed)) {
        break;
      }
      auto next = std::next(victim);
      if (next == shard.entries.end()) {
        break;
      }
      victim = next;
    }
    shard.entries.erase(victim);
  }
  shard.entries.emplace(key, std::make_unique<Entry>(verdict));
}

size_t HotCache::size() const {
  size_t total = 0;
  for (size_t i = 0; i < kShards; ++i) {
    absl::ReaderMutexLock lock(&shards_[i].mu);
    total += shards_[i].entries.size();
  }
  return total;
}

}  // namespace verdictd
