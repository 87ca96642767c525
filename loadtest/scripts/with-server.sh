#!/usr/bin/env bash
# Starts a server, waits for its readiness line (`... ready listen=ADDR ... pid=PID`), runs
# ringcast-load against it with {PORT}, {ADDR} and {PID} substituted, then stops the server.
#
#   loadtest/scripts/with-server.sh SERVER_CMD... -- GENERATOR_ARGS...
#
# Pinning: the server runs on SERVER_CPU (default 0), the generator on GEN_CPU (default 1).
# PRIO=fifo (default) runs both under SCHED_FIFO priority 10 (needs root; the kernel's RT
# throttling still leaves 5% of each core to others) so that other work on a shared machine
# does not preempt them mid-run; PRIO=nice uses nice -20; PRIO=none changes nothing.
# LOAD=path/to/ringcast-load overrides the generator binary (default target/release).
set -euo pipefail

server=()
while [[ $# -gt 0 && "$1" != "--" ]]; do server+=("$1"); shift; done
[[ $# -gt 0 ]] || { echo "usage: $0 SERVER_CMD... -- GENERATOR_ARGS..." >&2; exit 2; }
shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
load="${LOAD:-$root/target/release/ringcast-load}"
server_cpu="${SERVER_CPU:-0}"
gen_cpu="${GEN_CPU:-1}"
case "${PRIO:-fifo}" in
  fifo) prio=(chrt -f 10) ;;
  nice) prio=(nice -n -20) ;;
  none) prio=() ;;
  *) echo "PRIO must be fifo, nice or none" >&2; exit 2 ;;
esac

out="$(mktemp)"
"${prio[@]}" taskset -c "$server_cpu" "${server[@]}" >"$out" 2>"$out.err" &
spid=$!
trap 'kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; rm -f "$out" "$out.err"' EXIT
# Wait for the readiness line (at most 10 s), never a fixed sleep.
for _ in $(seq 1 200); do
  grep -q ' ready ' "$out" && break
  kill -0 "$spid" 2>/dev/null || { echo "server exited:" >&2; cat "$out" "$out.err" >&2; exit 1; }
  sleep 0.05
done
line="$(grep -m1 ' ready ' "$out")" || { echo "no readiness line from the server" >&2; exit 1; }
addr="$(sed -E 's/.*listen=([^ ]+).*/\1/' <<<"$line")"
pid="$(sed -E 's/.*pid=([0-9]+).*/\1/' <<<"$line")"
port="${addr##*:}"
# Everything the server said up to its readiness line (a memory budget, warnings) goes with the
# run's output: it belongs to the conditions of the figures.
sed 's/^/# server: /' "$out.err" "$out" >&2

args=()
for a in "$@"; do
  a="${a//\{PORT\}/$port}"; a="${a//\{ADDR\}/$addr}"; a="${a//\{PID\}/$pid}"
  args+=("$a")
done
"${prio[@]}" taskset -c "$gen_cpu" "$load" "${args[@]}"
