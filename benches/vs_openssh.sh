#!/bin/sh
# Portcullis against OpenSSH sshd + `ForceCommand nsenter`, on one real
# busybox LXC container created (and destroyed) for the run. A benchmark,
# not a test; needs root, lxc, openssh-server and python3; loopback only.
#
#   sudo benches/vs_openssh.sh          # full sizes, writes benches/RESULTS.md
#   N=20 OUT_MB=64 IN_MB=64 SESSIONS=50 HOLD=3 REPS=1 sudo -E benches/vs_openssh.sh
#
# Builds target/release/portcullis (recording on; with portcullis-helper) and
# target/bench-norec/portcullis (recording off: --features bench-no-recording)
# unless PORTCULLIS / PORTCULLIS_NOREC name binaries, or SKIP_BUILD=1.
# Knobs (env): N REPS OUT_MB IN_MB TTY_MB SESSIONS HOLD TTFB_N CIPHER ONLY OUT.
set -eu
cd "$(dirname "$0")/.."
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || \
    DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server >/dev/null
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # Both binaries: portcullis runs its sessions through the
    # portcullis-helper next to it (from the same build).
    cargo build --release --bins --features bench-no-recording
    mkdir -p target/bench-norec
    cp target/release/portcullis target/release/portcullis-helper target/bench-norec/
    cargo build --release --bins
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 benches/vs_openssh.py "$@"
