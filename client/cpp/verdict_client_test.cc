#include "client/cpp/verdict_client.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace client {
namespace {

using ::testing::HasSubstr;

ChannelOptions To(std::string target) {
  ChannelOptions options;
  options.target = std::move(target);
  return options;
}

TEST(NewChannelTest, PlaintextNeedsOnlyATarget) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = NewChannel(To("127.0.0.1:1"));
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_NE(*channel, nullptr);
}

TEST(NewChannelTest, RefusesIncompleteOptions) {
  EXPECT_EQ(NewChannel(To("")).status().code(), absl::StatusCode::kInvalidArgument);

  ChannelOptions cert_without_key = To("127.0.0.1:1");
  cert_without_key.tls_ca_file = "/dev/null";
  cert_without_key.tls_cert_file = "/dev/null";
  EXPECT_EQ(NewChannel(cert_without_key).status().code(), absl::StatusCode::kInvalidArgument);

  ChannelOptions key_without_cert = To("127.0.0.1:1");
  key_without_cert.tls_ca_file = "/dev/null";
  key_without_cert.tls_key_file = "/dev/null";
  EXPECT_EQ(NewChannel(key_without_cert).status().code(), absl::StatusCode::kInvalidArgument);

  ChannelOptions mtls_without_ca = To("127.0.0.1:1");
  mtls_without_ca.tls_cert_file = "/dev/null";
  mtls_without_ca.tls_key_file = "/dev/null";
  absl::Status status = NewChannel(mtls_without_ca).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("needs TLS"));
}

TEST(NewChannelTest, UnreadableCaFileIsNotFoundAndNamesIt) {
  ChannelOptions options = To("127.0.0.1:1");
  options.tls_ca_file = "/nonexistent/ca.pem";
  absl::Status status = NewChannel(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/ca.pem"));
}

TEST(NewContextTest, DeadlineIsTimeoutFromNow) {
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  CallOptions options;
  options.timeout = absl::Seconds(3);
  std::unique_ptr<grpc::ClientContext> context = NewContext(options, now);
  EXPECT_EQ(absl::FromChrono(context->deadline()), now + absl::Seconds(3));
}

TEST(NewContextTest, ZeroTimeoutMeansNoDeadline) {
  CallOptions options;
  options.timeout = absl::ZeroDuration();
  std::unique_ptr<grpc::ClientContext> context = NewContext(options);
  EXPECT_EQ(context->deadline(), std::chrono::system_clock::time_point::max());
}

}  // namespace
}  // namespace client
}  // namespace verdictd
