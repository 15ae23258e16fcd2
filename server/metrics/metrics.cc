#include "server/metrics/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>
#include <system_error>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace verdictd {
namespace metrics {
namespace {

// C++17 has no fetch_add for atomic<double>.
void AtomicAdd(std::atomic<double>& target, double delta) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + delta, std::memory_order_relaxed)) {
  }
}

[[noreturn]] void Die(const std::string& message) {
  ABSL_RAW_LOG(FATAL, "metrics: %s", message.c_str());
  std::abort();  // Not reached; tells the compiler so.
}

// A trailing +Inf is dropped; anything else out of order crashes.
std::vector<double> CheckBounds(std::vector<double> bounds, absl::string_view what) {
  if (!bounds.empty() && bounds.back() == std::numeric_limits<double>::infinity()) {
    bounds.pop_back();
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (std::isnan(bounds[i]) || (i > 0 && !(bounds[i - 1] < bounds[i]))) {
      Die(absl::StrCat(what, ": histogram bounds must be strictly increasing and not NaN, got [",
                       absl::StrJoin(bounds, ", "), "]"));
    }
  }
  return bounds;
}

bool IsNameChar(char c, bool allow_colon, bool allow_digit) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         (allow_colon && c == ':') || (allow_digit && c >= '0' && c <= '9');
}

// Appends {a="x",b="y"} (plus extra_name="extra_value" when extra_name is non-empty), or
// nothing when there are no labels at all.
void AppendLabels(const std::vector<std::string>& names, const std::vector<std::string>& values,
                  absl::string_view extra_name, absl::string_view extra_value, std::string* out) {
  if (names.empty() && extra_name.empty()) {
    return;
  }
  out->push_back('{');
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(out, i == 0 ? "" : ",", names[i], "=\"", internal::EscapeLabelValue(values[i]),
                    "\"");
  }
  if (!extra_name.empty()) {
    absl::StrAppend(out, names.empty() ? "" : ",", extra_name, "=\"",
                    internal::EscapeLabelValue(extra_value), "\"");
  }
  out->push_back('}');
}

void AppendSample(absl::string_view name, const std::vector<std::string>& names,
                  const std::vector<std::string>& values, double value, std::string* out) {
  out->append(name.data(), name.size());
  AppendLabels(names, values, "", "", out);
  absl::StrAppend(out, " ", internal::FormatValue(value), "\n");
}

class CallbackGauge : public internal::FamilyBase {
 public:
  CallbackGauge(std::string name, std::string help, std::function<double()> callback)
      : FamilyBase(std::move(name), std::move(help), "gauge", {}), callback_(std::move(callback)) {}

 protected:
  void AppendSamples(std::string* out) const override {
    AppendSample(name(), {}, {}, callback_(), out);
  }

 private:
  const std::function<double()> callback_;
};

class LabeledCallbackGauge : public internal::FamilyBase {
 public:
  LabeledCallbackGauge(std::string name, std::string help, std::vector<std::string> label_names,
                       std::function<LabeledValues()> callback)
      : FamilyBase(std::move(name), std::move(help), "gauge", std::move(label_names)),
        callback_(std::move(callback)) {}

 protected:
  void AppendSamples(std::string* out) const override {
    LabeledValues samples = callback_();
    std::stable_sort(samples.begin(), samples.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [values, value] : samples) {
      if (values.size() != label_names().size()) {
        spdlog::warn("metrics: callback gauge {} returned {} label values, want {}; dropped",
                     name(), values.size(), label_names().size());
        continue;
      }
      AppendSample(name(), label_names(), values, value, out);
    }
  }

 private:
  const std::function<LabeledValues()> callback_;
};

// The names a family's samples use: a histogram's suffixed ones, too.
std::vector<std::string> SampleNames(const internal::FamilyBase& family) {
  if (family.type() == "histogram") {
    return {family.name(), family.name() + "_bucket", family.name() + "_sum",
            family.name() + "_count"};
  }
  return {family.name()};
}

}  // namespace

void Counter::Increment(double by) {
  if (!(by >= 0)) {  // Also catches NaN.
    return;
  }
  AtomicAdd(value_, by);
}

void Gauge::Add(double delta) { AtomicAdd(value_, delta); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(CheckBounds(std::move(bounds), "Histogram")),
      buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    buckets_[i].store(0, std::memory_order_relaxed);
  }
}

void Histogram::Observe(double value) {
  // First bound >= value, as `le` is inclusive; NaN compares false everywhere and so lands in
  // the +Inf bucket.
  size_t index = bounds_.size();
  if (!std::isnan(value)) {
    index = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  }
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.bounds = bounds_;
  snapshot.cumulative.resize(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    snapshot.cumulative[i] = total;
  }
  snapshot.count = total;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

bool IsValidMetricName(absl::string_view name) {
  if (name.empty() || !IsNameChar(name[0], /*allow_colon=*/true, /*allow_digit=*/false)) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) { return IsNameChar(c, true, true); });
}

bool IsValidLabelName(absl::string_view name) {
  if (name.empty() || !IsNameChar(name[0], /*allow_colon=*/false, /*allow_digit=*/false) ||
      absl::StartsWith(name, "__")) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) { return IsNameChar(c, false, true); });
}

namespace internal {

std::string FormatValue(double value) {
  if (std::isnan(value)) {
    return "NaN";
  }
  if (std::isinf(value)) {
    return value > 0 ? "+Inf" : "-Inf";
  }
  // Shortest round-trip digits; plain decimal unless the exponent is extreme, so counters
  // read as integers up to 1e21.
  char buffer[64];
  std::to_chars_result result =
      std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  absl::string_view scientific(buffer, result.ptr - buffer);
  int exponent = 0;
  absl::string_view exponent_text = scientific.substr(scientific.find('e') + 1);
  std::from_chars(exponent_text.data() + (exponent_text[0] == '+' ? 1 : 0),
                  exponent_text.data() + exponent_text.size(), exponent);
  if (exponent < -4 || exponent >= 21) {
    return std::string(scientific);
  }
  result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::fixed);
  return std::string(buffer, result.ptr - buffer);
}

std::string EscapeLabelValue(absl::string_view value) {
  std::string escaped;
  escaped.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\':
        escaped += "\\\\";
        break;
      case '"':
        escaped += "\\\"";
        break;
      case '\n':
        escaped += "\\n";
        break;
      default:
        escaped.push_back(c);
    }
  }
  return escaped;
}

void DieWrongLabelCount(const std::string& family, size_t want, size_t got) {
  Die(absl::StrCat(family, ": WithLabels got ", got, " label values, want ", want));
}

void FamilyBase::Render(std::string* out) const {
  // HELP escapes only backslash and newline.
  std::string help;
  for (char c : help_) {
    if (c == '\\') {
      help += "\\\\";
    } else if (c == '\n') {
      help += "\\n";
    } else {
      help.push_back(c);
    }
  }
  absl::StrAppend(out, "# HELP ", name_, " ", help, "\n# TYPE ", name_, " ", type_, "\n");
  AppendSamples(out);
}

void AppendSamples(const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const Counter& counter,
                   std::string* out) {
  AppendSample(name, label_names, label_values, counter.Value(), out);
}

void AppendSamples(const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const Gauge& gauge,
                   std::string* out) {
  AppendSample(name, label_names, label_values, gauge.Value(), out);
}

void AppendSamples(const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const Histogram& histogram,
                   std::string* out) {
  const Histogram::Snapshot snapshot = histogram.Read();
  for (size_t i = 0; i < snapshot.cumulative.size(); ++i) {
    const std::string le =
        i < snapshot.bounds.size() ? FormatValue(snapshot.bounds[i]) : std::string("+Inf");
    absl::StrAppend(out, name, "_bucket");
    AppendLabels(label_names, label_values, "le", le, out);
    absl::StrAppend(out, " ", snapshot.cumulative[i], "\n");
  }
  absl::StrAppend(out, name, "_sum");
  AppendLabels(label_names, label_values, "", "", out);
  absl::StrAppend(out, " ", FormatValue(snapshot.sum), "\n", name, "_count");
  AppendLabels(label_names, label_values, "", "", out);
  absl::StrAppend(out, " ", snapshot.count, "\n");
}

}  // namespace internal

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help,
                                      const std::vector<std::string>& label_names) {
  auto* family = new Family<Counter>(name, help, "counter", label_names,
                                     [] { return std::make_unique<Counter>(); });
  Register(std::unique_ptr<internal::FamilyBase>(family));
  return *family;
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help,
                                  const std::vector<std::string>& label_names) {
  auto* family =
      new Family<Gauge>(name, help, "gauge", label_names, [] { return std::make_unique<Gauge>(); });
  Register(std::unique_ptr<internal::FamilyBase>(family));
  return *family;
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          const std::vector<std::string>& label_names,
                                          std::vector<double> bounds) {
  bounds = CheckBounds(std::move(bounds), name);
  auto* family = new Family<Histogram>(name, help, "histogram", label_names,
                                       [bounds] { return std::make_unique<Histogram>(bounds); });
  Register(std::unique_ptr<internal::FamilyBase>(family));
  return *family;
}

void Registry::AddCallbackGauge(const std::string& name, const std::string& help,
                                std::function<double()> callback) {
  Register(std::make_unique<CallbackGauge>(name, help, std::move(callback)));
}

void Registry::AddCallbackGauge(const std::string& name, const std::string& help,
                                const std::vector<std::string>& label_names,
                                std::function<LabeledValues()> callback) {
  Register(std::make_unique<LabeledCallbackGauge>(name, help, label_names, std::move(callback)));
}

void Registry::Register(std::unique_ptr<internal::FamilyBase> family) {
  const std::string& name = family->name();
  if (!IsValidMetricName(name)) {
    Die(absl::StrCat("invalid metric name \"", name, "\""));
  }
  std::set<std::string> seen_labels;
  for (const std::string& label : family->label_names()) {
    if (!IsValidLabelName(label)) {
      Die(absl::StrCat(name, ": invalid label name \"", label, "\""));
    }
    if (family->type() == "histogram" && label == "le") {
      Die(absl::StrCat(name, ": label name \"le\" is reserved for histogram buckets"));
    }
    if (!seen_labels.insert(label).second) {
      Die(absl::StrCat(name, ": duplicate label name \"", label, "\""));
    }
  }
  absl::MutexLock lock(&mu_);
  // Compare sample names, so that e.g. a counter "x_count" cannot shadow histogram "x"'s.
  std::set<std::string> taken;
  for (const auto& existing : families_) {
    for (std::string& sample_name : SampleNames(*existing)) {
      taken.insert(std::move(sample_name));
    }
  }
  for (const std::string& sample_name : SampleNames(*family)) {
    if (taken.count(sample_name) > 0) {
      Die(absl::StrCat("metric \"", name, "\" registered twice (clashes on \"", sample_name,
                       "\")"));
    }
  }
  families_.push_back(std::move(family));
}

std::string Registry::Render() const {
  // Families are never removed, so the pointers outlive the lock; rendering without it lets
  // callbacks run lock-free with respect to registration.
  std::vector<const internal::FamilyBase*> families;
  {
    absl::MutexLock lock(&mu_);
    families.reserve(families_.size());
    for (const auto& family : families_) {
      families.push_back(family.get());
    }
  }
  std::string out;
  for (const internal::FamilyBase* family : families) {
    family->Render(&out);
  }
  return out;
}

}  // namespace metrics
}  // namespace verdictd
