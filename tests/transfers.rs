//! Issue 5 end to end, with real parts only: the real OpenSSH `sftp` and
//! `scp` (SFTP mode, OpenSSH 9's default, and legacy `scp -O`) through the
//! real gateway into a real busybox LXC container (which has no `scp`:
//! the gateway serves SFTP and the rcp protocol itself, inside the
//! container, as the login). The container-mode tests use the OpenSSH
//! sftp-server the container sees through the template's `/usr/lib` bind
//! mount.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{TestContainer, TestGateway, keygen, run_ssh};
use common::idp::TestIdp;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Size of the random round-trip file, as issue 5 asks (a 50 MiB `scp -O`
/// round trip takes under 2 s here; PORTCULLIS_TEST_TRANSFER_MIB changes it).
const ROUND_TRIP_MIB: usize = 50;

/// Marker written into the container's /etc/shadow.
const SHADOW_MARKER: &str = "portcullis-container-shadow-marker";

struct Fixture {
    _idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    /// Keys bound (by one token login each) to admin, alice and bob.
    admin_key: PathBuf,
    alice_key: PathBuf,
    bob_key: PathBuf,
    alice_token: String,
    _keys: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("xfer");
            let shadow = container.rootfs.join("etc/shadow");
            let mut text = std::fs::read_to_string(&shadow).unwrap_or_default();
            text.push_str(&format!("{SHADOW_MARKER}:x:0:0:99999:7:::\n"));
            std::fs::write(&shadow, text).unwrap();
            std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
            // An absolute symlink in the login's home, to /etc/shadow.
            std::os::unix::fs::symlink("/etc/shadow", container.rootfs.join("home/app/shadow"))
                .unwrap();
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[containers.{}]\nlabels = {{ env = \"dev\" }}\n",
                    container.name
                ),
            );
            let rt = tokio::runtime::Runtime::new().unwrap();
            let admin_token = rt.block_on(idp.device_flow_id_token("admin"));
            let alice_token = rt.block_on(idp.device_flow_id_token("alice"));
            let bob_token = rt.block_on(idp.device_flow_id_token("bob"));
            let keys = tempfile::tempdir().unwrap();
            let bind = |name: &str, token: &str| {
                let key = keys.path().join(name);
                keygen(&key);
                let dir = tempfile::tempdir().unwrap();
                let user = format!("root@{}", container.name);
                let mut cmd = gateway.ssh_with_key(&user, &key, token, dir.path());
                cmd.arg("true");
                let _ = run_ssh(&mut cmd, b"");
                key
            };
            Fixture {
                admin_key: bind("admin", &admin_token),
                alice_key: bind("alice", &alice_token),
                bob_key: bind("bob", &bob_token),
                alice_token,
                _idp: idp,
                container,
                gateway,
                _keys: keys,
            }
        })
        .join()
        .unwrap()
    })
}

/// OpenSSH options for the gateway: batch mode with only `key` (bound to
/// its principal by the fixture).
fn client(program: &str, port_flag: &str, user: &str, key: &Path) -> Command {
    client_on(fixture().gateway.port, program, port_flag, user, key)
}

/// [`client`] for the gateway on `port`.
fn client_on(port: u16, program: &str, port_flag: &str, user: &str, key: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["-F", "/dev/null", port_flag])
        .arg(port.to_string())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=20",
            "-i",
        ])
        .arg(key)
        .arg("-o")
        .arg(format!("User={user}"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY");
    cmd
}

fn sftp_batch(user: &str, key: &Path, batch: &str) -> common::gateway::SshResult {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch");
    std::fs::write(&file, batch).unwrap();
    let mut cmd = client("sftp", "-P", user, key);
    cmd.arg("-b").arg(&file).arg("127.0.0.1");
    run_ssh(&mut cmd, b"")
}

fn app() -> String {
    format!("app@{}", fixture().container.name)
}

fn root() -> String {
    format!("root@{}", fixture().container.name)
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut out)
        .unwrap();
    out
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn transfers() -> Vec<Value> {
    fixture()
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "file_transfer")
        .collect()
}

fn detail(e: &Value) -> Value {
    match &e["detail"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    }
}

fn transfer_of(path: &str, direction: &str) -> Option<Value> {
    transfers()
        .iter()
        .map(detail)
        .find(|d| d["path"] == path && d["direction"] == direction)
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sftp_round_trip_is_byte_exact_owned_by_the_login_and_audited() {
    let f = fixture();
    let mib = std::env::var("PORTCULLIS_TEST_TRANSFER_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUND_TRIP_MIB);
    let data = random_bytes(mib * 1024 * 1024);
    let digest = sha(&data);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.bin");
    let down = dir.path().join("down.bin");
    std::fs::write(&up, &data).unwrap();
    let r = sftp_batch(
        &app(),
        &f.alice_key,
        &format!(
            "put {} /home/app/up.bin\nget /home/app/up.bin {}\n",
            up.display(),
            down.display()
        ),
    );
    assert_eq!(r.code, 0, "sftp failed: {}", r.stderr);
    // In the container: the same bytes, owned by app (uid 1000).
    let inside = f.container.rootfs.join("home/app/up.bin");
    assert_eq!(sha(&std::fs::read(&inside).unwrap()), digest);
    let meta = std::fs::metadata(&inside).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    // Back out: byte-exact.
    assert_eq!(sha(&std::fs::read(&down).unwrap()), digest);
    // Audited with the digest, both ways.
    for direction in ["write", "read"] {
        let d = wait_for(direction, || transfer_of("/home/app/up.bin", direction));
        assert_eq!(d["sha256"], digest.as_str(), "{direction}: {d}");
        assert_eq!(d["bytes"], data.len() as u64, "{direction}: {d}");
        assert_eq!(d["closed"], true);
    }
    println!("round trip of {mib} MiB: sha256 {digest} both ways");
}

#[test]
fn scp_in_sftp_mode_uploads_and_downloads() {
    let f = fixture();
    let data = random_bytes(300 * 1024 + 7);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("scp-up.bin");
    let down = dir.path().join("scp-down.bin");
    std::fs::write(&up, &data).unwrap();
    let mut cmd = client("scp", "-P", &app(), &f.alice_key);
    cmd.arg(&up).arg("127.0.0.1:/home/app/scp.bin");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "scp upload failed: {}", r.stderr);
    let inside = f.container.rootfs.join("home/app/scp.bin");
    assert_eq!(std::fs::read(&inside).unwrap(), data);
    assert_eq!(std::fs::metadata(&inside).unwrap().uid(), 1000);
    let mut cmd = client("scp", "-P", &app(), &f.alice_key);
    cmd.arg("127.0.0.1:/home/app/scp.bin").arg(&down);
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "scp download failed: {}", r.stderr);
    assert_eq!(std::fs::read(&down).unwrap(), data);
    let d = wait_for("scp write", || transfer_of("/home/app/scp.bin", "write"));
    assert_eq!(d["sha256"], sha(&data).as_str());
}

#[test]
fn paths_and_symlinks_resolve_inside_the_container() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let via_link = dir.path().join("via-link");
    let via_dots = dir.path().join("via-dots");
    // As root in the container (admins may): the absolute symlink
    // /home/app/shadow -> /etc/shadow and a `..` climb both reach the
    // CONTAINER's /etc/shadow (with the marker), never the host's.
    let r = sftp_batch(
        &root(),
        &f.admin_key,
        &format!(
            "get /home/app/shadow {}\nget ../../../../../../etc/shadow {}\n",
            via_link.display(),
            via_dots.display()
        ),
    );
    assert_eq!(r.code, 0, "sftp failed: {}", r.stderr);
    let host_shadow = std::fs::read(Path::new("/etc/shadow")).unwrap();
    for got in [&via_link, &via_dots] {
        let text = std::fs::read(got).unwrap();
        assert!(
            String::from_utf8_lossy(&text).contains(SHADOW_MARKER),
            "not the container's shadow"
        );
        assert_ne!(text, host_shadow);
    }
    // As app: the container's /etc/shadow is not readable and /etc not
    // writable, whatever the path says.
    let r = sftp_batch(
        &app(),
        &f.alice_key,
        &format!("get /home/app/shadow {}\n", dir.path().join("x").display()),
    );
    assert_ne!(r.code, 0, "app read the shadow file: {}", r.stderr);
    let up = dir.path().join("evil");
    std::fs::write(&up, b"evil").unwrap();
    let r = sftp_batch(
        &app(),
        &f.alice_key,
        &format!("put {} /../../etc/evil\n", up.display()),
    );
    assert_ne!(r.code, 0, "app wrote into /etc: {}", r.stderr);
    assert!(!f.container.rootfs.join("etc/evil").exists());
    assert!(!Path::new("/etc/evil").exists());
}

#[test]
fn sftp_is_refused_without_policy() {
    let f = fixture();
    let r = sftp_batch(&app(), &f.bob_key, "ls\n");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);
    let denied = f.gateway.audit_events().into_iter().any(|e| {
        e["kind"] == "decision" && e["outcome"] == "deny" && detail(&e)["action"] == "sftp_read"
    });
    assert!(denied, "no sftp_read denial audited");
}

/// A second gateway on the same container, labelled env=staging (where
/// the shipped policy lets developers only read), with alice's key bound.
fn staging_gateway() -> &'static TestGateway {
    static GW: OnceLock<TestGateway> = OnceLock::new();
    GW.get_or_init(|| {
        let f = fixture();
        let gw = TestGateway::start(
            &f._idp.issuer,
            &format!(
                "[containers.{}]\nlabels = {{ env = \"staging\" }}\n",
                f.container.name
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = gw.ssh_with_key(&app(), &f.alice_key, &f.alice_token, dir.path());
        cmd.arg("true");
        let _ = run_ssh(&mut cmd, b"");
        gw
    })
}

#[test]
fn read_only_sftp_downloads_but_refuses_uploads() {
    let f = fixture();
    let gw = staging_gateway();
    std::fs::write(
        f.container.rootfs.join("home/app/staging.txt"),
        b"staging data\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let down = dir.path().join("down");
    let up = dir.path().join("up");
    std::fs::write(&up, b"nope").unwrap();
    let batch = dir.path().join("batch");
    let run_batch = |text: String| {
        std::fs::write(&batch, text).unwrap();
        let mut c = client_on(gw.port, "sftp", "-P", &app(), &f.alice_key);
        c.arg("-b").arg(&batch).arg("127.0.0.1");
        run_ssh(&mut c, b"")
    };
    let r = run_batch(format!("get /home/app/staging.txt {}\n", down.display()));
    assert_eq!(r.code, 0, "read-only download failed: {}", r.stderr);
    assert_eq!(std::fs::read(&down).unwrap(), b"staging data\n");
    let r = run_batch(format!("put {} /home/app/staging-up.txt\n", up.display()));
    assert_ne!(r.code, 0, "upload allowed on a read-only session");
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert!(!f.container.rootfs.join("home/app/staging-up.txt").exists());
    let decisions: Vec<Value> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "decision")
        .map(|e| detail(&e))
        .collect();
    assert!(
        decisions
            .iter()
            .any(|d| d["action"] == "sftp_read" && d["allowed"] == true)
    );
    assert!(
        decisions
            .iter()
            .any(|d| d["action"] == "sftp_write" && d["allowed"] == false)
    );
}

#[test]
fn sessions_show_lists_the_transfers_with_digests() {
    let f = fixture();
    let data = random_bytes(64 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("show.bin");
    std::fs::write(&up, &data).unwrap();
    let r = sftp_batch(
        &app(),
        &f.alice_key,
        &format!("put {} /home/app/show.bin\n", up.display()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let event = wait_for("transfer", || {
        f.gateway
            .audit_events()
            .into_iter()
            .find(|e| e["kind"] == "file_transfer" && detail(e)["path"] == "/home/app/show.bin")
    });
    let id = event["session_id"].as_str().unwrap();
    let out = f.gateway.cli(&["sessions", "show", id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &shown["transfers"][0];
    assert_eq!(t["path"], "/home/app/show.bin");
    assert_eq!(t["direction"], "write");
    assert_eq!(t["sha256"], sha(&data).as_str());
    let out = f.gateway.cli(&["sessions", "show", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&sha(&data)), "{text}");
}

#[test]
fn symlink_races_stay_inside_the_container() {
    let f = fixture();
    let home = f.container.rootfs.join("home/app");
    std::fs::write(home.join("public.txt"), b"public\n").unwrap();
    let link = home.join("race");
    std::os::unix::fs::symlink("/home/app/public.txt", &link).unwrap();
    // On the host, flip the link between the container's /etc/shadow and a
    // public file while the downloads run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, link, home) = (stop.clone(), link.clone(), home.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let target = if i.is_multiple_of(2) {
                    "/etc/shadow"
                } else {
                    "/home/app/public.txt"
                };
                let tmp = home.join(format!(".race.{i}"));
                std::os::unix::fs::symlink(target, &tmp).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
                i += 1;
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let batch: String = (0..30)
        .map(|i| {
            format!(
                "-get /home/app/race {}\n",
                dir.path().join(i.to_string()).display()
            )
        })
        .collect();
    let r = sftp_batch(&root(), &f.admin_key, &batch);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let host_shadow = std::fs::read("/etc/shadow").unwrap();
    let mut seen_shadow = 0;
    for i in 0..30 {
        let Ok(got) = std::fs::read(dir.path().join(i.to_string())) else {
            continue;
        };
        assert_ne!(got, host_shadow, "download {i} is the host's /etc/shadow");
        let text = String::from_utf8_lossy(&got);
        assert!(
            text == "public\n" || text.contains(SHADOW_MARKER),
            "{i}: {text}"
        );
        seen_shadow += usize::from(text.contains(SHADOW_MARKER));
    }
    println!("{seen_shadow} of 30 racing downloads reached the container's shadow");
}

/// `scp -O` (the legacy rcp protocol: `scp -t`/`scp -f` exec'd on the
/// server) as `user` with `key`, with `args` (sources and target).
fn scp_legacy(user: &str, key: &Path, args: &[&std::ffi::OsStr]) -> common::gateway::SshResult {
    let mut cmd = client("scp", "-P", user, key);
    cmd.arg("-O").args(args);
    run_ssh(&mut cmd, b"")
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn legacy_scp_round_trip_is_byte_exact_owned_by_the_login_and_audited() {
    let f = fixture();
    // The container has no scp: the gateway speaks the protocol itself.
    for p in ["bin/scp", "usr/bin/scp"] {
        assert!(!f.container.rootfs.join(p).exists(), "{p} exists");
    }
    let mib = std::env::var("PORTCULLIS_TEST_TRANSFER_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUND_TRIP_MIB);
    let data = random_bytes(mib * 1024 * 1024 + 13);
    let digest = sha(&data);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("legacy-up.bin");
    let down = dir.path().join("legacy-down.bin");
    std::fs::write(&up, &data).unwrap();
    let started = Instant::now();
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[up.as_os_str(), os("127.0.0.1:/home/app/legacy.bin")],
    );
    assert_eq!(r.code, 0, "scp -O upload failed: {}", r.stderr);
    let inside = f.container.rootfs.join("home/app/legacy.bin");
    assert_eq!(sha(&std::fs::read(&inside).unwrap()), digest);
    let meta = std::fs::metadata(&inside).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!(meta.len(), data.len() as u64);
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[os("127.0.0.1:/home/app/legacy.bin"), down.as_os_str()],
    );
    assert_eq!(r.code, 0, "scp -O download failed: {}", r.stderr);
    assert_eq!(sha(&std::fs::read(&down).unwrap()), digest);
    let took = started.elapsed();
    for direction in ["write", "read"] {
        let d = wait_for(direction, || transfer_of("/home/app/legacy.bin", direction));
        assert_eq!(d["sha256"], digest.as_str(), "{direction}: {d}");
        assert_eq!(d["bytes"], data.len() as u64, "{direction}: {d}");
        assert_eq!(d["sequential"], true, "{direction}: {d}");
        assert_eq!(d["closed"], true, "{direction}: {d}");
    }
    // The session row names the command; `sessions show` lists the file.
    let event = wait_for("legacy transfer event", || {
        f.gateway.audit_events().into_iter().find(|e| {
            e["kind"] == "file_transfer"
                && detail(e)["path"] == "/home/app/legacy.bin"
                && detail(e)["direction"] == "write"
        })
    });
    let id = event["session_id"].as_str().unwrap();
    let out = f.gateway.cli(&["sessions", "show", id, "--json"]);
    assert!(out.status.success());
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["session"]["command"], "scp -t /home/app/legacy.bin");
    assert_eq!(shown["transfers"][0]["sha256"], digest.as_str());
    assert_eq!(shown["transfers"].as_array().unwrap().len(), 1);
    println!(
        "scp -O round trip of {mib} MiB in {:.1} s: sha256 {digest} both ways",
        took.as_secs_f64()
    );
}

/// A small tree: `top/a.txt`, `top/sub/b.bin`, `top/sub/deeper/c` (empty).
fn make_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = vec![
        (PathBuf::from("a.txt"), b"alpha\n".to_vec()),
        (PathBuf::from("sub/b.bin"), random_bytes(70_000)),
        (PathBuf::from("sub/deeper/c"), Vec::new()),
    ];
    for (p, data) in &files {
        let full = root.join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, data).unwrap();
    }
    std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(root.join("sub/b.bin"))
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    files
}

#[test]
fn legacy_scp_copies_directories_recursively_with_times_and_modes() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("tree");
    let files = make_tree(&top);
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[
            os("-r"),
            os("-p"),
            top.as_os_str(),
            os("127.0.0.1:/home/app/"),
        ],
    );
    assert_eq!(r.code, 0, "scp -O -r upload failed: {}", r.stderr);
    let inside = f.container.rootfs.join("home/app/tree");
    for (p, data) in &files {
        let got = inside.join(p);
        assert_eq!(&std::fs::read(&got).unwrap(), data, "{}", p.display());
        assert_eq!(std::fs::metadata(&got).unwrap().uid(), 1000);
    }
    for d in ["", "sub", "sub/deeper"] {
        let m = std::fs::metadata(inside.join(d)).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{d}");
    }
    // -p: mode and modification time kept.
    let a = std::fs::metadata(inside.join("a.txt")).unwrap();
    assert_eq!(a.mode() & 0o7777, 0o640);
    let b = std::fs::metadata(inside.join("sub/b.bin")).unwrap();
    assert_eq!(b.mtime(), 1_600_000_000);
    for (p, data) in &files {
        let path = format!("/home/app/tree/{}", p.display());
        let d = wait_for(&path, || transfer_of(&path, "write"));
        assert_eq!(d["sha256"], sha(data).as_str(), "{path}");
        assert_eq!(d["bytes"], data.len() as u64, "{path}");
    }
    // And back out, recursively.
    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[os("-r"), os("127.0.0.1:/home/app/tree"), back.as_os_str()],
    );
    assert_eq!(r.code, 0, "scp -O -r download failed: {}", r.stderr);
    for (p, data) in &files {
        assert_eq!(
            &std::fs::read(back.join("tree").join(p)).unwrap(),
            data,
            "{}",
            p.display()
        );
        let path = format!("/home/app/tree/{}", p.display());
        let d = wait_for(&path, || transfer_of(&path, "read"));
        assert_eq!(d["sha256"], sha(data).as_str(), "{path}");
    }
}

#[test]
fn legacy_scp_paths_and_symlinks_resolve_inside_the_container() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let host_shadow = std::fs::read(Path::new("/etc/shadow")).unwrap();
    // As root (admins may): the absolute symlink /home/app/shadow ->
    // /etc/shadow and a `..` climb reach the CONTAINER's /etc/shadow.
    for (i, src) in [
        "127.0.0.1:/home/app/shadow",
        "127.0.0.1:../../../../../../etc/shadow",
    ]
    .iter()
    .enumerate()
    {
        let out = dir.path().join(format!("shadow-{i}"));
        let r = scp_legacy(&root(), &f.admin_key, &[os(src), out.as_os_str()]);
        assert_eq!(r.code, 0, "{src}: {}", r.stderr);
        let got = std::fs::read(&out).unwrap();
        assert!(
            String::from_utf8_lossy(&got).contains(SHADOW_MARKER),
            "{src}: not the container's shadow"
        );
        assert_ne!(got, host_shadow);
    }
    // An upload that climbs out of root's home lands in the container's
    // /tmp, never the host's.
    let up = dir.path().join("climb");
    std::fs::write(&up, b"climbed\n").unwrap();
    let name = format!("portcullis-scp-climb-{}", std::process::id());
    let r = scp_legacy(
        &root(),
        &f.admin_key,
        &[
            up.as_os_str(),
            os(&format!("127.0.0.1:../../../../tmp/{name}")),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(f.container.rootfs.join("tmp").join(&name)).unwrap(),
        b"climbed\n"
    );
    assert!(!Path::new("/tmp").join(&name).exists());
    // An upload through an absolute symlink writes where the link points
    // in the container: its /etc, not the host's.
    let target = format!("portcullis-scp-link-{}", std::process::id());
    std::os::unix::fs::symlink(
        format!("/etc/{target}"),
        f.container.rootfs.join("root").join(&target),
    )
    .unwrap();
    let r = scp_legacy(
        &root(),
        &f.admin_key,
        &[up.as_os_str(), os(&format!("127.0.0.1:/root/{target}"))],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(f.container.rootfs.join("etc").join(&target)).unwrap(),
        b"climbed\n"
    );
    assert!(!Path::new("/etc").join(&target).exists());
    // As app: the container's /etc is not writable and its shadow not
    // readable, whatever the path says; the refusal comes through scp.
    let evil = dir.path().join("evil");
    std::fs::write(&evil, b"evil").unwrap();
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[evil.as_os_str(), os("127.0.0.1:../../etc/evil")],
    );
    assert_ne!(r.code, 0, "app wrote into /etc");
    assert!(
        r.stderr
            .contains("scp: ../../etc/evil: Permission denied (os error 13)"),
        "{}",
        r.stderr
    );
    assert!(!f.container.rootfs.join("etc/evil").exists());
    assert!(!Path::new("/etc/evil").exists());
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[
            os("127.0.0.1:/home/app/shadow"),
            dir.path().join("x").as_os_str(),
        ],
    );
    assert_ne!(r.code, 0, "app read the shadow file");
    assert!(
        r.stderr
            .contains("scp: /home/app/shadow: Permission denied (os error 13)"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("x").exists());
}

#[test]
fn legacy_scp_is_refused_without_policy_and_read_only_where_policy_says() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = scp_legacy(
        &app(),
        &f.bob_key,
        &[os("127.0.0.1:/etc/hostname"), out.as_os_str()],
    );
    assert_ne!(r.code, 0);
    let want = format!(
        "Access denied: you may not transfer files as app on {}.",
        f.container.name
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert!(!out.exists());
    let denied = f.gateway.audit_events().into_iter().any(|e| {
        e["kind"] == "decision"
            && e["principal"] == "bob"
            && e["outcome"] == "deny"
            && detail(&e)["action"] == "sftp_read"
    });
    assert!(denied, "no sftp_read denial audited for bob");

    // Staging (developers may only read): download yes, upload no.
    let gw = staging_gateway();
    std::fs::write(
        f.container.rootfs.join("home/app/staging-scp.txt"),
        b"staging scp\n",
    )
    .unwrap();
    let legacy = |args: &[&std::ffi::OsStr]| {
        let mut c = client_on(gw.port, "scp", "-P", &app(), &f.alice_key);
        c.arg("-O").args(args);
        run_ssh(&mut c, b"")
    };
    let r = legacy(&[os("127.0.0.1:/home/app/staging-scp.txt"), out.as_os_str()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), b"staging scp\n");
    let r = legacy(&[
        out.as_os_str(),
        os("127.0.0.1:/home/app/staging-scp-up.txt"),
    ]);
    assert_ne!(r.code, 0, "upload allowed on a read-only target");
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert!(
        !f.container
            .rootfs
            .join("home/app/staging-scp-up.txt")
            .exists()
    );
    let write_denied = gw.audit_events().into_iter().any(|e| {
        e["kind"] == "decision" && e["outcome"] == "deny" && detail(&e)["action"] == "sftp_write"
    });
    assert!(write_denied, "no sftp_write denial audited");
}

#[test]
fn legacy_scp_paths_needing_a_shell_are_refused_clearly() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[os("127.0.0.1:/home/app/*.bin"), dir.path().as_os_str()],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("scp -O: the remote path uses wildcards, which this gateway does not expand"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let refused = f.gateway.audit_events().into_iter().any(|e| {
        e["kind"] == "channel"
            && detail(&e)["kind"] == "exec"
            && detail(&e)["reason"]
                .as_str()
                .unwrap_or("")
                .contains("wildcards")
    });
    assert!(refused, "no refusal audited");
}

/// A gateway with `[sftp] server = "container"` on the fixture container.
/// The container has a real OpenSSH sftp-server: the busybox template
/// bind-mounts the host's `/usr/lib` (read-only), so the host's
/// `/usr/lib/openssh/sftp-server` is there, with its libraries.
fn container_sftp_gateway() -> &'static TestGateway {
    static GW: OnceLock<TestGateway> = OnceLock::new();
    GW.get_or_init(|| {
        assert!(Path::new("/usr/lib/openssh/sftp-server").exists());
        container_gateway("/usr/lib/openssh/sftp-server")
    })
}

/// A gateway for the fixture container using its own sftp-server at `path`.
fn container_gateway(path: &str) -> TestGateway {
    container_gateway_with(path, "dev")
}

/// [`container_gateway`] with the container labelled `env = ENV`.
fn container_gateway_with(path: &str, env: &str) -> TestGateway {
    let f = fixture();
    let gw = TestGateway::start(
        &f._idp.issuer,
        &format!(
            "[containers.{}]\nlabels = {{ env = \"{env}\" }}\n[sftp]\nserver = \"container\"\ncontainer_path = \"{path}\"\n",
            f.container.name
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh_with_key(&app(), &f.alice_key, &f.alice_token, dir.path());
    cmd.arg("true");
    let _ = run_ssh(&mut cmd, b"");
    gw
}

#[test]
fn container_sftp_server_serves_the_subsystem_and_its_totals_are_audited() {
    let f = fixture();
    let gw = container_sftp_gateway();
    let data = random_bytes(256 * 1024 + 5);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("c-up.bin");
    let down = dir.path().join("c-down.bin");
    std::fs::write(&up, &data).unwrap();
    let batch = dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} /home/app/container-sftp.bin\nget /home/app/container-sftp.bin {}\n",
            up.display(),
            down.display()
        ),
    )
    .unwrap();
    let mut c = client_on(gw.port, "sftp", "-P", &app(), &f.alice_key);
    c.arg("-b").arg(&batch).arg("127.0.0.1");
    let r = run_ssh(&mut c, b"");
    assert_eq!(
        r.code, 0,
        "sftp via the container's server failed: {}",
        r.stderr
    );
    let inside = f.container.rootfs.join("home/app/container-sftp.bin");
    assert_eq!(std::fs::read(&inside).unwrap(), data);
    assert_eq!(std::fs::metadata(&inside).unwrap().uid(), 1000);
    assert_eq!(std::fs::read(&down).unwrap(), data);
    let ended = wait_for("sftp_stream event", || {
        gw.audit_events()
            .into_iter()
            .find(|e| e["kind"] == "sftp_stream")
    });
    let d = detail(&ended);
    assert_eq!(d["server"], "/usr/lib/openssh/sftp-server");
    // The stream carried the file each way, plus the protocol's framing.
    let (from, to) = (
        d["bytes_from_client"].as_u64().unwrap(),
        d["bytes_to_client"].as_u64().unwrap(),
    );
    assert!(
        from > data.len() as u64 && from < data.len() as u64 + 64 * 1024,
        "{d}"
    );
    assert!(
        to > data.len() as u64 && to < data.len() as u64 + 64 * 1024,
        "{d}"
    );
    // No per-file events in this mode (the gateway cannot digest them).
    assert!(
        !gw.audit_events()
            .iter()
            .any(|e| e["kind"] == "file_transfer")
    );
    let id = ended["session_id"].as_str().unwrap();
    let out = gw.cli(&["sessions", "show", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sftp via /usr/lib/openssh/sftp-server"),
        "{text}"
    );
}

#[test]
fn container_sftp_server_missing_is_refused_clearly() {
    let f = fixture();
    let gw = container_gateway("/usr/lib/openssh/no-such-sftp-server");
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("batch");
    std::fs::write(&batch, "ls\n").unwrap();
    let mut c = client_on(gw.port, "sftp", "-P", &app(), &f.alice_key);
    c.arg("-b").arg(&batch).arg("127.0.0.1");
    let r = run_ssh(&mut c, b"");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(
            "Access refused: the container has no executable \"/usr/lib/openssh/no-such-sftp-server\"."
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("server = \"builtin\""), "{}", r.stderr);
    let failed = gw.audit_events().into_iter().any(|e| {
        e["kind"] == "session_start"
            && e["outcome"] == "failure"
            && detail(&e)["reason"]
                .as_str()
                .unwrap_or("")
                .contains("no-such-sftp-server")
    });
    assert!(failed, "no failure audited");
}

#[test]
fn legacy_scp_symlink_races_stay_inside_the_container() {
    let f = fixture();
    let home = f.container.rootfs.join("home/app");
    std::fs::write(home.join("scp-public.txt"), b"public\n").unwrap();
    let link = home.join("scp-race");
    std::os::unix::fs::symlink("/home/app/scp-public.txt", &link).unwrap();
    // On the host, flip the link between the container's /etc/shadow and a
    // public file while the downloads run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, link, home) = (stop.clone(), link.clone(), home.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let target = if i.is_multiple_of(2) {
                    "/etc/shadow"
                } else {
                    "/home/app/scp-public.txt"
                };
                let tmp = home.join(format!(".scp-race.{i}"));
                std::os::unix::fs::symlink(target, &tmp).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
                i += 1;
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    for i in 0..12 {
        let out = dir.path().join(i.to_string());
        let _ = scp_legacy(
            &root(),
            &f.admin_key,
            &[os("127.0.0.1:/home/app/scp-race"), out.as_os_str()],
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    let host_shadow = std::fs::read("/etc/shadow").unwrap();
    let (mut seen_shadow, mut seen_public) = (0, 0);
    for i in 0..12 {
        let Ok(got) = std::fs::read(dir.path().join(i.to_string())) else {
            continue;
        };
        assert_ne!(got, host_shadow, "download {i} is the host's /etc/shadow");
        let text = String::from_utf8_lossy(&got);
        assert!(
            text == "public\n" || text.contains(SHADOW_MARKER),
            "{i}: {text}"
        );
        seen_shadow += usize::from(text.contains(SHADOW_MARKER));
        seen_public += usize::from(text == "public\n");
    }
    assert!(seen_shadow + seen_public > 0, "no download went through");
    println!("scp -O race: {seen_shadow} container shadow, {seen_public} public of 12");
}

#[test]
fn container_sftp_server_runs_read_only_where_policy_says() {
    let f = fixture();
    // env=staging: developers may only read, so the server runs with -R.
    let gw = container_gateway_with("/usr/lib/openssh/sftp-server", "staging");
    std::fs::write(
        f.container.rootfs.join("home/app/c-staging.txt"),
        b"container staging\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let down = dir.path().join("down");
    let batch = dir.path().join("batch");
    let run_batch = |text: String| {
        std::fs::write(&batch, text).unwrap();
        let mut c = client_on(gw.port, "sftp", "-P", &app(), &f.alice_key);
        c.arg("-b").arg(&batch).arg("127.0.0.1");
        run_ssh(&mut c, b"")
    };
    let r = run_batch(format!("get /home/app/c-staging.txt {}\n", down.display()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&down).unwrap(), b"container staging\n");
    let r = run_batch(format!(
        "put {} /home/app/c-staging-up.txt\n",
        down.display()
    ));
    assert_ne!(r.code, 0, "upload allowed by a read-only sftp-server");
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert!(
        !f.container
            .rootfs
            .join("home/app/c-staging-up.txt")
            .exists()
    );
    let started = gw
        .sessions()
        .into_iter()
        .any(|s| s["command"] == "sftp via /usr/lib/openssh/sftp-server (read-only)");
    assert!(started, "no read-only session row");
}

/// Issue 19: a chown through SFTP is applied with the kernel's answer: a
/// login that is not root may not give a file to root (refused, nothing
/// changes), root in the container may.
#[test]
fn sftp_chown_is_applied_or_refused_by_the_kernel() {
    let f = fixture();
    let home = f.container.rootfs.join("home/app");
    let file = home.join("chown-me");
    std::fs::write(&file, b"x").unwrap();
    std::os::unix::fs::chown(&file, Some(1000), Some(1000)).unwrap();
    let r = sftp_batch(&app(), &f.alice_key, "chown 0 /home/app/chown-me\n");
    assert_ne!(
        r.code, 0,
        "a non-root chown to root succeeded: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("ermission denied") || r.stderr.contains("not permitted"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), 1000);
    let r = sftp_batch(
        &root(),
        &f.admin_key,
        "chown 1234 /home/app/chown-me\nchgrp 2000 /home/app/chown-me\n",
    );
    assert_eq!(r.code, 0, "root's chown failed: {}", r.stderr);
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 2000));
}

/// Issue 13 point 9 / issue 19: transfers are audited under the path the
/// file really has in the container: `~/passwd-link -> /etc/passwd` is
/// `/etc/passwd`, through SFTP and legacy scp alike.
#[test]
fn transfers_through_a_symlink_are_audited_under_the_real_path() {
    let f = fixture();
    let link = f.container.rootfs.join("home/app/passwd-link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let before = transfers()
        .iter()
        .map(detail)
        .filter(|d| d["path"] == "/etc/passwd")
        .count();
    let dir = tempfile::tempdir().unwrap();
    let r = sftp_batch(
        &app(),
        &f.alice_key,
        &format!(
            "get /home/app/passwd-link {}\n",
            dir.path().join("a").display()
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = scp_legacy(
        &app(),
        &f.alice_key,
        &[
            os("127.0.0.1:passwd-link"),
            dir.path().join("b").as_os_str(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let passwd = std::fs::read(f.container.rootfs.join("etc/passwd")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), passwd);
    let audited = wait_for("both transfers audited as /etc/passwd", || {
        let found: Vec<Value> = transfers()
            .iter()
            .map(detail)
            .filter(|d| d["path"] == "/etc/passwd" && d["direction"] == "read")
            .collect();
        (found.len() >= before + 2).then_some(found)
    });
    for d in audited.iter().skip(before) {
        assert_eq!(d["sha256"], sha(&passwd).as_str(), "{d}");
    }
    assert!(
        transfer_of("/home/app/passwd-link", "read").is_none(),
        "audited under the link's name"
    );
}

/// Issue 19: a resumed download (`reget`) reads from the middle of the
/// file; its record carries a true digest (of the file as left, flagged
/// not sequential), never SHA-256 of nothing.
#[test]
fn resumed_downloads_are_audited_with_a_true_digest() {
    let f = fixture();
    let data = random_bytes(3 * 1024 * 1024 + 5);
    let inside = f.container.rootfs.join("home/app/resume.bin");
    std::fs::write(&inside, &data).unwrap();
    std::os::unix::fs::chown(&inside, Some(1000), Some(1000)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("resume.bin");
    std::fs::write(&local, &data[..1024 * 1024]).unwrap();
    let r = sftp_batch(
        &app(),
        &f.alice_key,
        &format!("reget /home/app/resume.bin {}\n", local.display()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(sha(&std::fs::read(&local).unwrap()), sha(&data));
    let d = wait_for("the resumed read", || {
        transfer_of("/home/app/resume.bin", "read")
    });
    assert_eq!(d["bytes"], (data.len() - 1024 * 1024) as u64, "{d}");
    assert_ne!(d["sha256"], sha(b"").as_str(), "{d}");
    assert_eq!(d["sha256"], sha(&data).as_str(), "{d}");
    assert_eq!(d["sequential"], false, "{d}");
}

/// Issue 19: a client that follows the SFTP draft's symlink argument order
/// (asyncssh, PyPI) creates the link where it asked, and may set the times
/// of a file its owner cannot read (SETSTAT never opens the file).
#[test]
fn a_draft_order_client_makes_links_in_the_right_place_and_sets_times() {
    let f = fixture();
    let home = f.container.rootfs.join("home/app");
    let write_only = home.join("write-only");
    std::fs::write(&write_only, b"w").unwrap();
    std::os::unix::fs::chown(&write_only, Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(&write_only, std::fs::Permissions::from_mode(0o200)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ext/asyncssh_sftp.py");
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONWARNINGS", "ignore")
        .arg(&script)
        .arg(f.gateway.port.to_string())
        .arg(app())
        .arg(&f.alice_key)
        .arg("/home/app");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(
        r.code, 0,
        "asyncssh failed (pip install asyncssh; .ci/run does): {}",
        r.stderr
    );
    let out = String::from_utf8_lossy(&r.stdout);
    let link = home.join("link-by-asyncssh");
    assert_eq!(
        std::fs::read_link(&link)
            .map(|p| p.display().to_string())
            .ok(),
        Some("target-file".to_string()),
        "the link is not where asyncssh asked ({out}); home has {:?}",
        std::fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    let m = std::fs::metadata(&write_only).unwrap();
    assert_eq!((m.atime(), m.mtime()), (1_000_000, 2_000_000), "{out}");
    assert!(
        out.contains("symlink: ok") && out.contains("utime: ok"),
        "{out}"
    );
}

/// Issue 19: `sftp df` works (statvfs@openssh.com) and reports the
/// container filesystem's size.
#[test]
fn sftp_df_reports_the_filesystem() {
    let f = fixture();
    let r = sftp_batch(&app(), &f.alice_key, "df -h /home/app\n");
    assert_eq!(r.code, 0, "sftp df failed: {}", r.stderr);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("Size") && out.contains("Avail"), "{out}");
}
