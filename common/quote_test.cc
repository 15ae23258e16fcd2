#include "common/quote.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

TEST(QuoteForErrorTest, ShortPrintableTextIsQuotedAsIs) {
  EXPECT_EQ(QuoteForError(""), "\"\"");
  EXPECT_EQ(QuoteForError("1.2.3.4:80"), "\"1.2.3.4:80\"");
  EXPECT_EQ(QuoteForError("x');DROP TABLE usage;--"), "\"x\\');DROP TABLE usage;--\"");
  EXPECT_EQ(QuoteForError(std::string(64, 'a')), absl::StrCat("\"", std::string(64, 'a'), "\""));
}

TEST(QuoteForErrorTest, ControlNonAsciiQuotesAndBackslashesAreEscaped) {
  EXPECT_EQ(QuoteForError(std::string("a\0z", 3)), "\"a\\x00z\"");
  // A hex digit right after a hex escape is escaped too, so the text reads back unambiguously.
  EXPECT_EQ(QuoteForError(std::string("\0b", 2)), "\"\\x00\\x62\"");
  EXPECT_EQ(QuoteForError("line\r\nnext\tcol"), "\"line\\r\\nnext\\tcol\"");
  EXPECT_EQ(QuoteForError("\x1b[31mred"), "\"\\x1b[31mred\"");
  EXPECT_EQ(QuoteForError("caf\xc3\xa9"), "\"caf\\xc3\\xa9\"");
  EXPECT_EQ(QuoteForError("say \"hi\" \\o/"), "\"say \\\"hi\\\" \\\\o/\"");
  EXPECT_EQ(QuoteForError("\x7f"), "\"\\x7f\"");
}

TEST(QuoteForErrorTest, LongTextIsCutAndMarked) {
  EXPECT_EQ(QuoteForError(std::string(65, 'a')), absl::StrCat("\"", std::string(64, 'a'), "\"..."));
  EXPECT_EQ(QuoteForError(std::string(3 << 20, 'z')),
            absl::StrCat("\"", std::string(64, 'z'), "\"..."));
  EXPECT_EQ(QuoteForError("abcdefghij", 4), "\"abcd\"...");
  EXPECT_EQ(QuoteForError("abcd", 4), "\"abcd\"");
}

TEST(QuoteForErrorTest, CutNeverSplitsAnEscape) {
  // 16 whole "\x01" escapes are 64 characters; the 17th does not fit.
  std::string sixteen;
  for (int i = 0; i < 16; ++i) {
    sixteen += "\\x01";
  }
  EXPECT_EQ(QuoteForError(std::string(100, '\x01')), absl::StrCat("\"", sixteen, "\"..."));
  // Only 16 bytes, but escaped they are 64 characters: not cut.
  EXPECT_EQ(QuoteForError(std::string(16, '\x01')), absl::StrCat("\"", sixteen, "\""));
  // "ab" + "\n" is 4 characters; with room for 3, the escape is left out whole.
  EXPECT_EQ(QuoteForError("ab\n", 3), "\"ab\"...");
  EXPECT_EQ(QuoteForError("a\x01", 4), "\"a\"...");
  EXPECT_EQ(QuoteForError("a\x01", 5), "\"a\\x01\"");
}

TEST(QuoteForErrorTest, ResultIsBoundedWhateverTheInput) {
  for (size_t max : {0u, 1u, 3u, 8u, 64u, 200u}) {
    for (const std::string& text : {std::string(1 << 16, '\xff'), std::string(1 << 16, '\\'),
                                    std::string(1 << 16, 'q'), std::string(1 << 16, '\n')}) {
      const std::string quoted = QuoteForError(text, max);
      EXPECT_LE(quoted.size(), max + 5) << max;
      for (char c : quoted) {
        EXPECT_TRUE(c >= 0x20 && c < 0x7f) << max;
      }
    }
  }
}

}  // namespace
}  // namespace verdictd
