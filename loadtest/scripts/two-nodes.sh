#!/usr/bin/env bash
# Starts a private redis-server and two clustered ringcast nodes sharing it, waits until both
# nodes are ready and on Redis, runs ringcast-load with the nodes' addresses substituted, then
# stops everything (on any exit).
#
#   loadtest/scripts/two-nodes.sh [SERVE_ARGS...] -- GENERATOR_ARGS...
#
# e.g. loadtest/scripts/two-nodes.sh -- fanout --url '{URLS}' --control '{CTLA}' -n 1000 ...
#
# Redis: a free loopback port, no persistence (--save "" --appendonly no), files in a temp dir.
# Nodes A and B: `ringcast serve --shards SHARDS --no-pin SERVE_ARGS...` (SHARDS default 1), each
# with its own config file: `listen = "127.0.0.1:0"`, `[cluster] redis = ...`, node names
# bench-a and bench-b, one prefix, its own control socket. The generator runs only once both
# readiness lines came and `stats` on each node shows `cluster_up` on every shard.
#
# Substituted in GENERATOR_ARGS: {URLS} (ws://ADDR_A/ws?format=raw,ws://ADDR_B/ws?format=raw),
# {ADDRA} {ADDRB} {PORTA} {PORTB}, {CTLA} {CTLB} (unix:PATH of each control socket), {PIDA}
# {PIDB}, {REDIS} (redis://127.0.0.1:PORT).
#
# Pinning: Redis and both nodes on SERVER_CPU (default 0), the generator on GEN_CPU (default 1).
# PRIO as in with-server.sh: fifo (default, SCHED_FIFO priority 10, needs root), nice (nice
# -20) or none; Redis gets the same as the nodes, or a SCHED_FIFO node would starve it. Three
# SCHED_FIFO processes of one priority on one core do not share it by time slices (each runs
# until it blocks); PRIO=rr (SCHED_RR priority 10) does, at sched_rr_timeslice_ms.
# RINGCAST= and LOAD= override the binaries (default target/release/ringcast and
# target/release/ringcast-load). After the run, the CPU time each of the three server
# processes used while the generator ran goes to stderr (`# cpu: ...`).
set -euo pipefail

serve_extra=()
while [[ $# -gt 0 && "$1" != "--" ]]; do serve_extra+=("$1"); shift; done
[[ $# -gt 0 ]] || { echo "usage: $0 [SERVE_ARGS...] -- GENERATOR_ARGS..." >&2; exit 2; }
shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
ringcast="${RINGCAST:-$root/target/release/ringcast}"
load="${LOAD:-$root/target/release/ringcast-load}"
shards="${SHARDS:-1}"
server_cpu="${SERVER_CPU:-0}"
gen_cpu="${GEN_CPU:-1}"
case "${PRIO:-fifo}" in
  fifo) prio=(chrt -f 10) ;;
  rr) prio=(chrt -r 10) ;;
  nice) prio=(nice -n -20) ;;
  none) prio=() ;;
  *) echo "PRIO must be fifo, rr, nice or none" >&2; exit 2 ;;
esac
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed (readiness checks)" >&2; exit 1; }

dir="$(mktemp -d)"
pids=()
stop_all() {
  local p
  # The nodes first (SIGTERM: a graceful stop), then Redis; SIGKILL what is still there at 10 s.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 200); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.05
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Polls until `check` succeeds, at most 10 s; fails if process $pid exits meanwhile.
wait_for() {
  local what="$1" pid="$2"; shift 2
  for _ in $(seq 1 200); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$what exited" >&2; cat "$dir"/*.err "$dir"/*.out >&2 2>/dev/null; return 1; }
    sleep 0.05
  done
  echo "$what: not ready after 10 s" >&2
  return 1
}

# Redis on a free loopback port (asked of the kernel, then released to redis-server).
rport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${prio[@]}" taskset -c "$server_cpu" redis-server --bind 127.0.0.1 --port "$rport" \
  --save "" --appendonly no --dir "$dir" >"$dir/redis.out" 2>"$dir/redis.err" &
rpid=$!
pids+=("$rpid")
redis_up() {
  python3 - "$rport" <<'EOF'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5)
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
EOF
}
wait_for "redis-server" "$rpid" redis_up

# Whether `stats` on control socket $1 shows the bridge up on every shard.
cluster_up() {
  python3 - "$1" "$shards" <<'EOF'
import json, socket, sys
try:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1)
    s.connect(sys.argv[1])
    s.sendall(b'{"method":"stats"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    up = json.loads(buf)["result"]["total"]["cluster_up"]
    sys.exit(0 if up == int(sys.argv[2]) else 1)
except (OSError, ValueError, KeyError, TypeError):
    sys.exit(1)
EOF
}

declare -A addr pid ctl
for n in a b; do
  cat >"$dir/$n.toml" <<EOF
listen = "127.0.0.1:0"

[control]
listen = ["unix:$dir/c$n.sock"]

[cluster]
redis = "redis://127.0.0.1:$rport"
node = "bench-$n"
prefix = "twonodes"
EOF
  "${prio[@]}" taskset -c "$server_cpu" "$ringcast" serve --config "$dir/$n.toml" \
    --shards "$shards" --no-pin "${serve_extra[@]}" >"$dir/$n.out" 2>"$dir/$n.err" &
  spid=$!
  pids+=("$spid")
  wait_for "node $n" "$spid" grep -q ' ready ' "$dir/$n.out"
  line="$(grep -m1 ' ready ' "$dir/$n.out")"
  addr[$n]="$(sed -E 's/.*listen=([^ ]+).*/\1/' <<<"$line")"
  pid[$n]="$(sed -E 's/.*pid=([0-9]+).*/\1/' <<<"$line")"
  ctl[$n]="$dir/c$n.sock"
  # What the node said up to its readiness line goes with the run's output.
  sed "s/^/# node $n: /" "$dir/$n.err" "$dir/$n.out" >&2
done
for n in a b; do
  wait_for "node $n (cluster_up)" "${pid[$n]}" cluster_up "${ctl[$n]}"
done
echo "# redis 127.0.0.1:$rport pid $rpid; node a ${addr[a]} pid ${pid[a]}; node b ${addr[b]} pid ${pid[b]}; cluster up on both" >&2

urls="ws://${addr[a]}/ws?format=raw,ws://${addr[b]}/ws?format=raw"
args=()
for x in "$@"; do
  x="${x//\{URLS\}/$urls}"
  x="${x//\{ADDRA\}/${addr[a]}}"; x="${x//\{ADDRB\}/${addr[b]}}"
  x="${x//\{PORTA\}/${addr[a]##*:}}"; x="${x//\{PORTB\}/${addr[b]##*:}}"
  x="${x//\{CTLA\}/unix:${ctl[a]}}"; x="${x//\{CTLB\}/unix:${ctl[b]}}"
  x="${x//\{PIDA\}/${pid[a]}}"; x="${x//\{PIDB\}/${pid[b]}}"
  x="${x//\{REDIS\}/redis://127.0.0.1:$rport}"
  args+=("$x")
done

# utime + stime of a process (all threads), in clock ticks.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz="$(getconf CLK_TCK)"
t0="$(date +%s.%N)"
c0=("$(ticks "${pid[a]}")" "$(ticks "${pid[b]}")" "$(ticks "$rpid")")
rc=0
"${prio[@]}" taskset -c "$gen_cpu" "$load" "${args[@]}" || rc=$?
t1="$(date +%s.%N)"
c1=("$(ticks "${pid[a]}")" "$(ticks "${pid[b]}")" "$(ticks "$rpid")")
awk -v hz="$hz" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
  -v a0="${c0[0]}" -v a1="${c1[0]}" -v b0="${c0[1]}" -v b1="${c1[1]}" -v r0="${c0[2]}" -v r1="${c1[2]}" \
  'BEGIN { if (w <= 0) w = 1e-9; printf "# cpu over the generator run (%.1f s wall): node a %.2f s (%.2f core), node b %.2f s (%.2f core), redis %.2f s (%.2f core)\n",
           w, (a1-a0)/hz, (a1-a0)/hz/w, (b1-b0)/hz, (b1-b0)/hz/w, (r1-r0)/hz, (r1-r0)/hz/w }' >&2
exit "$rc"
