#!/usr/bin/env bash
# Builds and runs verdictd on 127.0.0.1:50051 with its SQLite store at ./verdicts.db.
#
# With CLICKPATROL_TOKEN set, verdictd talks to the real ClickPatrol. Without it, this script
# starts the simulated ClickPatrol on loopback and points verdictd at it. Extra arguments are
# passed to verdictd (e.g. --listen=127.0.0.1:6000 --max_age=1h).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh --target verdictd clickpatrol_sim

if [ -n "${CLICKPATROL_TOKEN:-}" ]; then
  echo "verdictd: using the REAL ClickPatrol API (token from CLICKPATROL_TOKEN)" >&2
  exec ./build/verdictd "$@"
fi

state="$(mktemp -d)"
sim_token="sim-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
./build/clickpatrol_sim --listen=127.0.0.1:0 --token="$sim_token" \
  --port_file="$state/sim.port" >"$state/sim.log" 2>&1 &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true; rm -rf "$state"' EXIT
for _ in $(seq 1 200); do
  [ -s "$state/sim.port" ] && break
  sleep 0.05
done
sim_port="$(cat "$state/sim.port")"
cat >&2 <<MSG
======================================================================================
  NO CLICKPATROL_TOKEN: verdictd is using the SIMULATED ClickPatrol at
  http://127.0.0.1:${sim_port}/ . Its verdicts are made up and no real click is spent.
  Set CLICKPATROL_TOKEN (or use --token_file) to talk to the real API.
======================================================================================
MSG
CLICKPATROL_TOKEN="$sim_token" ./build/verdictd --upstream_url="http://127.0.0.1:${sim_port}/" "$@" &
verdictd_pid=$!
trap 'kill -TERM "$verdictd_pid" 2>/dev/null; wait "$verdictd_pid" 2>/dev/null; kill "$sim_pid" 2>/dev/null || true; rm -rf "$state"' EXIT INT TERM
wait "$verdictd_pid"
