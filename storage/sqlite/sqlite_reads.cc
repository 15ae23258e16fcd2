// The SQLite store's reads: a queue served by reader threads, each with its own read-only
// connection, and the queries themselves. Callbacks run on the reader threads.

#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "storage/sqlite/sqlite_connection.h"
#include "storage/sqlite/sqlite_schema.h"
#include "storage/sqlite/sqlite_statement.h"
#include "storage/sqlite/sqlite_store_impl.h"
#include "storage/sqlite/sqlite_store_internal.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace sqlite_store_internal {

void SqliteStore::PostRead(ReadTask task) {
  {
    absl::MutexLock lock(&reads_mu_);
    if (!readers_stopping_) {
      read_queue_.push_back(std::move(task));
      return;
    }
  }
  Reader reader;
  task(reader);
}

void SqliteStore::ReaderLoop() {
  Reader reader;
  for (;;) {
    ReadTask task;
    {
      absl::MutexLock lock(&reads_mu_);
      reads_mu_.Await(absl::Condition(this, &SqliteStore::HasReadOrStopping));
      if (read_queue_.empty()) {
        return;  // stopping, and every queued read is answered
      }
      task = std::move(read_queue_.front());
      read_queue_.pop_front();
    }
    task(reader);
  }
}

template <typename T>
absl::StatusOr<T> SqliteStore::WithReader(
    Reader& reader, const std::function<absl::StatusOr<T>(ReadConnection&)>& read) {
  if (reader == nullptr) {
    Opener opener(options_);
    absl::StatusOr<Db> db = opener.OpenConnection(SQLITE_OPEN_READONLY);
    if (!db.ok()) {
      return db.status();
    }
    absl::StatusOr<std::unique_ptr<ReadConnection>> prepared = PrepareReader(*std::move(db));
    if (!prepared.ok()) {
      return absl::UnavailableError(
          absl::StrCat("store read failed: ", prepared.status().message()));
    }
    reader = *std::move(prepared);
  }
  absl::StatusOr<T> result = read(*reader);
  if (!result.ok()) {
    reader.reset();
  }
  return result;
}

void SqliteStore::LatestFor(std::string ip, std::optional<std::string> user_agent,
                            ReadCallback<std::optional<Verdict>> done) {
  PostRead([this, ip = std::move(ip), user_agent = std::move(user_agent),
            done = std::move(done)](Reader& reader) {
    done(ReadLatestFor(
        reader, ip,
        user_agent.has_value() ? std::optional<absl::string_view>(*user_agent) : std::nullopt));
  });
}

void SqliteStore::History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) {
  PostRead([this, query = std::move(query), done = std::move(done)](Reader& reader) {
    done(ReadHistory(reader, query));
  });
}

void SqliteStore::Clicks(ClickQuery query, ReadCallback<std::vector<ClickRecord>> done) {
  PostRead([this, query = std::move(query), done = std::move(done)](Reader& reader) {
    done(ReadClicks(reader, query));
  });
}

void SqliteStore::Usage(std::string caller, absl::Time since, absl::Time until,
                        ReadCallback<std::vector<DailyUsage>> done) {
  PostRead([this, caller = std::move(caller), since, until, done = std::move(done)](
               Reader& reader) { done(ReadUsage(reader, caller, since, until)); });
}

void SqliteStore::ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) {
  PostRead([this, since, done = std::move(done)](Reader& reader) {
    done(ReadClicksSince(reader, since));
  });
}

void SqliteStore::Ping(DoneCallback done) {
  PostRead([this, done = std::move(done)](Reader& reader) { done(PingNow(reader)); });
}

absl::StatusOr<std::optional<Verdict>> SqliteStore::ReadLatestFor(
    Reader& reader_slot, absl::string_view ip, std::optional<absl::string_view> user_agent) {
  return WithReader<std::optional<Verdict>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::optional<Verdict>> {
        std::optional<Verdict> latest;
        const int rc =
            StepLatestFor(user_agent.has_value() ? reader.latest_for_ip_and_user_agent.get()
                                                 : reader.latest_for_ip.get(),
                          ip, user_agent, &latest);
        if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
          return latest;
        }
        return ReadFailed(reader.db.get());
      });
}

absl::StatusOr<std::vector<HistoryEntry>> SqliteStore::ReadHistory(Reader& reader_slot,
                                                                   const HistoryQuery& query) {
  if (query.limit <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("history limit must be positive, got ", query.limit));
  }
  const std::optional<store_support::PageBounds> page = store_support::HistoryPage(query);
  if (!page.has_value()) {
    return std::vector<HistoryEntry>();
  }
  return WithReader<std::vector<HistoryEntry>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::vector<HistoryEntry>> {
        sqlite3_stmt* stmt = reader.history.get();
        ScopedReset reset(stmt);
        BindText(stmt, 1, query.ip);
        sqlite3_bind_int64(stmt, 2, page->since_us);
        sqlite3_bind_int64(stmt, 3, page->until_us);
        sqlite3_bind_int64(stmt, 4, page->cursor_us);
        sqlite3_bind_int64(stmt, 5, page->cursor_id);
        sqlite3_bind_int64(stmt, 6, query.limit);
        std::vector<HistoryEntry> entries;
        int rc;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
          HistoryEntry& entry = entries.emplace_back();
          entry.id = sqlite3_column_int64(stmt, 0);
          entry.verdict = ColumnVerdict(stmt, 1);
        }
        if (rc != SQLITE_DONE) {
          return ReadFailed(reader.db.get());
        }
        return entries;
      });
}

absl::StatusOr<std::vector<ClickRecord>> SqliteStore::ReadClicks(Reader& reader_slot,
                                                                 const ClickQuery& query) {
  if (query.limit <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("clicks limit must be positive, got ", query.limit));
  }
  const std::optional<store_support::PageBounds> page = store_support::LedgerPage(query);
  if (!page.has_value()) {
    return std::vector<ClickRecord>();
  }
  return WithReader<std::vector<ClickRecord>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::vector<ClickRecord>> {
        sqlite3_stmt* stmt = !query.ip.empty()       ? reader.clicks_by_ip.get()
                             : !query.caller.empty() ? reader.clicks_by_caller.get()
                                                     : reader.clicks_by_time.get();
        ScopedReset reset(stmt);
        sqlite3_bind_int64(stmt, 1, page->since_us);
        sqlite3_bind_int64(stmt, 2, page->until_us);
        sqlite3_bind_int64(stmt, 3, page->cursor_us);
        sqlite3_bind_int64(stmt, 4, page->cursor_id);
        sqlite3_bind_int64(stmt, 5, query.limit);
        if (!query.caller.empty()) {
          BindText(stmt, 6, query.caller);
        }
        if (!query.ip.empty()) {
          BindText(stmt, 7, query.ip);
        }
        std::vector<ClickRecord> clicks;
        int rc;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
          ClickRecord& click = clicks.emplace_back();
          click.id = sqlite3_column_int64(stmt, 0);
          click.caller = ColumnBytes(stmt, 1);
          click.ip = ColumnBytes(stmt, 2);
          click.requested_at = absl::FromUnixMicros(sqlite3_column_int64(stmt, 3));
          if (sqlite3_column_type(stmt, 4) != SQLITE_NULL) {
            click.completed_at = absl::FromUnixMicros(sqlite3_column_int64(stmt, 4));
          }
          click.outcome = static_cast<ClickOutcome>(sqlite3_column_int(stmt, 5));
          click.http_status = sqlite3_column_int(stmt, 6);
          click.error = ColumnBytes(stmt, 7);
          click.latency = absl::Microseconds(sqlite3_column_int64(stmt, 8));
          if (sqlite3_column_type(stmt, 9) != SQLITE_NULL) {
            click.verdict = ColumnVerdict(stmt, 10);
          }
        }
        if (rc != SQLITE_DONE) {
          return ReadFailed(reader.db.get());
        }
        return clicks;
      });
}

absl::StatusOr<std::vector<DailyUsage>> SqliteStore::ReadUsage(Reader& reader_slot,
                                                               absl::string_view caller,
                                                               absl::Time since, absl::Time until) {
  const std::optional<DayRange> days = UsageDays(since, until);
  if (!days.has_value()) {
    return std::vector<DailyUsage>();
  }
  const int64_t first_day = days->first_day;
  const int64_t last_day = days->last_day;
  return WithReader<std::vector<DailyUsage>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::vector<DailyUsage>> {
        sqlite3_stmt* stmt = caller.empty() ? reader.usage_all.get() : reader.usage_one.get();
        ScopedReset reset(stmt);
        sqlite3_bind_int64(stmt, 1, first_day);
        sqlite3_bind_int64(stmt, 2, last_day);
        if (!caller.empty()) {
          BindText(stmt, 3, caller);
        }
        std::vector<DailyUsage> days;
        int rc;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
          // A day whose only clicks were not sent (or whose counters were all zero) is omitted.
          UsageCounts counts;
          counts.clicks = sqlite3_column_int64(stmt, 2);
          counts.upstream_errors = sqlite3_column_int64(stmt, 3);
          counts.cache_hits = sqlite3_column_int64(stmt, 4);
          counts.requests = sqlite3_column_int64(stmt, 5);
          if (counts.clicks == 0 && counts.upstream_errors == 0 && counts.cache_hits == 0 &&
              counts.requests == 0) {
            continue;
          }
          days.push_back(
              DailyUsage{ColumnBytes(stmt, 0), kEpochDay + sqlite3_column_int64(stmt, 1), counts});
        }
        if (rc != SQLITE_DONE) {
          return ReadFailed(reader.db.get());
        }
        return days;
      });
}

absl::StatusOr<VerdictStore::ClickCounts> SqliteStore::ReadClicksSince(Reader& reader_slot,
                                                                       absl::Time since) {
  using Result = ClickCounts;
  // Whole days from the counters, the rest of since's day from the ledger (see SplitClicksSince).
  const ClicksSinceSplit split = SplitClicksSince(since);
  const int64_t first_whole_day = split.first_whole_day;
  const int64_t partial_first = split.partial_first;
  const int64_t partial_last = split.partial_last;
  return WithReader<Result>(reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<Result> {
    sqlite3_stmt* stmt = reader.clicks_since.get();
    ScopedReset reset(stmt);
    sqlite3_bind_int64(stmt, 1, partial_first);
    sqlite3_bind_int64(stmt, 2, first_whole_day);
    sqlite3_bind_int64(stmt, 3, partial_last);
    Result counts;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      counts.emplace_back(ColumnBytes(stmt, 0), sqlite3_column_int64(stmt, 1));
    }
    if (rc != SQLITE_DONE) {
      return ReadFailed(reader.db.get());
    }
    return counts;
  });
}

absl::StatusOr<std::optional<std::string>> SqliteStore::ReadMeta(Reader& reader_slot,
                                                                 const std::string& name) {
  return WithReader<std::optional<std::string>>(
      reader_slot, [&](ReadConnection& reader) -> absl::StatusOr<std::optional<std::string>> {
        sqlite3_stmt* stmt = reader.read_meta.get();
        ScopedReset reset(stmt);
        BindText(stmt, 1, name);
        const int rc = sqlite3_step(stmt);
        if (rc == SQLITE_DONE) {
          return std::nullopt;
        }
        if (rc == SQLITE_ROW) {
          return ColumnBytes(stmt, 0);
        }
        return ReadFailed(reader.db.get());
      });
}

void SqliteStore::Secret(std::string name, size_t bytes, ReadCallback<std::string> done) {
  PostRead([this, name = std::move(name), bytes, done = std::move(done)](Reader& reader) {
    if (absl::Status checked = CheckSecretRequest(name, bytes); !checked.ok()) {
      done(std::move(checked));
      return;
    }
    std::string key = absl::StrCat("secret:", name);
    absl::StatusOr<std::optional<std::string>> stored = ReadMeta(reader, key);
    if (!stored.ok()) {
      done(stored.status());
      return;
    }
    if (stored->has_value()) {
      FinishSecret(std::move(stored), name, bytes, done);
      return;
    }
    std::string fresh(bytes, '\0');
    if (absl::Status status = FillRandom(fresh); !status.ok()) {
      done(std::move(status));
      return;
    }
    // Whoever inserted first won: once the insert is committed, read what they wrote.
    Enqueue(PutMetaOp{key, std::move(fresh), [this, name, key, bytes, done](absl::Status status) {
                        if (!status.ok()) {
                          done(std::move(status));
                          return;
                        }
                        PostRead([this, name, key, bytes, done](Reader& reader) {
                          FinishSecret(ReadMeta(reader, key), name, bytes, done);
                        });
                      }});
  });
}

absl::Status SqliteStore::PingNow(Reader& reader_slot) {
  // The writer keeps writing to the file it opened even when the path now names another one
  // (replaced or deleted): everything it commits would be lost.
  if (absl::Status same = StillTheOpenedFile(options_.path, file_); !same.ok()) {
    return same;
  }
  absl::StatusOr<bool> read =
      WithReader<bool>(reader_slot, [](ReadConnection& reader) -> absl::StatusOr<bool> {
        sqlite3_stmt* stmt = reader.ping.get();
        ScopedReset reset(stmt);
        const int rc = sqlite3_step(stmt);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
          return ReadFailed(reader.db.get());
        }
        return true;
      });
  if (!read.ok()) {
    return read.status();
  }
  absl::Status failing;
  bool probe = false;
  {
    absl::MutexLock lock(&health_mu_);
    if (write_error_.ok()) {
      return absl::OkStatus();
    }
    failing = absl::UnavailableError(
        absl::StrCat("store writes failing since ",
                     absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", write_error_at_, absl::UTCTimeZone()),
                     ": ", write_error_.message()));
    // Without traffic nothing else would write, and an unhealthy server may get no traffic.
    probe = !probe_queued_;
    probe_queued_ = true;
  }
  if (probe) {
    Enqueue(ProbeOp{absl::ToUnixMicros(options_.clock->Now())});
  }
  return failing;
}

}  // namespace sqlite_store_internal
}  // namespace verdictd
