#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient cases (RFC 6455 conformance) against an echo endpoint.
#
# usage: autobahn.sh URL [OUTDIR]
#   URL     e.g. ws://127.0.0.1:9001/echo; the server must send every text and binary message
#           back unchanged there, must not send pings of its own, and must accept messages and
#           frames of 16 MiB and messages of 65,536 fragments (cases 9.*)
#   OUTDIR  report folder (default: target/conformance/autobahn in the repository):
#           index.html, index.json, one .json/.html per case, kosoku.log, summary.txt
#
# Environment (all optional):
#   AUTOBAHN_CASES     space-separated case ids or globs (default: every case, 1.* to 13.*),
#                      e.g. "1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*"
#   AUTOBAHN_EXCLUDE   space-separated case ids or globs to leave out, e.g. "12.* 13.*"
#   AUTOBAHN_PARALLEL  cases run at the same time (default 2)
#   AUTOBAHN_TIMEOUT   seconds for the whole run (default 1200); a run cut short writes no report
#   AUTOBAHN_STRICT=1  NON-STRICT cases fail the run too
#   AUTOBAHN_WAIT      seconds to wait for the server to accept connections (default 10)
#
# Prints the cases that did not pass (with their descriptions), then one line:
#   autobahn: N passed, M failed, K non-strict[, U unimplemented]
# Exit: 0 no case failed, 1 a case failed or the run timed out, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

main() {
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
  parse_ws_url "$1"
  local outdir="${2:-$REPO_ROOT/target/conformance/autobahn}"
  local parallel="${AUTOBAHN_PARALLEL:-2}" limit="${AUTOBAHN_TIMEOUT:-1200}"

  ensure_python_tools
  wait_tcp "$WS_HOST" "$WS_PORT" "${AUTOBAHN_WAIT:-10}" \
    || die "nothing accepts connections at $WS_HOST:$WS_PORT"

  mkdir -p "$outdir"
  # A stale index.json from an earlier run must never be read as this run's result.
  rm -f "$outdir"/index.json "$outdir"/index.html "$outdir"/*_case_*.json "$outdir"/*_case_*.html \
    "$outdir"/kosoku.log "$outdir"/summary.txt

  local args=(-p "$parallel" -o "$outdir") c
  set -f # case globs such as 9.* go to kosoku as they are, never to the shell
  for c in ${AUTOBAHN_CASES:-}; do args+=(-i "$c"); done
  for c in ${AUTOBAHN_EXCLUDE:-}; do args+=(-x "$c"); done
  set +f

  log "kosoku $KOSOKU_VERSION: cases ${AUTOBAHN_CASES:-all}${AUTOBAHN_EXCLUDE:+ minus $AUTOBAHN_EXCLUDE} against $WS_URL (parallel $parallel, limit ${limit}s)"
  local start rc=0
  start=$(date +%s)
  timeout --kill-after=15 "$limit" "$VENV/bin/kosoku" "${args[@]}" "$WS_URL" \
    >"$outdir/kosoku.log" 2>&1 </dev/null || rc=$?
  # kosoku exits 1 whenever a case is not OK, NON-STRICT included: the summary decides.
  log "kosoku exited $rc after $(($(date +%s) - start))s"

  local timed_out=0
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then timed_out=1; fi
  if [ ! -s "$outdir/index.json" ]; then
    tail -n 20 "$outdir/kosoku.log" >&2 || true
    if [ "$timed_out" = 1 ]; then
      echo "autobahn: 0 passed, 1 failed, 0 non-strict (run hit AUTOBAHN_TIMEOUT=${limit}s, no report)"
      exit 1
    fi
    die "kosoku wrote no report to $outdir/index.json (log: $outdir/kosoku.log)"
  fi

  local src=0
  "$VENV/bin/python" "$CONFORMANCE_DIR/lib/autobahn_summary.py" ${AUTOBAHN_STRICT:+--strict} \
    "$outdir/index.json" | tee "$outdir/summary.txt" || src=$?
  log "report: $outdir/index.html"
  if [ "$timed_out" = 1 ]; then
    log "the run hit AUTOBAHN_TIMEOUT=${limit}s: the report is partial"
    exit 1
  fi
  exit "$src"
}

main "$@"
