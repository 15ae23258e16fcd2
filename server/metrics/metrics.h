#ifndef VERDICTD_SERVER_METRICS_METRICS_H_
#define VERDICTD_SERVER_METRICS_METRICS_H_

// A minimal Prometheus metrics library: counters, gauges and histograms, grouped into
// labelled families held by a Registry, rendered in the text exposition format 0.0.4.
//
// Cost model, for code on hot paths:
//   * Family::WithLabels() looks the child up under the family's mutex (and allocates the
//     child on first use). Call it once, at start-up or per connection, and keep the reference:
//     children never move and live as long as the Registry.
//   * Counter::Increment, Gauge::Set/Add and Histogram::Observe take no lock: each is one or
//     two atomic operations (a compare-and-swap loop for doubles).
//
//   Registry registry;
//   Counter& ok = registry.AddCounter("verdictd_requests_total", "Requests handled.", {"code"})
//                     .WithLabels({"OK"});
//   ...
//   ok.Increment();  // hot path: lock-free
//
// Registration (Registry::Add*) is meant for start-up: an invalid or duplicate name is a
// programming error and crashes the process with a message naming the metric.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace verdictd {
namespace metrics {

// A monotonically increasing value. Thread-safe and lock-free.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // Adds `by`, which must be >= 0: counters never go down, so negative and NaN increments are
  // ignored.
  void Increment(double by = 1);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// A value that can go up and down. Thread-safe and lock-free.
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta);  // Subtract with a negative delta.
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Counts observations into buckets with fixed upper bounds (inclusive, as Prometheus's `le`),
// plus an implicit +Inf bucket, and sums them. Thread-safe and lock-free: Observe is one atomic
// increment plus a compare-and-swap loop on the sum.
class Histogram {
 public:
  // `bounds` must be strictly increasing and free of NaN; a trailing +Inf is dropped (the +Inf
  // bucket always exists). Violations crash.
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // NaN goes to the +Inf bucket only (and makes the sum NaN), as in the Go client.
  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;        // Finite upper bounds, without +Inf.
    std::vector<uint64_t> cumulative;  // bounds.size() + 1 entries; the last is +Inf == count.
    uint64_t count = 0;
    double sum = 0;
  };
  // Reads the buckets one by one, so observations racing with it may be counted in some
  // buckets and not others, but the buckets are always cumulative and count == +Inf bucket.
  Snapshot Read() const;

  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  // Per-bucket (non-cumulative) counts; index bounds_.size() is the +Inf bucket.
  const std::unique_ptr<std::atomic<uint64_t>[]> buckets_;
  std::atomic<double> sum_{0};
};

// 0.5 ms .. 10 s, for request latencies in seconds.
std::vector<double> DefaultLatencyBuckets();

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(absl::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]* and not starting with "__" (reserved by Prometheus).
bool IsValidLabelName(absl::string_view name);

// Values computed at scrape time by a labelled callback gauge: one (label values, value) pair
// per sample.
using LabeledValues = std::vector<std::pair<std::vector<std::string>, double>>;

class Registry;

namespace internal {

// Text-format helpers, exposed for tests.
// Shortest text that parses back to `value`: "+Inf", "-Inf", "NaN", plain decimal for
// exponents in [-4, 21) ("0.0005", "1234567"), otherwise scientific ("1e-05", "1e+21").
std::string FormatValue(double value);
// Escapes \ " and newline as \\ \" \n.
std::string EscapeLabelValue(absl::string_view value);

// Crashes with a message naming the family; WithLabels's out-of-line error path.
[[noreturn]] void DieWrongLabelCount(const std::string& family, size_t want, size_t got);

// Everything Render needs from a family, whatever its metric type.
class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, std::string type,
             std::vector<std::string> label_names)
      : name_(std::move(name)),
        help_(std::move(help)),
        type_(std::move(type)),
        label_names_(std::move(label_names)) {}
  virtual ~FamilyBase() = default;

  const std::string& name() const { return name_; }
  const std::string& type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }

  // Appends # HELP, # TYPE and the samples, sorted by label values.
  void Render(std::string* out) const;

 protected:
  virtual void AppendSamples(std::string* out) const = 0;

 private:
  const std::string name_;
  const std::string help_;
  const std::string type_;  // "counter", "gauge" or "histogram".
  const std::vector<std::string> label_names_;
};

// Append the sample lines of one child. Label names and values have equal sizes.
void AppendSamples(const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const Counter& counter,
                   std::string* out);
void AppendSamples(const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const Gauge& gauge,
                   std::string* out);
void AppendSamples(const std::string& name, const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, const Histogram& histogram,
                   std::string* out);

}  // namespace internal

// The metrics of one name, one child per distinct tuple of label values. M is Counter, Gauge
// or Histogram. Created by Registry, which owns it. Thread-safe.
template <typename M>
class Family : public internal::FamilyBase {
 public:
  // The child for `values` (one per label name, in order), created (at zero) on first use.
  // Takes the family's mutex: on hot paths call this once and keep the reference, which stays
  // valid for the Registry's lifetime. A wrong number of values is a programming error and
  // crashes.
  M& WithLabels(const std::vector<std::string>& values) ABSL_LOCKS_EXCLUDED(mu_);

 protected:
  void AppendSamples(std::string* out) const override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  friend class Registry;

  // A family without labels creates its only child now, so it is exported (at zero) before
  // its first use.
  Family(std::string name, std::string help, std::string type, std::vector<std::string> label_names,
         std::function<std::unique_ptr<M>()> make_child)
      : FamilyBase(std::move(name), std::move(help), std::move(type), std::move(label_names)),
        make_child_(std::move(make_child)) {
    if (this->label_names().empty()) {
      WithLabels({});
    }
  }

  const std::function<std::unique_ptr<M>()> make_child_;
  mutable absl::Mutex mu_;
  // Ordered by label values, which is the order Render wants. unique_ptr keeps children put.
  std::map<std::vector<std::string>, std::unique_ptr<M>> children_ ABSL_GUARDED_BY(mu_);
};

// Owns metric families and renders them. Registration is for start-up (it crashes on invalid
// or duplicate names); Render may run concurrently with anything. Families, and the children
// they hand out, live until the Registry is destroyed.
class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              const std::vector<std::string>& label_names = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          const std::vector<std::string>& label_names = {});
  // `bounds` as for Histogram; the label name "le" is reserved.
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  const std::vector<std::string>& label_names,
                                  std::vector<double> bounds);

  // A gauge whose value `callback` computes at each Render, on the rendering thread (the HTTP
  // server's). The callback must be thread-safe, quick, and must not call back into this
  // Registry's Add* methods.
  void AddCallbackGauge(const std::string& name, const std::string& help,
                        std::function<double()> callback);
  // As above, with labels: the callback returns one pair per sample, each with one value per
  // label name (samples of the wrong arity are dropped and logged). Render sorts them by
  // label values; the callback must not return the same label values twice.
  void AddCallbackGauge(const std::string& name, const std::string& help,
                        const std::vector<std::string>& label_names,
                        std::function<LabeledValues()> callback);

  // The text exposition format 0.0.4: families in registration order, each with # HELP and
  // # TYPE lines and its samples sorted by label values.
  std::string Render() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Checks names (crashing on error) and takes ownership.
  void Register(std::unique_ptr<internal::FamilyBase> family) ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<internal::FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
};

// --- implementation ---------------------------------------------------------------------

template <typename M>
M& Family<M>::WithLabels(const std::vector<std::string>& values) {
  if (values.size() != label_names().size()) {
    internal::DieWrongLabelCount(name(), label_names().size(), values.size());
  }
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = children_.find(values);
    if (it != children_.end()) {
      return *it->second;
    }
  }
  absl::MutexLock lock(&mu_);
  std::unique_ptr<M>& child = children_[values];
  if (child == nullptr) {  // Another thread may have created it between the two locks.
    child = make_child_();
  }
  return *child;
}

template <typename M>
void Family<M>::AppendSamples(std::string* out) const {
  // Children are never removed, so pointers copied under the lock stay valid; formatting
  // outside it keeps WithLabels callers from waiting on a scrape.
  std::vector<std::pair<const std::vector<std::string>*, const M*>> children;
  {
    absl::ReaderMutexLock lock(&mu_);
    children.reserve(children_.size());
    for (const auto& [values, child] : children_) {
      children.emplace_back(&values, child.get());
    }
  }
  for (const auto& [values, child] : children) {
    internal::AppendSamples(name(), label_names(), *values, *child, out);
  }
}

}  // namespace metrics
}  // namespace verdictd

#endif  // VERDICTD_SERVER_METRICS_METRICS_H_
