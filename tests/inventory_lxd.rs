//! The Incus/LXD backend against a real LXD daemon (Debian 12's `lxd`
//! 5.0), end to end: the stock OpenSSH client logs in to an LXD container
//! through the real gateway (`inventory.backend = "incus"`), which found
//! the container, its init, owner, purpose and labels through the daemon's
//! REST API on its Unix socket.
//!
//! The test starts its own daemon (no systemd) with a private `LXD_DIR`, so
//! it never touches another daemon or test: a `dir` storage pool and no
//! network by preseed, and an image imported from a busybox rootfs built
//! here (no image server is reachable). See
//! `shared/research/lxd-offline.md`. Everything is removed when the test
//! process exits (a reaper shell, as in `tests/common/gateway.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{SshResult, TestGateway, run_ssh};
use common::idp::TestIdp;
use serde_json::Value;

/// A private LXD daemon with one running and one stopped container.
struct Lxd {
    dir: PathBuf,
    /// The running container (owner, purpose, label env=dev).
    running: String,
    /// A container that was created and never started (no owner).
    stopped: String,
    _reaper: ChildStdin,
}

impl Lxd {
    fn socket(&self) -> PathBuf {
        self.dir.join("unix.socket")
    }

    /// `lxc ARGS` (LXD's client) against this daemon.
    fn lxc(&self, args: &[&str]) -> Output {
        let out = Command::new("lxc")
            .args(args)
            .env("LXD_DIR", &self.dir)
            .env("LXD_CONF", self.dir.join("client"))
            .output()
            .expect("run lxc (apt-get install lxd)");
        assert!(
            out.status.success(),
            "lxc {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The running container's init PID, as the daemon reports it
    /// (`lxc query`, a raw API request).
    fn init_pid(&self) -> i32 {
        let out = self.lxc(&["query", &format!("/1.0/instances/{}/state", self.running)]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["pid"].as_i64().unwrap() as i32
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An LXD image (metadata and rootfs tarballs) of a busybox system: a copy
/// of the static `/bin/busybox`, a link per applet, an init that keeps a
/// `sleep` alive, logins `root` and `app` (uid 1000).
fn build_image(dir: &Path) -> (PathBuf, PathBuf) {
    let rootfs = dir.join("rootfs");
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox (busybox-static)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("/bin/busybox", rootfs.join("bin").join(applet));
        }
    }
    std::os::unix::fs::symlink("/bin/busybox", rootfs.join("sbin/init")).unwrap();
    write(&rootfs.join("etc/inittab"), "::respawn:/bin/sleep 100000\n");
    write(
        &rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    );
    write(&rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n");
    std::os::unix::fs::chown(rootfs.join("home/app"), Some(1000), Some(1000)).unwrap();
    write(
        &dir.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1765000000\nproperties:\n  description: portcullis test busybox\n",
    );
    let meta = dir.join("meta.tar.gz");
    let root = dir.join("rootfs.tar.gz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&meta)
        .arg("-C")
        .arg(dir)
        .arg("metadata.yaml"));
    run(Command::new("tar")
        .args(["--numeric-owner", "-czf"])
        .arg(&root)
        .arg("-C")
        .arg(&rootfs)
        .arg("."));
    (meta, root)
}

/// Starts the daemon, configures it by preseed, imports the image and
/// launches the containers; prints how long each step took.
fn start_lxd() -> Lxd {
    let started = Instant::now();
    let base = std::env::temp_dir().join(format!("portcullis-test-{}-lxd", std::process::id()));
    let dir = base.join("lxd");
    std::fs::create_dir_all(&dir).unwrap();
    // LXD wants its directory traversable by the container's mapped root.
    run(Command::new("chmod").arg("711").arg(&base).arg(&dir));
    let running = format!("portcullis-test-{}-lxd", std::process::id());
    let stopped = format!("{running}-stopped");
    let env = format!(
        "LXD_DIR={} LXD_CONF={}",
        dir.display(),
        dir.join("client").display()
    );
    // On exit: remove the containers, stop the daemon, and, should it not
    // answer, kill it and stop the containers through their liblxc
    // monitors; unmount what it mounted below `base`, remove its files
    // (never crossing into another mount).
    let mut reaper = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read _ignored; export {env}; timeout 30 lxc delete -f {running} {stopped} >/dev/null 2>&1; \
             timeout 20 lxd shutdown --timeout 15 >/dev/null 2>&1; \
             kill -9 $(cat {base}/lxd.pid) 2>/dev/null; \
             for c in {running} {stopped}; do lxc-stop -k -P {dir}/containers -n $c >/dev/null 2>&1; done; \
             grep -o ' {base}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l; \
             rm -rf --one-file-system {base}",
            base = base.display(),
            dir = dir.display(),
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reaper_stdin = reaper.stdin.take().unwrap();
    std::mem::forget(reaper);
    let log = std::fs::File::create(base.join("lxd.out")).unwrap();
    let daemon = Command::new("lxd")
        .args(["--group", "root", "--logfile"])
        .arg(base.join("lxd.log"))
        .env("LXD_DIR", &dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start lxd (apt-get install lxd)");
    write(&base.join("lxd.pid"), &daemon.id().to_string());
    std::mem::forget(daemon);
    let lxd = Lxd {
        dir,
        running,
        stopped,
        _reaper: reaper_stdin,
    };
    run(Command::new("lxd")
        .args(["waitready", "--timeout", "30"])
        .env("LXD_DIR", &lxd.dir));
    let ready = started.elapsed();
    let mut preseed = Command::new("lxd")
        .args(["init", "--preseed"])
        .env("LXD_DIR", &lxd.dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    preseed
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"storage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  \
              devices:\n    root: {path: /, pool: default, type: disk}\n",
        )
        .unwrap();
    assert!(preseed.wait().unwrap().success(), "lxd init --preseed");
    let (meta, root) = build_image(&base);
    lxd.lxc(&[
        "image",
        "import",
        meta.to_str().unwrap(),
        root.to_str().unwrap(),
        "--alias",
        "portcullis-busybox",
    ]);
    let imported = started.elapsed();
    lxd.lxc(&[
        "launch",
        "portcullis-busybox",
        &lxd.running,
        "-c",
        "user.portcullis.owner=alice",
        "-c",
        "user.portcullis.purpose=inventory test",
        "-c",
        "user.portcullis.label.env=dev",
    ]);
    lxd.lxc(&["init", "portcullis-busybox", &lxd.stopped]);
    common::wait_until("the LXD container's init", Duration::from_secs(30), || {
        lxd.init_pid() > 1
    });
    eprintln!(
        "LXD: daemon ready in {:?}, preseed and image in {:?}, containers in {:?} (total {:?})",
        ready,
        imported - ready,
        started.elapsed() - imported,
        started.elapsed()
    );
    lxd
}

struct Fixture {
    idp: TestIdp,
    lxd: Lxd,
    gateway: TestGateway,
    admin_token: String,
    alice_token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let lxd = start_lxd();
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[inventory]\nbackend = \"incus\"\nincus_socket = \"{}\"\n",
                    lxd.socket().display()
                ),
            );
            let rt = tokio::runtime::Runtime::new().unwrap();
            let admin_token = rt.block_on(idp.device_flow_id_token("admin"));
            let alice_token = rt.block_on(idp.device_flow_id_token("alice"));
            Fixture {
                idp,
                lxd,
                gateway,
                admin_token,
                alice_token,
            }
        })
        .join()
        .unwrap()
    })
}

fn ssh(user: &str, token: &str, args: &[&str]) -> SshResult {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = f.gateway.ssh(user, token, dir.path());
    cmd.args(args);
    run_ssh(&mut cmd, b"")
}

fn listing() -> Vec<Value> {
    let out = fixture().gateway.cli(&["containers", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn ssh_lands_in_every_namespace_of_the_lxd_container() {
    let f = fixture();
    let init = f.lxd.init_pid();
    let kinds = ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"];
    let mut script: Vec<String> = vec!["hostname".into()];
    script.extend(kinds.iter().map(|k| format!("readlink /proc/self/ns/{k}")));
    let r = ssh(
        &format!("root@{}", f.lxd.running),
        &f.admin_token,
        &[&script.join("; ")],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    let mut expected = format!("{}\n", f.lxd.running);
    for k in kinds {
        let link = std::fs::read_link(format!("/proc/{init}/ns/{k}")).unwrap();
        expected.push_str(&format!("{}\n", link.display()));
    }
    assert_eq!(String::from_utf8_lossy(&r.stdout), expected);
    // The init PID came from the instance's liblxc monitor, not from the
    // slower state endpoint.
    assert!(
        f.gateway
            .log()
            .contains("init PID from the instance's liblxc monitor"),
        "{}",
        f.gateway.log()
    );
    // An unprivileged container: root inside is not root on the host.
    let uid_map = std::fs::read_to_string(format!("/proc/{init}/uid_map")).unwrap();
    assert_ne!(uid_map.split_whitespace().nth(1), Some("0"), "{uid_map}");
}

#[test]
fn a_pty_session_and_the_label_in_policy() {
    let f = fixture();
    // alice is a developer: env=dev (the instance's user.portcullis.label.env)
    // lets her in as app, not as root.
    let r = ssh(
        &format!("app@{}", f.lxd.running),
        &f.alice_token,
        &["-tt", "id -u; tty"],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    let out = String::from_utf8_lossy(&r.stdout).replace('\r', "");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1000"), "{out:?}");
    assert!(
        lines.next().is_some_and(|l| l.starts_with("/dev/pts/")),
        "{out:?}"
    );
    let r = ssh(
        &format!("root@{}", f.lxd.running),
        &f.alice_token,
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);
}

#[test]
fn a_stopped_instance_is_refused_with_its_state() {
    let f = fixture();
    let r = ssh(
        &format!("root@{}", f.lxd.stopped),
        &f.admin_token,
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&format!(
            "Access refused: the container {} is stopped (not running).",
            f.lxd.stopped
        )),
        "{}",
        r.stderr
    );
    let r = ssh(
        "root@portcullis-no-such-instance",
        &f.admin_token,
        &["true"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);
}

#[test]
fn containers_list_shows_owner_purpose_labels_and_last_session() {
    let f = fixture();
    let r = ssh(
        &format!("root@{}", f.lxd.running),
        &f.admin_token,
        &["true"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut rows = Vec::new();
    common::wait_until(
        "the last session in the listing",
        Duration::from_secs(20),
        || {
            rows = listing();
            rows.iter().any(|r| {
                r["name"] == f.lxd.running.as_str() && r["last_session"]["login"] == "root"
            })
        },
    );
    let get = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {rows:?}"))
    };
    let running = get(&f.lxd.running);
    assert_eq!(running["backend"], "incus");
    assert_eq!(running["state"], "RUNNING");
    assert_eq!(running["init_pid"], f.lxd.init_pid().to_string());
    assert_eq!(running["owner"], "alice");
    assert_eq!(running["purpose"], "inventory test");
    assert_eq!(running["labels"], serde_json::json!({"env": "dev"}));
    assert_eq!(running["unowned"], false);
    // The test IdP's subject is the login name.
    assert_eq!(running["last_session"]["principal"], "admin");
    let stopped = get(&f.lxd.stopped);
    assert_eq!(
        (&stopped["state"], &stopped["owner"], &stopped["unowned"]),
        (&"STOPPED".into(), &Value::Null, &true.into())
    );
    assert_eq!(stopped["last_session"], Value::Null);
    assert_eq!(running["node"], stopped["node"]);
    // The table flags the container without an owner.
    let out = f.gateway.cli(&["containers", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "1 container(s) without an owner: {}",
            f.lxd.stopped
        )),
        "{text}"
    );
    let _ = &f.idp;
}

/// The `container_lifecycle` audit events of `container`: `(principal,
/// outcome, action)`, from `portcullis audit list --json`.
fn lifecycle_events(container: &str) -> Vec<(String, String, String)> {
    let out = fixture().gateway.cli(&["audit", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter()
        .filter(|r| r["kind"] == "container_lifecycle")
        .filter_map(|r| {
            let detail: Value = match &r["detail"] {
                Value::String(s) => serde_json::from_str(s).unwrap(),
                other => other.clone(),
            };
            (detail["container"] == container).then(|| {
                (
                    r["principal"].as_str().unwrap_or("").to_string(),
                    r["outcome"].as_str().unwrap().to_string(),
                    detail["action"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

/// Issue 18 through the daemon: the host operator's own commands (start,
/// restore, snapshots) and the broker's over ssh (snapshot of a running
/// instance, a restore refused without a grant, stop), on an instance of
/// this test's own, each audited before and after.
#[test]
fn lifecycle_actions_through_the_daemon() {
    let f = fixture();
    let name = format!("{}-life", f.lxd.running);
    f.lxd.lxc(&[
        "init",
        "portcullis-busybox",
        &name,
        "-c",
        "user.portcullis.label.env=dev",
        // An owner, so the listing test (in parallel) still counts one
        // container without an owner.
        "-c",
        "user.portcullis.owner=admin",
        // busybox's init halts on SIGUSR1, not on LXD's default SIGPWR.
        "-c",
        "raw.lxc=lxc.signal.halt=SIGUSR1",
    ]);
    let status = || {
        let out = f
            .lxd
            .lxc(&["query", &format!("/1.0/instances/{name}/state")]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["status"].as_str().unwrap().to_string()
    };
    let started = f
        .gateway
        .cli(&["containers", "start", &name, "--reason", "OPS-1"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&started.stdout),
        format!("start: done on {name}.\n")
    );
    assert_eq!(status(), "Running");
    let t0 = Instant::now();
    let snap = ssh(
        "portcullis",
        &f.admin_token,
        &["containers", "snapshot", &name, "--reason", "OPS-2"],
    );
    assert_eq!(
        (snap.code, String::from_utf8_lossy(&snap.stdout).as_ref()),
        (0, format!("Took snapshot snap0 of {name}.\n").as_str()),
        "{}",
        snap.stderr
    );
    eprintln!(
        "snapshot of a running LXD instance over ssh: {:?}",
        t0.elapsed()
    );
    f.lxd
        .lxc(&["exec", &name, "--", "touch", "/after-snapshot"]);
    // Admins too need a grant for a restore.
    let refused = ssh(
        "portcullis",
        &f.admin_token,
        &["containers", "restore", &name, "snap0", "--reason", "OPS-3"],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("the policy does not allow you to restore"),
        "{}",
        refused.stderr
    );
    // The host's operator restores (LXD stops, restores and starts it).
    let restored = f
        .gateway
        .cli(&["containers", "restore", &name, "snap0", "--reason", "OPS-3"]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let after = Command::new("lxc")
        .args(["exec", &name, "--", "test", "-e", "/after-snapshot"])
        .env("LXD_DIR", &f.lxd.dir)
        .env("LXD_CONF", f.lxd.dir.join("client"))
        .status()
        .unwrap();
    assert_eq!(
        after.code(),
        Some(1),
        "the file made after the snapshot is gone"
    );
    let listed = f.gateway.cli(&["containers", "snapshots", &name, "--json"]);
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = listed.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["snap0"]);
    // An unknown snapshot: the refusal names it.
    let missing = f
        .gateway
        .cli(&["containers", "restore", &name, "snap9", "--reason", "OPS-4"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains(&format!("{name} has no snapshot snap9")),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let t0 = Instant::now();
    let stopped = ssh(
        "portcullis",
        &f.admin_token,
        &["containers", "stop", &name, "--reason", "OPS-5"],
    );
    assert_eq!(
        (
            stopped.code,
            String::from_utf8_lossy(&stopped.stdout).as_ref()
        ),
        (0, format!("Stopped {name}.\n").as_str()),
        "{}",
        stopped.stderr
    );
    eprintln!("stop of an LXD instance over ssh: {:?}", t0.elapsed());
    assert_eq!(status(), "Stopped");
    let host = format!("host:uid={}", nix::unistd::getuid());
    let events = lifecycle_events(&name);
    let admin = events
        .iter()
        .find(|(p, _, a)| p != &host && a == "snapshot")
        .map(|(p, _, _)| p.clone())
        .unwrap();
    let e = |p: &str, o: &str, a: &str| (p.to_string(), o.to_string(), a.to_string());
    assert_eq!(
        events,
        vec![
            e(&host, "allow", "start"),
            e(&host, "success", "start"),
            e(&admin, "allow", "snapshot"),
            e(&admin, "success", "snapshot"),
            e(&admin, "deny", "restore"),
            e(&host, "allow", "restore"),
            e(&host, "success", "restore"),
            e(&host, "allow", "restore"),
            e(&host, "failure", "restore"),
            e(&admin, "allow", "stop"),
            e(&admin, "success", "stop"),
        ]
    );
    let _ = Command::new("lxc")
        .args(["delete", "-f", &name])
        .env("LXD_DIR", &f.lxd.dir)
        .env("LXD_CONF", f.lxd.dir.join("client"))
        .output();
}
