//! The main job end to end, with real parts only: a real busybox LXC
//! container, the real test OpenID provider (panva oidc-provider), the real
//! `portcullis` binary and the real OpenSSH client.
//!
//! One container, IdP and gateway serve every test of this file (they are
//! started once, on first use, and torn down when the process exits).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{SshResult, TestContainer, TestGateway, run_ssh};
use common::idp::TestIdp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Fixture {
    idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    /// ID token of `admin` (group admins), from a real device flow.
    admin_token: String,
    /// ID token of `alice` (group developers).
    alice_token: String,
    /// 1 MiB of random bytes placed at /blob in the container.
    blob_sha256: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("skel");
            let blob: Vec<u8> = (0..1024 * 1024)
                .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            std::fs::write(container.rootfs.join("blob"), &blob).unwrap();
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
            Fixture {
                idp,
                container,
                gateway,
                admin_token,
                alice_token,
                blob_sha256: hex::encode(Sha256::digest(&blob)),
            }
        })
        .join()
        .unwrap()
    })
}

fn askpass_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `ssh USER@gw ARGS...` with `token` at the token prompt.
fn ssh(user: &str, token: &str, args: &[&str], stdin: &[u8]) -> SshResult {
    let f = fixture();
    let dir = askpass_dir();
    let mut cmd = f.gateway.ssh(user, token, dir.path());
    cmd.args(args);
    run_ssh(&mut cmd, stdin)
}

fn root_target() -> String {
    format!("root@{}", fixture().container.name)
}

fn sessions_of(command: &str) -> Vec<Value> {
    fixture()
        .gateway
        .sessions()
        .into_iter()
        .filter(|s| s["command"] == command)
        .collect()
}

#[test]
fn exec_prints_the_container_hostname() {
    let f = fixture();
    let r = ssh(
        &root_target(),
        &f.admin_token,
        &["cat", "/etc/hostname"],
        b"",
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    assert_eq!(r.stdout, format!("{}\n", f.container.name).as_bytes());
}

#[test]
fn the_process_is_in_every_namespace_of_the_container() {
    let f = fixture();
    let kinds = ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"];
    let script: Vec<String> = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}"))
        .collect();
    let r = ssh(&root_target(), &f.admin_token, &[&script.join("; ")], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let init = f.container.init_pid();
    let expected: String = kinds
        .iter()
        .map(|k| {
            let link = std::fs::read_link(format!("/proc/{init}/ns/{k}")).unwrap();
            format!("{}\n", link.display())
        })
        .collect();
    assert_eq!(String::from_utf8(r.stdout).unwrap(), expected);
}

#[test]
fn exit_status_comes_back() {
    let f = fixture();
    let r = ssh(&root_target(), &f.admin_token, &["exit 7"], b"");
    assert_eq!(r.code, 7, "{}", r.stderr);
}

#[test]
fn stdin_reaches_the_command_and_eof_ends_it() {
    let f = fixture();
    let r = ssh(&root_target(), &f.admin_token, &["cat"], b"hi\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, b"hi\n");
}

#[test]
fn one_mebibyte_of_binary_output_arrives_intact() {
    let f = fixture();
    let r = ssh(&root_target(), &f.admin_token, &["cat /blob"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.len(), 1024 * 1024);
    assert_eq!(hex::encode(Sha256::digest(&r.stdout)), f.blob_sha256);
}

#[test]
fn logins_are_resolved_in_the_container() {
    let f = fixture();
    let target = format!("app@{}", f.container.name);
    let r = ssh(
        &target,
        &f.admin_token,
        &["id; pwd; echo $HOME $USER $SHELL"],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        String::from_utf8(r.stdout).unwrap(),
        "uid=1000(app) gid=1000(app) groups=1000(app),2000(ops)\n/home/app\n/home/app app /bin/sh\n"
    );
}

#[test]
fn developers_may_use_non_root_logins_on_dev_containers() {
    let f = fixture();
    let target = format!("app@{}", f.container.name);
    let r = ssh(&target, &f.alice_token, &["id -u"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, b"1000\n");
}

#[test]
fn pty_session_is_recorded_as_asciicast() {
    let f = fixture();
    let command = "echo pty-marker-$((6*7)); tty";
    let r = ssh(&root_target(), &f.admin_token, &["-tt", command], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("pty-marker-42"), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    let session = wait_for_ended_session(command);
    let path = session["recording_path"].as_str().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    // ssh -tt without a terminal on stdin asks for 0x0: the gateway's 80x24.
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert_eq!(header["portcullis"]["principal"], "admin");
    assert_eq!(header["portcullis"]["container"], f.container.name.as_str());
    assert_eq!(header["portcullis"]["login"], "root");
    assert_eq!(header["command"], command);
    assert!(header["env"]["TERM"].is_string());
    let mut output = String::new();
    let mut last = 0.0;
    for line in lines {
        let event: (f64, String, String) = serde_json::from_str(line).unwrap();
        assert!(event.0 >= last);
        last = event.0;
        if event.1 == "o" {
            output.push_str(&event.2);
        }
    }
    assert!(output.contains("pty-marker-42"), "{output}");
    // The row holds the digest of exactly these bytes.
    assert_eq!(
        session["recording_sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(text.as_bytes()))
    );
    assert_eq!(
        session["recording_bytes"].as_i64().unwrap(),
        text.len() as i64
    );
}

fn wait_for_ended_session(command: &str) -> Value {
    let started = Instant::now();
    loop {
        if let Some(s) = sessions_of(command)
            .into_iter()
            .find(|s| s["status"] == "ended")
        {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no ended session for {command}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_session_row_names_principal_exit_and_digest() {
    let f = fixture();
    let command = "echo row-check; exit 3";
    let r = ssh(&root_target(), &f.admin_token, &[command], b"");
    assert_eq!(r.code, 3, "{}", r.stderr);
    let s = wait_for_ended_session(command);
    assert_eq!(s["principal"], "admin");
    assert_eq!(s["email"], "admin@example.com");
    assert_eq!(s["container"], f.container.name.as_str());
    assert_eq!(s["login"], "root");
    assert_eq!(s["exit_status"], 3);
    assert!(s["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let path = s["recording_path"].as_str().unwrap();
    assert!(path.ends_with(&format!("{}.cast", s["id"].as_str().unwrap())));
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        s["recording_sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&bytes))
    );
    let (_, events) = portcullis::recording::read(Path::new(path)).unwrap();
    let output: String = events
        .iter()
        .filter(|e| e.code == "o")
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(output, "row-check\n");
    // Markers: the command at the start, the exit at the end.
    let markers = portcullis::recording::markers(&events);
    let labels: Vec<&str> = markers.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(labels, [&format!("exec: {command}"), "exit: 3"]);
    // Audit trail of this session: started, then ended with the digest.
    let events: Vec<Value> = f
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["session_id"] == s["id"])
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session_start", "session_end"]);
    let end: Value = serde_json::from_str(events[1]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(end["exit_status"], 3);
    assert_eq!(end["recording_sha256"], s["recording_sha256"]);
}

/// The audit events whose detail holds `needle`.
fn audit_with(needle: &str) -> Vec<Value> {
    fixture()
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["detail"].as_str().unwrap_or("").contains(needle))
        .collect()
}

#[test]
fn a_denied_login_is_refused_and_audited() {
    let f = fixture();
    let r = ssh(
        &root_target(),
        &f.alice_token,
        &["echo should-not-run"],
        b"",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let expected = format!(
        "Access denied: you may not run commands as root on {}.",
        f.container.name
    );
    assert!(r.stderr.contains(&expected), "{}", r.stderr);
    let denials: Vec<Value> = f
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "decision" && e["outcome"] == "deny" && e["principal"] == "alice")
        .collect();
    assert!(!denials.is_empty());
}

#[test]
fn an_unknown_container_gets_the_same_refusal_as_a_denied_one() {
    let f = fixture();
    let name = format!("no-such-{}", std::process::id());
    let r = ssh(&format!("root@{name}"), &f.admin_token, &["true"], b"");
    assert_eq!(r.code, 1, "{}", r.stderr);
    let expected = format!("Access denied: you may not run commands as root on {name}.");
    assert!(r.stderr.contains(&expected), "{}", r.stderr);
    let refused: Vec<Value> = audit_with(&name)
        .into_iter()
        .filter(|e| e["kind"] == "target" && e["outcome"] == "failure")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
}

/// Logs in with `token`, expects the refusal `message` and one
/// authentication failure audit event more than before.
fn assert_token_refused(token: &str, message: &str, reason: &str) {
    let failures = || {
        audit_with(reason)
            .into_iter()
            .filter(|e| e["kind"] == "authentication" && e["outcome"] == "failure")
            .count()
    };
    let before = failures();
    let r = ssh(&root_target(), token, &["echo should-not-run"], b"");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains(message), "{}", r.stderr);
    assert_eq!(failures(), before + 1);
}

#[test]
fn an_expired_token_is_refused() {
    let f = fixture();
    let mut claims = f.idp.standard_claims("admin");
    let now = common::idp::now_secs();
    claims["iat"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    assert_token_refused(
        &f.idp.mint_id_token(claims),
        "Login failed: the token has expired.",
        "token expired",
    );
}

#[test]
fn a_token_from_another_issuer_is_refused() {
    let f = fixture();
    let mut claims = f.idp.standard_claims("admin");
    claims["iss"] = json!("https://idp.elsewhere.example");
    assert_token_refused(
        &f.idp.mint_id_token(claims),
        "Login failed: the token was issued by another identity provider.",
        "wrong issuer",
    );
}

#[test]
fn a_token_signed_with_an_unknown_key_is_refused() {
    let f = fixture();
    let claims = f.idp.standard_claims("admin");
    assert_token_refused(
        &f.idp.mint_with_unknown_key(claims),
        "Login failed: the token is signed with a key the identity provider does not publish.",
        "unknown signing key",
    );
}

#[test]
fn a_token_cut_at_the_openssh_prompt_limit_gets_a_clear_message() {
    let token = "e".repeat(1023);
    assert_token_refused(
        &token,
        "OpenSSH sends at most 1023 bytes per prompt",
        "prompt limit",
    );
}

#[test]
fn garbage_at_the_token_prompt_is_refused() {
    assert_token_refused(
        "not-a-jwt",
        "Login failed: the token is not valid.",
        "malformed token",
    );
}

#[test]
fn the_device_flow_logs_in_through_the_browser() {
    let f = fixture();
    let dir = askpass_dir();
    let mut cmd = f.gateway.ssh(&root_target(), "", dir.path());
    cmd.arg("echo device-flow-ok");
    let dir_path = dir.path().to_path_buf();
    let issuer = f.idp.issuer.clone();
    let browser = std::thread::spawn(move || {
        // Wait for the device prompt, play the user in the browser, answer.
        let started = Instant::now();
        let (name, prompt) = loop {
            let found = std::fs::read_dir(&dir_path)
                .unwrap()
                .flatten()
                .find_map(|e| {
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
        // The prompt shows the URL and the code to type (issue 14: no
        // one-click link by default).
        assert!(!url.contains("user_code="), "{prompt}");
        let code = prompt
            .split("confirm the code ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|c| c.trim_end_matches('.').to_string())
            .unwrap_or_else(|| panic!("no code in {prompt:?}"));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let idp = &fixture().idp;
        rt.block_on(idp.complete_device_login_with_code(&url, &code, "admin"));
        let answer = name.replace("prompt.", "answer.");
        std::fs::write(dir_path.join(answer), "\n").unwrap();
        prompt
    });
    let r = run_ssh(&mut cmd, b"");
    let prompt = browser.join().unwrap();
    assert!(prompt.contains("To log in, open"), "{prompt}");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    assert_eq!(r.stdout, b"device-flow-ok\n");
}

#[test]
fn disconnecting_ends_every_process_of_the_session() {
    let f = fixture();
    let dir = askpass_dir();
    let marker = format!("sleep 4242{}", std::process::id() % 10);
    let mut cmd = f.gateway.ssh(&root_target(), &f.admin_token, dir.path());
    cmd.arg(format!("{marker} & {marker}; wait"));
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Both sleeps, each matched by its exact command line: the shell
    // running `MARKER & MARKER; wait` matches the marker too, so two
    // matches could be the shell and only the first sleep.
    let sleeps = || {
        f.container
            .processes_matching(&marker)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == marker)
            })
            .count()
    };
    let started = Instant::now();
    while sleeps() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "session did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    while !f.container.processes_matching(&marker).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "processes left: {:?}",
            f.container.processes_matching(&marker)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sessions_list_and_play_show_what_happened() {
    let f = fixture();
    let command = "echo replay-me";
    let r = ssh(&root_target(), &f.admin_token, &[command], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = wait_for_ended_session(command);
    let id = s["id"].as_str().unwrap();
    let list = f.gateway.cli(&["sessions", "list"]);
    assert!(list.status.success());
    let table = String::from_utf8(list.stdout).unwrap();
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(id) && l.contains("admin")),
        "{table}"
    );
    let play = f.gateway.cli(&["sessions", "play", id, "--speed", "100"]);
    assert!(
        play.status.success(),
        "{}",
        String::from_utf8_lossy(&play.stderr)
    );
    assert_eq!(play.stdout, b"replay-me\n");
}

#[test]
fn policy_check_names_the_deciding_policy() {
    let f = fixture();
    let out = f.gateway.cli(&[
        "policy",
        "check",
        "--principal",
        "alice",
        "--group",
        "developers",
        "--container",
        &f.container.name,
        "--login",
        "app",
        "--action",
        "shell",
        "--json",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"decision": "allow", "policies": ["developers-dev-non-root"], "errors": []})
    );
    let denied = f.gateway.cli(&[
        "policy",
        "check",
        "--principal",
        "alice",
        "--group",
        "developers",
        "--container",
        &f.container.name,
        "--login",
        "root",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    let text = String::from_utf8(denied.stdout).unwrap();
    assert!(text.starts_with("DENY: alice shell as root on"), "{text}");
}

#[test]
fn the_config_is_checked_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:1\"\n[oidc]\nissuer = \"x\"\nclient_id = \"c\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("`oidc.issuer`"), "{err}");
}

#[test]
fn an_unreachable_identity_provider_fails_closed_with_a_clear_message() {
    let f = fixture();
    // Nothing listens on the discard port of loopback.
    let gateway = TestGateway::start("http://127.0.0.1:9", "");
    let dir = askpass_dir();
    let token = f.idp.mint_id_token(f.idp.standard_claims("admin"));
    for answer in [token.as_str(), ""] {
        let mut cmd = gateway.ssh(&root_target(), answer, dir.path());
        cmd.arg("echo should-not-run");
        let r = run_ssh(&mut cmd, b"");
        assert_eq!(r.code, 255, "{}", r.stderr);
        assert!(r.stdout.is_empty());
        assert!(
            r.stderr.contains(
                "Login failed: the identity provider cannot be reached; try again later."
            ),
            "{}",
            r.stderr
        );
    }
    let failures = gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "failure")
        .count();
    assert_eq!(failures, 2);
}

#[test]
fn several_pty_sessions_run_at_once() {
    let f = fixture();
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let token = f.admin_token.clone();
            std::thread::spawn(move || {
                let command = format!("sleep 1; echo together-{i}");
                ssh(&root_target(), &token, &["-tt", &command], b"")
            })
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let r = run.join().unwrap();
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            String::from_utf8_lossy(&r.stdout).contains(&format!("together-{i}")),
            "{r:?}"
        );
    }
}
