#include "server/service/wire.h"

#include <grpcpp/support/slice.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "gtest/gtest.h"
#include "verdict/v1/verdict.pb.h"

namespace verdictd {
namespace {

namespace pb = ::verdict::v1;
using ::testing::HasSubstr;

grpc::ByteBuffer BufferOf(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// The same bytes split over several slices, as gRPC delivers large messages.
grpc::ByteBuffer SplitBufferOf(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size(); i += piece) {
    slices.emplace_back(bytes.substr(i, piece));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// Serialises a message whose string fields may hold any bytes (protobuf only logs when it
// serialises invalid UTF-8, as a C++ client would).
std::string Wire(const google::protobuf::Message& message) {
  std::string bytes;
  EXPECT_TRUE(message.SerializeToString(&bytes));
  return bytes;
}

TEST(DecodeRequestTest, DecodesAValidRequest) {
  pb::CheckIpRequest sent;
  sent.set_ip("8.8.8.8");
  sent.set_user_agent("Mozilla/5.0 \xc3\xa9");
  sent.mutable_max_age()->set_seconds(60);
  pb::CheckIpRequest got;
  ASSERT_TRUE(DecodeRequest(BufferOf(Wire(sent)), &got).ok());
  EXPECT_EQ(got.ip(), "8.8.8.8");
  EXPECT_EQ(got.user_agent(), "Mozilla/5.0 \xc3\xa9");
  EXPECT_EQ(got.max_age().seconds(), 60);
}

TEST(DecodeRequestTest, DecodesAcrossSlices) {
  pb::CheckBatchRequest sent;
  for (int i = 0; i < 50; ++i) {
    sent.add_items()->set_ip("11.0.0." + std::to_string(i));
  }
  pb::CheckBatchRequest got;
  ASSERT_TRUE(DecodeRequest(SplitBufferOf(Wire(sent), 7), &got).ok());
  ASSERT_EQ(got.items_size(), 50);
  EXPECT_EQ(got.items(49).ip(), "11.0.0.49");
}

TEST(DecodeRequestTest, EmptyBufferIsTheDefaultMessage) {
  pb::GetUsageRequest got;
  got.set_caller("stale");
  ASSERT_TRUE(DecodeRequest(grpc::ByteBuffer(), &got).ok());
  EXPECT_EQ(got.caller(), "");
  got.set_caller("stale");
  ASSERT_TRUE(DecodeRequest(BufferOf(""), &got).ok());
  EXPECT_EQ(got.caller(), "");
}

TEST(DecodeRequestTest, NamesTheFieldThatIsNotUtf8) {
  pb::CheckIpRequest sent;
  sent.set_ip("8.8.8.8");
  sent.set_user_agent("Mozilla/5.0 \xff\xfe\xc0");
  pb::CheckIpRequest got;
  absl::Status status = DecodeRequest(BufferOf(Wire(sent)), &got);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "field user_agent is not valid UTF-8 (proto3 string fields must be)");
}

TEST(DecodeRequestTest, NamesTheBatchItemThatIsNotUtf8) {
  pb::CheckBatchRequest sent;
  sent.add_items()->set_ip("8.8.8.8");
  sent.add_items()->set_ip("8.8.4.4");
  sent.add_items()->set_ip("8.8.8.\xff");
  pb::CheckBatchRequest got;
  absl::Status status = DecodeRequest(BufferOf(Wire(sent)), &got);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "field items[2].ip is not valid UTF-8 (proto3 string fields must be)");
}

TEST(DecodeRequestTest, OverlongEncodingsAndSurrogatesAreNotUtf8) {
  for (const std::string bad : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"}) {
    pb::GetUsageRequest sent;
    sent.set_caller(bad);
    pb::GetUsageRequest got;
    absl::Status status = DecodeRequest(BufferOf(Wire(sent)), &got);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("field caller is not valid UTF-8"));
  }
}

TEST(DecodeRequestTest, MalformedWireData) {
  // Field 1, length-delimited, claims 100 bytes and has 3.
  pb::CheckIpRequest got;
  absl::Status status = DecodeRequest(BufferOf(std::string("\x0a\x64"
                                                           "abc",
                                                           5)),
                                      &got);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "the request is not a well-formed verdict.v1.CheckIpRequest (malformed protobuf wire "
            "data)");
  EXPECT_EQ(got.ip(), "");
}

TEST(DecodeRequestTest, MalformedNestedMessage) {
  // max_age (field 3) holds a varint cut short.
  pb::CheckIpRequest got;
  absl::Status status = DecodeRequest(BufferOf(std::string("\x1a\x02\x08\xff", 4)), &got);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "field max_age is not a well-formed google.protobuf.Duration (malformed protobuf wire "
            "data)");
}

TEST(DecodeRequestTest, UnknownFieldsAreIgnored) {
  // Field 99 (varint 1) followed by ip.
  pb::CheckIpRequest sent;
  sent.set_ip("8.8.8.8");
  const std::string bytes = std::string("\x98\x06\x01", 3) + Wire(sent);
  pb::CheckIpRequest got;
  ASSERT_TRUE(DecodeRequest(BufferOf(bytes), &got).ok());
  EXPECT_EQ(got.ip(), "8.8.8.8");
}

TEST(DescribeParseFailureTest, ValidBytesHaveNoProblem) {
  pb::CheckIpRequest sent;
  sent.set_ip("8.8.8.8");
  EXPECT_EQ(DescribeParseFailure(*pb::CheckIpRequest::descriptor(), Wire(sent)), "");
}

TEST(DescribeParseFailureTest, DeepNestingIsBounded) {
  // DescriptorProto.nested_type (field 3) nested 10,000 deep: protobuf's parser stops at depth
  // 100, and so does the walk: no stack overflow, a clear answer.
  std::string bytes;
  for (int i = 0; i < 10'000; ++i) {
    std::string outer = "\x1a";
    size_t n = bytes.size();
    while (n >= 0x80) {
      outer.push_back(static_cast<char>((n & 0x7f) | 0x80));
      n >>= 7;
    }
    outer.push_back(static_cast<char>(n));
    bytes = outer + bytes;
  }
  google::protobuf::DescriptorProto parsed;
  EXPECT_FALSE(parsed.ParseFromString(bytes));
  EXPECT_THAT(DescribeParseFailure(*google::protobuf::DescriptorProto::descriptor(), bytes),
              HasSubstr("is not a well-formed google.protobuf.DescriptorProto"));
}

TEST(EncodeResponseTest, RoundTrips) {
  pb::GetServerInfoResponse sent;
  sent.set_version("1.2.3");
  sent.set_max_batch(1000);
  grpc::ByteBuffer wire;
  ASSERT_TRUE(EncodeResponse(sent, &wire).ok());
  pb::GetServerInfoResponse got;
  ASSERT_TRUE(DecodeRequest(wire, &got).ok());
  EXPECT_EQ(got.version(), "1.2.3");
  EXPECT_EQ(got.max_batch(), 1000);
}

}  // namespace
}  // namespace verdictd
