//! Brute force and slowloris (issue 4, item 6), against the real gateway
//! with the real OpenSSH client and raw TCP connections: attempts per
//! connection are capped, failures per address are slowed down more and
//! more, unauthenticated connections are dropped after the login grace
//! time, and their number is capped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::{TestGateway, run_ssh};

/// No IdP is needed: garbage tokens fail before any fetch.
const DEAD_ISSUER: &str = "http://127.0.0.1:9";

fn ssh_with_prompts(gateway: &TestGateway, prompts: u32, askpass_dir: &Path) -> Command {
    let askpass = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/askpass.sh");
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-p"])
        .arg(gateway.port.to_string())
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PreferredAuthentications=keyboard-interactive",
            "-o",
            &format!("NumberOfPasswordPrompts={prompts}"),
            "-l",
            "root@web1",
            "127.0.0.1",
            "true",
        ])
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("PORTCULLIS_TEST_TOKEN", "not-a-token")
        .env("PORTCULLIS_TEST_DIR", askpass_dir)
        .env_remove("SSH_AUTH_SOCK");
    cmd
}

fn failures(gateway: &TestGateway) -> usize {
    gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "failure")
        .count()
}

/// Reads the server's SSH identification line, or `None` on EOF.
fn banner(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

/// True when the server closes `stream` within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn attempts_per_connection_are_capped() {
    let gateway = TestGateway::start(
        DEAD_ISSUER,
        "[auth]\nmax_auth_attempts = 2\nfailure_delay = \"0s\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let r = run_ssh(&mut ssh_with_prompts(&gateway, 6, dir.path()), b"");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert_eq!(failures(&gateway), 2, "{}", gateway.log());
}

#[test]
fn failures_from_one_address_wait_longer_and_longer() {
    let gateway = TestGateway::start(
        DEAD_ISSUER,
        "[auth]\nfailure_delay = \"1s\"\nfailure_delay_max = \"4s\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    // Each attempt is timed from the moment the token is answered, not from
    // the start of ssh: process start and key exchange vary by more than
    // the margins below on a loaded machine, the delay is all after it.
    let askpass = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/askpass.sh");
    let answered = dir.path().join("answered");
    let wrapper = dir.path().join("askpass-timed.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ndate +%s%N > '{}'\nexec '{}' \"$@\"\n",
            answered.display(),
            askpass.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut took = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_file(&answered);
        let mut cmd = ssh_with_prompts(&gateway, 1, dir.path());
        cmd.env("SSH_ASKPASS", &wrapper);
        let r = run_ssh(&mut cmd, b"");
        let ended = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        assert_eq!(r.code, 255, "{}", r.stderr);
        let at: u64 = std::fs::read_to_string(&answered)
            .expect("the token prompt was answered")
            .trim()
            .parse()
            .unwrap();
        took.push(ended - Duration::from_nanos(at));
    }
    // 1 s, 2 s, 4 s of added delay (on top of russh's 1 s rejection time).
    assert!(took[1] > took[0] + Duration::from_millis(700), "{took:?}");
    assert!(took[2] > took[1] + Duration::from_millis(1500), "{took:?}");
    assert!(gateway.log().contains("slowing down"));
}

#[test]
fn an_unauthenticated_connection_is_dropped_after_the_grace_time() {
    let gateway = TestGateway::start(
        DEAD_ISSUER,
        "[auth]\nlogin_grace_time = \"2s\"\nfailure_delay = \"0s\"\n",
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    let b = banner(&mut stream).expect("banner");
    assert!(b.starts_with("SSH-2.0-Portcullis"), "{b}");
    // Say nothing (slowloris): the gateway hangs up after the grace time.
    assert!(closed_within(&mut stream, Duration::from_secs(8)));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    // The drop is audited.
    let started = Instant::now();
    while !gateway
        .audit_events()
        .iter()
        .any(|e| e["detail"].as_str().unwrap().contains("login grace time"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_number_of_unauthenticated_connections_is_capped() {
    let gateway = TestGateway::start(
        DEAD_ISSUER,
        "[auth]\nmax_unauthenticated = 2\nlogin_grace_time = \"60s\"\nfailure_delay = \"0s\"\n",
    );
    let mut first = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    let mut second = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    assert!(banner(&mut first).is_some());
    assert!(banner(&mut second).is_some());
    let mut third = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    assert_eq!(banner(&mut third), None, "a third one is closed at once");
    drop(first);
    // Once one goes away, a new one is served again.
    let started = Instant::now();
    loop {
        let mut next = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
        if banner(&mut next).is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(second);
}
