#ifndef VERDICTD_TESTS_SUPPORT_PROCESS_H_
#define VERDICTD_TESTS_SUPPORT_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace verdictd::testing {

// A child process with stdout and stderr appended to a log file. Killed (SIGKILL) when
// destroyed if still running.
class ChildProcess {
 public:
  // Starts argv[0] with argv. The child's environment is this process's, minus
  // CLICKPATROL_TOKEN, plus `env` (a value of "" removes the variable).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
      const std::string& log_path);
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  bool Running();
  // SIGTERM, then waits up to `timeout`; returns the exit code (128+signal if killed by one),
  // or DEADLINE_EXCEEDED (and SIGKILLs it) if it did not exit in time.
  absl::StatusOr<int> Terminate(absl::Duration timeout = absl::Seconds(15));
  // SIGKILL and reap.
  void Kill();
  // Waits for the process to exit on its own; its exit code as for Terminate.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Sends `signal_number` (e.g. SIGTERM) if it is still running, without waiting.
  void Signal(int signal_number);

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  bool reaped_ = false;
  int exit_code_ = -1;
};

// What a finished command printed, and its exit code (128+signal if killed by one).
struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs argv[0] with argv to completion, with `stdin_text` on its stdin and stdout and stderr
// captured separately (through files, so neither can block the child). The environment is built
// as for ChildProcess::Start. DEADLINE_EXCEEDED (and the child is killed) after `timeout`.
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::string& stdin_text = "",
                                         const std::map<std::string, std::string>& env = {},
                                         absl::Duration timeout = absl::Seconds(60));

// Polls `path` until it holds a port number.
absl::StatusOr<int> WaitForPortFile(const std::string& path, ChildProcess& process,
                                    absl::Duration timeout = absl::Seconds(20));

// A fresh directory under the test temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFileOrEmpty(const std::string& path);

// A field of /proc/PID/status given in kB ("VmRSS", "VmHWM"), in KiB; -1 if unreadable.
int64_t ProcStatusFieldKib(pid_t pid, const std::string& field);

}  // namespace verdictd::testing

#endif  // VERDICTD_TESTS_SUPPORT_PROCESS_H_
