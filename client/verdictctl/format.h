#ifndef VERDICTD_CLIENT_VERDICTCTL_FORMAT_H_
#define VERDICTD_CLIENT_VERDICTCTL_FORMAT_H_

// Output formatting for verdictctl: aligned tables for people, JSON lines for scripts.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"
#include "verdict/v1/verdict.pb.h"

namespace verdictd::cli {

// A table printed with columns padded to their widest cell and separated by two spaces.
// A row may have fewer cells than the header: its last cell then runs on unpadded (used for
// per-item errors), and does not widen the column it starts in.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }

  void AddRow(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  // Rows added so far, the header excluded.
  size_t size() const { return rows_.size() - 1; }
  void Print(std::ostream& out) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// How a listing is printed: an aligned table, JSON lines, or CSV.
enum class Output { kTable, kJson, kCsv };

// One CSV record (RFC 4180), with its CRLF: every cell quoted when it holds a comma, a quote,
// CR or LF (quotes doubled). A cell that starts with =, +, -, @, a tab or CR is prefixed with '
// so that a spreadsheet shows it instead of running it as a formula: user agents and callers
// come from the network (OWASP's advice on CSV injection).
std::string CsvRecord(const std::vector<std::string>& cells);

// RFC 3339 in UTC to the microsecond (`2026-11-27T20:00:09.123456Z`); "" when unset.
std::string FormatTimestampMicros(const google::protobuf::Timestamp& ts);

// "pending", "verdict", "error", "not_sent" ("?" for anything else).
std::string OutcomeWord(verdict::v1::ClickOutcome outcome);

// "Safe", "Suspicious", "Fake" ("?" for anything else).
std::string ScoreWord(verdict::v1::Score score);
// "cache", "upstream", "stale" ("?" for anything else).
std::string SourceWord(verdict::v1::Source source);
// "yes" or "-".
std::string YesNo(bool value);
// RFC 3339 in UTC to the second (`2026-11-27T20:00:09Z`); "-" when unset.
std::string FormatTimestamp(const google::protobuf::Timestamp& ts);
// A count, or "-" when zero and `dash_if_zero`.
std::string Count(int64_t n, bool dash_if_zero = false);

// The cells of a check/batch row (see CheckHeader()).
std::vector<std::string> CheckHeader();
std::vector<std::string> CheckRow(const verdict::v1::CheckIpResponse& response);

// The message as one line of JSON (lowerCamelCase names, as the Python client prints; false, 0
// and "" are printed, not omitted). No trailing newline.
std::string ToJsonLine(const google::protobuf::Message& message);

// `[#####.....] 500/1000`, `width` characters between the brackets.
std::string ProgressBar(size_t done, size_t total, int width = 30);

// The upper snake case name of a gRPC status code (`INVALID_ARGUMENT`), or the number.
std::string CodeName(int code);

}  // namespace verdictd::cli

#endif  // VERDICTD_CLIENT_VERDICTCTL_FORMAT_H_
