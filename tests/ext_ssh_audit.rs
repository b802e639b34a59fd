//! Issue 19: `ssh-audit` (PyPI, installed by `.ci/run`) checks the real
//! gateway's algorithms against the policy kept in the repository,
//! `tests/ext/ssh-audit/portcullis.policy` (strict key exchange offered, no
//! SHA-1, no CBC, no DH group under 4096 bits, no compression before
//! authentication); any drift fails. The DHEat connection-rate probe is
//! skipped (`--skip-rate-test`): it opens dozens of connections and reports
//! only an advisory note.
//!
//! Runs in the SQLite half of CI only: the algorithms do not depend on the
//! database (under `PORTCULLIS_TEST_DATABASE=postgres` the test returns at
//! once, saying so).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::gateway::TestGateway;

fn policy() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/ext/ssh-audit/portcullis.policy"
    ))
}

/// One gateway for the file. No IdP is needed to negotiate algorithms:
/// the gateway listens anyway.
fn gateway() -> &'static TestGateway {
    static GATEWAY: std::sync::OnceLock<TestGateway> = std::sync::OnceLock::new();
    GATEWAY.get_or_init(|| TestGateway::start("http://127.0.0.1:9", ""))
}

fn sqlite_half_only() -> bool {
    if std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() == Ok("postgres") {
        println!("ssh-audit runs in the SQLite half only (no database involved)");
        return true;
    }
    false
}

fn ssh_audit(port: u16, args: &[&str]) -> Output {
    Command::new("ssh-audit")
        .arg("--skip-rate-test")
        .args(args)
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run ssh-audit (pip install ssh-audit; .ci/run does): {e}")
        })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_server_matches_the_policy_and_drift_fails() {
    if sqlite_half_only() {
        return;
    }
    let gateway = gateway();

    let out = ssh_audit(gateway.port, &["-P", policy().to_str().unwrap()]);
    assert!(
        out.status.success() && text(&out).contains("Passed"),
        "policy check failed:\n{}",
        text(&out)
    );

    // The check can fail: the same policy plus one SHA-1 MAC is drift.
    let dir = tempfile::tempdir().unwrap();
    let drifted = dir.path().join("drift.policy");
    let original = std::fs::read_to_string(policy()).unwrap();
    let changed = original.replace(
        "macs = hmac-sha2-512-etm@openssh.com, hmac-sha2-256-etm@openssh.com",
        "macs = hmac-sha2-512-etm@openssh.com, hmac-sha2-256-etm@openssh.com, hmac-sha1",
    );
    assert_ne!(changed, original, "the policy's macs line moved");
    std::fs::write(&drifted, changed).unwrap();
    let out = ssh_audit(gateway.port, &["-P", drifted.to_str().unwrap()]);
    assert!(
        !out.status.success() && text(&out).contains("MACs did not match"),
        "drift not detected:\n{}",
        text(&out)
    );
}

#[test]
fn the_audit_finds_no_failure_and_only_the_accepted_warnings() {
    if sqlite_half_only() {
        return;
    }
    let out = ssh_audit(gateway().port, &["-j"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ssh-audit -j: {e}\n{}", text(&out)));
    // Compression only after authentication.
    assert_eq!(
        report["compression"],
        serde_json::json!(["none", "zlib@openssh.com"])
    );
    // Accepted, with OpenSSH 9.x's defaults: classical key exchanges lack
    // post-quantum protection (Debian 12's OpenSSH 9.2 and PuTTY 0.78 have
    // no ML-KEM; mlkem768x25519-sha256 is offered first).
    const ACCEPTED: &str = "does not provide protection against post-quantum attacks";
    for section in ["kex", "key", "enc", "mac"] {
        for alg in report[section].as_array().unwrap() {
            let name = alg["algorithm"].as_str().unwrap();
            let notes = &alg["notes"];
            assert!(notes.get("fail").is_none(), "{section} {name}: {notes}");
            for w in notes
                .get("warn")
                .and_then(|w| w.as_array())
                .into_iter()
                .flatten()
            {
                assert!(
                    section == "kex" && w == ACCEPTED,
                    "{section} {name}: warning {w}"
                );
            }
            for bad in ["sha1", "-cbc", "group14", "group1-", "group-exchange"] {
                assert!(!name.contains(bad), "{section} offers {name}");
            }
        }
    }
    assert_eq!(
        report["recommendations"],
        serde_json::json!({}),
        "{}",
        report["recommendations"]
    );
}
