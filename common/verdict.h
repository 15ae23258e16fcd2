#ifndef VERDICTD_COMMON_VERDICT_H_
#define VERDICTD_COMMON_VERDICT_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace verdictd {

// ClickPatrol's trusted_ai_score. Values match verdict.v1.Score.
enum class Score { kUnspecified = 0, kSafe = 1, kSuspicious = 2, kFake = 3 };

// "Safe", "Suspicious", "Fake" (ClickPatrol's spelling); "" for kUnspecified.
absl::string_view ScoreName(Score score);

// What ClickPatrol said about one IP, as parsed from one response.
struct Assessment {
  Score score = Score::kUnspecified;
  bool proxy = false;
  bool tor = false;
  bool vpn = false;
  bool crawler = false;
  bool bot = false;

  friend bool operator==(const Assessment& a, const Assessment& b) {
    return a.score == b.score && a.proxy == b.proxy && a.tor == b.tor && a.vpn == b.vpn &&
           a.crawler == b.crawler && a.bot == b.bot;
  }
};

// One stored verdict: an assessment plus who asked, when, and with which user agent.
struct Verdict {
  std::string ip;  // canonical form (see common/ip.h)
  Assessment assessment;
  absl::Time checked_at;   // when ClickPatrol produced it
  std::string user_agent;  // the user agent sent with that request ("" if none)
  std::string caller;      // who spent the click
};

}  // namespace verdictd

#endif  // VERDICTD_COMMON_VERDICT_H_
