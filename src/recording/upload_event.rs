//! What the upload of recordings tells the audit log, and the two things
//! it needs from the audit module without depending on it: a place to
//! write its events ([`RecordingAudit`], the audit log) and a signer for
//! manifests ([`ManifestSigner`], the host key's SSHSIG code). The audit
//! module implements both (`src/audit/recording.rs`), so `recording` stays
//! below `audit`.
//!
//! Owns these types only; nothing here writes or signs by itself.

use futures_util::future::BoxFuture;

/// What the upload reports to the audit log; the audit module maps each
/// to an `AuditEvent` (past tense, written before the step it records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEvent {
    /// An attempt at finishing a recording's upload is about to begin.
    Attempted {
        /// 1 for the first attempt.
        attempt: u32,
        /// `s3://BUCKET/KEY` of the recording.
        object: String,
        /// Its size, in bytes.
        bytes: u64,
        /// Its SHA-256, lowercase hex.
        sha256: String,
    },
    /// An attempt failed.
    Failed {
        /// Which attempt.
        attempt: u32,
        /// The full reason.
        reason: String,
        /// When the next attempt is due, in ms from now; `None` when it
        /// will not be retried (the local copy is kept).
        retry_in_ms: Option<u64>,
    },
    /// The recording and its manifest were uploaded and read back equal;
    /// the local copy is deleted next.
    Uploaded {
        /// `s3://BUCKET/KEY` of the recording.
        object: String,
        /// `s3://BUCKET/KEY` of the manifest.
        manifest: String,
        /// Size, in bytes.
        bytes: u64,
        /// SHA-256, lowercase hex.
        sha256: String,
        /// Attempts it took.
        attempts: u32,
    },
    /// A new session was accepted while the spool was over
    /// `recording.spool_max_bytes` (`on_spool_full = "continue"`).
    SpoolOverflowed {
        /// Bytes of local recordings not yet uploaded.
        spool_bytes: u64,
        /// The bound.
        spool_max_bytes: u64,
    },
}

/// Where the upload writes its audit events (the audit log implements it).
pub trait RecordingAudit: Send + Sync {
    /// Appends `event` about `session_id`. The step it records goes ahead
    /// only when this succeeds.
    ///
    /// # Errors
    /// The reason the event could not be written.
    fn record<'a>(
        &'a self,
        session_id: Option<&'a str>,
        event: &'a UploadEvent,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Signs manifests as SSHSIGs with the node's host key, and checks them
/// (the audit module's SSHSIG code implements it).
pub trait ManifestSigner: Send + Sync {
    /// Signs `message` in [`super::MANIFEST_NAMESPACE`]; returns the
    /// public key (OpenSSH format) and the armored signature.
    ///
    /// # Errors
    /// Why signing failed.
    fn sign(&self, message: &[u8]) -> Result<(String, String), String>;

    /// Checks `signature` over `message` by `public_key`.
    ///
    /// # Errors
    /// Why it does not verify.
    fn check(&self, public_key: &str, message: &[u8], signature: &str) -> Result<(), String>;
}
