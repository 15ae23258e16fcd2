#ifndef VERDICTD_SERVER_SERVICE_SERVICE_H_
#define VERDICTD_SERVER_SERVICE_SERVICE_H_

#include <functional>
#include <string>
#include <vector>

#include "server/auth/api_keys.h"
#include "server/auth/page_token.h"
#include "server/engine/engine.h"
#include "server/service/server_metrics.h"
#include "verdict/v1/verdict.grpc.pb.h"

namespace verdictd {

struct ServiceOptions {
  // Most items in one CheckBatch. Default: 1000.
  int max_batch = 1000;
  // ListVerdictHistory page size when the request gives none, and the most it may ask for.
  // Defaults: 100 and 1000.
  int default_page_size = 100;
  int max_page_size = 1000;
  std::string cache_key_name = "ip";
};

namespace internal {
namespace pb = ::verdict::v1;
// Every method is registered raw (bytes in, bytes out) so that the service, not gRPC, decodes
// requests and can say precisely why one does not parse (see server/wire.h).
using RawVerdictService = pb::VerdictService::WithRawCallbackMethod_CheckIp<
    pb::VerdictService::WithRawCallbackMethod_CheckBatch<
        pb::VerdictService::WithRawCallbackMethod_ListVerdictHistory<
            pb::VerdictService::WithRawCallbackMethod_GetUsage<
                pb::VerdictService::WithRawCallbackMethod_GetServerInfo<
                    pb::VerdictService::WithRawCallbackMethod_ListClicks<
                        pb::VerdictService::Service>>>>>>;
}  // namespace internal

// The gRPC face of the engine: authenticates the caller, decodes requests, and finishes each call
// from the engine's completion. Handlers never block on ClickPatrol.
class VerdictServiceImpl final : public internal::RawVerdictService {
 public:
  // Every reference must outlive the service; `metrics` may be null.
  VerdictServiceImpl(ServiceOptions options, Engine& engine, const Authenticator& auth,
                     const PageTokenCodec& page_tokens, ServerMetrics* metrics);

  grpc::ServerUnaryReactor* CheckIp(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CheckBatch(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListVerdictHistory(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListClicks(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

 private:
  absl::StatusOr<Identity> Identify(const grpc::CallbackServerContext& context) const;
  // Authenticates the caller, then decodes `wire` into `request`.
  absl::StatusOr<Identity> Accept(const grpc::CallbackServerContext& context,
                                  const grpc::ByteBuffer& wire,
                                  google::protobuf::Message* request) const;
  // A listing request's (ListVerdictHistory, ListClicks) [since, until) into *since and *until
  // (left as they are where unset), and its page size: the default for 0, at most the maximum.
  template <typename ListingRequest>
  absl::StatusOr<int> ListingBounds(const ListingRequest& request, absl::Time* since,
                                    absl::Time* until) const;
  // A decoded ListVerdictHistory request: the store query, and what its answer needs.
  struct HistoryPage {
    HistoryQuery query;
    int page_size = 0;
    PageCursor bound;  // the request's ip, since and until; the cursor fields are filled in
  };
  absl::StatusOr<HistoryPage> HistoryPageFor(
      const verdict::v1::ListVerdictHistoryRequest& request) const;
  // Fills `response` from the store's answer to page.query.
  absl::Status FillHistory(HistoryPage page, absl::StatusOr<std::vector<HistoryEntry>> entries,
                           verdict::v1::ListVerdictHistoryResponse* response) const;
  // A decoded ListClicks request, as HistoryPage is for ListVerdictHistory.
  struct ClicksPage {
    ClickQuery query;
    std::string team;  // the team filter ("" for none)
    int page_size = 0;
    PageCursor bound;  // the request's filters; the cursor fields are filled in
  };
  absl::StatusOr<ClicksPage> ClicksPageFor(const verdict::v1::ListClicksRequest& request) const;
  absl::Status FillClicks(ClicksPage page, absl::StatusOr<std::vector<ClickRecord>> clicks,
                          verdict::v1::ListClicksResponse* response) const;

  const ServiceOptions options_;
  Engine& engine_;
  const Authenticator& auth_;
  const PageTokenCodec& page_tokens_;
  ServerMetrics* const metrics_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_SERVICE_SERVICE_H_
