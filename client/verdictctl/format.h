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
