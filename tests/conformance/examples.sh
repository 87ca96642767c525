#!/usr/bin/env bash
# Runs the copy-paste publishers in examples/ against a live server and checks that a real
# subscriber received exactly what each one published.
#
# usage: bash tests/conformance/examples.sh URL_WS CONTROL_ADDR
#   URL_WS        the server's /ws endpoint, e.g. ws://127.0.0.1:9080/ws
#   CONTROL_ADDR  its control socket, unix:PATH or tcp:HOST:PORT (what `serve --control` got)
#
# For each of php, python, node and shell (socat), and shell-nc (publish.sh with only OpenBSD nc
# on its PATH; skipped when no such nc is installed): start a subscriber (Python websockets,
# from the test venv) on URL_WS?channel=ex:<lang>&format=raw; poll the control socket's
# `presence` for ex:<lang> (Python stdlib, bounded) until it lists a connection; run the example
# once with a unique message holding quotes, a backslash, a tab, a newline and non-ASCII text;
# check that it exits 0 with a result of offset >= 1, and that the subscriber received exactly
# that message, once.
# Prints one line per language, "examples-<lang>: PASS" or "examples-<lang>: FAIL reason", with
# the details of a failure on stderr. Exit: 0 if all passed, 1 if any failed, 2 on bad usage.
# Every external command runs under `timeout`.
set -uo pipefail

# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

[ $# -eq 2 ] || usage
URL_WS="$1"
CONTROL_ADDR="$2"
EXAMPLES="$REPO_ROOT/examples"
case "$CONTROL_ADDR" in
  unix:?* | tcp:?*) ;;
  *) die "CONTROL_ADDR must be unix:PATH or tcp:HOST:PORT, got: $CONTROL_ADDR" ;;
esac
[ -x "$VENV/bin/python" ] \
  || die "no Python venv at $VENV: run bash tests/conformance/install.sh python"

# Time limits, in seconds.
PRESENCE_LIMIT_S=10  # until the subscriber shows in `presence`
EXAMPLE_LIMIT_S=20   # one run of an example
# The subscriber's life when its message never comes (it ends 0.5 s after the message).
RECEIVE_LIMIT_S=$((PRESENCE_LIMIT_S + EXAMPLE_LIMIT_S + 5))

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-examples.XXXXXX")" || die "mktemp failed"
SUB_PID=""
# The subscriber's `timeout` passes SIGTERM on to it.
stop_subscriber() {
  if [ -n "$SUB_PID" ]; then kill "$SUB_PID" 2>/dev/null; wait "$SUB_PID" 2>/dev/null; fi
  SUB_PID=""
}
cleanup() {
  stop_subscriber
  rm -rf "$WORK"
}
trap cleanup EXIT

# The subscriber: writes every message it receives as one JSON line (a text message as a JSON
# string, a binary one as {"binary": HEX}), and ends 0.5 s after the first one (so that a
# duplicate would be seen) or at its deadline.
cat >"$WORK/subscriber.py" <<'PY'
import asyncio, json, sys, time
import websockets

async def main(url, out, seconds):
    deadline = time.monotonic() + seconds
    first = None
    with open(out, "w") as f:
        async with websockets.connect(url, open_timeout=10, max_size=None) as ws:
            while True:
                end = deadline if first is None else min(deadline, first + 0.5)
                left = end - time.monotonic()
                if left <= 0:
                    return
                try:
                    msg = await asyncio.wait_for(ws.recv(), left)
                except asyncio.TimeoutError:
                    return
                f.write(json.dumps(msg if isinstance(msg, str) else {"binary": msg.hex()}) + "\n")
                f.flush()
                first = first or time.monotonic()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
PY

# `presence` through the control socket, Python stdlib only: prints how many connections the
# channel has.
cat >"$WORK/presence.py" <<'PY'
import json, socket, sys

address, channel = sys.argv[1], sys.argv[2]
if address.startswith("unix:"):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(address[len("unix:"):])
else:
    host, _, port = address[len("tcp:"):].rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
sock.sendall(json.dumps({"method": "presence", "channel": channel}).encode() + b"\n")
reply = json.loads(sock.makefile("rb").readline())
print(len(reply["result"]["conns"]))
PY

# A process exists and is not a zombie.
alive() {
  [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

# show FILE LABEL: the tail of a log file on stderr, for a failure's details.
show() {
  [ -s "$1" ] || return 0
  log "$2:"
  tail -n 20 "$1" | sed 's/^/    /' >&2
}

FAILED=0
T0="$EPOCHREALTIME"
result() { # result LANG VERDICT...
  local lang="$1"
  shift
  echo "examples-$lang: $*"
  # How long the check took, on stderr (microseconds from bash's clock, no external command).
  local us=$((${EPOCHREALTIME//[!0-9]/} - ${T0//[!0-9]/}))
  log "$lang took $((us / 1000000)).$(printf '%03d' $((us / 1000 % 1000)))s"
  T0="$EPOCHREALTIME"
  case "$1" in PASS | SKIP*) ;; *) FAILED=$((FAILED + 1)) ;; esac
}

# check_example LANG COMMAND...: the whole check for one example; COMMAND gets CHANNEL MESSAGE.
check_example() {
  local lang="$1"
  shift
  local channel="ex:$lang" received="$WORK/$lang.received" n rc reply expected got t_end
  local msg=$'ringcast '"$lang $$-$RANDOM-$RANDOM"$': "quoted" \\ back\ttab\nline 2 \x01 é ✓'
  : >"$received"
  timeout $((RECEIVE_LIMIT_S + 10)) "$VENV/bin/python" "$WORK/subscriber.py" \
    "$URL_WS?channel=$channel&format=raw" "$received" "$RECEIVE_LIMIT_S" \
    2>"$WORK/$lang.subscriber.err" &
  SUB_PID=$!

  n=0
  t_end=$((SECONDS + PRESENCE_LIMIT_S))
  while [ "$SECONDS" -lt "$t_end" ]; do
    n="$(timeout 10 python3 "$WORK/presence.py" "$CONTROL_ADDR" "$channel" \
      2>"$WORK/$lang.presence.err")" || n=0
    [ "$n" -ge 1 ] 2>/dev/null && break
    alive "$SUB_PID" || break
    sleep 0.1
  done
  if ! [ "$n" -ge 1 ] 2>/dev/null; then
    local why="presence for $channel listed no connection within ${PRESENCE_LIMIT_S}s"
    alive "$SUB_PID" || why="the subscriber exited before it showed in presence"
    stop_subscriber
    result "$lang" "FAIL $why"
    show "$WORK/$lang.presence.err" "presence.py stderr"
    show "$WORK/$lang.subscriber.err" "subscriber stderr"
    return
  fi

  rc=0
  reply="$(RINGCAST_CONTROL="$CONTROL_ADDR" timeout "$EXAMPLE_LIMIT_S" "$@" "$channel" "$msg" \
    2>"$WORK/$lang.example.err")" || rc=$?
  if [ "$rc" != 0 ]; then
    stop_subscriber
    [ "$rc" != 124 ] || rc="124 (timed out after ${EXAMPLE_LIMIT_S}s)"
    result "$lang" "FAIL the example exited with status $rc"
    log "reply: $reply"
    show "$WORK/$lang.example.err" "example stderr"
    return
  fi
  if ! timeout 10 python3 -c \
    'import json, sys; sys.exit(json.loads(sys.argv[1])["result"]["offset"] < 1)' "$reply" \
    2>/dev/null; then
    stop_subscriber
    result "$lang" "FAIL the reply is not a result with offset >= 1: $reply"
    return
  fi

  wait "$SUB_PID"
  rc=$?
  SUB_PID=""
  expected="$(timeout 10 python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$msg")"
  got="$(cat "$received")"
  if [ "$got" = "$expected" ]; then
    result "$lang" PASS
  elif [ -z "$got" ]; then
    result "$lang" "FAIL the subscriber received nothing (it exited with status $rc)"
    show "$WORK/$lang.subscriber.err" "subscriber stderr"
  else
    result "$lang" "FAIL the subscriber received something else"
    log "expected: $expected"
    log "received: $got"
  fi
}

# need LANG COMMAND: fails the language when its interpreter is missing.
need() {
  command -v "$2" >/dev/null && return 0
  result "$1" "FAIL $2 not found (CI installs it: .ci/run)"
  return 1
}

need php php && check_example php php "$EXAMPLES/publish.php"
need python python3 && check_example python python3 "$EXAMPLES/publish.py"
need node node && check_example node node "$EXAMPLES/publish.js"
need shell socat && check_example shell bash "$EXAMPLES/publish.sh"

# The fallback path of publish.sh: a PATH holding OpenBSD nc (which has -U) and no socat.
NC="$(command -v nc || true)"
if [ -n "$NC" ] && timeout 10 "$NC" -h 2>&1 | grep -q -- '-U'; then
  mkdir -p "$WORK/nc-only"
  ln -s "$NC" "$WORK/nc-only/nc"
  check_example shell-nc env PATH="$WORK/nc-only" "$BASH" "$EXAMPLES/publish.sh"
else
  result shell-nc "SKIP no OpenBSD nc (with -U) installed"
fi

[ "$FAILED" = 0 ] || exit 1
