//! Issue 19: OpenSSH's own regression tests (Debian `openssh-tests`,
//! `/usr/lib/openssh/regress`, installed by `.ci/run`) aimed at the real
//! gateway and a real busybox LXC container.
//!
//! How they are aimed (wrappers in `tests/ext/openssh/`):
//! - the SFTP tests run `sftp -D $SFTPSERVER`; `TEST_SSH_SFTPSERVER` is
//!   `sftp-server.sh`, which opens the sftp subsystem through the gateway,
//!   so OpenSSH's cases run against the built-in SFTP server;
//! - the exec tests run `ssh -F $OBJ/ssh_proxy HOST CMD`, whose
//!   ProxyCommand starts `$SSHD -i`; `TEST_SSH_SSHD` is `sshd.sh` (`-t`
//!   succeeds, `-i` relays to the gateway with the suite's own netcat) and
//!   `TEST_SSH_SSH` is `ssh.sh` (logs in as `root@CONTAINER` with a key bound
//!   to a principal by one token login).
//!
//! The tests compare what the "remote" side did with local files, so the
//! container must see each test's `$OBJ` at the same path: `$OBJ` lives in
//! the container's root filesystem, and inside the container the host path
//! of that root filesystem is a symlink to `/` (the same view as a bind
//! mount, without restarting the container, and nothing left on the host).
//! The SFTP tests glob the remote `/bin/l*` and compare with the local
//! `/bin`; the host's and the busybox container's `/bin` differ, so their
//! copies read `$OBJ/bin` instead, holding `ln`, `ls` and `sh` (the two-letter
//! `l*` names of OpenBSD's `/bin`, which the tests assume: `put /bin/l?` is
//! compared against every `/bin/l*`).
//!
//! Run here: `sftp-cmds`, `sftp-batch`, `sftp-glob`, `sftp-badcmds`,
//! `exit-status`, `exit-status-signal`, `stderr-data`, `stderr-after-eof`,
//! `transfer`, `yes-head`, `broken-pipe` (the last cannot fail: its
//! `ssh ... | true` pipeline's status is `true`'s, and it names a config
//! file, `ssh_config_config`, that does not exist; it is run as OpenSSH
//! ships it).
//!
//! Runs in the SQLite half of CI only: nothing here depends on the
//! database (under `PORTCULLIS_TEST_DATABASE=postgres` the tests return at
//! once, saying so).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{TestContainer, TestGateway, keygen, run_ssh};
use common::idp::TestIdp;

/// Where Debian's `openssh-tests` installs the suite.
const REGRESS: &str = "/usr/lib/openssh/regress";

struct Fixture {
    _idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    /// A key bound (by one token login) to `admin`.
    key: PathBuf,
    /// A prepared copy of the suite (keys generated once), copied per test.
    template: PathBuf,
    _keys: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            assert!(
                Path::new(REGRESS).join("test-exec.sh").exists(),
                "{REGRESS} is missing: apt-get install openssh-tests (.ci/run does)"
            );
            let idp = TestIdp::start();
            let container = TestContainer::start("regress");
            // Inside the container, the host path of its root filesystem
            // leads to its `/`.
            let inner = container.rootfs.join(
                container
                    .rootfs
                    .strip_prefix("/")
                    .unwrap()
                    .parent()
                    .unwrap(),
            );
            std::fs::create_dir_all(&inner).unwrap();
            std::os::unix::fs::symlink(
                "/",
                container
                    .rootfs
                    .join(container.rootfs.strip_prefix("/").unwrap()),
            )
            .unwrap();
            let gateway = TestGateway::start(&idp.issuer, "");
            let rt = tokio::runtime::Runtime::new().unwrap();
            let token = rt.block_on(idp.device_flow_id_token("admin"));
            let keys = tempfile::tempdir().unwrap();
            let key = keys.path().join("admin");
            keygen(&key);
            let dir = tempfile::tempdir().unwrap();
            let user = format!("root@{}", container.name);
            let mut cmd = gateway.ssh_with_key(&user, &key, &token, dir.path());
            cmd.arg("true");
            let r = run_ssh(&mut cmd, b"");
            assert_eq!(r.code, 0, "binding the key failed: {}", r.stderr);
            let template = container.rootfs.join("tmp/regress-template");
            prepare_template(&template);
            Fixture {
                _idp: idp,
                container,
                gateway,
                key,
                template,
                _keys: keys,
            }
        })
        .join()
        .unwrap()
    })
}

/// Copies the suite, adds the `$OBJ/bin` fixture and points the SFTP
/// scripts' `/bin` at it, and generates the user keys once (test-exec.sh
/// reuses keys newer than ssh-keygen).
fn prepare_template(dir: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(REGRESS)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, from) in [
        ("ln", "/usr/bin/ln"),
        ("ls", "/usr/bin/ls"),
        ("sh", "/bin/sh"),
    ] {
        std::fs::copy(from, bin.join(name)).unwrap();
    }
    let out = Command::new("ssh")
        .args(["-Q", "key-plain"])
        .output()
        .unwrap();
    for t in String::from_utf8_lossy(&out.stdout).lines() {
        if t.starts_with("sk-") {
            continue;
        }
        let status = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", t, "-f"])
            .arg(dir.join(t))
            .status()
            .unwrap();
        assert!(status.success(), "ssh-keygen -t {t}");
    }
}

/// One script's run: its name, whether it passed, and what it printed
/// (plus its failure logs).
struct Outcome {
    name: String,
    passed: bool,
    output: String,
}

/// Runs each of `scripts` with test-exec.sh in its own copy of the suite
/// (`$OBJ`, visible in the container at the same path), all at once.
fn run_suite(scripts: &[&str]) -> Vec<Outcome> {
    let f = fixture();
    let ext = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ext/openssh");
    let children: Vec<_> = scripts
        .iter()
        .map(|name| {
            let obj = f.container.rootfs.join(format!("tmp/regress-{name}"));
            let _ = std::fs::remove_dir_all(&obj);
            let out = Command::new("cp")
                .arg("-a")
                .arg(&f.template)
                .arg(&obj)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            if name.starts_with("sftp-") {
                let script = obj.join(format!("{name}.sh"));
                let text = std::fs::read_to_string(&script).unwrap();
                let text = text.replace("/bin", &format!("{}/bin", obj.display()));
                std::fs::write(&script, text).unwrap();
            }
            let child = Command::new("sh")
                .arg(obj.join("test-exec.sh"))
                .arg(&obj)
                .arg(obj.join(format!("{name}.sh")))
                .current_dir(&obj)
                .env("TEST_SHELL", "sh")
                .env("OBJ", &obj)
                .env("BUILDDIR", &obj)
                .env("SUDO", "")
                .env("TEST_SSH_UNSAFE_PERMISSIONS", "1")
                .env("TEST_SSH_SSH", ext.join("ssh.sh"))
                .env("TEST_SSH_SSHD", ext.join("sshd.sh"))
                .env("TEST_SSH_SFTPSERVER", ext.join("sftp-server.sh"))
                .env("PORTCULLIS_EXT_PORT", f.gateway.port.to_string())
                .env("PORTCULLIS_EXT_USER", format!("root@{}", f.container.name))
                .env("PORTCULLIS_EXT_KEY", &f.key)
                .env("PORTCULLIS_EXT_NETCAT", obj.join("netcat"))
                .env_remove("SSH_AUTH_SOCK")
                .env_remove("SSH_ASKPASS")
                .env_remove("DISPLAY")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (name.to_string(), obj, child)
        })
        .collect();
    let started = Instant::now();
    children
        .into_iter()
        .map(|(name, obj, child)| {
            let out = child.wait_with_output().unwrap();
            let mut output = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() {
                for log in ["failed-regress.log", "failed-ssh.log"] {
                    if let Ok(text) = std::fs::read_to_string(obj.join(log)) {
                        let tail: String = text
                            .lines()
                            .rev()
                            .take(60)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n");
                        output.push_str(&format!("\n--- {log} (last lines)\n{tail}"));
                    }
                }
            }
            println!(
                "{name}: {} after {:?}\n{output}",
                if out.status.success() { "ok" } else { "FAILED" },
                started.elapsed()
            );
            Outcome {
                name,
                passed: out.status.success() && !output.contains("FAIL"),
                output,
            }
        })
        .collect()
}

fn assert_all_passed(outcomes: &[Outcome]) {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| format!("== {}\n{}", o.name, o.output))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

fn sqlite_half_only() -> bool {
    if std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() == Ok("postgres") {
        println!("OpenSSH's regression tests run in the SQLite half only (no database involved)");
        return true;
    }
    false
}

#[test]
fn openssh_sftp_regression_tests_pass_against_the_builtin_server() {
    if sqlite_half_only() {
        return;
    }
    let outcomes = run_suite(&["sftp-cmds", "sftp-batch", "sftp-glob", "sftp-badcmds"]);
    assert_all_passed(&outcomes);
    // The cases really went through the gateway: its built-in server
    // audited the files OpenSSH's cases moved.
    let f = fixture();
    common::wait_until("sftp sessions closed", Duration::from_secs(30), || {
        f.gateway
            .sessions()
            .iter()
            .filter(|s| s["command"].as_str().is_some_and(|c| c.starts_with("sftp")))
            .count()
            >= 40
    });
}

#[test]
fn openssh_exec_regression_tests_pass_through_the_gateway() {
    if sqlite_half_only() {
        return;
    }
    let outcomes = run_suite(&[
        "exit-status",
        "exit-status-signal",
        "stderr-data",
        "stderr-after-eof",
        "transfer",
        "yes-head",
        "broken-pipe",
    ]);
    assert_all_passed(&outcomes);
}
