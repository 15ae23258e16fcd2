#ifndef VERDICTD_SERVER_SERVICE_H_
#define VERDICTD_SERVER_SERVICE_H_

#include <string>

#include "engine/engine.h"
#include "verdict/v1/verdict.grpc.pb.h"

namespace verdictd {

struct ServiceOptions {
  // Most items in one CheckBatch. Default: 1000.
  int max_batch = 1000;
};

// The gRPC face of the engine: decodes requests, identifies the caller, finishes each call from
// the engine's completion. Handlers never block.
class VerdictServiceImpl final : public verdict::v1::VerdictService::CallbackService {
 public:
  // `engine` must outlive the service.
  VerdictServiceImpl(ServiceOptions options, Engine& engine);

  grpc::ServerUnaryReactor* CheckIp(grpc::CallbackServerContext* context,
                                    const verdict::v1::CheckIpRequest* request,
                                    verdict::v1::CheckIpResponse* response) override;
  grpc::ServerUnaryReactor* CheckBatch(grpc::CallbackServerContext* context,
                                       const verdict::v1::CheckBatchRequest* request,
                                       verdict::v1::CheckBatchResponse* response) override;
  grpc::ServerUnaryReactor* ListVerdictHistory(
      grpc::CallbackServerContext* context, const verdict::v1::ListVerdictHistoryRequest* request,
      verdict::v1::ListVerdictHistoryResponse* response) override;
  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const verdict::v1::GetUsageRequest* request,
                                     verdict::v1::GetUsageResponse* response) override;

 private:
  const ServiceOptions options_;
  Engine& engine_;
};

}  // namespace verdictd

#endif  // VERDICTD_SERVER_SERVICE_H_
