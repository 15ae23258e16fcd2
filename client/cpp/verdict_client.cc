#include "client/cpp/verdict_client.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"

namespace verdictd {
namespace client {

absl::StatusOr<std::shared_ptr<grpc::Channel>> NewChannel(const ChannelOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("no verdictd address (host:port) to connect to");
  }
  const bool has_cert = !options.tls_cert_file.empty();
  if (has_cert != !options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("a client certificate and its key go together");
  }
  grpc::ChannelArguments args;
  if (options.own_connection) {
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  }
  if (options.tls_ca_file.empty()) {
    if (has_cert) {
      return absl::InvalidArgumentError("a client certificate needs TLS (a CA file)");
    }
    return grpc::CreateCustomChannel(options.target, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> roots = ReadFileToString(options.tls_ca_file);
  if (!roots.ok()) {
    return roots.status();
  }
  ssl.pem_root_certs = *std::move(roots);
  if (has_cert) {
    absl::StatusOr<std::string> chain = ReadFileToString(options.tls_cert_file);
    if (!chain.ok()) {
      return chain.status();
    }
    absl::StatusOr<std::string> key = ReadFileToString(options.tls_key_file);
    if (!key.ok()) {
      return key.status();
    }
    ssl.pem_cert_chain = *std::move(chain);
    ssl.pem_private_key = *std::move(key);
  }
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return grpc::CreateCustomChannel(options.target, grpc::SslCredentials(ssl), args);
}

std::unique_ptr<grpc::ClientContext> NewContext(const CallOptions& options, absl::Time now) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!options.api_key.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options.api_key));
  }
  if (!options.caller.empty()) {
    context->AddMetadata("x-caller", options.caller);
  }
  if (options.timeout > absl::ZeroDuration()) {
    context->set_deadline(absl::ToChronoTime(now + options.timeout));
  }
  return context;
}

}  // namespace client
}  // namespace verdictd
