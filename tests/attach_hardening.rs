//! The attach's guarantees, asserted from inside real LXC containers
//! (privileged and unprivileged) through the real gateway, the real OpenSSH
//! client and the real IdP, compared with what the host sees of the
//! container's init.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{SshResult, TestContainer, TestGateway, UNS_BASE, run_ssh};
use common::idp::TestIdp;

struct Fixture {
    _idp: TestIdp,
    /// Privileged container.
    priv_c: TestContainer,
    /// Unprivileged container (lxc.idmap 0 100000 65536).
    uns_c: TestContainer,
    /// Container that tests freeze.
    frz_c: TestContainer,
    gateway: TestGateway,
    admin_token: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let priv_c = TestContainer::start("hard");
            let uns_c = TestContainer::start_with("hardu", true);
            let frz_c = TestContainer::start("frz");
            for c in [&priv_c, &uns_c] {
                let mut pw = std::fs::read_to_string(c.rootfs.join("etc/passwd")).unwrap();
                pw.push_str("noshell:x:1001:1001::/:/bin/nope\n");
                std::fs::write(c.rootfs.join("etc/passwd"), pw).unwrap();
            }
            let dir = tempfile::tempdir().unwrap();
            let pid_file = dir.path().join("init.pid");
            std::fs::write(&pid_file, format!("{}\n", priv_c.init_pid())).unwrap();
            let frz_pid = dir.path().join("frz.pid");
            std::fs::write(&frz_pid, format!("{}\n", frz_c.init_pid())).unwrap();
            let extra = format!(
                "[containers.proc-{p}]\npid_file = \"{}\"\nlabels = {{ env = \"dev\" }}\n\
                 [containers.cg-{p}]\ncgroup = \"/sys/fs/cgroup/unified/lxc.payload.{p}\"\n\
                 [containers.proc-{f}]\npid_file = \"{}\"\n",
                pid_file.display(),
                frz_pid.display(),
                p = priv_c.name,
                f = frz_c.name,
            );
            let gateway = TestGateway::start(&idp.issuer, &extra);
            let rt = tokio::runtime::Runtime::new().unwrap();
            let admin_token = rt.block_on(idp.device_flow_id_token("admin"));
            Fixture {
                _idp: idp,
                priv_c,
                uns_c,
                frz_c,
                gateway,
                admin_token,
                _dir: dir,
            }
        })
        .join()
        .unwrap()
    })
}

fn ssh_cmd(target: &str, args: &[&str]) -> (Command, tempfile::TempDir) {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = f.gateway.ssh(target, &f.admin_token, dir.path());
    cmd.args(args);
    (cmd, dir)
}

fn ssh(target: &str, args: &[&str]) -> SshResult {
    let (mut cmd, _dir) = ssh_cmd(target, args);
    run_ssh(&mut cmd, b"")
}

fn text(r: &SshResult) -> String {
    String::from_utf8_lossy(&r.stdout).into_owned()
}

fn field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

/// Everything the session sees of itself, in one exec, compared with init.
fn inside_view_matches_init(c: &TestContainer, login: &str, home: &str) {
    let kinds = ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"];
    let mut script: Vec<String> = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}"))
        .collect();
    script.push("echo CG; cat /proc/self/cgroup; echo INITCG; cat /proc/1/cgroup".into());
    script.push("echo ST; cat /proc/self/status; echo FD; ls /proc/self/fd".into());
    script.push("echo PWD; pwd; echo ENV; env".into());
    let r = ssh(&format!("{login}@{}", c.name), &[&script.join("; ")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = text(&r);
    let init = c.init_pid();
    let want: Vec<String> = kinds
        .iter()
        .map(|k| {
            let l = std::fs::read_link(format!("/proc/{init}/ns/{k}")).unwrap();
            l.display().to_string()
        })
        .collect();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..kinds.len()], want.as_slice(), "{out}");
    let section = |from: &str, to: &str| -> String {
        let a = out.find(&format!("{from}\n")).unwrap() + from.len() + 1;
        let b = out[a..]
            .find(&format!("{to}\n"))
            .map_or(out.len(), |i| a + i);
        out[a..b].to_owned()
    };
    // The init's cgroups in every v1 hierarchy; in cgroup2 the session's
    // own cgroup right below the container's (the namespace's root).
    let (mine, theirs) = (section("CG", "INITCG"), section("INITCG", "ST"));
    let v1 = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("0::"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(v1(&mine), v1(&theirs));
    assert!(theirs.lines().any(|l| l == "0::/"), "{theirs}");
    let own = mine
        .lines()
        .find_map(|l| l.strip_prefix("0::/.portcullis-"));
    assert!(own.is_some_and(|n| !n.contains('/')), "{mine}");
    let status = section("ST", "FD");
    let init_status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    for k in ["CapBnd", "CapPrm", "CapEff"] {
        let (mine, theirs) = (hex(&field(&status, k)), hex(&field(&init_status, k)));
        assert_eq!(
            mine & !theirs,
            0,
            "{k}: {mine:x} wider than init's {theirs:x}"
        );
    }
    assert_eq!(field(&status, "CapBnd"), field(&init_status, "CapBnd"));
    if login == "root" {
        // Root inside ends with exactly the init's sets, not the host's.
        for k in ["CapPrm", "CapEff"] {
            assert_eq!(field(&status, k), field(&init_status, k), "{k}");
        }
    }
    let fds: Vec<String> = section("FD", "PWD")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // ls opens one directory fd of its own.
    assert_eq!(fds, ["0", "1", "2", "3"], "{out}");
    assert_eq!(section("PWD", "ENV").trim(), home);
    let mut keys: Vec<String> = section("ENV", "\u{0}")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["HOME", "LOGNAME", "PATH", "PWD", "SHELL", "SHLVL", "USER"],
        "{out}"
    );
}

#[test]
fn privileged_inside_view_matches_init() {
    let f = fixture();
    inside_view_matches_init(&f.priv_c, "root", "/root");
    inside_view_matches_init(&f.priv_c, "app", "/home/app");
}

#[test]
fn unprivileged_inside_view_matches_init() {
    let f = fixture();
    inside_view_matches_init(&f.uns_c, "root", "/root");
    inside_view_matches_init(&f.uns_c, "app", "/home/app");
}

#[test]
fn tty_is_a_pts_of_the_container() {
    let f = fixture();
    for c in [&f.priv_c, &f.uns_c] {
        let r = ssh(
            &format!("root@{}", c.name),
            &["-tt", "t=$(tty); echo TTY=$t; test -c $t && echo EXISTS"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let out = text(&r);
        assert!(out.contains("TTY=/dev/pts/"), "{out}");
        assert!(out.contains("EXISTS"), "{out}");
    }
}

/// Starts `ssh TARGET COMMAND` in the background; returns it once the
/// command printed `ready`.
fn start_session(target: &str, command: &str) -> (std::process::Child, tempfile::TempDir) {
    let (mut cmd, dir) = ssh_cmd(target, &[command]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, dir)
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unprivileged_root_is_uid_0_inside_and_100000_on_the_host() {
    let f = fixture();
    let c = &f.uns_c;
    let r = ssh(&format!("root@{}", c.name), &["id -u"]);
    assert_eq!((r.code, text(&r).as_str()), (0, "0\n"), "{}", r.stderr);
    let (mut child, _d) = start_session(&format!("root@{}", c.name), "echo ready; sleep 3011");
    // `ready` is printed just before the shell execs `sleep`; while a process
    // is inside execve its cmdline reads empty, so poll until it settles.
    let mut pids = Vec::new();
    wait_until("the session's sleep", Duration::from_secs(10), || {
        pids = c.processes_matching("sleep 3011");
        pids.len() == 1
    });
    let st = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    assert!(
        field(&st, "Uid")
            .split_whitespace()
            .all(|u| u == UNS_BASE.to_string()),
        "{st}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Children of `pid` that are zombies (state Z).
fn zombie_children(pid: u32) -> Vec<String> {
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(st) = std::fs::read_to_string(e.path().join("status"))
            && field(&st, "PPid") == pid.to_string()
            && field(&st, "State").starts_with('Z')
        {
            z.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    z
}

#[test]
fn disconnect_kills_every_session_process_and_leaves_no_zombie() {
    let f = fixture();
    let c = &f.priv_c;
    let target = format!("root@{}", c.name);
    let (mut child, _d) = start_session(&target, "sleep 3012 & sleep 3013 & echo ready; wait");
    // The two sleeps and their shell.
    wait_until("the two sleeps", Duration::from_secs(10), || {
        c.processes_matching("sleep 301").len() >= 2
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // kill_grace is 1 s in the test gateway.
    wait_until("session processes to go", Duration::from_secs(10), || {
        c.processes_matching("sleep 301").is_empty()
    });
    let r = ssh(&target, &["ps -o pid,args"]);
    assert!(!text(&r).contains("sleep 301"), "{}", text(&r));
    // A zombie seen twice a second apart is a leak (others are mid-reap).
    let first = zombie_children(f.gateway.pid());
    std::thread::sleep(Duration::from_secs(1));
    let second = zombie_children(f.gateway.pid());
    let leaked: Vec<&String> = first.iter().filter(|p| second.contains(p)).collect();
    assert!(leaked.is_empty(), "zombies of the gateway: {leaked:?}");
}

#[test]
fn refusals_are_clear_and_audited() {
    let f = fixture();
    let c = &f.priv_c;
    let cases = [
        (
            format!("nosuch@{}", c.name),
            "Access refused: user \"nosuch\" does not exist in the container.".to_owned(),
        ),
        (
            format!("noshell@{}", c.name),
            "Access refused: the login shell \"/bin/nope\" does not exist in the container."
                .to_owned(),
        ),
    ];
    for (target, message) in &cases {
        let r = ssh(target, &["echo should-not-run"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stdout.is_empty());
        assert!(r.stderr.contains(message), "{}", r.stderr);
    }
    let failures = f
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "session_start" && e["outcome"] == "failure")
        .map(|e| e.to_string())
        .collect::<Vec<_>>();
    assert!(
        failures.iter().any(|e| e.contains("nosuch")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|e| e.contains("/bin/nope")),
        "{failures:?}"
    );

    // Frozen: refused by the inventory state (LXC) and, for the process
    // backend that does not know states, by the helper's freezer check.
    let z = &f.frz_c;
    common::gateway::run(Command::new("lxc-freeze").args(["-n", &z.name]));
    let r = ssh(&format!("root@{}", z.name), &["true"]);
    let r2 = ssh(&format!("root@proc-{}", z.name), &["true"]);
    common::gateway::run(Command::new("lxc-unfreeze").args(["-n", &z.name]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let want = format!(
        "Access refused: the container {} is frozen (not running).",
        z.name
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert_eq!(r2.code, 1, "{}", r2.stderr);
    assert!(
        r2.stderr
            .contains("Access refused: the container is frozen; try again once it is thawed."),
        "{}",
        r2.stderr
    );
    let refused = f
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e.to_string().contains("FROZEN") || e.to_string().contains("frozen"))
        .count();
    assert!(refused >= 2, "{refused}");
    let r = ssh(&format!("root@{}", z.name), &["echo thawed"]);
    assert_eq!(text(&r), "thawed\n", "{}", r.stderr);
}

#[test]
fn process_backend_by_pid_file_and_by_cgroup() {
    let f = fixture();
    let c = &f.priv_c;
    for prefix in ["proc", "cg"] {
        let r = ssh(&format!("root@{prefix}-{}", c.name), &["cat /etc/hostname"]);
        assert_eq!(r.code, 0, "{prefix}: {}", r.stderr);
        assert_eq!(text(&r), format!("{}\n", c.name));
    }
    let out = f.gateway.cli(&["containers", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let get = |n: &str| list.iter().find(|e| e["name"] == n).cloned().unwrap();
    let p = get(&format!("proc-{}", c.name));
    assert_eq!(
        (&p["backend"], &p["state"], &p["labels"]["env"]),
        (&"process".into(), &"RUNNING".into(), &"dev".into())
    );
    assert_eq!(p["init_pid"], c.init_pid().to_string());
    assert_eq!(
        get(&format!("cg-{}", c.name))["init_pid"],
        c.init_pid().to_string()
    );
    assert_eq!(get(&c.name)["backend"], "lxc");
}

#[test]
fn container_stopping_mid_session_ends_it_with_a_message() {
    let f = fixture();
    let c = TestContainer::start("stop");
    let (mut cmd, _d) = ssh_cmd(&format!("root@{}", c.name), &["echo ready; sleep 1000"]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    common::gateway::run(Command::new("lxc-stop").args(["-k", "-n", &c.name]));
    let started = Instant::now();
    wait_until("the session to end", Duration::from_secs(15), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let want = format!(
        "Portcullis: session ended: the container {} stopped.",
        c.name
    );
    assert!(err.contains(&want), "{err}");
    wait_until("the audit event", Duration::from_secs(20), || {
        f.gateway.audit_events().iter().any(|e| {
            e["kind"] == "session_control"
                && e["detail"].as_str().unwrap_or("") == format!("{{\"container\":\"{}\"}}", c.name)
        })
    });
}

/// A 147-byte static x86_64 ELF: `open_by_handle_at(AT_FDCWD, NULL, 0)`,
/// then `exit(-result)`, so its exit status is the errno: EFAULT (14) for
/// root in a privileged container without seccomp (the capability check
/// passes, the NULL handle faults), EPERM (1) when a filter denies the call.
const OPEN_BY_HANDLE_ELF: &str = "7f454c4602010100000000000000000002003e00010000007800400000000000\
4000000000000000000000000000000000000000400038000100000000000000\
0100000005000000000000000000000000004000000000000000400000000000\
9300000000000000930000000000000000100000000000\
00b830010000bf9cffffff31f631d20f05f7d889c7b83c0000000f05";

#[test]
#[cfg(target_arch = "x86_64")]
fn the_seccomp_deny_list_confines_the_session_and_not_the_init() {
    let f = fixture();
    for c in [&f.priv_c, &f.uns_c] {
        let bin = c.rootfs.join("bin/open-by-handle");
        std::fs::write(&bin, hex::decode(OPEN_BY_HANDLE_ELF).unwrap()).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let init = c.init_pid();
        let init_status = || std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
        let before = init_status();
        let r = ssh(
            &format!("root@{}", c.name),
            &["grep Seccomp /proc/self/status; /bin/open-by-handle; echo RC=$?"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let out = text(&r);
        // The session is filtered: one filter more than the init has.
        assert_eq!(field(&out, "Seccomp"), "2", "{out}");
        let filters = |s: &str| field(s, "Seccomp_filters").parse::<u32>().unwrap();
        assert_eq!(filters(&out), filters(&before) + 1, "{out}");
        // The denied call fails with EPERM inside the session.
        assert!(out.contains("RC=1\n"), "{out}");
        // The init is untouched.
        let after = init_status();
        assert_eq!(field(&after, "Seccomp"), field(&before, "Seccomp"));
        assert_eq!(filters(&after), filters(&before));
    }
    // Reference for the privileged container: entered without Portcullis
    // (nsenter applies no filter), the same call gets past the capability
    // check (EFAULT), so the EPERM above is the deny-list's.
    let init = f.priv_c.init_pid().to_string();
    let st = Command::new("nsenter")
        .args(["-t", &init, "-a", "/bin/open-by-handle"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(14));
}

/// `portcullis attach` on the host: the same helper without SSH, audited
/// (session row and start event before the session, end event after),
/// exit status passed through, the seccomp deny-list applied; an unknown
/// container (no monitor socket: the `lxc-info` fallback) is refused
/// without a session.
#[test]
fn the_attach_command_is_audited_and_passes_the_exit_status() {
    let f = fixture();
    let attach = |container: &str, cmd: &str| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("attach")
            .arg("--config")
            .arg(&f.gateway.config_path)
            .args([container, "--", cmd])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = attach(
        &f.priv_c.name,
        "cat /etc/hostname; grep Seccomp: /proc/self/status; exit 3",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("{}\n", f.priv_c.name)),
        "{stdout}"
    );
    assert_eq!(field(&stdout, "Seccomp"), "2", "{stdout}");

    let session = f
        .gateway
        .sessions()
        .into_iter()
        .find(|s| s["container"] == f.priv_c.name.as_str() && s["principal"] == "host:uid=0")
        .expect("session row of the attach");
    assert_eq!(session["status"], "ended", "{session}");
    assert_eq!(session["exit_status"], 3, "{session}");
    assert_eq!(session["recording_sha256"].as_str().unwrap().len(), 64);
    let id = session["id"].as_str().unwrap();
    let kinds: Vec<(String, String)> = f
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["session_id"] == id)
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("session_start".to_owned(), "success".to_owned()),
            ("session_end".to_owned(), "info".to_owned())
        ],
        "{kinds:?}"
    );

    let out = attach("portcullis-test-no-such-container", "true");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such container"), "{stderr}");
    assert!(
        !f.gateway
            .sessions()
            .iter()
            .any(|s| s["container"] == "portcullis-test-no-such-container")
    );
}

/// A container whose old cgroup was left behind (by a crash, or a process
/// that outlived its stop) gets `lxc.payload.NAME-1` from LXC at its next
/// start; it must still be entered, into that cgroup (before the fix the
/// pin check refused it: "pid N is not in cgroup /lxc.payload.NAME").
#[test]
fn a_container_whose_cgroup_lxc_had_to_suffix_is_entered() {
    let _f = fixture();
    let c = TestContainer::start("sfx");
    common::gateway::run(Command::new("lxc-stop").args(["-k", "-n", &c.name]));
    // An empty cgroup of the container's name in every hierarchy.
    let stale: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .map(|p| p.join(format!("lxc.payload.{}", c.name)))
        .collect();
    for dir in &stale {
        let _ = std::fs::create_dir(dir);
    }
    common::gateway::run(Command::new("lxc-start").args(["-n", &c.name]));
    let mut init_cgroup = String::new();
    wait_until("the restarted init", Duration::from_secs(20), || {
        let out = Command::new("lxc-info")
            .args(["-n", &c.name, "-p", "-H"])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        init_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        !pid.is_empty() && !init_cgroup.is_empty()
    });
    let suffixed = format!("/lxc.payload.{}-1", c.name);
    assert!(init_cgroup.contains(&suffixed), "{init_cgroup}");

    let r = ssh(
        &format!("root@{}", c.name),
        &["id -u; cat /proc/self/cgroup"],
    );
    let out = text(&r);
    common::gateway::run(Command::new("lxc-stop").args(["-k", "-n", &c.name]));
    for dir in &stale {
        let _ = std::fs::remove_dir(dir);
    }
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Inside, the container's cgroup namespace shows its own root, as for
    // init, and in cgroup2 the session's own cgroup right below it.
    let inside = out.strip_prefix("0\n").unwrap_or_else(|| panic!("{out}"));
    assert!(
        inside
            .lines()
            .all(|l| l.ends_with(":/") || l.starts_with("0::/.portcullis-")),
        "{inside}"
    );
}

/// `tests/attach_keyring_probe.c`, built static (busybox has no keyctl).
fn keyring_probe() -> &'static std::path::Path {
    static P: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::gateway::run(
            Command::new("cc")
                .args(["-static", "-O2", "-o"])
                .arg(dir.path().join("keyprobe"))
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/attach_keyring_probe.c"
                )),
        );
        dir
    });
    Box::leak(dir.path().join("keyprobe").into_boxed_path())
}

/// `(serial, description)` from a probe's `ses SERIAL DESCRIPTION` line.
fn session_keyring(out: &str) -> (String, String) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("ses "))
        .unwrap_or_else(|| panic!("no ses line: {out}"));
    let (serial, desc) = line.split_once(' ').unwrap();
    (serial.to_owned(), desc.to_owned())
}

/// Review finding 2: every session joins a fresh session keyring, so the
/// operator's keyring (`portcullis attach` from a login shell) and the
/// gateway's never reach a container, and two sessions (two containers)
/// never share one.
#[test]
fn each_session_has_a_fresh_session_keyring() {
    let f = fixture();
    let probe = keyring_probe();
    for c in [&f.priv_c, &f.uns_c] {
        let dst = c.rootfs.join("bin/keyprobe");
        std::fs::copy(probe, &dst).unwrap();
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    // An operator with a secret in their keyring runs `portcullis attach`.
    let mut serials = Vec::new();
    for c in [&f.priv_c, &f.uns_c] {
        let out = Command::new(probe)
            .args(["operator", "portcullis-test-operator"])
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .arg("attach")
            .arg("--config")
            .arg(&f.gateway.config_path)
            .args([
                c.name.as_str(),
                "--",
                "/bin/keyprobe show; /bin/keyprobe find hostsecret",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let operator = text
            .lines()
            .find_map(|l| l.strip_prefix("operator "))
            .unwrap()
            .to_owned();
        let (serial, desc) = session_keyring(&text);
        assert_ne!(
            serial, operator,
            "{}: the operator's keyring: {text}",
            c.name
        );
        assert!(desc.ends_with(";_ses"), "{}: {text}", c.name);
        assert!(
            text.contains("find hostsecret absent\n"),
            "{}: {text}",
            c.name
        );
        serials.push(serial);
    }
    // Through the gateway: one session stores a key; neither a session in
    // the other container nor a later one in the same container sees it.
    let r = ssh(
        &format!("root@{}", f.priv_c.name),
        &["/bin/keyprobe show; /bin/keyprobe add shared; /bin/keyprobe find shared"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let first = text(&r);
    assert!(!first.contains("find shared absent"), "{first}");
    serials.push(session_keyring(&first).0);
    for c in [&f.uns_c, &f.priv_c] {
        let r = ssh(
            &format!("root@{}", c.name),
            &["/bin/keyprobe show; /bin/keyprobe find shared"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let out = text(&r);
        assert!(out.contains("find shared absent\n"), "{}: {out}", c.name);
        serials.push(session_keyring(&out).0);
    }
    let mut distinct = serials.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        serials.len(),
        "shared keyrings: {serials:?}"
    );
}

/// What a session starts in the background and must not outlive it: a
/// `setsid` daemon, a process ignoring SIGHUP (`nohup`; busybox has none)
/// and a double fork (reparented to the container's init).
fn escapees(tag: u32) -> String {
    format!(
        "setsid sleep {tag}1 </dev/null >/dev/null 2>&1 & \
         (trap '' HUP; exec sleep {tag}2 </dev/null >/dev/null 2>&1) & \
         sh -c 'sleep {tag}3 </dev/null >/dev/null 2>&1 &'; \
         echo ready; exec sleep {tag}4"
    )
}

/// Issue 12 point 1: the session's processes, however they detach, are gone
/// by the time the gateway records the session's end, whether the client
/// hung up or the session was killed (`portcullis sessions kill`); the
/// container's own processes are untouched.
#[test]
fn every_process_a_session_starts_ends_with_it() {
    let f = fixture();
    for (c, base) in [(&f.priv_c, 880u32), (&f.uns_c, 890)] {
        let target = format!("app@{}", c.name);
        for (how, tag) in [("disconnect", base + 1), ("kill", base + 2)] {
            let (mut child, _d) = start_session(&target, &escapees(tag));
            let needle = format!("sleep {tag}");
            wait_until("the four sleeps", Duration::from_secs(10), || {
                c.processes_matching(&needle).len() == 4
            });
            let row = || {
                f.gateway.sessions().into_iter().find(|s| {
                    s["container"] == c.name.as_str()
                        && s["command"].as_str().unwrap_or("").contains(&needle)
                })
            };
            let id = row().unwrap()["id"].as_str().unwrap().to_owned();
            if how == "disconnect" {
                child.kill().unwrap();
            } else {
                let out = f
                    .gateway
                    .cli(&["sessions", "kill", &id, "--reason", "test kill"]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            wait_until("the session's end", Duration::from_secs(20), || {
                row().is_some_and(|s| s["status"] != "running")
            });
            let left = c.processes_matching(&needle);
            assert!(left.is_empty(), "{} ({how}): left behind {left:?}", c.name);
            let _ = child.kill();
            child.wait().unwrap();
        }
        assert!(c.init_pid() > 0);
    }
}

/// A gateway that dies (SIGKILL) takes its sessions with it: each helper
/// sees its control socket close and kills its session's cgroup, whatever
/// the session started.
#[test]
fn a_gateway_that_dies_takes_its_sessions_with_it() {
    let f = fixture();
    let c = &f.uns_c;
    let mut gateway = TestGateway::start(&f._idp.issuer, "");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh(&format!("app@{}", c.name), &f.admin_token, dir.path());
    let mut child = cmd
        .arg(escapees(895))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    wait_until("the four sleeps", Duration::from_secs(10), || {
        c.processes_matching("sleep 895").len() == 4
    });
    gateway.crash();
    let t0 = Instant::now();
    wait_until(
        "the session's processes to go",
        Duration::from_secs(10),
        || c.processes_matching("sleep 895").is_empty(),
    );
    eprintln!("gone {:?} after the gateway died", t0.elapsed());
    let _ = child.kill();
    child.wait().unwrap();
}
