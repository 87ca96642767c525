#!/usr/bin/env bash
# Opens the server's dashboard (GET / of its HTTP listener) in headless Chromium while load runs,
# and checks that it shows live numbers; keeps a screenshot.
#
# usage: bash tests/conformance/dashboard.sh HTTP_ADDR URL_WS REPORT_DIR
#   HTTP_ADDR   the server's HTTP listener, 127.0.0.1:PORT (`serve --http`, its
#               `ringcast http listen=` line)
#   URL_WS      its /ws endpoint, e.g. ws://127.0.0.1:9080/ws
#   REPORT_DIR  where the screenshot goes: REPORT_DIR/dashboard.png
#
# lib/browser-dashboard.cjs (playwright-core and ws from the Node folder, the chromium Debian
# package, the flags of the browser smoke) opens 4 `ws` subscribers on a channel of its own,
# publishes to it at 50/s with POST /api/publish (for at most DASHBOARD_LOAD_S seconds, default
# 40), loads http://HTTP_ADDR/ and polls the DOM (bounded: DASHBOARD_WAIT_S seconds, default 20)
# until the page has polled the API 3 times (document.body.dataset.polls), #connections shows at
# least the 4 subscribers, #deliveries (frames out/s) and #publishes were above 0 at a poll, the
# `channels` table lists the load's channel with 4 subscribers, and #status starts with "live".
# The page must throw no uncaught error, every publish must be answered 200 and every subscriber
# must get messages. The driver is stopped after DASHBOARD_LOAD_S plus 60 s (Chromium's
# start-up on 2 cores). Takes 4-6 s.
# DASHBOARD_WRONG=1 adds one deliberately wrong expectation (1000 connections more).
#
# Prints one line "dashboard: PASS ..." or "dashboard: FAIL reason".
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

main() {
  [ $# -eq 3 ] || usage
  local http_addr="$1" report="$3"
  parse_ws_url "$2"
  [[ "$http_addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "HTTP_ADDR must be 127.0.0.1:PORT, got: $http_addr"
  [[ "${DASHBOARD_WAIT_S:-20}" =~ ^[0-9]+$ ]] || die "DASHBOARD_WAIT_S must be whole seconds"
  [[ "${DASHBOARD_LOAD_S:-40}" =~ ^[0-9]+$ ]] || die "DASHBOARD_LOAD_S must be whole seconds"
  mkdir -p "$report" || die "cannot create $report"
  ensure_chromium
  ensure_node_tools

  local profile out rc=0 limit=$((${DASHBOARD_LOAD_S:-40} + 60)) shot="$report/dashboard.png"
  rm -f "$shot"
  profile="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-dashboard-chromium.XXXXXX")" # fresh profile every run
  out="$(NODE_PATH="$NODE_DIR/node_modules" timeout --kill-after=5 "$limit" \
    node "$CONFORMANCE_DIR/lib/browser-dashboard.cjs" "$http_addr" "$WS_URL" "$profile" "$shot" \
    </dev/null)" || rc=$?
  rm -rf "$profile"
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the driver timed out after ${limit}s" ;;
      *) out="FAIL no result (driver exited $rc)" ;;
    esac
  fi
  if [ -s "$shot" ]; then log "screenshot: $shot"; fi
  echo "dashboard: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "driver printed PASS but exited $rc"; exit 1; } ;;
    *) exit 1 ;;
  esac
}

main "$@"
