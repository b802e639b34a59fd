#!/usr/bin/env python3
"""Portcullis against OpenSSH sshd + nsenter, on one real LXC container.

A benchmark, not a test; run it through benches/vs_openssh.sh (needs root).
A = sshd on a loopback port, ForceCommand `nsenter -t PID -a` running
$SSH_ORIGINAL_COMMAND (or a login shell); B = Portcullis (recording on);
B0 = Portcullis built with `--features bench-no-recording` (recording off).
Every figure runs A, B and B0 interleaved. Standard library only.
"""

import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(os.environ.get("N", "200"))  # setup latency connections
OUT_MB = int(os.environ.get("OUT_MB", "512"))
IN_MB = int(os.environ.get("IN_MB", "256"))
TTY_MB = int(os.environ.get("TTY_MB", "256"))
REPS = int(os.environ.get("REPS", "3"))  # throughput repetitions
SESSIONS = int(os.environ.get("SESSIONS", "500"))
HOLD = int(os.environ.get("HOLD", "10"))  # seconds of echoing
TTFB_N = int(os.environ.get("TTFB_N", "20"))
CIPHER = os.environ.get("CIPHER", "aes256-gcm@openssh.com")
KEX = "curve25519-sha256"
BIN = os.environ.get("PORTCULLIS", os.path.join(ROOT, "target/release/portcullis"))
BIN_NOREC = os.environ.get("PORTCULLIS_NOREC", os.path.join(ROOT, "target/bench-norec/portcullis"))
OUT = os.environ.get("OUT", os.path.join(ROOT, "benches/RESULTS.md"))
ONLY = os.environ.get("ONLY", "setup,out,text,outtt,texttt,in,ttfb,conc").split(",")

tmp = tempfile.mkdtemp(prefix="portcullis-bench-")
NAME = f"portcullis-bench-{os.getpid()}"
procs = []
created = False


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cleanup():
    for p in procs:
        try:
            p.terminate()
            p.wait(timeout=20)
        except Exception:
            p.kill()
    if sys.exc_info()[0] is not None:  # failing: show the servers' logs
        for log in ("sshd.log", "gateway-B.log", "gateway-B0.log"):
            path = os.path.join(tmp, log)
            if os.path.exists(path):
                print(f"--- {log}\n" + open(path).read()[-3000:], file=sys.stderr)
    if created:
        sh("lxc-stop", "-k", "-n", NAME, check=False)
        sh("lxc-destroy", "-f", "-n", NAME, check=False)
    if not os.environ.get("KEEP"):
        shutil.rmtree(tmp, ignore_errors=True)


def keygen(path):
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", path)


def make_container():
    global created
    conf = os.path.join(tmp, "lxc.conf")
    with open(conf, "w") as f:
        f.write("lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\nlxc.pty.max = 1024\n")
    sh("lxc-create", "-n", NAME, "-t", "busybox", "-f", conf)
    created = True
    # The busybox template appends its own lxc.pty.max = 1.
    sh("sed", "-i", "s/^lxc.pty.max = .*/lxc.pty.max = 1024/", f"/var/lib/lxc/{NAME}/config")
    with open(f"/var/lib/lxc/{NAME}/rootfs/etc/hostname", "w") as f:
        f.write(NAME + "\n")
    sh("lxc-start", "-n", NAME)
    for _ in range(200):
        out = sh("lxc-info", "-n", NAME, "-p", "-H", check=False).stdout.decode().strip()
        if out.isdigit():
            return int(out)
        time.sleep(0.1)
    raise SystemExit(f"{NAME} did not start")


def start_sshd(pid):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    os.makedirs("/run/sshd", exist_ok=True)
    hk = os.path.join(tmp, "sshd_host")
    keygen(hk)
    enter = os.path.join(tmp, "enter.sh")
    with open(enter, "w") as f:
        f.write(
            "#!/bin/sh\n"
            'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then\n'
            f'  exec nsenter -t {pid} -a /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n'
            "fi\n"
            f"exec nsenter -t {pid} -a /bin/sh -l\n"
        )
    os.chmod(enter, 0o755)
    shutil.copy(os.path.join(tmp, "client.pub"), os.path.join(tmp, "authorized_keys"))
    port = free_port()
    cfg = os.path.join(tmp, "sshd_config")
    with open(cfg, "w") as f:
        f.write(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\n"
            f"AuthorizedKeysFile {tmp}/authorized_keys\nPermitRootLogin yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\n"
            f"PidFile {tmp}/sshd.pid\nForceCommand {enter}\nMaxStartups 2000:30:2000\n"
            f"MaxSessions 10\nCiphers {CIPHER}\nKexAlgorithms {KEX}\nLogLevel ERROR\n"
        )
    p = subprocess.Popen([sshd, "-D", "-e", "-f", cfg], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(tmp, "sshd.log"), "w"))
    procs.append(p)
    wait_port(port)
    return p, port


def start_gateway(binary, tag):
    port = free_port()
    state = os.path.join(tmp, f"state-{tag}")
    os.makedirs(state)
    ca = open(os.path.join(tmp, "ca.pub")).read().strip()
    cfg = os.path.join(tmp, f"portcullis-{tag}.toml")
    with open(cfg, "w") as f:
        f.write(
            f'listen = "127.0.0.1:{port}"\nstate_dir = "{state}"\n'
            '[oidc]\nissuer = "http://127.0.0.1:9"\nclient_id = "bench"\n'
            f'[policy]\ndir = "{ROOT}/policies"\n'
            '[auth]\nfailure_delay = "0s"\nmax_unauthenticated = 2000\n'
            '# All clients of the bench come from 127.0.0.1.\n'
            'max_unauthenticated_per_source = 2000\npenalty_min = "0s"\n'
            '[session]\nkill_grace = "1s"\nmax_connections = 4000\n'
            '[certificates]\ngroups_extension = "groups@portcullis"\n'
            f'[[certificates.ca]]\npublic_key = "{ca}"\nprincipal_prefix = "cert:"\nprincipals = ["admin"]\nallowed_groups = ["admins"]\n'
            f'[containers.{NAME}]\nlabels = {{ env = "dev" }}\n'
        )
    log = open(os.path.join(tmp, f"gateway-{tag}.log"), "w")
    p = subprocess.Popen([binary, "serve", "--config", cfg], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, env=dict(os.environ, PORTCULLIS_LOG=os.environ.get("PORTCULLIS_LOG", "warn")))
    procs.append(p)
    wait_port(port)
    return p, port, state


def wait_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def ssh_cmd(target, *args, tty=False):
    base = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30", "-o", f"KexAlgorithms={KEX}",
            "-o", "HostKeyAlgorithms=ssh-ed25519", "-c", CIPHER,
            "-i", os.path.join(tmp, "client"), "-p", str(target["port"]), "-l", target["user"]]
    if target.get("cert"):
        base += ["-o", f"CertificateFile={target['cert']}"]
    if tty:
        base.append("-tt")
    return base + ["127.0.0.1", *args]


def clear_recordings(t):
    if t.get("state"):
        rec = os.path.join(t["state"], "recordings")
        if os.path.isdir(rec):
            for root, _, files in os.walk(rec):
                for f in files:
                    os.unlink(os.path.join(root, f))


def timed(cmd, stdin=None):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, -(-len(xs) * p // 100) - 1))]


def bench_setup(targets):
    res = {t["tag"]: [] for t in targets}
    for _ in range(N):
        for t in targets:
            res[t["tag"]].append(timed(ssh_cmd(t, "true")) * 1000)
    return {k: (statistics.median(v), pct(v, 99)) for k, v in res.items()}


def cpu_seconds(proc):
    """User + system CPU of the server process and its reaped children
    (sshd's per-connection processes; the gateway's helpers), seconds."""
    fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def bench_out(targets, tty, text=False, lines_mb=0, cpu=None):
    res = {t["tag"]: [] for t in targets}
    cpu_ms = {t["tag"]: [] for t in targets}
    mb = lines_mb or OUT_MB
    cmd = f"head -c {OUT_MB * 1048576} /dev/zero"
    if text:  # printable bytes: what the recording stores one for one
        cmd += " | tr '\\0' a"
    if lines_mb:  # lines of text, as a terminal session prints them (issue 6)
        cmd = f"yes 'the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ' | head -c {lines_mb * 1048576}"
    for _ in range(REPS):
        for t in targets:
            c0 = cpu_seconds(t["proc"])
            dt = timed(ssh_cmd(t, cmd, tty=tty))
            res[t["tag"]].append(mb / dt)
            cpu_ms[t["tag"]].append((cpu_seconds(t["proc"]) - c0) * 1000 / mb)
            clear_recordings(t)
    if cpu is not None:
        # sshd's per-connection processes are reaped too late to count:
        # only the gateways' figures are comparable.
        cpu.update({k: statistics.median(v) for k, v in cpu_ms.items() if k != "A"})
        cpu["A"] = float("nan")
    return {k: statistics.median(v) for k, v in res.items()}


def bench_in(targets):
    res = {t["tag"]: [] for t in targets}
    for _ in range(REPS):
        for t in targets:
            src = subprocess.Popen(["head", "-c", str(IN_MB * 1048576), "/dev/zero"], stdout=subprocess.PIPE)
            dt = timed(ssh_cmd(t, "cat >/dev/null"), stdin=src.stdout)
            src.stdout.close()
            src.wait()
            res[t["tag"]].append(IN_MB / dt)
            clear_recordings(t)
    return {k: statistics.median(v) for k, v in res.items()}


def read_until(p, needle, deadline, buf=b""):
    fd = p.stdout.fileno()
    while needle not in buf:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
    return buf


def bench_ttfb(targets):
    """Time from spawning `ssh -tt` to the first byte of the shell prompt."""
    res = {t["tag"]: [] for t in targets}
    for _ in range(TTFB_N):
        for t in targets:
            t0 = time.perf_counter()
            p = subprocess.Popen(ssh_cmd(t, tty=True), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            got = read_until(p, b"#", t0 + 20)
            dt = time.perf_counter() - t0
            if got is None:
                raise SystemExit(f"{t['tag']}: no prompt")
            res[t["tag"]].append(dt * 1000)
            p.stdin.write(b"exit\n")
            p.stdin.close()
            p.wait(timeout=20)
    return {k: (statistics.median(v), pct(v, 99)) for k, v in res.items()}


def rss_kib(pids):
    """Proportional set size (shared pages split between the processes
    sharing them), summed: fair to sshd's many processes."""
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def sshd_pids(master):
    """sshd and its descendants (the per-connection sshd processes)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
                children.setdefault(ppid, []).append((int(d), comm))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [master]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, comm in children.get(pid, []) if comm.startswith("sshd")]
    return out


def bench_conc(t):
    """SESSIONS interactive PTY sessions held open, each echoing a line once
    a second for HOLD seconds: p99 echo latency and server RSS per session."""
    pids = lambda: sshd_pids(t["proc"].pid) if t["tag"] == "A" else [t["proc"].pid]  # noqa: E731
    base = rss_kib(pids())
    sessions = []
    try:
        for i in range(SESSIONS):
            p = subprocess.Popen(ssh_cmd(t, tty=True), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            sessions.append(p)
            if i % 25 == 24:  # let each batch reach its prompt
                for q in sessions[-25:]:
                    if read_until(q, b"#", time.perf_counter() + 60) is None:
                        raise SystemExit(f"{t['tag']}: session {i} got no prompt")
        for q in sessions[len(sessions) // 25 * 25:]:
            if read_until(q, b"#", time.perf_counter() + 60) is None:
                raise SystemExit(f"{t['tag']}: a session got no prompt")
        time.sleep(1)
        held = rss_kib(pids())
        lat = []
        fds = {q.stdout.fileno(): q for q in sessions}
        bufs = {q.stdout.fileno(): b"" for q in sessions}
        start = time.perf_counter()
        for rnd in range(HOLD):
            pending = {}
            for i, q in enumerate(sessions):
                at = start + rnd + i / len(sessions)
                while time.perf_counter() < at:
                    collect(pending, fds, bufs, lat, max(0.0, at - time.perf_counter()))
                q.stdin.write(f"echo t{rnd}x{i}\n".encode())
                q.stdin.flush()
                pending[q.stdout.fileno()] = (f"\nt{rnd}x{i}\r".encode(), time.perf_counter())
            end = time.perf_counter() + 2
            while pending and time.perf_counter() < end:
                collect(pending, fds, bufs, lat, 0.05)
            lost = len(pending)
            if lost:
                raise SystemExit(f"{t['tag']}: {lost} echoes lost in round {rnd}")
        return {"p99": pct(lat, 99), "p50": statistics.median(lat),
                "per_session": (held - base) / SESSIONS, "total": held}
    finally:
        for q in sessions:
            try:
                q.stdin.write(b"exit\n")
                q.stdin.close()
            except OSError:
                pass
        for q in sessions:
            try:
                q.wait(timeout=30)
            except subprocess.TimeoutExpired:
                q.kill()
                q.wait()


def collect(pending, fds, bufs, lat, timeout):
    if not pending:
        time.sleep(timeout)
        return
    r, _, _ = select.select(list(pending), [], [], timeout)
    now = time.perf_counter()
    for fd in r:
        chunk = os.read(fd, 65536)
        bufs[fd] = (bufs[fd] + chunk)[-4096:]
        needle, sent = pending.get(fd, (None, 0))
        if needle and needle in bufs[fd]:
            lat.append((now - sent) * 1000)
            bufs[fd] = b""
            del pending[fd]


def version(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return r.stdout.decode().strip().splitlines()[0] if r.stdout else "?"


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    keygen(os.path.join(tmp, "client"))
    keygen(os.path.join(tmp, "ca"))
    sh("ssh-keygen", "-q", "-s", os.path.join(tmp, "ca"), "-I", "bench", "-n", "admin",
       "-V", "-5m:+1d", "-O", "extension:groups@portcullis=admins", os.path.join(tmp, "client.pub"))
    pid = make_container()
    sshd, port_a = start_sshd(pid)
    targets = [{"tag": "A", "port": port_a, "user": "root", "proc": sshd}]
    gw, port_b, state_b = start_gateway(BIN, "B")
    targets.append({"tag": "B", "port": port_b, "user": f"root@{NAME}", "proc": gw,
                    "cert": os.path.join(tmp, "client-cert.pub"), "state": state_b})
    if os.path.exists(BIN_NOREC):
        gw0, port_0, state_0 = start_gateway(BIN_NOREC, "B0")
        targets.append({"tag": "B0", "port": port_0, "user": f"root@{NAME}", "proc": gw0,
                        "cert": os.path.join(tmp, "client-cert.pub"), "state": state_0})
    for t in targets:  # warm up, and fail early
        timed(ssh_cmd(t, "true"))
    rows = []
    # Sessions first, on fresh servers: after the throughput runs the
    # allocator holds freed buffers, which would hide per-session memory
    # in the baseline.
    c = {t["tag"]: bench_conc(t) for t in targets} if "conc" in ONLY else {}

    def row(name, vals, higher_better, fmt="{:.1f}"):
        a, b = vals["A"], vals["B"]
        b0 = vals.get("B0")
        ratio = b / a if a == a and a else float("nan")
        onoff = f"{(b / b0 - 1) * 100:+.1f}%" if b0 else "n/a"
        fa = fmt.format(a) if a == a else "n/a"
        fr = f"{ratio:.2f}" if ratio == ratio else "n/a"
        rows.append(f"| {name} | {fa} | {fmt.format(b)} | {fr} | "
                     f"{fmt.format(b0) if b0 is not None else 'n/a'} | {onoff} |")
        print(rows[-1], flush=True)

    print("| figure | A sshd+nsenter | B Portcullis | B/A | B recording off | on vs off |")
    if "setup" in ONLY:
        s = bench_setup(targets)
        row(f"setup `ssh t true`, median ms (N={N})", {k: v[0] for k, v in s.items()}, False)
        row(f"setup `ssh t true`, p99 ms (N={N})", {k: v[1] for k, v in s.items()}, False)
    def throughput(name, **kw):
        cpu = {}
        row(f"{name}, MiB/s", bench_out(targets, cpu=cpu, **kw), True)
        row(f"{name}: server CPU ms per MiB", cpu, False, "{:.2f}")

    if "out" in ONLY:
        throughput(f"output `head -c {OUT_MB}M /dev/zero`", tty=False)
    if "text" in ONLY:
        throughput(f"output of text `head -c {OUT_MB}M /dev/zero \\| tr '\\0' a`", tty=False, text=True)
    if "outtt" in ONLY:
        throughput(f"output with `-tt`, {OUT_MB} MiB", tty=True)
    if "texttt" in ONLY:
        throughput(f"PTY session (`-tt`) printing {TTY_MB} MiB of text lines", tty=True, lines_mb=TTY_MB)
    if "in" in ONLY:
        row(f"input `head -c {IN_MB}M /dev/zero \\| ssh t 'cat >/dev/null'`, MiB/s", bench_in(targets), True)
    if "ttfb" in ONLY:
        s = bench_ttfb(targets)
        row(f"time to first prompt byte over PTY, median ms (n={TTFB_N})", {k: v[0] for k, v in s.items()}, False)
    if "conc" in ONLY:
        row(f"{SESSIONS} PTY sessions echoing 1/s for {HOLD}s: p50 echo ms", {k: v["p50"] for k, v in c.items()}, False)
        row(f"{SESSIONS} PTY sessions: p99 echo ms", {k: v["p99"] for k, v in c.items()}, False)
        row(f"{SESSIONS} PTY sessions: server memory (PSS) growth KiB/session", {k: v["per_session"] for k, v in c.items()}, False, "{:.0f}")
        row(f"{SESSIONS} PTY sessions: server memory (PSS) total MiB", {k: v["total"] / 1024 for k, v in c.items()}, False)
    mem = open("/proc/meminfo").readline().split()[1]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    load = open("/proc/loadavg").read().split()[:3]
    head = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{' '.join(sys.argv[1:]) or 'benches/vs_openssh.sh'}` "
        f"N={N} OUT_MB={OUT_MB} IN_MB={IN_MB} REPS={REPS} SESSIONS={SESSIONS} HOLD={HOLD} TTFB_N={TTFB_N}.",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), {int(mem) // 1024} MiB RAM, kernel {os.uname().release}, "
        f"load at the end of the run {' '.join(load)} (shared with other work: expect noise). "
        f"{version(['ssh', '-V'])}; sshd {version([shutil.which('sshd') or '/usr/sbin/sshd', '-V'])}; "
        f"{version([BIN, '--version'])}; {version(['lxc-start', '--version'])} (LXC).",
        "",
        f"Both sides: cipher `{CIPHER}`, kex `{KEX}`, ed25519 host and user keys (Portcullis: "
        "an ed25519 user certificate). A = `sshd` + `ForceCommand nsenter -t PID -a`; B = Portcullis "
        "recording on (default config, SQLite); B0 = Portcullis built with "
        "`--features bench-no-recording` (recording off). Throughput: median of REPS runs, "
        "wall time of the whole `ssh` command (includes setup); \"server CPU ms per MiB\": user+system "
        "CPU of the gateway process and its reaped helpers per MiB moved, median of the same runs, "
        "which machine noise moves less than wall time (n/a for sshd, whose per-connection "
        "processes are reaped too late to count). Same busybox LXC container "
        f"(`lxc.pty.max = 1024`), A/B/B0 interleaved per iteration (concurrency: one after the other).",
        "",
        "| figure | A sshd+nsenter | B Portcullis | B/A | B recording off | on vs off |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    text = "\n".join(head + rows) + "\n"
    # Replace the "latest run" section of OUT, keep the rest (the changes log).
    begin, end = "<!-- latest run -->\n", "<!-- /latest run -->\n"
    old = open(OUT).read() if os.path.exists(OUT) else f"# Portcullis vs OpenSSH\n\n{begin}{end}"
    if begin not in old or end not in old:
        old = f"{old.rstrip()}\n\n{begin}{end}"
    pre, rest = old.split(begin, 1)
    post = rest.split(end, 1)[1]
    with open(OUT, "w") as f:
        f.write(f"{pre}{begin}{text}{end}{post}")
    print("\n" + text)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        main()
    finally:
        cleanup()
