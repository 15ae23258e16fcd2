#include "client/verdictctl/commands.h"

#include <algorithm>
#include <future>
#include <iostream>

#include "absl/strings/str_cat.h"
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

int RunHistory(Connection& connection, const std::string& ip, const HistoryOptions& options,
               bool json) {
  Table table({"CHECKED_AT", "IP", "SCORE", "PROXY", "TOR", "VPN", "CRAWLER", "BOT", "CALLER",
               "USER_AGENT"});
  pb::ListVerdictHistoryRequest request;
  request.set_ip(ip);
  if (options.since.has_value()) {
    SetTimestamp(*options.since, request.mutable_since());
  }
  if (options.until.has_value()) {
    SetTimestamp(*options.until, request.mutable_until());
  }
  int64_t printed = 0;
  grpc::Status failure;
  while (true) {
    // Never ask for more rows than --limit still needs.
    int64_t page_size = options.page_size;
    if (options.limit > 0 && (page_size == 0 || page_size > options.limit - printed)) {
      page_size = options.limit - printed;
    }
    request.set_page_size(static_cast<int32_t>(std::min<int64_t>(page_size, 1000)));
    pb::ListVerdictHistoryResponse response;
    failure =
        connection.stub().ListVerdictHistory(connection.NewContext().get(), request, &response);
    if (!failure.ok()) {
      break;
    }
    for (const pb::Verdict& v : response.verdicts()) {
      if (options.limit > 0 && printed >= options.limit) {
        break;
      }
      ++printed;
      if (json) {
        std::cout << ToJsonLine(v) << '\n';
      } else {
        table.AddRow({FormatTimestamp(v.checked_at()), v.ip(), ScoreWord(v.score()),
                      YesNo(v.proxy()), YesNo(v.tor()), YesNo(v.vpn()), YesNo(v.crawler()),
                      YesNo(v.bot()), v.caller().empty() ? "-" : v.caller(),
                      v.user_agent().empty() ? "-" : v.user_agent()});
      }
    }
    if (response.next_page_token().empty() || (options.limit > 0 && printed >= options.limit)) {
      break;
    }
    request.set_page_token(response.next_page_token());
  }
  if (!json && (failure.ok() || table.size() > 0)) {
    table.Print(std::cout);
  }
  std::cout.flush();
  return failure.ok() ? 0 : ReportError(failure);
}

int RunUsage(Connection& connection, const UsageOptions& options, bool json) {
  pb::GetUsageRequest request;
  request.set_caller(options.caller);
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
  Table callers(
      {"CALLER", "REQUESTS", "CACHE_HITS", "CLICKS", "UPSTREAM_ERRORS", "BUDGET", "BUDGET_LEFT"});
  Table days({"CALLER", "DATE", "REQUESTS", "CACHE_HITS", "CLICKS", "UPSTREAM_ERRORS"});
  for (const pb::CallerUsage& c : response.callers()) {
    const bool budgeted = c.monthly_budget() > 0;
    callers.AddRow({c.caller(), Count(c.requests()), Count(c.cache_hits()), Count(c.clicks()),
                    Count(c.upstream_errors()), budgeted ? Count(c.monthly_budget()) : "-",
                    budgeted ? Count(c.budget_left()) : "-"});
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
