#include "client/verdictctl/format.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"

namespace verdictd::cli {

namespace pb = ::verdict::v1;

void Table::Print(std::ostream& out) const {
  std::vector<size_t> widths;
  for (const std::vector<std::string>& row : rows_) {
    // The last cell of a row is never padded, so it does not count towards its column's width.
    for (size_t i = 0; i + 1 < row.size(); ++i) {
      if (widths.size() <= i) {
        widths.resize(i + 1, 0);
      }
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  std::string line;
  for (const std::vector<std::string>& row : rows_) {
    line.clear();
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) {
        line.append(widths[i] - row[i].size() + 2, ' ');
      }
    }
    out << line << '\n';
  }
}

std::string CsvRecord(const std::vector<std::string>& cells) {
  std::string line;
  for (size_t i = 0; i < cells.size(); ++i) {
    if (i > 0) {
      line += ',';
    }
    std::string cell = cells[i];
    if (!cell.empty() && (cell[0] == '=' || cell[0] == '+' || cell[0] == '-' || cell[0] == '@' ||
                          cell[0] == '\t' || cell[0] == '\r')) {
      cell.insert(0, 1, '\'');
    }
    if (cell.find_first_of(",\"\r\n") == std::string::npos) {
      line += cell;
      continue;
    }
    line += '"';
    for (const char c : cell) {
      if (c == '"') {
        line += '"';
      }
      line += c;
    }
    line += '"';
  }
  line += "\r\n";
  return line;
}

std::string FormatTimestampMicros(const google::protobuf::Timestamp& ts) {
  if (ts.seconds() == 0 && ts.nanos() == 0) {
    return "";
  }
  const absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
}

std::string OutcomeWord(pb::ClickOutcome outcome) {
  switch (outcome) {
    case pb::CLICK_OUTCOME_PENDING:
      return "pending";
    case pb::CLICK_OUTCOME_VERDICT:
      return "verdict";
    case pb::CLICK_OUTCOME_ERROR:
      return "error";
    case pb::CLICK_OUTCOME_NOT_SENT:
      return "not_sent";
    default:
      return "?";
  }
}

std::string ScoreWord(pb::Score score) {
  switch (score) {
    case pb::SCORE_SAFE:
      return "Safe";
    case pb::SCORE_SUSPICIOUS:
      return "Suspicious";
    case pb::SCORE_FAKE:
      return "Fake";
    default:
      return "?";
  }
}

std::string SourceWord(pb::Source source) {
  switch (source) {
    case pb::SOURCE_CACHE:
      return "cache";
    case pb::SOURCE_UPSTREAM:
      return "upstream";
    case pb::SOURCE_STALE:
      return "stale";
    default:
      return "?";
  }
}

std::string YesNo(bool value) { return value ? "yes" : "-"; }

std::string FormatTimestamp(const google::protobuf::Timestamp& ts) {
  if (ts.seconds() == 0 && ts.nanos() == 0) {
    return "-";
  }
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(ts.seconds()),
                          absl::UTCTimeZone());
}

std::string Count(int64_t n, bool dash_if_zero) {
  return n == 0 && dash_if_zero ? "-" : absl::StrCat(n);
}

std::vector<std::string> CheckHeader() {
  return {"IP",  "SCORE",   "SOURCE", "CLICK",      "PROXY", "TOR",
          "VPN", "CRAWLER", "BOT",    "CHECKED_AT", "CALLER"};
}

std::vector<std::string> CheckRow(const pb::CheckIpResponse& response) {
  const pb::Verdict& v = response.verdict();
  return {v.ip(),
          ScoreWord(v.score()),
          SourceWord(response.source()),
          YesNo(response.click_spent()),
          YesNo(v.proxy()),
          YesNo(v.tor()),
          YesNo(v.vpn()),
          YesNo(v.crawler()),
          YesNo(v.bot()),
          FormatTimestamp(v.checked_at()),
          v.caller().empty() ? "-" : v.caller()};
}

std::string ToJsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    // Only possible for messages with invalid Timestamp/Duration values from a broken server.
    return "{}";
  }
  return json;
}

std::string ProgressBar(size_t done, size_t total, int width) {
  const size_t filled = total == 0 ? width : std::min<size_t>(width, done * width / total);
  return absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '.'), "] ", done,
                      "/", total);
}

std::string CodeName(int code) {
  if (code >= 0 && code <= 16) {
    return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  }
  return absl::StrCat("CODE_", code);
}

}  // namespace verdictd::cli
