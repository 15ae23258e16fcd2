#include "common/verdict.h"

namespace verdictd {

absl::string_view ScoreName(Score score) {
  switch (score) {
    case Score::kSafe:
      return "Safe";
    case Score::kSuspicious:
      return "Suspicious";
    case Score::kFake:
      return "Fake";
    case Score::kUnspecified:
      break;
  }
  return "";
}

}  // namespace verdictd
