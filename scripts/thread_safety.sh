#!/usr/bin/env bash
# Builds everything but the tests with clang and -Wthread-safety -Werror=thread-safety: the lock
# annotations (ABSL_GUARDED_BY, ABSL_EXCLUSIVE_LOCKS_REQUIRED, ABSL_LOCKS_EXCLUDED, ...) become
# compile errors when code touches guarded state without its lock. g++ ignores the annotations,
# so without this build they are comments. Run by .ci/run.
#   scripts/thread_safety.sh            # build dir build-tsa (TSA_BUILD_DIR), JOBS (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh clang
dir="${TSA_BUILD_DIR:-build-tsa}"
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++-14 \
  -DVERDICTD_THREAD_SAFETY=ON -DVERDICTD_BUILD_TESTS=OFF -DVERDICTD_SKIP_PARTS="bench;fuzz" >/dev/null
cmake --build "$dir" -j"${JOBS:-2}"
echo "thread-safety analysis: clean (clang++-14 -Wthread-safety -Werror=thread-safety, every target but the tests)"
