#!/usr/bin/env bash
# Soak: 60 s of 64-channel load (70% hits, 25% misses, 5% IPs the simulator fails with 5xx,
# garbage or hangs), checking that only the fault IPs fail, that verdictd's RSS stays flat after
# a 10 s warm-up (<= 10% growth) and that the ledger's clicks equal the simulator's requests.
# Exits 1 on any failure.
#
#   scripts/soak.sh                  # 60 s
#   scripts/soak.sh --seconds=300    # other flags go to the program (--help lists them)
#
# BUILD_DIR (default build-bench) and JOBS (default 2) are honoured.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-${root}/build-bench}"

cmake -S "${root}" -B "${build}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "${build}" -j"${JOBS:-2}" --target soak
exec "${build}/bench/soak" "$@"
