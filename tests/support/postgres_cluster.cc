#include "tests/support/postgres_cluster.h"

#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace verdictd::testing {
namespace {

// The server's settings: no TCP (tests talk over the socket in the temp dir, so parallel test
// binaries never collide on a port), and no durability work (a test's data dies with it).
// Enough connections for several stores of several connections each at once.
constexpr char kServerSettings[] =
    "\n# verdictd tests (tests/support/postgres_cluster.cc)\n"
    "listen_addresses = ''\n"
    "fsync = off\n"
    "full_page_writes = off\n"
    "synchronous_commit = off\n"
    "max_connections = 300\n"
    "log_min_messages = warning\n";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string Tail(const std::string& text, size_t n = 2000) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

bool HasTools(const std::string& dir) {
  for (const char* tool : {"initdb", "pg_ctl", "postgres"}) {
    if (access((dir + "/" + tool).c_str(), X_OK) != 0) {
      return false;
    }
  }
  return true;
}

// A value for a URI: every byte but unreserved ones percent-encoded.
std::string UriEncode(absl::string_view value) {
  std::string out;
  for (unsigned char c : value) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

struct PgConnDeleter {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct PgResultDeleter {
  void operator()(PGresult* result) const { PQclear(result); }
};

}  // namespace

absl::StatusOr<std::string> PostgresBinDir() {
  if (const char* env = std::getenv("VERDICTD_POSTGRES_BIN"); env != nullptr && *env != '\0') {
    if (HasTools(env)) {
      return std::string(env);
    }
    return absl::NotFoundError(
        absl::StrCat("VERDICTD_POSTGRES_BIN=", env, " lacks initdb, pg_ctl or postgres"));
  }
  for (int version = 20; version >= 12; --version) {
    const std::string dir = absl::StrCat("/usr/lib/postgresql/", version, "/bin");
    if (HasTools(dir)) {
      return dir;
    }
  }
  return absl::NotFoundError(
      "PostgreSQL server binaries not found (no /usr/lib/postgresql/<version>/bin with initdb, "
      "pg_ctl and postgres): install postgresql-15 (scripts/deps.sh) or set "
      "VERDICTD_POSTGRES_BIN");
}

bool PostgresRequired() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && absl::AsciiStrToLower(ci) == "true";
}

PostgresCluster::PostgresCluster(std::string bin_dir, std::string root, absl::Duration timeout)
    : bin_dir_(std::move(bin_dir)),
      root_(std::move(root)),
      data_dir_(root_ + "/data"),
      socket_dir_(root_ + "/sock"),
      timeout_(timeout) {}

absl::StatusOr<std::unique_ptr<PostgresCluster>> PostgresCluster::Create(
    absl::Duration start_timeout) {
  absl::StatusOr<std::string> bin_dir = PostgresBinDir();
  if (!bin_dir.ok()) {
    return bin_dir.status();
  }
  // Short: the socket's path (<root>/sock/.s.PGSQL.5432) must fit in sun_path (108 bytes).
  std::string pattern = (std::filesystem::temp_directory_path() / "verdictd-pg-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", pattern, ": ", std::strerror(errno)));
  }
  std::unique_ptr<PostgresCluster> cluster(
      new PostgresCluster(*std::move(bin_dir), pattern, start_timeout));
  if (mkdir(cluster->socket_dir_.c_str(), 0700) != 0) {
    return absl::InternalError(
        absl::StrCat("mkdir ", cluster->socket_dir_, ": ", std::strerror(errno)));
  }
  if (geteuid() == 0) {
    // PostgreSQL refuses to run as root: give the temp dir to nobody, and make sure nobody can
    // reach it (a TMPDIR inside a private home would otherwise stop it at the first parent).
    struct passwd* nobody = getpwnam("nobody");
    if (nobody == nullptr) {
      return absl::FailedPreconditionError("running as root, and there is no user 'nobody'");
    }
    cluster->as_nobody_ = true;
    cluster->nobody_uid_ = nobody->pw_uid;
    cluster->nobody_gid_ = nobody->pw_gid;
    for (const std::string& dir : {cluster->root_, cluster->socket_dir_}) {
      if (chown(dir.c_str(), nobody->pw_uid, nobody->pw_gid) != 0) {
        return absl::InternalError(absl::StrCat("chown ", dir, ": ", std::strerror(errno)));
      }
    }
    for (std::filesystem::path parent = std::filesystem::path(cluster->root_).parent_path();
         !parent.empty() && parent != parent.root_path(); parent = parent.parent_path()) {
      struct stat st;
      if (stat(parent.c_str(), &st) == 0 && (st.st_mode & S_IXOTH) == 0) {
        chmod(parent.c_str(), (st.st_mode & 07777) | S_IXOTH);
      }
    }
  }
  // --no-sync and trust: a test's data need neither durability nor a password. C locale and
  // UTF8: the same collation everywhere, whatever the machine's locale.
  absl::Status made =
      cluster->RunTool("initdb", {"-D", cluster->data_dir_, "-A", "trust", "--no-sync", "-U",
                                  "verdictd", "-E", "UTF8", "--locale=C"});
  if (!made.ok()) {
    return made;
  }
  {
    std::ofstream conf(cluster->data_dir_ + "/postgresql.conf", std::ios::app);
    conf << kServerSettings << "unix_socket_directories = '" << cluster->socket_dir_ << "'\n";
    if (!conf) {
      return absl::InternalError("cannot append to postgresql.conf");
    }
  }
  absl::Status started = cluster->Start();
  if (!started.ok()) {
    return started;
  }
  return cluster;
}

absl::StatusOr<PostgresCluster*> PostgresCluster::Shared() {
  // Destroyed at exit, which stops the server and removes its files.
  static auto* const shared = new absl::StatusOr<std::unique_ptr<PostgresCluster>>(Create());
  static const bool registered = [] {
    std::atexit([] {
      if (shared->ok()) {
        shared->value().reset();
      }
    });
    return true;
  }();
  (void)registered;
  if (!shared->ok()) {
    return shared->status();
  }
  return shared->value().get();
}

PostgresCluster::~PostgresCluster() {
  if (running_) {
    (void)Stop(StopMode::kImmediate);
  }
  if (std::getenv("VERDICTD_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }
}

absl::StatusOr<pid_t> PostgresCluster::Spawn(const std::string& program,
                                             const std::vector<std::string>& args,
                                             const std::string& log_path, bool dies_with_us) {
  std::vector<std::string> argv = {bin_dir_ + "/" + program};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> c_argv;
  for (std::string& arg : argv) {
    c_argv.push_back(arg.data());
  }
  c_argv.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("open ", log_path, ": ", std::strerror(errno)));
  }
  if (as_nobody_ && fchown(log_fd, nobody_uid_, nobody_gid_) != 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("chown ", log_path, ": ", std::strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // Only async-signal-safe calls from here on.
    const int null_fd = open("/dev/null", O_RDONLY);
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    if (chdir(root_.c_str()) != 0) {
      _exit(126);
    }
    if (as_nobody_ &&
        (setgroups(0, nullptr) != 0 || setgid(nobody_gid_) != 0 || setuid(nobody_uid_) != 0)) {
      _exit(125);
    }
    // After setuid, which clears it: SIGQUIT (PostgreSQL's immediate shutdown) when the thread
    // that started the server dies, however it dies.
    if (dies_with_us && (prctl(PR_SET_PDEATHSIG, SIGQUIT) != 0 || getppid() != parent)) {
      _exit(124);
    }
    execv(c_argv[0], c_argv.data());
    _exit(127);
  }
  close(log_fd);
  return pid;
}

absl::StatusOr<int> PostgresCluster::WaitForExit(pid_t pid, absl::Duration timeout) {
  // Waiting on a real external process: poll its exit until the deadline.
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (true) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      return status;
    }
    if (done < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("waitpid: ", std::strerror(errno)));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("did not exit in time");
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

absl::Status PostgresCluster::RunTool(const std::string& program,
                                      const std::vector<std::string>& args) {
  const std::string log_path = root_ + "/tools.log";
  const size_t log_start = ReadFile(log_path).size();
  absl::StatusOr<pid_t> pid = Spawn(program, args, log_path, /*dies_with_us=*/false);
  if (!pid.ok()) {
    return pid.status();
  }
  absl::StatusOr<int> status = WaitForExit(*pid, timeout_);
  if (!status.ok()) {
    kill(*pid, SIGKILL);
    waitpid(*pid, nullptr, 0);
    return absl::DeadlineExceededError(absl::StrCat(
        program, " did not finish in time; output: ", Tail(ReadFile(log_path).substr(log_start))));
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat(program, " failed (status ", *status, "); output: ",
                                            Tail(ReadFile(log_path).substr(log_start))));
  }
  return absl::OkStatus();
}

absl::Status PostgresCluster::Start() {
  if (running_) {
    return absl::OkStatus();
  }
  // The postmaster is our own child (not daemonized by pg_ctl), so that it dies with the test
  // even when the test is killed; see Spawn.
  absl::StatusOr<pid_t> pid =
      Spawn("postgres", {"-D", data_dir_}, root_ + "/server.log", /*dies_with_us=*/true);
  if (!pid.ok()) {
    return pid.status();
  }
  const std::string conninfo = Uri("postgres");
  const absl::Time deadline = absl::Now() + timeout_;
  while (true) {
    if (PQping(conninfo.c_str()) == PQPING_OK) {
      server_pid_ = *pid;
      running_ = true;
      return absl::OkStatus();
    }
    int status = 0;
    if (waitpid(*pid, &status, WNOHANG) == *pid) {
      return absl::InternalError(absl::StrCat("postgres exited (status ", status,
                                              ") while starting; server log: ", Tail(ServerLog())));
    }
    if (absl::Now() > deadline) {
      kill(*pid, SIGKILL);
      waitpid(*pid, nullptr, 0);
      return absl::DeadlineExceededError(absl::StrCat("postgres did not accept connections within ",
                                                      absl::FormatDuration(timeout_),
                                                      "; server log: ", Tail(ServerLog())));
    }
    // Waiting on a real external process to come up.
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::Status PostgresCluster::Stop(StopMode mode) {
  if (!running_) {
    return absl::OkStatus();
  }
  // SIGINT: fast shutdown (disconnect clients, checkpoint); SIGQUIT: immediate (like a crash).
  kill(server_pid_, mode == StopMode::kFast ? SIGINT : SIGQUIT);
  absl::StatusOr<int> status = WaitForExit(server_pid_, timeout_);
  if (!status.ok()) {
    kill(server_pid_, SIGKILL);
    waitpid(server_pid_, nullptr, 0);
  }
  running_ = false;
  server_pid_ = -1;
  if (!status.ok()) {
    return absl::DeadlineExceededError(absl::StrCat("postgres did not stop within ",
                                                    absl::FormatDuration(timeout_),
                                                    " (killed); server log: ", Tail(ServerLog())));
  }
  return absl::OkStatus();
}

std::string PostgresCluster::Uri(absl::string_view dbname) const {
  return absl::StrCat("postgresql:///", UriEncode(dbname), "?host=", UriEncode(socket_dir_),
                      "&user=verdictd");
}

absl::StatusOr<std::string> PostgresCluster::Query(absl::string_view dbname,
                                                   absl::string_view sql) {
  std::unique_ptr<PGconn, PgConnDeleter> conn(PQconnectdb(Uri(dbname).c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(
        absl::StrCat("connecting to ", dbname, ": ", PQerrorMessage(conn.get())));
  }
  std::unique_ptr<PGresult, PgResultDeleter> result(PQexec(conn.get(), std::string(sql).c_str()));
  const ExecStatusType status = PQresultStatus(result.get());
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    const char* sqlstate = PQresultErrorField(result.get(), PG_DIAG_SQLSTATE);
    std::string message = absl::StrCat(PQerrorMessage(conn.get()), " [SQLSTATE ",
                                       sqlstate != nullptr ? sqlstate : "?", "]");
    if (sqlstate != nullptr && std::strcmp(sqlstate, "42P04") == 0) {  // duplicate_database
      return absl::AlreadyExistsError(message);
    }
    return absl::InternalError(message);
  }
  if (status == PGRES_TUPLES_OK && PQntuples(result.get()) > 0 && PQnfields(result.get()) > 0) {
    return std::string(PQgetvalue(result.get(), 0, 0),
                       static_cast<size_t>(PQgetlength(result.get(), 0, 0)));
  }
  return std::string();
}

absl::Status PostgresCluster::CreateDatabase(absl::string_view name) {
  // Identifiers cannot be bound parameters: quote the name with libpq's own escaping.
  std::unique_ptr<PGconn, PgConnDeleter> conn(PQconnectdb(Uri("postgres").c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat("connecting: ", PQerrorMessage(conn.get())));
  }
  char* quoted = PQescapeIdentifier(conn.get(), name.data(), name.size());
  if (quoted == nullptr) {
    return absl::InvalidArgumentError(PQerrorMessage(conn.get()));
  }
  const std::string statement = absl::StrCat("CREATE DATABASE ", quoted);
  PQfreemem(quoted);
  return Query("postgres", statement).status();
}

std::string PostgresCluster::ServerLog() const { return ReadFile(root_ + "/server.log"); }

}  // namespace verdictd::testing
