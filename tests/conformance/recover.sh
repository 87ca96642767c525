#!/usr/bin/env bash
# Runs the browser example examples/recover/index.html in headless Chromium against a live
# server and checks that it reconnects and recovers what it missed (docs/protocol.md,
# "Recovery").
#
# usage: bash tests/conformance/recover.sh URL_WS CONTROL_ADDR
#   URL_WS        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
#   CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT (what `serve --control` got)
#
# The server must keep history for the `recover` namespace (`[namespaces.recover]
# history_size = 100`, as tests/conformance/smoke.toml has). The driver
# (lib/browser-recover.cjs) loads the page from a file (Origin: null) and publishes through the
# control socket with lib/control.py (Python stdlib, run by the test venv's interpreter):
#   recovered  the page subscribes to a new channel; 5 messages live; Chromium goes offline and
#              the server closes the page's connection (control `disconnect`, 4003); 5 messages
#              while the page cannot reconnect; online again: the page must resubscribe with
#              `since`, get `recovered: true`, and after 5 more live messages show exactly
#              #1..#15, each once, in order;
#   refused    the same with 3 live messages and history_size + 20 while away: the page must get
#              `recovered: false`, clear the channel's messages with a notice of the new offset,
#              and show exactly the live messages after it.
# Every wait is a bounded poll (RECOVER_WAIT_S seconds each, default 20); the driver is stopped
# after RECOVER_TIMEOUT seconds (default 40) plus 60 for Chromium's start-up. Takes 2-3 s.
#
# Prints one line "recover-browser: PASS ..." or "recover-browser: FAIL reason".
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

main() {
  [ $# -eq 2 ] || usage
  local control_addr="$2"
  parse_ws_url "$1"
  case "$control_addr" in
    unix:?* | tcp:?*) ;;
    *) die "CONTROL_ADDR must be unix:PATH or tcp:HOST:PORT, got: $control_addr" ;;
  esac
  [ -x "$VENV/bin/python" ] \
    || die "no Python venv at $VENV: run bash tests/conformance/install.sh python"
  [[ "${RECOVER_TIMEOUT:-40}" =~ ^[0-9]+$ ]] || die "RECOVER_TIMEOUT must be whole seconds"
  ensure_chromium
  ensure_node_tools

  # 60 s more than the exchange for Chromium's start-up on 2 cores, as the browser smoke allows.
  local profile out rc=0 limit=$((${RECOVER_TIMEOUT:-40} + 60))
  profile="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-recover-chromium.XXXXXX")" # fresh profile every run
  out="$(PYTHON="$VENV/bin/python" NODE_PATH="$NODE_DIR/node_modules" \
    timeout --kill-after=5 "$limit" \
    node "$CONFORMANCE_DIR/lib/browser-recover.cjs" "$WS_URL" "$control_addr" "$profile" \
    </dev/null)" || rc=$?
  rm -rf "$profile"
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the driver timed out after ${limit}s" ;;
      *) out="FAIL no result (driver exited $rc)" ;;
    esac
  fi
  echo "recover-browser: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "driver printed PASS but exited $rc"; exit 1; } ;;
    *) exit 1 ;;
  esac
}

main "$@"
