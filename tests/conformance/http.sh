#!/usr/bin/env bash
# HTTP smoke of the server's HTTP listener (`serve --http`) with a Python stdlib client and a real
# /ws subscriber (the test venv's `websockets`).
#
# usage: bash tests/conformance/http.sh HTTP_ADDR URL_WS SHARDS
#   HTTP_ADDR  the server's HTTP listener, 127.0.0.1:PORT (its `ringcast http listen=` line)
#   URL_WS     its /ws endpoint, e.g. ws://127.0.0.1:9080/ws
#   SHARDS     how many shards it runs (/api/stats must list that many)
#
# lib/http_smoke.py checks, on real sockets:
#   endpoints   GET /healthz (200 text/plain "ok"), /readyz (200 "ready"), /metrics (200
#               text/plain; version=0.0.4, a ringcast_connections sample per shard), / and
#               /dashboard (200 text/html, the same page), /api/stats, /api/presence?channel=,
#               /api/channels (200 application/json), POST /api/publish (200 {offset, epoch}),
#               GET /api/publish (405, Allow: POST), POST /healthz (405, Allow: GET, HEAD),
#               /nope and /api/nosuchmethod (404), POST /api/publish `[1]` (400 bad_json), all on
#               one keep-alive connection, which must still answer afterwards;
#   HEAD        HEAD /healthz: the GET's head (Content-Length 3) and no body: the next response
#               on the connection follows it at once;
#   pipelining  GET /api/stats and GET /healthz in one write on one connection, answered in
#               order; then 5 more (GET, POST, a 404, HEAD, GET) in one write, in order;
#   publish     a /ws?channel=...&format=raw subscriber (listed by /api/presence first, a bounded
#               poll) gets exactly what POST /api/publish sent;
#   refusals    each on a new connection, answered with a JSON error, `Connection: close`, and
#               then closed: a `Transfer-Encoding: chunked` POST (411 length_required), a POST
#               head announcing control_line_bytes_max + 1 bytes with no body sent (413
#               payload_too_large, decided from the head), a 10 KiB header (431 headers_too_large).
# Every socket operation and wait is bounded (HTTP_SMOKE_WAIT_S seconds, default 10); the client
# is stopped after 60 s. Takes under a second.
# HTTP_SMOKE_WRONG=1 adds one deliberately wrong expectation (GET /healthz answers 418).
#
# Prints one line "http-smoke: PASS ..." or "http-smoke: FAIL reason" (each check on stderr).
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

main() {
  [ $# -eq 3 ] || usage
  local http_addr="$1" shards="$3"
  parse_ws_url "$2"
  [[ "$http_addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "HTTP_ADDR must be 127.0.0.1:PORT, got: $http_addr"
  [[ "$shards" =~ ^[0-9]+$ ]] || die "SHARDS must be a number, got: $shards"
  [[ "${HTTP_SMOKE_WAIT_S:-10}" =~ ^[0-9]+$ ]] || die "HTTP_SMOKE_WAIT_S must be whole seconds"
  [ -x "$VENV/bin/python" ] || die "no Python venv at $VENV: run bash tests/conformance/install.sh python"

  local out rc=0
  out="$(timeout --kill-after=5 60 "$VENV/bin/python" "$CONFORMANCE_DIR/lib/http_smoke.py" \
    "$http_addr" "$WS_URL" "$shards" </dev/null)" || rc=$?
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the client timed out after 60s" ;;
      *) out="FAIL no result (client exited $rc)" ;;
    esac
  fi
  echo "http-smoke: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "client printed PASS but exited $rc"; exit 1; } ;;
    *) exit 1 ;;
  esac
}

main "$@"
