#!/usr/bin/env bash
# Runs one of the seed examples (examples/03-group-chat, 04-push-every-second,
# 05-task-progress) end to end on a server of its own, started the way the example's README
# says (its own ringcast.toml), with its PHP backend, its page in headless Chromium and, where
# a scenario needs more users, Node `ws` or Python clients.
#
# usage: bash tests/conformance/seeds.sh EXAMPLE [DRIVER]
#   EXAMPLE  group-chat, push-every-second or task-progress
#   DRIVER   uring, epoll or auto (default auto): the server's --driver
#
# What changes from the README's commands, and why: the server listens on a free loopback port
# (`--listen 127.0.0.1:0`), its control socket is in a scratch directory, it runs two shards
# (cross-shard delivery is part of every check), and a private redis-server on a free port
# stands in for the one on 6379 (task-progress; the config copy names that port); group-chat
# pings every second instead of every 55 s (a copy of its config).
#   group-chat         two worker.php processes (one consumer group) behind the page in two
#                      browser contexts (two users) and a Node client; lib/seed-group-chat.cjs
#   push-every-second  ticker.php, the page and 40 Node clients; SIGTERM at the end, after which
#                      the server must exit 0 by itself; lib/seed-push-every-second.cjs
#   task-progress      redis-server, intake.php and worker.php (php-redis), the page;
#                      lib/seed-task-progress.cjs
# Every wait is a bounded poll (USERS_WAIT_S seconds, default 20); the driver is stopped after
# SEEDS_TIMEOUT seconds (default 90).
#
# Environment: RINGCAST_BIN (default target/release/ringcast), CARGO_TARGET_DIR.
# Prints one line "EXAMPLE: PASS ..." or "EXAMPLE: FAIL reason" (details on stderr).
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

WORK=""
PIDS=()         # background helpers (php -S, workers, redis-server), killed at exit
SERVER_WRAPPER=""
cleanup() {
  local pid
  [ -z "$SERVER_WRAPPER" ] || kill "$SERVER_WRAPPER" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "$SERVER_WRAPPER" ] || wait "$SERVER_WRAPPER" 2>/dev/null || true
  [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# A free TCP port on 127.0.0.1 (the kernel picks it; a race with another process is possible
# but harmless on a test machine: the start-up then fails and says so).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_line FILE REGEX WHAT: bounded poll (15 s) for a line of FILE matching REGEX; sets
# MATCH to the line.
wait_for_line() {
  local file="$1" re="$2" what="$3" i l
  touch "$file"
  for ((i = 0; i < 150; i++)); do
    while IFS= read -r l; do
      if [[ "$l" =~ $re ]]; then MATCH="$l"; return 0; fi
    done <"$file"
    sleep 0.1
  done
  log "no $what within 15 s; $file:"
  tail -n 20 "$file" >&2
  return 1
}

# start_server CONFIG: the example's server; sets WS_URL, CONTROL_ADDR, SERVER_PID.
start_server() {
  local config="$1" re='^ringcast ready listen=127\.0\.0\.1:([0-9]+) shards=([0-9]+) pid=([0-9]+)$'
  CONTROL_ADDR="unix:$WORK/control.sock"
  timeout --kill-after=10 "$LIFETIME_S" "$RINGCAST_BIN" serve --config "$config" --driver "$DRIVER" \
    --listen 127.0.0.1:0 --shards 2 --control "$CONTROL_ADDR" \
    >"$WORK/server.stdout" 2>"$WORK/server.stderr" </dev/null &
  SERVER_WRAPPER=$!
  wait_for_line "$WORK/server.stdout" "$re" "readiness line from the server" \
    || { tail -n 20 "$WORK/server.stderr" >&2; die "the server did not start"; }
  [[ "$MATCH" =~ $re ]]
  WS_URL="ws://127.0.0.1:${BASH_REMATCH[1]}/ws"
  SERVER_PID="${BASH_REMATCH[3]}"
  log "server pid $SERVER_PID on $WS_URL ($DRIVER), control $CONTROL_ADDR"
}

# start_php_server DIR: `php -S` on a free port serving DIR; sets PAGE_URL.
start_php_server() {
  local dir="$1" re='Development Server \(http://127\.0\.0\.1:([0-9]+)\) started'
  env PHP_CLI_SERVER_WORKERS=4 RINGCAST_CONTROL="$CONTROL_ADDR" RINGCAST_HS256_SECRET="${SECRET:-}" \
    GROUP_CHAT_DATA="${DATA_DIR:-}" timeout --kill-after=5 "$LIFETIME_S" \
    php -S 127.0.0.1:0 -t "$dir" -d log_errors=1 -d display_errors=0 \
    >"$WORK/php-server.log" 2>&1 </dev/null &
  PIDS+=($!)
  wait_for_line "$WORK/php-server.log" "$re" "php -S start line" || die "php -S did not start"
  [[ "$MATCH" =~ $re ]]
  PAGE_URL="http://127.0.0.1:${BASH_REMATCH[1]}/"
}

# start_redis: a private redis-server on a free port (no persistence); sets REDIS_PORT.
start_redis() {
  command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
  REDIS_PORT="$(free_port)"
  timeout --kill-after=5 "$LIFETIME_S" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 </dev/null &
  PIDS+=($!)
  wait_for_line "$WORK/redis.log" 'Ready to accept connections' "redis-server start" \
    || die "redis-server did not start"
}

# A long-running PHP backend process of the example, logging to $WORK/NAME.log.
start_php_process() {
  local name="$1"
  shift
  env RINGCAST_CONTROL="$CONTROL_ADDR" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  PIDS+=($!)
}

show_logs() {
  local f
  for f in "$WORK"/*.log "$WORK/server.stderr"; do
    [ -s "$f" ] || continue
    log "$(basename "$f") (last lines):"
    grep -v -E '(Accepted|Closing)$' "$f" | tail -n 15 | sed 's/^/    /' >&2
  done
}

main() {
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
  EXAMPLE="$1"
  DRIVER="${2:-auto}"
  local dir
  case "$EXAMPLE" in
    group-chat) dir="$REPO_ROOT/examples/03-group-chat" ;;
    push-every-second) dir="$REPO_ROOT/examples/04-push-every-second" ;;
    task-progress) dir="$REPO_ROOT/examples/05-task-progress" ;;
    *) die "EXAMPLE must be group-chat, push-every-second or task-progress, got: $EXAMPLE" ;;
  esac
  case "$DRIVER" in uring | epoll | auto) ;; *) die "DRIVER must be uring, epoll or auto" ;; esac
  local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  [[ "$target" == /* ]] || target="$REPO_ROOT/$target"
  RINGCAST_BIN="${RINGCAST_BIN:-$target/release/ringcast}"
  [ -x "$RINGCAST_BIN" ] || die "no server binary at $RINGCAST_BIN (cargo build --release)"
  command -v php >/dev/null || die "php not found (bash tests/conformance/install.sh debian)"
  [[ "${SEEDS_TIMEOUT:-90}" =~ ^[0-9]+$ ]] || die "SEEDS_TIMEOUT must be whole seconds"
  local limit=$((${SEEDS_TIMEOUT:-90} + 60)) out rc=0
  LIFETIME_S=$((limit + 60))
  ensure_chromium
  ensure_node_tools
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-seed.XXXXXX")"
  # The ringcast.php copies must stay the same file in every example that has one.
  local first="$REPO_ROOT/examples/01-login-timeout/ringcast.php" other
  for other in "$REPO_ROOT"/examples/*/ringcast.php; do
    cmp -s "$first" "$other" || { echo "$EXAMPLE: FAIL $other differs from $first"; exit 1; }
  done

  local node_env=(env NODE_PATH="$NODE_DIR/node_modules" CHROMIUM="$CHROMIUM" PYTHON="${VENV}/bin/python")
  case "$EXAMPLE" in
    push-every-second)
      start_server "$dir/ringcast.toml"
      start_php_server "$dir"
      out="$("${node_env[@]}" timeout --kill-after=5 "$limit" node "$CONFORMANCE_DIR/lib/seed-push-every-second.cjs" \
        "$WS_URL" "$CONTROL_ADDR" "$PAGE_URL" "$SERVER_PID" "$dir" </dev/null)" || rc=$?
      ;;
    group-chat)
      SECRET="$(awk -F'"' '/^hs256_secret *=/ { print $2; exit }' "$dir/ringcast.toml")"
      DATA_DIR="$WORK/data"
      mkdir -p "$DATA_DIR"
      cp "$dir/data/"*.json "$DATA_DIR/"
      # 1 s pings instead of 55 s, so that the heartbeat check takes seconds.
      sed 's/^ping_interval_ms = 55000$/ping_interval_ms = 1000/' "$dir/ringcast.toml" >"$WORK/ringcast.toml"
      grep -q '^ping_interval_ms = 1000$' "$WORK/ringcast.toml" || die "no ping_interval_ms = 55000 in $dir/ringcast.toml"
      start_server "$WORK/ringcast.toml"
      start_php_server "$dir"
      start_php_process worker-1 GROUP_CHAT_DATA="$DATA_DIR" WORKER_NAME=worker-1 php "$dir/worker.php"
      start_php_process worker-2 GROUP_CHAT_DATA="$DATA_DIR" WORKER_NAME=worker-2 php "$dir/worker.php"
      wait_for_line "$WORK/worker-1.log" 'ready' "worker-1 ready" || die "worker.php did not start"
      wait_for_line "$WORK/worker-2.log" 'ready' "worker-2 ready" || die "worker.php did not start"
      out="$("${node_env[@]}" timeout --kill-after=5 "$limit" node "$CONFORMANCE_DIR/lib/seed-group-chat.cjs" \
        "$WS_URL" "$CONTROL_ADDR" "$PAGE_URL" "$DATA_DIR" "$WORK" </dev/null)" || rc=$?
      ;;
    task-progress)
      start_redis
      sed "s#redis://127.0.0.1:6379#redis://127.0.0.1:$REDIS_PORT#" "$dir/ringcast.toml" >"$WORK/ringcast.toml"
      grep -q "127.0.0.1:$REDIS_PORT" "$WORK/ringcast.toml" || die "no redis://127.0.0.1:6379 in $dir/ringcast.toml"
      start_server "$WORK/ringcast.toml"
      start_php_server "$dir"
      start_php_process intake REDIS_PORT="$REDIS_PORT" php "$dir/intake.php"
      start_php_process worker REDIS_PORT="$REDIS_PORT" TASK_MS=100 php "$dir/worker.php"
      wait_for_line "$WORK/intake.log" 'ready' "intake.php ready" || die "intake.php did not start"
      wait_for_line "$WORK/worker.log" 'ready' "worker.php ready" || die "worker.php did not start"
      out="$("${node_env[@]}" timeout --kill-after=5 "$limit" node "$CONFORMANCE_DIR/lib/seed-task-progress.cjs" \
        "$WS_URL" "$CONTROL_ADDR" "$PAGE_URL" "$REDIS_PORT" </dev/null)" || rc=$?
      ;;
  esac
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the driver timed out after ${limit}s" ;;
      *) out="FAIL no result (driver exited $rc)" ;;
    esac
  fi
  # The server: still running (stop it now, it must exit 0) or stopped by the driver's SIGTERM.
  local status=0 i
  if [[ "$out" == PASS* ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    wait "$SERVER_WRAPPER" || status=$?
    SERVER_WRAPPER=""
    [ "$status" = 0 ] || out="FAIL the server exited with status $status after SIGTERM"
  fi
  echo "$EXAMPLE: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "driver printed PASS but exited $rc"; exit 1; } ;;
    *) show_logs; exit 1 ;;
  esac
}

main "$@"
