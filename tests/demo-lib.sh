# Shared by tests/demo.sh (one gateway) and tests/fleet-demo.sh (a fleet):
# sourced by them from the repository root, as root. Not a script of its
# own. Each function dies with a message saying what to do next.
#
# The caller sets DEMO_NAME (its name in messages) and DEMO_DIR (where
# logs and state go) before sourcing this file.

export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

if [ -t 1 ]; then B=$'\033[1m' R=$'\033[1;31m' N=$'\033[0m'; else B='' R='' N=''; fi
say() { printf '%s==> %s%s\n' "$B" "$*" "$N"; }
die() { printf '%s%s: %s%s\n' "$R" "$DEMO_NAME" "$*" "$N" >&2; exit 1; }

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

# Installs with apt-get what a demo needs and is missing: lxc, static
# busybox, ssh, rsync, libseccomp, node; plus the Debian packages named in
# $@ (each given as COMMAND:PACKAGE, installed when COMMAND is missing).
install_packages() {
  local need=() pair busybox
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
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || [ -x "${pair%%:*}" ] || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    say "installing: ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    say "packages: lxc, busybox (static), ssh, node${*:+ and the rest} are present"
  fi
  command -v npm >/dev/null || die "node is installed but npm is not; install npm (apt-get install npm)"
  local node_major
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -lt 20 ]; then
    echo "$DEMO_NAME: warning: node $(node --version) is older than the Node 20 the test IdP is used with; if it fails to start, install Node 20 or newer" >&2
  fi
}

# Installs the test IdP's dependencies (once) and builds the gateway (debug;
# a no-op when up to date). Sets BIN.
build_all() {
  if [ ! -d tests/idp/node_modules ]; then
    say "installing the test IdP's dependencies (npm ci --prefix tests/idp)"
    as_owner npm ci --prefix tests/idp --no-audit --no-fund
  fi
  if ! as_owner sh -c 'command -v cargo' >/dev/null; then
    die "cargo not found; install Rust with rustup (https://rustup.rs), then run me again"
  fi
  say "building the gateway (cargo build)"
  as_owner cargo build
  BIN=$(pwd)/target/debug/portcullis
  [ -x "$BIN" ] || die "cargo build did not produce $BIN"
}

# make_container NAME LXCPATH: creates (once) the busybox LXC container NAME
# under LXCPATH, with a login `app` (uid 1000) next to root, and starts it.
# Sets CONTAINER_PID (its init).
make_container() {
  local name=$1 lxcpath=$2 cdir conf rootfs state pid=''
  cdir=$lxcpath/$name
  mkdir -p "$lxcpath"
  if [ ! -f "$cdir/config" ]; then
    say "creating LXC container $name (busybox template) in $lxcpath"
    conf=$DEMO_DIR/lxc-$name.conf
    printf '%s\n' 'lxc.net.0.type = empty' 'lxc.apparmor.profile = unconfined' 'lxc.pty.max = 64' >"$conf"
    lxc-create -P "$lxcpath" -n "$name" -t busybox -f "$conf" >"$DEMO_DIR/lxc-create-$name.log" 2>&1 ||
      { cat "$DEMO_DIR/lxc-create-$name.log" >&2; die "lxc-create of $name failed (log above)"; }
  else
    say "reusing LXC container $name ($cdir)"
  fi
  # The busybox template writes its own lxc.pty.max = 1 after ours: make ours
  # the only value (takes effect when the container starts).
  if ! grep -qx 'lxc.pty.max = 64' "$cdir/config" || [ "$(grep -c '^lxc\.pty\.max' "$cdir/config")" != 1 ]; then
    sed -i '/^lxc\.pty\.max[[:space:]]*=/d' "$cdir/config"
    echo 'lxc.pty.max = 64' >>"$cdir/config"
  fi
  rootfs=$(sed -n 's/^lxc\.rootfs\.path[[:space:]]*=[[:space:]]*\(dir:\)\{0,1\}//p' "$cdir/config" | tail -1)
  rootfs=${rootfs:-$cdir/rootfs}
  [ -d "$rootfs/etc" ] || die "container rootfs $rootfs has no /etc"
  grep -q '^app:' "$rootfs/etc/passwd" || echo 'app:x:1000:1000:App:/home/app:/bin/sh' >>"$rootfs/etc/passwd"
  grep -q '^app:' "$rootfs/etc/group" || echo 'app:x:1000:' >>"$rootfs/etc/group"
  mkdir -p "$rootfs/home/app"
  chown 1000:1000 "$rootfs/home/app"
  echo "$name" >"$rootfs/etc/hostname"

  state=$(lxc-info -P "$lxcpath" -n "$name" -s -H 2>/dev/null || true)
  if [ "$state" != RUNNING ]; then
    say "starting container $name"
    lxc-start -P "$lxcpath" -n "$name" -l INFO -o "$(pwd)/$DEMO_DIR/lxc-$name.log" ||
      die "lxc-start failed; see $DEMO_DIR/lxc-$name.log (or try: lxc-start -P $lxcpath -n $name -F)"
  fi
  for _ in $(seq 100); do
    pid=$(lxc-info -P "$lxcpath" -n "$name" -p -H 2>/dev/null || true)
    [ -n "$pid" ] && break
    sleep 0.2
  done
  [ -n "$pid" ] || die "container $name did not start; see $DEMO_DIR/lxc-$name.log"
  say "container $name is running (init pid $pid)"
  CONTAINER_PID=$pid
}

# Dies unless TCP port $1 (what it is for: $2) is free; $3 says how to pick
# another one.
require_free_port() {
  local out old_issuer
  out=$(port_in_use "$1") || return 0
  printf '%s\n' "$out" >&2
  old_issuer=$(node -e 'fetch(process.argv[1]).then((r) => r.json()).then((j) => console.log(j.issuer ?? "")).catch(() => {})' \
    "http://127.0.0.1:$1/.well-known/openid-configuration" 2>/dev/null || true)
  [ -z "$old_issuer" ] ||
    die "port $1 ($2) is held by an OpenID provider that is still running ($old_issuer), most likely the test IdP of an earlier demo run or test. Stop it (kill PID, see above), or pick another port: $3"
  die "port $1 ($2) is already in use, probably by a process of an earlier demo run. Stop that process (kill PID), or pick another port: $3"
}

# start_idp PORT: starts the test OpenID provider on 127.0.0.1:PORT. Sets
# IDP_PID and ISSUER. Its stdin is a FIFO whose only writer is this shell
# (fd 7): the IdP exits when it closes, so it also goes away if the demo
# is killed. Start other children with `7>&-`.
start_idp() {
  say "starting the test IdP on 127.0.0.1:$1"
  rm -f "$DEMO_DIR/idp.stdin"
  mkfifo "$DEMO_DIR/idp.stdin"
  exec 7<>"$DEMO_DIR/idp.stdin"
  : >"$DEMO_DIR/idp.out"
  PORT=$1 node tests/idp/server.mjs <"$DEMO_DIR/idp.stdin" >"$DEMO_DIR/idp.out" 2>"$DEMO_DIR/idp.log" 7>&- &
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
}

# stop_process WHAT PID: TERM, up to 12 s, then KILL.
stop_process() {
  [ -n "$2" ] && kill -0 "$2" 2>/dev/null || return 0
  say "stopping $1 (pid $2)"
  kill -TERM "$2" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$2" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$2" 2>/dev/null || true
}

# wait_for_log WHAT PID LOG PATTERN: until LOG has PATTERN (30 s); dies if
# PID exits first.
wait_for_log() {
  for _ in $(seq 150); do
    grep -q "$4" "$3" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "$1 exited (log above)"; }
    sleep 0.2
  done
  cat "$3" >&2
  die "$1 did not start within 30 s (log above)"
}
