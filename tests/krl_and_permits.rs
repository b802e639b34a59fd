//! Real `ssh-keygen -k` revocation lists (OpenSSH PROTOCOL.krl) read by
//! the gateway's parser, checked against `ssh-keygen -Q` on the same keys
//! and certificates (a differential test), and the `permit-*` extensions
//! of real `ssh-keygen -s` certificates (issue 14, review finding L3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::gateway::{keygen, run};
use portcullis::identity::{CertificatePermits, Krl};
use russh::keys::ssh_key::{Certificate, PublicKey};

fn sign(dir: &Path, ca: &str, name: &str, serial: u64, id: &str, extra: &[&str]) -> PathBuf {
    let key = dir.join(name);
    keygen(&key);
    run(Command::new("ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(dir.join(ca))
        .args(["-I", id, "-n", "alice", "-z", &serial.to_string()])
        .args(extra)
        .arg(format!("{}.pub", key.display())));
    PathBuf::from(format!("{}-cert.pub", key.display()))
}

fn cert(path: &Path) -> Certificate {
    Certificate::from_openssh(std::fs::read_to_string(path).unwrap().trim()).unwrap()
}

fn plain(path: &Path) -> PublicKey {
    PublicKey::from_openssh(std::fs::read_to_string(path).unwrap().trim()).unwrap()
}

/// `ssh-keygen -Q -f KRL FILE`: true when it says revoked.
fn openssh_says_revoked(krl: &Path, file: &Path) -> bool {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(file)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => false,
        Some(1) => true,
        other => panic!(
            "ssh-keygen -Q: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn write_krl(dir: &Path, name: &str, ca: Option<&str>, spec: &str) -> PathBuf {
    let spec_file = dir.join(format!("{name}.spec"));
    std::fs::write(&spec_file, spec).unwrap();
    let krl = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.arg("-k").arg("-f").arg(&krl);
    if let Some(ca) = ca {
        cmd.arg("-s").arg(dir.join(ca));
    }
    run(cmd.arg(&spec_file));
    krl
}

#[test]
fn ssh_keygen_krls_agree_with_ssh_keygen_q() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    keygen(&dir.join("ca"));
    keygen(&dir.join("other-ca"));
    // Certificates: a listed serial, one in a range, dense serials that
    // ssh-keygen packs in a bitmap, a key id, and others that pass.
    let mut certs = vec![
        sign(dir, "ca", "s7", 7, "id-a", &[]),
        sign(dir, "ca", "s150", 150, "id-b", &[]),
        sign(dir, "ca", "s201", 201, "id-c", &[]),
        sign(dir, "ca", "s0", 0, "keyid-9", &[]),
        sign(dir, "ca", "s8", 8, "id-d", &[]),
        sign(dir, "other-ca", "o7", 7, "keyid-9", &[]),
    ];
    for s in (1000..1064).step_by(3) {
        certs.push(sign(dir, "ca", &format!("b{s}"), s, "id-bitmap", &[]));
    }
    certs.push(sign(dir, "ca", "b1001", 1001, "id-e", &[]));
    let bitmap: String = (1000..1064)
        .step_by(3)
        .map(|s| format!("serial: {s}\n"))
        .collect();
    let krl = write_krl(
        dir,
        "certs.krl",
        Some("ca.pub"),
        &format!("serial: 7\nserial: 100-200\nid: keyid-9\n{bitmap}"),
    );
    let parsed = Krl::parse(&std::fs::read(&krl).unwrap()).unwrap();
    let mut revoked = 0;
    for c in &certs {
        let ours = parsed.check_certificate(&cert(c)).is_err();
        assert_eq!(ours, openssh_says_revoked(&krl, c), "{}", c.display());
        revoked += usize::from(ours);
    }
    // 7, 150, the key id under this CA (serial 0), 22 bitmap serials.
    assert_eq!(revoked, 3 + 22);

    // Plain keys: explicit, by SHA-256 fingerprint (`hash:`), by SHA-1 and
    // SHA-256 of the key (`sha1:`, `sha256:`); and a revoked CA.
    for name in ["k-explicit", "k-hash", "k-sha1", "k-sha256", "k-fine"] {
        keygen(&dir.join(name));
    }
    let pub_text = |n: &str| std::fs::read_to_string(dir.join(format!("{n}.pub"))).unwrap();
    let fingerprint = String::from_utf8(
        run(Command::new("ssh-keygen")
            .arg("-lf")
            .arg(dir.join("k-hash.pub")))
        .stdout,
    )
    .unwrap()
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string();
    let keys_krl = write_krl(
        dir,
        "keys.krl",
        None,
        &format!(
            "{}hash: {fingerprint}\nsha1: {}sha256: {}{}",
            pub_text("k-explicit"),
            pub_text("k-sha1"),
            pub_text("k-sha256"),
            pub_text("other-ca"),
        ),
    );
    let parsed = Krl::parse(&std::fs::read(&keys_krl).unwrap()).unwrap();
    for name in ["k-explicit", "k-hash", "k-sha1", "k-sha256", "k-fine"] {
        let file = dir.join(format!("{name}.pub"));
        let ours = parsed.check_key(plain(&file).key_data()).is_err();
        assert_eq!(ours, openssh_says_revoked(&keys_krl, &file), "{name}");
        assert_eq!(ours, name != "k-fine", "{name}");
    }
    for c in &certs {
        let ours = parsed.check_certificate(&cert(c)).is_err();
        assert_eq!(ours, openssh_says_revoked(&keys_krl, c), "{}", c.display());
        assert_eq!(ours, c.ends_with("o7-cert.pub"), "{}", c.display());
    }
    // An empty KRL revokes nothing.
    let empty = dir.join("empty.krl");
    run(Command::new("ssh-keygen").arg("-k").arg("-f").arg(&empty));
    let parsed = Krl::parse(&std::fs::read(&empty).unwrap()).unwrap();
    assert!(parsed.check_certificate(&cert(&certs[0])).is_ok());
}

#[test]
fn permits_of_real_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    keygen(&dir.join("ca"));
    let default = sign(dir, "ca", "default", 1, "d", &[]);
    assert_eq!(
        CertificatePermits::of(&cert(&default)),
        CertificatePermits::ALL,
        "ssh-keygen -s permits everything by default"
    );
    let no_pty = sign(dir, "ca", "nopty", 2, "n", &["-O", "no-pty"]);
    let p = CertificatePermits::of(&cert(&no_pty));
    assert!(!p.pty && p.port_forwarding && p.agent_forwarding);
    let cleared = sign(
        dir,
        "ca",
        "clear",
        3,
        "c",
        &["-O", "clear", "-O", "permit-port-forwarding"],
    );
    let p = CertificatePermits::of(&cert(&cleared));
    assert_eq!(
        p.missing(),
        [
            "permit-pty",
            "permit-agent-forwarding",
            "permit-X11-forwarding",
            "permit-user-rc"
        ]
    );
}
