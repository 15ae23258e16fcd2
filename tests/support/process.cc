#include "tests/support/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tests/support/wait_until.h"

extern char** environ;

namespace verdictd::testing {
namespace {

int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) {
    return WEXITSTATUS(wait_status);
  }
  if (WIFSIGNALED(wait_status)) {
    return 128 + WTERMSIG(wait_status);
  }
  return -1;
}

// This process's environment minus CLICKPATROL_TOKEN, plus `env` ("" removes a variable).
std::vector<std::string> ChildEnvironment(const std::map<std::string, std::string>& env) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    const std::string name = entry.substr(0, entry.find('='));
    if (name == "CLICKPATROL_TOKEN" || env.count(name) > 0) {
      continue;
    }
    env_strings.push_back(std::move(entry));
  }
  for (const auto& [name, value] : env) {
    if (!value.empty()) {
      env_strings.push_back(absl::StrCat(name, "=", value));
    }
  }
  return env_strings;
}

// Starts argv[0] with ChildEnvironment(env) and `actions` (which it destroys), in a clean signal
// state: nothing blocked, and SIGTERM, SIGINT and SIGPIPE at their defaults, whatever gtest's
// threads or the benchmark's signal handling left in this process.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            const std::map<std::string, std::string>& env,
                            posix_spawn_file_actions_t* actions) {
  std::vector<std::string> env_strings = ChildEnvironment(env);
  std::vector<char*> c_env;
  for (std::string& s : env_strings) {
    c_env.push_back(s.data());
  }
  c_env.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> c_argv;
  for (std::string& s : args) {
    c_argv.push_back(s.data());
  }
  c_argv.push_back(nullptr);

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, c_argv[0], actions, &attr, c_argv.data(), c_env.data());
  posix_spawn_file_actions_destroy(actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("posix_spawn ", argv[0], ": ", std::strerror(rc)));
  }
  return pid;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
    const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  absl::StatusOr<pid_t> pid = Spawn(argv, env, &actions);
  if (!pid.ok()) {
    return pid.status();
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(*pid));
}

ChildProcess::~ChildProcess() {
  if (!reaped_) {
    Kill();
  }
}

bool ChildProcess::Running() {
  if (reaped_) {
    return false;
  }
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    reaped_ = true;
    exit_code_ = ExitCodeOf(status);
    return false;
  }
  return true;
}

absl::StatusOr<int> ChildProcess::Wait(absl::Duration timeout) {
  const WaitResult<bool> exited = WaitUntil(
      absl::StrCat("pid ", pid_, " to exit"), [&] { return !Running(); }, timeout,
      absl::Milliseconds(10));
  if (!exited) {
    return exited.status();
  }
  return exit_code_;
}

absl::StatusOr<int> ChildProcess::Terminate(absl::Duration timeout) {
  if (Running()) {
    kill(pid_, SIGTERM);
  }
  absl::StatusOr<int> code = Wait(timeout);
  if (!code.ok()) {
    Kill();
  }
  return code;
}

void ChildProcess::Signal(int signal_number) {
  if (Running()) {
    kill(pid_, signal_number);
  }
}

void ChildProcess::Kill() {
  if (reaped_) {
    return;
  }
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  reaped_ = true;
  exit_code_ = ExitCodeOf(status);
}

absl::StatusOr<int> WaitForPortFile(const std::string& path, ChildProcess& process,
                                    absl::Duration timeout) {
  // The port (0 until the file holds one), or an error once the process has exited without
  // writing it: then it never will.
  auto port_in_file = [&]() -> absl::StatusOr<int> {
    int port = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFileOrEmpty(path)), &port) && port > 0) {
      return port;
    }
    if (!process.Running()) {
      return absl::FailedPreconditionError(absl::StrCat("process exited before writing ", path));
    }
    return 0;
  };
  const WaitResult<int> port = WaitUntil(
      absl::StrCat("a port number in ", path), port_in_file, [](int p) { return p > 0; }, timeout,
      absl::Milliseconds(10));
  if (!port) {
    return port.status();
  }
  return port.last();
}

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::string& stdin_text,
                                         const std::map<std::string, std::string>& env,
                                         absl::Duration timeout) {
  TempDir dir;
  const std::string in_path = dir.File("stdin");
  const std::string out_path = dir.File("stdout");
  const std::string err_path = dir.File("stderr");
  {
    std::ofstream in(in_path, std::ios::binary);
    in << stdin_text;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, in_path.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  absl::StatusOr<pid_t> spawned = Spawn(argv, env, &actions);
  if (!spawned.ok()) {
    return spawned.status();
  }
  const pid_t pid = *spawned;
  int status = 0;
  const WaitResult<bool> exited = WaitUntil(
      absl::StrCat(argv[0], " to exit"), [&] { return waitpid(pid, &status, WNOHANG) == pid; },
      timeout, absl::Milliseconds(5));
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return absl::DeadlineExceededError(
        absl::StrCat(exited.status().message(), "; stderr: ", ReadFileOrEmpty(err_path)));
  }
  CommandResult result;
  result.exit_code = ExitCodeOf(status);
  result.out = ReadFileOrEmpty(out_path);
  result.err = ReadFileOrEmpty(err_path);
  return result;
}

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "verdictd-test-XXXXXX").string();
  char* made = mkdtemp(pattern.data());
  path_ = made != nullptr ? std::string(made) : std::string();
}

TempDir::~TempDir() {
  if (!path_.empty() && std::getenv("VERDICTD_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

int64_t ProcStatusFieldKib(pid_t pid, const std::string& field) {
  const std::string status = ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/status"));
  const std::string key = "\n" + field + ":";
  const size_t at = status.find(key);
  if (at == std::string::npos) {
    return -1;
  }
  const size_t end = status.find('\n', at + key.size());
  std::string value(absl::StripAsciiWhitespace(
      absl::string_view(status).substr(at + key.size(), end - (at + key.size()))));
  if (absl::EndsWith(value, " kB")) {
    value.resize(value.size() - 3);
  }
  int64_t kib = 0;
  return absl::SimpleAtoi(value, &kib) ? kib : -1;
}

}  // namespace verdictd::testing
