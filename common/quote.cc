#include "common/quote.h"

#include <cstddef>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"

namespace verdictd {

std::string QuoteForError(absl::string_view text, size_t max_length) {
  // Every input byte escapes to at least one character, so the first max_length bytes are all
  // that can show.
  const std::string escaped = absl::CHexEscape(text.substr(0, max_length));
  std::string quoted = "\"";
  size_t pos = 0;
  while (pos < escaped.size()) {
    // CHexEscape emits "\xNN" or a two-character escape such as "\n" or "\\".
    size_t token = 1;
    if (escaped[pos] == '\\') {
      token = (pos + 1 < escaped.size() && escaped[pos + 1] == 'x') ? 4 : 2;
    }
    if (pos + token > max_length) {
      break;
    }
    quoted.append(escaped, pos, token);
    pos += token;
  }
  quoted += '"';
  if (pos < escaped.size() || text.size() > max_length) {
    quoted += "...";
  }
  return quoted;
}

}  // namespace verdictd
