//! The columns an [`AuditEvent`] is stored under besides its place in the
//! chain: `kind` (the family of events a reviewer filters by), `outcome`
//! (`success`, `failure`, `allow`, `deny`, `info`) and `detail` (the
//! variant's fields as JSON). Pure mapping: it never writes, signs or
//! decides anything.

use serde_json::json;

use super::AuditEvent;

impl AuditEvent {
    /// The `kind` column value.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::AuthenticationSucceeded { .. }
            | AuditEvent::AuthenticationFailed { .. }
            | AuditEvent::SourcePenalised { .. } => "authentication",
            AuditEvent::KeyBindingChanged { .. } => "key_binding",
            AuditEvent::TargetRefused { .. } => "target",
            AuditEvent::AccessDecided { .. } | AuditEvent::LoginResolved { .. } => "decision",
            AuditEvent::SessionStarted { .. } => "session_start",
            AuditEvent::SessionFailed { .. } => "session_start",
            AuditEvent::SessionEnded { .. } => "session_end",
            AuditEvent::SessionInterrupted { .. } => "session_end",
            AuditEvent::RecordingFailed { .. } | AuditEvent::RecordingSpoolOverflowed { .. } => {
                "recording"
            }
            AuditEvent::RecordingUploadAttempted { .. }
            | AuditEvent::RecordingUploadFailed { .. }
            | AuditEvent::RecordingUploaded { .. } => "recording_upload",
            AuditEvent::SessionKillRequested { .. }
            | AuditEvent::SessionTerminated { .. }
            | AuditEvent::SessionWatched { .. }
            | AuditEvent::ContainerStopped { .. } => "session_control",
            AuditEvent::FileTransferred { .. } => "file_transfer",
            AuditEvent::SftpStreamEnded { .. } => "sftp_stream",
            AuditEvent::ForwardOpened { .. } | AuditEvent::ForwardClosed { .. } => "forward",
            AuditEvent::ChannelRefused { .. } => "channel",
            AuditEvent::ConnectionClosed { .. } => "connection",
            AuditEvent::LockAdded { .. } | AuditEvent::LockRemoved { .. } => "lock",
            AuditEvent::PolicyReloaded { .. } | AuditEvent::PolicyReloadRefused { .. } => "policy",
            AuditEvent::AccessRequested { .. }
            | AuditEvent::AccessRequestRefused { .. }
            | AuditEvent::AccessRequestApproved { .. }
            | AuditEvent::AccessRequestDenied { .. }
            | AuditEvent::AccessRequestRaceLost { .. }
            | AuditEvent::AccessRequestExpired { .. } => "access_request",
            AuditEvent::GrantApproved { .. }
            | AuditEvent::GrantNotHonoured { .. }
            | AuditEvent::GrantRevoked { .. }
            | AuditEvent::GrantExpired { .. }
            | AuditEvent::BreakGlassGranted { .. }
            | AuditEvent::BreakGlassReviewed { .. } => "grant",
            AuditEvent::NodeJoinTokenIssued { .. }
            | AuditEvent::NodeJoined { .. }
            | AuditEvent::NodeJoinRefused { .. }
            | AuditEvent::NodeLoginRefused { .. }
            | AuditEvent::NodeRemoved { .. }
            | AuditEvent::ContainerClaimRefused { .. } => "fleet",
            AuditEvent::ContainerActionRefused { .. }
            | AuditEvent::ContainerActionStarted(_)
            | AuditEvent::ContainerActionEnded { .. } => "container_lifecycle",
        }
    }

    /// The `outcome` column value.
    pub fn outcome(&self) -> &'static str {
        match self {
            AuditEvent::AuthenticationSucceeded { .. } | AuditEvent::SessionStarted { .. } => {
                "success"
            }
            AuditEvent::AuthenticationFailed { .. }
            | AuditEvent::TargetRefused { .. }
            | AuditEvent::SessionFailed { .. } => "failure",
            AuditEvent::SourcePenalised { .. } => "deny",
            AuditEvent::AccessDecided { allowed: true, .. } => "allow",
            AuditEvent::AccessDecided { allowed: false, .. } => "deny",
            AuditEvent::RecordingFailed { .. } | AuditEvent::RecordingUploadFailed { .. } => {
                "failure"
            }
            AuditEvent::RecordingUploadAttempted { .. }
            | AuditEvent::RecordingSpoolOverflowed { .. } => "info",
            AuditEvent::RecordingUploaded { .. } => "success",
            AuditEvent::SessionEnded { .. }
            | AuditEvent::SessionInterrupted { .. }
            | AuditEvent::SessionKillRequested { .. }
            | AuditEvent::SessionWatched { .. }
            | AuditEvent::SessionTerminated { .. }
            | AuditEvent::KeyBindingChanged { .. }
            | AuditEvent::LoginResolved { .. }
            | AuditEvent::LockAdded { .. }
            | AuditEvent::LockRemoved { .. }
            | AuditEvent::PolicyReloaded { .. }
            | AuditEvent::ContainerStopped { .. } => "info",
            AuditEvent::PolicyReloadRefused { .. } => "failure",
            AuditEvent::FileTransferred { .. }
            | AuditEvent::SftpStreamEnded { .. }
            | AuditEvent::ForwardClosed { .. } => "info",
            AuditEvent::ForwardOpened { .. } => "success",
            AuditEvent::ChannelRefused { .. } => "deny",
            AuditEvent::ConnectionClosed { .. } => "info",
            AuditEvent::AccessRequested { .. } => "success",
            AuditEvent::AccessRequestApproved { .. } => "allow",
            AuditEvent::AccessRequestRefused { .. }
            | AuditEvent::AccessRequestRaceLost { .. }
            | AuditEvent::GrantNotHonoured { .. } => "deny",
            AuditEvent::AccessRequestExpired { .. } => "info",
            AuditEvent::GrantApproved { .. } | AuditEvent::BreakGlassGranted { .. } => "allow",
            AuditEvent::BreakGlassReviewed { .. } => "info",
            AuditEvent::AccessRequestDenied { .. }
            | AuditEvent::GrantRevoked { .. }
            | AuditEvent::GrantExpired { .. } => "info",
            AuditEvent::NodeJoinTokenIssued { .. } | AuditEvent::NodeRemoved { .. } => "info",
            AuditEvent::NodeJoined { .. } => "success",
            AuditEvent::NodeJoinRefused { .. }
            | AuditEvent::NodeLoginRefused { .. }
            | AuditEvent::ContainerClaimRefused { .. }
            | AuditEvent::ContainerActionRefused { .. } => "deny",
            AuditEvent::ContainerActionStarted(_) => "allow",
            AuditEvent::ContainerActionEnded { error: None, .. } => "success",
            AuditEvent::ContainerActionEnded { .. } => "failure",
        }
    }

    /// The `detail` column value: the variant's fields as a JSON object.
    pub(super) fn detail(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            // Externally tagged: {"Variant": {...}}; keep the inner object.
            Ok(serde_json::Value::Object(map)) => map
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or_else(|| json!({})),
            _ => json!({}),
        }
    }
}
