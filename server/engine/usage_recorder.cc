#include "server/engine/usage_recorder.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/civil_time.h"
#include "common/logging.h"

namespace verdictd {

void UsageRecorder::Record(const std::string& caller, bool cache_hit) {
  const int64_t day = absl::ToUnixSeconds(clock_.Now()) / 86400;
  // Threads mostly keep to their own shard, so callers on different threads rarely contend.
  Shard& shard = shards_[std::hash<std::thread::id>()(std::this_thread::get_id()) % kShards];
  absl::MutexLock lock(&shard.mu);
  Counts& counts = shard.counts[Key{caller, day}];
  ++counts.requests;
  if (cache_hit) {
    ++counts.cache_hits;
  }
}

void UsageRecorder::Flush(std::function<void()> done) {
  absl::flat_hash_map<Key, Counts> merged;
  for (Shard& shard : shards_) {
    absl::flat_hash_map<Key, Counts> taken;
    {
      absl::MutexLock lock(&shard.mu);
      taken.swap(shard.counts);
    }
    for (auto& [key, counts] : taken) {
      Counts& m = merged[key];
      m.requests += counts.requests;
      m.cache_hits += counts.cache_hits;
    }
  }
  std::optional<uint64_t> seq;
  bool ready = false;
  {
    absl::MutexLock lock(&writes_mu_);
    if (!merged.empty()) {
      seq = next_write_++;
      unfinished_.insert(*seq);
    }
    ready = unfinished_.empty();
    if (!ready && done != nullptr) {
      waiting_.emplace_back(next_write_, std::move(done));
    }
  }
  if (ready && done != nullptr) {
    done();
  }
  if (!seq.has_value()) {
    return;
  }
  std::vector<UsageDelta> deltas;
  deltas.reserve(merged.size());
  for (auto& [key, counts] : merged) {
    deltas.push_back(UsageDelta{key.caller, absl::CivilDay(1970, 1, 1) + key.day, counts.cache_hits,
                                counts.requests});
  }
  store_.AddUsage(std::move(deltas), [this, seq = *seq](absl::Status status) {
    if (!status.ok()) {
      spdlog::warn("usage counters could not be written and are lost: {}", status.message());
    }
    WriteDone(seq);
  });
}

void UsageRecorder::WriteDone(uint64_t seq) {
  std::vector<std::function<void()>> ready;
  {
    absl::MutexLock lock(&writes_mu_);
    unfinished_.erase(seq);
    const uint64_t oldest = unfinished_.empty() ? next_write_ : *unfinished_.begin();
    auto it = std::partition(waiting_.begin(), waiting_.end(),
                             [oldest](const auto& w) { return w.first > oldest; });
    for (auto r = it; r != waiting_.end(); ++r) {
      ready.push_back(std::move(r->second));
    }
    waiting_.erase(it, waiting_.end());
  }
  for (std::function<void()>& done : ready) {
    done();
  }
}

}  // namespace verdictd
