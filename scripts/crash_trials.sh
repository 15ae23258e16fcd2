#!/usr/bin/env bash
# Crash-safety trials: verdictd is SIGKILLed mid-storm on one shared database file, again and
# again; after each crash the file is checked (integrity_check, ledger >= simulator requests,
# every verdict a caller received is stored). Exits 1 on any violation.
#
#   scripts/crash_trials.sh                 # 20 trials (about a minute)
#   scripts/crash_trials.sh --smoke         # 3 trials for CI (well under 30 s after the build)
#   scripts/crash_trials.sh --trials=50 --seed=123   # other flags go to the program
#
# BUILD_DIR (default build-bench) and JOBS (default 2) are honoured.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-${root}/build-bench}"
args=()
for arg in "$@"; do
  case "${arg}" in
    --smoke) args+=(--trials=3) ;;
    *) args+=("${arg}") ;;
  esac
done

cmake -S "${root}" -B "${build}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "${build}" -j"${JOBS:-2}" --target crash_trials
exec "${build}/bench/crash_trials" "${args[@]}"
