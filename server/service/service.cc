#include "server/service/service.h"

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/ip.h"
#include "server/service/status.h"
#include "server/service/wire.h"

namespace verdictd {
namespace {

namespace pb = ::verdict::v1;

// google.protobuf.Duration's and Timestamp's documented ranges.
constexpr int64_t kMaxDurationSeconds = 315'576'000'000;
constexpr int64_t kMinTimestampSeconds = -62'135'596'800;  // 0001-01-01T00:00:00Z
constexpr int64_t kMaxTimestampSeconds = 253'402'300'799;  // 9999-12-31T23:59:59Z

std::optional<absl::string_view> Metadata(const grpc::CallbackServerContext& context,
                                          const char* key) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(key);
  if (it == metadata.end()) {
    return std::nullopt;
  }
  return absl::string_view(it->second.data(), it->second.size());
}

absl::StatusOr<absl::Duration> FromProto(const google::protobuf::Duration& d) {
  if (d.seconds() < -kMaxDurationSeconds || d.seconds() > kMaxDurationSeconds ||
      d.nanos() <= -1'000'000'000 || d.nanos() >= 1'000'000'000 ||
      (d.seconds() > 0 && d.nanos() < 0) || (d.seconds() < 0 && d.nanos() > 0)) {
    return absl::InvalidArgumentError("max_age is not a valid google.protobuf.Duration");
  }
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

absl::StatusOr<absl::Time> FromProto(const google::protobuf::Timestamp& t, absl::string_view name) {
  if (t.seconds() < kMinTimestampSeconds || t.seconds() > kMaxTimestampSeconds || t.nanos() < 0 ||
      t.nanos() >= 1'000'000'000) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " is not a valid google.protobuf.Timestamp"));
  }
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
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

pb::ClickOutcome ToProto(ClickOutcome outcome) {
  switch (outcome) {
    case ClickOutcome::kPending:
      return pb::CLICK_OUTCOME_PENDING;
    case ClickOutcome::kVerdict:
      return pb::CLICK_OUTCOME_VERDICT;
    case ClickOutcome::kUpstreamError:
      return pb::CLICK_OUTCOME_ERROR;
    case ClickOutcome::kNotSent:
      return pb::CLICK_OUTCOME_NOT_SENT;
  }
  return pb::CLICK_OUTCOME_UNSPECIFIED;
}

void ToProto(const ClickRecord& click, const std::string& team, pb::Click* out) {
  out->set_id(click.id);
  ToProto(click.requested_at, out->mutable_requested_at());
  out->set_caller(click.caller);
  out->set_team(team);
  out->set_ip(click.ip);
  out->set_outcome(ToProto(click.outcome));
  out->set_billed(click.outcome != ClickOutcome::kNotSent);
  out->set_http_status(click.http_status);
  const int64_t latency_us = absl::ToInt64Microseconds(click.latency);
  out->mutable_latency()->set_seconds(latency_us / 1'000'000);
  out->mutable_latency()->set_nanos(static_cast<int32_t>(latency_us % 1'000'000) * 1000);
  out->set_error(click.error);
  if (click.completed_at.has_value()) {
    ToProto(*click.completed_at, out->mutable_completed_at());
  }
  if (click.verdict.has_value()) {
    ToProto(*click.verdict, out->mutable_verdict());
  }
}

void ToProto(const CheckResult& result, pb::CheckIpResponse* out) {
  ToProto(result.verdict, out->mutable_verdict());
  out->set_source(static_cast<pb::Source>(result.source));
  out->set_click_spent(result.click_spent);
}

absl::StatusOr<CheckRequest> FromProto(const pb::CheckIpRequest& in, const Identity& identity) {
  CheckRequest out;
  out.ip = in.ip();
  out.user_agent = in.user_agent();
  out.cache_only = in.cache_only();
  out.caller = identity.caller;
  out.monthly_budget = identity.monthly_budget;
  out.team = identity.team;
  out.team_monthly_budget = identity.team_monthly_budget;
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
  std::function<void()> finish;
  std::atomic<int> remaining;

  void ItemDone() {
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      finish();
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

// What the engine's access rule needs to know of who is asking.
Reader ReaderOf(const Identity& identity) {
  return Reader{identity.caller, identity.team, identity.lead, identity.auditor};
}

int64_t MicrosOrLimit(absl::Time t) {
  if (t == absl::InfinitePast()) {
    return std::numeric_limits<int64_t>::min();
  }
  if (t == absl::InfiniteFuture()) {
    return std::numeric_limits<int64_t>::max();
  }
  return absl::ToUnixMicros(t);
}

// The four counters of a CallerUsage, a DailyUsage or a TeamUsage.
template <typename Message>
void SetCounts(const UsageCounts& counts, Message* out) {
  out->set_clicks(counts.clicks);
  out->set_cache_hits(counts.cache_hits);
  out->set_requests(counts.requests);
  out->set_upstream_errors(counts.upstream_errors);
}

void ToProto(const UsageReport& report, pb::GetUsageResponse* out) {
  for (const CallerUsageReport& caller : report.callers) {
    pb::CallerUsage* usage = out->add_callers();
    usage->set_caller(caller.caller);
    SetCounts(caller.total, usage);
    for (const DailyUsage& row : caller.days) {
      pb::DailyUsage* day = usage->add_days();
      day->set_date(absl::FormatCivilTime(row.day));
      SetCounts(row.counts, day);
    }
    if (caller.budget.has_value()) {
      usage->set_monthly_budget(caller.budget->monthly_budget);
      usage->set_budget_left(caller.budget->left);
    }
    usage->set_team(caller.team);
  }
  for (const TeamUsageReport& team : report.teams) {
    pb::TeamUsage* usage = out->add_teams();
    usage->set_team(team.team);
    SetCounts(team.total, usage);
    usage->set_monthly_budget(team.budget.monthly_budget);
    usage->set_budget_left(team.budget.left);
    for (const std::string& caller : team.callers) {
      usage->add_callers(caller);
    }
  }
  const AllowanceStatus& allowance = report.allowance;
  pb::Allowance* a = out->mutable_allowance();
  a->set_monthly_allowance(allowance.monthly_allowance);
  a->set_clicks_used(allowance.clicks_used);
  a->set_clicks_left(allowance.clicks_left);
  ToProto(allowance.period_start, a->mutable_period_start());
  ToProto(allowance.period_end, a->mutable_period_end());
  a->set_exhausted_upstream(allowance.exhausted_upstream);
}

// One call on a raw method: owns the decoded request and the response. Deletes itself when gRPC
// is done with it.
template <typename Request, typename Response>
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryCall(grpc::ByteBuffer* wire_response) : wire_response_(wire_response) {}

  Request request;
  Response response;

  // Lets the engine know when the caller goes away (cancelled, deadline passed, server
  // shutting down), so that a miss nobody waits for any more is not sent. For calls that check.
  void WatchCancellation(Engine* engine, const grpc::CallbackServerContext& context) {
    engine_ = engine;
    state_ = std::make_shared<CallState>(absl::FromChrono(context.deadline()));
    // Published for OnCancel, which gRPC runs on another thread once this handler has returned,
    // through its core's synchronisation (invisible to TSan: Debian's libgrpc is not
    // instrumented). The release/acquire pair states the ordering in our own code.
    watching_.store(true, std::memory_order_release);
  }
  const std::shared_ptr<CallState>& state() const { return state_; }

  // Finishes the call with `status`, counting it; an OK call sends `response`.
  void Complete(ServerMetrics* metrics, ServerMetrics::Method method, absl::Status status) {
    if (status.ok()) {
      status = EncodeResponse(response, wire_response_);
    }
    grpc::Status grpc_status = ToGrpcStatus(status);
    if (metrics != nullptr) {
      metrics->OnRpc(method, grpc_status.error_code());
    }
    Finish(std::move(grpc_status));
  }

 private:
  void OnDone() override { delete this; }
  void OnCancel() override {
    if (watching_.load(std::memory_order_acquire)) {
      engine_->Cancel(state_);
    }
  }

  grpc::ByteBuffer* const wire_response_;
  std::atomic<bool> watching_{false};
  Engine* engine_ = nullptr;
  std::shared_ptr<CallState> state_;
};

}  // namespace

VerdictServiceImpl::VerdictServiceImpl(ServiceOptions options, Engine& engine,
                                       const Authenticator& auth, const PageTokenCodec& page_tokens,
                                       ServerMetrics* metrics)
    : options_(std::move(options)),
      engine_(engine),
      auth_(auth),
      page_tokens_(page_tokens),
      metrics_(metrics) {}

absl::StatusOr<Identity> VerdictServiceImpl::Identify(
    const grpc::CallbackServerContext& context) const {
  return auth_.Identify(Metadata(context, "authorization"), Metadata(context, "x-caller"));
}

absl::StatusOr<Identity> VerdictServiceImpl::Accept(const grpc::CallbackServerContext& context,
                                                    const grpc::ByteBuffer& wire,
                                                    google::protobuf::Message* request) const {
  absl::StatusOr<Identity> identity = Identify(context);
  if (!identity.ok()) {
    return identity.status();
  }
  absl::Status decoded = DecodeRequest(wire, request);
  if (!decoded.ok()) {
    return decoded;
  }
  return identity;
}

grpc::ServerUnaryReactor* VerdictServiceImpl::CheckIp(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<pb::CheckIpRequest, pb::CheckIpResponse>(response);
  absl::StatusOr<Identity> identity = Accept(*context, *request, &call->request);
  if (!identity.ok()) {
    call->Complete(metrics_, ServerMetrics::kCheckIp, identity.status());
    return call;
  }
  absl::StatusOr<CheckRequest> check = FromProto(call->request, *identity);
  if (!check.ok()) {
    call->Complete(metrics_, ServerMetrics::kCheckIp, check.status());
    return call;
  }
  call->WatchCancellation(&engine_, *context);
  check->call = call->state();
  engine_.Check(std::move(*check), [this, call](absl::StatusOr<CheckResult> result) {
    if (result.ok()) {
      ToProto(*result, &call->response);
    }
    call->Complete(metrics_, ServerMetrics::kCheckIp, result.status());
  });
  return call;
}

grpc::ServerUnaryReactor* VerdictServiceImpl::CheckBatch(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request,
                                                         grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<pb::CheckBatchRequest, pb::CheckBatchResponse>(response);
  absl::StatusOr<Identity> identity = Accept(*context, *request, &call->request);
  if (!identity.ok()) {
    call->Complete(metrics_, ServerMetrics::kCheckBatch, identity.status());
    return call;
  }
  const int n = call->request.items_size();
  if (n > options_.max_batch) {
    call->Complete(metrics_, ServerMetrics::kCheckBatch,
                   absl::InvalidArgumentError(
                       absl::StrCat("batch has ", n, " items; the limit is ", options_.max_batch)));
    return call;
  }
  if (n == 0) {
    call->Complete(metrics_, ServerMetrics::kCheckBatch, absl::OkStatus());
    return call;
  }
  // Every result slot exists before the first item starts: items finish on other threads, each
  // writing only its own slot.
  call->response.mutable_results()->Reserve(n);
  for (int i = 0; i < n; ++i) {
    call->response.add_results();
  }
  auto batch = std::make_shared<BatchCall>();
  batch->finish = [this, call] {
    call->Complete(metrics_, ServerMetrics::kCheckBatch, absl::OkStatus());
  };
  batch->remaining.store(n, std::memory_order_relaxed);
  call->WatchCancellation(&engine_, *context);
  const std::shared_ptr<CallState> state = call->state();
  for (int i = 0; i < n; ++i) {
    pb::CheckBatchResult* slot = call->response.mutable_results(i);
    absl::StatusOr<CheckRequest> check = FromProto(call->request.items(i), *identity);
    if (!check.ok()) {
      SetItemResult(check.status(), slot);
      batch->ItemDone();
      continue;
    }
    check->call = state;
    engine_.Check(std::move(*check), [batch, slot](absl::StatusOr<CheckResult> result) {
      SetItemResult(result, slot);
      batch->ItemDone();
    });
  }
  return call;
}

grpc::ServerUnaryReactor* VerdictServiceImpl::ListVerdictHistory(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  auto* call =
      new UnaryCall<pb::ListVerdictHistoryRequest, pb::ListVerdictHistoryResponse>(response);
  absl::StatusOr<Identity> identity = Accept(*context, *request, &call->request);
  if (!identity.ok()) {
    call->Complete(metrics_, ServerMetrics::kListVerdictHistory, identity.status());
    return call;
  }
  absl::StatusOr<HistoryPage> page = HistoryPageFor(call->request);
  if (!page.ok()) {
    call->Complete(metrics_, ServerMetrics::kListVerdictHistory, page.status());
    return call;
  }
  // Finished from the store's thread: the reactor never waits for the read.
  const HistoryQuery query = page->query;
  engine_.History(query, [this, call, page = *std::move(page)](
                             absl::StatusOr<std::vector<HistoryEntry>> entries) mutable {
    call->Complete(metrics_, ServerMetrics::kListVerdictHistory,
                   FillHistory(std::move(page), std::move(entries), &call->response));
  });
  return call;
}

template <typename ListingRequest>
absl::StatusOr<int> VerdictServiceImpl::ListingBounds(const ListingRequest& request,
                                                      absl::Time* since, absl::Time* until) const {
  if (request.has_since()) {
    absl::StatusOr<absl::Time> t = FromProto(request.since(), "since");
    if (!t.ok()) {
      return t.status();
    }
    *since = *t;
  }
  if (request.has_until()) {
    absl::StatusOr<absl::Time> t = FromProto(request.until(), "until");
    if (!t.ok()) {
      return t.status();
    }
    *until = *t;
  }
  if (*since >= *until) {
    return absl::InvalidArgumentError("since must be before until");
  }
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError("page_size must not be negative");
  }
  return request.page_size() == 0 ? options_.default_page_size
                                  : std::min(request.page_size(), options_.max_page_size);
}

absl::StatusOr<VerdictServiceImpl::HistoryPage> VerdictServiceImpl::HistoryPageFor(
    const pb::ListVerdictHistoryRequest& request) const {
  absl::StatusOr<IpAddress> ip = ParseIp(request.ip());
  if (!ip.ok()) {
    return ip.status();
  }
  HistoryQuery query;
  query.ip = ip->canonical();
  absl::StatusOr<int> page_size = ListingBounds(request, &query.since, &query.until);
  if (!page_size.ok()) {
    return page_size.status();
  }
  PageCursor bound{query.ip,
                   MicrosOrLimit(query.since),
                   MicrosOrLimit(query.until),
                   0,
                   0,
                   PageCursor::Kind::kHistory,
                   "",
                   ""};
  if (!request.page_token().empty()) {
    absl::StatusOr<PageCursor> cursor = page_tokens_.Decode(request.page_token());
    if (!cursor.ok()) {
      return cursor.status();
    }
    if (cursor->ip != bound.ip || cursor->since_us != bound.since_us ||
        cursor->until_us != bound.until_us) {
      return absl::InvalidArgumentError(
          "page_token belongs to a different request (ip, since and until must not change "
          "between pages)");
    }
    query.after = HistoryCursor{absl::FromUnixMicros(cursor->checked_at_us), cursor->id};
  }
  query.limit = *page_size + 1;  // one more tells whether another page exists
  return HistoryPage{std::move(query), *page_size, std::move(bound)};
}

absl::Status VerdictServiceImpl::FillHistory(HistoryPage page,
                                             absl::StatusOr<std::vector<HistoryEntry>> entries,
                                             pb::ListVerdictHistoryResponse* response) const {
  const int page_size = page.page_size;
  PageCursor& bound = page.bound;
  if (!entries.ok()) {
    return absl::UnavailableError(
        absl::StrCat("verdict store unavailable: ", entries.status().message()));
  }
  const bool more = static_cast<int>(entries->size()) > page_size;
  if (more) {
    entries->resize(page_size);
  }
  for (const HistoryEntry& entry : *entries) {
    ToProto(entry.verdict, response->add_verdicts());
  }
  if (more) {
    bound.checked_at_us = absl::ToUnixMicros(entries->back().verdict.checked_at);
    bound.id = entries->back().id;
    response->set_next_page_token(page_tokens_.Encode(bound));
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* VerdictServiceImpl::ListClicks(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request,
                                                         grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<pb::ListClicksRequest, pb::ListClicksResponse>(response);
  absl::StatusOr<Identity> identity = Accept(*context, *request, &call->request);
  if (!identity.ok()) {
    call->Complete(metrics_, ServerMetrics::kListClicks, identity.status());
    return call;
  }
  absl::StatusOr<ClicksPage> page = ClicksPageFor(call->request);
  if (!page.ok()) {
    call->Complete(metrics_, ServerMetrics::kListClicks, page.status());
    return call;
  }
  ClicksQuery query;
  query.reader = ReaderOf(*identity);
  query.team = page->team;
  query.query = page->query;
  // Who may read whose clicks is the engine's; finished from the store's thread.
  engine_.Clicks(std::move(query), [this, call, page = *std::move(page)](
                                       absl::StatusOr<std::vector<ClickRecord>> clicks) mutable {
    call->Complete(metrics_, ServerMetrics::kListClicks,
                   FillClicks(std::move(page), std::move(clicks), &call->response));
  });
  return call;
}

absl::StatusOr<VerdictServiceImpl::ClicksPage> VerdictServiceImpl::ClicksPageFor(
    const pb::ListClicksRequest& request) const {
  ClickQuery query;
  // A caller is named as x-caller names one, and checked the same way, before anything else.
  if (!request.caller().empty()) {
    if (absl::Status valid = CheckCallerName(request.caller(), "caller"); !valid.ok()) {
      return valid;
    }
    query.caller = request.caller();
  }
  if (!request.team().empty()) {
    if (absl::Status valid = CheckCallerName(request.team(), "team"); !valid.ok()) {
      return valid;
    }
  }
  if (!request.ip().empty()) {
    absl::StatusOr<IpAddress> ip = ParseIp(request.ip());
    if (!ip.ok()) {
      return ip.status();
    }
    query.ip = ip->canonical();
  }
  absl::StatusOr<int> page_size = ListingBounds(request, &query.since, &query.until);
  if (!page_size.ok()) {
    return page_size.status();
  }
  PageCursor bound{query.ip,
                   MicrosOrLimit(query.since),
                   MicrosOrLimit(query.until),
                   0,
                   0,
                   PageCursor::Kind::kClicks,
                   query.caller,
                   request.team()};
  if (!request.page_token().empty()) {
    absl::StatusOr<PageCursor> cursor = page_tokens_.Decode(request.page_token());
    if (!cursor.ok()) {
      return cursor.status();
    }
    if (cursor->kind != PageCursor::Kind::kClicks) {
      return absl::InvalidArgumentError(
          "page_token belongs to another method (a ListVerdictHistory token)");
    }
    if (cursor->ip != bound.ip || cursor->caller != bound.caller || cursor->team != bound.team ||
        cursor->since_us != bound.since_us || cursor->until_us != bound.until_us) {
      return absl::InvalidArgumentError(
          "page_token belongs to a different request (caller, team, ip, since and until must "
          "not change between pages)");
    }
    query.after = ClickCursor{absl::FromUnixMicros(cursor->checked_at_us), cursor->id};
  }
  query.limit = *page_size + 1;  // one more tells whether another page exists
  return ClicksPage{std::move(query), request.team(), *page_size, std::move(bound)};
}

absl::Status VerdictServiceImpl::FillClicks(ClicksPage page,
                                            absl::StatusOr<std::vector<ClickRecord>> clicks,
                                            pb::ListClicksResponse* response) const {
  if (!clicks.ok()) {
    return clicks.status();
  }
  const bool more = static_cast<int>(clicks->size()) > page.page_size;
  if (more) {
    clicks->resize(page.page_size);
  }
  for (const ClickRecord& click : *clicks) {
    ToProto(click, engine_.TeamOf(click.caller), response->add_clicks());
  }
  if (more) {
    page.bound.checked_at_us = absl::ToUnixMicros(clicks->back().requested_at);
    page.bound.id = clicks->back().id;
    response->set_next_page_token(page_tokens_.Encode(page.bound));
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* VerdictServiceImpl::GetUsage(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<pb::GetUsageRequest, pb::GetUsageResponse>(response);
  absl::StatusOr<Identity> identity = Accept(*context, *request, &call->request);
  if (!identity.ok()) {
    call->Complete(metrics_, ServerMetrics::kGetUsage, identity.status());
    return call;
  }
  const pb::GetUsageRequest& in = call->request;
  // A caller is named as x-caller names one, and is checked the same way before anything else:
  // a name no caller can have is an invalid argument, whoever asks.
  if (!in.caller().empty()) {
    if (absl::Status valid = CheckCallerName(in.caller(), "caller"); !valid.ok()) {
      call->Complete(metrics_, ServerMetrics::kGetUsage, std::move(valid));
      return call;
    }
  }
  if (!in.team().empty()) {
    if (absl::Status valid = CheckCallerName(in.team(), "team"); !valid.ok()) {
      call->Complete(metrics_, ServerMetrics::kGetUsage, std::move(valid));
      return call;
    }
  }
  UsageQuery query;
  query.reader = ReaderOf(*identity);
  query.caller = in.caller();
  query.team = in.team();
  if (in.has_since()) {
    query.since = FromProto(in.since(), "since");
  }
  if (in.has_until()) {
    query.until = FromProto(in.until(), "until");
  }
  // Who may see whom, the default window and the budgets are the engine's; the reactor is
  // finished from its callback and never waits for the store.
  engine_.Usage(std::move(query), [this, call](absl::StatusOr<UsageReport> report) {
    if (report.ok()) {
      ToProto(*report, &call->response);
    }
    call->Complete(metrics_, ServerMetrics::kGetUsage, report.status());
  });
  return call;
}

grpc::ServerUnaryReactor* VerdictServiceImpl::GetServerInfo(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* request,
                                                            grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<pb::GetServerInfoRequest, pb::GetServerInfoResponse>(response);
  absl::StatusOr<Identity> identity = Accept(*context, *request, &call->request);
  if (identity.ok()) {
    call->response.set_max_batch(options_.max_batch);
    call->response.set_version(VERDICTD_VERSION);
    call->response.set_keyed(auth_.keyed());
    call->response.set_cache_key(options_.cache_key_name);
    call->response.set_caller(identity->caller);
  }
  call->Complete(metrics_, ServerMetrics::kGetServerInfo, identity.status());
  return call;
}

}  // namespace verdictd
