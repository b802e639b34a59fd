#!/bin/sh
# Times `portcullis attach C -- true` against `lxc-attach -n C -- true` and
# `nsenter -t PID -a true` on the same running LXC container: RUNS runs each
# (default 200, interleaved), median and p99 wall-clock time in
# milliseconds. A benchmark, not a test. Needs root.
#
#   sudo benches/attach.sh CONTAINER [RUNS]     # writes benches/ATTACH.md
#
# The table replaces the top of benches/ATTACH.md; everything from the line
# `<!-- analysis -->` on is kept.
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

# time FILE CMD...: one timed run of CMD, its wall-clock microseconds
# appended to FILE.
time_one() {
    f=$1; shift
    t0=$(date +%s%N)
    "$@" </dev/null >/dev/null 2>&1
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000 )) >> "$f"
}

# row LABEL FILE: prints "| LABEL | median | p99 |" of the times in FILE.
row() {
    sort -n "$2" > "$2.sorted"
    med=$(sed -n "$(( (N + 1) / 2 ))p" "$2.sorted")
    p99=$(sed -n "$(( (N * 99 + 99) / 100 ))p" "$2.sorted")
    printf '| %s | %d.%03d | %d.%03d |\n' "$1" $((med / 1000)) $((med % 1000)) \
        $((p99 / 1000)) $((p99 % 1000))
}

P="$BIN attach --config $tmp/portcullis.toml $C -- true"
L="lxc-attach -n $C -- true"
S="nsenter -t $PID -a true"
for cmd in "$P" "$L" "$S"; do
    $cmd </dev/null >/dev/null 2>&1 || { echo "'$cmd' fails" >&2; exit 1; }
done
# Interleaved (one run of each per round, the order rotating), so that
# the load of a shared machine and the kernel's warm state (caches, the
# cgroup lock's RCU state after a recent migration) fall on all three alike.
i=0
while [ "$i" -lt "$N" ]; do
    case $((i % 3)) in
    0) time_one "$tmp/p" $P; time_one "$tmp/l" $L; time_one "$tmp/s" $S ;;
    1) time_one "$tmp/l" $L; time_one "$tmp/s" $S; time_one "$tmp/p" $P ;;
    2) time_one "$tmp/s" $S; time_one "$tmp/p" $P; time_one "$tmp/l" $L ;;
    esac
    i=$((i + 1))
done

{
    echo "# Attach benchmark"
    echo
    echo "\`benches/attach.sh $C $N\` on $(uname -r), $(nproc) cores, $(date -u +%Y-%m-%d), load average $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Wall-clock time of one complete run of \`true\` in the container, $N runs each, interleaved."
    echo
    echo "| command | median (ms) | p99 (ms) |"
    echo "| --- | --- | --- |"
    row "portcullis attach $C -- true" "$tmp/p"
    row "lxc-attach -n $C -- true" "$tmp/l"
    row "nsenter -t PID -a true" "$tmp/s"
} | tee "$tmp/result"
# Keep the hand-written analysis below the marker line of an existing file.
if [ -f "$OUT" ] && grep -q '^<!-- analysis -->$' "$OUT"; then
    echo >> "$tmp/result"
    sed -n '/^<!-- analysis -->$/,$p' "$OUT" >> "$tmp/result"
fi
cp "$tmp/result" "$OUT"
