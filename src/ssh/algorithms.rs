//! The algorithms the SSH server offers (issue 19): key exchange, host
//! key, cipher, MAC and compression lists, in order of preference.
//!
//! They follow OpenSSH 9.x's server defaults (`sshd_config(5)`,
//! `KexAlgorithms`, `Ciphers`, `MACs`, `Compression`), narrowed to what
//! `ssh-audit` passes without a warning and what russh implements:
//!
//! - key exchange: post-quantum hybrid `mlkem768x25519-sha256`, then
//!   `curve25519-sha256` (RFC 8731, and its `@libssh.org` alias), then the
//!   4096- and 8192-bit MODP groups (RFC 8268); no SHA-1, no group
//!   exchange (its moduli are the server's choice and can be 2048 bits)
//!   and no 2048-bit group 14;
//! - strict key exchange (`kex-strict-s-v00@openssh.com`, OpenSSH
//!   PROTOCOL, the Terrapin fix) and RFC 8308 `ext-info-s`;
//! - ciphers: AEAD first (`chacha20-poly1305@openssh.com`,
//!   `aes256-gcm@openssh.com`, `aes128-gcm@openssh.com`), then AES-CTR;
//!   never CBC, 3DES or `none`;
//! - MACs (used only with the CTR ciphers): encrypt-then-MAC SHA-2 only;
//!   no SHA-1, no encrypt-and-MAC;
//! - compression: `none` or `zlib@openssh.com`, which starts only after
//!   authentication (OpenSSH PROTOCOL §2.2); never RFC 4253 `zlib`, which
//!   would decompress attacker-chosen data before anyone has logged in;
//! - the identification string ([`server_id`]) announces OpenSSH's SFTP
//!   symlink argument order;
//! - host key and `server-sig-algs`: Ed25519, ECDSA, RSA with SHA-2; never
//!   `ssh-rsa` (SHA-1 signatures, off by default since OpenSSH 8.8).
//!
//! This module only lists names; it must never enable an algorithm that
//! `tests/ext/ssh-audit/portcullis.policy` does not list (the `ext_ssh_audit`
//! test fails on any drift between the two).

use std::borrow::Cow;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use russh::{Preferred, cipher, compression, kex, mac};

/// Key exchange methods, most preferred first (plus the strict-kex and
/// ext-info markers, which russh sends only on the server's side).
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::DH_G16_SHA512,
    kex::DH_G18_SHA512,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// Host key and user signature algorithms.
const KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// Ciphers, both directions.
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// MACs, both directions (AEAD ciphers carry their own).
const MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

/// Compression, both directions: none, or zlib deferred until after
/// authentication.
const COMPRESSION: &[compression::Name] = &[compression::NONE, compression::ZLIB_LEGACY];

/// The identification string the server sends (RFC 4253 §4.2:
/// `SSH-2.0-softwareversion SP comments`). The comment says that SFTP
/// `SSH_FXP_SYMLINK` takes its arguments in OpenSSH's order (target, then
/// link: OpenSSH PROTOCOL §4.1 notes they are reversed from the draft),
/// as the built-in SFTP server does; clients that follow the draft
/// (asyncssh) look for "OpenSSH" in the server's string to swap them.
/// The software version itself stays `Portcullis_VERSION`, so version
/// scanners (ssh-audit) never take the server for OpenSSH.
pub fn server_id() -> String {
    format!(
        "SSH-2.0-Portcullis_{} OpenSSH-compatible-sftp",
        env!("CARGO_PKG_VERSION")
    )
}

/// The server's algorithm lists, for `russh::server::Config::preferred`.
pub fn preferred() -> Preferred {
    Preferred {
        kex: Cow::Borrowed(KEX),
        key: Cow::Borrowed(KEYS),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(MACS),
        compression: Cow::Borrowed(COMPRESSION),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Every name offered, in the spelling ssh-audit's policy uses.
    fn names(p: &Preferred) -> Vec<String> {
        let mut out: Vec<String> = p.kex.iter().map(|k| k.as_ref().to_string()).collect();
        out.extend(p.cipher.iter().map(|c| c.as_ref().to_string()));
        out.extend(p.mac.iter().map(|m| m.as_ref().to_string()));
        out.extend(p.compression.iter().map(|c| c.as_ref().to_string()));
        out.extend(p.key.iter().map(|k| k.to_string()));
        out
    }

    #[test]
    fn nothing_weak_is_offered() {
        let all = names(&preferred());
        for n in &all {
            assert!(!n.contains("sha1"), "{n}");
            assert!(!n.ends_with("-cbc"), "{n}");
            assert!(!n.contains("group1-") && !n.contains("group14"), "{n}");
            assert!(!n.contains("group-exchange"), "{n}");
            assert_ne!(n, "zlib", "zlib before authentication");
            assert_ne!(n, "ssh-rsa", "SHA-1 RSA signatures");
        }
        let p = preferred();
        assert!(!p.cipher.iter().any(|c| c.as_ref() == "none"));
        assert!(!p.mac.iter().any(|m| m.as_ref() == "none"));
        assert!(all.iter().any(|n| n == "kex-strict-s-v00@openssh.com"));
        assert!(all.iter().any(|n| n == "zlib@openssh.com"));
    }

    #[test]
    fn the_policy_file_lists_exactly_these_algorithms() {
        let policy = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/ext/ssh-audit/portcullis.policy"
        ))
        .unwrap();
        let list = |key: &str| -> Vec<String> {
            let line = policy
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{key} =")))
                .unwrap_or_else(|| panic!("no {key} in the policy"));
            line.split_once('=')
                .unwrap()
                .1
                .split(',')
                .map(|s| s.trim().to_string())
                .collect()
        };
        let p = preferred();
        let kex: Vec<String> = p.kex.iter().map(|k| k.as_ref().to_string()).collect();
        assert_eq!(list("key exchanges"), kex);
        let ciphers: Vec<String> = p.cipher.iter().map(|c| c.as_ref().to_string()).collect();
        assert_eq!(list("ciphers"), ciphers);
        let macs: Vec<String> = p.mac.iter().map(|m| m.as_ref().to_string()).collect();
        assert_eq!(list("macs"), macs);
        let compression: Vec<String> = p
            .compression
            .iter()
            .map(|c| c.as_ref().to_string())
            .collect();
        assert_eq!(list("compressions"), compression);
    }
}
