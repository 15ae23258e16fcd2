#ifndef VERDICTD_STORAGE_VERDICT_STORE_H_
#define VERDICTD_STORAGE_VERDICT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/verdict.h"

namespace verdictd {

// How a click (one request to ClickPatrol) ended. Stored as its integer value.
enum class ClickOutcome {
  kPending = 0,        // recorded before sending; never completed (e.g. a crash): still spent
  kVerdict = 1,        // ClickPatrol answered with a verdict
  kUpstreamError = 2,  // sent (or maybe sent) and failed: still spent
  kNotSent = 3,        // provably never left (connect failure): not billed
};

// What is known when a click ends.
struct ClickCompletion {
  ClickOutcome outcome = ClickOutcome::kPending;
  int http_status = 0;
  std::string error;  // short description, no secrets; "" on success
  absl::Duration latency;
  // Present iff outcome == kVerdict: appended to the history in the same transaction.
  std::optional<Verdict> verdict;
  std::string raw_body;  // the response body stored with the verdict
};

// The persistent verdict history and click ledger.
//
// Thread-safe. Reads run on the calling thread. Writes are queued to one writer thread that
// commits them in groups; their callbacks run on that thread after the commit is durable (or
// failed) and must not block.
class VerdictStore {
 public:
  using DoneCallback = std::function<void(absl::Status)>;
  using ClickCallback = std::function<void(absl::StatusOr<int64_t>)>;

  virtual ~VerdictStore() = default;

  // The newest stored verdict for `ip` (canonical form), or nullopt. When `user_agent` is given,
  // only verdicts produced with exactly that user agent count.
  virtual absl::StatusOr<std::optional<Verdict>> LatestFor(
      absl::string_view ip, std::optional<absl::string_view> user_agent) = 0;

  // Durably records that `caller` is about to send a request about `ip`, as a pending click.
  // `done` receives the click's id once the row is committed. Send only after that.
  virtual void BeginClick(std::string caller, std::string ip, absl::Time requested_at,
                          ClickCallback done) = 0;

  // Completes a click begun with BeginClick, appending completion.verdict (if any) to the
  // history in the same transaction.
  virtual void CompleteClick(int64_t click_id, ClickCompletion completion, DoneCallback done) = 0;

  // Blocks until every write queued before this call is committed or failed and its callback
  // has returned. REQUIRES: not called from a write callback (it would wait for itself).
  virtual void Flush() = 0;
};

struct SqliteStoreOptions {
  std::string path;  // the database file; created 0600 if missing
  // Default: 5 s waiting for another connection's lock before failing.
  absl::Duration busy_timeout = absl::Seconds(5);
  // synchronous=FULL (durable against power loss) instead of NORMAL (durable against process
  // crashes). Default: false.
  bool synchronous_full = false;
  // Most writes committed in one transaction. REQUIRES: >= 1. Default: 256.
  int max_group = 256;
  // Stamps clicks' completed_at. Not owned; must outlive the store. Default: the real clock.
  Clock* clock = Clock::Real();
};

// Opens (creating or migrating) the SQLite store. Fails with a clear status when the file is not
// a database, is corrupt, or cannot be written.
absl::StatusOr<std::unique_ptr<VerdictStore>> OpenSqliteStore(SqliteStoreOptions options);

}  // namespace verdictd

#endif  // VERDICTD_STORAGE_VERDICT_STORE_H_
