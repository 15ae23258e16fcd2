#ifndef VERDICTD_COMMON_QUOTE_H_
#define VERDICTD_COMMON_QUOTE_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace verdictd {

// How many characters of (escaped) input an error message quotes by default.
inline constexpr size_t kMaxQuotedLength = 64;

// Quotes `text` for an error message, so that a hostile caller can neither bloat messages and
// logs nor inject control characters through them: C-escaped (NULs, control characters,
// non-ASCII bytes, quotes and backslashes are shown as escapes such as \x01, \n, \", never raw),
// wrapped in double quotes, and cut to at most `max_length` escaped characters without splitting
// an escape sequence; "..." after the closing quote marks a cut. The result is at most
// `max_length` + 5 bytes, whatever the size of `text`, and only the first `max_length` bytes of
// `text` are ever read.
//
//   QuoteForError("1.2.3.4:80")    -> "\"1.2.3.4:80\""
//   QuoteForError("a\nb")          -> "\"a\\nb\""
//   QuoteForError(100 x 'z', 8)    -> "\"zzzzzzzz\"..."
std::string QuoteForError(absl::string_view text, size_t max_length = kMaxQuotedLength);

}  // namespace verdictd

#endif  // VERDICTD_COMMON_QUOTE_H_
