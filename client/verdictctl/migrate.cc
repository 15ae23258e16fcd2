#include "client/verdictctl/migrate.h"

#include <iostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/verdictctl/commands.h"
#include "client/verdictctl/format.h"
#include "common/duration.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"
#include "storage/migrate/sqlite_to_postgres.h"

namespace verdictd::cli {
namespace {

// Progress on stderr: on a terminal one bar per table, redrawn in place and finished with a
// newline; otherwise (a log, a pipe) a line per table start and end and at most one every 5 s
// between, so a long copy shows it is alive without flooding the log.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool tty) : tty_(tty) {}

  void operator()(const MigrationProgress& p) {
    const bool starting = p.table != table_;
    const bool finished = p.copied == p.total;
    if (starting) {
      table_ = p.table;
      done_table_ = false;
    }
    if (done_table_) {
      return;  // the end of a table is reported once
    }
    const std::string label = absl::StrFormat("%-9s", p.table);
    if (tty_) {
      std::cerr << '\r' << label << ProgressBar(p.copied, p.total) << (finished ? "\n" : "")
                << std::flush;
    } else {
      const absl::Time now = absl::Now();
      if (starting || finished || now >= next_line_) {
        std::cerr << "verdictctl: migrate: " << p.table << " " << p.copied << "/" << p.total
                  << " rows" << std::endl;
        next_line_ = now + absl::Seconds(5);
      }
    }
    done_table_ = finished;
  }

 private:
  const bool tty_;
  std::string table_;
  bool done_table_ = false;
  absl::Time next_line_ = absl::InfinitePast();
};

}  // namespace

int RunMigrate(const MigrateCommand& command) {
  // The stores log through spdlog (e.g. "schema migrated"), whose default logger writes to
  // stdout: that would break the summary, and --json above all. Their lines go to stderr.
  auto logger = spdlog::stderr_logger_mt("verdictctl");
  logger->set_pattern("verdictctl: migrate: %v");
  spdlog::set_default_logger(logger);
  MigrationOptions options;
  options.sqlite_path = command.from;
  options.postgres_uri = command.to;
  options.password = command.password;
  ProgressPrinter printer(command.tty);
  options.progress = [&printer](const MigrationProgress& p) { printer(p); };
  absl::StatusOr<MigrationReport> report = MigrateSqliteToPostgres(options);
  if (!report.ok()) {
    const int code = static_cast<int>(report.status().code());
    std::cerr << "verdictctl: " << CodeName(code) << ": migrate: " << report.status().message()
              << std::endl;
    return absl::IsNotFound(report.status()) ? kExitNoInput : code;
  }
  const UsageCounts& u = report->target_usage;
  if (command.json) {
    nlohmann::json tables = nlohmann::json::object();
    for (const TableCounts& t : report->tables) {
      tables[t.table] = {{"sqlite", t.source}, {"postgresql", t.target}};
    }
    nlohmann::json usage = {{"clicks", u.clicks},
                            {"upstreamErrors", u.upstream_errors},
                            {"cacheHits", u.cache_hits},
                            {"requests", u.requests}};
    std::cout << nlohmann::json{{"tables", tables},
                                {"usageTotals", usage},
                                {"verified", true},
                                {"seconds", absl::ToDoubleSeconds(report->took)}}
                     .dump()
              << std::endl;
    return 0;
  }
  Table table({"TABLE", "SQLITE", "POSTGRESQL"});
  for (const TableCounts& t : report->tables) {
    table.AddRow({t.table, absl::StrCat(t.source), absl::StrCat(t.target)});
  }
  table.Print(std::cout);
  std::cout << "usage totals (both sides): clicks=" << u.clicks
            << " upstream_errors=" << u.upstream_errors << " cache_hits=" << u.cache_hits
            << " requests=" << u.requests << "\n"
            << "verified and committed in "
            << DurationToString(absl::Trunc(report->took, absl::Milliseconds(1)))
            << "; start verdictd with --db=<the URI> (its password as before: "
               "--db_password_file or PGPASSWORD/PGPASSFILE)"
            << std::endl;
  return 0;
}

}  // namespace verdictd::cli
