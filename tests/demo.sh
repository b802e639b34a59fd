#!/usr/bin/env bash
# Brings up a working Portcullis gateway on this machine, from nothing:
#
#   bash tests/demo.sh          (from the repository root; as root, or as a
#                                user with sudo: it re-runs itself with sudo)
#
# 1. installs what is missing (lxc, busybox-static, openssh-client; nodejs and
#    npm only when `node` is missing) with apt-get,
# 2. installs the test IdP's Node dependencies (`npm ci --prefix tests/idp`),
# 3. builds the gateway (`cargo build`, debug; a no-op when up to date),
# 4. creates (once) and starts the busybox LXC container `demo1`, with a login
#    `app` (uid 1000) next to root,
# 5. starts the test OpenID provider (tests/idp/server.mjs) on 127.0.0.1,
# 6. writes portcullis-demo/portcullis.toml and runs
#    `target/debug/portcullis serve` in the foreground until Ctrl-C.
#
# Ctrl-C stops the gateway and the IdP; the container is left for the next
# run (`lxc-stop -n demo1 && lxc-destroy -n demo1` removes it).
#
# Environment:
#   IDP_PORT   port of the test IdP on 127.0.0.1 (default 9090)
#   LISTEN     address the gateway listens on (default 0.0.0.0:2222)
#   PORTCULLIS_LOG  gateway log filter (default info)
set -euo pipefail

# Not root: run again as root with sudo (keeping the knobs below); a fresh
# Debian logged in as root has no sudo and needs none.
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "demo.sh: run me as root (this machine has no sudo): su -c 'bash $0'" >&2
    exit 1
  fi
  echo "demo.sh: not root, re-running with sudo" >&2
  exec sudo --preserve-env=IDP_PORT,LISTEN,PORTCULLIS_LOG bash "$(readlink -f "$0")" "$@"
fi

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CONTAINER=demo1
IDP_PORT=${IDP_PORT:-9090}
LISTEN=${LISTEN:-0.0.0.0:2222}
DEMO_DIR=portcullis-demo
DEMO_NAME=demo.sh
CONFIG=$DEMO_DIR/portcullis.toml

if [ ! -f Cargo.toml ] || [ ! -f tests/idp/server.mjs ] || [ ! -f tests/demo-lib.sh ]; then
  echo "demo.sh: cannot find the repository root (expected Cargo.toml, tests/idp/server.mjs and tests/demo-lib.sh in $ROOT)" >&2
  exit 1
fi
# shellcheck source=tests/demo-lib.sh
. tests/demo-lib.sh
case $IDP_PORT in '' | *[!0-9]*) die "IDP_PORT must be a port number, not '$IDP_PORT'" ;; esac
GW_PORT=${LISTEN##*:}
case $GW_PORT in '' | *[!0-9]*) die "LISTEN must be ADDRESS:PORT, not '$LISTEN'" ;; esac

install_packages
build_all
mkdir -p "$DEMO_DIR"
make_container "$CONTAINER" "$(lxc-config lxc.lxcpath 2>/dev/null || echo /var/lib/lxc)"

require_free_port "$IDP_PORT" "the test IdP's" "IDP_PORT=9091 bash tests/demo.sh"
require_free_port "$GW_PORT" "the gateway's" "LISTEN=0.0.0.0:2223 bash tests/demo.sh"

IDP_PID=''
GW_PID=''
TAIL_PID=''
cleanup() {
  trap - EXIT INT TERM
  echo
  [ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null || true
  stop_process "the gateway" "$GW_PID"
  stop_process "the test IdP" "$IDP_PID"
  exec 7>&-
  rm -f "$DEMO_DIR/idp.stdin"
  say "container $CONTAINER is left running for the next run (lxc-stop -n $CONTAINER to stop it)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_idp "$IDP_PORT"

# ---------------------------------------------------------------- gateway
cat >"$CONFIG" <<EOF
# Written by tests/demo.sh; rewritten on every run.
# Relative paths are relative to the directory portcullis runs in (the
# repository root).
listen = "$LISTEN"
state_dir = "$DEMO_DIR/state"

[oidc]
issuer = "$ISSUER"
client_id = "portcullis"

[policy]
dir = "./policies"

[containers.$CONTAINER]
labels = { env = "dev" }
EOF

say "starting the gateway: target/debug/portcullis serve --config $CONFIG"
: >"$DEMO_DIR/gateway.log"
PORTCULLIS_LOG=${PORTCULLIS_LOG:-info} "$BIN" serve --config "$CONFIG" </dev/null >>"$DEMO_DIR/gateway.log" 2>&1 7>&- &
GW_PID=$!
wait_for_log "the gateway" "$GW_PID" "$DEMO_DIR/gateway.log" 'portcullis listening'
FINGERPRINT=$(grep -o 'SHA256:[A-Za-z0-9+/=]*' "$DEMO_DIR/gateway.log" | head -1 || true)

P=$GW_PORT
cat <<EOF

${B}Portcullis is running${N}: gateway on $LISTEN, test IdP at $ISSUER,
container $CONTAINER (labels env=dev). Host key: ${FINGERPRINT:-see $DEMO_DIR/gateway.log}

${B}Connect${N} (the SSH user name is [login@]container):
    ssh -p $P root@$CONTAINER@127.0.0.1     as admin: policy "admins-anything"
    ssh -p $P app@$CONTAINER@127.0.0.1      as alice: policy "developers-dev-non-root"
                                            (developers may not log in as root)

${B}Log in${N}:
    1. At "Paste a token, or press Enter to log in with your browser:" press Enter.
    2. Open the URL shown (http://127.0.0.1:$IDP_PORT/device), type the code shown
       and sign in as ${B}admin${N} (or ${B}alice${N}) with any password, then press Enter
       in ssh. No browser? In another terminal run:
           node tests/idp/login.mjs 'URL' admin CODE
    The IdP listens on 127.0.0.1 only: from another machine, forward it first
    (ssh -L $IDP_PORT:127.0.0.1:$IDP_PORT this-host).

${B}Review${N} (as root, from $ROOT):
    target/debug/portcullis sessions list --config $CONFIG
    target/debug/portcullis sessions play ID --config $CONFIG
    target/debug/portcullis audit list --config $CONFIG
    target/debug/portcullis policy check --principal alice --group developers \\
        --container $CONTAINER --login root --config $CONFIG

Ctrl-C stops the gateway and the IdP. Gateway log ($DEMO_DIR/gateway.log) follows.

EOF

tail -n +1 -f --pid="$GW_PID" "$DEMO_DIR/gateway.log" &
TAIL_PID=$!
set +e
wait "$GW_PID"
rc=$?
GW_PID=''
set -e
die "the gateway exited on its own (status $rc); see $DEMO_DIR/gateway.log"
