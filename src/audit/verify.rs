//! Signing the audit chain's head and verifying the whole evidence: the
//! chain, the signed heads and every recording.

use std::path::Path;

use russh::keys::ssh_key::{LineEnding, SshSig};
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use serde::Serialize;

use crate::store::{ChainHead, GENESIS_HASH, Store, StoreError};

/// SSHSIG namespace of chain-head signatures (OpenSSH `PROTOCOL.sshsig`).
pub const SIGNATURE_NAMESPACE: &str = "portcullis-audit@portcullis";

/// The signed message for a head: `portcullis-audit-head\n{id}\n{hash}\n`.
fn head_message(head: &ChainHead) -> String {
    format!(
        "portcullis-audit-head\n{}\n{}\n",
        head.event_id, head.event_hash
    )
}

/// Signs chain heads with the gateway's ed25519 host key.
pub struct AuditSigner {
    key: PrivateKey,
    public_key: String,
}

impl AuditSigner {
    /// A signer with `key`.
    ///
    /// # Errors
    /// [`StoreError::Query`] never; a key that cannot be encoded gives an
    /// empty public key and signatures that do not verify.
    pub fn new(key: PrivateKey) -> AuditSigner {
        let public_key = key.public_key().to_openssh().unwrap_or_default();
        AuditSigner { key, public_key }
    }

    /// Signs the current head (nothing when the log is empty or the head is
    /// already signed); returns the signed head's event id.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails; a signing failure is
    /// reported as [`StoreError::Query`] with a protocol error.
    pub async fn sign_head(&self, store: &Store) -> Result<Option<i64>, StoreError> {
        let Some(head) = store.chain_head().await? else {
            return Ok(None);
        };
        if let Some(last) = store.signed_heads().await?.last()
            && last.event_id == head.event_id
            && last.event_hash == head.event_hash
        {
            return Ok(Some(head.event_id));
        }
        let signature = self
            .sign_message(SIGNATURE_NAMESPACE, head_message(&head).as_bytes())
            .map_err(|e| {
                StoreError::Query(sqlx::Error::Protocol(format!("signing failed: {e}")))
            })?;
        store
            .insert_signed_head(&head, &self.public_key, &signature)
            .await?;
        Ok(Some(head.event_id))
    }

    /// Signs `message` as an armored SSHSIG (OpenSSH `PROTOCOL.sshsig`,
    /// SHA-512) in `namespace`: chain heads, recording manifests.
    ///
    /// # Errors
    /// ssh-key's signing or encoding error.
    pub fn sign_message(
        &self,
        namespace: &str,
        message: &[u8],
    ) -> Result<String, russh::keys::ssh_key::Error> {
        self.key
            .sign(namespace, HashAlg::Sha512, message)
            .and_then(|sig| sig.to_pem(LineEnding::LF))
    }

    /// The signing key, OpenSSH public key format.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }
}

/// Checks an armored SSHSIG over `message` in `namespace` by `public_key`
/// (OpenSSH format).
///
/// # Errors
/// What is wrong: the key, the signature's encoding, or the signature.
pub fn check_sshsig(
    public_key: &str,
    namespace: &str,
    message: &[u8],
    signature: &str,
) -> Result<(), String> {
    let key = PublicKey::from_openssh(public_key).map_err(|e| format!("bad public key: {e}"))?;
    let sig = SshSig::from_pem(signature).map_err(|e| format!("bad signature encoding: {e}"))?;
    key.verify(namespace, message, &sig)
        .map_err(|e| format!("signature does not verify: {e}"))
}

/// A recording that does not match its records.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordingProblem {
    /// The session.
    pub session_id: String,
    /// What does not match.
    pub problem: String,
}

/// A signed head that does not check out.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SignatureProblem {
    /// Row id of the signature.
    pub signature_id: i64,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub events: usize,
    /// Recordings checked.
    pub recordings: usize,
    /// Signed heads checked.
    pub signatures: usize,
    /// The first event that breaks the chain (`(event id, problem)`).
    pub first_bad_event: Option<(i64, String)>,
    /// Every recording that does not match.
    pub bad_recordings: Vec<RecordingProblem>,
    /// Every signed head that does not check out.
    pub bad_signatures: Vec<SignatureProblem>,
}

impl VerifyReport {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.first_bad_event.is_none()
            && self.bad_recordings.is_empty()
            && self.bad_signatures.is_empty()
    }
}

/// Checks the chain (ids 1, 2, ... without gaps, each `prev_hash` the hash
/// of the row before, each hash recomputed), every signed head (its event
/// exists with that hash, the SSHSIG verifies, and, when `gateway_key` is
/// given, it is that key), and every ended session's recording (file
/// SHA-256 equals the row's and the one in its `session_end` event).
///
/// Limit: events appended after the last signed head can be cut from the
/// end of the log without breaking the chain; signing at shutdown and at
/// intervals bounds that window.
///
/// # Errors
/// [`StoreError`] when the database cannot be read.
pub async fn verify(
    store: &Store,
    gateway_key: Option<&PublicKey>,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let events = store.audit_events(None).await?;
    report.events = events.len();
    let mut prev_hash = GENESIS_HASH.to_string();
    for (index, row) in events.iter().enumerate() {
        let expected_id = index as i64 + 1;
        let problem = if row.id != expected_id {
            Some((
                expected_id,
                format!("event {expected_id} is missing (next is {})", row.id),
            ))
        } else if row.prev_hash != prev_hash {
            Some((
                row.id,
                format!("event {} does not follow event {}", row.id, row.id - 1),
            ))
        } else if row.computed_hash() != row.hash {
            Some((row.id, format!("event {} was altered", row.id)))
        } else {
            None
        };
        if let Some(p) = problem {
            report.first_bad_event = Some(p);
            break;
        }
        prev_hash = row.hash.clone();
    }

    let by_id: std::collections::HashMap<i64, &str> =
        events.iter().map(|e| (e.id, e.hash.as_str())).collect();
    for signed in store.signed_heads().await? {
        report.signatures += 1;
        let head = ChainHead {
            event_id: signed.event_id,
            event_hash: signed.event_hash.clone(),
        };
        let problem = match by_id.get(&signed.event_id) {
            None => Some(format!("signed event {} is missing", signed.event_id)),
            Some(h) if *h != signed.event_hash => {
                Some(format!("signed event {} was altered", signed.event_id))
            }
            Some(_) => check_signature(&signed.public_key, &signed.signature, &head, gateway_key),
        };
        if let Some(problem) = problem {
            report.bad_signatures.push(SignatureProblem {
                signature_id: signed.id,
                problem,
            });
        }
    }

    let ended_digests: std::collections::HashMap<String, String> = events
        .iter()
        .filter(|e| e.kind == "session_end")
        .filter_map(|e| {
            let detail: serde_json::Value = serde_json::from_str(&e.detail).ok()?;
            let sha = detail.get("recording_sha256")?.as_str()?.to_string();
            Some((e.session_id.clone()?, sha))
        })
        .collect();
    for session in store.list_sessions(i64::MAX).await? {
        let Some(row_sha) = session.recording_sha256.clone().filter(|s| !s.is_empty()) else {
            continue;
        };
        report.recordings += 1;
        let problem = match crate::recording::digest_file(Path::new(&session.recording_path)) {
            Err(e) => Some(format!("recording unreadable: {e}")),
            Ok(d) if d.sha256 != row_sha => Some(format!(
                "recording SHA-256 {} differs from the session row's {row_sha}",
                d.sha256
            )),
            Ok(d) => match ended_digests.get(&session.id) {
                None => Some("no session_end audit event holds its digest".to_string()),
                Some(audited) if *audited != d.sha256 => Some(format!(
                    "recording SHA-256 {} differs from the audited {audited}",
                    d.sha256
                )),
                Some(_) => None,
            },
        };
        if let Some(problem) = problem {
            report.bad_recordings.push(RecordingProblem {
                session_id: session.id,
                problem,
            });
        }
    }
    Ok(report)
}

fn check_signature(
    public_key: &str,
    signature: &str,
    head: &ChainHead,
    gateway_key: Option<&PublicKey>,
) -> Option<String> {
    if let Some(gateway) = gateway_key {
        match PublicKey::from_openssh(public_key) {
            Err(e) => return Some(format!("bad public key: {e}")),
            Ok(key) if gateway.key_data() != key.key_data() => {
                return Some("signed with a key that is not the gateway's".to_string());
            }
            Ok(_) => {}
        }
    }
    check_sshsig(
        public_key,
        SIGNATURE_NAMESPACE,
        head_message(head).as_bytes(),
        signature,
    )
    .err()
}
