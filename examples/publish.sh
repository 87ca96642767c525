#!/usr/bin/env bash
# Publish one message to a ringcast channel through the control socket (docs/control.md).
#
# usage: RINGCAST_CONTROL=unix:/tmp/ringcast.sock bash publish.sh CHANNEL MESSAGE
#
# Needs bash 4 and socat (or, without socat, OpenBSD netcat: `nc -U`). The address is unix:PATH
# or tcp:HOST:PORT (default unix:/tmp/ringcast.sock); set RINGCAST_CONTROL_TOKEN when the
# server has a token. Prints the reply line; exit status 0 published, 1 error reply, 2 usage or
# connection problem.
if [ $# -ne 2 ]; then
  echo "usage: bash publish.sh CHANNEL MESSAGE" >&2
  exit 2
fi
address="${RINGCAST_CONTROL:-unix:/tmp/ringcast.sock}"

# A JSON string: escape backslash, quote and control characters.
json_string() {
  local s="$1" i c
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\r'/\\r}"
  s="${s//$'\t'/\\t}"
  for i in {1..31}; do
    printf -v c '%b' "\\x$(printf '%02x' "$i")"
    [ "$c" = $'\n' ] || s="${s//"$c"/$(printf '\\u%04x' "$i")}"
  done
  printf '"%s"' "$s"
}

# socat, else netcat. Neither may half-close the socket after the request: the reply is read
# while the connection is still open, then the helper is stopped.
case "$address" in
  unix:*) socat_target="UNIX-CONNECT:${address#unix:}"; nc_args=(-U "${address#unix:}") ;;
  tcp:*) hp="${address#tcp:}"; socat_target="TCP:$hp"; nc_args=("${hp%:*}" "${hp##*:}") ;;
  *) echo "publish.sh: RINGCAST_CONTROL must be unix:PATH or tcp:HOST:PORT" >&2; exit 2 ;;
esac
if command -v socat >/dev/null; then
  connect=(socat - "$socat_target")
elif command -v nc >/dev/null; then
  connect=(nc "${nc_args[@]}")
else
  echo "publish.sh: needs socat or nc (apt-get install socat)" >&2
  exit 2
fi
coproc CONTROL { "${connect[@]}"; }
# If the helper has already exited (it could not connect), writing to it must fail, not kill us.
trap '' PIPE

# request LINE: send one JSON line and read its reply line into $reply (10 s at most).
request() {
  printf '%s\n' "$1" 2>/dev/null 1>&"${CONTROL[1]}"
  if ! IFS= read -r -t 10 reply 2>/dev/null <&"${CONTROL[0]}"; then
    echo "publish.sh: no reply from $address" >&2
    kill "$CONTROL_PID" 2>/dev/null
    exit 2
  fi
}
# A reply is {"id":1,"result":{...}} or {"id":1,"error":{"code":"...","message":"..."}}.
is_error() { case "$reply" in *'"error":{'*) return 0 ;; *) return 1 ;; esac; }

if [ -n "${RINGCAST_CONTROL_TOKEN:-}" ]; then
  request "{\"method\":\"auth\",\"token\":$(json_string "$RINGCAST_CONTROL_TOKEN")}"
fi
if [ -z "${RINGCAST_CONTROL_TOKEN:-}" ] || ! is_error; then
  # "text" is delivered as is; use "data" for any JSON value.
  request "{\"id\":1,\"method\":\"publish\",\"channel\":$(json_string "$1"),\"text\":$(
    json_string "$2")}"
fi
kill "$CONTROL_PID" 2>/dev/null
printf '%s\n' "$reply"
if is_error; then exit 1; fi
