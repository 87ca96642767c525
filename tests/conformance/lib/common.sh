# shellcheck shell=bash disable=SC2034  # the variables are read by the scripts that source this
# Shared shell functions of the conformance scripts. Sourced, not run.
#
# Owns: where the external test tools live, which versions they are, and how they are installed
# (once, from the package registries, serialised with flock so that several scripts may start
# at the same time). Nothing here starts a server or runs a test.
#
# Tools (pinned; change a version here and the next run reinstalls):
#   Python venv  kosoku (Autobahn|Testsuite case runner), websockets (client)
#   Node folder  ws (client), playwright-core (drives the Debian chromium package), pusher-js
#                (the Pusher client Laravel Echo wraps) and pusher (the Pusher server SDK)
#   chromium     Debian package, installed with apt-get when missing and running as root

CONFORMANCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$CONFORMANCE_DIR/../.." && pwd)"
TEST_CACHE="${RINGCAST_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringcast-test}"

KOSOKU_VERSION=0.1.0
WEBSOCKETS_VERSION=17.4
NODE_WS_VERSION=8.23.0
PUSHER_JS_VERSION=8.6.0
PUSHER_SDK_VERSION=5.3.4
# playwright-core 1.62 and later need Node >= 20; Debian 12's own nodejs package is Node 18,
# which gets the newest release that still supports it.
PLAYWRIGHT_CORE_VERSION=1.65.1
PLAYWRIGHT_CORE_VERSION_NODE18=1.61.1

VENV="$TEST_CACHE/venv"
NODE_DIR="$TEST_CACHE/node"
# Upper bound for one install command (pip, npm, apt-get), in seconds.
INSTALL_LIMIT_S="${RINGCAST_INSTALL_LIMIT_S:-900}"

SCRIPT_NAME="$(basename "$0")"
log() { echo "[$SCRIPT_NAME] $*" >&2; }
die() { echo "[$SCRIPT_NAME] error: $*" >&2; exit 2; }

# Print the calling script's header comment (its usage) and exit 2.
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

# The install lock is held only while installing, never while a test runs.
install_lock() {
  mkdir -p "$TEST_CACHE" || die "cannot create cache dir $TEST_CACHE"
  exec 9>"$TEST_CACHE/.install.lock"
  flock -w "$INSTALL_LIMIT_S" 9 || die "could not take the install lock $TEST_CACHE/.install.lock"
}
install_unlock() {
  flock -u 9 2>/dev/null || true
  exec 9>&-
}

# apt-get as root only; a developer's machine without root gets a message instead.
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "missing Debian package(s) $*: install them (apt-get install $*) or run as root"
  fi
  log "apt-get install $*"
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
  # Try without refreshing the package lists first: CI has just refreshed them.
  DEBIAN_FRONTEND=noninteractive timeout "$INSTALL_LIMIT_S" \
    "${apt[@]}" install --no-install-recommends "$@" >&2 \
    || { DEBIAN_FRONTEND=noninteractive timeout "$INSTALL_LIMIT_S" "${apt[@]}" update >&2 \
         && DEBIAN_FRONTEND=noninteractive timeout "$INSTALL_LIMIT_S" \
              "${apt[@]}" install --no-install-recommends "$@" >&2; } \
    || die "apt-get install $* failed"
}

python_tools_ok() {
  [ -f "$VENV/.stamp-kosoku-$KOSOKU_VERSION-websockets-$WEBSOCKETS_VERSION" ] \
    && [ -x "$VENV/bin/kosoku" ] \
    && "$VENV/bin/python" -c 'import websockets' 2>/dev/null
}

# Python venv with kosoku and websockets.
ensure_python_tools() {
  python_tools_ok && return 0
  install_lock
  if python_tools_ok; then install_unlock; return 0; fi
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || die "$py not found (need Python >= 3.10; set PYTHON=...)"
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$py is older than 3.10; set PYTHON=/path/to/python3.10+"
  # A venv whose interpreter is gone (Python upgraded or removed) is rebuilt from scratch.
  if [ -d "$VENV" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then rm -rf "$VENV"; fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating Python venv $VENV with $py"
    if ! timeout "$INSTALL_LIMIT_S" "$py" -m venv "$VENV" >&2; then
      # Debian's python3 ships venv/ensurepip in a separate package.
      rm -rf "$VENV"
      apt_install python3-venv
      timeout "$INSTALL_LIMIT_S" "$py" -m venv "$VENV" >&2 || { rm -rf "$VENV"; die "could not create venv $VENV"; }
    fi
  fi
  log "pip install kosoku==$KOSOKU_VERSION websockets==$WEBSOCKETS_VERSION"
  timeout "$INSTALL_LIMIT_S" "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "kosoku==$KOSOKU_VERSION" "websockets==$WEBSOCKETS_VERSION" >&2 \
    || die "pip install into $VENV failed"
  rm -f "$VENV"/.stamp-*
  touch "$VENV/.stamp-kosoku-$KOSOKU_VERSION-websockets-$WEBSOCKETS_VERSION"
  install_unlock
}

# Which playwright-core fits the installed Node (prints the version, or fails without node).
playwright_core_version() {
  local major
  major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)" || return 1
  if [ "$major" -ge 20 ]; then echo "$PLAYWRIGHT_CORE_VERSION"; else echo "$PLAYWRIGHT_CORE_VERSION_NODE18"; fi
}

node_tools_ok() {
  local pwc
  pwc="$(playwright_core_version)" || return 1
  [ -f "$NODE_DIR/.stamp-ws-$NODE_WS_VERSION-pwc-$pwc-pjs-$PUSHER_JS_VERSION-psdk-$PUSHER_SDK_VERSION" ] \
    && [ -d "$NODE_DIR/node_modules/ws" ] && [ -d "$NODE_DIR/node_modules/playwright-core" ] \
    && [ -d "$NODE_DIR/node_modules/pusher-js" ] && [ -d "$NODE_DIR/node_modules/pusher" ]
}

# Node folder with ws, playwright-core, pusher-js and pusher. playwright-core downloads no
# browser: it drives the chromium Debian package.
ensure_node_tools() {
  node_tools_ok && return 0
  install_lock
  if node_tools_ok; then install_unlock; return 0; fi
  command -v node >/dev/null || die "node not found (need Node >= 18: apt-get install nodejs)"
  command -v npm >/dev/null || die "npm not found (apt-get install npm)"
  local major pwc
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 18 ] || die "node $(node --version) is too old (need Node >= 18)"
  pwc="$(playwright_core_version)"
  mkdir -p "$NODE_DIR"
  printf '{\n  "name": "ringcast-test-tools",\n  "private": true,\n  "dependencies": {\n    "ws": "%s",\n    "playwright-core": "%s",\n    "pusher-js": "%s",\n    "pusher": "%s"\n  }\n}\n' \
    "$NODE_WS_VERSION" "$pwc" "$PUSHER_JS_VERSION" "$PUSHER_SDK_VERSION" >"$NODE_DIR/package.json"
  log "npm install ws@$NODE_WS_VERSION playwright-core@$pwc pusher-js@$PUSHER_JS_VERSION pusher@$PUSHER_SDK_VERSION"
  (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout "$INSTALL_LIMIT_S" \
     npm install --no-audit --no-fund --no-progress --no-package-lock --loglevel=error >&2) \
    || die "npm install in $NODE_DIR failed"
  rm -f "$NODE_DIR"/.stamp-*
  touch "$NODE_DIR/.stamp-ws-$NODE_WS_VERSION-pwc-$pwc-pjs-$PUSHER_JS_VERSION-psdk-$PUSHER_SDK_VERSION"
  install_unlock
}

# The chromium Debian package (or the browser named by CHROMIUM).
ensure_chromium() {
  CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
  if [ -z "$CHROMIUM" ]; then
    install_lock
    if ! command -v chromium >/dev/null; then apt_install chromium; fi
    install_unlock
    CHROMIUM="$(command -v chromium)" || die "chromium still not on PATH after installing it"
  fi
  [ -x "$CHROMIUM" ] || die "CHROMIUM=$CHROMIUM is not an executable"
  export CHROMIUM
}

# Split ws://host:port/path into WS_URL, WS_HOST and WS_PORT. Plain ws:// only.
parse_ws_url() {
  local url="$1" rest hostport
  case "$url" in
    ws://*) rest="${url#ws://}" ;;
    wss://*) die "wss:// is not supported: test the plain ws:// listener" ;;
    *) die "not a ws:// URL: $url" ;;
  esac
  hostport="${rest%%[/?]*}"
  WS_URL="$url"
  WS_HOST="${hostport%:*}"
  WS_PORT="${hostport##*:}"
  [ "$WS_HOST" != "$hostport" ] || WS_PORT=80
  WS_HOST="${WS_HOST#[}"
  WS_HOST="${WS_HOST%]}"
}

# Bounded poll until something accepts TCP connections on HOST PORT (SECONDS, default 10).
wait_tcp() {
  local host="$1" port="$2" secs="${3:-10}" i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
