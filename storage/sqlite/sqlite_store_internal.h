#ifndef VERDICTD_STORAGE_SQLITE_SQLITE_STORE_INTERNAL_H_
#define VERDICTD_STORAGE_SQLITE_SQLITE_STORE_INTERNAL_H_

// Implementation details of the SQLite store that its tests inspect. Not for use elsewhere.

namespace verdictd {
namespace sqlite_store_internal {

// The schema version this build writes (PRAGMA user_version). A file with a higher version was
// written by a newer build and is refused rather than misread.
inline constexpr int kSchemaVersion = 5;

// LatestFor's lookups. Each must be answered by a LIMIT 1 walk over an index whose order matches
// the ORDER BY, so it costs the same however long the history grows (a test checks the plan).
// ?1 is the IP bound as text; ?2 is the user agent bound as a blob (see BindBytes in
// sqlite_statement.h).
inline constexpr char kLatestForIpSql[] =
    "SELECT ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, caller "
    "FROM verdicts WHERE ip = ?1 "
    "ORDER BY checked_at_us DESC, id DESC LIMIT 1";
inline constexpr char kLatestForIpAndUserAgentSql[] =
    "SELECT ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, caller "
    "FROM verdicts WHERE ip = ?1 AND user_agent = ?2 "
    "ORDER BY checked_at_us DESC, id DESC LIMIT 1";

// One page of History: a range scan of verdicts_by_ip in index order, so it costs the page size
// however long the history grows (a test checks the plan). ?1 is the IP; [?2, ?3) the
// checked_at_us range, where ?3 is already lowered to just past the cursor so that the scan starts
// there; ?4 and ?5 are the cursor's checked_at_us and id (INT64_MAX for the first page), which
// drop the entries of the cursor's microsecond that were already returned; ?6 is the limit.
inline constexpr char kHistorySql[] =
    "SELECT id, ip, user_agent, score, proxy, tor, vpn, crawler, bot, checked_at_us, caller "
    "FROM verdicts WHERE ip = ?1 AND checked_at_us >= ?2 AND checked_at_us < ?3 "
    "AND (checked_at_us < ?4 OR (checked_at_us = ?4 AND id < ?5)) "
    "ORDER BY checked_at_us DESC, id DESC LIMIT ?6";

// One page of Clicks, newest first: a range scan of one ledger index that starts at the cursor,
// by IP (clicks_by_ip; ?6 a caller, or NULL for any), by caller (clicks_by_caller, ?6 the
// caller) or by time (clicks_by_time), each row joined to the verdict its click produced through
// verdicts_by_click. [?1, ?2) is the requested_at_us range, ?2 already lowered to just past the
// cursor; ?3 and ?4 are the cursor's requested_at_us and id (INT64_MAX for the first page); ?5 is
// the limit; ?7 the IP. The rowid (id) is the last column of every index, so the index order is
// (requested_at_us, id) for one IP or caller and no sort is needed. The indexes are named, as
// below, so that the planner never walks another one.
#define VERDICTD_CLICKS_COLUMNS                                                               \
  "SELECT c.id, c.caller, c.ip, c.requested_at_us, c.completed_at_us, c.outcome, "            \
  "c.http_status, c.error, c.latency_us, v.id, v.ip, v.user_agent, v.score, v.proxy, v.tor, " \
  "v.vpn, v.crawler, v.bot, v.checked_at_us, v.caller FROM clicks AS c "
#define VERDICTD_CLICKS_PAGE                                                \
  "c.requested_at_us >= ?1 AND c.requested_at_us < ?2 "                     \
  "AND (c.requested_at_us < ?3 OR (c.requested_at_us = ?3 AND c.id < ?4)) " \
  "ORDER BY c.requested_at_us DESC, c.id DESC LIMIT ?5"
#define VERDICTD_CLICKS_VERDICT \
  "LEFT JOIN verdicts AS v INDEXED BY verdicts_by_click ON v.click_id = c.id WHERE "
inline constexpr char kClicksByIpSql[] =
    VERDICTD_CLICKS_COLUMNS "INDEXED BY clicks_by_ip " VERDICTD_CLICKS_VERDICT
                            "c.ip = ?7 AND (?6 IS NULL OR c.caller = ?6) AND " VERDICTD_CLICKS_PAGE;
inline constexpr char kClicksByCallerSql[] =
    VERDICTD_CLICKS_COLUMNS "INDEXED BY clicks_by_caller " VERDICTD_CLICKS_VERDICT
                            "c.caller = ?6 AND ?7 IS NULL AND " VERDICTD_CLICKS_PAGE;
inline constexpr char kClicksByTimeSql[] =
    VERDICTD_CLICKS_COLUMNS "INDEXED BY clicks_by_time " VERDICTD_CLICKS_VERDICT
                            "?6 IS NULL AND ?7 IS NULL AND " VERDICTD_CLICKS_PAGE;
#undef VERDICTD_CLICKS_COLUMNS
#undef VERDICTD_CLICKS_PAGE
#undef VERDICTD_CLICKS_VERDICT

// ClicksSince, in one statement so that both parts come from one snapshot. The whole UTC days
// from ?2 (a day number) on are summed from the usage counters, a range of usage_by_day, so the
// cost grows with callers x days, not with the ledger. The partial day before them, when `since`
// is not a UTC midnight, is counted from the ledger: a range scan of clicks_by_time over
// [?1, ?3] (microseconds, inclusive; empty when ?1 > ?3), at most one day of rows. Both indexes
// are named: left to itself the planner may prefer walking clicks_by_caller (or the usage
// primary key) to avoid sorting the groups, which reads the whole table.
inline constexpr char kClicksSinceSql[] =
    "SELECT caller, sum(n) FROM ("
    "SELECT caller, clicks AS n FROM usage INDEXED BY usage_by_day WHERE day >= ?2 "
    "UNION ALL "
    "SELECT caller, 1 FROM clicks INDEXED BY clicks_by_time "
    "WHERE requested_at_us >= ?1 AND requested_at_us <= ?3 AND outcome != 3"
    ") GROUP BY caller HAVING sum(n) > 0 ORDER BY caller";

// Usage reads only the usage table: ?1, ?2 are the first and last day numbers (inclusive); ?3 is
// the caller. One caller is a range of the primary key (caller, day) in order; every caller is a
// range of usage_by_day, then a sort of the (few) rows found. Named for the same reason as above.
inline constexpr char kUsageAllSql[] =
    "SELECT caller, day, clicks, upstream_errors, cache_hits, requests "
    "FROM usage INDEXED BY usage_by_day WHERE day >= ?1 AND day <= ?2 ORDER BY caller, day";
inline constexpr char kUsageOneSql[] =
    "SELECT caller, day, clicks, upstream_errors, cache_hits, requests "
    "FROM usage WHERE caller = ?3 AND day >= ?1 AND day <= ?2 ORDER BY caller, day";

}  // namespace sqlite_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_SQLITE_STORE_INTERNAL_H_
