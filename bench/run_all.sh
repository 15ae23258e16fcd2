#!/usr/bin/env bash
# Builds the benchmarks (Release) and runs all five, then prints a summary table.
#
#   bench/run_all.sh            # full runs (about 2 minutes on 2 cores)
#   bench/run_all.sh --smoke    # small runs for CI (well under a minute after the build)
#   bench/run_all.sh --strict   # also exit 1 when a figure misses its target
#
# BUILD_DIR (default build-bench) and JOBS (default 2) are honoured. Exits 1 if a benchmark
# could not run; misses of targets only fail with --strict, since shared machines are noisy.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-${root}/build-bench}"
smoke=()
strict=0
for arg in "$@"; do
  case "${arg}" in
    --smoke) smoke=(--smoke) ;;
    --strict) strict=1 ;;
    *) echo "usage: $0 [--smoke] [--strict]" >&2; exit 2 ;;
  esac
done

# Benchmark 1 drives the servers with h2load; without it the run cannot mean anything.
if [[ ! -x /usr/bin/h2load ]]; then
  echo "run_all.sh: /usr/bin/h2load is missing; bench_hit needs it (sudo apt-get install nghttp2-client)" >&2
  exit 1
fi

cmake -S "${root}" -B "${build}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "${build}" -j"${JOBS:-2}" --target bench

out="$(mktemp -d "${TMPDIR:-/tmp}/verdictd-bench-XXXXXX")"
trap 'rm -rf "${out}"' EXIT
failed=0
for bench in bench_hit bench_batch bench_miss_storm bench_clicks bench_footprint; do
  echo
  echo "=== ${bench} ${smoke[*]:-}"
  if ! "${build}/bench/${bench}" "${smoke[@]}" 2>&1 | tee "${out}/${bench}.txt"; then
    echo "!!! ${bench} failed" >&2
    failed=1
  fi
done

echo
echo "=== summary${smoke:+ (smoke)}: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for bench in bench_hit bench_batch bench_miss_storm bench_clicks bench_footprint; do
  cat "${out}/${bench}.txt" 2>/dev/null || true
done | awk '
  BEGIN { printf "%-11s %-30s %12s %10s  %s\n", "benchmark", "metric", "value", "target", "" }
  /^RESULT / { printf "%-11s %-30s %12s %10s  %s\n", $2, $3, $4, $5, ($6 == "-" ? "" : $6) }'
if grep -q '^RESULT .* FAIL$' "${out}"/*.txt; then
  echo "some figures miss their targets"
  if [[ "${strict}" == 1 ]]; then
    failed=1
  fi
fi
exit "${failed}"
