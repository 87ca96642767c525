#!/usr/bin/env bash
# Smoke test a WebSocket server with a real, independent client.
#
# usage: smoke.sh CLIENT URL
#   CLIENT  browser  headless Chromium (Debian package) driven by playwright-core; the page is
#                    loaded from a file, so the handshake carries "Origin: null"
#           python   the PyPI `websockets` client
#           node     the npm `ws` client
#   URL     e.g. ws://127.0.0.1:9001/echo
#
# Environment (all optional):
#   SMOKE_MODE=echo   (default) send "hello", a non-ASCII text, 300 bytes of binary, an empty
#                     text, an empty binary and a 256 KiB text; each must come back unchanged and
#                     in order; then close with 1000 and get 1000 back
#   SMOKE_MODE=push   send SMOKE_SEND once if it is set (e.g. a subscribe command), wait for
#                     SMOKE_EXPECT messages (default 1), then close with 1000 and get 1000 back
#   SMOKE_TIMEOUT     seconds for the exchange (default 10)
#   SMOKE_OPEN_FILE   file the client writes once its socket is open (lets a caller publish only
#                     after the client has connected)
# All three clients offer permessage-deflate, as browsers do; the PASS line shows what the server
# accepted.
#
# Prints one line "CLIENT-smoke: PASS ..." or "CLIENT-smoke: FAIL reason".
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# Runs the client with a bound; prints its one result line on stdout.
run_client() {
  local client="$1" url="$2" limit="$3"
  case "$client" in
    python)
      timeout --kill-after=5 "$limit" "$VENV/bin/python" "$CONFORMANCE_DIR/lib/smoke_client.py" "$url"
      ;;
    node)
      NODE_PATH="$NODE_DIR/node_modules" timeout --kill-after=5 "$limit" \
        node "$CONFORMANCE_DIR/lib/smoke-client.cjs" "$url"
      ;;
    browser)
      local profile rc=0
      profile="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-smoke-chromium.XXXXXX")" # fresh profile every run
      NODE_PATH="$NODE_DIR/node_modules" timeout --kill-after=5 "$limit" \
        node "$CONFORMANCE_DIR/lib/browser-smoke.cjs" "$url" "$profile" || rc=$?
      rm -rf "$profile"
      return "$rc"
      ;;
  esac
}

main() {
  [ $# -eq 2 ] || usage
  local client="$1" slack
  parse_ws_url "$2"
  case "$client" in
    python) ensure_python_tools; slack=20 ;;
    node) ensure_node_tools; slack=20 ;;
    browser) ensure_chromium; ensure_node_tools; slack=60 ;; # Chromium's start-up is slow on 2 cores
    *) log "unknown client: $client"; usage ;;
  esac
  case "${SMOKE_MODE:-echo}" in echo | push) ;; *) die "SMOKE_MODE must be echo or push" ;; esac
  [[ "${SMOKE_TIMEOUT:-10}" =~ ^[0-9]+$ ]] || die "SMOKE_TIMEOUT must be whole seconds"

  local out rc=0
  out="$(run_client "$client" "$WS_URL" $((${SMOKE_TIMEOUT:-10} + slack)) </dev/null)" || rc=$?
  out="$(printf '%s\n' "$out" | tail -n 1)"
  [ -n "$out" ] || out="FAIL no result (client exited $rc)"
  echo "$client-smoke: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "client printed PASS but exited $rc"; exit 1; } ;;
    *) exit 1 ;;
  esac
}

main "$@"
