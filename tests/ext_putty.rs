//! Issue 19: PuTTY (`putty-tools`, installed by `.ci/run`), an SSH stack
//! of its own, against the real gateway and a real busybox container:
//! `plink` commands with their exit codes, a `plink -t` session with a PTY,
//! and `psftp` put/get of a 50 MiB file byte-exact, all with a key bound to
//! a principal after one token login (by OpenSSH, then converted to PuTTY's
//! format with `puttygen`); and `plink` with an OpenSSH user certificate
//! incorporated into the key (`puttygen --certificate`, PuTTY 0.78+).
//!
//! Runs in the SQLite half of CI only: nothing here depends on the
//! database (under `PORTCULLIS_TEST_DATABASE=postgres` the tests return at
//! once, saying so).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::gateway::{SshResult, TestContainer, TestGateway, keygen, run, run_ssh};
use common::idp::TestIdp;
use sha2::{Digest, Sha256};

struct Fixture {
    _idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    /// alice's key, bound by one token login, in PuTTY's format.
    bound_ppk: PathBuf,
    /// A key with a certificate for principal alice from the gateway's
    /// trusted CA, in PuTTY's format (certificate included).
    cert_ppk: PathBuf,
    /// The gateway's host key fingerprint, for `-hostkey`.
    host_key: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            let d = |n: &str| dir.path().join(n);
            keygen(&d("ca"));
            let ca_pub = std::fs::read_to_string(d("ca.pub")).unwrap();
            let idp = TestIdp::start();
            let container = TestContainer::start("putty");
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[certificates]\n[[certificates.ca]]\npublic_key = \"{}\"\n\
                     principal_prefix = \"cert:\"\n\
                     principals = [\"carol\"]\ngroups = [\"developers\"]\n\
                     [containers.{}]\nlabels = {{ env = \"dev\" }}\n",
                    ca_pub.trim(),
                    container.name
                ),
            );
            // Bind a key to alice with OpenSSH (one token login).
            let rt = tokio::runtime::Runtime::new().unwrap();
            let token = rt.block_on(idp.device_flow_id_token("alice"));
            keygen(&d("alice"));
            let askpass = tempfile::tempdir().unwrap();
            let user = format!("app@{}", container.name);
            let mut cmd = gateway.ssh_with_key(&user, &d("alice"), &token, askpass.path());
            cmd.arg("true");
            let r = run_ssh(&mut cmd, b"");
            assert_eq!(r.code, 0, "binding alice's key failed: {}", r.stderr);
            ppk(&d("alice"), &d("alice.ppk"), None);
            // A certificate for carol (only through the CA: no IdP login).
            keygen(&d("carol"));
            run(Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(d("ca"))
                .args(["-I", "carol-id", "-n", "carol", "-V", "-5m:+1h"])
                .arg(d("carol.pub")));
            ppk(&d("carol"), &d("carol.ppk"), Some(&d("carol-cert.pub")));
            let out = run(Command::new("ssh-keygen")
                .arg("-lf")
                .arg(gateway.state_dir.join("host_ed25519_key")));
            let host_key = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string();
            Fixture {
                _idp: idp,
                container,
                gateway,
                bound_ppk: d("alice.ppk"),
                cert_ppk: d("carol.ppk"),
                host_key,
                _dir: dir,
            }
        })
        .join()
        .unwrap()
    })
}

/// `puttygen KEY -O private -o PPK [--certificate CERT]`.
fn ppk(key: &Path, ppk: &Path, cert: Option<&Path>) {
    let mut cmd = Command::new("puttygen");
    cmd.arg(key).args(["-O", "private", "-o"]).arg(ppk);
    if let Some(cert) = cert {
        cmd.arg("--certificate").arg(cert);
    }
    run(&mut cmd);
}

/// A PuTTY tool (`plink`, `psftp`) in batch mode, pinned to the gateway's
/// host key, authenticating with `ppk` only.
fn putty(program: &str, ppk: &Path) -> Command {
    let f = fixture();
    let mut cmd = Command::new(program);
    cmd.args(["-batch", "-P"])
        .arg(f.gateway.port.to_string())
        .arg("-hostkey")
        .arg(&f.host_key)
        .arg("-i")
        .arg(ppk)
        .arg("-noagent")
        .env("HOME", f._dir.path());
    cmd
}

fn plink(ppk: &Path, args: &[&str], stdin: &[u8]) -> SshResult {
    let f = fixture();
    let mut cmd = putty("plink", ppk);
    cmd.arg("-ssh")
        .arg(format!("app@{}@127.0.0.1", f.container.name))
        .args(args);
    run_ssh(&mut cmd, stdin)
}

fn sqlite_half_only() -> bool {
    if std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() == Ok("postgres") {
        println!("PuTTY runs in the SQLite half only (no database involved)");
        return true;
    }
    false
}

#[test]
fn plink_commands_pass_their_exit_codes_and_output() {
    if sqlite_half_only() {
        return;
    }
    let f = fixture();
    for code in [0, 1, 7, 42, 255] {
        let r = plink(&f.bound_ppk, &["-T", &format!("exit {code}")], b"");
        assert_eq!(r.code, code, "exit {code}: {}", r.stderr);
    }
    let r = plink(
        &f.bound_ppk,
        &["-T", "echo out-$((6*7)); echo err >&2; id -un; exit 3"],
        b"",
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, b"out-42\napp\n");
    assert!(r.stderr.contains("err"), "{}", r.stderr);
    // stdin reaches the command byte-exact.
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = plink(&f.bound_ppk, &["-T", "cat"], &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, input);
}

#[test]
fn plink_runs_an_interactive_session_on_a_pty() {
    if sqlite_half_only() {
        return;
    }
    let f = fixture();
    let r = plink(
        &f.bound_ppk,
        &["-t"],
        b"tty; echo marker-$((6*7)); stty size; exit 3\n",
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, 3, "{out}\n{}", r.stderr);
    assert!(out.contains("/dev/pts/"), "no PTY: {out}");
    assert!(out.contains("marker-42"), "{out}");
    // The session was recorded as a terminal session.
    let sessions = f.gateway.wait_sessions_ended(1, |s| s["command"].is_null());
    assert!(!sessions.is_empty());
}

#[test]
fn psftp_moves_50_mib_byte_exact_both_ways() {
    if sqlite_half_only() {
        return;
    }
    let f = fixture();
    let mut data = vec![0u8; 50 * 1024 * 1024];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let digest = hex::encode(Sha256::digest(&data));
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.bin");
    let down = dir.path().join("down.bin");
    std::fs::write(&up, &data).unwrap();
    let script = dir.path().join("script");
    std::fs::write(
        &script,
        format!(
            "put {} /home/app/putty.bin\nget /home/app/putty.bin {}\n",
            up.display(),
            down.display()
        ),
    )
    .unwrap();
    let mut cmd = putty("psftp", &f.bound_ppk);
    cmd.arg("-b")
        .arg(&script)
        .arg("-be")
        .arg(format!("app@{}@127.0.0.1", f.container.name));
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "psftp failed: {}", r.stderr);
    let inside = f.container.rootfs.join("home/app/putty.bin");
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&inside).unwrap())),
        digest
    );
    assert_eq!(std::fs::metadata(&inside).unwrap().uid(), 1000);
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&down).unwrap())),
        digest
    );
}

#[test]
fn plink_logs_in_with_an_openssh_certificate() {
    if sqlite_half_only() {
        return;
    }
    let f = fixture();
    let r = plink(&f.cert_ppk, &["-T", "id -un; exit 5"], b"");
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(r.stdout, b"app\n");
    // Without the certificate the same key is a stranger (batch: no prompt).
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.ppk");
    run(Command::new("puttygen")
        .arg(&f.cert_ppk)
        .args(["--remove-certificate", "-O", "private", "-o"])
        .arg(&bare));
    let r = plink(&bare, &["-T", "true"], b"");
    assert_ne!(r.code, 0, "a bare key got in");
}
