#ifndef VERDICTD_SERVER_SERVICE_STATUS_H_
#define VERDICTD_SERVER_SERVICE_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace verdictd {

// The one place where an absl::Status becomes a grpc::Status. The codes share their numbering
// (google.rpc.Code); the message is passed through, so messages must never hold secrets.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace verdictd

#endif  // VERDICTD_SERVER_SERVICE_STATUS_H_
