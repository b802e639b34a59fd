//! KRL parser tests: KRLs built here section by section (PROTOCOL.krl),
//! certificates signed with `ssh-key`, and a mutation fuzz. Real
//! `ssh-keygen -k` output is checked in `tests/krl_and_permits.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use russh::keys::ssh_key::certificate::Builder;
use russh::keys::{Algorithm, PrivateKey};

use super::*;

fn key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

fn cert(ca: &PrivateKey, subject: &PrivateKey, serial: u64, id: &str) -> Certificate {
    let mut b = Builder::new(
        vec![7u8; 32],
        subject.public_key().key_data().clone(),
        0,
        u64::MAX >> 1,
    )
    .unwrap();
    b.serial(serial).unwrap();
    b.key_id(id).unwrap();
    b.valid_principal("alice").unwrap();
    b.sign(ca).unwrap()
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn header() -> Vec<u8> {
    let mut k = MAGIC.to_vec();
    k.extend_from_slice(&1u32.to_be_bytes());
    k.extend_from_slice(&3u64.to_be_bytes()); // krl_version
    k.extend_from_slice(&1_700_000_000u64.to_be_bytes()); // generated_date
    k.extend_from_slice(&0u64.to_be_bytes()); // flags
    string(&mut k, b""); // reserved
    string(&mut k, b"test KRL"); // comment
    k
}

fn section(krl: &mut Vec<u8>, kind: u8, body: &[u8]) {
    krl.push(kind);
    string(krl, body);
}

fn blob_of(k: &PrivateKey) -> Vec<u8> {
    k.public_key().to_bytes().unwrap()
}

/// A certificate section for `ca` (`None`: every CA) with subsections.
fn certs(ca: Option<&PrivateKey>, subs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, &ca.map(blob_of).unwrap_or_default());
    string(&mut body, b"");
    for (kind, data) in subs {
        body.push(*kind);
        string(&mut body, data);
    }
    body
}

fn u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

#[test]
fn serials_key_ids_and_cas() {
    let ca = key();
    let other_ca = key();
    let user = key();
    let mut bitmap = 5u64.to_be_bytes().to_vec(); // serial_offset 5
    // Bits 0 and 9 set: serials 5 and 14 (mpint with a leading zero).
    string(&mut bitmap, &[0x00, 0x02, 0x01]);
    let mut krl = header();
    section(
        &mut krl,
        SECTION_CERTIFICATES,
        &certs(
            Some(&ca),
            &[
                (CERT_SERIAL_LIST, u64s(&[42, 43])),
                (CERT_SERIAL_RANGE, u64s(&[100, 200])),
                (CERT_SERIAL_BITMAP, bitmap),
                (CERT_KEY_ID, {
                    let mut ids = Vec::new();
                    string(&mut ids, b"mallory@laptop");
                    ids
                }),
            ],
        ),
    );
    section(
        &mut krl,
        SECTION_CERTIFICATES,
        &certs(
            None,
            &[(CERT_KEY_ID, {
                let mut ids = Vec::new();
                string(&mut ids, b"everywhere");
                ids
            })],
        ),
    );
    let krl = Krl::parse(&krl).unwrap();
    for serial in [42, 43, 100, 150, 200, 5, 14] {
        assert!(
            matches!(krl.check_certificate(&cert(&ca, &user, serial, "ok")), Err(KrlError::Revoked(m)) if m.contains("serial")),
            "{serial}"
        );
    }
    for serial in [0, 1, 41, 44, 99, 201, 6, 13, 15, 4, u64::MAX] {
        krl.check_certificate(&cert(&ca, &user, serial, "ok"))
            .unwrap();
    }
    // Serials are per CA; key ids in a CA-less section apply to every CA.
    krl.check_certificate(&cert(&other_ca, &user, 42, "ok"))
        .unwrap();
    assert!(
        krl.check_certificate(&cert(&ca, &user, 0, "mallory@laptop"))
            .is_err()
    );
    krl.check_certificate(&cert(&other_ca, &user, 0, "mallory@laptop"))
        .unwrap();
    assert!(
        krl.check_certificate(&cert(&other_ca, &user, 7, "everywhere"))
            .is_err()
    );
}

#[test]
fn explicit_keys_hashes_and_revoked_cas() {
    let (a, b, c, d, ca) = (key(), key(), key(), key(), key());
    let mut explicit = Vec::new();
    string(&mut explicit, &blob_of(&a));
    let mut sha256 = Vec::new();
    let fp = b.public_key().fingerprint(HashAlg::Sha256);
    string(&mut sha256, fp.as_bytes());
    let mut sha1 = Vec::new();
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &blob_of(&c));
    string(&mut sha1, digest.as_ref());
    let mut revoked_ca = Vec::new();
    string(&mut revoked_ca, &blob_of(&ca));
    let mut krl = header();
    section(&mut krl, SECTION_EXPLICIT_KEY, &explicit);
    section(&mut krl, SECTION_FINGERPRINT_SHA256, &sha256);
    section(&mut krl, SECTION_FINGERPRINT_SHA1, &sha1);
    let parsed = Krl::parse(&krl).unwrap();
    for k in [&a, &b, &c] {
        assert!(parsed.check_key(k.public_key().key_data()).is_err());
    }
    parsed.check_key(d.public_key().key_data()).unwrap();
    // A certificate of a revoked key is revoked too.
    let good_ca = key();
    assert!(
        parsed
            .check_certificate(&cert(&good_ca, &a, 1, "x"))
            .is_err()
    );
    parsed
        .check_certificate(&cert(&good_ca, &d, 1, "x"))
        .unwrap();
    // A revoked CA revokes every certificate it signed.
    section(&mut krl, SECTION_EXPLICIT_KEY, &revoked_ca);
    let parsed = Krl::parse(&krl).unwrap();
    let err = parsed
        .check_certificate(&cert(&ca, &d, 9, "x"))
        .unwrap_err();
    assert!(err.to_string().contains("its CA"), "{err}");
}

#[test]
fn unknown_critical_or_signed_lists_are_unusable() {
    let mut ext = Vec::new();
    string(&mut ext, b"future@openssh.com");
    ext.push(0);
    string(&mut ext, b"data");
    let mut krl = header();
    section(&mut krl, SECTION_EXTENSION, &ext);
    assert!(
        Krl::parse(&krl).is_ok(),
        "a non-critical extension is skipped"
    );
    let mut critical = ext.clone();
    let flag = 4 + b"future@openssh.com".len();
    critical[flag] = 1;
    let mut krl = header();
    section(&mut krl, SECTION_EXTENSION, &critical);
    assert!(
        Krl::parse(&krl)
            .unwrap_err()
            .to_string()
            .contains("critical")
    );
    for kind in [SECTION_SIGNATURE, 6, 0x20] {
        let mut krl = header();
        section(&mut krl, kind, b"");
        assert!(Krl::parse(&krl).is_err(), "{kind}");
    }
    // Trailing bytes inside a section, a hash of the wrong size, a
    // reversed range, another format version.
    let mut krl = header();
    section(&mut krl, SECTION_EXPLICIT_KEY, &[0, 0, 0, 1, 9, 9]);
    assert!(Krl::parse(&krl).is_err());
    let mut krl = header();
    let mut short = Vec::new();
    string(&mut short, &[1; 31]);
    section(&mut krl, SECTION_FINGERPRINT_SHA256, &short);
    assert!(Krl::parse(&krl).is_err());
    let mut krl = header();
    section(
        &mut krl,
        SECTION_CERTIFICATES,
        &certs(None, &[(CERT_SERIAL_RANGE, u64s(&[9, 3]))]),
    );
    assert!(Krl::parse(&krl).is_err());
    let mut krl = header();
    krl[11] = 2;
    assert!(
        Krl::parse(&krl)
            .unwrap_err()
            .to_string()
            .contains("version")
    );
}

#[test]
fn a_text_list_of_public_keys_is_accepted_too() {
    let (a, b) = (key(), key());
    let text = format!("# revoked\n\n{}\n", a.public_key().to_openssh().unwrap());
    let krl = Krl::parse(text.as_bytes()).unwrap();
    assert!(krl.check_key(a.public_key().key_data()).is_err());
    krl.check_key(b.public_key().key_data()).unwrap();
    assert!(Krl::parse(b"not a key\n").is_err());
    assert!(Krl::parse(&[0xff, 0xfe]).is_err());
}

/// Every prefix of a valid KRL and a few thousand random mutations parse
/// or fail with an error: never a panic, never unbounded work.
#[test]
fn truncations_and_mutations_never_panic() {
    let ca = key();
    let user = key();
    let mut bitmap = 0u64.to_be_bytes().to_vec();
    string(&mut bitmap, &[0x7f; 40]);
    let mut keys = Vec::new();
    string(&mut keys, &blob_of(&user));
    let mut krl = header();
    section(
        &mut krl,
        SECTION_CERTIFICATES,
        &certs(
            Some(&ca),
            &[
                (CERT_SERIAL_LIST, u64s(&[1, 2, 3])),
                (CERT_SERIAL_RANGE, u64s(&[10, 20])),
                (CERT_SERIAL_BITMAP, bitmap),
            ],
        ),
    );
    section(&mut krl, SECTION_EXPLICIT_KEY, &keys);
    Krl::parse(&krl).unwrap();
    for n in 0..krl.len() {
        let _ = Krl::parse(&krl[..n]);
    }
    let probe = cert(&ca, &key(), 15, "probe");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..5000 {
        let mut m = krl.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % m.len() as u64) as usize;
            match next() % 3 {
                0 => m[i] = next() as u8,
                1 => m[i] ^= 1 << (next() % 8),
                _ => m[i] = [0x00, 0xff, 0x7f, 0x80][(next() % 4) as usize],
            }
        }
        if let Ok(parsed) = Krl::parse(&m) {
            let _ = parsed.check_certificate(&probe);
        }
    }
}

#[test]
fn the_file_is_read_again_when_it_changes_and_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revoked");
    let revoked = RevokedKeys::at(&path);
    let a = key();
    // Missing file: every key is refused.
    assert!(matches!(
        revoked.check_key(a.public_key().key_data()),
        Err(KrlError::Read { .. })
    ));
    std::fs::write(&path, header()).unwrap();
    let started = Instant::now();
    while revoked.check_key(a.public_key().key_data()).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut krl = header();
    let mut keys = Vec::new();
    string(&mut keys, &blob_of(&a));
    section(&mut krl, SECTION_EXPLICIT_KEY, &keys);
    // Replace the file as an operator's script would (new inode).
    std::fs::write(dir.path().join("revoked.new"), &krl).unwrap();
    std::fs::rename(dir.path().join("revoked.new"), &path).unwrap();
    let started = Instant::now();
    while revoked.check_key(a.public_key().key_data()).is_ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(
        revoked.check_key(a.public_key().key_data()),
        Err(KrlError::Revoked(_))
    ));
    // A broken file refuses everyone, the other key included.
    std::fs::write(&path, b"SSHKRL\n\0garbage").unwrap();
    let b = key();
    let started = Instant::now();
    while !matches!(
        revoked.check_key(b.public_key().key_data()),
        Err(KrlError::Parse(_))
    ) {
        assert!(started.elapsed() < Duration::from_secs(10), "not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    RevokedKeys::none()
        .check_key(b.public_key().key_data())
        .unwrap();
}
