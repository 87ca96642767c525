#!/usr/bin/env bash
# The project's test command: everything that must pass before a change lands.
#
# usage: bash tests/run.sh [PHASE...]          (from any directory)
#   cargo        the Debian packages the tests need (install.sh debian: redis-server, php, ...), a
#                release build of every target, all unit + integration tests (the end-to-end
#                suite once more on the epoll driver), benches compile, and the epoll-floor
#                baseline's smoke run (loadtest/scripts/floor-smoke.sh: its own build, a few
#                seconds, and a 1,000-subscriber fan-out that must lose nothing)
#   conformance  for each driver (io_uring, then epoll): start `ringcast serve --echo --driver D`
#                on a free loopback port, run the Autobahn cases and the real-client smokes
#                (Chromium, Python websockets, Node ws) against /echo, the push smokes on /ws,
#                the control-socket examples (PHP, Python, Node, shell), the recovery example
#                page in Chromium, the user examples (login timeout, online users, event
#                consumer; PHP with Chromium or Python clients), the HTTP listener (`--http`: an
#                HTTP smoke, the real Prometheus scraping /metrics, the dashboard in Chromium under
#                load), the Pusher endpoint with pusher-js and the pusher server SDK, then stop
#                the server with SIGTERM; then the seed examples 03-05, each on a server of its
#                own on the same driver (tests/conformance/seeds.sh)
#   (no PHASE: cargo, then conformance)
#
# Environment (all optional):
#   RINGCAST_BIN         server binary for the conformance phase (default target/release/ringcast)
#   CARGO_TARGET_DIR     honoured: the binary and the reports are then under it
#   DRIVERS              drivers the conformance phase runs on (default "uring epoll")
#   WSTEST=1             also run the original Autobahn runner (wstest 0.8.2, Python 2.7 unpacked
#                        privately from Debian 11 packages; tests/conformance/wstest/) per driver
#   AUTOBAHN_CASES       default "1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.* 12.* 13.*" (see
#                        conformance/autobahn.sh; 12.*/13.* are permessage-deflate, on through
#                        deflate = true in conformance/smoke.toml)
#   RINGCAST_TEST_CACHE  tool cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/ringcast-test)
#   CI=true              no terminal and no standard input are assumed
#   *_LIMIT_S            time limits of the steps, in seconds (defaults below)
#
# Reports: target/conformance/ (server.stdout, server.stderr, autobahn/index.html, ...).
# Prints one line per step, a summary table, and last "steps: N passed, M failed".
# Exit: 0 only if every step passed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

CONF="$REPO_ROOT/tests/conformance"
# cargo resolves a relative CARGO_TARGET_DIR against its working directory, the repository root.
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$REPO_ROOT/$TARGET_DIR"
REPORT_BASE="$TARGET_DIR/conformance"
REPORT_DIR="$REPORT_BASE"
DRIVERS="${DRIVERS:-uring epoll}"
STEP_PREFIX=""     # the driver's name in step names during the conformance phase
# The Python venv that tests/conformance/install.sh fills (kosoku, websockets).
VENV="${RINGCAST_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringcast-test}/venv"
RINGCAST_BIN="${RINGCAST_BIN:-$TARGET_DIR/release/ringcast}"
export AUTOBAHN_CASES="${AUTOBAHN_CASES:-1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.* 12.* 13.*}"
# 12.* and 13.* compress and echo about 11 GB: 2-4 minutes on a 2-core machine.
export AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-1800}"

# Time limits (seconds). A cold release build on a 2-core machine takes minutes, not hours.
BUILD_LIMIT_S="${BUILD_LIMIT_S:-2700}"
TEST_LIMIT_S="${TEST_LIMIT_S:-1800}"
BENCH_LIMIT_S="${BENCH_LIMIT_S:-1800}"
TOOLS_LIMIT_S="${TOOLS_LIMIT_S:-1800}"
READY_LIMIT_S="${READY_LIMIT_S:-30}"
SMOKE_LIMIT_S="${SMOKE_LIMIT_S:-120}"
EXAMPLES_LIMIT_S="${EXAMPLES_LIMIT_S:-300}"
USERS_LIMIT_S="${USERS_LIMIT_S:-180}"
HTTP_LIMIT_S="${HTTP_LIMIT_S:-90}"
PROMETHEUS_LIMIT_S="${PROMETHEUS_LIMIT_S:-300}"
DASHBOARD_LIMIT_S="${DASHBOARD_LIMIT_S:-180}"
SEEDS_LIMIT_S="${SEEDS_LIMIT_S:-240}"
PUSHER_LIMIT_S="${PUSHER_LIMIT_S:-90}"
STOP_LIMIT_S="${STOP_LIMIT_S:-20}"
# Hard bound on the server's life, whatever happens to this script.
SERVER_LIFETIME_S="${SERVER_LIFETIME_S:-3600}"

# The server under test. Heartbeats must be off on the echo endpoint (Autobahn's runner counts an
# unsolicited ping as a case event), and its limits must let 16 MiB messages through (cases 9.*).
# The control socket lives with the reports (never the shared default /tmp/ringcast.sock); the
# HTTP listener (metrics, health, the HTTP API, the dashboard) is on a free loopback port too.
# serve_args DRIVER: the arguments for one driver's run (its reports in its own directory).
serve_args() {
  SERVE_ARGS=(serve --driver "$1" --listen 127.0.0.1:0 --shards 2 --echo
    --config tests/conformance/smoke.toml --control "unix:$REPORT_DIR/control.sock"
    --http 127.0.0.1:0)
}
SHARDS=2

log() { echo "[run.sh] $*" >&2; }

# ----- step bookkeeping ------------------------------------------------------------------------

STEP_NAMES=()
STEP_VERDICTS=()
STEP_SECS=()
CURRENT_PID=""     # the running step's `timeout` process (its own process group)
CURRENT_STEP=""    # ... and its name and start time, for an interrupt
CURRENT_T0=0
SERVER_WRAPPER=""  # the `timeout` process that bounds the server's life
SERVER_PID=""      # the server itself, from its readiness line
PORT=""
HTTP_PORT=""       # its HTTP listener, from the line before the readiness line

record() { # record NAME VERDICT SECONDS
  STEP_NAMES+=("$STEP_PREFIX$1")
  STEP_VERDICTS+=("$2")
  STEP_SECS+=("$3")
  log "<== $STEP_PREFIX$1: $2 (${3}s)"
}

verdict_of() { # verdict_of STATUS LIMIT
  case "$1" in
    0) echo ok ;;
    124 | 137) echo "FAILED: timed out after ${2}s" ;;
    *) echo "FAILED: exit $1" ;;
  esac
}

# step NAME LIMIT_S COMMAND...: run an external command bounded by LIMIT_S, record the verdict,
# return its status. It runs in the background so that an interrupt of this script reaches it.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0=$SECONDS rc=0
  log "==> $name (limit ${limit}s): $*"
  timeout --kill-after=30 "$limit" "$@" </dev/null &
  CURRENT_PID=$!
  CURRENT_STEP="$name"
  CURRENT_T0=$t0
  wait "$CURRENT_PID" || rc=$?
  CURRENT_PID=""
  record "$name" "$(verdict_of "$rc" "$limit")" $((SECONDS - t0))
  return "$rc"
}

# A process exists and is not a zombie.
proc_running() {
  local stat state
  [ -n "$1" ] && stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  state="${stat##*) }"
  [ "${state%% *}" != Z ]
}

# Bounded poll: wait up to SECONDS for PID to be gone.
wait_gone() { # wait_gone PID SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    proc_running "$1" || return 0
    sleep 0.1
  done
  ! proc_running "$1"
}

print_summary() {
  local i passed=0 failed=0
  log "summary:"
  for i in "${!STEP_NAMES[@]}"; do
    printf '  %-16s %6ss  %s\n' "${STEP_NAMES[$i]}" "${STEP_SECS[$i]}" "${STEP_VERDICTS[$i]}"
    if [ "${STEP_VERDICTS[$i]}" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  done
  [ -z "$CONFORMANCE_RAN" ] || log "reports: $REPORT_BASE"
  log "total ${SECONDS}s"
  echo "steps: $passed passed, $failed failed"
}

any_failed() {
  local v
  for v in "${STEP_VERDICTS[@]}"; do
    [ "$v" = ok ] || return 0
  done
  return 1
}

# Runs on every exit: nothing this script started may outlive it.
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CURRENT_PID" ]; then
    log "stopping the running step $CURRENT_STEP"
    kill -TERM "$CURRENT_PID" 2>/dev/null || true # timeout passes it on to the step's process group
    wait_gone "$CURRENT_PID" 40 || kill -KILL "$CURRENT_PID" 2>/dev/null || true
    record "$CURRENT_STEP" "FAILED: interrupted" $((SECONDS - CURRENT_T0))
  fi
  if proc_running "$SERVER_PID" || proc_running "$SERVER_WRAPPER"; then
    log "stopping the server left running"
    kill -TERM "$SERVER_PID" "$SERVER_WRAPPER" 2>/dev/null || true
    wait_gone "$SERVER_WRAPPER" "$STOP_LIMIT_S" || kill -KILL "$SERVER_PID" "$SERVER_WRAPPER" 2>/dev/null || true
  fi
  if [ "$rc" = 0 ] && [ "$FAILED_STEPS" != 0 ]; then rc=1; fi
  # The last line must never read "0 failed" when the run failed.
  if [ "$rc" != 0 ] && ! any_failed; then
    record run.sh "FAILED: stopped with status $rc" 0
  fi
  print_summary
  exit "$rc"
}
FAILED_STEPS=0
CONFORMANCE_RAN=""
trap on_exit EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ----- phase 1: cargo --------------------------------------------------------------------------

phase_cargo() {
  log "$(cargo --version), $(rustc --version)"
  # The integration tests start real redis-server processes (tests/redis.rs, tests/cluster.rs):
  # on a fresh machine the Debian packages come first (apt-get as root; a no-op when present).
  step debian-packages "$TOOLS_LIMIT_S" bash "$CONF/install.sh" debian
  step build "$BUILD_LIMIT_S" cargo build --release --workspace --all-targets
  step test "$TEST_LIMIT_S" cargo test --release --workspace
  step test-epoll "$TEST_LIMIT_S" env RINGCAST_DRIVER=epoll cargo test --release --test e2e
  step bench-build "$BENCH_LIMIT_S" cargo bench --workspace --no-run
  step floor-smoke "$SMOKE_LIMIT_S" bash loadtest/scripts/floor-smoke.sh \
    "$TARGET_DIR/release/ringcast-load"
}

# ----- phase 2: conformance --------------------------------------------------------------------

# Start the server and wait for its readiness line, which its HTTP listener's line precedes:
#   ringcast http listen=127.0.0.1:PORT
#   ringcast ready listen=127.0.0.1:PORT shards=N pid=PID
# Sets PORT, HTTP_PORT and SERVER_PID. Only complete lines count (`read` skips a line still
# being written).
start_server() {
  local t0=$SECONDS out="$REPORT_DIR/server.stdout" err="$REPORT_DIR/server.stderr"
  local line="" http_line="" l i rc=0 re='^ringcast ready listen=127\.0\.0\.1:([0-9]+) shards=([0-9]+) pid=([0-9]+)$'
  local http_re='^ringcast http listen=127\.0\.0\.1:([0-9]+)$'
  log "==> server-start (limit ${READY_LIMIT_S}s): $RINGCAST_BIN ${SERVE_ARGS[*]}"
  if [ ! -x "$RINGCAST_BIN" ]; then
    log "no server binary at $RINGCAST_BIN"
    record server-start "FAILED: no binary" 0
    return 1
  fi
  : >"$out"
  : >"$err"
  timeout --kill-after=10 "$SERVER_LIFETIME_S" "$RINGCAST_BIN" "${SERVE_ARGS[@]}" \
    >"$out" 2>"$err" </dev/null &
  SERVER_WRAPPER=$!
  for ((i = 0; i < READY_LIMIT_S * 10; i++)); do
    http_line=""
    while IFS= read -r l; do
      if [[ "$l" =~ $http_re ]]; then http_line="$l"; fi
      if [[ "$l" =~ $re ]]; then line="$l"; break; fi
    done <"$out"
    [ -z "$line" ] || break
    proc_running "$SERVER_WRAPPER" || break
    sleep 0.1
  done
  if [ -z "$line" ]; then
    if proc_running "$SERVER_WRAPPER"; then
      log "no readiness line on stdout within ${READY_LIMIT_S}s"
    else
      wait "$SERVER_WRAPPER" || rc=$?
      log "the server exited with status $rc before it was ready"
    fi
    log "server stdout:" && tail -n 20 "$out" >&2
    log "server stderr:" && tail -n 40 "$err" >&2
    record server-start "FAILED: not ready" $((SECONDS - t0))
    return 1
  fi
  HTTP_PORT=""
  if [[ "$http_line" =~ $http_re ]]; then
    HTTP_PORT="${BASH_REMATCH[1]}"
    log "$http_line"
  fi
  [[ "$line" =~ $re ]]
  PORT="${BASH_REMATCH[1]}"
  SERVER_PID="${BASH_REMATCH[3]}"
  log "$line"
  local problem=""
  if [ -z "$HTTP_PORT" ]; then
    problem="no line 'ringcast http listen=127.0.0.1:PORT' before the readiness line (asked for --http)"
  elif [ "${BASH_REMATCH[2]}" != "$SHARDS" ]; then
    problem="readiness line says shards=${BASH_REMATCH[2]}, asked for $SHARDS"
  elif [ "$(awk '/^PPid:/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null)" != "$SERVER_WRAPPER" ]; then
    problem="readiness line names pid $SERVER_PID, which is not the process started here"
  fi
  if [ -n "$problem" ]; then
    log "$problem"
    record server-start "FAILED: $problem" $((SECONDS - t0))
    return 1
  fi
  record server-start ok $((SECONDS - t0))
}

# SIGTERM, then a bounded wait. Fails if the server died earlier, did not exit in time, or
# crashed on the way out. Exit status 0 is a graceful shutdown; 143 is SIGTERM's default action.
stop_server() {
  local t0=$SECONDS rc=0 verdict=ok ready_lines http_lines
  log "==> server-stop (limit ${STOP_LIMIT_S}s): SIGTERM to pid $SERVER_PID"
  if ! proc_running "$SERVER_PID"; then
    wait "$SERVER_WRAPPER" || rc=$?
    verdict="FAILED: the server exited during the tests (status $rc)"
  else
    kill -TERM "$SERVER_PID"
    if ! wait_gone "$SERVER_PID" "$STOP_LIMIT_S"; then
      kill -KILL "$SERVER_PID" 2>/dev/null || true
      verdict="FAILED: still running ${STOP_LIMIT_S}s after SIGTERM (killed)"
    fi
    wait "$SERVER_WRAPPER" || rc=$?
    case "$rc" in
      0) log "the server shut down and exited 0" ;;
      143) log "the server ended by SIGTERM's default action (status 143), without a graceful shutdown" ;;
      *) [ "$verdict" != ok ] || verdict="FAILED: exit status $rc after SIGTERM" ;;
    esac
  fi
  ready_lines="$(grep -c '^ringcast ready ' "$REPORT_DIR/server.stdout" || true)"
  http_lines="$(grep -c '^ringcast http ' "$REPORT_DIR/server.stdout" || true)"
  if [ "$verdict" = ok ] && [ "$ready_lines" != 1 ]; then
    verdict="FAILED: $ready_lines readiness lines on stdout, expected exactly 1"
  elif [ "$verdict" = ok ] && [ "$http_lines" != 1 ]; then
    verdict="FAILED: $http_lines 'ringcast http' lines on stdout, expected exactly 1"
  fi
  if [ "$verdict" != ok ]; then
    log "server stderr (last lines; all in $REPORT_DIR/server.stderr):"
    tail -n 40 "$REPORT_DIR/server.stderr" >&2
  fi
  SERVER_PID=""
  SERVER_WRAPPER=""
  HTTP_PORT=""
  record server-stop "$verdict" $((SECONDS - t0))
  [ "$verdict" = ok ]
}

# wait_for_driver_line DRIVER: the server's stderr names the driver of every shard.
wait_for_driver_line() {
  local want="driver $1" t0=$SECONDS n
  [ "$1" != uring ] || want="driver io_uring"
  n="$(grep -c "shard [0-9]*: $want" "$REPORT_DIR/server.stderr" || true)"
  if [ "$n" = "$SHARDS" ]; then
    record driver ok $((SECONDS - t0))
    return 0
  fi
  log "expected $SHARDS lines 'shard N: $want' on the server's stderr, found $n"
  tail -n 20 "$REPORT_DIR/server.stderr" >&2
  record driver "FAILED: not running on $1" $((SECONDS - t0))
  return 1
}

# A conformance step that fails is recorded and the next one still runs, so that one run shows
# every failure; the phase fails at the end.
check() {
  step "$@" || FAILED_STEPS=$((FAILED_STEPS + 1))
}

echo_smokes() {
  local url="ws://127.0.0.1:$PORT/echo" client
  check autobahn $((AUTOBAHN_TIMEOUT + 60)) bash "$CONF/autobahn.sh" "$url" "$REPORT_DIR/autobahn"
  if [ "${WSTEST:-}" = 1 ]; then
    check autobahn-wstest $((AUTOBAHN_TIMEOUT + 600)) bash "$CONF/wstest/autobahn-wstest.sh" \
      "$url" "$REPORT_DIR/autobahn-wstest"
  fi
  for client in browser python node; do
    check "smoke-$client" "$SMOKE_LIMIT_S" bash "$CONF/smoke.sh" "$client" "$url"
  done
}

# push_smoke CLIENT URL EXPECT PUBLISHER...: start CLIENT in push mode on URL, wait (bounded)
# until its socket is open, run PUBLISHER (a command or function; it must bound its own external
# commands with timeout), then wait for the client to receive EXPECT messages and close cleanly.
push_smoke() {
  local client="$1" url="$2" expect="$3"
  shift 3
  local name="push-$client" open_file="$REPORT_DIR/push-$client.open" t0=$SECONDS rc=0 prc=0 i
  rm -f "$open_file"
  log "==> $name (limit ${SMOKE_LIMIT_S}s): $url, expecting $expect message(s) after: $*"
  SMOKE_MODE=push SMOKE_EXPECT="$expect" SMOKE_OPEN_FILE="$open_file" \
    timeout --kill-after=10 "$SMOKE_LIMIT_S" bash "$CONF/smoke.sh" "$client" "$url" </dev/null &
  CURRENT_PID=$!
  CURRENT_STEP="$name"
  CURRENT_T0=$t0
  for ((i = 0; i < SMOKE_LIMIT_S * 10; i++)); do
    if [ -s "$open_file" ] || ! proc_running "$CURRENT_PID"; then break; fi
    sleep 0.1
  done
  if [ -s "$open_file" ]; then
    "$@" </dev/null || prc=$?
    [ "$prc" = 0 ] || log "$name: the publisher failed with status $prc"
  fi
  wait "$CURRENT_PID" || rc=$?
  CURRENT_PID=""
  [ "$rc" != 0 ] || rc="$prc"
  record "$name" "$(verdict_of "$rc" "$SMOKE_LIMIT_S")" $((SECONDS - t0))
  [ "$rc" = 0 ] || FAILED_STEPS=$((FAILED_STEPS + 1))
}

# ---------------------------------------------------------------------------------------------
# Push-mode smokes against /ws: the real subscribe -> publish -> deliver path with the same three
# clients. Each client subscribes at connect (`?channel=smoke:news&format=raw`: payloads only)
# and must receive 3 messages; the publisher is a /ws client publishing to the `smoke`
# namespace (client publish is enabled for it in tests/conformance/smoke.toml). It publishes 20
# times, 100 ms apart, because a subscription made at connect reaches the channel's owner shard
# a moment after the socket opens. A later change adds the control-socket publisher.
# ---------------------------------------------------------------------------------------------
publish_smoke_news() {
  timeout --kill-after=5 30 "$VENV/bin/python" "$CONF/lib/publish_ws.py" \
    "ws://127.0.0.1:$PORT/ws" smoke:news 20 0.1
}

push_smokes() {
  local client
  for client in browser python node; do
    push_smoke "$client" "ws://127.0.0.1:$PORT/ws?channel=smoke:news&format=raw" 3 publish_smoke_news
  done
  # Chromium with permessage-deflate on /ws: compressed pushes of a 2 KiB JSON document that
  # must decode to the published text (tests/conformance/deflate-push.sh).
  check deflate-push "$SMOKE_LIMIT_S" bash "$CONF/deflate-push.sh" \
    "ws://127.0.0.1:$PORT/ws" "unix:$REPORT_DIR/control.sock"
  # The copy-paste publishers in examples/ (PHP, Python, Node, shell with socat and with nc),
  # each through the control socket to a real /ws subscriber that must get exactly its message.
  check examples "$EXAMPLES_LIMIT_S" bash "$CONF/examples.sh" \
    "ws://127.0.0.1:$PORT/ws" "unix:$REPORT_DIR/control.sock"
  # The copy-paste browser page examples/recover/ in Chromium: it must reconnect after the server
  # closes it and recover what was published meanwhile, or say it could not (`recover` namespace
  # of tests/conformance/smoke.toml).
  check recover "$SMOKE_LIMIT_S" bash "$CONF/recover.sh" \
    "ws://127.0.0.1:$PORT/ws" "unix:$REPORT_DIR/control.sock"
  # The user examples with their PHP scripts: examples/01-login-timeout/ and examples/02-online-users/
  # in Chromium, examples/event-consumer/ with Python websockets clients (connection tokens,
  # presence news, the event stream; [auth] and the `lt`, `online`, `chat` namespaces of
  # tests/conformance/smoke.toml).
  local example
  for example in login-timeout online-users event-consumer; do
    check "$example" "$USERS_LIMIT_S" bash "$CONF/users.sh" "$example" \
      "ws://127.0.0.1:$PORT/ws" "unix:$REPORT_DIR/control.sock"
  done
}

# The HTTP listener (`--http 127.0.0.1:0`): an HTTP smoke (every endpoint, HEAD, pipelining,
# publish to a /ws subscriber, the refusals; tests/conformance/http.sh), the real Prometheus
# scraping /metrics every second and promtool's lint of it (prometheus.sh, its files in
# REPORT_DIR/prometheus/), and the dashboard in Chromium under load (dashboard.sh, the
# screenshot REPORT_DIR/dashboard.png).
http_checks() {
  local http="127.0.0.1:$HTTP_PORT" ws="ws://127.0.0.1:$PORT/ws"
  check http "$HTTP_LIMIT_S" bash "$CONF/http.sh" "$http" "$ws" "$SHARDS"
  check prometheus "$PROMETHEUS_LIMIT_S" bash "$CONF/prometheus.sh" "$http" "$ws" "$SHARDS" "$REPORT_DIR"
  check dashboard "$DASHBOARD_LIMIT_S" bash "$CONF/dashboard.sh" "$http" "$ws" "$REPORT_DIR"
  # The Pusher endpoint with pusher-js and the pusher server SDK (the [[pusher.apps]] of
  # tests/conformance/smoke.toml; tests/conformance/pusher.sh).
  check pusher "$PUSHER_LIMIT_S" bash "$CONF/pusher.sh" "$http" "$ws"
}

# The steps that start a server of their own on this driver: the seed scenarios
# examples/03-group-chat, 04-push-every-second and 05-task-progress, each from the example's
# ringcast.toml, with its PHP backend (and a private redis-server for 05), its page in Chromium
# and Node clients (tests/conformance/seeds.sh; 01 and 02 are the login-timeout and
# online-users steps above); and the Pusher webhooks (tests/conformance/pusher-webhooks.sh).
own_server_steps() {
  local seed
  for seed in group-chat push-every-second task-progress; do
    check "$seed" "$SEEDS_LIMIT_S" bash "$CONF/seeds.sh" "$seed" "$1"
  done
  # Pusher webhooks on a server of its own, checked by the pusher SDK's own validation.
  check pusher-webhooks "$PUSHER_LIMIT_S" bash "$CONF/pusher-webhooks.sh" "$1"
}

phase_conformance() {
  CONFORMANCE_RAN=1
  rm -rf "$REPORT_BASE"
  mkdir -p "$REPORT_BASE"
  step tools "$TOOLS_LIMIT_S" bash "$CONF/install.sh" debian python node chromium
  local driver
  for driver in $DRIVERS; do
    REPORT_DIR="$REPORT_BASE/$driver"
    STEP_PREFIX="$driver:"
    mkdir -p "$REPORT_DIR"
    serve_args "$driver"
    if start_server; then
      # The server must say which driver it runs on: a silent fallback would test the wrong one.
      if ! wait_for_driver_line "$driver"; then
        FAILED_STEPS=$((FAILED_STEPS + 1))
      fi
      echo_smokes
      push_smokes
      http_checks
      stop_server || FAILED_STEPS=$((FAILED_STEPS + 1))
    else
      FAILED_STEPS=$((FAILED_STEPS + 1))
    fi
    own_server_steps "$driver"
    STEP_PREFIX=""
  done
  [ "$FAILED_STEPS" = 0 ]
}

main() {
  local phases=("$@") p
  [ ${#phases[@]} -gt 0 ] || phases=(cargo conformance)
  for p in "${phases[@]}"; do
    case "$p" in
      cargo | conformance) ;;
      *) log "unknown phase: $p (phases: cargo conformance)"; exit 2 ;;
    esac
  done
  [ "${CI:-}" != true ] || exec </dev/null
  for p in "${phases[@]}"; do
    log "phase $p"
    "phase_$p"
  done
  log "all steps passed"
}

main "$@"
