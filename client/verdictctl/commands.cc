#include "client/verdictctl/commands.h"

#include <algorithm>
#include <functional>
#include <future>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/verdictctl/format.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "nlohmann/json.hpp"

namespace verdictd::cli {
namespace {

namespace pb = ::verdict::v1;

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  const int64_t seconds = absl::ToUnixSeconds(t);
  ts->set_seconds(seconds);
  ts->set_nanos(static_cast<int32_t>((t - absl::FromUnixSeconds(seconds)) / absl::Nanoseconds(1)));
}

void SetDuration(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(d / absl::Nanoseconds(1)));
}

pb::CheckIpRequest CheckRequest(const std::string& ip, const std::string& user_agent,
                                const CheckOptions& options) {
  pb::CheckIpRequest request;
  request.set_ip(ip);
  request.set_user_agent(user_agent);
  if (options.max_age.has_value()) {
    SetDuration(*options.max_age, request.mutable_max_age());
  }
  request.set_cache_only(options.cache_only);
  return request;
}

// The server's max_batch; kDefaultMaxBatch when it predates GetServerInfo or reports none.
grpc::Status MaxBatch(Connection& connection, int* max_batch) {
  pb::GetServerInfoResponse info;
  grpc::Status status = connection.stub().GetServerInfo(connection.NewContext().get(),
                                                        pb::GetServerInfoRequest(), &info);
  if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    *max_batch = kDefaultMaxBatch;
    return grpc::Status::OK;
  }
  if (!status.ok()) {
    return status;
  }
  *max_batch = info.max_batch() > 0 ? info.max_batch() : kDefaultMaxBatch;
  return grpc::Status::OK;
}

// Redraws the progress bar in place; only called when stderr is a terminal.
void DrawProgress(size_t done, size_t total) {
  std::cerr << '\r' << ProgressBar(done, total) << std::flush;
}

}  // namespace

Connection::Connection(std::shared_ptr<grpc::Channel> channel, std::string api_key,
                       std::string caller, absl::Duration timeout)
    : channel_(std::move(channel)), stub_(pb::VerdictService::NewStub(channel_)) {
  call_.api_key = std::move(api_key);
  call_.caller = std::move(caller);
  call_.timeout = timeout;
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext() const {
  return client::NewContext(call_);
}

int ReportError(const grpc::Status& status) {
  const int code = static_cast<int>(status.error_code());
  std::cerr << "verdictctl: " << CodeName(code) << ": " << status.error_message() << std::endl;
  return code;
}

int RunCheck(Connection& connection, const std::string& ip, const std::string& user_agent,
             const CheckOptions& options, bool json) {
  pb::CheckIpResponse response;
  grpc::Status status = connection.stub().CheckIp(connection.NewContext().get(),
                                                  CheckRequest(ip, user_agent, options), &response);
  if (!status.ok()) {
    return ReportError(status);
  }
  if (json) {
    std::cout << ToJsonLine(response) << std::endl;
  } else {
    Table table(CheckHeader());
    table.AddRow(CheckRow(response));
    table.Print(std::cout);
  }
  return 0;
}

int RunBatch(Connection& connection, const std::vector<BatchItem>& items,
             const CheckOptions& options, bool json, bool progress) {
  int max_batch = kDefaultMaxBatch;
  if (grpc::Status status = MaxBatch(connection, &max_batch); !status.ok()) {
    return ReportError(status);
  }
  Table table(CheckHeader());
  bool some_failed = false;
  grpc::Status failure;
  if (progress && !items.empty()) {
    DrawProgress(0, items.size());
  }
  for (size_t start = 0; start < items.size(); start += max_batch) {
    const size_t end = std::min(items.size(), start + static_cast<size_t>(max_batch));
    pb::CheckBatchRequest request;
    for (size_t i = start; i < end; ++i) {
      *request.add_items() = CheckRequest(items[i].ip, items[i].user_agent, options);
    }
    pb::CheckBatchResponse response;
    failure = connection.stub().CheckBatch(connection.NewContext().get(), request, &response);
    if (failure.ok() && static_cast<size_t>(response.results_size()) != end - start) {
      failure = grpc::Status(grpc::StatusCode::INTERNAL,
                             absl::StrCat("the server returned ", response.results_size(),
                                          " results for ", end - start, " items"));
    }
    if (!failure.ok()) {
      break;
    }
    for (size_t i = start; i < end; ++i) {
      const pb::CheckBatchResult& result = response.results(static_cast<int>(i - start));
      if (!result.has_result()) {
        some_failed = true;
      }
      if (json) {
        std::cout << ToJsonLine(result) << '\n';
      } else if (result.has_result()) {
        table.AddRow(CheckRow(result.result()));
      } else {
        // The error code and message run on from the SCORE column, unpadded.
        table.AddRow(
            {items[i].ip.empty() ? "(empty)" : items[i].ip,
             absl::StrCat(CodeName(result.error().code()), ": ", result.error().message())});
      }
    }
    std::cout.flush();
    if (progress) {
      DrawProgress(end, items.size());
    }
  }
  if (progress && !items.empty()) {
    std::cerr << '\n';
  }
  // A failure before any result prints no table, not a lone header.
  if (!json && (failure.ok() || table.size() > 0)) {
    table.Print(std::cout);
    std::cout.flush();
  }
  if (!failure.ok()) {
    return ReportError(failure);
  }
  return some_failed ? kExitItemsFailed : 0;
}

namespace {

// Pages through a listing: `call` sends one request for at most `page_size` rows (0: the
// server's default) and `print` takes its rows, until the last page or `limit` rows (0: all).
// The rows of each page are handed over as they arrive.
template <typename Request, typename Response, typename Row>
grpc::Status Paginate(
    Request request, int64_t limit, int32_t page_size,
    const std::function<grpc::Status(const Request&, Response*)>& call,
    const std::function<const google::protobuf::RepeatedPtrField<Row>&(const Response&)>& rows,
    const std::function<void(const Row&)>& print) {
  int64_t printed = 0;
  while (true) {
    // Never ask for more rows than --limit still needs.
    int64_t size = page_size;
    if (limit > 0 && (size == 0 || size > limit - printed)) {
      size = limit - printed;
    }
    request.set_page_size(static_cast<int32_t>(std::min<int64_t>(size, 1000)));
    Response response;
    if (grpc::Status status = call(request, &response); !status.ok()) {
      return status;
    }
    for (const Row& row : rows(response)) {
      if (limit > 0 && printed >= limit) {
        break;
      }
      ++printed;
      print(row);
    }
    if (response.next_page_token().empty() || (limit > 0 && printed >= limit)) {
      return grpc::Status::OK;
    }
    request.set_page_token(response.next_page_token());
  }
}

// Prints a listing's rows as `output` says: JSON lines and CSV as they come (CSV after its
// header), a table once every row is in.
class Listing {
 public:
  Listing(Output output, std::vector<std::string> header) : output_(output), table_(header) {
    if (output_ == Output::kCsv) {
      std::cout << CsvRecord(header);
    }
  }
  void Add(const google::protobuf::Message& message, std::vector<std::string> cells) {
    switch (output_) {
      case Output::kJson:
        std::cout << ToJsonLine(message) << '\n';
        break;
      case Output::kCsv:
        std::cout << CsvRecord(cells);
        break;
      case Output::kTable:
        table_.AddRow(std::move(cells));
        break;
    }
  }
  // The table (also the rows before a failure), then the exit status.
  int Finish(const grpc::Status& status) {
    if (output_ == Output::kTable && (status.ok() || table_.size() > 0)) {
      table_.Print(std::cout);
    }
    std::cout.flush();
    return status.ok() ? 0 : ReportError(status);
  }

 private:
  const Output output_;
  Table table_;
};

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

}  // namespace

int RunHistory(Connection& connection, const std::string& ip, const HistoryOptions& options,
               Output output) {
  const bool csv = output == Output::kCsv;
  Listing listing(output,
                  csv ? std::vector<std::string>{"checked_at", "ip", "score", "proxy", "tor", "vpn",
                                                 "crawler", "bot", "caller", "user_agent"}
                      : std::vector<std::string>{"CHECKED_AT", "IP", "SCORE", "PROXY", "TOR", "VPN",
                                                 "CRAWLER", "BOT", "CALLER", "USER_AGENT"});
  pb::ListVerdictHistoryRequest request;
  request.set_ip(ip);
  if (options.since.has_value()) {
    SetTimestamp(*options.since, request.mutable_since());
  }
  if (options.until.has_value()) {
    SetTimestamp(*options.until, request.mutable_until());
  }
  const grpc::Status status =
      Paginate<pb::ListVerdictHistoryRequest, pb::ListVerdictHistoryResponse, pb::Verdict>(
          std::move(request), options.limit, options.page_size,
          [&](const pb::ListVerdictHistoryRequest& r, pb::ListVerdictHistoryResponse* response) {
            return connection.stub().ListVerdictHistory(connection.NewContext().get(), r, response);
          },
          [](const pb::ListVerdictHistoryResponse& r) -> const auto& { return r.verdicts(); },
          [&](const pb::Verdict& v) {
            if (csv) {
              listing.Add(v, {FormatTimestampMicros(v.checked_at()), v.ip(), ScoreWord(v.score()),
                              v.proxy() ? "true" : "false", v.tor() ? "true" : "false",
                              v.vpn() ? "true" : "false", v.crawler() ? "true" : "false",
                              v.bot() ? "true" : "false", v.caller(), v.user_agent()});
            } else {
              listing.Add(v, {FormatTimestamp(v.checked_at()), v.ip(), ScoreWord(v.score()),
                              YesNo(v.proxy()), YesNo(v.tor()), YesNo(v.vpn()), YesNo(v.crawler()),
                              YesNo(v.bot()), OrDash(v.caller()), OrDash(v.user_agent())});
            }
          });
  return listing.Finish(status);
}

int RunClicks(Connection& connection, const ClicksOptions& options, Output output) {
  const bool csv = output == Output::kCsv;
  Listing listing(
      output,
      // The CSV's team column comes last, so that a file read by column number before teams
      // existed keeps its meaning.
      csv ? std::vector<std::string>{"id", "requested_at", "caller", "ip", "outcome", "billed",
                                     "http_status", "latency_ms", "error", "completed_at", "score",
                                     "proxy", "tor", "vpn", "crawler", "bot", "verdict_checked_at",
                                     "user_agent", "team"}
          : std::vector<std::string>{"REQUESTED_AT", "CALLER", "TEAM", "IP", "OUTCOME", "HTTP",
                                     "LATENCY", "SCORE", "ERROR"});
  pb::ListClicksRequest request;
  request.set_caller(options.caller);
  request.set_team(options.team);
  request.set_ip(options.ip);
  if (options.since.has_value()) {
    SetTimestamp(*options.since, request.mutable_since());
  }
  if (options.until.has_value()) {
    SetTimestamp(*options.until, request.mutable_until());
  }
  const grpc::Status status = Paginate<pb::ListClicksRequest, pb::ListClicksResponse, pb::Click>(
      std::move(request), options.limit, options.page_size,
      [&](const pb::ListClicksRequest& r, pb::ListClicksResponse* response) {
        return connection.stub().ListClicks(connection.NewContext().get(), r, response);
      },
      [](const pb::ListClicksResponse& r) -> const auto& { return r.clicks(); },
      [&](const pb::Click& c) {
        const int64_t latency_us = c.latency().seconds() * 1'000'000 + c.latency().nanos() / 1000;
        const std::string latency_ms = absl::StrFormat("%.1f", latency_us / 1000.0);
        const bool verdict = c.has_verdict();
        const pb::Verdict& v = c.verdict();
        if (csv) {
          auto flag = [verdict](bool b) -> std::string {
            return verdict ? (b ? "true" : "false") : "";
          };
          listing.Add(
              c, {absl::StrCat(c.id()), FormatTimestampMicros(c.requested_at()), c.caller(), c.ip(),
                  OutcomeWord(c.outcome()), c.billed() ? "true" : "false",
                  c.http_status() == 0 ? "" : absl::StrCat(c.http_status()), latency_ms, c.error(),
                  FormatTimestampMicros(c.completed_at()), verdict ? ScoreWord(v.score()) : "",
                  flag(v.proxy()), flag(v.tor()), flag(v.vpn()), flag(v.crawler()), flag(v.bot()),
                  verdict ? FormatTimestampMicros(v.checked_at()) : "",
                  verdict ? v.user_agent() : "", c.team()});
        } else {
          listing.Add(c, {FormatTimestamp(c.requested_at()), c.caller(), OrDash(c.team()), c.ip(),
                          OutcomeWord(c.outcome()),
                          c.http_status() == 0 ? "-" : absl::StrCat(c.http_status()),
                          c.outcome() == pb::CLICK_OUTCOME_PENDING ? "-" : latency_ms + " ms",
                          verdict ? ScoreWord(v.score()) : "-", OrDash(c.error())});
        }
      });
  return listing.Finish(status);
}

int RunUsage(Connection& connection, const UsageOptions& options, bool json) {
  pb::GetUsageRequest request;
  request.set_caller(options.caller);
  request.set_team(options.team);
  if (options.since.has_value()) {
    SetTimestamp(*options.since, request.mutable_since());
  }
  if (options.until.has_value()) {
    SetTimestamp(*options.until, request.mutable_until());
  }
  pb::GetUsageResponse response;
  grpc::Status status =
      connection.stub().GetUsage(connection.NewContext().get(), request, &response);
  if (!status.ok()) {
    return ReportError(status);
  }
  if (!options.days) {
    for (pb::CallerUsage& caller : *response.mutable_callers()) {
      caller.clear_days();
    }
  }
  if (json) {
    std::cout << ToJsonLine(response) << std::endl;
    return 0;
  }
  const bool by_team = response.teams_size() > 0;
  Table callers({by_team ? "TEAM/CALLER" : "CALLER", "REQUESTS", "CACHE_HITS", "CLICKS",
                 "UPSTREAM_ERRORS", "BUDGET", "BUDGET_LEFT"});
  Table days({"CALLER", "DATE", "REQUESTS", "CACHE_HITS", "CLICKS", "UPSTREAM_ERRORS"});
  auto add_caller = [&callers](const pb::CallerUsage& c, absl::string_view indent) {
    const bool budgeted = c.monthly_budget() > 0;
    callers.AddRow({absl::StrCat(indent, c.caller()), Count(c.requests()), Count(c.cache_hits()),
                    Count(c.clicks()), Count(c.upstream_errors()),
                    budgeted ? Count(c.monthly_budget()) : "-",
                    budgeted ? Count(c.budget_left()) : "-"});
  };
  for (const pb::TeamUsage& t : response.teams()) {
    const bool budgeted = t.monthly_budget() > 0;
    callers.AddRow({absl::StrCat("@", t.team()), Count(t.requests()), Count(t.cache_hits()),
                    Count(t.clicks()), Count(t.upstream_errors()),
                    budgeted ? Count(t.monthly_budget()) : "-",
                    budgeted ? Count(t.budget_left()) : "-"});
    for (const pb::CallerUsage& c : response.callers()) {
      if (c.team() == t.team()) {
        add_caller(c, "  ");
      }
    }
  }
  bool teamless_header = false;
  for (const pb::CallerUsage& c : response.callers()) {
    if (by_team && !c.team().empty()) {
      continue;
    }
    if (by_team && !teamless_header) {
      teamless_header = true;
      callers.AddRow({"(no team)", "", "", "", "", "", ""});
    }
    add_caller(c, by_team ? "  " : "");
  }
  for (const pb::CallerUsage& c : response.callers()) {
    for (const pb::DailyUsage& d : c.days()) {
      days.AddRow({c.caller(), d.date(), Count(d.requests()), Count(d.cache_hits()),
                   Count(d.clicks()), Count(d.upstream_errors())});
    }
  }
  callers.Print(std::cout);
  if (options.days) {
    std::cout << '\n';
    days.Print(std::cout);
  }
  if (response.has_allowance()) {
    const pb::Allowance& a = response.allowance();
    std::cout << "\nallowance: ";
    if (a.monthly_allowance() > 0) {
      std::cout << a.clicks_used() << " of " << a.monthly_allowance() << " clicks used, "
                << a.clicks_left() << " left";
    } else {
      std::cout << a.clicks_used() << " clicks used (monthly allowance unknown)";
    }
    std::cout << "; period " << FormatTimestamp(a.period_start()) << " to "
              << FormatTimestamp(a.period_end());
    if (a.exhausted_upstream()) {
      std::cout << "; EXHAUSTED: ClickPatrol refuses misses until the period ends";
    }
    std::cout << '\n';
  }
  std::cout.flush();
  return 0;
}

// grpc.health.v1 has no generated client in Debian's packages, and its messages are one field
// each, so they are encoded and decoded here: HealthCheckRequest{string service = 1},
// HealthCheckResponse{ServingStatus status = 1}.
int RunHealth(Connection& connection, const std::string& service, bool json) {
  std::string request;
  if (!service.empty()) {
    request.push_back('\x0a');  // field 1, length-delimited
    for (size_t n = service.size();; n >>= 7) {
      if (n < 0x80) {
        request.push_back(static_cast<char>(n));
        break;
      }
      request.push_back(static_cast<char>((n & 0x7f) | 0x80));
    }
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::GenericStub stub(connection.channel());
  std::unique_ptr<grpc::ClientContext> context = connection.NewContext();
  std::promise<grpc::Status> done;
  stub.UnaryCall(context.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &request_buffer, &response_buffer,
                 [&done](grpc::Status status) { done.set_value(std::move(status)); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    return ReportError(status);
  }
  std::vector<grpc::Slice> slices;
  std::string response;
  if (response_buffer.Valid() && response_buffer.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      response.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(response)) {
    return ReportError(grpc::Status(grpc::StatusCode::INTERNAL,
                                    "the health response is not a HealthCheckResponse"));
  }
  int64_t code = 0;  // UNKNOWN when absent
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == 1 &&
        fields.field(i).type() == google::protobuf::UnknownField::TYPE_VARINT) {
      code = static_cast<int64_t>(fields.field(i).varint());
    }
  }
  static constexpr const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  const std::string name = code >= 0 && code < 4 ? kNames[code] : absl::StrCat("STATUS_", code);
  if (json) {
    std::cout << nlohmann::json{{"status", name}}.dump() << '\n';
  } else {
    std::cout << name << '\n';
  }
  return code == 1 ? 0 : kExitNotServing;
}

}  // namespace verdictd::cli
