#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for a bounded time.
#
#   fuzz/run.sh [TARGET...]       all targets when none is named
#   FUZZ_SECONDS=N                run time per target (default 30)
#   FUZZ_BUILD_DIR=DIR            build dir (default build-fuzz)
#   FUZZ_JOBS=N                   build parallelism (default 2)
#
# Each target starts from its seeds in fuzz/corpus/<target>/ plus what earlier runs found (kept in
# <build dir>/corpus/<target>/, never written back to the source tree). A crash, a failed
# property check, a leak or a timeout fails the target; the input that did it is saved as
# <build dir>/artifacts/<target>-crash-* (replay: <build dir>/fuzz/<target> <that file>).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${FUZZ_SECONDS:-30}
build=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${FUZZ_JOBS:-2}
all_targets=(ip_parser_fuzzer response_parser_fuzzer page_token_fuzzer keys_file_fuzzer
  config_file_fuzzer)
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=("${all_targets[@]}")
fi

./scripts/deps.sh fuzz

# Every library the fuzzers link is compiled with coverage (fuzzer-no-link) and ASan+UBSan, so
# libFuzzer is guided by, and the sanitizers check, our code, not just the fuzzers' own files.
# -O1 and no NDEBUG: assertions stay on, and reports stay readable.
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
flags+=" -fno-omit-frame-pointer -gline-tables-only"
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CXX_FLAGS_RELEASE="-O1" \
  -DVERDICTD_SANITIZE= -DVERDICTD_SKIP_PARTS="bench;tests/python" >/dev/null
if ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++' "$build/CMakeCache.txt"; then
  echo "fuzz/run.sh: $build is not configured with clang++; remove it and rerun" >&2
  exit 1
fi
cmake --build "$build" -j"$jobs" --target "${targets[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [ -x /usr/bin/llvm-symbolizer-14 ]; then
  export ASAN_SYMBOLIZER_PATH=/usr/bin/llvm-symbolizer-14
fi

passed=0
failed=0
mkdir -p "$build/artifacts" "$build/fuzz-logs"
for target in "${targets[@]}"; do
  seeds="$root/fuzz/corpus/$target"
  corpus="$build/corpus/$target"
  log="$build/fuzz-logs/$target.log"
  mkdir -p "$corpus"
  status=0
  # The first corpus dir receives new inputs; the seeds are only read.
  "$build/fuzz/$target" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
    -max_len=4096 -artifact_prefix="$build/artifacts/$target-" "$corpus" "$seeds" \
    >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus_size=$(find "$corpus" -type f | wc -l)
  if [ "$status" -eq 0 ] && [ -n "$execs" ]; then
    passed=$((passed + 1))
    echo "$target: ok, ${execs} executions in ${seconds} s, corpus ${corpus_size} inputs"
  else
    failed=$((failed + 1))
    echo "$target: FAILED (exit $status, ${execs:-?} executions); log: $log" >&2
    # The report: from the sanitizer's or the check's first line to the end of the stack.
    grep -m1 -A40 -E 'ERROR: |FUZZ_CHECK failed|runtime error|deadly signal|Test unit written' \
      "$log" >&2 || tail -40 "$log" >&2
    ls "$build/artifacts/$target-"* 2>/dev/null >&2 || true
  fi
done
echo "fuzz: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
