#ifndef VERDICTD_TESTS_SUPPORT_WAIT_UNTIL_H_
#define VERDICTD_TESTS_SUPPORT_WAIT_UNTIL_H_

// WaitUntil: the one way the end-to-end tests and their support code poll for something to
// happen (a row to appear, a process to exit, a count to reach a value) instead of sleeping for
// a guessed time. Free of gtest, so that the benchmarks can build tests/support/process.cc, yet
// EXPECT_TRUE(WaitUntil(...)) prints what was awaited and what was last seen when it times out.

#include <algorithm>
#include <functional>
#include <ostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace testing {
class AssertionResult;  // gtest's; WaitResult converts to it only where gtest is included
}  // namespace testing

namespace verdictd::testing {

// How often WaitUntil looks unless told otherwise.
inline constexpr absl::Duration kWaitPoll = absl::Milliseconds(20);

namespace wait_internal {

template <typename T>
struct Observed {
  using type = T;
  static constexpr bool kStatusOr = false;
};
template <typename T>
struct Observed<absl::StatusOr<T>> {
  using type = T;
  static constexpr bool kStatusOr = true;
};

template <typename T, typename = void>
struct Streamable : std::false_type {};
template <typename T>
struct Streamable<T,
                  std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>>
    : std::true_type {};

// `value` for a failure message: strings quoted, and only their last 400 characters (a log's
// tail is where the news is).
template <typename T>
std::string Describe(const T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    return value ? "true" : "false";
  } else if constexpr (std::is_convertible_v<const T&, absl::string_view>) {
    absl::string_view text = value;
    constexpr size_t kTail = 400;
    if (text.size() <= kTail) {
      return absl::StrCat("\"", text, "\"");
    }
    return absl::StrCat("\"...", text.substr(text.size() - kTail), "\" (last ", kTail, " of ",
                        text.size(), " characters)");
  } else if constexpr (Streamable<T>::value) {
    std::ostringstream out;
    out << value;
    return out.str();
  } else {
    return "(a value that cannot be printed)";
  }
}

}  // namespace wait_internal

// What a WaitUntil saw: whether the condition held, the last value observed, and how long it
// waited (until the observation that satisfied it, or until it gave up).
template <typename T>
class WaitResult {
 public:
  WaitResult(absl::Status status, T last, absl::Duration elapsed)
      : status_(std::move(status)), last_(std::move(last)), elapsed_(elapsed) {}

  bool ok() const { return status_.ok(); }
  explicit operator bool() const { return ok(); }
  // OK if the condition held; else DEADLINE_EXCEEDED, or the error the observation returned,
  // with a message saying what was awaited and what was last seen.
  const absl::Status& status() const { return status_; }
  const T& last() const { return last_; }
  absl::Duration elapsed() const { return elapsed_; }

  friend std::ostream& operator<<(std::ostream& out, const WaitResult& result) {
    return out << (result.ok() ? absl::StrCat("held after ", absl::FormatDuration(result.elapsed_))
                               : std::string(result.status_.message()));
  }

  // For EXPECT_TRUE / ASSERT_TRUE: a failure carries the message above.
  template <typename R, std::enable_if_t<std::is_same_v<R, ::testing::AssertionResult>, int> = 0>
  operator R() const {  // NOLINT(google-explicit-constructor): gtest needs it implicit
    R result(ok());
    if (!ok()) {
      result << status_.message();
    }
    return result;
  }

 private:
  absl::Status status_;
  T last_;
  absl::Duration elapsed_;
};

// Calls `observe` every `poll` until `done(value)` holds for the value it returned, or `timeout`
// passes (it always observes once at or after the deadline, so a slow poll never shortens the
// wait). `what` names what is awaited, for the failure message ("3 requests in flight at the
// simulator"). If `observe` returns an absl::StatusOr, an error ends the wait at once (what is
// awaited can no longer happen, e.g. the process exited) and becomes the result's status; the
// values are then those inside it.
template <typename Observe, typename Done,
          typename Value =
              typename wait_internal::Observed<std::decay_t<std::invoke_result_t<Observe&>>>::type,
          std::enable_if_t<std::is_invocable_r_v<bool, Done&, const Value&>, int> = 0>
WaitResult<Value> WaitUntil(absl::string_view what, Observe&& observe, Done&& done,
                            absl::Duration timeout, absl::Duration poll = kWaitPoll) {
  constexpr bool kStatusOr =
      wait_internal::Observed<std::decay_t<std::invoke_result_t<Observe&>>>::kStatusOr;
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  Value last{};
  while (true) {
    if constexpr (kStatusOr) {
      auto observed = observe();
      if (!observed.ok()) {
        const absl::Duration elapsed = absl::Now() - start;
        absl::Status status(
            observed.status().code(),
            absl::StrCat("gave up waiting for ", what, " after ", absl::FormatDuration(elapsed),
                         ": ", observed.status().message(),
                         "; last seen: ", wait_internal::Describe(last)));
        return WaitResult<Value>(std::move(status), std::move(last), elapsed);
      }
      last = *std::move(observed);
    } else {
      last = observe();
    }
    const absl::Time now = absl::Now();
    if (done(static_cast<const Value&>(last))) {
      return WaitResult<Value>(absl::OkStatus(), std::move(last), now - start);
    }
    if (now >= deadline) {
      absl::Status status = absl::DeadlineExceededError(
          absl::StrCat("timed out after ", absl::FormatDuration(timeout), " waiting for ", what,
                       "; last seen: ", wait_internal::Describe(last)));
      return WaitResult<Value>(std::move(status), std::move(last), now - start);
    }
    absl::SleepFor(std::min(poll, deadline - now));
  }
}

// The plain form, for a condition with nothing more to show than that it did not hold yet:
// polls `done()` until it returns true. When there is a value worth showing (a count, a state),
// observe it with the form above instead.
inline WaitResult<bool> WaitUntil(absl::string_view what, const std::function<bool()>& done,
                                  absl::Duration timeout, absl::Duration poll = kWaitPoll) {
  return WaitUntil(
      what, done, [](bool held) { return held; }, timeout, poll);
}

}  // namespace verdictd::testing

#endif  // VERDICTD_TESTS_SUPPORT_WAIT_UNTIL_H_
