//! The real OpenSSH client aimed at a [`TestGateway`]: logins by token
//! (through `SSH_ASKPASS`, `tests/common/askpass.sh`), by key and by
//! certificate, key generation, and running a client to its end.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::container::run;
use super::gateway::TestGateway;

impl TestGateway {
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
