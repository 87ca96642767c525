#!/usr/bin/env bash
# Runs one of the user examples (connection tokens, presence, the event stream) against a live
# server with real clients, the PHP parts with the PHP CLI.
#
# usage: bash tests/conformance/users.sh EXAMPLE URL_WS CONTROL_ADDR
#   EXAMPLE       login-timeout, online-users or event-consumer (examples/01-login-timeout,
#                 examples/02-online-users, examples/event-consumer)
#   URL_WS        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
#   CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT (what `serve --control` got)
#
# The server must run with tests/conformance/smoke.toml (its [auth] hs256_secret signs the
# tokens the PHP scripts mint, read from there unless USERS_HS256_SECRET is set; the `lt`,
# `online` and `chat` namespaces; token_refresh_grace_ms = 5000).
#   login-timeout   `php -S` serves examples/01-login-timeout/ twice (logins of 4 s and of 60 s);
#                   lib/browser-login-timeout.cjs drives the page in headless Chromium: three
#                   tabs of a user see the expiry notice, two are closed with 4005, one logs in
#                   again in time and stays; logout.php push (send_user) reaches both tabs of a
#                   user, logout.php disconnect (disconnect_user) closes both tabs of another.
#   online-users    `php -S` serves examples/02-online-users/ (sessions in a scratch directory,
#                   tokens of 5 s);
#                   lib/browser-online-users.cjs drives the page in three browser contexts
#                   (three users): the lists, one join per user (a second tab makes none), one
#                   leave when the user's last tab closes, a reconnect, silent token refreshes.
#   event-consumer  lib/event_consumer.py (Python websockets, test venv) with the PHP consumer
#                   examples/event-consumer/consumer.php: no_consumer without it; two consumers
#                   in one group answer every {"op":"send"} once, publish it to the chat room
#                   and append it to the messages file; no_consumer again once they stop.
# Every wait is a bounded poll (USERS_WAIT_S seconds each, default 20); a driver is stopped
# after USERS_TIMEOUT seconds (default 60) plus 60 for Chromium's start-up. Takes 5-15 s.
#
# Prints one line "EXAMPLE: PASS ..." or "EXAMPLE: FAIL reason" (details on stderr).
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

WORK=""
PHP_PIDS=()
cleanup() {
  local pid
  for pid in "${PHP_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PHP_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# The [auth] hs256_secret of tests/conformance/smoke.toml.
smoke_secret() {
  awk -F'"' '/^\[/ { in_auth = ($0 ~ /^\[auth\]/) } in_auth && /^hs256_secret *=/ { print $2; exit }' \
    "$CONFORMANCE_DIR/smoke.toml"
}

# The copies of ringcast.php in the example directories must stay the same file.
check_helper_copies() {
  local first="$REPO_ROOT/examples/01-login-timeout/ringcast.php" other
  for other in "$REPO_ROOT"/examples/{02-online-users,event-consumer}/ringcast.php; do
    cmp -s "$first" "$other" || { echo "$EXAMPLE: FAIL $other differs from $first"; exit 1; }
  done
}

# start_php NAME DIR [VAR=VALUE...]: `php -S` on a free loopback port serving DIR, with the
# secret, the control address and VAR=VALUE in its environment; sets PHP_URL. Bounded poll for
# its "Development Server (http://127.0.0.1:PORT) started" line.
start_php() {
  local name="$1" dir="$2"
  shift 2
  local log="$WORK/php-$name.log" pid i text re='Development Server \(http://127\.0\.0\.1:([0-9]+)\) started'
  mkdir -p "$WORK/sessions"
  : >"$log"
  # Several workers: tabs log in at the same time, and a lone worker serves one connection at a
  # time (an idle or speculative connection of the browser holds it up).
  env PHP_CLI_SERVER_WORKERS=4 "$@" RINGCAST_HS256_SECRET="$SECRET" RINGCAST_CONTROL="$CONTROL_ADDR" \
    timeout --kill-after=5 "$PHP_LIFETIME_S" php -S 127.0.0.1:0 -t "$dir" \
    -d session.save_path="$WORK/sessions" -d log_errors=1 -d display_errors=0 \
    >"$log" 2>&1 </dev/null &
  pid=$!
  PHP_PIDS+=("$pid")
  for ((i = 0; i < 100; i++)); do
    text="$(cat "$log" 2>/dev/null || true)"
    if [[ "$text" =~ $re ]]; then
      PHP_URL="http://127.0.0.1:${BASH_REMATCH[1]}/"
      log "php -S $name: $PHP_URL ($dir)"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  log "php -S $name did not start:"
  tail -n 20 "$log" >&2
  die "php -S for $dir did not start"
}

# Shows the PHP servers' logs on stderr (a failure's details).
show_php_logs() {
  local f
  for f in "$WORK"/php-*.log; do
    [ -s "$f" ] || continue
    log "$(basename "$f") (last lines):"
    grep -v -E '(Accepted|Closing)$' "$f" | tail -n 15 | sed 's/^/    /' >&2
  done
}

main() {
  [ $# -eq 3 ] || usage
  EXAMPLE="$1"
  CONTROL_ADDR="$3"
  parse_ws_url "$2"
  case "$EXAMPLE" in
    login-timeout | online-users | event-consumer) ;;
    *) die "EXAMPLE must be login-timeout, online-users or event-consumer, got: $EXAMPLE" ;;
  esac
  case "$CONTROL_ADDR" in
    unix:?* | tcp:?*) ;;
    *) die "CONTROL_ADDR must be unix:PATH or tcp:HOST:PORT, got: $CONTROL_ADDR" ;;
  esac
  command -v php >/dev/null || die "php not found (bash tests/conformance/install.sh debian)"
  [ -x "$VENV/bin/python" ] \
    || die "no Python venv at $VENV: run bash tests/conformance/install.sh python"
  [[ "${USERS_TIMEOUT:-60}" =~ ^[0-9]+$ ]] || die "USERS_TIMEOUT must be whole seconds"
  SECRET="${USERS_HS256_SECRET:-$(smoke_secret)}"
  [ ${#SECRET} -ge 32 ] || die "no [auth] hs256_secret of 32+ bytes in $CONFORMANCE_DIR/smoke.toml"
  check_helper_copies

  local limit=$((${USERS_TIMEOUT:-60} + 60)) dir out rc=0
  case "$EXAMPLE" in
    login-timeout) dir="$REPO_ROOT/examples/01-login-timeout" ;;
    online-users) dir="$REPO_ROOT/examples/02-online-users" ;;
    *) dir="$REPO_ROOT/examples/$EXAMPLE" ;;
  esac
  PHP_LIFETIME_S=$((limit + 30))
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-users.XXXXXX")"
  case "$EXAMPLE" in
    login-timeout | online-users)
      ensure_chromium
      ensure_node_tools
      ;;
  esac
  case "$EXAMPLE" in
    login-timeout)
      local short long
      start_php short "$dir" LOGIN_TTL_S=4
      short="$PHP_URL"
      start_php long "$dir" LOGIN_TTL_S=60
      long="$PHP_URL"
      out="$(PYTHON="$VENV/bin/python" NODE_PATH="$NODE_DIR/node_modules" \
        timeout --kill-after=5 "$limit" \
        node "$CONFORMANCE_DIR/lib/browser-login-timeout.cjs" "$WS_URL" "$CONTROL_ADDR" "$short" "$long" \
        </dev/null)" || rc=$?
      ;;
    online-users)
      start_php online "$dir" ONLINE_TTL_S=5
      out="$(PYTHON="$VENV/bin/python" NODE_PATH="$NODE_DIR/node_modules" \
        timeout --kill-after=5 "$limit" \
        node "$CONFORMANCE_DIR/lib/browser-online-users.cjs" "$WS_URL" "$CONTROL_ADDR" "$PHP_URL" \
        </dev/null)" || rc=$?
      ;;
    event-consumer)
      out="$(RINGCAST_HS256_SECRET="$SECRET" timeout --kill-after=5 "$limit" \
        "$VENV/bin/python" "$CONFORMANCE_DIR/lib/event_consumer.py" "$WS_URL" "$CONTROL_ADDR" "$dir" "$WORK" \
        </dev/null)" || rc=$?
      ;;
  esac
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the driver timed out after ${limit}s" ;;
      *) out="FAIL no result (driver exited $rc)" ;;
    esac
  fi
  echo "$EXAMPLE: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "driver printed PASS but exited $rc"; exit 1; } ;;
    *) show_php_logs; exit 1 ;;
  esac
}

main "$@"
