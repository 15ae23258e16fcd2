#ifndef VERDICTD_CLIENT_CPP_VERDICT_CLIENT_H_
#define VERDICTD_CLIENT_CPP_VERDICT_CLIENT_H_

// What every C++ caller of verdictd needs beside the generated stub: a channel (plaintext, TLS
// or mutual TLS) and a context per call carrying the caller's identity and a deadline. verdictctl
// and the benchmarks use it; a service links `verdict_client` and `verdict_proto`:
//
//   verdictd::client::ChannelOptions channel_options;
//   channel_options.target = "verdictd.internal:50051";
//   channel_options.tls_ca_file = "/etc/verdictd/ca.pem";
//   auto channel = verdictd::client::NewChannel(channel_options);  // StatusOr
//   auto stub = verdict::v1::VerdictService::NewStub(*channel);
//   verdictd::client::CallOptions call;
//   call.api_key = ReadSecret();  // from a file or the environment, never a flag
//   auto context = verdictd::client::NewContext(call);
//   verdict::v1::CheckIpRequest request;
//   request.set_ip("203.0.113.7");
//   verdict::v1::CheckIpResponse response;
//   grpc::Status status = stub->CheckIp(context.get(), request, &response);
//
// Do not retry a CheckIp or CheckBatch that failed with DEADLINE_EXCEEDED, UNAVAILABLE or
// CANCELLED blindly: the miss may have reached ClickPatrol and spent a click; its verdict is
// stored and the next call is answered from the store.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace verdictd {
namespace client {

struct ChannelOptions {
  std::string target;  // "host:port"
  // PEM file of the CAs that sign verdictd's certificate; empty means plaintext.
  std::string tls_ca_file;
  // Mutual TLS: this client's certificate chain and private key (PEM files), both or neither;
  // they need tls_ca_file.
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name checked against verdictd's certificate, when it is not the target's host.
  std::string tls_server_name;
  // A connection of its own, not shared with other channels to the same target (gRPC shares
  // subchannels process-wide by default): for load generators and tests whose callers must be
  // concurrent on the wire.
  bool own_connection = false;
};

// A channel to options.target. INVALID_ARGUMENT for an empty target, a certificate without its
// key (or the other way round), or either without tls_ca_file; NOT_FOUND when a file cannot be
// read. Connecting is lazy: an unreachable server shows as UNAVAILABLE on the first call.
absl::StatusOr<std::shared_ptr<grpc::Channel>> NewChannel(const ChannelOptions& options);

struct CallOptions {
  // Sent as `authorization: Bearer <api_key>` when set (servers with an API keys file). Secret.
  std::string api_key;
  // Sent as `x-caller` when set (servers in open mode account the call to it).
  std::string caller;
  // The call's deadline, from `now`; zero or less means none.
  absl::Duration timeout = absl::Seconds(10);
};

// A context for one RPC with the metadata and deadline of `options`.
std::unique_ptr<grpc::ClientContext> NewContext(const CallOptions& options,
                                                absl::Time now = absl::Now());

}  // namespace client
}  // namespace verdictd

#endif  // VERDICTD_CLIENT_CPP_VERDICT_CLIENT_H_
