#!/usr/bin/env bash
# Sanitizer builds and their tests.
#
#   scripts/sanitize.sh [address] [thread]     both when neither is named
#
# address: everything built with ASan + UBSan (g++, VERDICTD_SANITIZE=address) in build-asan/,
#          then every ctest test (unit and end-to-end), with LeakSanitizer on.
# thread:  everything built with TSan (VERDICTD_SANITIZE=thread) in build-tsan/, then the tests
#          where threads meet: the unit tests of common (scheduler), engine, storage (SQLite and
#          PostgreSQL), upstream
#          (the curl client) and metrics, and the end-to-end tests that race calls, coalesce misses,
#          spend budgets or shut down under load (TSAN_E2E_REGEX). Not every end-to-end test:
#          under TSan the whole e2e suite takes over 15 minutes, and gRPC's and OpenSSL's
#          uninstrumented internals keep producing reports that say nothing about our code (see
#          tests/sanitizers/tsan.supp).
#
# A sanitizer report from any process (test binaries, and the verdictd, simulator and verdictctl
# processes the end-to-end tests start) fails the run: reports go to per-process files under
# <build dir>/sanitizer-logs/ (printed at the end), and processes stop at the first one.
#
# Environment: SANITIZE_JOBS (build and ctest parallelism, default 2), CTEST_TIMEOUT (seconds per
# test, default 900), TSAN_E2E_REGEX.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

jobs=${SANITIZE_JOBS:-2}
timeout=${CTEST_TIMEOUT:-900}
modes=("$@")
if [ ${#modes[@]} -eq 0 ]; then
  modes=(address thread)
fi

./scripts/deps.sh

now() { date +%s; }

# Prints the reports left in $1 and fails if there are any.
check_reports() {
  local dir=$1
  local files
  files=$(find "$dir" -type f -size +0 | sort)
  if [ -z "$files" ]; then
    return 0
  fi
  echo "sanitizer reports ($(echo "$files" | wc -l) processes):" >&2
  for f in $files; do
    echo "=== $f" >&2
    head -c 20000 "$f" >&2
  done
  return 1
}

# configure_and_build MODE DIR
configure_and_build() {
  local mode=$1 dir=$2 start
  start=$(now)
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DVERDICTD_SANITIZE="$mode" \
    -DVERDICTD_SKIP_PARTS="bench;fuzz" >/dev/null
  cmake --build "$dir" -j"$jobs"
  echo "sanitize: $mode build took $(($(now) - start)) s"
}

# The gtest suites of the given test binaries, as a ctest -R alternation (gtest_discover_tests
# names tests SUITE.TEST, without the binary's name).
suites_of() {
  local dir=$1
  shift
  local suites=()
  for binary in "$@"; do
    # Each test binary is built in its folder's build dir (server/engine/engine_test, ...).
    local path
    path=$(find "$dir" -name "$binary" -type f -perm -u+x -not -path '*/CMakeFiles/*' | head -n 1)
    if [ -z "$path" ]; then
      echo "sanitize.sh: test binary $binary not found under $dir" >&2
      exit 1
    fi
    while read -r suite; do
      suites+=("$suite")
    done < <("$path" --gtest_list_tests | sed -n 's/^\([A-Za-z0-9_/]*\)\.\( .*\)\?$/\1/p')
  done
  local IFS='|'
  echo "${suites[*]}"
}

status=0
for mode in "${modes[@]}"; do
  case "$mode" in
    address)
      dir=build-asan
      configure_and_build address "$dir"
      logs="$root/$dir/sanitizer-logs"
      rm -rf "$logs" && mkdir -p "$logs"
      start=$(now)
      # abort_on_error: a crash, not exit(1), so test harnesses see a signal. LeakSanitizer runs
      # at every instrumented process's normal exit; lsan.supp lists the leaks in Debian's
      # libraries' global state.
      ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$logs/asan" \
        LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan" \
        ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout "$timeout" ||
        status=1
      echo "sanitize: address tests took $(($(now) - start)) s"
      check_reports "$logs" || status=1
      ;;
    thread)
      dir=build-tsan
      configure_and_build thread "$dir"
      logs="$root/$dir/sanitizer-logs"
      rm -rf "$logs" && mkdir -p "$logs"
      unit=$(suites_of "$dir" common_test engine_test storage_test postgres_store_test upstream_test \
        metrics_test)
      [ -n "$unit" ] || exit 1
      e2e=${TSAN_E2E_REGEX:-'(Coalesc|Budget|Concurren|Parallel|Shutdown|BatchOfDistinctMisses|MissThenHit)'}
      regex="^(($unit)\\.|[A-Za-z]*Test\\.[A-Za-z0-9_]*$e2e)"
      start=$(now)
      # halt_on_error: the first race ends the process, so it cannot go unnoticed in a child
      # process whose test still passes. tsan.supp documents each suppression.
      TSAN_OPTIONS="suppressions=$root/tests/sanitizers/tsan.supp:halt_on_error=1:second_deadlock_stack=1:log_path=$logs/tsan" \
        ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout "$timeout" -R "$regex" ||
        status=1
      echo "sanitize: thread tests took $(($(now) - start)) s"
      check_reports "$logs" || status=1
      ;;
    *)
      echo "sanitize.sh: unknown sanitizer '$mode' (address or thread)" >&2
      exit 2
      ;;
  esac
done
exit "$status"
