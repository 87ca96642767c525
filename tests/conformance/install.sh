#!/usr/bin/env bash
# Install the external tools of the conformance tests into the test cache (idempotent).
#
# usage: install.sh [python] [node] [chromium]      (no argument: all three)
#   python    venv with kosoku (Autobahn cases) and websockets (client), from PyPI
#   node      ws (client) and playwright-core (browser driver), from npm
#   chromium  the chromium Debian package (apt-get, as root) when it is missing
# Cache: ${RINGCAST_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringcast-test}
# Exit: 0 installed or already there, 2 an install failed.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

main() {
  local what=("$@")
  [ ${#what[@]} -gt 0 ] || what=(python node chromium)
  local w
  for w in "${what[@]}"; do
    case "$w" in
      python) ensure_python_tools; log "python tools ready: $VENV (kosoku $KOSOKU_VERSION, websockets $WEBSOCKETS_VERSION)" ;;
      node) ensure_node_tools; log "node tools ready: $NODE_DIR (ws $NODE_WS_VERSION, playwright-core $(playwright_core_version), node $(node --version))" ;;
      chromium) ensure_chromium; log "chromium ready: $CHROMIUM" ;;
      -h | --help) usage ;;
      *) log "unknown tool group: $w"; usage ;;
    esac
  done
}

main "$@"
