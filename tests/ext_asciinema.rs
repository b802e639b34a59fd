//! Issue 19: asciinema (PyPI, installed by `.ci/run`), the reference
//! asciicast v2 player, reads every recording this test's real gateway
//! produced: `asciinema cat FILE` exits 0 and prints exactly the
//! recording's output (`o`) events joined, byte for byte.
//!
//! The sessions cover every kind of recording the gateway writes: a
//! command without a PTY (stdout, stderr, UTF-8 split across writes, bytes
//! that are not UTF-8, an exit status), an interactive PTY session with
//! input recorded (`record_input = true`: `i` events the player must skip),
//! a long output (joined events), and an SFTP session (a header-only
//! recording).
//!
//! Runs in the SQLite half of CI only: the recordings are files and do not
//! depend on the database (under `PORTCULLIS_TEST_DATABASE=postgres` the
//! test returns at once, saying so).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::gateway::{TestContainer, TestGateway, keygen, run_ssh};
use common::idp::TestIdp;

/// The recording's output events (`[time, "o", data]`) joined, and how
/// many events of each other kind it has.
fn output_of(cast: &Path) -> (String, usize) {
    let text = std::fs::read_to_string(cast).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{}", cast.display());
    let mut out = String::new();
    let mut other = 0;
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        match event[1].as_str() {
            Some("o") => out.push_str(event[2].as_str().unwrap()),
            _ => other += 1,
        }
    }
    (out, other)
}

#[test]
fn asciinema_cat_reads_every_recording_byte_exact() {
    if std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() == Ok("postgres") {
        println!("asciinema runs in the SQLite half only (recordings are files)");
        return;
    }
    let idp = TestIdp::start();
    let container = TestContainer::start("cast");
    let gateway = TestGateway::start(&idp.issuer, "[recording]\nrecord_input = true\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = rt.block_on(idp.device_flow_id_token("admin"));
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("admin");
    keygen(&key);
    let user = format!("root@{}", container.name);
    let askpass = tempfile::tempdir().unwrap();
    let mut cmd = gateway.ssh_with_key(&user, &key, &token, askpass.path());
    cmd.arg("true");
    assert_eq!(run_ssh(&mut cmd, b"").code, 0);

    // A command without a PTY: both streams, UTF-8 split across writes,
    // bytes that are not UTF-8, an exit status.
    let mut cmd = gateway.ssh_batch(&user, &key, None);
    cmd.arg(
        "printf 'out\\n'; printf 'err\\n' >&2; printf '\\303'; sleep 0.1; \
         printf '\\251t\\303\\251 \\377\\376 end\\n'; exit 3",
    );
    assert_eq!(run_ssh(&mut cmd, b"").code, 3);
    // An interactive PTY session, input recorded.
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-tt", "-p"])
        .arg(gateway.port.to_string())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&key)
        .args(["-l", &user, "127.0.0.1"])
        .env_remove("SSH_AUTH_SOCK");
    let r = run_ssh(
        &mut cmd,
        b"echo marker-$((6*7)); printf '\\033[1mbold\\033[0m\\n'; exit\n",
    );
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("marker-42"),
        "{r:?}"
    );
    // A long output.
    let mut cmd = gateway.ssh_batch(&user, &key, None);
    cmd.arg("seq 1 40000");
    assert_eq!(run_ssh(&mut cmd, b"").stdout.len(), 228_894);
    // An SFTP session: a header-only recording.
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("batch");
    std::fs::write(&batch, "ls /\n").unwrap();
    let mut cmd = Command::new("sftp");
    cmd.args(["-F", "/dev/null", "-P"])
        .arg(gateway.port.to_string())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&key)
        .arg("-b")
        .arg(&batch)
        .arg(format!("{user}@127.0.0.1"));
    assert_eq!(run_ssh(&mut cmd, b"").code, 0);

    gateway.wait_sessions_ended(5, |_| true);
    let casts: Vec<_> = std::fs::read_dir(gateway.state_dir.join("recordings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cast"))
        .collect();
    assert_eq!(casts.len(), 5, "{casts:?}");
    let mut inputs = 0;
    for cast in &casts {
        let (want, other) = output_of(cast);
        inputs += other;
        let out = Command::new("asciinema")
            .arg("cat")
            .arg(cast)
            .env("PYTHONUTF8", "1")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run asciinema (pip install asciinema; .ci/run does): {e}")
            });
        assert!(
            out.status.success(),
            "asciinema cat {}: {}",
            cast.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == want.as_bytes(),
            "asciinema cat {} differs from the output events ({} vs {} bytes)",
            cast.display(),
            out.stdout.len(),
            want.len()
        );
    }
    assert!(
        inputs > 0,
        "no input events: record_input did not reach the casts"
    );
}
