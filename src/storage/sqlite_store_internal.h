#ifndef VERDICTD_STORAGE_SQLITE_STORE_INTERNAL_H_
#define VERDICTD_STORAGE_SQLITE_STORE_INTERNAL_H_

// Implementation details of the SQLite store that its tests inspect. Not for use elsewhere.

namespace verdictd {
namespace sqlite_store_internal {

// The schema version this build writes (PRAGMA user_version). A file with a higher version was
// written by a newer build and is refused rather than misread.
inline constexpr int kSchemaVersion = 2;

// LatestFor's lookups. Each must be answered by a LIMIT 1 walk over an index whose order matches
// the ORDER BY, so it costs the same however long the history grows (a test checks the plan).
// ?1 is the IP bound as text; ?2 is the user agent bound as a blob (see sqlite_store.cc).
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

// ClicksSince: a range scan of clicks_by_time from ?1. Left to itself the planner prefers walking
// all of clicks_by_caller to avoid sorting the groups, which reads the whole ledger.
inline constexpr char kClicksSinceSql[] =
    "SELECT caller, count(*) FROM clicks INDEXED BY clicks_by_time "
    "WHERE requested_at_us >= ?1 AND outcome != 3 GROUP BY caller ORDER BY caller";

}  // namespace sqlite_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_STORE_INTERNAL_H_
