#!/usr/bin/env bash
# Headless Chromium negotiates permessage-deflate on /ws and receives compressed pushes that
# decode to the published JSON (docs/protocol.md, "Compression").
#
# usage: bash tests/conformance/deflate-push.sh URL_WS CONTROL_ADDR
#   URL_WS        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws (the server must run with
#                 `deflate = true` and let the `smoke` namespace exist, as tests/conformance/smoke.toml does)
#   CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT
#
# The page (lib/smoke.html in push mode) subscribes at connect to `smoke:deflate` (format=raw);
# once its socket is open, lib/publish_deflate.py publishes lib/deflate-push.json (2,119 bytes of
# JSON, far above the default `deflate_min_bytes` of 256) 20 times, 100 ms apart, through the
# control socket. Passes when
#   - the page received 3 messages, each exactly the published text (the browser inflated them),
#     and closed cleanly with 1000;
#   - the browser's `ws.extensions` names permessage-deflate (the server accepted the offer);
#   - the server sent the page fewer bytes than its messages take uncompressed
#     (lib/publish_deflate.py: `frames_compressed` counts the messages that had an audience,
#     `bytes_out` what was sent; the page is the channel's only subscriber and the publishes ask
#     for no reply), so what the browser decoded came compressed.
# Prints one line "deflate-push: PASS ..." or "deflate-push: FAIL reason".
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
  local doc="$CONFORMANCE_DIR/lib/deflate-push.json" work open_file out pub rc=0 prc=0 i
  work="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-deflate-push.XXXXXX")"
  open_file="$work/open"
  local url="$WS_URL?channel=smoke:deflate&format=raw"
  SMOKE_MODE=push SMOKE_EXPECT=3 SMOKE_WANT="$(tr -d '\n' <"$doc")" SMOKE_TIMEOUT=20 \
    SMOKE_OPEN_FILE="$open_file" \
    bash "$CONFORMANCE_DIR/smoke.sh" browser "$url" >"$work/smoke.out" </dev/null &
  local smoke_pid=$!
  # Bounded wait for the page's socket (Chromium's start-up on 2 cores takes up to a minute).
  for ((i = 0; i < 900; i++)); do
    if [ -s "$open_file" ] || ! kill -0 "$smoke_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ -s "$open_file" ]; then
    pub="$(timeout --kill-after=5 30 "$VENV/bin/python" "$CONFORMANCE_DIR/lib/publish_deflate.py" \
      "$control_addr" smoke:deflate 20 0.1 "$doc" </dev/null)" || prc=$?
  else
    pub="the page never opened its socket"
    prc=1
  fi
  wait "$smoke_pid" || rc=$?
  out="$(tail -n 1 "$work/smoke.out")"
  rm -rf "$work"
  log "publisher: $pub (exit $prc)"
  if [ "$rc" != 0 ]; then
    echo "deflate-push: FAIL ${out:-the browser smoke exited $rc}"
    exit 1
  fi
  case "$out" in
    *permessage-deflate*) ;;
    *) echo "deflate-push: FAIL the browser did not negotiate permessage-deflate: $out"; exit 1 ;;
  esac
  if [ "$prc" != 0 ]; then
    echo "deflate-push: FAIL the pushes did not arrive compressed ($pub)"
    exit 1
  fi
  echo "deflate-push: PASS ${out#browser-smoke: PASS }; $pub"
}

main "$@"
