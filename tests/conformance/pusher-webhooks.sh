#!/usr/bin/env bash
# Pusher webhooks with the real clients, on a server of its own: lib/pusher-webhooks.cjs
# writes a config whose app posts its webhooks to a receiver in the same Node process, starts
# `ringcast serve` with it (2 shards, DRIVER), drives pusher-js clients, and checks every
# webhook with the `pusher` server SDK's own validation (docs/pusher.md, "Webhooks").
#
# usage: bash tests/conformance/pusher-webhooks.sh [DRIVER]   (uring, epoll or auto; default auto)
# Environment: RINGCAST_BIN (default target/release/ringcast), CARGO_TARGET_DIR, PUSHER_WAIT_S.
# Prints one line "pusher-webhooks: PASS ..." or "pusher-webhooks: FAIL reason".
# Exit: 0 pass, 1 fail, 2 setup problem.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

WORK=""
cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT

main() {
  local driver="${1:-auto}"
  case "$driver" in uring | epoll | auto) ;; *) die "DRIVER must be uring, epoll or auto" ;; esac
  local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  [[ "$target" == /* ]] || target="$REPO_ROOT/$target"
  local bin="${RINGCAST_BIN:-$target/release/ringcast}"
  [ -x "$bin" ] || die "no server binary at $bin (cargo build --release)"
  if [ ! -d "$NODE_DIR/node_modules/pusher-js" ] || [ ! -d "$NODE_DIR/node_modules/pusher" ]; then
    die "no pusher-js / pusher in $NODE_DIR: run bash tests/conformance/install.sh node"
  fi
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-webhooks.XXXXXX")"
  local out rc=0
  out="$(NODE_PATH="$NODE_DIR/node_modules" timeout --kill-after=5 90 node \
    "$CONFORMANCE_DIR/lib/pusher-webhooks.cjs" "$bin" "$driver" "$WORK" </dev/null)" || rc=$?
  out="$(printf '%s\n' "$out" | tail -n 1)"
  if [ -z "$out" ]; then
    case "$rc" in
      124 | 137) out="FAIL the client timed out after 90s" ;;
      *) out="FAIL no result (client exited $rc)" ;;
    esac
  fi
  echo "pusher-webhooks: $out"
  case "$out" in
    PASS*) [ "$rc" = 0 ] || { log "client printed PASS but exited $rc"; exit 1; } ;;
    *) exit 1 ;;
  esac
}

main "$@"
