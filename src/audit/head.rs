//! Signed chain heads: the message a head signs, its digest (which the next
//! head names, chaining the heads), its portable JSON form (anchors,
//! exports, bundles) and the keys a verifier trusts.
//!
//! Never decides what a head means for the log (that is `check.rs`); never
//! reads the database.
//!
//! # The signed message (version 2)
//!
//! UTF-8, lines ending in `\n`, signed as an SSHSIG (OpenSSH
//! `PROTOCOL.sshsig`, namespace [`SIGNATURE_NAMESPACE`], SHA-512):
//!
//! ```text
//! portcullis-audit-head-v2
//! seq 7
//! at 1796111294123
//! gateway "gw-a"
//! event 1532
//! hash 5f0c...e1
//! reason interval
//! prev 9a41...07
//! ```
//!
//! `gateway` is a JSON string; `prev` is the digest of head `seq - 1`
//! (64 zeros for the first): lowercase hex SHA-256 of that head's signed
//! message followed by its armored signature. Version 1 heads (before
//! migration 0008) signed `portcullis-audit-head\n{event}\n{hash}\n`.

use russh::keys::ssh_key::SshSig;
use russh::keys::{HashAlg, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{GENESIS_HASH, SignedHead};

/// SSHSIG namespace of chain-head signatures (OpenSSH `PROTOCOL.sshsig`).
pub const SIGNATURE_NAMESPACE: &str = "portcullis-audit@portcullis";

/// `schema` of a head's JSON form (anchor files, export lines, bundles).
pub const HEAD_SCHEMA: &str = "portcullis.audit-head.v1";

/// `prev_digest` of the first head of the chain of heads: 64 zeros.
pub const GENESIS_DIGEST: &str = GENESIS_HASH;

/// The exact bytes `head` signs (see the module docs).
pub fn signed_message(head: &SignedHead) -> String {
    if head.version < 2 {
        return format!(
            "portcullis-audit-head\n{}\n{}\n",
            head.event_id, head.event_hash
        );
    }
    format!(
        "portcullis-audit-head-v2\nseq {}\nat {}\ngateway {}\nevent {}\nhash {}\nreason {}\nprev {}\n",
        head.seq.unwrap_or(0),
        head.at,
        serde_json::Value::String(head.gateway.clone()),
        head.event_id,
        head.event_hash,
        head.reason,
        head.prev_digest
    )
}

/// The digest the next head names: lowercase hex SHA-256 of the signed
/// message followed by the armored signature.
pub fn head_digest(head: &SignedHead) -> String {
    let mut hasher = Sha256::new();
    hasher.update(signed_message(head).as_bytes());
    hasher.update(head.signature.as_bytes());
    hex::encode(hasher.finalize())
}

/// A signed head as written outside the database: one JSON object (an
/// anchor file, an export line, a bundle line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnchoredHead {
    /// Always [`HEAD_SCHEMA`].
    pub schema: String,
    /// 1 or 2 (see the module docs).
    pub version: i64,
    /// Place in the chain of heads (version 2).
    pub seq: Option<i64>,
    /// When it was signed, unix ms.
    pub at: i64,
    /// The same as RFC 3339 UTC, for people.
    pub time: String,
    /// The signing gateway.
    pub gateway: String,
    /// The signed event.
    pub event_id: i64,
    /// The signed event's chain hash.
    pub event_hash: String,
    /// `start` or `interval`.
    pub reason: String,
    /// Digest of the head before it.
    pub prev_digest: String,
    /// The signer's OpenSSH public key line.
    pub public_key: String,
    /// The armored SSHSIG.
    pub signature: String,
}

impl AnchoredHead {
    /// The JSON form of a stored head.
    pub fn of(head: &SignedHead) -> AnchoredHead {
        AnchoredHead {
            schema: HEAD_SCHEMA.to_string(),
            version: head.version,
            seq: head.seq,
            at: head.at,
            time: super::export::rfc3339_ms(head.at),
            gateway: head.gateway.clone(),
            event_id: head.event_id,
            event_hash: head.event_hash.clone(),
            reason: head.reason.clone(),
            prev_digest: head.prev_digest.clone(),
            public_key: head.public_key.clone(),
            signature: head.signature.clone(),
        }
    }

    /// Back to the stored form (row id 0: not from a database).
    pub fn to_signed_head(&self) -> SignedHead {
        SignedHead {
            id: 0,
            at: self.at,
            event_id: self.event_id,
            event_hash: self.event_hash.clone(),
            public_key: self.public_key.clone(),
            signature: self.signature.clone(),
            version: self.version,
            seq: self.seq,
            gateway: self.gateway.clone(),
            reason: self.reason.clone(),
            prev_digest: self.prev_digest.clone(),
        }
    }
}

/// One key a verifier trusts, with where it came from.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// Where it came from: `host key`, `audit.trusted_keys[1]`,
    /// `--trusted-key`, ...
    pub source: String,
}

/// The signing keys a verifier accepts. Empty: no signature is accepted.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Adds `key` (from `source`).
    pub fn add(&mut self, key: PublicKey, source: &str) {
        self.keys.push(TrustedKey {
            key,
            source: source.to_string(),
        });
    }

    /// Adds the key of an OpenSSH public key line.
    ///
    /// # Errors
    /// The line does not parse (the parser's message).
    pub fn add_line(&mut self, line: &str, source: &str) -> Result<(), String> {
        let key = PublicKey::from_openssh(line.trim()).map_err(|e| e.to_string())?;
        self.add(key, source);
        Ok(())
    }

    /// Where `key` is trusted from, `None` when it is not trusted.
    pub fn source_of(&self, key: &PublicKey) -> Option<&str> {
        self.keys
            .iter()
            .find(|t| t.key.key_data() == key.key_data())
            .map(|t| t.source.as_str())
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }
}

/// `SHA256:...` fingerprint of an OpenSSH public key line, or the parse
/// error.
pub fn fingerprint_of(line: &str) -> String {
    match PublicKey::from_openssh(line.trim()) {
        Ok(k) => k.fingerprint(HashAlg::Sha256).to_string(),
        Err(e) => format!("(not a public key: {e})"),
    }
}

/// Checks an armored SSHSIG (OpenSSH `PROTOCOL.sshsig`) over `message` in
/// `namespace` by `public_key` (an OpenSSH public key line): recording
/// manifests ([`crate::recording`]) are checked with it.
///
/// # Errors
/// What is wrong: the key, the signature's encoding, or the signature.
pub fn check_sshsig(
    public_key: &str,
    namespace: &str,
    message: &[u8],
    signature: &str,
) -> Result<(), String> {
    let key =
        PublicKey::from_openssh(public_key.trim()).map_err(|e| format!("bad public key: {e}"))?;
    let sig = SshSig::from_pem(signature).map_err(|e| format!("bad signature encoding: {e}"))?;
    key.verify(namespace, message, &sig)
        .map_err(|e| format!("signature does not verify: {e}"))
}

/// Checks that `head` is signed by a trusted key and that the signature
/// verifies over its message; `Err` says what is wrong.
///
/// # Errors
/// A line naming the failed step: key encoding, untrusted key, signature
/// encoding, verification.
pub fn check_signature(head: &SignedHead, trusted: &TrustedKeys) -> Result<(), String> {
    let key = PublicKey::from_openssh(head.public_key.trim())
        .map_err(|e| format!("bad public key: {e}"))?;
    if trusted.source_of(&key).is_none() {
        return Err(format!(
            "signed by {} ({}), a key that is not trusted (add it to audit.trusted_keys)",
            key.fingerprint(HashAlg::Sha256),
            if head.gateway.is_empty() {
                "unknown gateway"
            } else {
                head.gateway.as_str()
            }
        ));
    }
    let sig =
        SshSig::from_pem(&head.signature).map_err(|e| format!("bad signature encoding: {e}"))?;
    key.verify(SIGNATURE_NAMESPACE, signed_message(head).as_bytes(), &sig)
        .map_err(|e| format!("signature does not verify: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn head() -> SignedHead {
        SignedHead {
            id: 3,
            at: 1_796_111_294_123,
            event_id: 12,
            event_hash: "ab".repeat(32),
            public_key: String::new(),
            signature: "SIG".into(),
            version: 2,
            seq: Some(7),
            gateway: "gw-\"a\"\n".into(),
            reason: "interval".into(),
            prev_digest: GENESIS_DIGEST.into(),
        }
    }

    #[test]
    fn the_message_names_every_field_and_the_gateway_cannot_inject_lines() {
        let m = signed_message(&head());
        assert_eq!(
            m,
            format!(
                "portcullis-audit-head-v2\nseq 7\nat 1796111294123\ngateway \"gw-\\\"a\\\"\\n\"\n\
                 event 12\nhash {}\nreason interval\nprev {GENESIS_DIGEST}\n",
                "ab".repeat(32)
            )
        );
        let mut v1 = head();
        v1.version = 1;
        assert_eq!(
            signed_message(&v1),
            format!("portcullis-audit-head\n12\n{}\n", "ab".repeat(32))
        );
    }

    #[test]
    fn the_digest_covers_the_message_and_the_signature() {
        let base = head_digest(&head());
        let mut other = head();
        other.signature = "SIG2".into();
        assert_ne!(base, head_digest(&other));
        let mut other = head();
        other.at += 1;
        assert_ne!(base, head_digest(&other));
        let json = AnchoredHead::of(&head());
        assert_eq!(json.time, "2026-12-01T07:48:14.123Z");
        assert_eq!(head_digest(&json.to_signed_head()), base);
    }
}
