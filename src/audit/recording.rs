//! The audit side of recording uploads: the audit log is where the upload
//! queue writes its events ([`crate::recording::RecordingAudit`]), and the
//! host key's SSHSIG signer signs recording manifests
//! ([`crate::recording::ManifestSigner`]) with the same code that signs
//! chain heads.
//!
//! Owns the mapping from upload events to audit events; it never uploads,
//! deletes or reads a recording.

use futures_util::future::BoxFuture;

use super::{AuditEvent, AuditLog, AuditSigner, AuditSubject, check_sshsig};
use crate::recording::{MANIFEST_NAMESPACE, ManifestSigner, RecordingAudit, UploadEvent};

/// The audit event of an upload event.
pub fn recording_event(event: &UploadEvent) -> AuditEvent {
    match event.clone() {
        UploadEvent::Attempted {
            attempt,
            object,
            bytes,
            sha256,
        } => AuditEvent::RecordingUploadAttempted {
            attempt,
            object,
            bytes,
            sha256,
        },
        UploadEvent::Failed {
            attempt,
            reason,
            retry_in_ms,
        } => AuditEvent::RecordingUploadFailed {
            attempt,
            reason,
            retry_in_ms,
        },
        UploadEvent::Uploaded {
            object,
            manifest,
            bytes,
            sha256,
            attempts,
        } => AuditEvent::RecordingUploaded {
            object,
            manifest,
            bytes,
            sha256,
            attempts,
        },
        UploadEvent::SpoolOverflowed {
            spool_bytes,
            spool_max_bytes,
        } => AuditEvent::RecordingSpoolOverflowed {
            spool_bytes,
            spool_max_bytes,
        },
    }
}

impl RecordingAudit for AuditLog {
    fn record<'a>(
        &'a self,
        session_id: Option<&'a str>,
        event: &'a UploadEvent,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let subject = AuditSubject {
                session_id,
                principal: None,
                client_addr: None,
            };
            AuditLog::record(self, &subject, &recording_event(event))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

impl ManifestSigner for AuditSigner {
    fn sign(&self, message: &[u8]) -> Result<(String, String), String> {
        let signature = self
            .sign_message(MANIFEST_NAMESPACE, message)
            .map_err(|e| e.to_string())?;
        Ok((self.public_key().to_string(), signature))
    }

    fn check(&self, public_key: &str, message: &[u8], signature: &str) -> Result<(), String> {
        check_sshsig(public_key, MANIFEST_NAMESPACE, message, signature)
    }
}
