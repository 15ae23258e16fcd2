#ifndef VERDICTD_TESTS_E2E_HOSTILE_FIXTURE_H_
#define VERDICTD_TESTS_E2E_HOSTILE_FIXTURE_H_

// What the hostile-input, security and hostile-connection tests (hostile_*_test.cc) share: their
// distinctive secrets (a leak is easy to grep for), client contexts with arbitrary metadata, and
// reading the metrics port from verdictd's log.

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "grpcpp/grpcpp.h"
#include "tests/support/harness.h"

namespace verdictd::testing::hostile {

namespace pb = ::verdict::v1;

// Distinctive secrets, so a leak is easy to grep for.
inline constexpr char kToken[] = "cp_HostileSecretToken_41b7e0c9d3";
inline constexpr char kAliceKey[] = "vk_alice_Secret_7f3a91c2e8d4b6";
inline constexpr char kBobKey[] = "vk_bob_Secret_05e2c7a9f1d3b8";
inline constexpr char kAuditorKey[] = "vk_audit_Secret_c4d8e2a6b0f9";

using Metadata = std::vector<std::pair<std::string, std::string>>;

inline std::unique_ptr<grpc::ClientContext> Context(const Metadata& metadata) {
  auto context = std::make_unique<grpc::ClientContext>();
  for (const auto& [key, value] : metadata) {
    context->AddMetadata(key, value);
  }
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return context;
}

// The metrics port from the log line "metrics at http://ADDR/metrics (port N)".
inline int MetricsPort(const std::string& log) {
  const std::string marker = "/metrics (port ";
  const size_t at = log.find(marker);
  if (at == std::string::npos) {
    return -1;
  }
  int port = -1;
  const std::string digits = log.substr(at + marker.size(), log.find(')', at) - at - marker.size());
  return absl::SimpleAtoi(digits, &port) ? port : -1;
}

}  // namespace verdictd::testing::hostile

#endif  // VERDICTD_TESTS_E2E_HOSTILE_FIXTURE_H_
