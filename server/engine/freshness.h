#ifndef VERDICTD_SERVER_ENGINE_FRESHNESS_H_
#define VERDICTD_SERVER_ENGINE_FRESHNESS_H_

#include <optional>

#include "absl/time/time.h"
#include "common/verdict.h"

namespace verdictd {

// How old a stored verdict may be and still answer a request.
struct FreshnessPolicy {
  // Default: 24 h.
  absl::Duration default_max_age = absl::Hours(24);
  // Per-score overrides of default_max_age; unset means the default applies.
  std::optional<absl::Duration> max_age_safe;
  std::optional<absl::Duration> max_age_suspicious;
  std::optional<absl::Duration> max_age_fake;
  // How old a verdict may be to be served as STALE when ClickPatrol cannot be used. Zero: never.
  // Default: 7 days.
  absl::Duration stale_if_error = absl::Hours(24 * 7);

  // The freshness limit for a stored verdict with `score`: the request's own max_age if given,
  // else the per-score setting, else the default.
  absl::Duration LimitFor(Score score, std::optional<absl::Duration> requested) const;
};

// A verdict checked at `checked_at` is fresh at `now` when now - checked_at < limit. A verdict
// from the future (clock skew between restarts) counts as age zero. A zero limit is never fresh.
bool IsFresh(absl::Time now, absl::Time checked_at, absl::Duration limit);

}  // namespace verdictd

#endif  // VERDICTD_SERVER_ENGINE_FRESHNESS_H_
