#include "server/log_setup.h"

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "google/protobuf/stubs/logging.h"
#include "grpc/support/log.h"
#include "nlohmann/json.hpp"
#include "spdlog/sinks/base_sink.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace verdictd {
namespace {

// One JSON object per line: {"ts":..., "level":..., "msg":...}. The message is escaped by
// nlohmann::json, so any byte sequence yields valid JSON (invalid UTF-8 is replaced).
class JsonStderrSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    nlohmann::json line;
    line["ts"] =
        absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::FromChrono(msg.time), absl::UTCTimeZone());
    line["level"] = std::string(spdlog::level::to_string_view(msg.level).data(),
                                spdlog::level::to_string_view(msg.level).size());
    line["msg"] = std::string(msg.payload.data(), msg.payload.size());
    const std::string text =
        line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
  }
  void flush_() override { std::fflush(stderr); }
};

// gRPC core logs (e.g. a failed TLS handshake) through gpr_log, which by default writes its own
// "E1127 21:22:54.179 ..." lines straight to stderr; routed through spdlog they get the same
// format as every other line (one JSON object per line with --log_format=json).
void GrpcLogToSpdlog(gpr_log_func_args* args) {
  spdlog::level::level_enum level = spdlog::level::info;
  if (args->severity == GPR_LOG_SEVERITY_ERROR) {
    level = spdlog::level::err;
  } else if (args->severity == GPR_LOG_SEVERITY_DEBUG) {
    level = spdlog::level::debug;
  }
  spdlog::log(level, "grpc {}:{}: {}", args->file != nullptr ? args->file : "?", args->line,
              args->message != nullptr ? args->message : "");
}

// protobuf logs through its own handler too. Its most common line here, "String field ... contains
// invalid UTF-8 data when parsing", is about a caller's request, which is answered with a precise
// INVALID_ARGUMENT (server/wire.h): at debug level, so callers cannot flood the log with it.
void ProtobufLogToSpdlog(google::protobuf::LogLevel severity, const char* file, int line,
                         const std::string& message) {
  spdlog::level::level_enum level = spdlog::level::info;
  switch (severity) {
    case google::protobuf::LOGLEVEL_INFO:
      level = spdlog::level::info;
      break;
    case google::protobuf::LOGLEVEL_WARNING:
      level = spdlog::level::warn;
      break;
    case google::protobuf::LOGLEVEL_ERROR:
      level = spdlog::level::err;
      break;
    case google::protobuf::LOGLEVEL_FATAL:
      level = spdlog::level::critical;
      break;
  }
  if (message.find("invalid UTF-8 data when parsing") != std::string::npos) {
    level = spdlog::level::debug;
  }
  spdlog::log(level, "protobuf {}:{}: {}", file != nullptr ? file : "?", line, message);
}

}  // namespace

absl::Status SetUpLogging(absl::string_view format, absl::string_view level) {
  spdlog::level::level_enum parsed;
  if (level == "trace") {
    parsed = spdlog::level::trace;
  } else if (level == "debug") {
    parsed = spdlog::level::debug;
  } else if (level == "info") {
    parsed = spdlog::level::info;
  } else if (level == "warn") {
    parsed = spdlog::level::warn;
  } else if (level == "error") {
    parsed = spdlog::level::err;
  } else {
    return absl::InvalidArgumentError("--log_level must be trace, debug, info, warn or error");
  }
  std::shared_ptr<spdlog::logger> logger;
  if (format == "json") {
    logger = std::make_shared<spdlog::logger>("verdictd", std::make_shared<JsonStderrSink>());
  } else if (format == "text") {
    logger = spdlog::stderr_logger_mt("verdictd");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ %v", spdlog::pattern_time_type::utc);
  } else {
    return absl::InvalidArgumentError("--log_format must be text or json");
  }
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  gpr_set_log_function(GrpcLogToSpdlog);
  google::protobuf::SetLogHandler(ProtobufLogToSpdlog);
  return absl::OkStatus();
}

}  // namespace verdictd
