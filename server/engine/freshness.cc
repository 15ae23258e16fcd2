#include "server/engine/freshness.h"

#include <algorithm>

namespace verdictd {

absl::Duration FreshnessPolicy::LimitFor(Score score,
                                         std::optional<absl::Duration> requested) const {
  if (requested.has_value()) {
    return *requested;
  }
  const std::optional<absl::Duration>* per_score = nullptr;
  switch (score) {
    case Score::kSafe:
      per_score = &max_age_safe;
      break;
    case Score::kSuspicious:
      per_score = &max_age_suspicious;
      break;
    case Score::kFake:
      per_score = &max_age_fake;
      break;
    case Score::kUnspecified:
      break;
  }
  if (per_score != nullptr && per_score->has_value()) {
    return **per_score;
  }
  return default_max_age;
}

bool IsFresh(absl::Time now, absl::Time checked_at, absl::Duration limit) {
  const absl::Duration age = std::max(now - checked_at, absl::ZeroDuration());
  return age < limit;
}

}  // namespace verdictd
