#!/usr/bin/env bash
# Install the external tools of the conformance tests into the test cache (idempotent).
#
# usage: install.sh [debian] [python] [node] [chromium]   (no argument: all four)
#   debian    the Debian packages the examples use (php-cli, php-redis, socat, netcat-openbsd,
#             redis-server with redis-cli) and the
#             monitoring checks use (prometheus: the prometheus and promtool commands; curl), via
#             apt-get as root when a command is missing, with one `apt-get update` for all of
#             them (on a fresh machine the test command needs no separate setup step)
#   python    venv with kosoku (Autobahn cases) and websockets (client), from PyPI
#   node      ws (client), playwright-core (browser driver), pusher-js and pusher (the
#             Pusher client and server SDK, tests/conformance/pusher.sh), from npm
#   chromium  the chromium Debian package (apt-get, as root) when it is missing
# Cache: ${RINGCAST_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringcast-test}
# Exit: 0 installed or already there, 2 an install failed.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# apt-get install what is missing (command -> package), once, as root; otherwise say what to run.
# apt_install (lib/common.sh) tries without refreshing the package lists first and runs
# `apt-get update` only when that fails, so a run whose lists are fresh (CI has just refreshed
# them) makes no second update.
ensure_debian_packages() {
  local missing=() pair cmd pkg
  for pair in php:php-cli socat:socat nc:netcat-openbsd prometheus:prometheus promtool:prometheus curl:curl \
    redis-server:redis-server redis-cli:redis-tools; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    command -v "$cmd" >/dev/null || [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
  done
  # The PHP Redis extension of examples/05-task-progress (a PHP module, not a command).
  { command -v php >/dev/null && php -m 2>/dev/null | grep -qx redis; } || missing+=(php-redis)
  if [ ${#missing[@]} -eq 0 ]; then
    log "debian packages ready (php, php-redis, socat, nc, prometheus, promtool, curl, redis-server, redis-cli)"
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})"
  fi
  install_lock
  log "installing ${missing[*]} (apt-get)"
  apt_install "${missing[@]}"
  install_unlock
}

main() {
  local what=("$@")
  [ ${#what[@]} -gt 0 ] || what=(debian python node chromium)
  local w
  for w in "${what[@]}"; do
    case "$w" in
      debian) ensure_debian_packages ;;
      python) ensure_python_tools; log "python tools ready: $VENV (kosoku $KOSOKU_VERSION, websockets $WEBSOCKETS_VERSION)" ;;
      node) ensure_node_tools; log "node tools ready: $NODE_DIR (ws $NODE_WS_VERSION, playwright-core $(playwright_core_version), pusher-js $PUSHER_JS_VERSION, pusher $PUSHER_SDK_VERSION, node $(node --version))" ;;
      chromium) ensure_chromium; log "chromium ready: $CHROMIUM" ;;
      -h | --help) usage ;;
      *) log "unknown tool group: $w"; usage ;;
    esac
  done
}

main "$@"
