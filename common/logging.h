#ifndef VERDICTD_COMMON_LOGGING_H_
#define VERDICTD_COMMON_LOGGING_H_

// spdlog with formatting for absl types. Include this instead of spdlog/spdlog.h.

#include "absl/strings/string_view.h"
#include "spdlog/spdlog.h"

// absl::string_view is its own type in this absl build (not std::string_view), so fmt needs
// to be told how to print it.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view text, FormatContext& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(text.data(), text.size()),
                                                    ctx);
  }
};

#endif  // VERDICTD_COMMON_LOGGING_H_
