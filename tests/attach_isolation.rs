//! What a session gets, and what it leaves behind, asserted at the library
//! level against real busybox LXC containers (privileged and
//! unprivileged): exactly the init's confinement (no_new_privs, rlimits,
//! oom_score_adj, its seccomp filter, plus LXC's `reject_force_umount`), a
//! sane umask, a PTY of the login and the container's `tty` group, forwarded
//! connections made as the login inside the container, and an end that
//! takes every process the session started (`setsid`, a process ignoring
//! SIGHUP, a double fork) and nothing of the container's own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{TestContainer, run};
use portcullis::attach::{
    self, AttachError, AttachOptions, AttachRequest, Attached, ConnectRequest, End, ExitStatus,
    HelperBinary, Leftovers, LoginIds, PinnedInit, PtyRequest, SessionIo, SessionKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    /// Privileged; has a `tty` group and a `toor` alias of root.
    priv_c: TestContainer,
    /// Unprivileged (ids 0..65536 -> 100000..); no `tty` group; `toor` too.
    uns_c: TestContainer,
    /// Privileged, restarted with `lxc.no_new_privs`, `lxc.prlimit.nofile`,
    /// `lxc.proc.oom_score_adj` and a seccomp profile of its own.
    conf_c: TestContainer,
    _dir: tempfile::TempDir,
}

/// The seccomp profile of `conf_c`: besides LXC's own `reject_force_umount`,
/// `sethostname` fails with EOPNOTSUPP (95), which nothing else denies.
const CONF_SECCOMP: &str = "2\ndenylist\nreject_force_umount\n[all]\nsethostname errno 95\n";

fn lxc_init_pid(name: &str) -> Option<i32> {
    let out = Command::new("lxc-info")
        .args(["-n", name, "-p", "-H"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn append(path: &std::path::Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

/// `lxc-attach` as the runtime's own tool (test setup, not under test).
fn lxc_attach(c: &TestContainer, script: &str) {
    run(Command::new("lxc-attach")
        .args(["-n", &c.name, "--", "/bin/sh", "-c", script])
        .stdin(Stdio::null()));
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        std::thread::spawn(|| {
            let priv_c = TestContainer::start("iso");
            let uns_c = TestContainer::start_with("isou", true);
            let conf_c = TestContainer::start("isoc");
            for c in [&priv_c, &uns_c] {
                append(
                    &c.rootfs.join("etc/passwd"),
                    "toor:x:0:0:root alias:/root:/bin/sh\n",
                );
                lxc_attach(c, "ip link set lo up");
            }
            append(&priv_c.rootfs.join("etc/group"), "tty:x:5:\n");
            let dir = tempfile::tempdir().unwrap();
            let profile = dir.path().join("conf.seccomp");
            std::fs::write(&profile, CONF_SECCOMP).unwrap();
            run(Command::new("lxc-stop").args(["-k", "-n", &conf_c.name]));
            append(
                &std::path::PathBuf::from(format!("/var/lib/lxc/{}/config", conf_c.name)),
                &format!(
                    "lxc.no_new_privs = 1\nlxc.prlimit.nofile = 1000:2000\n\
                     lxc.proc.oom_score_adj = 300\nlxc.seccomp.profile = {}\n",
                    profile.display()
                ),
            );
            run(Command::new("lxc-start").args(["-n", &conf_c.name]));
            let started = Instant::now();
            while lxc_init_pid(&conf_c.name).is_none() {
                assert!(started.elapsed() < Duration::from_secs(20), "no restart");
                std::thread::sleep(Duration::from_millis(100));
            }
            Fixture {
                priv_c,
                uns_c,
                conf_c,
                _dir: dir,
            }
        })
        .join()
        .unwrap()
    })
}

fn helper() -> &'static HelperBinary {
    static H: OnceLock<HelperBinary> = OnceLock::new();
    H.get_or_init(|| HelperBinary::from_path(env!("CARGO_BIN_EXE_portcullis")).unwrap())
}

fn pin(c: &TestContainer) -> PinnedInit {
    PinnedInit::pin(c.init_pid(), &format!("/lxc.payload.{}", c.name), None).unwrap()
}

fn request(c: &TestContainer, login: &str, command: &str, pty: bool) -> AttachRequest {
    AttachRequest {
        container: c.name.clone(),
        login: login.to_owned(),
        command: Some(command.to_owned()),
        pty: pty.then(|| PtyRequest {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        }),
        env: Vec::new(),
    }
}

async fn session(c: &TestContainer, login: &str, command: &str) -> (Attached, SessionIo) {
    attach::spawn(helper(), &pin(c), &request(c, login, command, false))
        .await
        .unwrap()
}

/// Runs `command` without a pty; returns (stdout, stderr, status).
async fn exec(c: &TestContainer, login: &str, command: &str) -> (String, String, ExitStatus) {
    let (mut a, io) = session(c, login, command).await;
    let SessionIo::Pipes {
        stdin,
        mut stdout,
        mut stderr,
    } = io
    else {
        panic!("pipes")
    };
    drop(stdin);
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let (r1, r2) = tokio::join!(stdout.read_to_end(&mut o), stderr.read_to_end(&mut e));
    r1.unwrap();
    r2.unwrap();
    let st = a.wait().await.unwrap();
    (
        String::from_utf8(o).unwrap(),
        String::from_utf8(e).unwrap(),
        st,
    )
}

fn field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The text between the lines `from` and `to` (or the end).
fn section(out: &str, from: &str, to: &str) -> String {
    let a = out.find(&format!("{from}\n")).unwrap() + from.len() + 1;
    let b = out[a..]
        .find(&format!("{to}\n"))
        .map_or(out.len(), |i| a + i);
    out[a..b].to_owned()
}

/// The tests of `conf_c` one at a time (one traces its init).
static CONF: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process umask is process-wide: one test at a time changes it.
static UMASK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gets_exactly_the_inits_confinement() {
    let f = fixture();
    let _conf = CONF.lock().await;
    let c = &f.conf_c;
    let init = c.init_pid();
    let init_status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let init_limits = std::fs::read_to_string(format!("/proc/{init}/limits")).unwrap();
    // The container's own settings took (test setup check).
    assert_eq!(field(&init_status, "NoNewPrivs"), "1");
    assert_eq!(field(&init_status, "Seccomp"), "2");
    assert!(init_limits.contains("Max open files            1000                 2000"));
    let init_oom = std::fs::read_to_string(format!("/proc/{init}/oom_score_adj")).unwrap();
    assert_eq!(init_oom, "300\n");

    let script = "echo STATUS; cat /proc/self/status; echo LIMITS; cat /proc/self/limits; \
                  echo OOM; cat /proc/self/oom_score_adj; echo UMASK; umask; \
                  echo HOST; hostname portcullis-renamed 2>&1; echo rc=$?; hostname";
    for login in ["root", "app"] {
        // A gateway running with a strict umask (systemd's UMask=0077) must
        // not hand it to sessions.
        let spawned = {
            let _g = UMASK.lock().await;
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            let r = attach::spawn(helper(), &pin(c), &request(c, login, script, false)).await;
            nix::sys::stat::umask(old);
            r.unwrap()
        };
        let (mut a, io) = spawned;
        let SessionIo::Pipes {
            stdin, mut stdout, ..
        } = io
        else {
            panic!("pipes")
        };
        drop(stdin);
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(a.wait().await.unwrap(), ExitStatus::Code(0), "{out}");
        let status = section(&out, "STATUS", "LIMITS");
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{login}: {out}");
        assert_eq!(field(&status, "Seccomp"), "2", "{login}: {out}");
        let filters = |s: &str| field(s, "Seccomp_filters").parse::<u32>().unwrap();
        // The init's filter, copied, plus the gateway's deny-list.
        assert_eq!(
            filters(&status),
            filters(&init_status) + 1,
            "{login}: {out}"
        );
        assert_eq!(section(&out, "LIMITS", "OOM"), init_limits, "{login}");
        assert_eq!(section(&out, "OOM", "UMASK"), init_oom, "{login}");
        assert_eq!(section(&out, "UMASK", "HOST"), "0022\n", "{login}");
        // sethostname is denied by the container's profile, as for the init.
        let host = section(&out, "HOST", "\u{0}");
        assert!(host.contains("rc=1\n"), "{login}: {host}");
        assert!(host.contains("not supported"), "{login}: {host}");
        assert!(host.ends_with(&format!("{}\n", c.name)), "{login}: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_force_umount_holds_in_every_session() {
    let f = fixture();
    for c in [&f.priv_c, &f.uns_c] {
        let (out, err, st) = exec(
            c,
            "root",
            "mkdir -p /tmp/fm && mount -t tmpfs fm /tmp/fm && \
             { umount -f /tmp/fm 2>&1; echo rc=$?; grep -c ' /tmp/fm ' /proc/mounts; \
             umount /tmp/fm 2>/dev/null; true; }",
        )
        .await;
        assert_eq!(st, ExitStatus::Code(0), "{}: {out} {err}", c.name);
        assert!(out.starts_with("umount: "), "{}: {out}", c.name);
        assert!(
            out.contains("Permission denied\nrc=1\n1\n"),
            "{}: {out}",
            c.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pty_belongs_to_the_login_and_the_containers_tty_group() {
    let f = fixture();
    // With a tty group: login:tty 0620 (as login(1) and sshd); without one:
    // login:login 0600, writable by nobody else.
    for (c, want) in [(&f.priv_c, "app:tty:620"), (&f.uns_c, "app:app:600")] {
        let (mut a, io) = attach::spawn(
            helper(),
            &pin(c),
            &request(c, "app", "stat -L -c %U:%G:%a /proc/self/fd/0", true),
        )
        .await
        .unwrap();
        let SessionIo::Pty(mut m) = io else {
            panic!("pty")
        };
        let mut out = Vec::new();
        m.read_to_end(&mut out).await.unwrap();
        assert_eq!(a.wait().await.unwrap(), ExitStatus::Code(0));
        assert_eq!(String::from_utf8_lossy(&out).trim(), want, "{}", c.name);
    }
}

/// What a session starts that must not outlive it: a `setsid` daemon, a
/// process that ignores SIGHUP (what `nohup` does; busybox has no `nohup`),
/// and a double fork (reparented to the container's init).
fn escapees(tag: u32) -> String {
    format!(
        "setsid sleep {tag}1 </dev/null >/dev/null 2>&1 & \
         (trap '' HUP; exec sleep {tag}2 </dev/null >/dev/null 2>&1) & \
         sh -c 'sleep {tag}3 </dev/null >/dev/null 2>&1 &'; \
         echo ready; exec sleep {tag}4"
    )
}

/// Session cgroups below the container's cgroup2 cgroup, with their mode.
fn session_cgroups(c: &TestContainer) -> Vec<(String, u32)> {
    let dir = format!("/sys/fs/cgroup/unified/lxc.payload.{}", c.name);
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".portcullis-"))
        .map(|e| {
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&e.metadata().unwrap().permissions());
            (e.file_name().to_string_lossy().into_owned(), mode & 0o7777)
        })
        .collect()
}

/// True while the helper that made the session cgroup `name`
/// (`.portcullis-PID-START`) runs: tests of this file run at once in the
/// same containers, and their live sessions are not leftovers.
fn creator_alive(name: &str) -> bool {
    let Some((pid, start)) = name
        .strip_prefix(".portcullis-")
        .and_then(|r| r.split_once('-'))
    else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(str::to_owned))
        .and_then(|s| s.split_whitespace().nth(19).map(str::to_owned))
        .is_some_and(|t| t == start)
}

/// Session cgroups left behind: their helper is gone.
fn leftovers(c: &TestContainer) -> Vec<String> {
    session_cgroups(c)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !creator_alive(n))
        .collect()
}

async fn start_escapees(c: &TestContainer, tag: u32) -> Attached {
    let (a, io) = session(c, "app", &escapees(tag)).await;
    let SessionIo::Pipes { stdout, .. } = io else {
        panic!("pipes")
    };
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(stdout);
    tokio::io::AsyncBufReadExt::read_line(&mut rd, &mut line)
        .await
        .unwrap();
    assert_eq!(line, "ready\n");
    let needle = format!("sleep {tag}");
    common::wait_until("the four sleeps", Duration::from_secs(10), || {
        c.processes_matching(&needle).len() == 4
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_a_session_starts_ends_with_it() {
    let f = fixture();
    for (c, base) in [(&f.priv_c, 700), (&f.uns_c, 710)] {
        // One process of the container's own, started by the runtime.
        lxc_attach(
            c,
            &format!("setsid sleep {base}9 </dev/null >/dev/null 2>&1 &"),
        );
        let init = c.init_pid();
        let own = format!("sleep {base}9");
        common::wait_until("the container's own sleep", Duration::from_secs(10), || {
            c.processes_matching(&own).len() == 1
        });
        let own_pid = c.processes_matching(&own)[0];

        // A normal end (the client hung up): SIGHUP, then everything is
        // killed; nothing is left by the time the call returns.
        let tag = base + 1;
        let mut a = start_escapees(c, tag).await;
        let t0 = Instant::now();
        a.terminate(Duration::from_secs(1)).await.unwrap();
        let took = t0.elapsed();
        let left = c.processes_matching(&format!("sleep {tag}"));
        assert!(
            left.is_empty(),
            "{}: left after a hang-up: {left:?}",
            c.name
        );
        assert!(took < Duration::from_secs(2), "{took:?}");

        // A kill (sessions kill, lock, expiry, revocation): everything at
        // once, gone when the call returns.
        let tag = base + 2;
        let mut a = start_escapees(c, tag).await;
        let t0 = Instant::now();
        let ended = a.kill().await.unwrap();
        let took = t0.elapsed();
        let killed = ExitStatus::Signal {
            signal: libc::SIGKILL,
            core_dumped: false,
        };
        assert_eq!(
            (ended.status, ended.kept, ended.cgroup_removed),
            (killed, false, true)
        );
        let left = c.processes_matching(&format!("sleep {tag}"));
        assert!(left.is_empty(), "{}: left after a kill: {left:?}", c.name);
        eprintln!("{}: kill took {took:?}", c.name);
        assert!(took < Duration::from_secs(1), "{took:?}");

        // Dropped (the gateway lost the session): gone within 1 s.
        let tag = base + 3;
        let a = start_escapees(c, tag).await;
        drop(a);
        let t0 = Instant::now();
        while !c.processes_matching(&format!("sleep {tag}")).is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{}: left after a kill: {:?}",
                c.name,
                c.processes_matching(&format!("sleep {tag}"))
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Opted in for a normal end: what the session started in the
        // background keeps running (in a kept cgroup) once the session
        // process is gone; a later session removes that cgroup once empty.
        let tag = base + 4;
        let mut a = start_escapees(c, tag).await;
        let normal = End::Normal {
            grace: Duration::from_secs(1),
            leftovers: Leftovers::Keep,
        };
        let ended = a.end(normal).await.unwrap();
        assert_eq!((ended.kept, ended.cgroup_removed), (true, false));
        let needle = format!("sleep {tag}");
        common::wait_until("the session process to go", Duration::from_secs(5), || {
            c.processes_matching(&needle).len() == 3
        });
        // Marked kept (mode 0555), its helper gone.
        let kept: Vec<String> = session_cgroups(c)
            .into_iter()
            .filter(|(n, mode)| *mode == 0o555 && !creator_alive(n))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(kept.len(), 1, "{:?}", session_cgroups(c));
        let kill_file = format!(
            "/sys/fs/cgroup/unified/lxc.payload.{}/{}/cgroup.kill",
            c.name, kept[0]
        );
        std::fs::write(kill_file, "1").unwrap();
        common::wait_until("the kept processes to go", Duration::from_secs(5), || {
            c.processes_matching(&needle).is_empty()
        });
        let (out, _, _) = exec(c, "app", "echo next").await;
        assert_eq!(out, "next\n");

        // The container's init and its own process are untouched, and no
        // session cgroup is left.
        assert_eq!(c.init_pid(), init);
        assert_eq!(c.processes_matching(&own), vec![own_pid]);
        common::wait_until("the session cgroups to go", Duration::from_secs(5), || {
            leftovers(c).is_empty()
        });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(own_pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
}

/// The uid column of the container's `/proc/net/tcp` for the socket
/// connected from an ephemeral port to `port` (as the host reads it).
fn tcp_uid_to(init: i32, port: u16) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{init}/net/tcp")).unwrap();
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let rem_port = u16::from_str_radix(f[2].split(':').nth(1)?, 16).ok()?;
        (rem_port == port && f[3] == "01").then(|| f[7].parse().unwrap())
    })
}

/// True when the container has a TCP socket listening on `port` (IPv4 or
/// IPv6, as busybox `nc` may listen on either).
fn listening(init: i32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|file| {
        let text = std::fs::read_to_string(format!("/proc/{init}/net/{file}")).unwrap();
        text.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f[1].rsplit(':').next().unwrap_or("");
            u16::from_str_radix(local, 16) == Ok(port) && f[3] == "0A"
        })
    })
}

fn nft(init: i32, rule: &str) {
    run(Command::new("nsenter")
        .args(["-t", &init.to_string(), "-n", "nft"])
        .args(rule.split_whitespace()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_connections_are_made_as_the_login_inside_the_container() {
    let f = fixture();
    for (c, base, uid_base) in [(&f.priv_c, 17_100u16, 0u32), (&f.uns_c, 17_200, 100_000)] {
        let (open, closed) = (base + (std::process::id() % 50) as u16, base + 50);
        for port in [open, closed] {
            lxc_attach(
                c,
                &format!("busybox nc -ll -p {port} -e /bin/busybox cat >/dev/null 2>&1 &"),
            );
        }
        let init = c.init_pid();
        // The container's own egress rule: uid 1000 may not reach `closed`.
        nft(init, "add table inet portcullis_test");
        nft(
            init,
            "add chain inet portcullis_test out { type filter hook output priority 0 ; }",
        );
        nft(
            init,
            &format!(
                "add rule inet portcullis_test out meta skuid 1000 tcp dport {closed} reject with tcp reset"
            ),
        );
        let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        common::wait_until("the listeners", Duration::from_secs(10), || {
            [open, closed].iter().all(|&p| listening(init, p))
        });

        let as_login = |login: &str, port: u16| ConnectRequest {
            container: c.name.clone(),
            login: login.to_owned(),
            addr: addr(port),
        };
        let options = AttachOptions::name_only();
        let (mut s, ids) = attach::connect_as(helper(), &pin(c), &as_login("app", open), &options)
            .await
            .unwrap();
        assert_eq!((ids.uid, ids.gid), (1000, 1000));
        s.write_all(b"ping\n").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping\n");
        // Made by uid 1000 of the container (host: mapped), not host root.
        assert_eq!(tcp_uid_to(init, open), Some(uid_base + 1000), "{}", c.name);
        drop(s);

        // The container's rule for uid 1000 applies to the forward; root
        // is not under it.
        let r = attach::connect_as(helper(), &pin(c), &as_login("app", closed), &options).await;
        match r {
            Err(AttachError::Helper { source, .. }) => {
                assert_eq!(
                    source.raw_os_error(),
                    Some(libc::ECONNREFUSED),
                    "{}",
                    c.name
                )
            }
            other => panic!(
                "{}: the container's egress rule was bypassed: {other:?}",
                c.name
            ),
        }
        let (s, ids) = attach::connect_as(helper(), &pin(c), &as_login("root", closed), &options)
            .await
            .unwrap();
        assert_eq!(ids.uid, 0);
        drop(s);
        // Nothing is left of the connects: no session cgroup once the
        // helper has seen the closed stream (it removes the cgroup after
        // the connecting process exits, so poll).
        common::wait_until(
            "the connects' cgroups to go",
            Duration::from_secs(5),
            || leftovers(c).is_empty(),
        );
        // An unspecified destination is refused before anything runs.
        let any = ConnectRequest {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], open)),
            ..as_login("app", open)
        };
        assert!(matches!(
            attach::connect_as(helper(), &pin(c), &any, &options).await,
            Err(AttachError::InvalidRequest(_))
        ));
    }
}

/// Issue 12 point 6: root is a uid, not a name. The gateway resolves the
/// login before its decision; the session process refuses uid 0 unless the
/// decision allowed it (`toor:x:0:0` is root), and refuses a login whose
/// ids changed between the decision and the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_a_uid_not_a_name() {
    let f = fixture();
    for c in [&f.priv_c, &f.uns_c] {
        let init = pin(c);
        let toor = attach::resolve_login(&init, "toor").unwrap();
        let want = LoginIds {
            login: "toor".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
        };
        assert_eq!(toor, want);
        let app = attach::resolve_login(&init, "app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone()),
            (1000, 1000, vec![1000, 2000])
        );
        assert!(matches!(
            attach::resolve_login(&init, "nosuch"),
            Err(AttachError::LoginNotFound { .. })
        ));

        // A decision that did not allow uid 0: toor is refused like root.
        let strict = AttachOptions::default();
        for login in ["toor", "root"] {
            let req = request(c, login, "id -u", false);
            let r = attach::start(helper(), &init, &req, &SessionKind::Shell, &strict).await;
            match r {
                Err(e @ AttachError::Uid0Refused { .. }) => {
                    assert!(e.user_message().contains("uid 0"), "{}", e.user_message())
                }
                Err(e) => panic!("{login}: {e:?}"),
                Ok(_) => panic!("{}: {login} became uid 0", c.name),
            }
        }
        // app, with the ids the decision was made for: started, and the
        // ids it runs as come back for the audit.
        let options = AttachOptions {
            expected: Some(app.clone()),
            ..AttachOptions::default()
        };
        let req = request(c, "app", "id -u", false);
        let (mut a, io) = attach::start(helper(), &init, &req, &SessionKind::Shell, &options)
            .await
            .unwrap();
        assert_eq!(a.ids(), &app);
        drop(io);
        assert!(a.kill().await.unwrap().cgroup_removed);

        // The decision was made for other ids: refused.
        let stale = AttachOptions {
            expected: Some(LoginIds {
                uid: 1001,
                ..app.clone()
            }),
            ..AttachOptions::default()
        };
        let r = attach::start(helper(), &init, &req, &SessionKind::Shell, &stale).await;
        assert!(
            matches!(r, Err(AttachError::LoginChanged { .. })),
            "{:?}",
            r.err()
        );
        // A refused start leaves no session cgroup behind (removed once
        // its helper is reaped, which a loaded machine delays: poll).
        let started = Instant::now();
        while !leftovers(c).is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                leftovers(c)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// When the init's seccomp filter cannot be copied (here the init is
/// already traced, by this test, so the helper cannot ptrace it), the
/// session is refused by default with a clear message, and with
/// `UnreproducibleSeccomp::DenyListOnly` it runs under the gateway's
/// deny-list alone.
#[test]
fn an_init_filter_that_cannot_be_copied_refuses_the_session() {
    use nix::sys::ptrace;
    let f = fixture();
    let c = &f.conf_c;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _conf = rt.block_on(CONF.lock());
    let init = nix::unistd::Pid::from_raw(c.init_pid());
    // This thread traces the init without stopping it (a thread's tracees
    // are let go when it ends, should the test fail).
    ptrace::seize(init, ptrace::Options::empty()).unwrap();
    let (refused, fallback) = rt.block_on(async {
        let req = request(c, "root", "grep Seccomp_filters /proc/self/status", false);
        let refused = attach::start(
            helper(),
            &pin(c),
            &req,
            &SessionKind::Shell,
            &AttachOptions::name_only(),
        )
        .await
        .map(|_| ());
        let options = AttachOptions {
            unreproducible_seccomp: attach::UnreproducibleSeccomp::DenyListOnly,
            ..AttachOptions::name_only()
        };
        let (mut a, io) = attach::start(helper(), &pin(c), &req, &SessionKind::Shell, &options)
            .await
            .unwrap();
        let SessionIo::Pipes { mut stdout, .. } = io else {
            panic!("pipes")
        };
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.unwrap();
        a.kill().await.unwrap();
        (refused, out)
    });
    ptrace::interrupt(init).unwrap();
    nix::sys::wait::waitpid(init, Some(nix::sys::wait::WaitPidFlag::__WALL)).unwrap();
    ptrace::detach(init, None).unwrap();
    match refused {
        Err(e @ AttachError::SeccompUnreproducible { .. }) => assert_eq!(
            e.user_message(),
            "the container's seccomp filter cannot be applied to sessions"
        ),
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(fallback, "Seccomp_filters:\t1\n");
}
