#!/usr/bin/env bash
# Smoke run of the epoll-floor baseline (loadtest/baselines/epoll-floor/): builds it, starts it
# on a free loopback port, drives it with `ringcast-load fanout --pub-ws` exactly as the
# benchmarks do (1,000 subscribers, 100 publishes/s for 3 s), and fails unless every subscriber
# got every publish exactly once: nothing lost, duplicated, unparsable or disconnected. It checks
# that the baseline works, not how fast it is: no pinning, no priority.
#
#   loadtest/scripts/floor-smoke.sh [LOAD_BIN]
#
# LOAD_BIN: the ringcast-load binary (default: target/release/ringcast-load, under
# CARGO_TARGET_DIR when set, which the baseline's build honours too). Bounded: the server lives
# at most SERVER_LIFETIME_S (60), the generator's phases have their own time limits.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-}"
[[ -z "$target" || "$target" == /* ]] || target="$root/$target"
load="${1:-${target:-$root/target}/release/ringcast-load}"
floor_target="${target:-$root/loadtest/baselines/epoll-floor/target}"
floor="$floor_target/release/epoll-floor-baseline"
lifetime="${SERVER_LIFETIME_S:-60}"

[[ -x "$load" ]] || { echo "floor-smoke: no ringcast-load at $load (build it first)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "floor-smoke: python3 is needed to read the report" >&2; exit 1; }

cargo build --release --locked --manifest-path loadtest/baselines/epoll-floor/Cargo.toml \
  --target-dir "$floor_target"
cargo test --release --locked --manifest-path loadtest/baselines/epoll-floor/Cargo.toml \
  --target-dir "$floor_target"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [[ -z "$server_pid" ]] || kill "$server_pid" 2>/dev/null || true
  [[ -z "$server_pid" ]] || wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

: >"$work/server.out" # before the server's own redirection: the wait below reads it at once
timeout "$lifetime" "$floor" 127.0.0.1:0 >"$work/server.out" 2>"$work/server.err" </dev/null &
server_pid=$!
# Wait for the readiness line (at most 10 s), never a fixed sleep.
re='^epoll-floor ready listen=(127\.0\.0\.1:[0-9]+) pid=([0-9]+)$'
addr=""
for _ in $(seq 1 200); do
  while IFS= read -r l; do
    if [[ "$l" =~ $re ]]; then addr="${BASH_REMATCH[1]}"; fi
  done <"$work/server.out"
  [[ -z "$addr" ]] || break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
if [[ -z "$addr" ]]; then
  echo "floor-smoke: no readiness line from the baseline" >&2
  cat "$work/server.out" "$work/server.err" >&2
  exit 1
fi
pid="${BASH_REMATCH[2]}"

"$load" fanout --url "ws://$addr/ws" --pub-ws -n 1000 --rate 100 --duration 3 --drain 2 \
  --warmup 5 --connect-timeout-s 20 --server-pid "$pid" --quiet --json "$work/report.json"

python3 - "$work/report.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
problems = []
if report["connections"]["opened"] != 1001:
    problems.append(f"opened {report['connections']['opened']} of 1001 connections")
for r in report["rates"]:
    want = r["published"] * 1000
    if r["published"] != 300 or r["expected"] != want or r["delivered"] != want:
        problems.append(f"published {r['published']}, delivered {r['delivered']} of {want}")
    for key in ["lost", "duplicated", "unparsable", "foreign", "disconnected"]:
        if r[key] != 0:
            problems.append(f"{key} {r[key]}")
if problems:
    sys.exit("floor-smoke: " + "; ".join(problems))
print("floor-smoke: 1,000 subscribers got all 300 publishes once each")
EOF
kill -0 "$server_pid" 2>/dev/null || { echo "floor-smoke: the baseline exited during the run" >&2; exit 1; }
