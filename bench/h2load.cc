#include "bench/h2load.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <regex>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace verdictd::bench {
namespace {

double ChildrenCpuSeconds() {
  struct rusage usage = {};
  getrusage(RUSAGE_CHILDREN, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// "1.23ms", "456us", "2.5s" -> milliseconds; -1 if not a duration.
double ToMs(const std::string& text) {
  double value = 0;
  absl::string_view t = text;
  double scale = 0;
  if (absl::ConsumeSuffix(&t, "us")) {
    scale = 1e-3;
  } else if (absl::ConsumeSuffix(&t, "ms")) {
    scale = 1;
  } else if (absl::ConsumeSuffix(&t, "s")) {
    scale = 1e3;
  }
  if (scale == 0 || !absl::SimpleAtod(t, &value)) {
    return -1;
  }
  return value * scale;
}

std::string H2loadDuration(absl::Duration d) {
  // h2load takes a number with a unit (s, ms); whole milliseconds are enough here.
  return absl::StrCat(absl::ToInt64Milliseconds(d), "ms");
}

}  // namespace

std::string GrpcFrame(const google::protobuf::MessageLite& message) {
  const std::string bytes = message.SerializeAsString();
  const uint32_t n = static_cast<uint32_t>(bytes.size());
  std::string frame;
  frame.push_back('\0');
  frame.push_back(static_cast<char>((n >> 24) & 0xff));
  frame.push_back(static_cast<char>((n >> 16) & 0xff));
  frame.push_back(static_cast<char>((n >> 8) & 0xff));
  frame.push_back(static_cast<char>(n & 0xff));
  return frame + bytes;
}

absl::Status CheckH2loadInstalled(const std::string& path) {
  if (access(path.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path,
                     " is missing: benchmark 1 drives the servers with h2load. Install it with "
                     "`sudo apt-get install nghttp2-client` (Debian), or pass --h2load_bin=PATH"));
  }
  return absl::OkStatus();
}

absl::StatusOr<H2loadResult> RunH2load(const H2loadOptions& o) {
  std::vector<std::string> argv = {o.binary,
                                   absl::StrCat("-c", o.connections),
                                   absl::StrCat("-m", o.streams),
                                   absl::StrCat("-t", o.threads),
                                   "-D",
                                   H2loadDuration(o.duration),
                                   "-d",
                                   o.data_file,
                                   "-H",
                                   "content-type: application/grpc",
                                   "-H",
                                   "te: trailers"};
  if (o.warmup > absl::ZeroDuration()) {
    argv.push_back(absl::StrCat("--warm-up-time=", H2loadDuration(o.warmup)));
  }
  for (const std::string& header : o.headers) {
    argv.push_back("-H");
    argv.push_back(header);
  }
  if (!o.log_file.empty()) {
    std::remove(o.log_file.c_str());
    argv.push_back("--log-file=" + o.log_file);
  }
  argv.push_back(o.url);

  const double cpu0 = ChildrenCpuSeconds();
  const int64_t t0 = NowNs();
  absl::StatusOr<testing::CommandResult> run =
      testing::RunCommand(argv, "", {}, o.warmup + o.duration + absl::Seconds(60));
  const int64_t t1 = NowNs();
  const double cpu1 = ChildrenCpuSeconds();
  if (!run.ok()) {
    return run.status();
  }
  H2loadResult r;
  r.output = run->out;
  r.cpu_seconds = cpu1 - cpu0;
  r.wall_seconds = static_cast<double>(t1 - t0) / 1e9;
  if (run->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("h2load exited with ", run->exit_code, ":\n", run->out, run->err));
  }

  static const std::regex finished(R"(finished in [0-9.]+m?s, ([0-9.]+) req/s)");
  static const std::regex requests(
      R"(requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, )"
      R"((\d+) errored, (\d+) timeout)");
  static const std::regex codes(R"(status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx)");
  static const std::regex request_time(R"(time for request:\s+(\S+)\s+(\S+)\s+(\S+))");
  std::smatch m;
  bool have_finished = false;
  bool have_requests = false;
  const std::vector<std::string> lines = absl::StrSplit(r.output, '\n');
  for (const std::string& line : lines) {
    if (std::regex_search(line, m, finished)) {
      have_finished = absl::SimpleAtod(m[1].str(), &r.requests_per_second);
    } else if (std::regex_search(line, m, requests)) {
      int64_t* fields[] = {&r.total,  &r.started, &r.done,   &r.succeeded,
                           &r.failed, &r.errored, &r.timeout};
      have_requests = true;
      for (int i = 0; i < 7; ++i) {
        have_requests = have_requests && absl::SimpleAtoi(m[i + 1].str(), fields[i]);
      }
    } else if (std::regex_search(line, m, codes)) {
      int64_t* fields[] = {&r.status_2xx, &r.status_3xx, &r.status_4xx, &r.status_5xx};
      for (int i = 0; i < 4; ++i) {
        (void)absl::SimpleAtoi(m[i + 1].str(), fields[i]);
      }
    } else if (std::regex_search(line, m, request_time)) {
      r.max_request_ms = ToMs(m[2].str());
      r.mean_request_ms = ToMs(m[3].str());
    }
  }
  if (!have_finished || !have_requests) {
    return absl::InternalError(absl::StrCat("cannot parse h2load's output:\n", r.output, run->err));
  }

  if (!o.log_file.empty()) {
    std::ifstream in(o.log_file);
    std::string line;
    while (std::getline(in, line)) {
      std::vector<absl::string_view> cols = absl::StrSplit(line, '\t');
      int status = 0;
      int64_t us = 0;
      if (cols.size() < 3 || !absl::SimpleAtoi(cols[1], &status) ||
          !absl::SimpleAtoi(cols[2], &us)) {
        continue;
      }
      ++r.log_rows;
      if (status != 200) {
        ++r.log_non_200;
        continue;
      }
      r.latency.Record(static_cast<uint64_t>(us) * 1000);
    }
  }
  return r;
}

std::vector<std::pair<std::string, double>> ParsePrometheusText(const std::string& text) {
  std::vector<std::pair<std::string, double>> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') {
      continue;
    }
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &value)) {
      continue;
    }
    samples.emplace_back(std::string(line.substr(0, space)), value);
  }
  return samples;
}

}  // namespace verdictd::bench
