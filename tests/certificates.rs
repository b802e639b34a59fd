//! SSH user certificates end to end (issue 4, item 2): `ssh-keygen -s`
//! signs test certificates, the real OpenSSH client offers them with
//! `-o CertificateFile=...` in batch mode, the real gateway checks them
//! (OpenSSH PROTOCOL.certkeys). Issue 14: groups a CA asserts are its own
//! (review M1), a KRL written by `ssh-keygen -k` is honoured and reloaded
//! (PROTOCOL.krl), `permit-pty` is enforced (review L3).
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
            keygen(&dir.path().join("ci-ca"));
            let ca_pub = std::fs::read_to_string(dir.path().join("ca.pub")).unwrap();
            let ci_pub = std::fs::read_to_string(dir.path().join("ci-ca.pub")).unwrap();
            // An empty revocation list to start with (a missing one refuses
            // every certificate).
            let krl = dir.path().join("revoked.krl");
            run(Command::new("ssh-keygen").arg("-k").arg("-f").arg(&krl));
            let idp = TestIdp::start();
            let container = TestContainer::start("cert");
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[certificates]\ngroups_extension = \"groups@portcullis\"\n\
                     revoked_keys = \"{}\"\n\
                     [[certificates.ca]]\npublic_key = \"{}\"\nprincipal_prefix = \"cert:\"\n\
                     principals = [\"alice\", \"admin\", \"carol\"]\n\
                     allowed_groups = [\"admins\", \"developers\"]\n\
                     [[certificates.ca]]\npublic_key = \"{}\"\nprincipal_prefix = \"ci:\"\n\
                     principals = [\"ci-bot\"]\n\
                     [containers.{}]\nlabels = {{ env = \"dev\" }}\n",
                    krl.display(),
                    ca_pub.trim(),
                    ci_pub.trim(),
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
        e["principal"] == "cert:admin" && e["detail"].as_str().unwrap().contains("\"certificate\"")
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

/// rsync over the gateway (issue 4's "ssh, scp and rsync without prompts",
/// issue 5 item 2): the container gets the host's rsync binary (its
/// libraries come from the busybox template's read-only /lib bind mounts),
/// and `rsync -e ssh` runs `rsync --server` through an ordinary exec
/// session, authenticated by a certificate with `BatchMode=yes`.
#[test]
fn rsync_copies_files_both_ways_without_a_prompt() {
    let f = fixture();
    let rsync = Path::new("/usr/bin/rsync");
    assert!(
        rsync.exists(),
        "rsync is not installed on the host (.ci/run installs it)"
    );
    std::fs::copy(rsync, f.container.rootfs.join("usr/bin/rsync")).unwrap();
    let key = signed_key(
        "rsync-admin",
        "ca",
        "admin",
        "-5m:+1h",
        &["-O", "extension:groups@portcullis=admins"],
    );
    let wrapper = f.dir.path().join("rsync-ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ssh -F /dev/null -p {} -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -i {} \
             -o CertificateFile={} -l root@{} \"$@\"\n",
            f.gateway.port,
            key.display(),
            cert_of(&key).display(),
            f.container.name
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("755").arg(&wrapper));
    let src = f.dir.path().join("rsync-src");
    std::fs::create_dir_all(&src).unwrap();
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("blob.bin"), &payload).unwrap();
    std::fs::write(src.join("note.txt"), "hello over rsync\n").unwrap();
    let rsync_run = |args: &[&str]| {
        let out = Command::new("rsync")
            .arg("-a")
            .arg("-e")
            .arg(&wrapper)
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_ASKPASS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rsync {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            f.gateway.log()
        );
    };
    // Up into the container, then back down into a fresh directory.
    rsync_run(&[&format!("{}/", src.display()), "127.0.0.1:/tmp/rsync-dst/"]);
    let inside = f.container.rootfs.join("tmp/rsync-dst");
    assert_eq!(std::fs::read(inside.join("blob.bin")).unwrap(), payload);
    assert_eq!(
        std::fs::read_to_string(inside.join("note.txt")).unwrap(),
        "hello over rsync\n"
    );
    let back = f.dir.path().join("rsync-back");
    rsync_run(&["127.0.0.1:/tmp/rsync-dst/", &format!("{}/", back.display())]);
    assert_eq!(std::fs::read(back.join("blob.bin")).unwrap(), payload);
    // Both transfers were sessions of the certificate's principal.
    // (rsync exits on the exit status; the gateway closes the rows after.)
    let sessions: Vec<Value> = f.gateway.wait_sessions_ended(2, |s| {
        s["command"]
            .as_str()
            .unwrap_or("")
            .starts_with("rsync --server")
    });
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(
        sessions
            .iter()
            .all(|s| s["principal"] == "cert:admin" && s["exit_status"] == 0)
    );
}

/// Review M1: a CA trusted only for `ci-bot` signs a certificate whose
/// groups extension says `admins`. The group is the CA's own
/// (`ci:admins`), which no rule names: root is refused.
#[test]
fn a_ca_limited_to_ci_bot_cannot_make_it_an_admin() {
    let key = signed_key(
        "ci-bot-admin",
        "ci-ca",
        "ci-bot",
        "-5m:+1h",
        &["-O", "extension:groups@portcullis=admins"],
    );
    let r = connect(&key, "root", "id -u");
    assert_ne!(r.code, 0, "{}", fixture().gateway.log());
    assert!(
        r.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);
    let events = fixture().gateway.audit_events();
    assert!(events.iter().any(|e| e["principal"] == "ci:ci-bot"
        && e["kind"] == "authentication"
        && e["outcome"] == "success"));
    assert!(events.iter().any(|e| e["principal"] == "ci:ci-bot"
        && e["kind"] == "decision"
        && e["outcome"] == "deny"));
}

/// `ssh-keygen -k` revokes by serial, by key id and by key; the gateway
/// reads the list again when it changes (the operator replaces the file)
/// and refuses those certificates, with an audit event; others still pass.
#[test]
fn a_krl_written_by_ssh_keygen_revokes_certificates_when_it_changes() {
    let f = fixture();
    let dir = f.dir.path();
    let admin = ["-O", "extension:groups@portcullis=admins"];
    let keep = signed_key(
        "krl-keep",
        "ca",
        "admin",
        "-5m:+1h",
        &[&["-z", "5001"], &admin[..]].concat(),
    );
    let by_serial = signed_key(
        "krl-serial",
        "ca",
        "admin",
        "-5m:+1h",
        &[&["-z", "5002"], &admin[..]].concat(),
    );
    let by_id = signed_key(
        "krl-id",
        "ca",
        "admin",
        "-5m:+1h",
        &[&["-z", "5003"], &admin[..]].concat(),
    );
    let by_key = signed_key(
        "krl-key",
        "ca",
        "admin",
        "-5m:+1h",
        &[&["-z", "5004"], &admin[..]].concat(),
    );
    for k in [&keep, &by_serial, &by_id, &by_key] {
        let r = connect(k, "root", "echo before");
        assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    }
    let spec = dir.join("revoke.spec");
    let key_pub = std::fs::read_to_string(format!("{}.pub", by_key.display())).unwrap();
    std::fs::write(
        &spec,
        format!("serial: 5002\nid: krl-id-id\nkey: {key_pub}"),
    )
    .unwrap();
    let fresh = dir.join("revoked.krl.new");
    run(Command::new("ssh-keygen")
        .arg("-k")
        .arg("-f")
        .arg(&fresh)
        .arg("-s")
        .arg(dir.join("ca.pub"))
        .arg(&spec));
    std::fs::rename(&fresh, dir.join("revoked.krl")).unwrap();
    common::wait_until(
        "the KRL reloaded",
        std::time::Duration::from_secs(15),
        || connect(&by_serial, "root", "echo after").code == 255,
    );
    for k in [&by_serial, &by_id, &by_key] {
        let r = connect(k, "root", "echo after");
        assert_eq!(r.code, 255, "{}", k.display());
        assert!(r.stdout.is_empty());
    }
    let r = connect(&keep, "root", "echo after");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, f.gateway.log());
    assert_eq!(r.stdout, b"after\n");
    assert!(
        certificate_failures("revoked by certificates.revoked_keys: certificate serial 5002") >= 1
    );
    assert!(certificate_failures("key id \"krl-id-id\"") >= 1);
    assert!(certificate_failures("revoked by certificates.revoked_keys: key SHA256:") >= 1);
}

/// Review L3: a certificate signed with `-O no-pty` gets no PTY, and the
/// refusal is audited. OpenSSH's client treats a PTY it asked for
/// explicitly (`-t`, `-tt`) and was refused as fatal (clientloop.c,
/// `client_status_confirm`: "If a TTY was explicitly requested, then a
/// failure to allocate one is fatal"), as against sshd with `no-pty`: so
/// `-tt` ends with "PTY allocation request failed" and nothing runs on a
/// terminal, while the same certificate without `-t` runs its command.
#[test]
fn a_certificate_without_permit_pty_gets_no_pty() {
    let f = fixture();
    let key = signed_key(
        "no-pty",
        "ca",
        "admin",
        "-5m:+1h",
        &["-O", "no-pty", "-O", "extension:groups@portcullis=admins"],
    );
    let ssh = |args: &[&str]| {
        let mut cmd = f.gateway.ssh_batch(
            &format!("root@{}", f.container.name),
            &key,
            Some(&cert_of(&key)),
        );
        cmd.args(args);
        run_ssh(&mut cmd, b"")
    };
    let r = ssh(&["-tt", "tty"]);
    assert!(
        r.stderr.contains("PTY allocation request failed"),
        "{}\n{}",
        r.stderr,
        f.gateway.log()
    );
    assert_eq!(r.code, 255);
    assert!(r.stdout.is_empty(), "{:?}", r.stdout);
    let r = ssh(&["tty"]);
    assert_eq!(r.stdout, b"not a tty\n", "{}", r.stderr);
    let refused = f.gateway.audit_events().into_iter().any(|e| {
        e["principal"] == "cert:admin" && e["detail"].as_str().unwrap_or("").contains("permit-pty")
    });
    assert!(refused, "the refused PTY is audited");
}
