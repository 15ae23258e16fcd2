// verdictctl: the command-line client of verdictd, for people (aligned tables) and scripts
// (--json, exit codes).
//
// The only place that reads flags and the environment.

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "client/cpp/verdict_client.h"
#include "client/verdictctl/commands.h"
#include "client/verdictctl/input.h"
#include "client/verdictctl/migrate.h"
#include "common/duration.h"
#include "common/file.h"
#include "grpcpp/grpcpp.h"
#include "server/auth/api_keys.h"
#include "storage/postgres/postgres_store.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "verdictd address");
ABSL_FLAG(std::string, api_key_file, "",
          "File holding the API key (one trailing newline stripped), sent as `authorization: "
          "Bearer <key>`; default: $VERDICT_API_KEY. Never a flag's value: flags show in ps");
ABSL_FLAG(std::string, caller, "",
          "x-caller metadata (open mode); for `usage`, also whose usage to show");
ABSL_FLAG(std::string, team, "",
          "usage, clicks: only that team's callers (a team lead's or an auditor's view)");
ABSL_FLAG(bool, json, false, "One JSON object per line instead of a table");
ABSL_FLAG(bool, csv, false, "history, clicks: CSV (RFC 4180, with a header) instead of a table");
ABSL_FLAG(std::string, ip, "", "clicks: only the clicks for this IP");
ABSL_FLAG(std::string, timeout, "30s", "Deadline of each RPC (0: none)");
ABSL_FLAG(std::string, tls_ca, "", "PEM file of root CAs: use TLS and trust these roots");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate chain for mTLS (needs --tls_ca)");
ABSL_FLAG(std::string, tls_key, "", "PEM client private key for mTLS (needs --tls_ca)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to verify the server's certificate against (default: the --server host)");
ABSL_FLAG(std::string, ua, "", "User agent (batch: for lines without one)");
ABSL_FLAG(std::string, max_age, "",
          "Oldest acceptable stored verdict, e.g. 1h, 7d; 0 always asks ClickPatrol "
          "(default: the server's)");
ABSL_FLAG(bool, cache_only, false, "Answer only from the store; never spend a click");
ABSL_FLAG(std::string, since, "", "Start of the range, inclusive: RFC 3339, YYYY-MM-DD or -24h");
ABSL_FLAG(std::string, until, "", "End of the range, exclusive: RFC 3339, YYYY-MM-DD or -24h");
ABSL_FLAG(int64_t, limit, 0, "Most history or clicks rows to print (0: all)");
ABSL_FLAG(int32_t, page_size, 0,
          "history, clicks: rows asked per call (0: the server's default, at most 1000)");
ABSL_FLAG(bool, days, false, "usage: also print the per-day rows");
ABSL_FLAG(std::string, from, "", "migrate: the SQLite store to copy (opened read-only)");
ABSL_FLAG(std::string, to, "",
          "migrate: the empty PostgreSQL database, as a libpq URI without a password");
ABSL_FLAG(std::string, db_password_file, "",
          "migrate: file holding the PostgreSQL password (else libpq's PGPASSWORD, PGPASSFILE)");

namespace verdictd::cli {
namespace {

constexpr char kShortUsage[] = R"(usage: verdictctl [FLAGS] SUBCOMMAND [OPERANDS] [FLAGS]
  check IP [--ua=UA] [--max_age=DURATION] [--cache_only]
  batch FILE|- [--ua=UA] [--max_age=DURATION] [--cache_only]
  history IP [--since=TIME] [--until=TIME] [--limit=N] [--page_size=N] [--csv]
  clicks [IP] [--caller=NAME|--team=NAME] [--since=TIME] [--until=TIME] [--limit=N]
         [--page_size=N] [--csv]
  usage [--caller=NAME|--team=NAME] [--since=TIME] [--until=TIME] [--days]
  health [SERVICE]
  hash-key < KEY
  migrate --from=SQLITE_FILE --to=POSTGRESQL_URI [--db_password_file=FILE]
`verdictctl --help` describes the flags and the exit codes (64: usage error).
)";

constexpr char kUsage[] = R"(usage: verdictctl [FLAGS] SUBCOMMAND [OPERANDS] [FLAGS]

subcommands:
  check IP [--ua=UA] [--max_age=DURATION] [--cache_only]
      One verdict.
  batch FILE|- [--ua=UA] [--max_age=DURATION] [--cache_only]
      One verdict per input line: `IP` or `IP,USER_AGENT` (the first comma splits); blank
      lines and `#` comments are skipped; `-` reads stdin. Sent in batches of the server's
      max_batch; results in input order. Progress bar on stderr when it is a terminal.
  history IP [--since=TIME] [--until=TIME] [--limit=N] [--page_size=N] [--csv]
      Stored verdicts for IP, newest first, following page tokens to the end or N rows.
  clicks [IP] [--caller=NAME|--team=NAME] [--since=TIME] [--until=TIME] [--limit=N]
         [--page_size=N] [--csv]
      The click ledger, newest first: every request sent to ClickPatrol (and every one that
      never left), who it was spent for and its team, its outcome (verdict, error, pending,
      not_sent), HTTP status, latency and the verdict it produced; of one IP and/or one
      caller or team (neither: every caller, for auditors and in open mode); --since/--until
      bound the time it was requested.
  usage [--caller=NAME|--team=NAME] [--since=TIME] [--until=TIME] [--days]
      Clicks, cache hits and requests per caller (no --caller or --team: every caller), each
      team's sum and budget with its callers beneath, and the ClickPatrol allowance; --days
      adds per-day rows. A caller may read its own, a team lead its team's, an auditor all.
  health [SERVICE]
      grpc.health.v1 status of the server (or of SERVICE, e.g. verdict.v1.VerdictService):
      prints SERVING and exits 0, or prints NOT_SERVING (the store is unusable) and exits
      69; a server that is shutting down refuses the call (14). For container health checks.
  hash-key
      Reads an API key from stdin (one trailing newline is stripped) and prints the SHA-256
      hex that the server's keys file holds. Needs no server.
  migrate --from=SQLITE_FILE --to=POSTGRESQL_URI [--db_password_file=FILE]
      Copies a SQLite store (history, ledger, usage counters, secrets) into an EMPTY
      PostgreSQL database in one transaction, keeping ids, pending clicks and page tokens
      valid; checks row counts and usage totals before committing and prints them. Stop
      verdictd first. The URI must not carry a password: --db_password_file (one trailing
      newline stripped), or libpq's PGPASSWORD / PGPASSFILE. Needs no server. Progress bar
      on stderr when it is a terminal, else a line every few seconds.

flags for every subcommand:
  --server=HOST:PORT   verdictd address (default 127.0.0.1:50051)
  --api_key_file=PATH  a file holding the API key (one trailing newline stripped), sent
                       as `authorization: Bearer KEY`; else $VERDICT_API_KEY. There is no
                       flag that takes the key itself: flags show up in `ps`
  --caller=NAME        sent as x-caller (the caller's name in open mode)
  --team=NAME          usage, clicks: that team's callers only
  --json               one JSON object per line (proto JSON, lowerCamelCase, defaults
                       included): check: the response; batch: one result per input line,
                       in order; history: one verdict per line; clicks: one click per
                       line; usage: the whole response; migrate: the summary
  --csv                history, clicks: CSV (RFC 4180, CRLF, a header row; cells that
                       begin with = + - @ are prefixed with ' against spreadsheet formulas)
  --timeout=DURATION   deadline of each RPC (default 30s; 0: none)
  --tls_ca=PEM         use TLS, trusting these roots (plaintext otherwise)
  --tls_cert=PEM --tls_key=PEM   client certificate for mTLS
  --tls_server_name=NAME         certificate name to expect (default: the --server host)

TIME: RFC 3339 (2026-11-27T10:00:00Z), a UTC date (2026-11-27) or relative (-24h, -7d).
DURATION: 90s, 15m, 1h, 7d, 0.

exit status:
  0       success
  1..16   the gRPC status code of the failed call (3 INVALID_ARGUMENT, 5 NOT_FOUND,
          8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION, 14 UNAVAILABLE, 16 UNAUTHENTICATED, ...);
          the message goes to stderr as `verdictctl: CODE_NAME: message`
  64      usage error (unknown subcommand or flag, bad operand or flag value)
  65      batch: every RPC succeeded but some items failed (their rows show the error);
          hash-key: the key on stdin is empty
  66      an input file (batch FILE, --tls_*) cannot be read
  69      health: the server answered, and is not SERVING
  migrate: 9 the target is not empty (nothing written) or the file's schema is unknown,
          14 PostgreSQL unreachable, 13 the counts did not match (rolled back), 66 the SQLite
          file cannot be opened
)";

int UsageError(absl::string_view message) {
  std::cerr << "verdictctl: " << message << "\n" << kShortUsage;
  return kExitUsage;
}

// Checks argv as absl::ParseCommandLine will read it, so that an unknown flag or a bad value
// exits with kExitUsage rather than absl's exit code 1, which means CANCELLED here. Returns the
// problem, or nullopt when absl will accept every flag.
std::optional<std::string> CheckFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") {
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      continue;  // an operand, including "-" (stdin)
    }
    const absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
    const size_t eq = body.find('=');
    const absl::string_view name = body.substr(0, eq);
    std::optional<absl::string_view> value;
    if (eq != absl::string_view::npos) {
      value = body.substr(eq + 1);
    }
    if (name == "api_key") {
      // Never echo the value: it is the secret.
      return "--api_key is not a flag: a key on the command line shows in `ps` and shell "
             "history; set $VERDICT_API_KEY or --api_key_file=PATH";
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>() && !value.has_value()) {
        continue;
      }
    }
    if (flag == nullptr) {
      return absl::StrCat("unknown flag --", name);
    }
    if (!value.has_value()) {
      if (flag->IsOfType<bool>()) {
        continue;
      }
      if (i + 1 >= argc) {
        return absl::StrCat("--", name, " needs a value");
      }
      value = argv[++i];
    }
    std::string error;
    if (!flag->ParseFrom(*value, &error)) {
      return absl::StrCat("--", name, ": ", error);
    }
  }
  return std::nullopt;
}

std::string ReadStdin() {
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

int HashKey() {
  const std::string key = StripOneNewline(ReadStdin());
  if (key.empty()) {
    std::cerr << "verdictctl: hash-key: the API key on stdin is empty\n";
    return kExitItemsFailed;
  }
  std::cout << HashApiKeyHex(key) << std::endl;
  return 0;
}

int Migrate() {
  MigrateCommand command;
  command.from = absl::GetFlag(FLAGS_from);
  command.to = absl::GetFlag(FLAGS_to);
  if (command.from.empty() || command.to.empty()) {
    return UsageError("migrate needs --from=SQLITE_FILE and --to=POSTGRESQL_URI");
  }
  if (!IsPostgresUri(command.to)) {
    return UsageError(
        "migrate: --to must be a PostgreSQL URI (postgresql://... or postgres://...)");
  }
  // Says where a password goes instead; never repeats the URI's.
  if (absl::Status uri = CheckPostgresUri(command.to); !uri.ok()) {
    return UsageError(absl::StrCat("--to: ", uri.message()));
  }
  if (const std::string file = absl::GetFlag(FLAGS_db_password_file); !file.empty()) {
    absl::StatusOr<std::string> contents = ReadFileToString(file);
    if (!contents.ok()) {
      std::cerr << "verdictctl: " << contents.status().message() << '\n';
      return kExitNoInput;
    }
    command.password = StripOneNewline(*std::move(contents));
    if (command.password.empty()) {
      std::cerr << "verdictctl: --db_password_file " << file << " is empty\n";
      return kExitNoInput;
    }
  }
  command.json = absl::GetFlag(FLAGS_json);
  command.tty = isatty(STDERR_FILENO) == 1;
  return RunMigrate(command);
}

// Flags that only some subcommands read; setting one elsewhere is a usage error rather than
// silently ignored.
std::optional<std::string> MisplacedFlag(const std::string& command) {
  struct Specific {
    const char* name;
    bool set;
    std::vector<std::string> commands;
  };
  const Specific specific[] = {
      {"ua", !absl::GetFlag(FLAGS_ua).empty(), {"check", "batch"}},
      {"max_age", !absl::GetFlag(FLAGS_max_age).empty(), {"check", "batch"}},
      {"cache_only", absl::GetFlag(FLAGS_cache_only), {"check", "batch"}},
      {"since", !absl::GetFlag(FLAGS_since).empty(), {"history", "usage", "clicks"}},
      {"until", !absl::GetFlag(FLAGS_until).empty(), {"history", "usage", "clicks"}},
      {"limit", absl::GetFlag(FLAGS_limit) != 0, {"history", "clicks"}},
      {"page_size", absl::GetFlag(FLAGS_page_size) != 0, {"history", "clicks"}},
      {"csv", absl::GetFlag(FLAGS_csv), {"history", "clicks"}},
      {"ip", !absl::GetFlag(FLAGS_ip).empty(), {"clicks"}},
      {"days", absl::GetFlag(FLAGS_days), {"usage"}},
      {"from", !absl::GetFlag(FLAGS_from).empty(), {"migrate"}},
      {"to", !absl::GetFlag(FLAGS_to).empty(), {"migrate"}},
      {"db_password_file", !absl::GetFlag(FLAGS_db_password_file).empty(), {"migrate"}},
  };
  for (const Specific& s : specific) {
    if (s.set && std::find(s.commands.begin(), s.commands.end(), command) == s.commands.end()) {
      return absl::StrCat("--", s.name, " does not apply to ", command);
    }
  }
  return std::nullopt;
}

// Reads one of --since/--until (unset when empty); a usage error message on failure.
std::optional<std::string> TimeFlag(absl::string_view name, const std::string& text, absl::Time now,
                                    std::optional<absl::Time>* out) {
  if (text.empty()) {
    return std::nullopt;
  }
  absl::StatusOr<absl::Time> t = ParseTimeArg(text, now);
  if (!t.ok()) {
    return absl::StrCat("--", name, ": ", t.status().message());
  }
  *out = *t;
  return std::nullopt;
}

// Reads --since and --until, relative ones against the same `now`.
std::optional<std::string> TimeRange(std::optional<absl::Time>* since,
                                     std::optional<absl::Time>* until) {
  const absl::Time now = absl::Now();
  if (std::optional<std::string> problem =
          TimeFlag("since", absl::GetFlag(FLAGS_since), now, since)) {
    return problem;
  }
  if (std::optional<std::string> problem =
          TimeFlag("until", absl::GetFlag(FLAGS_until), now, until)) {
    return problem;
  }
  if (since->has_value() && until->has_value() && **since >= **until) {
    return "--since must be before --until";
  }
  return std::nullopt;
}

// The channel to --server: TLS when --tls_ca is set, plaintext otherwise. The flag combinations
// are checked here so that the messages name the flags.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel() {
  client::ChannelOptions options;
  options.target = absl::GetFlag(FLAGS_server);
  options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  const bool client_cert = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (options.tls_ca_file.empty() && client_cert) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key need --tls_ca");
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  return client::NewChannel(options);
}

int Main(int argc, char** argv) {
  // Our own help: absl's --help would exit 1, which means CANCELLED here.
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-help" || arg == "-h" || (i == 1 && arg == "help")) {
      std::cout << kUsage;
      return 0;
    }
  }
  if (std::optional<std::string> problem = CheckFlags(argc, argv)) {
    return UsageError(*problem);
  }
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> operands(positional.begin() + 1, positional.end());
  if (operands.empty()) {
    return UsageError("no subcommand");
  }
  const std::string command = operands[0];
  operands.erase(operands.begin());
  const size_t want_operands =
      (command == "usage" || command == "hash-key" || command == "migrate") ? 0 : 1;
  if (command != "check" && command != "batch" && command != "history" && command != "usage" &&
      command != "clicks" && command != "hash-key" && command != "health" && command != "migrate") {
    return UsageError(absl::StrCat("unknown subcommand \"", command, "\""));
  }
  const bool optional_operand = command == "health" || command == "clicks";
  if (optional_operand ? operands.size() > 1 : operands.size() != want_operands) {
    if (optional_operand) {
      return UsageError(absl::StrCat(command, " takes at most 1 operand, got ", operands.size()));
    }
    return UsageError(absl::StrCat(command, " takes ", want_operands, " operand",
                                   want_operands == 1 ? "" : "s", ", got ", operands.size()));
  }
  if (std::optional<std::string> problem = MisplacedFlag(command)) {
    return UsageError(*problem);
  }
  if (absl::GetFlag(FLAGS_json) && absl::GetFlag(FLAGS_csv)) {
    return UsageError("--json and --csv are two formats: choose one");
  }
  if (command == "clicks" && !operands.empty() && !absl::GetFlag(FLAGS_ip).empty()) {
    return UsageError("clicks: give the IP as the operand or as --ip, not both");
  }
  if (command == "hash-key") {
    return HashKey();
  }
  if (command == "migrate") {
    return Migrate();
  }

  absl::StatusOr<absl::Duration> timeout = ParseDuration(absl::GetFlag(FLAGS_timeout));
  if (!timeout.ok()) {
    return UsageError(absl::StrCat("--timeout: ", timeout.status().message()));
  }
  CheckOptions check;
  if (const std::string max_age = absl::GetFlag(FLAGS_max_age); !max_age.empty()) {
    absl::StatusOr<absl::Duration> d = ParseDuration(max_age);
    if (!d.ok()) {
      return UsageError(absl::StrCat("--max_age: ", d.status().message()));
    }
    check.max_age = *d;
  }
  check.cache_only = absl::GetFlag(FLAGS_cache_only);
  if (absl::GetFlag(FLAGS_limit) < 0) {
    return UsageError("--limit must not be negative");
  }
  if (absl::GetFlag(FLAGS_page_size) < 0 || absl::GetFlag(FLAGS_page_size) > 1000) {
    return UsageError("--page_size must be 0..1000");
  }
  std::optional<absl::Time> since;
  std::optional<absl::Time> until;
  if (std::optional<std::string> problem = TimeRange(&since, &until)) {
    return UsageError(*problem);
  }
  std::string api_key;
  if (const std::string file = absl::GetFlag(FLAGS_api_key_file); !file.empty()) {
    absl::StatusOr<std::string> contents = ReadFileToString(file);
    if (!contents.ok()) {
      std::cerr << "verdictctl: " << contents.status().message() << '\n';
      return kExitNoInput;
    }
    api_key = StripOneNewline(*std::move(contents));
    if (api_key.empty()) {
      std::cerr << "verdictctl: --api_key_file " << file << " is empty\n";
      return kExitNoInput;
    }
  } else if (const char* env = std::getenv("VERDICT_API_KEY"); env != nullptr) {
    api_key = env;
  }

  // Read batch input before connecting, so a missing file is reported as such.
  std::vector<BatchItem> items;
  if (command == "batch") {
    std::string text;
    if (operands[0] == "-") {
      text = ReadStdin();
    } else {
      absl::StatusOr<std::string> contents = ReadFileToString(operands[0]);
      if (!contents.ok()) {
        std::cerr << "verdictctl: " << contents.status().message() << '\n';
        return kExitNoInput;
      }
      text = *std::move(contents);
    }
    items = ParseBatchInput(text, absl::GetFlag(FLAGS_ua));
  }

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel();
  if (!channel.ok()) {
    if (absl::IsNotFound(channel.status())) {
      std::cerr << "verdictctl: " << channel.status().message() << '\n';
      return kExitNoInput;
    }
    return UsageError(channel.status().message());
  }
  Connection connection(*std::move(channel), std::move(api_key), absl::GetFlag(FLAGS_caller),
                        *timeout);
  const bool json = absl::GetFlag(FLAGS_json);
  const Output output =
      json ? Output::kJson : (absl::GetFlag(FLAGS_csv) ? Output::kCsv : Output::kTable);
  if (command == "health") {
    return RunHealth(connection, operands.empty() ? "" : operands[0], json);
  }
  if (command == "check") {
    return RunCheck(connection, operands[0], absl::GetFlag(FLAGS_ua), check, json);
  }
  if (command == "batch") {
    return RunBatch(connection, items, check, json, /*progress=*/isatty(STDERR_FILENO) == 1);
  }
  if (command == "history") {
    HistoryOptions history;
    history.since = since;
    history.until = until;
    history.limit = absl::GetFlag(FLAGS_limit);
    history.page_size = absl::GetFlag(FLAGS_page_size);
    return RunHistory(connection, operands[0], history, output);
  }
  if (command == "clicks") {
    ClicksOptions clicks;
    clicks.caller = absl::GetFlag(FLAGS_caller);
    clicks.team = absl::GetFlag(FLAGS_team);
    clicks.ip = operands.empty() ? absl::GetFlag(FLAGS_ip) : operands[0];
    clicks.since = since;
    clicks.until = until;
    clicks.limit = absl::GetFlag(FLAGS_limit);
    clicks.page_size = absl::GetFlag(FLAGS_page_size);
    return RunClicks(connection, clicks, output);
  }
  UsageOptions usage;
  usage.caller = absl::GetFlag(FLAGS_caller);
  usage.team = absl::GetFlag(FLAGS_team);
  usage.since = since;
  usage.until = until;
  usage.days = absl::GetFlag(FLAGS_days);
  return RunUsage(connection, usage, json);
}

}  // namespace
}  // namespace verdictd::cli

int main(int argc, char** argv) { return verdictd::cli::Main(argc, argv); }
