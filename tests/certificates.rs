//! SSH user certificates end to end (issue 4, item 2): `ssh-keygen -s`
//! signs test certificates, the real OpenSSH client offers them with
//! `-o CertificateFile=...` in batch mode, the real gateway checks them
//! (OpenSSH PROTOCOL.certkeys).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::gateway::{SshResult, TestContainer, TestGateway, keygen, run, run_ssh};
use common::idp::TestIdp;
use serde_json::Value;

struct Fixture {
    _idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        std::thread::spawn(|| {
            let dir = tempfile::tempdir().unwrap();
            keygen(&dir.path().join("ca"));
            keygen(&dir.path().join("other-ca"));
            let ca_pub = std::fs::read_to_string(dir.path().join("ca.pub")).unwrap();
            let idp = TestIdp::start();
            let container = TestContainer::start("cert");
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[certificates]\ngroups_extension = \"groups@portcullis\"\n\
                     [[certificates.ca]]\npublic_key = \"{}\"\n\
                     principals = [\"alice\", \"admin\", \"carol\"]\n\
                     [containers.{}]\nlabels = {{ env = \"dev\" }}\n",
                    ca_pub.trim(),
                    container.name
                ),
            );
            Fixture {
                _idp: idp,
                container,
                gateway,
                dir,
            }
        })
        .join()
        .unwrap()
    })
}

/// A new user key signed by `ca` (a file in the fixture dir) with
/// `ssh-keygen -s CA -I ID -n PRINCIPALS -V VALIDITY EXTRA...`; returns the
/// private key path (the certificate is `KEY-cert.pub`).
fn signed_key(name: &str, ca: &str, principals: &str, validity: &str, extra: &[&str]) -> PathBuf {
    let dir = fixture().dir.path();
    let key = dir.join(name);
    keygen(&key);
    run(Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(dir.join(ca))
        .args([
            "-I",
            &format!("{name}-id"),
            "-n",
            principals,
            "-V",
            validity,
        ])
        .args(extra)
        .arg(format!("{}.pub", key.display())));
    key
}

fn cert_of(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}-cert.pub", key.display()))
}

fn connect(key: &Path, login: &str, command: &str) -> SshResult {
    let f = fixture();
    let mut cmd = f.gateway.ssh_batch(
        &format!("{login}@{}", f.container.name),
        key,
        Some(&cert_of(key)),
    );
    cmd.arg(command);
    run_ssh(&mut cmd, b"")
}

fn certificate_failures(needle: &str) -> usize {
    fixture()
        .gateway
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "failure")
        .filter(|e| {
            let d: Value = serde_json::from_str(e["detail"].as_str().unwrap()).unwrap();
            d["method"] == "certificate" && d["reason"].as_str().unwrap().contains(needle)
        })
        .count()
}

#[test]
fn a_valid_certificate_authenticates_its_principal_without_a_prompt() {
    let key = signed_key(
        "admin-ok",
        "ca",
        "admin",
        "-5m:+1h",
        &["-O", "extension:groups@portcullis=admins"],
    );
    let r = connect(&key, "root", "echo cert-ok");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, fixture().gateway.log());
    assert_eq!(r.stdout, b"cert-ok\n");
    let ok = fixture().gateway.audit_events().into_iter().any(|e| {
        e["principal"] == "admin" && e["detail"].as_str().unwrap().contains("\"certificate\"")
    });
    assert!(ok);
}

#[test]
fn groups_come_from_the_certificate_extension() {
    // carol has no groups at the IdP; the certificate makes her a developer.
    let key = signed_key(
        "carol-dev",
        "ca",
        "carol",
        "-5m:+1h",
        &["-O", "extension:groups@portcullis=developers"],
    );
    let r = connect(&key, "app", "id -un");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, fixture().gateway.log());
    assert_eq!(r.stdout, b"app\n");
    let plain = signed_key("carol-none", "ca", "carol", "-5m:+1h", &[]);
    let r = connect(&plain, "app", "id -un");
    assert_ne!(r.code, 0, "no group, no access");
    assert!(r.stdout.is_empty());
}

#[test]
fn an_expired_certificate_is_refused() {
    let key = signed_key("expired", "ca", "admin", "20200101:20200102", &[]);
    let r = connect(&key, "root", "echo no");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn a_not_yet_valid_certificate_is_refused() {
    let key = signed_key("future", "ca", "admin", "+1d:+2d", &[]);
    let r = connect(&key, "root", "echo no");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused_and_audited() {
    let key = signed_key("wrong-ca", "other-ca", "admin", "-5m:+1h", &[]);
    let r = connect(&key, "root", "echo no");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(certificate_failures("untrusted CA") >= 1);
}

#[test]
fn a_certificate_for_another_principal_is_refused_and_audited() {
    let key = signed_key("mallory", "ca", "mallory,root", "-5m:+1h", &[]);
    let r = connect(&key, "root", "echo no");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(certificate_failures("mallory") >= 1);
}

#[test]
fn a_certificate_with_a_critical_option_is_refused() {
    let key = signed_key(
        "forced",
        "ca",
        "admin",
        "-5m:+1h",
        &["-O", "force-command=/bin/true"],
    );
    let r = connect(&key, "root", "echo no");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert!(certificate_failures("critical option force-command") >= 1);
}
