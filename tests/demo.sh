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
CONFIG=$DEMO_DIR/portcullis.toml
export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

if [ -t 1 ]; then B=$'\033[1m' R=$'\033[1;31m' N=$'\033[0m'; else B='' R='' N=''; fi
say() { printf '%s==> %s%s\n' "$B" "$*" "$N"; }
die() { printf '%sdemo.sh: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

[ -f Cargo.toml ] && [ -f tests/idp/server.mjs ] || die "cannot find the repository root (expected Cargo.toml and tests/idp/server.mjs in $ROOT)"
case $IDP_PORT in '' | *[!0-9]*) die "IDP_PORT must be a port number, not '$IDP_PORT'" ;; esac
GW_PORT=${LISTEN##*:}
case $GW_PORT in '' | *[!0-9]*) die "LISTEN must be ADDRESS:PORT, not '$LISTEN'" ;; esac

# Build tools run as the owner of the checkout, so `sudo` does not leave
# root-owned files in target/ or node_modules/ (and the owner's rustup is used).
OWNER=$(stat -c %U .)
as_owner() {
  if [ "$OWNER" != root ] && command -v runuser >/dev/null; then
    local home
    home=$(getent passwd "$OWNER" | cut -d: -f6)
    runuser -u "$OWNER" -- env HOME="$home" PATH="$home/.cargo/bin:$PATH" "$@"
  else
    "$@"
  fi
}

# Is something listening on TCP port $1? Prints the listener when it can.
port_in_use() {
  if command -v ss >/dev/null; then
    local lines
    lines=$(ss -Hltnp "sport = :$1" 2>/dev/null || true)
    [ -n "$lines" ] || return 1
    printf '%s\n' "$lines" | sed -n 's/.*users:((\(.*\)))/    held by: \1/p' | head -3
    return 0
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---------------------------------------------------------------- packages
need=()
command -v lxc-create >/dev/null || need+=(lxc)
# The busybox template copies the busybox binary into the container, so it
# must be the static one (Debian's `busybox` package is dynamically linked).
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then need+=(busybox-static); fi
command -v ssh >/dev/null || need+=(openssh-client)
command -v rsync >/dev/null || need+=(rsync)
# The build links libseccomp (the attach helper's seccomp deny-list).
ls /usr/lib/*/libseccomp.so >/dev/null 2>&1 || need+=(libseccomp-dev)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  say "installing: ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  say "packages: lxc, busybox (static), ssh, node are present"
fi
command -v npm >/dev/null || die "node is installed but npm is not; install npm (apt-get install npm)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "demo.sh: warning: node $(node --version) is older than the Node 20 the test IdP is used with; if it fails to start, install Node 20 or newer" >&2
fi

# ---------------------------------------------------------------- IdP deps
if [ ! -d tests/idp/node_modules ]; then
  say "installing the test IdP's dependencies (npm ci --prefix tests/idp)"
  as_owner npm ci --prefix tests/idp --no-audit --no-fund
fi

# ---------------------------------------------------------------- build
if ! as_owner sh -c 'command -v cargo' >/dev/null; then
  die "cargo not found; install Rust with rustup (https://rustup.rs), then run me again"
fi
say "building the gateway (cargo build)"
as_owner cargo build
BIN=$ROOT/target/debug/portcullis
[ -x "$BIN" ] || die "cargo build did not produce $BIN"

mkdir -p "$DEMO_DIR"

# ---------------------------------------------------------------- container
LXCPATH=$(lxc-config lxc.lxcpath 2>/dev/null || echo /var/lib/lxc)
CDIR=$LXCPATH/$CONTAINER
if [ ! -f "$CDIR/config" ]; then
  say "creating LXC container $CONTAINER (busybox template)"
  conf=$DEMO_DIR/lxc-$CONTAINER.conf
  printf '%s\n' 'lxc.net.0.type = empty' 'lxc.apparmor.profile = unconfined' 'lxc.pty.max = 64' >"$conf"
  lxc-create -n "$CONTAINER" -t busybox -f "$conf" >"$DEMO_DIR/lxc-create.log" 2>&1 ||
    { cat "$DEMO_DIR/lxc-create.log" >&2; die "lxc-create failed (log above)"; }
else
  say "reusing LXC container $CONTAINER ($CDIR)"
fi
# The busybox template writes its own lxc.pty.max = 1 after ours: make ours
# the only value (takes effect when the container starts).
if ! grep -qx 'lxc.pty.max = 64' "$CDIR/config" || [ "$(grep -c '^lxc\.pty\.max' "$CDIR/config")" != 1 ]; then
  sed -i '/^lxc\.pty\.max[[:space:]]*=/d' "$CDIR/config"
  echo 'lxc.pty.max = 64' >>"$CDIR/config"
fi
ROOTFS=$(sed -n 's/^lxc\.rootfs\.path[[:space:]]*=[[:space:]]*\(dir:\)\{0,1\}//p' "$CDIR/config" | tail -1)
ROOTFS=${ROOTFS:-$CDIR/rootfs}
[ -d "$ROOTFS/etc" ] || die "container rootfs $ROOTFS has no /etc"
grep -q '^app:' "$ROOTFS/etc/passwd" || echo 'app:x:1000:1000:App:/home/app:/bin/sh' >>"$ROOTFS/etc/passwd"
grep -q '^app:' "$ROOTFS/etc/group" || echo 'app:x:1000:' >>"$ROOTFS/etc/group"
mkdir -p "$ROOTFS/home/app"
chown 1000:1000 "$ROOTFS/home/app"
echo "$CONTAINER" >"$ROOTFS/etc/hostname"

state=$(lxc-info -n "$CONTAINER" -s -H 2>/dev/null || true)
if [ "$state" != RUNNING ]; then
  say "starting container $CONTAINER"
  lxc-start -n "$CONTAINER" -l INFO -o "$ROOT/$DEMO_DIR/lxc-$CONTAINER.log" ||
    die "lxc-start failed; see $DEMO_DIR/lxc-$CONTAINER.log (or try: lxc-start -n $CONTAINER -F)"
fi
for _ in $(seq 100); do
  pid=$(lxc-info -n "$CONTAINER" -p -H 2>/dev/null || true)
  [ -n "$pid" ] && break
  sleep 0.2
done
[ -n "${pid:-}" ] || die "container $CONTAINER did not start; see $DEMO_DIR/lxc-$CONTAINER.log"
say "container $CONTAINER is running (init pid $pid)"

# ---------------------------------------------------------------- ports
if out=$(port_in_use "$IDP_PORT"); then
  printf '%s\n' "$out" >&2
  old_issuer=$(node -e 'fetch(process.argv[1]).then((r) => r.json()).then((j) => console.log(j.issuer ?? "")).catch(() => {})' \
    "http://127.0.0.1:$IDP_PORT/.well-known/openid-configuration" 2>/dev/null || true)
  [ -z "$old_issuer" ] ||
    die "port $IDP_PORT is held by an OpenID provider that is still running ($old_issuer), most likely the test IdP of an earlier demo run or test. Stop it (kill PID, see above), or pick another port: IDP_PORT=9091 bash tests/demo.sh"
  die "port $IDP_PORT (the test IdP's) is already in use, probably by an IdP or gateway of an earlier demo run. Stop that process (kill PID), or pick another port: IDP_PORT=9091 bash tests/demo.sh"
fi
if out=$(port_in_use "$GW_PORT"); then
  printf '%s\n' "$out" >&2
  die "port $GW_PORT (the gateway's) is already in use, probably by a gateway of an earlier demo run. Stop that process (kill PID), or pick another address: LISTEN=0.0.0.0:2223 bash tests/demo.sh"
fi

# ---------------------------------------------------------------- IdP
IDP_PID=''
GW_PID=''
TAIL_PID=''
cleanup() {
  trap - EXIT INT TERM
  echo
  [ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null || true
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    say "stopping the gateway (pid $GW_PID)"
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  if [ -n "$IDP_PID" ] && kill -0 "$IDP_PID" 2>/dev/null; then
    say "stopping the test IdP (pid $IDP_PID)"
    kill -TERM "$IDP_PID" 2>/dev/null || true
  fi
  exec 7>&-
  rm -f "$DEMO_DIR/idp.stdin"
  say "container $CONTAINER is left running for the next run (lxc-stop -n $CONTAINER to stop it)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting the test IdP on 127.0.0.1:$IDP_PORT"
# The IdP exits when its stdin closes. Its stdin is a FIFO whose only writer
# is this script (fd 7), so the IdP also goes away if this script is killed.
rm -f "$DEMO_DIR/idp.stdin"
mkfifo "$DEMO_DIR/idp.stdin"
exec 7<>"$DEMO_DIR/idp.stdin"
: >"$DEMO_DIR/idp.out"
PORT=$IDP_PORT node tests/idp/server.mjs <"$DEMO_DIR/idp.stdin" >"$DEMO_DIR/idp.out" 2>"$DEMO_DIR/idp.log" 7>&- &
IDP_PID=$!
ISSUER=''
for _ in $(seq 150); do
  ISSUER=$(sed -n 's/^{"issuer":"\([^"]*\)"}$/\1/p' "$DEMO_DIR/idp.out" | head -1)
  [ -n "$ISSUER" ] && break
  kill -0 "$IDP_PID" 2>/dev/null || { cat "$DEMO_DIR/idp.log" >&2; die "the test IdP exited (log above)"; }
  sleep 0.2
done
[ -n "$ISSUER" ] || { cat "$DEMO_DIR/idp.log" >&2; die "the test IdP did not report its issuer within 30 s"; }
say "test IdP is up: $ISSUER"

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
for _ in $(seq 150); do
  grep -q 'portcullis listening' "$DEMO_DIR/gateway.log" && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$DEMO_DIR/gateway.log" >&2; GW_PID=''; die "the gateway exited (log above)"; }
  sleep 0.2
done
grep -q 'portcullis listening' "$DEMO_DIR/gateway.log" ||
  { cat "$DEMO_DIR/gateway.log" >&2; die "the gateway did not start listening within 30 s"; }
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
