#ifndef VERDICTD_SERVER_SERVICE_WIRE_H_
#define VERDICTD_SERVER_SERVICE_WIRE_H_

#include <grpcpp/support/byte_buffer.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace verdictd {

// Requests are decoded by the service, not by gRPC: gRPC 1.51's callback API answers a request it
// cannot parse with UNIMPLEMENTED and an empty message, which tells a caller that sent, say, a
// user agent that is not UTF-8 nothing true. DecodeRequest says what is wrong instead.

// Parses `wire` into `out`. On failure returns INVALID_ARGUMENT naming the problem: "field
// items[3].user_agent is not valid UTF-8 (proto3 string fields must be)", or that the bytes are
// not a well-formed message of out's type.
absl::Status DecodeRequest(const grpc::ByteBuffer& wire, google::protobuf::Message* out);

// Why `bytes` do not parse as a message of `descriptor`'s type, as a sentence; empty when no
// reason is found. Exposed for tests.
std::string DescribeParseFailure(const google::protobuf::Descriptor& descriptor,
                                 absl::string_view bytes);

// Serialises `message` into `wire`; INTERNAL if it cannot be.
absl::Status EncodeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* wire);

}  // namespace verdictd

#endif  // VERDICTD_SERVER_SERVICE_WIRE_H_
