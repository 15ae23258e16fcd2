// End-to-end TLS: verdictd with a certificate serves TLS clients and refuses plaintext ones, and
// with mutual TLS it requires a client certificate signed by its CA.

#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/e2e/ops_fixture.h"

namespace verdictd::testing::ops {
namespace {

using ::testing::HasSubstr;

TEST_F(OpsTest, TlsServesTlsClientsAndRefusesPlaintext) {
  TestPki pki(dir_);
  ASSERT_TRUE(pki.Generate());
  StartVerdictd({"--tls_cert=" + pki.server_cert(), "--tls_key=" + pki.server_key()});
  EXPECT_THAT(verdictd_->Log(), HasSubstr("(port " + std::to_string(verdictd_->port()) + ", TLS)"));

  pb::CheckIpResponse r;
  grpc::Status status =
      CheckIpOver(verdictd_->port(), pki.Credentials(false), absl::Seconds(10), &r);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(r.verdict().ip(), "1.1.1.1");

  const absl::Time start = absl::Now();
  status = CheckIpOver(verdictd_->port(), grpc::InsecureChannelCredentials(), absl::Seconds(5), &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(sim_->Requests(), 1);
}

TEST_F(OpsTest, MutualTlsRequiresAClientCertificate) {
  TestPki pki(dir_);
  ASSERT_TRUE(pki.Generate());
  StartVerdictd({"--tls_cert=" + pki.server_cert(), "--tls_key=" + pki.server_key(),
                 "--tls_client_ca=" + pki.ca()});
  EXPECT_THAT(verdictd_->Log(), HasSubstr("mutual TLS"));

  pb::CheckIpResponse r;
  grpc::Status status =
      CheckIpOver(verdictd_->port(), pki.Credentials(false), absl::Seconds(5), &r);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(sim_->Requests(), 0);

  status = CheckIpOver(verdictd_->port(), pki.Credentials(true), absl::Seconds(10), &r);
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(r.verdict().ip(), "1.1.1.1");
  EXPECT_EQ(sim_->Requests(), 1);
}

}  // namespace
}  // namespace verdictd::testing::ops
