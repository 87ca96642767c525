#!/usr/bin/env bash
# Scrapes a live server's /metrics with the real Prometheus (Debian package `prometheus`) and
# checks the result through Prometheus's HTTP API; lints the exposition with promtool.
#
# usage: bash tests/conformance/prometheus.sh HTTP_ADDR URL_WS SHARDS [REPORT_DIR]
#   HTTP_ADDR   the server's HTTP listener, 127.0.0.1:PORT (`serve --http`, its
#               `ringcast http listen=` line)
#   URL_WS      its /ws endpoint, e.g. ws://127.0.0.1:9080/ws
#   SHARDS      how many shards it runs
#   REPORT_DIR  where prometheus.log, prometheus.yml and metrics.txt are kept (default: a
#               temporary directory, removed afterwards)
#
# Prometheus listens on loopback only, on a port picked by binding and releasing one (it cannot
# take port 0; a start that loses the port to another process is retried, up to 5 times), with
# `scrape_interval: 1s` against HTTP_ADDR and its storage in a temporary directory; it is bounded
# by timeout and stopped at the end. lib/prometheus_check.py (test venv: Python websockets) then
# waits for the target to be up with an empty lastError and for `count(ringcast_connections)` to
# be SHARDS, makes traffic (5 WebSocket connections opened and closed with 1000, 10 publishes
# through POST /api/publish to a subscribed channel) and waits until
# `sum(ringcast_accepted_total)`, `sum(ringcast_published_total)` and
# `sum(ringcast_closes_total{code="1000"})` have moved by that much, and until every metric family
# of /metrics is stored. Last, `promtool check metrics` reads a /metrics body taken after the
# traffic and must print nothing (no lint problem of any kind).
# Every wait is a bounded poll (PROM_WAIT_S seconds each, default 30). Takes 5-10 s.
# PROM_WRONG=1 adds one deliberately wrong expectation (a shard more than SHARDS).
#
# Prints one line "prometheus: PASS ..." or "prometheus: FAIL reason".
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

WORK=""
KEEP=""
PROM_PID=""
cleanup() {
  if [ -n "$PROM_PID" ] && kill -0 "$PROM_PID" 2>/dev/null; then
    kill -TERM "$PROM_PID" 2>/dev/null || true # timeout passes it on to prometheus
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$PROM_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$PROM_PID" 2>/dev/null || true
  fi
  [ -z "$PROM_PID" ] || wait "$PROM_PID" 2>/dev/null || true
  if [ -n "$WORK" ]; then
    if [ -n "$KEEP" ]; then rm -rf "$WORK/data"; else rm -rf "$WORK"; fi
  fi
}
trap cleanup EXIT

fail() {
  echo "prometheus: FAIL $*"
  exit 1
}

free_port() {
  timeout 10 "$VENV/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# start_prometheus HTTP_ADDR: sets PROM_ADDR and PROM_PID once /-/ready answers 200.
start_prometheus() {
  local target="$1" attempt port i ready
  for ((attempt = 1; attempt <= 5; attempt++)); do
    port="$(free_port)" || die "could not pick a free port"
    cat >"$WORK/prometheus.yml" <<EOF
# Written by tests/conformance/prometheus.sh for one run.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ringcast
    metrics_path: /metrics
    static_configs:
      - targets: ['$target']
EOF
    rm -rf "$WORK/data"
    : >"$WORK/prometheus.log"
    timeout --kill-after=5 "$PROM_LIFETIME_S" prometheus \
      --config.file="$WORK/prometheus.yml" \
      --storage.tsdb.path="$WORK/data" \
      --storage.tsdb.retention.time=1h \
      --web.listen-address="127.0.0.1:$port" \
      >>"$WORK/prometheus.log" 2>&1 </dev/null &
    PROM_PID=$!
    ready=""
    for ((i = 0; i < 300; i++)); do
      if timeout 5 curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/-/ready"; then
        ready=1
        break
      fi
      kill -0 "$PROM_PID" 2>/dev/null || break
      sleep 0.1
    done
    if [ -n "$ready" ]; then
      PROM_ADDR="127.0.0.1:$port"
      log "prometheus $(prometheus --version 2>&1 | awk 'NR == 1 { print $3 }') ready on $PROM_ADDR after ${attempt} attempt(s)"
      return 0
    fi
    if kill -0 "$PROM_PID" 2>/dev/null; then
      log "prometheus on port $port not ready within 30 s; its log:"
      tail -n 20 "$WORK/prometheus.log" >&2
      return 1
    fi
    wait "$PROM_PID" 2>/dev/null || true
    PROM_PID=""
    if grep -q 'address already in use' "$WORK/prometheus.log"; then
      log "port $port was taken before prometheus bound it; another port"
      continue
    fi
    log "prometheus exited before it was ready; its log:"
    tail -n 20 "$WORK/prometheus.log" >&2
    return 1
  done
  log "no free port in 5 attempts"
  return 1
}

main() {
  [ $# -eq 3 ] || [ $# -eq 4 ] || usage
  local http_addr="$1" shards="$3" report="${4:-}"
  parse_ws_url "$2"
  [[ "$http_addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "HTTP_ADDR must be 127.0.0.1:PORT, got: $http_addr"
  [[ "$shards" =~ ^[0-9]+$ ]] || die "SHARDS must be a number, got: $shards"
  [[ "${PROM_WAIT_S:-30}" =~ ^[0-9]+$ ]] || die "PROM_WAIT_S must be whole seconds"
  command -v prometheus >/dev/null || die "prometheus not found (bash tests/conformance/install.sh debian)"
  command -v curl >/dev/null || die "curl not found (bash tests/conformance/install.sh debian)"
  [ -x "$VENV/bin/python" ] || die "no Python venv at $VENV: run bash tests/conformance/install.sh python"
  PROM_LIFETIME_S=$((${PROM_WAIT_S:-30} * 6 + 60))
  if [ -n "$report" ]; then
    mkdir -p "$report"
    WORK="$report/prometheus"
    rm -rf "$WORK"
    mkdir -p "$WORK"
    KEEP=1
  else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-prometheus.XXXXXX")"
  fi

  start_prometheus "$http_addr" || fail "Prometheus did not start (log: $WORK/prometheus.log)"

  local out rc=0
  out="$(timeout --kill-after=5 $((${PROM_WAIT_S:-30} * 5 + 30)) "$VENV/bin/python" \
    "$CONFORMANCE_DIR/lib/prometheus_check.py" "$PROM_ADDR" "$http_addr" "$WS_URL" "$shards" \
    </dev/null)" || rc=$?
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the check timed out" ;;
      *) out="FAIL no result (prometheus_check.py exited $rc)" ;;
    esac
  fi
  case "$out" in
    PASS*) [ "$rc" = 0 ] || fail "prometheus_check.py printed PASS but exited $rc" ;;
    *)
      log "prometheus log (last lines):"
      tail -n 15 "$WORK/prometheus.log" >&2
      echo "prometheus: $out"
      exit 1
      ;;
  esac

  # promtool's lint of the exposition, on a body taken after the traffic (so that the keyed
  # families have samples too). Any output is a problem to look at, not to filter.
  local lint lrc=0
  timeout 10 curl -sS --max-time 5 -o "$WORK/metrics.txt" "http://$http_addr/metrics" \
    || fail "could not fetch http://$http_addr/metrics for promtool"
  if command -v promtool >/dev/null; then
    lint="$(timeout 30 promtool check metrics <"$WORK/metrics.txt" 2>&1)" || lrc=$?
    if [ "$lrc" != 0 ] || [ -n "$lint" ]; then
      log "promtool check metrics (exit $lrc) on $WORK/metrics.txt:"
      printf '%s\n' "$lint" | sed 's/^/    /' >&2
      fail "promtool check metrics: $(printf '%s\n' "$lint" | grep -c .) complaint(s), first: $(printf '%s\n' "$lint" | head -n 1)"
    fi
    out="$out; promtool check metrics: clean ($(grep -c '^ringcast_' "$WORK/metrics.txt") samples)"
  else
    fail "promtool not found (it comes with the prometheus package)"
  fi
  echo "prometheus: $out"
}

main "$@"
