#ifndef VERDICTD_STORAGE_SQLITE_SQLITE_SCHEMA_H_
#define VERDICTD_STORAGE_SQLITE_SQLITE_SCHEMA_H_

// The SQLite store's schema: its migrations and the text of every statement it prepares (those
// whose plans the tests check are in sqlite_store_internal.h). Every statement is fixed text;
// values travel only as bound parameters (tests/lint/sql_is_never_concatenated.py).

#include <sqlite3.h>

#include <iterator>

#include "absl/status/status.h"
#include "storage/sqlite/sqlite_store_internal.h"

namespace verdictd {
namespace sqlite_store_internal {

class Opener;

// Migration i (0-based) takes the schema from version i to i + 1. Append only: never edit a
// migration that has shipped, since existing files have already run it.
inline constexpr const char* kMigrations[] = {
    // 1: verdict history and click ledger. user_agent holds blobs (see BindBytes).
    R"sql(
      CREATE TABLE verdicts(
        id INTEGER PRIMARY KEY,
        ip TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        score INTEGER NOT NULL,
        proxy INTEGER NOT NULL,
        tor INTEGER NOT NULL,
        vpn INTEGER NOT NULL,
        crawler INTEGER NOT NULL,
        bot INTEGER NOT NULL,
        checked_at_us INTEGER NOT NULL,
        caller TEXT NOT NULL,
        raw_body BLOB NOT NULL,
        click_id INTEGER);
      CREATE INDEX verdicts_by_ip ON verdicts(ip, checked_at_us DESC, id DESC);
      CREATE INDEX verdicts_by_ip_ua ON verdicts(ip, user_agent, checked_at_us DESC, id DESC);
      CREATE TABLE clicks(
        id INTEGER PRIMARY KEY,
        caller TEXT NOT NULL,
        ip TEXT NOT NULL,
        requested_at_us INTEGER NOT NULL,
        completed_at_us INTEGER,
        outcome INTEGER NOT NULL DEFAULT 0,
        http_status INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        latency_us INTEGER NOT NULL DEFAULT 0);
      CREATE INDEX clicks_by_time ON clicks(requested_at_us);
      CREATE INDEX clicks_by_caller ON clicks(caller, requested_at_us);
    )sql",
    // 2: pruning by age, batched usage counters, named secrets. usage.day counts days since
    // 1970-01-01 UTC. meta keys are namespaced ("secret:<name>", see Secret).
    R"sql(
      CREATE INDEX verdicts_by_time ON verdicts(checked_at_us);
      CREATE TABLE usage(
        caller TEXT NOT NULL,
        day INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(caller, day)) WITHOUT ROWID;
      CREATE TABLE meta(name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    )sql",
    // 3: per-day click counters next to the batched ones, so that start-up (ClicksSince) and
    // Usage read callers x days of counters instead of counting the ledger. From here on every
    // ledger write keeps them in step in its own transaction; the backfill counts the ledger once
    // (clicks: not marked not-sent, pending included; upstream_errors: completed as errors). The
    // day is floor(requested_at_us / day) also before 1970, as DayOfMicros computes it. The
    // backfill reads the table in rowid order (NOT INDEXED) and sorts the groups once: walking
    // clicks_by_caller instead, as the planner would, visits the rows in random order.
    R"sql(
      ALTER TABLE usage ADD COLUMN clicks INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE usage ADD COLUMN upstream_errors INTEGER NOT NULL DEFAULT 0;
      CREATE INDEX usage_by_day ON usage(day);
      INSERT INTO usage(caller, day, clicks, upstream_errors)
        SELECT caller,
               requested_at_us / 86400000000 - (requested_at_us % 86400000000 < 0) AS click_day,
               sum(outcome != 3), sum(outcome = 2)
        FROM clicks NOT INDEXED WHERE true GROUP BY caller, click_day HAVING sum(outcome != 3) > 0
        ON CONFLICT(caller, day) DO UPDATE SET clicks = excluded.clicks,
                                               upstream_errors = excluded.upstream_errors;
    )sql",
    // 4: single-flight claims (one row per key in flight, released by the click's completion,
    // found by its click id) and named leases for chores. Times in microseconds of the store's
    // clock.
    R"sql(
      CREATE TABLE flights(
        key BLOB PRIMARY KEY,
        owner TEXT NOT NULL,
        click_id INTEGER NOT NULL,
        lease_until_us INTEGER NOT NULL) WITHOUT ROWID;
      CREATE INDEX flights_by_click ON flights(click_id);
      CREATE TABLE leases(
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        lease_until_us INTEGER NOT NULL) WITHOUT ROWID;
    )sql",
    // 5: the click audit (Clicks): the ledger by IP, and each click's verdict by its click id.
    R"sql(
      CREATE INDEX clicks_by_ip ON clicks(ip, requested_at_us);
      CREATE INDEX verdicts_by_click ON verdicts(click_id);
    )sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion,
              "kSchemaVersion must equal the number of migrations");

inline constexpr char kInsertClickSql[] =
    "INSERT INTO clicks(caller, ip, requested_at_us) VALUES (?1, ?2, ?3)";
// A begun click counts as billed on its requested_at day until it is completed as not sent.
inline constexpr char kCountClickSql[] =
    "INSERT INTO usage(caller, day, clicks) VALUES (?1, ?2, 1) "
    "ON CONFLICT(caller, day) DO UPDATE SET clicks = clicks + 1";
// Only a pending click can be completed: the ledger row of a finished click never changes. The
// click's caller and time say which day's counters the outcome changes.
inline constexpr char kCompleteClickSql[] =
    "UPDATE clicks SET completed_at_us = ?2, outcome = ?3, http_status = ?4, error = ?5, "
    "latency_us = ?6 WHERE id = ?1 AND outcome = 0 RETURNING caller, requested_at_us";
// ?3 is -1 for a click that was not sent (unbilled after all); ?4 is 1 for an upstream error.
inline constexpr char kAdjustClickCountersSql[] =
    "UPDATE usage SET clicks = clicks + ?3, upstream_errors = upstream_errors + ?4 "
    "WHERE caller = ?1 AND day = ?2";
inline constexpr char kClickExistsSql[] = "SELECT 1 FROM clicks WHERE id = ?1";
inline constexpr char kInsertVerdictSql[] =
    "INSERT INTO verdicts(ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, "
    "caller, raw_body, click_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
inline constexpr char kAddUsageSql[] =
    "INSERT INTO usage(caller, day, cache_hits, requests) VALUES (?1, ?2, ?3, ?4) "
    "ON CONFLICT(caller, day) DO UPDATE SET cache_hits = cache_hits + excluded.cache_hits, "
    "requests = requests + excluded.requests";
// Pruning deletes the oldest rows first (walking the time indexes), ?2 at most. Pending clicks
// that old are deleted too: they are left by a crash long ago and are history like the rest.
inline constexpr char kPruneVerdictsSql[] =
    "DELETE FROM verdicts WHERE id IN "
    "(SELECT id FROM verdicts WHERE checked_at_us < ?1 ORDER BY checked_at_us LIMIT ?2)";
inline constexpr char kPruneClicksSql[] =
    "DELETE FROM clicks WHERE id IN "
    "(SELECT id FROM clicks WHERE requested_at_us < ?1 ORDER BY requested_at_us LIMIT ?2)";
// Usage rows are few (callers x days); usage_by_day finds the old ones, and any of them will do.
inline constexpr char kPruneUsageSql[] =
    "DELETE FROM usage WHERE (caller, day) IN "
    "(SELECT caller, day FROM usage WHERE day < ?1 LIMIT ?2)";
// Of two racing writers of the same secret, the first wins and both read it back.
inline constexpr char kInsertMetaSql[] = "INSERT OR IGNORE INTO meta(name, value) VALUES (?1, ?2)";
inline constexpr char kReplaceMetaSql[] =
    "INSERT INTO meta(name, value) VALUES (?1, ?2) "
    "ON CONFLICT(name) DO UPDATE SET value = excluded.value";
// Ping's trial write after a failure: a real page write, so that a full disk is not mistaken for
// recovery the way an empty transaction would be.
inline constexpr char kWriteProbeSql[] =
    "INSERT OR REPLACE INTO meta(name, value) VALUES ('write_probe', ?1)";

// Claims. A claim whose lease ran out (?4 is now) is taken over; a live one is left alone and
// returns no row. click_id is 0 until the claim's click is inserted, in the same savepoint.
inline constexpr char kClaimFlightSql[] =
    "INSERT INTO flights(key, owner, click_id, lease_until_us) VALUES (?1, ?2, 0, ?3) "
    "ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, click_id = 0, "
    "lease_until_us = excluded.lease_until_us WHERE flights.lease_until_us <= ?4 RETURNING 1";
inline constexpr char kFlightLeaseSql[] = "SELECT lease_until_us FROM flights WHERE key = ?1";
inline constexpr char kSetFlightClickSql[] = "UPDATE flights SET click_id = ?2 WHERE key = ?1";
// Released only by its own click: a claim taken over after its lease ran out has another click.
inline constexpr char kReleaseFlightSql[] = "DELETE FROM flights WHERE click_id = ?1 RETURNING key";
// The caller's billed clicks on days [?2, ?3), as ClicksSince counts them.
inline constexpr char kMonthClicksSql[] =
    "SELECT coalesce(sum(clicks), 0) FROM usage WHERE caller = ?1 AND day >= ?2 AND day < ?3";
inline constexpr char kPruneFlightsSql[] =
    "DELETE FROM flights WHERE key IN "
    "(SELECT key FROM flights WHERE lease_until_us < ?1 LIMIT ?2)";
inline constexpr char kTryLeaseSql[] =
    "INSERT INTO leases(name, owner, lease_until_us) VALUES (?1, ?2, ?3) "
    "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, "
    "lease_until_us = excluded.lease_until_us "
    "WHERE leases.owner = excluded.owner OR leases.lease_until_us <= ?4 RETURNING 1";

// Reads (the others are in sqlite_store_internal.h, whose plans the tests check).
inline constexpr char kReadMetaSql[] = "SELECT value FROM meta WHERE name = ?1";
inline constexpr char kPingSql[] = "SELECT 1 FROM verdicts LIMIT 1";

// Brings the schema to kSchemaVersion. Runs in a write transaction even when there is nothing
// to do: that both serialises concurrent openers and proves at open time that the file can be
// written, rather than at the first click.
absl::Status Migrate(const Opener& opener, sqlite3* db);

}  // namespace sqlite_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_SQLITE_SCHEMA_H_
