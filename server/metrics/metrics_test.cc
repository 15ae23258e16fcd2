#include "server/metrics/metrics.h"

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/metrics_http.h"

namespace verdictd {
namespace metrics {
namespace {

using ::testing::HasSubstr;

TEST(CounterTest, Increments) {
  Counter counter;
  EXPECT_EQ(counter.Value(), 0);
  counter.Increment();
  counter.Increment(2.5);
  EXPECT_EQ(counter.Value(), 3.5);
}

TEST(CounterTest, IgnoresNegativeAndNaN) {
  Counter counter;
  counter.Increment(5);
  counter.Increment(-1);
  counter.Increment(std::nan(""));
  EXPECT_EQ(counter.Value(), 5);
}

TEST(GaugeTest, SetsAndAdds) {
  Gauge gauge;
  gauge.Set(10);
  gauge.Add(-3);
  gauge.Add(0.5);
  EXPECT_EQ(gauge.Value(), 7.5);
  gauge.Set(-2);
  EXPECT_EQ(gauge.Value(), -2);
}

TEST(HistogramTest, BucketsAreCumulativeWithInf) {
  Histogram histogram({1, 2, 5});
  for (double v : {0.5, 1.0, 1.5, 2.0, 4.0, 7.0, 100.0}) {
    histogram.Observe(v);
  }
  const Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_THAT(snapshot.bounds, ::testing::ElementsAre(1, 2, 5));
  // le is inclusive: 1.0 counts in le=1, 2.0 in le=2.
  EXPECT_THAT(snapshot.cumulative, ::testing::ElementsAre(2, 4, 5, 7));
  EXPECT_EQ(snapshot.count, 7);
  EXPECT_DOUBLE_EQ(snapshot.sum, 116);
}

TEST(HistogramTest, TrailingInfIsDroppedAndNaNGoesToInf) {
  Histogram histogram({1, std::numeric_limits<double>::infinity()});
  EXPECT_THAT(histogram.bounds(), ::testing::ElementsAre(1));
  histogram.Observe(std::nan(""));
  EXPECT_THAT(histogram.Read().cumulative, ::testing::ElementsAre(0, 1));
}

TEST(HistogramDeathTest, RejectsUnsortedBounds) {
  EXPECT_DEATH(Histogram({1, 1}), "strictly increasing");
  EXPECT_DEATH(Histogram({2, 1}), "strictly increasing");
}

TEST(FormatTest, Values) {
  EXPECT_EQ(internal::FormatValue(0), "0");
  EXPECT_EQ(internal::FormatValue(1), "1");
  EXPECT_EQ(internal::FormatValue(-2.5), "-2.5");
  EXPECT_EQ(internal::FormatValue(0.0005), "0.0005");
  EXPECT_EQ(internal::FormatValue(0.1), "0.1");
  EXPECT_EQ(internal::FormatValue(1234567), "1234567");
  EXPECT_EQ(internal::FormatValue(1e-5), "1e-05");
  EXPECT_EQ(internal::FormatValue(1e21), "1e+21");
  EXPECT_EQ(internal::FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(internal::FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(internal::FormatValue(std::nan("")), "NaN");
}

TEST(FormatTest, EscapesLabelValues) {
  EXPECT_EQ(internal::EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(internal::EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}

TEST(NamesTest, Validation) {
  EXPECT_TRUE(IsValidMetricName("verdictd_requests_total"));
  EXPECT_TRUE(IsValidMetricName(":colon:ok_1"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("1abc"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_TRUE(IsValidLabelName("code"));
  EXPECT_TRUE(IsValidLabelName("_x1"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("__reserved"));
  EXPECT_FALSE(IsValidLabelName("9"));
}

TEST(RegistryTest, RendersGolden) {
  Registry registry;
  Family<Counter>& requests =
      registry.AddCounter("requests_total", "Requests handled.", {"method", "code"});
  requests.WithLabels({"Check", "OK"}).Increment(3);
  requests.WithLabels({"Check", "INVALID_ARGUMENT"}).Increment();
  requests.WithLabels({"Batch", "OK"}).Increment(2);
  registry.AddGauge("budget", "Left.\nSecond line \\ here.").WithLabels({}).Set(0.25);
  Family<Histogram>& latency =
      registry.AddHistogram("latency_seconds", "Latency.", {"method"}, {0.1, 1});
  latency.WithLabels({"Check"}).Observe(0.05);
  latency.WithLabels({"Check"}).Observe(0.5);
  latency.WithLabels({"Check"}).Observe(3);
  registry.AddCallbackGauge("in_flight", "In flight.", [] { return 4.0; });
  registry.AddCounter("errors_total", "Errors, with quoted labels.", {"what"})
      .WithLabels({"say \"hi\"\\\n"})
      .Increment();
  registry.AddCounter("empty_total", "No children yet.", {"x"});

  EXPECT_EQ(registry.Render(),
            "# HELP requests_total Requests handled.\n"
            "# TYPE requests_total counter\n"
            "requests_total{method=\"Batch\",code=\"OK\"} 2\n"
            "requests_total{method=\"Check\",code=\"INVALID_ARGUMENT\"} 1\n"
            "requests_total{method=\"Check\",code=\"OK\"} 3\n"
            "# HELP budget Left.\\nSecond line \\\\ here.\n"
            "# TYPE budget gauge\n"
            "budget 0.25\n"
            "# HELP latency_seconds Latency.\n"
            "# TYPE latency_seconds histogram\n"
            "latency_seconds_bucket{method=\"Check\",le=\"0.1\"} 1\n"
            "latency_seconds_bucket{method=\"Check\",le=\"1\"} 2\n"
            "latency_seconds_bucket{method=\"Check\",le=\"+Inf\"} 3\n"
            "latency_seconds_sum{method=\"Check\"} 3.55\n"
            "latency_seconds_count{method=\"Check\"} 3\n"
            "# HELP in_flight In flight.\n"
            "# TYPE in_flight gauge\n"
            "in_flight 4\n"
            "# HELP errors_total Errors, with quoted labels.\n"
            "# TYPE errors_total counter\n"
            "errors_total{what=\"say \\\"hi\\\"\\\\\\n\"} 1\n"
            "# HELP empty_total No children yet.\n"
            "# TYPE empty_total counter\n");
}

TEST(RegistryTest, UnlabelledFamiliesExportZeroBeforeUse) {
  Registry registry;
  registry.AddCounter("c_total", "C.");
  registry.AddHistogram("h", "H.", {}, {1});
  EXPECT_EQ(registry.Render(),
            "# HELP c_total C.\n# TYPE c_total counter\nc_total 0\n"
            "# HELP h H.\n# TYPE h histogram\n"
            "h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n");
}

TEST(RegistryTest, WithLabelsReturnsStableReferences) {
  Registry registry;
  Family<Counter>& family = registry.AddCounter("c_total", "C.", {"k"});
  Counter& first = family.WithLabels({"a"});
  for (int i = 0; i < 1000; ++i) {
    family.WithLabels({std::to_string(i)});
  }
  EXPECT_EQ(&family.WithLabels({"a"}), &first);
}

TEST(RegistryTest, CallbackGaugesEvaluateAtRender) {
  Registry registry;
  double value = 1;
  registry.AddCallbackGauge("g", "G.", [&value] { return value; });
  registry.AddCallbackGauge("lg", "LG.", {"pool"}, [] {
    return LabeledValues{{{"b"}, 2}, {{"a"}, 1}, {{"too", "many"}, 9}};
  });
  EXPECT_EQ(registry.Render(),
            "# HELP g G.\n# TYPE g gauge\ng 1\n"
            "# HELP lg LG.\n# TYPE lg gauge\nlg{pool=\"a\"} 1\nlg{pool=\"b\"} 2\n");
  value = 7;
  EXPECT_THAT(registry.Render(), HasSubstr("\ng 7\n"));
}

TEST(RegistryTest, ConcurrentIncrementsAreExact) {
  Registry registry;
  Family<Counter>& counters = registry.AddCounter("c_total", "C.", {"k"});
  Family<Histogram>& histograms = registry.AddHistogram("h", "H.", {"k"}, {0.5});
  Gauge& gauge = registry.AddGauge("g", "G.").WithLabels({});
  // Children are created before the threads start, so that the counts alone are under test
  // (and TSan stays quiet: Debian's absl::Mutex is not TSan-instrumented, so TSan cannot see
  // it publish a child created by another thread).
  counters.WithLabels({"shared"});
  histograms.WithLabels({"shared"});
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Half the threads look up now and then, exercising the lock path too.
      Counter& cached = counters.WithLabels({"shared"});
      Histogram& histogram = histograms.WithLabels({"shared"});
      for (int i = 0; i < kPerThread; ++i) {
        if (t % 2 == 0 && i % 1000 == 0) {
          counters.WithLabels({"shared"}).Increment();
        } else {
          cached.Increment();
        }
        histogram.Observe(i % 2 == 0 ? 0.25 : 1);
        gauge.Add(1);
      }
    });
  }
  // Scrape concurrently, too.
  for (int i = 0; i < 20; ++i) {
    registry.Render();
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(counters.WithLabels({"shared"}).Value(), kThreads * kPerThread);
  EXPECT_EQ(gauge.Value(), kThreads * kPerThread);
  const Histogram::Snapshot snapshot = histograms.WithLabels({"shared"}).Read();
  EXPECT_EQ(snapshot.count, kThreads * kPerThread);
  EXPECT_EQ(snapshot.cumulative[0], kThreads * kPerThread / 2);
  EXPECT_DOUBLE_EQ(snapshot.sum, kThreads * kPerThread / 2 * 1.25);
}

// Under TSan this reports false races, as Debian's absl::Mutex is not instrumented.
TEST(RegistryTest, ConcurrentFirstLookupsAgree) {
  Registry registry;
  Family<Counter>& family = registry.AddCounter("c_total", "C.", {"k"});
  constexpr int kThreads = 8;
  constexpr int kKeys = 200;
  std::vector<std::vector<Counter*>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kKeys; ++k) {
        Counter& counter = family.WithLabels({std::to_string(k)});
        counter.Increment();
        seen[t].push_back(&counter);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  for (int k = 0; k < kKeys; ++k) {
    Counter& counter = family.WithLabels({std::to_string(k)});
    EXPECT_EQ(counter.Value(), kThreads);
    for (int t = 0; t < kThreads; ++t) {
      EXPECT_EQ(seen[t][k], &counter);
    }
  }
}

TEST(RegistryDeathTest, RejectsBadRegistrations) {
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddCounter("x_total", "X.");
        registry.AddGauge("x_total", "X again.");
      },
      "registered twice");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddHistogram("lat", "L.", {}, {1});
        registry.AddCounter("lat_count", "Clashes with the histogram's samples.");
      },
      "registered twice");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddCallbackGauge("g", "G.", [] { return 1.0; });
        registry.AddCallbackGauge("g", "G.", [] { return 1.0; });
      },
      "registered twice");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddCounter("bad-name", "B.");
      },
      "invalid metric name");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddCounter("c", "C.", {"ok", "bad-label"});
      },
      "invalid label name");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddCounter("c", "C.", {"a", "a"});
      },
      "duplicate label name");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddHistogram("h", "H.", {"le"}, {1});
      },
      "reserved");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddHistogram("h", "H.", {}, {2, 1});
      },
      "strictly increasing");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddCounter("c", "C.", {"a", "b"}).WithLabels({"only one"});
      },
      "got 1 label values, want 2");
}

TEST(DefaultLatencyBucketsTest, SortedSeconds) {
  const std::vector<double> buckets = DefaultLatencyBuckets();
  ASSERT_FALSE(buckets.empty());
  EXPECT_TRUE(std::is_sorted(buckets.begin(), buckets.end()));
  EXPECT_EQ(buckets.front(), 0.0005);
  EXPECT_EQ(buckets.back(), 10);
}

TEST(MetricsHttpServerTest, ServesMetricsAnd404) {
  Registry registry;
  registry.AddCounter("hits_total", "Hits.").WithLabels({}).Increment(5);
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);

  httplib::Client client("127.0.0.1", (*server)->port());
  httplib::Result result = client.Get("/metrics");
  ASSERT_TRUE(result) << httplib::to_string(result.error());
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(result->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(result->body, registry.Render());
  EXPECT_THAT(result->body, HasSubstr("hits_total 5\n"));

  httplib::Result other = client.Get("/other");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
  httplib::Result root = client.Get("/");
  ASSERT_TRUE(root);
  EXPECT_EQ(root->status, 404);
}

TEST(MetricsHttpServerTest, RejectsBadAddresses) {
  Registry registry;
  EXPECT_EQ(MetricsHttpServer::Start("no-port", registry).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsHttpServer::Start("127.0.0.1:99999", registry).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsHttpServer::Start(":80", registry).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MetricsHttpServerTest, PortInUseIsUnavailable) {
  Registry registry;
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> first =
      MetricsHttpServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> second =
      MetricsHttpServer::Start("127.0.0.1:" + std::to_string((*first)->port()), registry);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

TEST(MetricsHttpServerTest, StopsPromptlyWithIdleKeepAliveConnection) {
  Registry registry;
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client client("127.0.0.1", (*server)->port());
  client.set_keep_alive(true);
  // Two requests from a keep-alive client; the server answers each with Connection: close, so
  // the client's second connection is the one left open when the server stops.
  ASSERT_TRUE(client.Get("/metrics"));
  ASSERT_TRUE(client.Get("/metrics"));

  const auto start = std::chrono::steady_clock::now();
  server->reset();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, std::chrono::seconds(2));
}

TEST(MetricsHttpServerTest, StopsPromptlyRightAfterStart) {
  Registry registry;
  for (int i = 0; i < 20; ++i) {
    const auto start = std::chrono::steady_clock::now();
    {
      absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
          MetricsHttpServer::Start("127.0.0.1:0", registry);
      ASSERT_TRUE(server.ok()) << server.status();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  }
}

}  // namespace
}  // namespace metrics
}  // namespace verdictd
