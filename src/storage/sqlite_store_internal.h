#ifndef VERDICTD_STORAGE_SQLITE_STORE_INTERNAL_H_
#define VERDICTD_STORAGE_SQLITE_STORE_INTERNAL_H_

// Implementation details of the SQLite store that its tests inspect. Not for use elsewhere.

namespace verdictd {
namespace sqlite_store_internal {

// The schema version this build writes (PRAGMA user_version). A file with a higher version was
// written by a newer build and is refused rather than misread.
inline constexpr int kSchemaVersion = 1;

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

}  // namespace sqlite_store_internal
}  // namespace verdictd

#endif  // VERDICTD_STORAGE_SQLITE_STORE_INTERNAL_H_
