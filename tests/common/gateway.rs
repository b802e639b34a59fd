//! Real parts for end-to-end tests: a busybox LXC container, the real
//! `portcullis` binary serving on a loopback port, and the real OpenSSH
//! client driven through `SSH_ASKPASS` (`tests/common/askpass.sh`).
//!
//! Cleanup does not rely on `Drop` (statics are never dropped): each
//! fixture starts a small reaper shell whose stdin is a pipe held by the
//! test process; when the test process exits, the pipe closes and the reaper
//! stops and destroys the container and kills the gateway.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `sh -c SCRIPT` that waits for its stdin to close, then runs the
/// script. The returned stdin must be kept (leaked) for the test's life.
// The reaper outlives the test process on purpose, so it is never waited for.
#[allow(clippy::zombie_processes)]
fn reaper(script: &str) -> ChildStdin {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("read _ignored; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reaper");
    child.stdin.take().expect("reaper stdin")
}

/// A running busybox LXC container, destroyed when the test process exits.
pub struct TestContainer {
    /// Container name (unique per test process).
    pub name: String,
    /// Its root filesystem on the host.
    pub rootfs: PathBuf,
    _reaper: ChildStdin,
}

impl TestContainer {
    /// Creates and starts `portcullis-test-<pid>-<suffix>` from the busybox
    /// template with `lxc.net.0.type = empty`, adds a login `app` (uid 1000)
    /// and `/etc/hostname`, and waits until it runs.
    pub fn start(suffix: &str) -> TestContainer {
        TestContainer::start_with(suffix, false)
    }

    /// As [`TestContainer::start`]; `unprivileged` adds `lxc.idmap` lines
    /// mapping ids 0..65536 to host 100000.. ([`ensure_subids`] first), and
    /// files the test adds are chowned to the mapped ids.
    pub fn start_with(suffix: &str, unprivileged: bool) -> TestContainer {
        let name = format!("portcullis-test-{}-{suffix}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("lxc.conf");
        let mut text =
            "lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\nlxc.pty.max = 64\n"
                .to_owned();
        if unprivileged {
            ensure_subids();
            text.push_str("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n");
        }
        std::fs::write(&conf, text).expect("write lxc conf");
        let off = if unprivileged { UNS_BASE } else { 0 };
        let reaper_stdin = reaper(&format!(
            "lxc-stop -k -n {name} >/dev/null 2>&1; lxc-destroy -f -n {name} >/dev/null 2>&1"
        ));
        run(Command::new("lxc-create")
            .args(["-n", &name, "-t", "busybox", "-f"])
            .arg(&conf));
        // The busybox template appends its own `lxc.pty.max = 1` after the
        // `-f` file's value; give sessions room for more than one PTY.
        let lxc_config = format!("/var/lib/lxc/{name}/config");
        run(Command::new("sed").args(["-i", "s/^lxc.pty.max = .*/lxc.pty.max = 64/", &lxc_config]));
        let rootfs = PathBuf::from(format!("/var/lib/lxc/{name}/rootfs"));
        append(
            &rootfs.join("etc/passwd"),
            "app:x:1000:1000:App:/home/app:/bin/sh\n",
        );
        append(&rootfs.join("etc/group"), "app:x:1000:\nops:x:2000:app\n");
        std::fs::create_dir_all(rootfs.join("home/app")).expect("home");
        std::os::unix::fs::chown(rootfs.join("home/app"), Some(1000 + off), Some(1000 + off))
            .expect("chown");
        std::fs::write(rootfs.join("etc/hostname"), format!("{name}\n")).expect("hostname");
        std::os::unix::fs::chown(rootfs.join("etc/hostname"), Some(off), Some(off)).expect("chown");
        run(Command::new("lxc-start").args(["-n", &name]));
        let started = Instant::now();
        while init_pid_of(&name).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        TestContainer {
            name,
            rootfs,
            _reaper: reaper_stdin,
        }
    }

    /// Host PID of the container's init.
    pub fn init_pid(&self) -> i32 {
        init_pid_of(&self.name).expect("container running")
    }

    /// Host PIDs of processes in the container whose command line contains
    /// `needle`. A process in the middle of execve reads an empty command
    /// line, so callers poll rather than read once.
    pub fn processes_matching(&self, needle: &str) -> Vec<i32> {
        let cgroup = format!("/lxc.payload.{}", self.name);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if !cg
                .lines()
                .any(|l| l.ends_with(&cgroup) || l.contains(&format!("{cgroup}/")))
            {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(pid);
            }
        }
        found
    }
}

/// Host uid/gid that an unprivileged test container's root maps to.
pub const UNS_BASE: u32 = 100_000;

/// Makes sure `/etc/subuid` and `/etc/subgid` give root the range
/// 100000:65536 that unprivileged test containers use (a fresh CI machine
/// has no such line).
pub fn ensure_subids() {
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.trim() == "root:100000:65536") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .unwrap_or_else(|e| panic!("open {file}: {e}"));
            let sep = if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            f.write_all(format!("{sep}root:100000:65536\n").as_bytes())
                .expect("append subid");
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("append");
}

fn init_pid_of(name: &str) -> Option<i32> {
    let out = Command::new("lxc-info")
        .args(["-n", name, "-p", "-H"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The real gateway binary, serving on a free loopback port.
pub struct TestGateway {
    /// SSH port on 127.0.0.1.
    pub port: u16,
    /// Its state directory (host key, database, recordings).
    pub state_dir: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
    child: Child,
    listening_lines_at_spawn: usize,
    _reaper: ChildStdin,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Writes a config for `issuer` plus `extra_config` (TOML, verbatim)
    /// and starts `portcullis serve`. The database is SQLite in the state
    /// directory, or a fresh database on the test PostgreSQL server when
    /// `PORTCULLIS_TEST_DATABASE=postgres`.
    ///
    /// Unless `extra_config` has an `[auth]` section, the per-address
    /// failure delay is off (`failure_delay = "0s"`): the tests of one file
    /// share 127.0.0.1 and many of them fail on purpose.
    pub fn start(issuer: &str, extra_config: &str) -> TestGateway {
        Self::start_with_oidc(&oidc_section(issuer), extra_config)
    }

    /// Like [`TestGateway::start`] with the `[oidc]` / `[[oidc]]` sections
    /// given verbatim in `oidc_config`.
    pub fn start_with_oidc(oidc_config: &str, extra_config: &str) -> TestGateway {
        let database = match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
            Ok("postgres") => Some(super::postgres::server().new_database()),
            Ok("sqlite") | Err(_) => None,
            Ok(other) => panic!("PORTCULLIS_TEST_DATABASE={other}: use sqlite or postgres"),
        };
        Self::start_full(oidc_config, extra_config, database.as_deref())
    }

    /// Like [`TestGateway::start`], on the database at `url` (`None`: SQLite).
    pub fn start_with_database(issuer: &str, extra_config: &str, url: Option<&str>) -> TestGateway {
        Self::start_full(&oidc_section(issuer), extra_config, url)
    }

    fn start_full(oidc_config: &str, extra_config: &str, url: Option<&str>) -> TestGateway {
        // Top-level keys of `extra_config` (lines before its first table)
        // must come before any table of the file.
        let split = extra_config
            .lines()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(extra_config.lines().count());
        let top_level: String = extra_config
            .lines()
            .take(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let tables: String = extra_config
            .lines()
            .skip(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let auth = if extra_config.contains("[auth]") {
            ""
        } else {
            "[auth]\nfailure_delay = \"0s\"\n"
        };
        let extra_config = match url {
            Some(url) => format!("{auth}[database]\nurl = \"{url}\"\n{tables}"),
            None => format!("{auth}{tables}"),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("portcullis.toml");
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        std::fs::write(
            &config_path,
            format!(
                "{top_level}listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n{oidc_config}\
                 [policy]\ndir = \"{}\"\n[session]\nkill_grace = \"1s\"\n{extra_config}",
                state_dir.display(),
                policies.display()
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("PORTCULLIS_LOG", "info,portcullis=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn portcullis");
        let reaper_stdin = reaper(&format!("kill -TERM {} 2>/dev/null", child.id()));
        let gateway = TestGateway {
            port,
            state_dir,
            config_path,
            child,
            listening_lines_at_spawn: 0,
            _reaper: reaper_stdin,
            _dir: dir,
        };
        gateway.wait_listening();
        gateway
    }

    /// Stops the gateway with SIGTERM (it signs the audit chain and closes
    /// sessions) and waits for it, at most 20 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit();
    }

    /// Kills the gateway with SIGKILL, as a crash would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        self.wait_exit();
    }

    fn wait_exit(&mut self) {
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "gateway did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the gateway again on the same config, state and port.
    pub fn restart(&mut self) {
        self.listening_lines_at_spawn = self.log().matches("portcullis listening").count();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join("gateway.log"))
            .expect("log");
        self.child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("PORTCULLIS_LOG", "info,portcullis=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn portcullis");
        self.wait_listening();
    }

    /// Waits for the gateway's "portcullis listening" log line (one more
    /// than already in the log, for restarts). No probe connection is made:
    /// it would count against connection limits that tests check.
    fn wait_listening(&self) {
        let started = Instant::now();
        let before = self.listening_lines_at_spawn;
        while self.log().matches("portcullis listening").count() <= before {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "gateway did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gateway process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Runs `portcullis ARGS --config CONFIG` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run portcullis")
    }

    /// `portcullis audit list --json`, parsed.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["audit", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("audit json")
    }

    /// `portcullis sessions list --json`, parsed.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["sessions", "list", "--json", "--limit", "1000"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sessions json")
    }

    /// Waits (at most 30 s) until at least `count` sessions match `which`
    /// and none of them is still running, and returns the matching rows.
    /// The gateway closes a session's row (after its recording and its
    /// `session_end` audit event) only after the client got the exit
    /// status, so a client that has exited does not mean the row is closed.
    pub fn wait_sessions_ended(
        &self,
        count: usize,
        which: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        super::wait_until(
            &format!("{count} ended sessions"),
            Duration::from_secs(30),
            || {
                found = self.sessions().into_iter().filter(|s| which(s)).collect();
                found.len() >= count && found.iter().all(|s| s["status"] != "running")
            },
        );
        found
    }

    /// The OpenSSH client, set up to log in to this gateway as `user` by
    /// answering the token prompt with `token` ("" = device flow, with
    /// prompts exchanged through `askpass_dir`).
    pub fn ssh(&self, user: &str, token: &str, askpass_dir: &Path) -> Command {
        let askpass = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/askpass.sh");
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-p"])
            .arg(self.port.to_string())
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "PreferredAuthentications=keyboard-interactive",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=20",
                "-l",
                user,
                "127.0.0.1",
            ])
            .env("SSH_ASKPASS", askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("PORTCULLIS_TEST_TOKEN", token)
            .env("PORTCULLIS_TEST_DIR", askpass_dir)
            .env_remove("SSH_AUTH_SOCK");
        cmd
    }
}

impl TestGateway {
    /// The OpenSSH client logging in as `user` with the private key `key`
    /// (only that key: `IdentitiesOnly`), falling back to
    /// keyboard-interactive with `token` at the token prompt.
    pub fn ssh_with_key(&self, user: &str, key: &Path, token: &str, askpass_dir: &Path) -> Command {
        let askpass = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/askpass.sh");
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-p"])
            .arg(self.port.to_string())
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "PreferredAuthentications=publickey,keyboard-interactive",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=20",
                "-i",
            ])
            .arg(key)
            .args(["-l", user, "127.0.0.1"])
            .env("SSH_ASKPASS", askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("PORTCULLIS_TEST_TOKEN", token)
            .env("PORTCULLIS_TEST_DIR", askpass_dir)
            .env_remove("SSH_AUTH_SOCK");
        cmd
    }

    /// The OpenSSH client in batch mode (no prompt at all) with only `key`
    /// (and its certificate `cert`, when given).
    pub fn ssh_batch(&self, user: &str, key: &Path, cert: Option<&Path>) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-p"])
            .arg(self.port.to_string())
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
            .arg(key);
        if let Some(cert) = cert {
            cmd.arg("-o")
                .arg(format!("CertificateFile={}", cert.display()));
        }
        cmd.args(["-l", user, "127.0.0.1"])
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_ASKPASS")
            .env_remove("DISPLAY");
        cmd
    }
}

/// Generates an ed25519 key pair with `ssh-keygen` at `path` (and
/// `path.pub`), without a passphrase.
pub fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path));
}

/// `SHA256:...` fingerprint of the public key file `pub_path`.
pub fn fingerprint_of(pub_path: &Path) -> String {
    let out = run(Command::new("ssh-keygen").arg("-lf").arg(pub_path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string()
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oidc_section(issuer: &str) -> String {
    format!("[oidc]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\n")
}

/// A free loopback port, never one this test process handed out before.
///
/// The port is only probed (bound and released): whoever uses it binds it
/// later (a gateway after its startup, `ssh -L`, PostgreSQL), and until
/// then the kernel may give the same port to another `bind(0)` of a test
/// running in parallel, which would then fail to listen.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Output of one ssh run.
#[derive(Debug)]
pub struct SshResult {
    /// Exit code (255 = ssh's own failure).
    pub code: i32,
    /// Exact stdout bytes.
    pub stdout: Vec<u8>,
    /// stderr as text.
    pub stderr: String,
}

/// Runs `cmd` feeding `stdin`; kills it after 60 s.
pub fn run_ssh(cmd: &mut Command, stdin: &[u8]) -> SshResult {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut child_stdin = child.stdin.take().expect("stdin");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait ssh") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait ssh");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    SshResult {
        code: status.code().unwrap_or(-1),
        stdout: out_reader.join().expect("stdout"),
        stderr: String::from_utf8_lossy(&err_reader.join().expect("stderr")).into_owned(),
    }
}

/// Runs `cmd` (an ssh client set up by [`TestGateway::ssh`] or
/// [`TestGateway::ssh_with_key`] with an empty token, so the gateway starts
/// the device flow) while a "browser" thread waits for the device prompt in
/// `askpass_dir`, calls `browser` with the verification URL (the prompt's
/// first word starting with `issuer`), then presses Enter. Returns the ssh
/// result and the prompt text.
pub fn run_with_browser<F>(
    cmd: &mut Command,
    askpass_dir: &Path,
    issuer: &str,
    browser: F,
) -> (SshResult, String)
where
    F: FnOnce(String) + Send + 'static,
{
    let dir = askpass_dir.to_path_buf();
    let issuer = issuer.to_string();
    let thread = std::thread::spawn(move || {
        let started = Instant::now();
        let (name, prompt) = loop {
            let found = std::fs::read_dir(&dir).unwrap().flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name.starts_with("prompt.") && !name.ends_with(".tmp"))
                    .then(|| (name.clone(), std::fs::read_to_string(e.path()).unwrap()))
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no device prompt"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let url = prompt
            .split_whitespace()
            .find(|w| w.starts_with(&issuer))
            .unwrap_or_else(|| panic!("no URL in prompt {prompt:?}"))
            .to_string();
        browser(url);
        std::fs::write(dir.join(name.replace("prompt.", "answer.")), "\n").unwrap();
        prompt
    });
    let r = run_ssh(cmd, b"");
    let prompt = thread.join().unwrap();
    (r, prompt)
}
