#!/usr/bin/env bash
# The Pusher Channels endpoint with the real npm clients: pusher-js (the client Laravel Echo
# wraps) on /app/{key} and the `pusher` server SDK on the HTTP API, signing its own requests.
#
# usage: bash tests/conformance/pusher.sh HTTP_ADDR URL_WS
#   HTTP_ADDR  the server's HTTP listener, 127.0.0.1:PORT (its `ringcast http listen=` line)
#   URL_WS     any ws:// URL of the server (only its host and port are used)
#
# The server must run with tests/conformance/smoke.toml: the app is its first [[pusher.apps]]
# entry (id, key and secret are read from there). lib/pusher-check.cjs checks: connection and
# socket ids; public, private and presence subscriptions authorized by the SDK's
# authorizeChannel; member_added / member_removed between two clients; an event triggered by the
# SDK arrives with the exact data; socket_id exclusion; a trigger's info; a batch; cache channels (last event,
# pusher:cache_miss); GET /channels, /channels/NAME
# and /channels/NAME/users as the SDK reads them; a wrong secret gets 401; a bad authorization
# gets pusher:subscription_error and the connection stays; a client event reaches the other
# member with the sender's user_id, not the sender; pusher:signin through authenticateUser,
# sendToUser and terminateUserConnections. Each wait is bounded
# (PUSHER_WAIT_S, default 10 s); the client is stopped after 60 s. Takes about a second.
# PUSHER_WRONG=1 adds one deliberately wrong expectation (the event's data differs).
#
# Prints one line "pusher: PASS ..." or "pusher: FAIL reason" (each check on stderr).
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# FIELD of the first [[pusher.apps]] entry of smoke.toml.
app_field() {
  awk -F'"' -v field="$1" '
    /^\[\[pusher\.apps\]\]/ { n++; next }
    /^\[/ { if (n) exit }
    n == 1 && $1 ~ "^" field " *= *$" { print $2; exit }
  ' "$CONFORMANCE_DIR/smoke.toml"
}

main() {
  [ $# -eq 2 ] || usage
  local http_addr="$1"
  parse_ws_url "$2"
  [[ "$http_addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "HTTP_ADDR must be 127.0.0.1:PORT, got: $http_addr"
  [[ "${PUSHER_WAIT_S:-10}" =~ ^[0-9]+$ ]] || die "PUSHER_WAIT_S must be whole seconds"
  if [ ! -d "$NODE_DIR/node_modules/pusher-js" ] || [ ! -d "$NODE_DIR/node_modules/pusher" ]; then
    die "no pusher-js / pusher in $NODE_DIR: run bash tests/conformance/install.sh node"
  fi
  local id key secret
  id="$(app_field id)"
  key="$(app_field key)"
  secret="$(app_field secret)"
  if [ -z "$id" ] || [ -z "$key" ] || [ -z "$secret" ]; then
    die "no [[pusher.apps]] id/key/secret in smoke.toml"
  fi

  local out rc=0
  out="$(NODE_PATH="$NODE_DIR/node_modules" timeout --kill-after=5 60 node \
    "$CONFORMANCE_DIR/lib/pusher-check.cjs" "$WS_HOST" "$WS_PORT" \
    "${http_addr%:*}" "${http_addr##*:}" "$id" "$key" "$secret" </dev/null)" || rc=$?
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the client timed out after 60s" ;;
      *) out="FAIL no result (client exited $rc)" ;;
    esac
  fi
  echo "pusher: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "client printed PASS but exited $rc"; exit 1; } ;;
    *) exit 1 ;;
  esac
}

main "$@"
