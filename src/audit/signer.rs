//! Signing the audit chain's head with the gateway's ed25519 host key and
//! anchoring each signed head outside the database as it is made.
//!
//! A head is signed under the audit append lock, chained to the head before
//! it (its digest is in the signed message), and only over a chain that
//! still holds the previous head and links to it: a gateway never seals a
//! log that was cut or rewritten under it. It remembers the newest head it
//! signed or saw (any gateway's; at start, the newest head in its anchor
//! directory) and refuses to sign when that head is gone from the
//! database.
//!
//! Never verifies old heads (that is `verify.rs`); never decides policy.

use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use tokio::sync::Mutex;

use super::AuditError;
use super::anchor::{AnchorSink, DirectorySink, ExportSink, ObjectStoreSink, newest_in_directory};
use super::head::{AnchoredHead, GENESIS_DIGEST, SIGNATURE_NAMESPACE, head_digest, signed_message};
use crate::config::Config;
use crate::store::{
    AuditRow, ChainHead, GENESIS_HASH, HeadSigning, NewSignedHead, SignedHead, Store, now_ms,
};

/// The last head this signer made or found anchored: its place and digest.
#[derive(Debug, Default)]
struct SignerState {
    last: Option<(i64, i64, String)>,
    started: bool,
}

/// Signs chain heads with the gateway's ed25519 host key and writes each to
/// the anchors.
pub struct AuditSigner {
    key: PrivateKey,
    public_key: String,
    gateway: String,
    sinks: Vec<Box<dyn AnchorSink>>,
    state: Mutex<SignerState>,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("gateway", &self.gateway)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// A signer with `key`, no gateway id and no anchor (tests, tools).
    pub fn new(key: PrivateKey) -> AuditSigner {
        let public_key = key.public_key().to_openssh().unwrap_or_default();
        AuditSigner {
            key,
            public_key,
            gateway: String::new(),
            sinks: Vec::new(),
            state: Mutex::new(SignerState::default()),
        }
    }

    /// The gateway's signer: gateway id from `config`, anchors in
    /// `audit.anchor_dir` (default `{state_dir}/audit-heads`), the export
    /// (`audit.export`) and `audit.anchor_url`; it remembers the newest head
    /// of the anchor directory, so a database cut while the gateway was
    /// stopped is refused at its first signature.
    ///
    /// # Errors
    /// [`AuditError::AnchorWrite`], [`AuditError::AnchorUrl`] or
    /// [`AuditError::AnchorRead`] when an anchor cannot be opened or read.
    pub fn for_gateway(key: PrivateKey, config: &Config) -> Result<AuditSigner, AuditError> {
        let dir = config.audit.anchor_dir_in(&config.state_dir);
        let mut signer = AuditSigner::new(key)
            .with_gateway(&config.gateway_id())
            .with_anchor_dir(&dir)?;
        if let Some(target) = &config.audit.export {
            signer = signer.with_sink(Box::new(ExportSink::open(target)?));
        }
        if let Some(url) = &config.audit.anchor_url {
            signer = signer.with_sink(Box::new(ObjectStoreSink::open(url)?));
        }
        Ok(signer)
    }

    /// Names the signing gateway in every head.
    pub fn with_gateway(mut self, gateway_id: &str) -> AuditSigner {
        self.gateway = gateway_id.to_string();
        self
    }

    /// Also writes every head to the directory `dir` (a [`DirectorySink`])
    /// and remembers its newest head: signing fails with
    /// [`AuditError::HeadMissing`] while the database lacks it.
    ///
    /// # Errors
    /// [`AuditError::AnchorWrite`] when `dir` cannot be created,
    /// [`AuditError::AnchorRead`] when its newest head cannot be read.
    pub fn with_anchor_dir(mut self, dir: &std::path::Path) -> Result<AuditSigner, AuditError> {
        let newest = newest_in_directory(dir)?;
        self.sinks.push(Box::new(DirectorySink::open(dir)?));
        if let Some(head) = newest
            && let Some(seq) = head.seq
        {
            self.state = Mutex::new(SignerState {
                last: Some((seq, head.event_id, head_digest(&head.to_signed_head()))),
                started: false,
            });
        }
        Ok(self)
    }

    /// Also writes every head to `sink`.
    pub fn with_sink(mut self, sink: Box<dyn AnchorSink>) -> AuditSigner {
        self.sinks.push(sink);
        self
    }

    /// Signs `message` as an armored SSHSIG (OpenSSH `PROTOCOL.sshsig`,
    /// SHA-512) in `namespace`: recording manifests are signed with it, by
    /// the key that signs chain heads.
    ///
    /// # Errors
    /// ssh-key's signing or encoding error.
    pub fn sign_message(
        &self,
        namespace: &str,
        message: &[u8],
    ) -> Result<String, russh::keys::ssh_key::Error> {
        self.key
            .sign(namespace, russh::keys::HashAlg::Sha512, message)
            .and_then(|sig| sig.to_pem(russh::keys::ssh_key::LineEnding::LF))
    }

    /// The signing key as an OpenSSH public key line.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Signs the current head (nothing when the log is empty or the head is
    /// already signed), chained to the newest head, and writes it to every
    /// anchor; returns the signed head's event id.
    ///
    /// # Errors
    /// - [`AuditError::HeadMissing`]: the last head this gateway signed or
    ///   anchored is gone from the database (nothing is signed);
    /// - [`AuditError::ChainBroken`]: the events since the newest head do
    ///   not chain to it (nothing is signed);
    /// - [`AuditError::AnchorWrite`] / [`AuditError::AnchorTaken`]: the head
    ///   is signed and stored but a sink did not take it;
    /// - [`AuditError::Database`], [`AuditError::Signing`].
    pub async fn sign_head(&self, store: &Store) -> Result<Option<i64>, AuditError> {
        let mut state = self.state.lock().await;
        let mut signing = store.begin_head_signing().await?;
        if let Some((seq, event_id, digest)) = state.last.clone() {
            match signing.head_at(seq).await? {
                Some(h) if head_digest(&h) == digest => {}
                found => {
                    return Err(AuditError::HeadMissing {
                        seq,
                        event_id,
                        found: if found.is_some() {
                            "different"
                        } else {
                            "missing"
                        },
                    });
                }
            }
        }
        let Some(head) = signing.head.clone() else {
            state.started = true;
            return Ok(None);
        };
        let last = signing.last.clone();
        if let Some(l) = &last
            && l.event_id == head.event_id
            && l.event_hash == head.event_hash
        {
            // Signed already (maybe by another gateway): guard that head
            // from now on too.
            if let Some(seq) = l.seq {
                state.last = Some((seq, l.event_id, head_digest(l)));
            }
            state.started = true;
            return Ok(Some(head.event_id));
        }
        check_segment(&mut signing, last.as_ref(), &head).await?;
        let new = SignedHead {
            id: 0,
            at: now_ms(),
            event_id: head.event_id,
            event_hash: head.event_hash.clone(),
            public_key: self.public_key.clone(),
            signature: String::new(),
            version: 2,
            seq: Some(last.as_ref().and_then(|l| l.seq).unwrap_or(0) + 1),
            gateway: self.gateway.clone(),
            reason: if state.started { "interval" } else { "start" }.to_string(),
            prev_digest: last
                .as_ref()
                .map(head_digest)
                .unwrap_or_else(|| GENESIS_DIGEST.to_string()),
        };
        let signature = self
            .key
            .sign(
                SIGNATURE_NAMESPACE,
                HashAlg::Sha512,
                signed_message(&new).as_bytes(),
            )
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .map_err(|e| AuditError::Signing(e.to_string()))?;
        let new = SignedHead { signature, ..new };
        let seq = new.seq.unwrap_or(1);
        signing
            .insert(&NewSignedHead {
                at: new.at,
                seq,
                head: &head,
                public_key: &new.public_key,
                signature: &new.signature,
                gateway: &new.gateway,
                reason: &new.reason,
                prev_digest: &new.prev_digest,
            })
            .await?;
        state.last = Some((seq, new.event_id, head_digest(&new)));
        state.started = true;
        let anchored = AnchoredHead::of(&new);
        let mut failure = None;
        for sink in &self.sinks {
            if let Err(e) = sink.put(&anchored).await {
                tracing::error!(error = %e, "cannot anchor signed head {seq}");
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Some(head.event_id)),
        }
    }
}

/// Checks that the events from the newest signed head (or the first event)
/// to `head` chain: the signed event unchanged, ids without gaps, each
/// `prev_hash` the hash before, each hash recomputed.
async fn check_segment(
    signing: &mut HeadSigning,
    last: Option<&SignedHead>,
    head: &ChainHead,
) -> Result<(), AuditError> {
    let broken = |event_id: i64, problem: String| AuditError::ChainBroken { event_id, problem };
    let first = last.map(|l| l.event_id).unwrap_or(1);
    if head.event_id < first {
        return Err(broken(
            head.event_id + 1,
            format!(
                "the newest event is {} but event {first} is signed",
                head.event_id
            ),
        ));
    }
    let rows: Vec<AuditRow> = signing.events_from(first).await?;
    let mut prev: Option<&AuditRow> = None;
    for (i, row) in rows.iter().enumerate() {
        let expected = first + i as i64;
        if row.id != expected {
            return Err(broken(expected, format!("event {expected} is missing")));
        }
        match (prev, last) {
            (None, Some(l)) if row.hash != l.event_hash => {
                return Err(broken(row.id, "the signed event was altered".into()));
            }
            (None, None) if row.prev_hash != GENESIS_HASH => {
                return Err(broken(
                    row.id,
                    "the first event does not start the chain".into(),
                ));
            }
            (Some(p), _) if row.prev_hash != p.hash => {
                return Err(broken(row.id, format!("it does not follow event {}", p.id)));
            }
            _ => {}
        }
        if row.computed_hash() != row.hash {
            return Err(broken(row.id, "it was altered".into()));
        }
        prev = Some(row);
    }
    Ok(())
}
