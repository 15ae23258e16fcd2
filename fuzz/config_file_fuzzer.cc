// Fuzzes verdictd::ApplyConfigFile, which reads verdictd's JSON config file into absl flags.
//
// ApplyConfigFile works on a file and on the global flag registry. This fuzzer defines its own
// flags (below) and passes its own file name as the owner suffix, so only those flags can ever
// be set, and writes each input to one temporary file. Nothing of verdictd's flags is linked in.
//
// Properties: it never crashes or throws; an error is INVALID_ARGUMENT naming the file; success
// means the input is a JSON object whose keys are all flags of this file, and each string value
// ends up in its flag unchanged.

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "fuzz_check.h"
#include "nlohmann/json.hpp"
#include "server/config_file.h"

ABSL_FLAG(std::string, fz_string, "", "a string flag");
ABSL_FLAG(int64_t, fz_int, 0, "an integer flag");
ABSL_FLAG(uint16_t, fz_port, 0, "a small unsigned flag");
ABSL_FLAG(bool, fz_bool, false, "a boolean flag");
ABSL_FLAG(double, fz_double, 0, "a floating-point flag");
ABSL_FLAG(absl::Duration, fz_duration, absl::Seconds(1), "a duration flag");

namespace {

void ResetFlags() {
  absl::SetFlag(&FLAGS_fz_string, "");
  absl::SetFlag(&FLAGS_fz_int, 0);
  absl::SetFlag(&FLAGS_fz_port, 0);
  absl::SetFlag(&FLAGS_fz_bool, false);
  absl::SetFlag(&FLAGS_fz_double, 0);
  absl::SetFlag(&FLAGS_fz_duration, absl::Seconds(1));
}

bool IsOurFlag(const std::string& key) {
  return key == "fz_string" || key == "fz_int" || key == "fz_port" || key == "fz_bool" ||
         key == "fz_double" || key == "fz_duration";
}

// The one temporary file every input is written to; removed at exit.
std::string* temp_path = nullptr;
int temp_fd = -1;

void RemoveTempFile() { unlink(temp_path->c_str()); }

void WriteInput(const uint8_t* data, size_t size) {
  if (temp_path == nullptr) {
    const char* dir = std::getenv("TMPDIR");
    std::string pattern =
        absl::StrCat(dir != nullptr && *dir != '\0' ? dir : "/tmp", "/config_file_fuzzer.XXXXXX");
    temp_fd = mkstemp(pattern.data());
    FUZZ_CHECK(temp_fd >= 0);
    temp_path = new std::string(pattern);
    std::atexit(RemoveTempFile);
  }
  FUZZ_CHECK(ftruncate(temp_fd, 0) == 0);
  size_t written = 0;
  while (written < size) {
    const ssize_t n = pwrite(temp_fd, data + written, size - written, written);
    FUZZ_CHECK(n > 0);
    written += static_cast<size_t>(n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  WriteInput(data, size);
  ResetFlags();
  const absl::Status status = verdictd::ApplyConfigFile(*temp_path, "config_file_fuzzer.cc");

  // nlohmann without exceptions: a second opinion on what the file holds.
  const nlohmann::json json = nlohmann::json::parse(data, data + size, /*cb=*/nullptr,
                                                    /*allow_exceptions=*/false);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(absl::StartsWith(status.message(), absl::StrCat("config ", *temp_path, ": ")));
    return 0;
  }
  FUZZ_CHECK(!json.is_discarded());
  FUZZ_CHECK(json.is_object());
  for (const auto& [key, value] : json.items()) {
    FUZZ_CHECK(IsOurFlag(key));
    FUZZ_CHECK(!value.is_null() && !value.is_array() && !value.is_object());
  }
  // Strings reach a string flag as they are (the last of duplicate keys wins, in both).
  if (const auto it = json.find("fz_string"); it != json.end() && it->is_string()) {
    FUZZ_CHECK(absl::GetFlag(FLAGS_fz_string) == it->get<std::string>());
  }
  return 0;
}
