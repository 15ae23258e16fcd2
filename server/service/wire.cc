#include "server/service/wire.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>
#include <grpcpp/support/slice.h>

#include <climits>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/stubs/common.h"
#include "google/protobuf/unknown_field_set.h"

namespace verdictd {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

// protobuf's own default recursion limit.
constexpr int kMaxDepth = 100;

// Walks `bytes` as a message of type `type` without protobuf's proto3 checks and returns the
// first problem found, with `path` naming where it is; empty when none is found.
std::string FindProblem(const Descriptor& type, absl::string_view bytes, const std::string& path,
                        int depth) {
  UnknownFieldSet fields;
  if (depth > kMaxDepth || bytes.size() > static_cast<size_t>(INT_MAX) ||
      !fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    if (path.empty()) {
      return absl::StrCat("the request is not a well-formed ", type.full_name(),
                          " (malformed protobuf wire data)");
    }
    return absl::StrCat("field ", path, " is not a well-formed ", type.full_name(),
                        " (malformed protobuf wire data)");
  }
  std::map<int, int> occurrences;  // field number -> how many seen so far, for repeated fields
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& raw = fields.field(i);
    const FieldDescriptor* field = type.FindFieldByNumber(raw.number());
    // Unknown fields and known fields with another wire type are skipped by the real parser.
    if (field == nullptr || raw.type() != UnknownField::TYPE_LENGTH_DELIMITED) {
      continue;
    }
    std::string name = path.empty() ? field->name() : absl::StrCat(path, ".", field->name());
    if (field->is_repeated()) {
      absl::StrAppend(&name, "[", occurrences[raw.number()]++, "]");
    }
    const std::string& value = raw.length_delimited();
    if (field->type() == FieldDescriptor::TYPE_STRING &&
        !google::protobuf::internal::IsStructurallyValidUTF8(value.data(),
                                                             static_cast<int>(value.size()))) {
      return absl::StrCat("field ", name, " is not valid UTF-8 (proto3 string fields must be)");
    }
    if (field->type() == FieldDescriptor::TYPE_MESSAGE) {
      std::string problem = FindProblem(*field->message_type(), value, name, depth + 1);
      if (!problem.empty()) {
        return problem;
      }
    }
  }
  return "";
}

std::string Flatten(const grpc::ByteBuffer& wire) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!wire.Dump(&slices).ok()) {
    return bytes;
  }
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

}  // namespace

std::string DescribeParseFailure(const Descriptor& descriptor, absl::string_view bytes) {
  return FindProblem(descriptor, bytes, "", 0);
}

absl::Status DecodeRequest(const grpc::ByteBuffer& wire, google::protobuf::Message* out) {
  if (!wire.Valid()) {  // no message buffer at all (an empty message arrives as a valid, empty one)
    out->Clear();
    return absl::OkStatus();
  }
  grpc::ByteBuffer buffer(wire);  // shares the slices; the reader needs a mutable buffer
  {
    grpc::ProtoBufferReader reader(&buffer);
    if (reader.status().ok() && out->ParseFromZeroCopyStream(&reader)) {
      return absl::OkStatus();
    }
  }
  out->Clear();
  std::string problem = DescribeParseFailure(*out->GetDescriptor(), Flatten(wire));
  if (problem.empty()) {
    problem =
        absl::StrCat("the request could not be parsed as ", out->GetDescriptor()->full_name());
  }
  return absl::InvalidArgumentError(problem);
}

absl::Status EncodeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* wire) {
  bool own_buffer = false;
  grpc::Status status =
      grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, wire, &own_buffer);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat(
        "cannot serialise ", message.GetDescriptor()->full_name(), ": ", status.error_message()));
  }
  return absl::OkStatus();
}

}  // namespace verdictd
