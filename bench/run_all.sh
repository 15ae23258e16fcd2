#!/usr/bin/env bash
# Builds the benchmarks (Release) and runs them all, then prints a summary table. The
# PostgreSQL parts (bench_hit's PostgreSQL-backed verdictd, bench_store_read, and the 3-replica
# runs of bench_miss_storm and bench_clicks) start a throwaway PostgreSQL 15 of their own
# (tests/support/postgres_cluster.h; run as nobody when this runs as root).
#
#   bench/run_all.sh            # full runs (about 5 minutes on 2 cores)
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

# Each run: a name for its output file, the program, and its flags beyond --smoke. The clicks
# trace across 3 replicas is the single-node one (1,000,000 checks over 100,000 IPs; about a
# minute on 2 cores).
runs=(
  "bench_hit bench_hit"
  "bench_batch bench_batch"
  "bench_miss_storm bench_miss_storm --replicas=3"
  "bench_clicks bench_clicks"
  "bench_clicks_3r bench_clicks --replicas=3"
  "bench_footprint bench_footprint"
  "bench_store_read bench_store_read"
)
failed=0
names=()
for run in "${runs[@]}"; do
  read -r -a words <<<"${run}"
  name="${words[0]}"
  program="${words[1]}"
  flags=("${words[@]:2}")
  names+=("${name}")
  echo
  echo "=== ${program} ${flags[*]:-} ${smoke[*]:-}"
  if ! "${build}/bench/${program}" "${flags[@]}" "${smoke[@]}" 2>&1 | tee "${out}/${name}.txt"; then
    echo "!!! ${program} ${flags[*]:-} failed" >&2
    failed=1
  fi
done

echo
echo "=== summary${smoke:+ (smoke)}: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for name in "${names[@]}"; do
  cat "${out}/${name}.txt" 2>/dev/null || true
done | awk '
  BEGIN { printf "%-13s %-32s %12s %10s  %s\n", "benchmark", "metric", "value", "target", "" }
  /^RESULT / { printf "%-13s %-32s %12s %10s  %s\n", $2, $3, $4, $5, ($6 == "-" ? "" : $6) }'
if grep -q '^RESULT .* FAIL$' "${out}"/*.txt; then
  echo "some figures miss their targets"
  if [[ "${strict}" == 1 ]]; then
    failed=1
  fi
fi
exit "${failed}"
