//! Integration tests of `portcullis::attach` against a real LXC busybox
//! container (needs root and LXC; the container is created and destroyed
//! by the test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis::attach::{
    self, AttachError, AttachRequest, ExitStatus, HelperBinary, PinnedInit, PtyRequest, SessionIo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Destroys the container on drop (also when a test panics).
struct Container {
    name: String,
    pid: i32,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("lxc-stop")
            .args(["-k", "-n", &self.name])
            .output();
        let _ = Command::new("lxc-destroy")
            .args(["-n", &self.name])
            .output();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Host uid/gid that the container's root maps to (unprivileged mode).
const UNS_BASE: u32 = 100_000;

fn make_container(unprivileged: bool) -> Container {
    {
        let kind = if unprivileged { "uns" } else { "test" };
        let name = format!("attach-{kind}-{}", std::process::id());
        let conf = format!("/tmp/{name}.conf");
        let mut text =
            "lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\nlxc.pty.max = 64\n"
                .to_owned();
        if unprivileged {
            common::gateway::ensure_subids();
            text.push_str("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n");
        }
        std::fs::write(&conf, text).unwrap();
        let mut c = Container {
            name: name.clone(),
            pid: 0,
        };
        run("lxc-create", &["-n", &name, "-t", "busybox", "-f", &conf]);
        // The busybox template appends `lxc.pty.max = 1` after the -f file's
        // value; the last one wins, so rewrite it.
        run(
            "sed",
            &[
                "-i",
                "s/^lxc.pty.max = .*/lxc.pty.max = 64/",
                &format!("/var/lib/lxc/{name}/config"),
            ],
        );
        // The busybox template writes no /etc/hostname; give the container
        // its own (the host's differs), so reading it proves the mount ns.
        std::fs::write(
            format!("/var/lib/lxc/{name}/rootfs/etc/hostname"),
            format!("{name}\n"),
        )
        .unwrap();
        let etc = format!("/var/lib/lxc/{name}/rootfs/etc");
        let mut passwd = std::fs::read_to_string(format!("{etc}/passwd")).unwrap();
        passwd.push_str(
            "alice:x:1000:1000:Alice:/home/alice:/bin/sh\nnoshell:x:1001:1001::/:/bin/nope\n",
        );
        std::fs::write(format!("{etc}/passwd"), passwd).unwrap();
        let mut group = std::fs::read_to_string(format!("{etc}/group")).unwrap();
        group.push_str("alice:x:1000:\nwheel2:x:10000:root,alice\n");
        std::fs::write(format!("{etc}/group"), group).unwrap();
        std::fs::create_dir_all(format!("/var/lib/lxc/{name}/rootfs/home/alice")).unwrap();
        let off = if unprivileged { UNS_BASE } else { 0 };
        let (alice, root) = (format!("{0}:{0}", 1000 + off), format!("{off}:{off}"));
        run(
            "chown",
            &[&alice, &format!("/var/lib/lxc/{name}/rootfs/home/alice")],
        );
        run("chown", &[&root, &format!("{etc}/hostname")]);
        run("lxc-start", &["-n", &name]);
        for _ in 0..100 {
            let out = Command::new("lxc-info")
                .args(["-n", &name, "-p", "-H"])
                .output()
                .unwrap();
            if let Ok(pid) = String::from_utf8_lossy(&out.stdout).trim().parse() {
                c.pid = pid;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(c.pid > 0, "container did not start");
        c
    }
}

/// A session's `/proc/PID/cgroup` against its init's: the same in every v1
/// hierarchy; in cgroup2, its own `.portcullis-PID-START` cgroup right
/// below `parent` (the container's cgroup, ending in `/`).
fn assert_session_cgroup(session: &str, init: &str, parent: &str) {
    let v1 = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("0::"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(v1(session), v1(init), "{session}");
    let v2 = session
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("{session}"));
    let name = v2
        .strip_prefix(parent)
        .unwrap_or_else(|| panic!("{v2} is not below {parent}"));
    let rest = name.strip_prefix(".portcullis-").unwrap_or("");
    assert!(
        rest.split('-').count() == 2 && rest.split('-').all(|n| n.parse::<u64>().is_ok()),
        "{v2}"
    );
}

/// The tests of this file check that the test process has no child left;
/// run them one at a time so one test's live helpers are not taken for the
/// other's leftovers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn helper() -> &'static HelperBinary {
    static H: OnceLock<HelperBinary> = OnceLock::new();
    H.get_or_init(|| HelperBinary::from_path(env!("CARGO_BIN_EXE_portcullis")).unwrap())
}

fn pin(c: &Container) -> PinnedInit {
    PinnedInit::pin(c.pid, &format!("/lxc.payload.{}", c.name), None).unwrap()
}

fn req(c: &Container, login: &str, command: Option<&str>, pty: bool) -> AttachRequest {
    AttachRequest {
        container: c.name.clone(),
        login: login.to_owned(),
        command: command.map(str::to_owned),
        pty: pty.then(|| PtyRequest {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        }),
        env: vec![
            ("LANG".into(), "C.UTF-8".into()),
            ("LD_PRELOAD".into(), "/x".into()),
        ],
    }
}

/// Runs a command without pty; returns (stdout, stderr, status).
async fn exec(c: &Container, command: &str, stdin: &[u8]) -> (String, String, ExitStatus) {
    let (mut a, io) = attach::spawn(helper(), &pin(c), &req(c, "root", Some(command), false))
        .await
        .unwrap();
    let SessionIo::Pipes {
        stdin: mut i,
        mut stdout,
        mut stderr,
    } = io
    else {
        panic!("pipes")
    };
    i.write_all(stdin).await.unwrap();
    drop(i);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_against_lxc() {
    let _serial = SERIAL.lock().await;
    let container = make_container(false);
    let c = &container;

    // (1) hostname, exact bytes.
    let (out, err, st) = exec(c, "cat /etc/hostname", b"").await;
    assert_eq!(
        (out.as_str(), st),
        (format!("{}\n", c.name).as_str(), ExitStatus::Code(0)),
        "{err}"
    );

    let (out, _, _) = exec(c, "hostname", b"").await;
    assert_eq!(out, format!("{}\n", c.name));

    // (2) namespaces equal the init's.
    let ns = ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"];
    let cmd: Vec<String> = ns
        .iter()
        .map(|n| format!("readlink /proc/self/ns/{n}"))
        .collect();
    let (out, err, _) = exec(c, &cmd.join("; "), b"").await;
    let want: Vec<String> = ns
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/{}/ns/{n}", c.pid))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{err}");
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(want[0], host_mnt.to_string_lossy());

    // (3) exit code.
    assert_eq!(exec(c, "exit 7", b"").await.2, ExitStatus::Code(7));

    // (4) stdin then EOF.
    let (out, _, st) = exec(c, "cat", b"hi\n").await;
    assert_eq!((out.as_str(), st), ("hi\n", ExitStatus::Code(0)));

    // (5) pty.
    let (mut a, io) = attach::spawn(
        helper(),
        &pin(c),
        &req(
            c,
            "root",
            Some("tty; echo ok; echo $TERM $LANG $LD_PRELOAD."),
            true,
        ),
    )
    .await
    .unwrap();
    let SessionIo::Pty(mut m) = io else {
        panic!("pty")
    };
    a.resize(100, 40).unwrap();
    let mut out = Vec::new();
    m.read_to_end(&mut out).await.unwrap();
    drop(m);
    a.resize(1, 1).unwrap(); // no-op once the master is gone
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("/dev/pts/") && out.contains("ok"), "{out}");
    assert!(out.contains("xterm C.UTF-8 ."), "{out}");
    assert_eq!(a.wait().await.unwrap(), ExitStatus::Code(0));
    // Ending it after its exit: the status, the cgroup removed.
    let ended = a.kill().await.unwrap();
    assert_eq!(
        (ended.status, ended.kept, ended.cgroup_removed),
        (ExitStatus::Code(0), false, true)
    );

    // (6) unknown login.
    let e = attach::spawn(
        helper(),
        &pin(c),
        &req(c, "nosuchuser", Some("true"), false),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, AttachError::LoginNotFound { ref login } if login == "nosuchuser"),
        "{e:?}"
    );

    // (7) pinning a pid that is not the container's init fails.
    let me = std::process::id() as i32;
    let e = PinnedInit::pin(me, &format!("/lxc.payload.{}", c.name), None).unwrap_err();
    assert!(matches!(e, AttachError::InitChanged(_)), "{e:?}");
    let e = PinnedInit::pin(c.pid, &format!("/lxc.payload.{}", c.name), Some(1)).unwrap_err();
    assert!(matches!(e, AttachError::InitChanged(_)), "{e:?}");

    // (8) cgroups: inside, the init's view but for the session's own
    // cgroup2 cgroup below the container's; from the host, the init's
    // cgroup in every v1 hierarchy and the session cgroup below the
    // container's in cgroup2.
    let inside_self = exec(c, "cat /proc/self/cgroup", b"").await.0;
    let inside_init = exec(c, "cat /proc/1/cgroup", b"").await.0;
    assert_session_cgroup(&inside_self, &inside_init, "/");
    assert!(inside_init.lines().any(|l| l == "0::/"), "{inside_init}");
    let (mut a, _io) = attach::spawn(helper(), &pin(c), &req(c, "root", Some("sleep 30"), false))
        .await
        .unwrap();
    let host_init = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap();
    let host_session = std::fs::read_to_string(format!("/proc/{}/cgroup", a.pid())).unwrap();
    assert_session_cgroup(
        &host_session,
        &host_init,
        &format!("/lxc.payload.{}/", c.name),
    );
    a.terminate(Duration::from_secs(1)).await.unwrap();

    // (9) only 0, 1, 2 (and ls's own directory fd) are open.
    let (out, _, _) = exec(c, "ls /proc/self/fd", b"").await;
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "{out}");

    // (10) terminate kills the session and leaves nothing behind.
    let (mut a, _io) = attach::spawn(
        helper(),
        &pin(c),
        &req(c, "root", Some("sleep 1000; true"), false),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = a.terminate(Duration::from_secs(2)).await.unwrap();
    assert!(
        matches!(
            st,
            ExitStatus::Signal { signal: 1, .. } | ExitStatus::Signal { signal: 9, .. }
        ),
        "{st:?}"
    );
    let (out, _, _) = exec(c, "ps -o pid,args", b"").await;
    assert!(!out.contains("sleep 1000"), "{out}");

    hardening(c).await;
    wait_is_cancel_safe(c).await;
}

/// `Attached::wait` dropped by a `select!` at any await point must not lose
/// the exit status (regression: it was consumed before the helper was
/// reaped, and the next call said the helper died).
async fn wait_is_cancel_safe(c: &Container) {
    for _ in 0..5 {
        let (mut a, io) = attach::spawn(helper(), &pin(c), &req(c, "root", Some("exit 4"), false))
            .await
            .unwrap();
        let status = loop {
            tokio::select! {
                biased;
                r = a.wait() => break r,
                _ = tokio::task::yield_now() => continue,
            }
        };
        assert_eq!(status.unwrap(), ExitStatus::Code(4));
        drop(io);
    }
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

async fn exec_as(c: &Container, login: &str, command: &str) -> (String, String, ExitStatus) {
    let (mut a, io) = attach::spawn(helper(), &pin(c), &req(c, login, Some(command), false))
        .await
        .unwrap();
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

async fn hardening(c: &Container) {
    let init_status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap();

    // Non-root login: ids, supplementary groups, home, no capabilities, the
    // init's bounding set, environment from nothing.
    let (out, err, st) = exec_as(
        c,
        "alice",
        "id; pwd; touch ~/f && stat -c %U ~/f; cat /proc/self/status; echo ENV; env",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    let mut parts = out.splitn(2, "ENV\n");
    let (head, env) = (parts.next().unwrap(), parts.next().unwrap());
    let mut lines = head.lines();
    let id = lines.next().unwrap();
    assert!(
        id.starts_with("uid=1000(alice) gid=1000(alice) groups=1000(alice),10000(wheel2)"),
        "{id}"
    );
    assert_eq!(lines.next(), Some("/home/alice"));
    assert_eq!(lines.next(), Some("alice"));
    for k in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(status_field(head, k), "0000000000000000", "{k}");
    }
    assert_eq!(
        status_field(head, "CapBnd"),
        status_field(&init_status, "CapBnd")
    );
    let mut keys: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "HOME", "LANG", "LOGNAME", "PATH", "PWD", "SHELL", "SHLVL", "USER"
        ],
        "{env}"
    );

    // Root keeps the init's bounding set too (not the host's full set).
    let (out, _, _) = exec_as(c, "root", "cat /proc/self/status").await;
    assert_eq!(
        status_field(&out, "CapBnd"),
        status_field(&init_status, "CapBnd")
    );
    assert_ne!(
        status_field(&out, "CapBnd"),
        status_field(
            &std::fs::read_to_string("/proc/self/status").unwrap(),
            "CapBnd"
        )
    );
    assert_eq!(status_field(&out, "CapInh"), "0000000000000000");

    // Missing shell is reported before exec.
    let e = attach::spawn(helper(), &pin(c), &req(c, "noshell", None, false))
        .await
        .unwrap_err();
    assert!(
        matches!(e, AttachError::ShellNotFound { ref path } if path == "/bin/nope"),
        "{e:?}"
    );
    assert!(e.user_message().contains("/bin/nope"));

    // Login shell on a pty: argv0 is "-sh", exit code relayed.
    let (mut a, io) = attach::spawn(helper(), &pin(c), &req(c, "alice", None, true))
        .await
        .unwrap();
    let SessionIo::Pty(m) = io else { panic!("pty") };
    let (mut rd, mut wr) = tokio::io::split(m);
    wr.write_all(b"echo \"A0=$0\" \"$(stat -L -c %U:%a /proc/self/fd/0)\"; exit 3\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    // The busybox template has no `tty` group: the PTY is the login's alone.
    assert!(out.contains("A0=-sh alice:600"), "{out}");
    assert_eq!(a.wait().await.unwrap(), ExitStatus::Code(3));
    // The helper waits for the end (kill or keep) until the handle goes.
    drop(a);

    // signal() reaches the session process.
    let (mut a, _io) = attach::spawn(
        helper(),
        &pin(c),
        &req(c, "root", Some("exec sleep 1000"), false),
    )
    .await
    .unwrap();
    a.signal(libc::SIGTERM).unwrap();
    assert_eq!(
        a.wait().await.unwrap(),
        ExitStatus::Signal {
            signal: libc::SIGTERM,
            core_dumped: false
        }
    );
    drop(a);

    // Dropping the handle kills the session (and its helper).
    let (a, io) = attach::spawn(
        helper(),
        &pin(c),
        &req(c, "root", Some("sleep 1001 & sleep 1002"), false),
    )
    .await
    .unwrap();
    let pid = a.pid();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(a);
    drop(io);
    // The kill and the reaping are asynchronous: poll (10 s) until the
    // session's processes, the session process and any child of ours
    // (a helper, a zombie) are gone, then assert that exactly.
    let me = std::process::id().to_string();
    let children = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
            .filter(|st| status_field(st, "PPid") == me)
            .collect()
    };
    let started = std::time::Instant::now();
    loop {
        let (out, _, _) = exec(c, "ps -o pid,args", b"").await;
        let left = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kids = children();
        if !out.contains("sleep 100") && left.is_empty() && kids.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "left behind: {out}\n{left}\n{kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same checks against an unprivileged (user-namespaced) container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_unprivileged_lxc() {
    let _serial = SERIAL.lock().await;
    let container = make_container(true);
    let c = &container;
    let map = std::fs::read_to_string(format!("/proc/{}/uid_map", c.pid)).unwrap();
    assert!(map.split_whitespace().eq(["0", "100000", "65536"]), "{map}");

    let (out, err, st) = exec(c, "cat /etc/hostname; id -u; cat /proc/self/uid_map", b"").await;
    assert_eq!(st, ExitStatus::Code(0), "{err}");
    let mut l = out.lines();
    assert_eq!(l.next(), Some(c.name.as_str()));
    assert_eq!(l.next(), Some("0"));
    assert!(
        l.next()
            .unwrap()
            .split_whitespace()
            .eq(["0", "100000", "65536"])
    );

    let ns = ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"];
    let cmd: Vec<String> = ns
        .iter()
        .map(|n| format!("readlink /proc/self/ns/{n}"))
        .collect();
    let (out, _, _) = exec(c, &cmd.join("; "), b"").await;
    let want: Vec<String> = ns
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/{}/ns/{n}", c.pid))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want);

    // The session's host credentials are the mapped ones.
    let (mut a, _io) = attach::spawn(helper(), &pin(c), &req(c, "alice", Some("sleep 30"), false))
        .await
        .unwrap();
    let st = std::fs::read_to_string(format!("/proc/{}/status", a.pid())).unwrap();
    assert!(
        status_field(&st, "Uid")
            .split_whitespace()
            .all(|u| u == "101000"),
        "{st}"
    );
    let host_init = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap();
    assert_session_cgroup(
        &std::fs::read_to_string(format!("/proc/{}/cgroup", a.pid())).unwrap(),
        &host_init,
        &format!("/lxc.payload.{}/", c.name),
    );
    a.terminate(Duration::from_secs(1)).await.unwrap();

    hardening(c).await;
}
