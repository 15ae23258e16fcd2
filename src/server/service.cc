#include "server/service.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/status.h"

namespace verdictd {
namespace {

namespace pb = ::verdict::v1;

constexpr char kCallerHeader[] = "x-caller";
constexpr char kAnonymous[] = "anonymous";
// google.protobuf.Duration's documented range.
constexpr int64_t kMaxDurationSeconds = 315'576'000'000;

std::string CallerOf(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kCallerHeader);
  if (it == metadata.end() || it->second.empty()) {
    return kAnonymous;
  }
  return std::string(it->second.data(), it->second.size());
}

absl::StatusOr<absl::Duration> FromProto(const google::protobuf::Duration& d) {
  if (d.seconds() < -kMaxDurationSeconds || d.seconds() > kMaxDurationSeconds ||
      d.nanos() <= -1'000'000'000 || d.nanos() >= 1'000'000'000 ||
      (d.seconds() > 0 && d.nanos() < 0) || (d.seconds() < 0 && d.nanos() > 0)) {
    return absl::InvalidArgumentError("max_age is not a valid google.protobuf.Duration");
  }
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

void ToProto(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t micros = absl::ToUnixMicros(t);
  int64_t seconds = micros / 1'000'000;
  int64_t rem = micros % 1'000'000;
  if (rem < 0) {
    --seconds;
    rem += 1'000'000;
  }
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(rem * 1000));
}

void ToProto(const Verdict& v, pb::Verdict* out) {
  out->set_ip(v.ip);
  out->set_score(static_cast<pb::Score>(v.assessment.score));
  out->set_proxy(v.assessment.proxy);
  out->set_tor(v.assessment.tor);
  out->set_vpn(v.assessment.vpn);
  out->set_crawler(v.assessment.crawler);
  out->set_bot(v.assessment.bot);
  ToProto(v.checked_at, out->mutable_checked_at());
  out->set_user_agent(v.user_agent);
  out->set_caller(v.caller);
}

void ToProto(const CheckResult& result, pb::CheckIpResponse* out) {
  ToProto(result.verdict, out->mutable_verdict());
  out->set_source(static_cast<pb::Source>(result.source));
  out->set_click_spent(result.click_spent);
}

absl::StatusOr<CheckRequest> FromProto(const pb::CheckIpRequest& in, const std::string& caller) {
  CheckRequest out;
  out.ip = in.ip();
  out.user_agent = in.user_agent();
  out.cache_only = in.cache_only();
  out.caller = caller;
  if (in.has_max_age()) {
    absl::StatusOr<absl::Duration> max_age = FromProto(in.max_age());
    if (!max_age.ok()) {
      return max_age.status();
    }
    out.max_age = *max_age;
  }
  return out;
}

// One CheckBatch call: finished by whichever item completes last.
struct BatchCall {
  grpc::ServerUnaryReactor* reactor;
  pb::CheckBatchResponse* response;
  std::atomic<int> remaining;

  void ItemDone() {
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      reactor->Finish(grpc::Status::OK);
    }
  }
};

void SetItemResult(const absl::StatusOr<CheckResult>& result, pb::CheckBatchResult* out) {
  if (result.ok()) {
    ToProto(*result, out->mutable_result());
  } else {
    out->mutable_error()->set_code(static_cast<int32_t>(result.status().code()));
    out->mutable_error()->set_message(std::string(result.status().message()));
  }
}

}  // namespace

VerdictServiceImpl::VerdictServiceImpl(ServiceOptions options, Engine& engine)
    : options_(options), engine_(engine) {}

grpc::ServerUnaryReactor* VerdictServiceImpl::CheckIp(grpc::CallbackServerContext* context,
                                                      const pb::CheckIpRequest* request,
                                                      pb::CheckIpResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<CheckRequest> check = FromProto(*request, CallerOf(*context));
  if (!check.ok()) {
    reactor->Finish(ToGrpcStatus(check.status()));
    return reactor;
  }
  engine_.Check(std::move(*check), [reactor, response](absl::StatusOr<CheckResult> result) {
    if (result.ok()) {
      ToProto(*result, response);
    }
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* VerdictServiceImpl::CheckBatch(grpc::CallbackServerContext* context,
                                                         const pb::CheckBatchRequest* request,
                                                         pb::CheckBatchResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const int n = request->items_size();
  if (n > options_.max_batch) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("batch has ", n, " items; the limit is ", options_.max_batch))));
    return reactor;
  }
  if (n == 0) {
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // Every result slot exists before the first item starts: items finish on other threads, each
  // writing only its own slot.
  for (int i = 0; i < n; ++i) {
    response->add_results();
  }
  auto call = std::make_shared<BatchCall>();
  call->reactor = reactor;
  call->response = response;
  call->remaining.store(n, std::memory_order_relaxed);
  const std::string caller = CallerOf(*context);
  for (int i = 0; i < n; ++i) {
    pb::CheckBatchResult* slot = response->mutable_results(i);
    absl::StatusOr<CheckRequest> check = FromProto(request->items(i), caller);
    if (!check.ok()) {
      SetItemResult(check.status(), slot);
      call->ItemDone();
      continue;
    }
    engine_.Check(std::move(*check), [call, slot](absl::StatusOr<CheckResult> result) {
      SetItemResult(result, slot);
      call->ItemDone();
    });
  }
  return reactor;
}

grpc::ServerUnaryReactor* VerdictServiceImpl::ListVerdictHistory(
    grpc::CallbackServerContext* context, const pb::ListVerdictHistoryRequest* request,
    pb::ListVerdictHistoryResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(
      grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "ListVerdictHistory is not implemented yet"));
  return reactor;
}

grpc::ServerUnaryReactor* VerdictServiceImpl::GetUsage(grpc::CallbackServerContext* context,
                                                       const pb::GetUsageRequest* request,
                                                       pb::GetUsageResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "GetUsage is not implemented yet"));
  return reactor;
}

}  // namespace verdictd
