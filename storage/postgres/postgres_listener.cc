// The PostgreSQL store's listener: one connection in autocommit (never inside a transaction,
// where no notification arrives) LISTENs on the flights channel; its thread waits in poll() on
// the connection's socket and on a wake-up eventfd, so it notices notifications, a dead
// connection and the store stopping alike. Every released claim of every process sharing the
// database reaches FlightListener::OnFlightEnded; after a reconnection (notifications sent
// meanwhile are lost) OnFlightsMayHaveEnded tells every waiter to look again.

#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "storage/postgres/postgres_connection.h"
#include "storage/postgres/postgres_schema.h"
#include "storage/postgres/postgres_store_impl.h"
#include "storage/verdict_store.h"

namespace verdictd {
namespace postgres_store_internal {
namespace {

// How long poll() waits before the thread looks at its state again.
constexpr absl::Duration kPollInterval = absl::Milliseconds(500);
// A connection that said nothing for this long is asked a question, so that a peer that
// vanished without closing (no RST, no keepalive yet) is noticed.
constexpr absl::Duration kIdleCheck = absl::Seconds(10);
// Reconnection attempts back off from the first to the last.
constexpr absl::Duration kFirstRetry = absl::Milliseconds(100);
constexpr absl::Duration kLastRetry = absl::Seconds(2);

}  // namespace

void PostgresStore::SetFlightListener(FlightListener* listener) {
  absl::MutexLock lock(&flight_listener_mu_);
  flight_listener_ = listener;
}

void PostgresStore::TellFlightEnded(const std::string& key) {
  absl::MutexLock lock(&flight_listener_mu_);
  if (flight_listener_ != nullptr) {
    flight_listener_->OnFlightEnded(key);
  }
}

void PostgresStore::TellFlightsMayHaveEnded() {
  absl::MutexLock lock(&flight_listener_mu_);
  if (flight_listener_ != nullptr) {
    flight_listener_->OnFlightsMayHaveEnded();
  }
}

bool PostgresStore::ListenerWaitForStop(absl::Duration timeout) {
  absl::MutexLock lock(&listener_stop_mu_);
  return listener_stop_mu_.AwaitWithTimeout(absl::Condition(&listener_stopping_), timeout);
}

void PostgresStore::ListenerLoop() {
  const ConnectSpec spec = SpecFor("store listener failed");
  absl::Duration retry = kFirstRetry;
  absl::Time last_heard = absl::Now();
  bool warned = false;
  for (;;) {
    {
      absl::MutexLock lock(&listener_stop_mu_);
      if (listener_stopping_) {
        return;
      }
    }
    if (listener_conn_ == nullptr) {
      absl::StatusOr<std::unique_ptr<Connection>> conn = Connection::Open(spec, {});
      absl::Status listening = conn.status();
      if (conn.ok()) {
        listening = Exec(**conn, "LISTEN verdictd_flights");
      }
      if (!listening.ok()) {
        // Once per outage, not once per attempt.
        if (!warned) {
          spdlog::warn("PostgreSQL store: flight notifications unavailable: {}",
                       listening.message());
          warned = true;
        }
        if (ListenerWaitForStop(retry)) {
          return;
        }
        retry = std::min(retry * 2, kLastRetry);
        continue;
      }
      listener_conn_ = *std::move(conn);
      retry = kFirstRetry;
      warned = false;
      last_heard = absl::Now();
      spdlog::info("PostgreSQL store: flight notifications listening again");
      // Whatever ended while nobody listened was not heard.
      TellFlightsMayHaveEnded();
    }

    PGconn* conn = listener_conn_->get();
    pollfd fds[2] = {{PQsocket(conn), POLLIN, 0}, {listener_wake_fd_, POLLIN, 0}};
    const int ready = poll(fds, listener_wake_fd_ >= 0 ? 2 : 1,
                           static_cast<int>(absl::ToInt64Milliseconds(kPollInterval)));
    if (ready < 0 && errno != EINTR) {
      listener_conn_.reset();
      continue;
    }
    bool alive = true;
    if (ready > 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      alive = PQconsumeInput(conn) == 1;
      last_heard = absl::Now();
    } else if (absl::Now() - last_heard > kIdleCheck) {
      alive = Exec(*listener_conn_, "SELECT 1").ok();
      last_heard = absl::Now();
    }
    while (PGnotify* notify = PQnotifies(conn)) {
      const absl::string_view channel(notify->relname);
      std::optional<std::string> key = HexDecode(notify->extra);
      if (channel == kFlightsChannel) {
        if (key.has_value() && !key->empty()) {
          TellFlightEnded(*key);
        } else {
          // A key too long for a payload (or a payload not ours): every waiter looks again.
          TellFlightsMayHaveEnded();
        }
      }
      PQfreemem(notify);
    }
    if (!alive || PQstatus(conn) != CONNECTION_OK) {
      spdlog::warn("PostgreSQL store: the notification connection was lost: {}",
                   listener_conn_->ErrorMessage());
      listener_conn_.reset();
    }
  }
}

}  // namespace postgres_store_internal
}  // namespace verdictd
