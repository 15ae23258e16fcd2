#include "server/config_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/quote.h"
#include "nlohmann/json.hpp"

namespace verdictd {
namespace {

// Config files are small; anything bigger is a mistake (or /dev/zero).
constexpr size_t kMaxConfigBytes = 1 << 20;

absl::Status ConfigError(const std::string& path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", message));
}

absl::Status KeyError(const std::string& path, absl::string_view key, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("config ", path, ": key ", QuoteForError(key), ": ", message));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ConfigError(path, absl::StrCat("cannot open: ", std::strerror(errno)));
  }
  std::string content;
  char buffer[8192];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      const int saved = errno;
      close(fd);
      return ConfigError(path, absl::StrCat("cannot read: ", std::strerror(saved)));
    }
    if (n == 0) {
      break;
    }
    content.append(buffer, static_cast<size_t>(n));
    if (content.size() > kMaxConfigBytes) {
      close(fd);
      return ConfigError(path, absl::StrCat("larger than ", kMaxConfigBytes, " bytes"));
    }
  }
  close(fd);
  return content;
}

// "line L, column C" for nlohmann's byte position (1-based index of the last character read).
std::string LineColumn(const std::string& content, size_t byte) {
  const size_t pos = std::min(byte == 0 ? 0 : byte - 1, content.size());
  size_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < pos; ++i) {
    if (content[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return absl::StrCat("line ", line, ", column ", pos - line_start + 1);
}

// nlohmann's what() is "[json.exception.parse_error.101] parse error at ...: DETAIL".
absl::string_view ParseErrorDetail(absl::string_view what) {
  const size_t tag_end = what.find("] ");
  const size_t colon = what.find(": ", tag_end == absl::string_view::npos ? 0 : tag_end);
  if (colon == absl::string_view::npos) {
    return what;
  }
  return what.substr(colon + 2);
}

// A key that is a flag name but must never come from a config file, with the reason; "" if none.
std::string ForbiddenKeyReason(absl::string_view key) {
  if (key == "token" || key == "clickpatrol_token") {
    return "the ClickPatrol token is a secret and is never read from the config file; use "
           "CLICKPATROL_TOKEN or token_file";
  }
  if (key == "config" || key == "flagfile" || key == "fromenv" || key == "tryfromenv" ||
      key == "undefok" || absl::StartsWith(key, "help")) {
    return "not allowed in a config file (command line only)";
  }
  return "";
}

// Whether `filename` (as absl records it) ends with `suffix` at a path-component boundary.
bool OwnedBy(absl::string_view filename, absl::string_view suffix) {
  if (suffix.empty() || !absl::EndsWith(filename, suffix)) {
    return false;
  }
  if (filename.size() == suffix.size() || suffix.front() == '/') {
    return true;
  }
  const char before = filename[filename.size() - suffix.size() - 1];
  return before == '/' || before == '\\';
}

// The text `--key=TEXT` would carry for a JSON scalar.
absl::StatusOr<std::string> FlagText(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::string:
      return value.get<std::string>();
    case nlohmann::json::value_t::boolean:
      return std::string(value.get<bool>() ? "true" : "false");
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      return value.dump();
    case nlohmann::json::value_t::null:
      return absl::InvalidArgumentError("null is not a flag value; leave the key out instead");
    case nlohmann::json::value_t::array:
      return absl::InvalidArgumentError("an array is not a flag value");
    case nlohmann::json::value_t::object:
      return absl::InvalidArgumentError("an object is not a flag value");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("a JSON ", value.type_name(), " is not a flag value"));
  }
}

}  // namespace

absl::Status ApplyConfigFile(const std::string& path, absl::string_view owner_file_suffix) {
  if (path.empty()) {
    return absl::InvalidArgumentError("config: the file name is empty");
  }
  absl::StatusOr<std::string> content = ReadFile(path);
  if (!content.ok()) {
    return content.status();
  }

  nlohmann::json root;
  try {
    root = nlohmann::json::parse(*content);
  } catch (const nlohmann::json::parse_error& e) {
    return ConfigError(path, absl::StrCat("invalid JSON at ", LineColumn(*content, e.byte), ": ",
                                          ParseErrorDetail(e.what())));
  } catch (const nlohmann::json::exception& e) {
    // Not a syntax error, so no position: out_of_range.406 for a number no double can hold
    // ("1e999"). Uncaught, it would end the process with std::terminate.
    absl::string_view what = e.what();
    if (const size_t tag_end = what.find("] "); tag_end != absl::string_view::npos) {
      what.remove_prefix(tag_end + 2);
    }
    return ConfigError(path, absl::StrCat("invalid JSON: ", what));
  }
  if (!root.is_object()) {
    return ConfigError(path,
                       absl::StrCat("must hold a JSON object of flag names to values, not a JSON ",
                                    root.type_name()));
  }

  // Check every key first, so a typo anywhere stops start-up before anything is set.
  std::vector<std::pair<absl::CommandLineFlag*, std::string>> updates;
  for (const auto& [key, value] : root.items()) {
    if (std::string reason = ForbiddenKeyReason(key); !reason.empty()) {
      return KeyError(path, key, reason);
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(key);
    if (flag == nullptr || flag->IsRetired() || !OwnedBy(flag->Filename(), owner_file_suffix)) {
      return ConfigError(path, absl::StrCat("unknown key ", QuoteForError(key)));
    }
    absl::StatusOr<std::string> text = FlagText(value);
    if (!text.ok()) {
      return KeyError(path, key, text.status().message());
    }
    updates.emplace_back(flag, *std::move(text));
  }

  for (auto& [flag, text] : updates) {
    std::string error;
    if (!flag->ParseFrom(text, &error)) {
      return KeyError(path, flag->Name(), error);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindConfigFlag(int argc, char** argv) {
  std::string config;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") {
      break;
    }
    if (!absl::ConsumePrefix(&arg, "--")) {
      if (!absl::ConsumePrefix(&arg, "-")) {
        continue;
      }
    }
    if (arg == "config") {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError("--config needs a file name: --config=FILE");
      }
      config = argv[++i];
    } else if (absl::ConsumePrefix(&arg, "config=")) {
      config = std::string(arg);
    } else {
      continue;
    }
    if (config.empty()) {
      return absl::InvalidArgumentError("--config needs a file name: --config=FILE");
    }
  }
  return config;
}

}  // namespace verdictd
