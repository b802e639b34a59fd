#!/bin/sh
# Times `portcullis attach C -- true` against `lxc-attach -n C -- true` and
# `nsenter -t PID -a true` on the same running LXC container: RUNS runs each
# (default 200), median and p99 wall-clock time in milliseconds. A benchmark,
# not a test. Needs root.
#
#   sudo benches/attach.sh CONTAINER [RUNS]     # writes benches/ATTACH.md
#
# PORTCULLIS=path/to/portcullis overrides the binary (default
# target/release/portcullis; build it with `cargo build --release`).
set -eu
C=${1:?usage: benches/attach.sh CONTAINER [RUNS]}
N=${2:-200}
BIN=${PORTCULLIS:-target/release/portcullis}
OUT=${OUT:-benches/ATTACH.md}
PID=$(lxc-info -n "$C" -p -H)
[ -n "$PID" ] || { echo "container $C is not running" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/portcullis.toml" <<CONF
state_dir = "$tmp/state"
[oidc]
issuer = "https://idp.invalid"
client_id = "bench"
CONF

# run LABEL CMD...: N timed runs; prints "LABEL median p99".
run() {
    label=$1; shift
    "$@" </dev/null >/dev/null 2>&1 || { echo "$label: '$*' fails" >&2; exit 1; }
    i=0
    while [ "$i" -lt "$N" ]; do
        t0=$(date +%s%N)
        "$@" </dev/null >/dev/null 2>&1
        t1=$(date +%s%N)
        echo $(( (t1 - t0) / 1000 ))
        i=$((i + 1))
    done | sort -n > "$tmp/t"
    med=$(sed -n "$(( (N + 1) / 2 ))p" "$tmp/t")
    p99=$(sed -n "$(( (N * 99 + 99) / 100 ))p" "$tmp/t")
    printf '| %s | %d.%03d | %d.%03d |\n' "$label" $((med / 1000)) $((med % 1000)) \
        $((p99 / 1000)) $((p99 % 1000))
}

{
    echo "# Attach benchmark"
    echo
    echo "\`benches/attach.sh $C $N\` on $(uname -r), $(nproc) cores, $(date -u +%Y-%m-%d)."
    echo "Wall-clock time of one complete run of \`true\` in the container, $N runs each."
    echo
    echo "| command | median (ms) | p99 (ms) |"
    echo "| --- | --- | --- |"
    run "portcullis attach $C -- true" "$BIN" attach --config "$tmp/portcullis.toml" "$C" -- true
    run "lxc-attach -n $C -- true" lxc-attach -n "$C" -- true
    run "nsenter -t PID -a true" nsenter -t "$PID" -a true
} | tee "$tmp/result"
cp "$tmp/result" "$OUT"
