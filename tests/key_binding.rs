//! Key binding end to end (issue 4, item 1), with real parts only: the real
//! test IdP, a real LXC container, the real gateway and the real OpenSSH
//! client. A key is bound by one IdP login and then passes with
//! `BatchMode=yes` (no prompt at all) until it is revoked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::gateway::{SshResult, TestContainer, TestGateway, fingerprint_of, keygen, run_ssh};
use common::idp::TestIdp;
use serde_json::Value;

struct Fixture {
    idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    admin_token: String,
    alice_token: String,
    keys: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("bind");
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
                keys: tempfile::tempdir().unwrap(),
            }
        })
        .join()
        .unwrap()
    })
}

fn new_key(name: &str) -> PathBuf {
    let path = fixture().keys.path().join(name);
    keygen(&path);
    path
}

fn pub_of(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

/// Logs in with `key`, answering the token prompt with `token`.
fn login_with_key(user: &str, key: &Path, token: &str, command: &str) -> SshResult {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = fixture().gateway.ssh_with_key(user, key, token, dir.path());
    cmd.arg(command);
    run_ssh(&mut cmd, b"")
}

fn batch(user: &str, key: &Path, command: &str) -> SshResult {
    let mut cmd = fixture().gateway.ssh_batch(user, key, None);
    cmd.arg(command);
    run_ssh(&mut cmd, b"")
}

fn target(login: &str) -> String {
    format!("{login}@{}", fixture().container.name)
}

fn audit_details(kind: &str) -> Vec<Value> {
    fixture()
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| {
            let mut detail: Value = serde_json::from_str(e["detail"].as_str().unwrap()).unwrap();
            detail["principal"] = e["principal"].clone();
            detail["outcome"] = e["outcome"].clone();
            detail
        })
        .collect()
}

fn bindings(all: bool) -> Vec<Value> {
    let mut args = vec!["keys", "list", "--json"];
    if all {
        args.push("--all");
    }
    let out = fixture().gateway.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_bound_key_passes_in_batch_mode_until_revoked() {
    let f = fixture();
    let key = new_key("k1");
    let fp = fingerprint_of(&pub_of(&key));

    // Never bound: batch mode has no way to answer the IdP login.
    let r = batch(&target("root"), &key, "echo never");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);

    // The first login: key signature, partial success, then the IdP login.
    let r = login_with_key(&target("root"), &key, &f.admin_token, "echo first");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    assert_eq!(r.stdout, b"first\n");
    let bound: Vec<Value> = audit_details("key_binding")
        .into_iter()
        .filter(|d| d["fingerprint"] == fp.as_str() && d["change"] == "bound")
        .collect();
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert_eq!(bound[0]["principal"], "admin");

    // Later connections: no prompt at all.
    for i in 0..2 {
        let r = batch(&target("root"), &key, &format!("echo batch-{i}"));
        assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
        assert_eq!(r.stdout, format!("batch-{i}\n").as_bytes());
    }
    let listed = bindings(false);
    let mine: Vec<&Value> = listed
        .iter()
        .filter(|b| b["fingerprint"] == fp.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{listed:?}");
    assert_eq!(mine[0]["principal"], "admin");
    assert_eq!(mine[0]["groups"], serde_json::json!(["admins"]));
    assert!(mine[0].get("refresh_token").is_none());

    // Revoked: the very next connection is refused.
    let out = f.gateway.cli(&["keys", "revoke", "--fingerprint", &fp]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&fp));
    let r = batch(&target("root"), &key, "echo after-revoke");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let failures: Vec<Value> = audit_details("authentication")
        .into_iter()
        .filter(|d| {
            d["method"] == "publickey"
                && d["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("binding revoked")
        })
        .collect();
    assert!(!failures.is_empty());
    assert!(
        bindings(false)
            .iter()
            .all(|b| b["fingerprint"] != fp.as_str())
    );
    assert!(
        bindings(true)
            .iter()
            .any(|b| b["fingerprint"] == fp.as_str())
    );

    // Revoking again finds nothing live: a clear error.
    let out = f.gateway.cli(&["keys", "revoke", "--fingerprint", &fp]);
    assert!(!out.status.success());
}

#[test]
fn revoking_by_principal_ends_every_key_of_that_principal() {
    let f = fixture();
    let keys = [new_key("p1"), new_key("p2")];
    for key in &keys {
        let r = login_with_key(&target("app"), key, &f.alice_token, "true");
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(batch(&target("app"), key, "true").code, 0);
    }
    let out = f.gateway.cli(&["keys", "revoke", "--principal", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in &keys {
        assert_eq!(batch(&target("app"), key, "true").code, 255);
    }
}

#[test]
fn groups_come_from_the_latest_token_not_the_binding() {
    let f = fixture();
    let key = new_key("g1");
    // bob has no groups: bound, but the policy refuses him everything.
    let bob = f.idp.mint_id_token(f.idp.standard_claims("bob"));
    let r = login_with_key(&target("app"), &key, &bob, "true");
    assert_ne!(r.code, 0, "bob has no group yet");
    let r = batch(&target("app"), &key, "echo hi");
    assert_ne!(r.code, 0);
    assert!(r.stdout.is_empty());

    // A newer token of bob, now in developers (keyboard-interactive only).
    let mut claims = f.idp.standard_claims("bob");
    claims["groups"] = serde_json::json!(["developers"]);
    let newer = f.idp.mint_id_token(claims);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = f.gateway.ssh(&target("app"), &newer, dir.path());
    cmd.arg("true");
    assert_eq!(run_ssh(&mut cmd, b"").code, 0);

    // The bound key now carries the newer groups.
    let r = batch(&target("app"), &key, "echo bob-in");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    assert_eq!(r.stdout, b"bob-in\n");
}

#[test]
fn a_key_whose_idp_login_failed_is_not_bound() {
    let f = fixture();
    let key = new_key("failed");
    let mut claims = f.idp.standard_claims("admin");
    claims["exp"] = serde_json::json!(common::idp::now_secs() - 3600);
    let expired = f.idp.mint_id_token(claims);
    let r = login_with_key(&target("root"), &key, &expired, "true");
    assert_eq!(r.code, 255, "{}", r.stderr);
    let fp = fingerprint_of(&pub_of(&key));
    assert!(
        bindings(true)
            .iter()
            .all(|b| b["fingerprint"] != fp.as_str())
    );
    assert_eq!(batch(&target("root"), &key, "true").code, 255);
}
