//! The process backend from where an attacker stands (issue 13 point 6,
//! review finding 6): an unprivileged user inside a container makes a
//! nested PID namespace whose init has a lower host PID than the real
//! init, and must not capture the sessions of others.
//!
//! Real parts: a privileged busybox LXC container found by the process
//! backend through its cgroup directory, the real gateway, the real IdP and
//! OpenSSH client. The attacker gets their low PID the way a patient user
//! would by cycling through `pid_max` forks; the harness (host root) only
//! shortens that wait by writing `/proc/sys/kernel/ns_last_pid`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::gateway::{TestContainer, TestGateway, run_ssh};
use common::idp::TestIdp;

struct Fixture {
    _idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    /// ID token of `admin` (group admins).
    admin_token: String,
    /// ID token of `alice` (group developers: `app`, not root, on env=dev).
    alice_token: String,
}

/// The cgroup2 mount point (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            right.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 mount")
}

/// The host pid allocator's next PID is `last + 1` (when free).
fn set_ns_last_pid(last: u32) {
    std::fs::write("/proc/sys/kernel/ns_last_pid", last.to_string()).unwrap();
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            // The container's init gets a PID in the upper half of the
            // range, so the attacker below has room to get a lower one.
            let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            set_ns_last_pid(pid_max / 2);
            let container = TestContainer::start("nestedpid");
            let init = container.init_pid();
            let cg = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
            let path = cg
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("cgroup2 line")
                .to_string();
            let dir = format!("{}{path}", cgroup2_root().display());
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[containers.{}]\ncgroup = \"{dir}\"\nlabels = {{ env = \"dev\" }}\n\
                     owner = \"alice\"\npurpose = \"nested pid test\"\n",
                    container.name
                ),
            );
            let rt = tokio::runtime::Runtime::new().unwrap();
            let admin_token = rt.block_on(idp.device_flow_id_token("admin"));
            let alice_token = rt.block_on(idp.device_flow_id_token("alice"));
            Fixture {
                _idp: idp,
                container,
                gateway,
                admin_token,
                alice_token,
            }
        })
        .join()
        .unwrap()
    })
}

/// A live ssh session, killed when dropped.
struct Attacker(Child);

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `NSpid:` entries of `/proc/PID/status`.
fn nspid(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `portcullis containers list --json`'s init PID of the container.
fn listed_init_pid(f: &Fixture) -> String {
    let out = f.gateway.cli(&["containers", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .iter()
        .find(|r| r["name"] == f.container.name.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {rows:?}", f.container.name));
    row["init_pid"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_nested_pid_namespace_init_does_not_capture_sessions() {
    let f = fixture();
    let init = f.container.init_pid();
    let dir = tempfile::tempdir().unwrap();

    // The attacker (alice, login `app`, unprivileged in the container)
    // makes a user and PID namespace of their own; its init is a plain
    // `sleep`, and it stays in the container's cgroup. Their low host PID: the next PIDs the host hands out.
    set_ns_last_pid(1000);
    let mut cmd = f.gateway.ssh(
        &format!("app@{}", f.container.name),
        &f.alice_token,
        dir.path(),
    );
    // (The busybox template makes /bin/busybox set-uid root, so the
    // attacker first takes a copy of their own, as anyone could.)
    cmd.arg(
        "cp /bin/busybox /tmp/busybox && exec /tmp/busybox unshare -rpf /tmp/busybox sleep 997",
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.path().join("attacker.err")).unwrap());
    let _attacker = Attacker(cmd.spawn().unwrap());
    let mut fake = 0;
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::wait_until(
            "the attacker's nested init",
            Duration::from_secs(30),
            || {
                fake = f
                    .container
                    .processes_matching("sleep 997")
                    .into_iter()
                    .find(|p| nspid(*p).len() == 3 && nspid(*p).last() == Some(&1))
                    .unwrap_or(0);
                fake != 0
            },
        )
    }));
    assert!(
        waited.is_ok(),
        "no nested init; the attacker's ssh said: {}",
        std::fs::read_to_string(dir.path().join("attacker.err")).unwrap_or_default()
    );
    // The precondition of the attack: the fake init is the lowest PID of
    // the container's cgroup that is some PID namespace's init.
    assert!(fake < init, "fake init {fake} is not below the init {init}");

    // The lookup names the real init, not the attacker's.
    assert_eq!(listed_init_pid(f), init.to_string());

    // An admin's root session lands in the real init's namespaces.
    let kinds = ["pid", "user", "mnt"];
    let script: Vec<String> = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}"))
        .collect();
    let mut cmd = f.gateway.ssh(
        &format!("root@{}", f.container.name),
        &f.admin_token,
        dir.path(),
    );
    cmd.arg(script.join("; "));
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    let expected: String = kinds
        .iter()
        .map(|k| {
            let link = std::fs::read_link(format!("/proc/{init}/ns/{k}")).unwrap();
            format!("{}\n", link.display())
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&r.stdout), expected);
}

#[test]
fn the_real_init_is_listed_with_its_namespace_depth() {
    // Without an attacker the lookup finds the init LXC started.
    let f = fixture();
    let init = f.container.init_pid();
    assert_eq!(nspid(init).len(), 2);
    assert_eq!(listed_init_pid(f), init.to_string());
}

#[test]
fn the_listing_has_owner_purpose_and_the_newest_session() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = f.gateway.ssh(
        &format!("root@{}", f.container.name),
        &f.admin_token,
        dir.path(),
    );
    cmd.arg("true");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The newest session row of this container, as `sessions list` has it
    // (the other tests of this file log in too).
    let newest = || {
        f.gateway
            .sessions()
            .into_iter()
            .filter(|s| s["container"] == f.container.name.as_str())
            .max_by_key(|s| (s["started_at"].as_i64(), s["id"].as_str().map(String::from)))
            .unwrap()
    };
    let mut row = serde_json::Value::Null;
    let mut s = serde_json::Value::Null;
    // The listing and `sessions list` are read in the same poll: the other
    // tests of this file start sessions concurrently, so a second read of
    // the newest session may name another one.
    common::wait_until(
        "the listing's last session",
        Duration::from_secs(20),
        || {
            let out = f.gateway.cli(&["containers", "list", "--json"]);
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            row = rows
                .into_iter()
                .find(|r| r["name"] == f.container.name.as_str())
                .unwrap();
            s = newest();
            row["last_session"]["session_id"] == s["id"]
        },
    );
    assert_eq!(row["backend"], "process");
    assert_eq!(row["owner"], "alice");
    assert_eq!(row["purpose"], "nested pid test");
    assert_eq!(row["labels"], serde_json::json!({"env": "dev"}));
    assert_eq!(row["unowned"], false);
    assert_eq!(row["last_session"]["principal"], s["principal"]);
    assert_eq!(row["last_session"]["login"], s["login"]);
    assert_eq!(row["last_session"]["started_at"], s["started_at"]);
}

#[test]
fn the_lxc_backend_lists_owner_purpose_and_a_checked_init() {
    // The same container found by the LXC backend, with a config of its own.
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lxc.toml");
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[oidc]\nissuer = \"https://i.example\"\nclient_id = \"c\"\n\
             [containers.{}]\nowner = \"bob\"\npurpose = \"lxc listing\"\n",
            dir.path().join("state").display(),
            f.container.name
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["containers", "list", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .iter()
        .find(|r| r["name"] == f.container.name.as_str())
        .unwrap();
    assert_eq!(
        (
            &row["backend"],
            &row["state"],
            &row["owner"],
            &row["purpose"]
        ),
        (
            &"lxc".into(),
            &"RUNNING".into(),
            &"bob".into(),
            &"lxc listing".into()
        )
    );
    assert_eq!(row["init_pid"], f.container.init_pid().to_string());
    assert_eq!(row["last_session"], serde_json::Value::Null);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["containers", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&f.container.name))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("bob") && line.contains("lxc listing"),
        "{line}"
    );
}
