#ifndef VERDICTD_CLIENT_VERDICTCTL_COMMANDS_H_
#define VERDICTD_CLIENT_VERDICTCTL_COMMANDS_H_

// verdictctl's subcommands. Each prints its results to stdout and its errors to stderr, and
// returns the process exit code (see the kExit* constants and the gRPC status codes 1..16).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/cpp/verdict_client.h"
#include "client/verdictctl/format.h"
#include "client/verdictctl/input.h"
#include "grpcpp/grpcpp.h"
#include "verdict/v1/verdict.grpc.pb.h"

namespace verdictd::cli {

// Exit codes besides 0 and the gRPC status codes (1..16), from sysexits.h.
inline constexpr int kExitUsage = 64;        // EX_USAGE: bad subcommand, operand or flag
inline constexpr int kExitItemsFailed = 65;  // EX_DATAERR: batch items failed; empty API key
inline constexpr int kExitNoInput = 66;      // EX_NOINPUT: an input file cannot be read
inline constexpr int kExitNotServing = 69;   // EX_UNAVAILABLE: health is not SERVING

// Batch size used when the server does not implement GetServerInfo.
inline constexpr int kDefaultMaxBatch = 1000;

// A channel to verdictd and the metadata sent with every call.
class Connection {
 public:
  Connection(std::shared_ptr<grpc::Channel> channel, std::string api_key, std::string caller,
             absl::Duration timeout);

  verdict::v1::VerdictService::Stub& stub() { return *stub_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // A context for one RPC: `authorization: Bearer <key>` when a key is set, `x-caller` when a
  // caller is set, and a deadline of `timeout` from now (none when timeout is zero).
  std::unique_ptr<grpc::ClientContext> NewContext() const;

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<verdict::v1::VerdictService::Stub> stub_;
  client::CallOptions call_;
};

// Prints `verdictctl: CODE_NAME: message` to stderr; returns the status code.
int ReportError(const grpc::Status& status);

struct CheckOptions {
  std::optional<absl::Duration> max_age;  // unset: the server's default
  bool cache_only = false;
};

// CheckIp for one IP.
int RunCheck(Connection& connection, const std::string& ip, const std::string& user_agent,
             const CheckOptions& options, bool json);

// CheckBatch for `items` in batches of the server's max_batch (GetServerInfo; kDefaultMaxBatch
// when the server answers UNIMPLEMENTED). Results are printed in input order: as JSON lines as
// each batch completes, or as one table at the end. A progress bar goes to stderr when
// `progress`. Returns 0 when every item succeeded, kExitItemsFailed when some failed, the status
// code when an RPC failed (results of the batches before it are printed first).
int RunBatch(Connection& connection, const std::vector<BatchItem>& items,
             const CheckOptions& options, bool json, bool progress);

struct HistoryOptions {
  std::optional<absl::Time> since;
  std::optional<absl::Time> until;
  int64_t limit = 0;      // 0: every row
  int32_t page_size = 0;  // rows per call; 0: the server's default
};

// ListVerdictHistory, following next_page_token until the end or `limit` rows. JSON lines and
// CSV are printed page by page as they arrive; a table at the end.
int RunHistory(Connection& connection, const std::string& ip, const HistoryOptions& options,
               Output output);

struct ClicksOptions {
  std::string caller;  // "" = every caller (auditors, open mode)
  std::string team;    // "" = not by team; else that team's callers
  std::string ip;      // "" = every IP
  std::optional<absl::Time> since;
  std::optional<absl::Time> until;
  int64_t limit = 0;      // 0: every row
  int32_t page_size = 0;  // rows per call; 0: the server's default
};

// ListClicks, following next_page_token until the end or `limit` rows, printed as RunHistory
// prints.
int RunClicks(Connection& connection, const ClicksOptions& options, Output output);

struct UsageOptions {
  std::string caller;  // "" = every caller
  std::string team;    // "" = not by team; else that team's callers
  std::optional<absl::Time> since;
  std::optional<absl::Time> until;
  bool days = false;  // also print the per-day rows
};

// GetUsage. With teams in the answer, each team's row comes first with its callers beneath
// (indented), then the callers in no team.
int RunUsage(Connection& connection, const UsageOptions& options, bool json);

// grpc.health.v1.Health/Check for `service` ("" = the server as a whole; verdictd also answers
// for "verdict.v1.VerdictService"). Prints the serving status (SERVING, NOT_SERVING, ...), or
// {"status":"..."} with `json`. Returns 0 for SERVING, kExitNotServing for any other status, the
// RPC's status code when the call fails (5 NOT_FOUND for a service the server does not know,
// 14 UNAVAILABLE when nothing answers). Sent without API key requirements: health is public.
int RunHealth(Connection& connection, const std::string& service, bool json);

}  // namespace verdictd::cli

#endif  // VERDICTD_CLIENT_VERDICTCTL_COMMANDS_H_
