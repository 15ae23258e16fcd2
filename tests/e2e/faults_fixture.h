#ifndef VERDICTD_TESTS_E2E_FAULTS_FIXTURE_H_
#define VERDICTD_TESTS_E2E_FAULTS_FIXTURE_H_

// What the fault-injection tests (faults_*_test.cc) share: their distinctive token, the ledger's
// outcome codes, simulator rules, and finding verdictd's process and its memory in /proc.

#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/support/harness.h"
#include "tests/support/process.h"

namespace verdictd::testing::faults {

namespace pb = ::verdict::v1;

// A distinctive token, so a leak is easy to grep for.
inline constexpr char kToken[] = "cp_FaultSecretToken_9c41e7d02a";

// Ledger outcomes (storage/verdict_store.h ClickOutcome).
inline constexpr int kOutcomeVerdict = 1;
inline constexpr int kOutcomeUpstreamError = 2;
inline constexpr int kOutcomeNotSent = 3;

inline void PostRules(const Simulator& sim, const std::string& rules) {
  httplib::Client client("127.0.0.1", sim.port());
  httplib::Result result = client.Post("/_sim/rules", rules, "text/plain");
  ASSERT_TRUE(result && result->status == 200) << "POST /_sim/rules failed: " << rules;
}

// The pid of the running verdictd whose command line holds `arg` (its --db flag is unique per
// test), or -1.
inline pid_t FindProcessWithArg(const std::string& arg) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    const std::string cmdline = ReadFileOrEmpty(entry.path().string() + "/cmdline");
    size_t start = 0;
    while (start < cmdline.size()) {
      const size_t end = cmdline.find('\0', start);
      if (cmdline.compare(start, end - start, arg) == 0) {
        return static_cast<pid_t>(std::stol(name));
      }
      if (end == std::string::npos) {
        break;
      }
      start = end + 1;
    }
  }
  return -1;
}

// A field of /proc/PID/status in KiB (VmRSS, VmHWM), or -1.
inline int64_t ProcStatusKib(pid_t pid, const std::string& field) {
  const std::string status = ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/status"));
  const size_t at = status.find(field + ":");
  if (at == std::string::npos) {
    return -1;
  }
  return std::stoll(status.substr(at + field.size() + 1));
}

}  // namespace verdictd::testing::faults

#endif  // VERDICTD_TESTS_E2E_FAULTS_FIXTURE_H_
