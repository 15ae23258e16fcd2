// The PostgreSQL store's reads: a queue served by reader threads, each with its own connection
// in autocommit (every statement one snapshot), and the queries themselves. Callbacks run on
// the reader threads.

#include <libpq-fe.h>

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
#include "storage/postgres/postgres_connection.h"
#include "storage/postgres/postgres_schema.h"
#include "storage/postgres/postgres_store_impl.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace postgres_store_internal {
namespace {

// A verdict from the ten columns ip, user_agent, score, proxy, tor, vpn, crawler, bot,
// checked_at_us, caller starting at column `first`.
Verdict RowVerdict(const PGresult* result, int row, int first) {
  Verdict verdict;
  verdict.ip = GetBytes(result, row, first);
  verdict.user_agent = GetBytes(result, row, first + 1);
  const int64_t score = GetInt64(result, row, first + 2);
  verdict.assessment.score =
      score >= static_cast<int>(Score::kUnspecified) && score <= static_cast<int>(Score::kFake)
          ? static_cast<Score>(score)
          : Score::kUnspecified;
  verdict.assessment.proxy = GetBool(result, row, first + 3);
  verdict.assessment.tor = GetBool(result, row, first + 4);
  verdict.assessment.vpn = GetBool(result, row, first + 5);
  verdict.assessment.crawler = GetBool(result, row, first + 6);
  verdict.assessment.bot = GetBool(result, row, first + 7);
  verdict.checked_at = absl::FromUnixMicros(GetInt64(result, row, first + 8));
  verdict.caller = GetBytes(result, row, first + 9);
  return verdict;
}

}  // namespace

void PostgresStore::PostRead(ReadTask task) {
  {
    absl::MutexLock lock(&reads_mu_);
    if (!readers_stopping_) {
      read_queue_.push_back(std::move(task));
      return;
    }
  }
  Slot slot(SpecFor("store read failed"), kReaderStatements);
  task(slot);
}

void PostgresStore::ReaderLoop(Slot& slot) {
  for (;;) {
    ReadTask task;
    {
      absl::MutexLock lock(&reads_mu_);
      reads_mu_.Await(absl::Condition(this, &PostgresStore::HasReadOrStopping));
      if (read_queue_.empty()) {
        return;  // stopping, and every queued read is answered
      }
      task = std::move(read_queue_.front());
      read_queue_.pop_front();
    }
    task(slot);
  }
}

template <typename T>
absl::StatusOr<T> PostgresStore::WithReader(
    Slot& slot, const std::function<absl::StatusOr<T>(Connection&)>& read) {
  bool fresh = false;
  absl::StatusOr<Connection*> conn = slot.Get(&fresh);
  if (!conn.ok()) {
    return conn.status();
  }
  absl::StatusOr<T> result = read(**conn);
  if (!result.ok()) {
    const bool lost = (*conn)->broken();
    slot.AfterFailure(result.status());
    // A connection that died while idle (the server restarted, an idle timeout) fails the
    // first read on it: reads change nothing, so ask once more on a fresh one.
    if (lost && !fresh) {
      conn = slot.Get();
      if (!conn.ok()) {
        return conn.status();
      }
      result = read(**conn);
      if (!result.ok()) {
        slot.AfterFailure(result.status());
      }
    }
  }
  return result;
}

void PostgresStore::LatestFor(std::string ip, std::optional<std::string> user_agent,
                              ReadCallback<std::optional<Verdict>> done) {
  PostRead([this, ip = std::move(ip), user_agent = std::move(user_agent),
            done = std::move(done)](Slot& slot) {
    done(ReadLatestFor(
        slot, ip,
        user_agent.has_value() ? std::optional<absl::string_view>(*user_agent) : std::nullopt));
  });
}

void PostgresStore::History(HistoryQuery query, ReadCallback<std::vector<HistoryEntry>> done) {
  PostRead([this, query = std::move(query), done = std::move(done)](Slot& slot) {
    done(ReadHistory(slot, query));
  });
}

void PostgresStore::Clicks(ClickQuery query, ReadCallback<std::vector<ClickRecord>> done) {
  PostRead([this, query = std::move(query), done = std::move(done)](Slot& slot) {
    done(ReadClicks(slot, query));
  });
}

void PostgresStore::Usage(std::string caller, absl::Time since, absl::Time until,
                          ReadCallback<std::vector<DailyUsage>> done) {
  PostRead([this, caller = std::move(caller), since, until, done = std::move(done)](Slot& slot) {
    done(ReadUsage(slot, caller, since, until));
  });
}

void PostgresStore::ClicksSince(absl::Time since, ReadCallback<ClickCounts> done) {
  PostRead(
      [this, since, done = std::move(done)](Slot& slot) { done(ReadClicksSince(slot, since)); });
}

void PostgresStore::Ping(DoneCallback done) {
  PostRead([this, done = std::move(done)](Slot& slot) { done(PingNow(slot)); });
}

absl::StatusOr<std::optional<Verdict>> PostgresStore::ReadLatestFor(
    Slot& slot, absl::string_view ip, std::optional<absl::string_view> user_agent) {
  return WithReader<std::optional<Verdict>>(
      slot, [&](Connection& conn) { return QueryLatestFor(conn, ip, user_agent); });
}

absl::StatusOr<std::optional<Verdict>> QueryLatestFor(Connection& conn, absl::string_view ip,
                                                      std::optional<absl::string_view> user_agent) {
  Params params;
  params.Bytes(ip);
  if (user_agent.has_value()) {
    params.Bytes(*user_agent);
  }
  absl::StatusOr<Result> result = user_agent.has_value()
                                      ? Exec(conn, kLatestForIpAndUserAgent, params)
                                      : Exec(conn, kLatestForIp, params);
  if (!result.ok()) {
    return result.status();
  }
  if (PQntuples(result->get()) == 0) {
    return std::nullopt;
  }
  return RowVerdict(result->get(), 0, 0);
}

absl::StatusOr<std::vector<HistoryEntry>> PostgresStore::ReadHistory(Slot& slot,
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
      slot, [&](Connection& conn) -> absl::StatusOr<std::vector<HistoryEntry>> {
        absl::StatusOr<Result> result = Exec(conn, kHistory,
                                             Params()
                                                 .Bytes(query.ip)
                                                 .Int64(page->since_us)
                                                 .Int64(page->until_us)
                                                 .Int64(page->cursor_us)
                                                 .Int64(page->cursor_id)
                                                 .Int64(query.limit));
        if (!result.ok()) {
          return result.status();
        }
        std::vector<HistoryEntry> entries;
        const int rows = PQntuples(result->get());
        entries.reserve(rows);
        for (int row = 0; row < rows; ++row) {
          HistoryEntry& entry = entries.emplace_back();
          entry.id = GetInt64(result->get(), row, 0);
          entry.verdict = RowVerdict(result->get(), row, 1);
        }
        return entries;
      });
}

absl::StatusOr<std::vector<ClickRecord>> PostgresStore::ReadClicks(Slot& slot,
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
      slot, [&](Connection& conn) -> absl::StatusOr<std::vector<ClickRecord>> {
        Params params;
        params.Int64(page->since_us)
            .Int64(page->until_us)
            .Int64(page->cursor_us)
            .Int64(page->cursor_id)
            .Int64(query.limit);
        absl::StatusOr<Result> result;
        if (!query.ip.empty()) {
          params.Bytes(query.ip).Bytes(query.caller);
          result = Exec(conn, kClicksByIp, params);
        } else if (!query.caller.empty()) {
          params.Bytes(query.caller);
          result = Exec(conn, kClicksByCaller, params);
        } else {
          result = Exec(conn, kClicksByTime, params);
        }
        if (!result.ok()) {
          return result.status();
        }
        const PGresult* rows = result->get();
        std::vector<ClickRecord> clicks;
        const int count = PQntuples(rows);
        clicks.reserve(count);
        for (int row = 0; row < count; ++row) {
          ClickRecord& click = clicks.emplace_back();
          click.id = GetInt64(rows, row, 0);
          click.caller = GetBytes(rows, row, 1);
          click.ip = GetBytes(rows, row, 2);
          click.requested_at = absl::FromUnixMicros(GetInt64(rows, row, 3));
          if (!IsNull(rows, row, 4)) {
            click.completed_at = absl::FromUnixMicros(GetInt64(rows, row, 4));
          }
          click.outcome = static_cast<ClickOutcome>(GetInt64(rows, row, 5));
          click.http_status = static_cast<int>(GetInt64(rows, row, 6));
          click.error = GetBytes(rows, row, 7);
          click.latency = absl::Microseconds(GetInt64(rows, row, 8));
          if (!IsNull(rows, row, 9)) {
            click.verdict = RowVerdict(rows, row, 10);
          }
        }
        return clicks;
      });
}

absl::StatusOr<std::vector<DailyUsage>> PostgresStore::ReadUsage(Slot& slot,
                                                                 absl::string_view caller,
                                                                 absl::Time since,
                                                                 absl::Time until) {
  const std::optional<DayRange> days = UsageDays(since, until);
  if (!days.has_value()) {
    return std::vector<DailyUsage>();
  }
  const int64_t first_day = days->first_day;
  const int64_t last_day = days->last_day;
  return WithReader<std::vector<DailyUsage>>(
      slot, [&](Connection& conn) -> absl::StatusOr<std::vector<DailyUsage>> {
        Params params;
        params.Int64(first_day).Int64(last_day);
        if (!caller.empty()) {
          params.Bytes(caller);
        }
        absl::StatusOr<Result> result =
            caller.empty() ? Exec(conn, kUsageAll, params) : Exec(conn, kUsageOne, params);
        if (!result.ok()) {
          return result.status();
        }
        std::vector<DailyUsage> days;
        for (int row = 0; row < PQntuples(result->get()); ++row) {
          // A day whose only clicks were not sent (or whose counters were all zero) is omitted.
          UsageCounts counts;
          counts.clicks = GetInt64(result->get(), row, 2);
          counts.upstream_errors = GetInt64(result->get(), row, 3);
          counts.cache_hits = GetInt64(result->get(), row, 4);
          counts.requests = GetInt64(result->get(), row, 5);
          if (counts.clicks == 0 && counts.upstream_errors == 0 && counts.cache_hits == 0 &&
              counts.requests == 0) {
            continue;
          }
          days.push_back(DailyUsage{GetBytes(result->get(), row, 0),
                                    kEpochDay + GetInt64(result->get(), row, 1), counts});
        }
        return days;
      });
}

absl::StatusOr<VerdictStore::ClickCounts> PostgresStore::ReadClicksSince(Slot& slot,
                                                                         absl::Time since) {
  using Counts = ClickCounts;
  // Whole days from the counters, the rest of since's day from the ledger (see SplitClicksSince).
  const ClicksSinceSplit split = SplitClicksSince(since);
  const int64_t first_whole_day = split.first_whole_day;
  const int64_t partial_first = split.partial_first;
  const int64_t partial_last = split.partial_last;
  return WithReader<Counts>(slot, [&](Connection& conn) -> absl::StatusOr<Counts> {
    absl::StatusOr<Result> result =
        Exec(conn, kClicksSince,
             Params().Int64(partial_first).Int64(first_whole_day).Int64(partial_last));
    if (!result.ok()) {
      return result.status();
    }
    Counts counts;
    for (int row = 0; row < PQntuples(result->get()); ++row) {
      counts.emplace_back(GetBytes(result->get(), row, 0), GetInt64(result->get(), row, 1));
    }
    return counts;
  });
}

absl::StatusOr<std::optional<std::string>> PostgresStore::ReadMeta(Slot& slot,
                                                                   const std::string& name) {
  return WithReader<std::optional<std::string>>(
      slot, [&](Connection& conn) -> absl::StatusOr<std::optional<std::string>> {
        absl::StatusOr<Result> result = Exec(conn, kReadMeta, Params().Bytes(name));
        if (!result.ok()) {
          return result.status();
        }
        if (PQntuples(result->get()) == 0) {
          return std::nullopt;
        }
        return GetBytes(result->get(), 0, 0);
      });
}

void PostgresStore::Secret(std::string name, size_t bytes, ReadCallback<std::string> done) {
  PostRead([this, name = std::move(name), bytes, done = std::move(done)](Slot& slot) {
    if (absl::Status checked = CheckSecretRequest(name, bytes); !checked.ok()) {
      done(std::move(checked));
      return;
    }
    std::string key = absl::StrCat("secret:", name);
    absl::StatusOr<std::optional<std::string>> stored = ReadMeta(slot, key);
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
                        PostRead([this, name, key, bytes, done](Slot& slot) {
                          FinishSecret(ReadMeta(slot, key), name, bytes, done);
                        });
                      }});
  });
}

absl::Status PostgresStore::PingNow(Slot& slot) {
  absl::StatusOr<bool> read = WithReader<bool>(slot, [](Connection& conn) -> absl::StatusOr<bool> {
    absl::StatusOr<Result> result = Exec(conn, kPing, Params());
    if (!result.ok()) {
      return result.status();
    }
    return true;
  });
  if (!read.ok()) {
    // Whatever went wrong, the store cannot be read: UNAVAILABLE "store read failed: ...".
    return absl::UnavailableError(read.status().message());
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

}  // namespace postgres_store_internal
}  // namespace verdictd
