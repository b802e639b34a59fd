//! Typed audit events, the one path that writes them, and the verification
//! of the tamper-evident log.
//!
//! An audit event is written *before* the action it records goes ahead; a
//! caller that cannot write one must refuse the action (fail closed). Events
//! never carry secrets (tokens, keystrokes).
//!
//! Tamper evidence: rows form a hash chain ([`crate::store::chain_hash`]);
//! the chain head is signed with the gateway's ed25519 host key as an
//! SSHSIG (OpenSSH `PROTOCOL.sshsig`, namespace [`SIGNATURE_NAMESPACE`]) at
//! start and every `audit.sign_interval`, each head naming the one before
//! it, and each written as it is made to anchors the database cannot
//! rewrite (`anchor`); [`verify`] checks the chain, the heads, continuous
//! coverage and every recording, [`verify_anchor`] compares the database
//! with an anchor, `bundle` packs evidence verifiable offline and `report`
//! answers an auditor.

pub mod anchor;
mod anchor_compare;
pub mod bundle;
mod check;
mod columns;
mod container_action;
mod error;
pub mod export;
pub mod head;
mod log;
mod recording;
pub mod report;
mod signer;
mod verify;

use serde::Serialize;

pub use anchor_compare::{AnchorReport, Divergence, compare_anchor, verify_anchor};
pub use check::{Limits, SignatureProblem, Signer, Stretch};
pub use container_action::ContainerAction;
pub use error::AuditError;
pub use head::{SIGNATURE_NAMESPACE, TrustedKeys, check_sshsig};
pub use log::{AuditLog, AuditSubject, truncate};
pub use recording::recording_event;
pub use signer::AuditSigner;
pub use verify::{
    RecordingProblem, VerifyOptions, VerifyReport, describe_stretch, verify, verify_with_recordings,
};

/// What happened. Past tense; one variant per kind of event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum AuditEvent {
    /// A user proved who they are.
    AuthenticationSucceeded {
        /// How: `device_flow` or `token`.
        method: String,
        /// The SSH user name asked for (the target).
        target: String,
    },
    /// An authentication attempt failed.
    AuthenticationFailed {
        /// How: `device_flow`, `token` or `publickey`.
        method: String,
        /// The SSH user name asked for, truncated to 128 bytes.
        target: String,
        /// The full reason (not shown to the user).
        reason: String,
    },
    /// A source (an IPv4 address or an IPv6 /64) earned penalties up to
    /// `auth.penalty_min`: its new connections are closed at accept, before
    /// the SSH banner, for `seconds` (OpenSSH `PerSourcePenalties`; issue
    /// 14). Recorded once per penalty, not per refused connection.
    SourcePenalised {
        /// The source, `192.0.2.7` or `2001:db8::/64`.
        source: String,
        /// What earned the last part: `authfail`, `noauth` or
        /// `grace-exceeded`.
        after: String,
        /// How long it is refused from now, whole seconds.
        seconds: u64,
    },
    /// A public key was bound to a principal, or its binding was revoked or
    /// ended (issue 4: key binding).
    KeyBindingChanged {
        /// `SHA256:...` fingerprint of the key.
        fingerprint: String,
        /// `bound`, `revoked` or `ended`.
        change: String,
        /// When a new binding ends, unix ms.
        until: Option<i64>,
        /// Why (revocations and ends).
        reason: Option<String>,
    },
    /// The SSH user name could not be used as a target.
    TargetRefused {
        /// The SSH user name, truncated to 128 bytes.
        target: String,
        /// Why: malformed, unknown container, not running.
        reason: String,
    },
    /// The policy decided a request.
    AccessDecided {
        /// Cedar action: `shell` or `exec`.
        action: String,
        /// Target container.
        container: String,
        /// Login inside the container.
        login: String,
        /// True when allowed.
        allowed: bool,
        /// Ids of the policies that decided, and evaluation errors.
        reasons: Vec<String>,
    },
    /// The login was resolved in the container's own `/etc/passwd` before
    /// the decision (issue 12: root is a uid, not a name).
    LoginResolved {
        /// Target container.
        container: String,
        /// Login inside the container.
        login: String,
        /// Its uid in the container's user namespace.
        uid: u32,
        /// Its primary gid.
        gid: u32,
    },
    /// A lock was added (issue 12): sessions it covers are refused and
    /// live ones ended.
    LockAdded {
        /// `principal`, `container` or `login`.
        target: String,
        /// What is locked.
        value: String,
        /// Why (shown to the users it refuses).
        reason: String,
        /// When it ends on its own, unix ms; `None`: until removed.
        expires_at: Option<i64>,
    },
    /// The policies were loaded again (SIGHUP, `policy reload`).
    PolicyReloaded {
        /// The policy directory.
        dir: String,
    },
    /// A policy reload was refused (the set does not load or validate);
    /// the old policies stay.
    PolicyReloadRefused {
        /// The policy directory.
        dir: String,
        /// Why.
        error: String,
    },
    /// A lock was removed.
    LockRemoved {
        /// The lock.
        lock_id: String,
    },
    /// A process was started in a container.
    SessionStarted {
        /// Target container.
        container: String,
        /// Login inside the container.
        login: String,
        /// The command, `None` for a shell.
        command: Option<String>,
        /// True when a PTY was given.
        pty: bool,
    },
    /// Starting the process failed.
    SessionFailed {
        /// Target container.
        container: String,
        /// Why.
        reason: String,
    },
    /// A session ended.
    SessionEnded {
        /// Exit code, when it exited.
        exit_status: Option<i64>,
        /// Signal, when it was killed by one.
        exit_signal: Option<String>,
        /// Recording size in bytes.
        recording_bytes: i64,
        /// Recording SHA-256, lowercase hex.
        recording_sha256: String,
        /// Bytes the session printed (stdout and stderr); the recording
        /// leaves NULs out, this counts them. Absent in events written
        /// before it was added.
        #[serde(skip_serializing_if = "Option::is_none")]
        output_bytes: Option<u64>,
    },
    /// At start, a session left running by a previous gateway process was
    /// marked interrupted; its recording as found is digested.
    SessionInterrupted {
        /// Recording size in bytes as found (0 when missing).
        recording_bytes: i64,
        /// Recording SHA-256 as found ("" when missing).
        recording_sha256: String,
    },
    /// Writing the recording failed, or no recording may start.
    RecordingFailed {
        /// The I/O error, the limit reached, or why no recording may start
        /// (low disk, full spool).
        reason: String,
        /// `terminate` (the session was ended), `continue`, or `refuse`
        /// (the session was refused before it started).
        action: String,
    },
    /// An attempt at uploading a recording to object storage is about to
    /// begin (issue 16 point 5).
    RecordingUploadAttempted {
        /// 1 for the first attempt.
        attempt: u32,
        /// `s3://BUCKET/KEY` of the recording.
        object: String,
        /// Its size, in bytes.
        bytes: u64,
        /// Its SHA-256, lowercase hex.
        sha256: String,
    },
    /// An upload attempt failed; the local copy is kept.
    RecordingUploadFailed {
        /// Which attempt.
        attempt: u32,
        /// The full reason.
        reason: String,
        /// When it is retried, in ms from now; `None`: not retried.
        retry_in_ms: Option<u64>,
    },
    /// A recording and its write-once manifest were uploaded and read back
    /// equal; the local copy is deleted next.
    RecordingUploaded {
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
    /// A session was accepted while the spool of recordings waiting for
    /// object storage was over `recording.spool_max_bytes`.
    RecordingSpoolOverflowed {
        /// Bytes waiting for upload.
        spool_bytes: u64,
        /// The bound.
        spool_max_bytes: u64,
    },
    /// An admin asked for a live session to end.
    SessionKillRequested {
        /// The reason given, shown to the user.
        reason: String,
    },
    /// A reviewer started watching a live session.
    SessionWatched {
        /// Who watches.
        reviewer: String,
    },
    /// A live session was ended by the gateway, not by its process.
    SessionTerminated {
        /// Why (kill request, container stopped, shutdown).
        reason: String,
    },
    /// The container stopped while a session was attached to it; the
    /// session was ended (its `SessionEnded` follows).
    ContainerStopped {
        /// The container.
        container: String,
    },
    /// One file handle of an SFTP session was closed (or left open when the
    /// session ended), as reported by the in-container server (issue 5).
    FileTransferred {
        /// The path inside the container.
        path: String,
        /// `read` (download) or `write` (upload).
        direction: String,
        /// Bytes transferred.
        bytes: i64,
        /// SHA-256 of the bytes, lowercase hex.
        sha256: String,
        /// True when the bytes came in file order (the digest is exactly
        /// the wire's); false: the digest is of the file as left.
        sequential: bool,
        /// False when the session ended with the file still open.
        closed: bool,
    },
    /// A forwarded TCP connection (`ssh -L`) allowed by policy is being
    /// opened inside the container's network namespace (written before
    /// the connect; its `ForwardClosed` says how it went).
    ForwardOpened {
        /// Target container.
        container: String,
        /// Destination host as asked by the client.
        host: String,
        /// Destination port.
        port: i64,
        /// Client-side originator `address:port`.
        originator: String,
    },
    /// A forwarded TCP connection ended.
    ForwardClosed {
        /// Destination `host:port`.
        destination: String,
        /// Bytes from the client to the destination.
        bytes_to_destination: i64,
        /// Bytes from the destination to the client.
        bytes_from_destination: i64,
        /// How long it was open, in milliseconds.
        duration_ms: i64,
        /// Why it failed or ended early (e.g. the connection was refused
        /// inside the container), `None` when it simply ended.
        error: Option<String>,
    },
    /// An `sftp` subsystem served by the container's own sftp-server
    /// (`[sftp] server = "container"`) ended. The gateway saw only the SFTP
    /// byte stream, so files are not listed one by one nor digested; this
    /// event carries the stream's totals.
    SftpStreamEnded {
        /// The program that served it, inside the container.
        server: String,
        /// Bytes from the client to the server (requests and uploads).
        bytes_from_client: i64,
        /// Bytes from the server to the client (replies and downloads).
        bytes_to_client: i64,
        /// How long it ran, in milliseconds.
        duration_ms: i64,
    },
    /// A channel or a forwarding request was refused before policy: a
    /// kind Portcullis does not offer (remote forwarding, X11, agent) or a
    /// per-connection cap.
    ChannelRefused {
        /// What was asked: `session`, `direct-tcpip`, `tcpip-forward`,
        /// `x11`, `auth-agent`, `subsystem`.
        kind: String,
        /// Why.
        reason: String,
    },
    /// The gateway closed an authenticated connection (issue 12): a lock
    /// covers it, its credential ended, or it had no channel open for
    /// `auth.unused_connection_timeout`. Written before the disconnect.
    ConnectionClosed {
        /// Why, as the user reads it.
        reason: String,
    },
    /// An access request was created (issue 7); approvers may now decide it.
    AccessRequested {
        /// The request id.
        request_id: String,
        /// Target container.
        container: String,
        /// Login asked for.
        login: String,
        /// Length asked for, seconds.
        duration_seconds: i64,
        /// Why, as given.
        reason: String,
        /// Policies that allowed the request.
        policies: Vec<String>,
        /// The lifecycle action asked for instead of a login (issue 18).
        #[serde(skip_serializing_if = "Option::is_none")]
        action: Option<String>,
    },
    /// A workflow step (request, approve, deny, activate, revoke, review)
    /// was refused: by policy, a configured limit, or the request's state
    /// (e.g. a second approval by the same approver).
    AccessRequestRefused {
        /// `request`, `break-glass`, `approve`, `deny`, `activate`,
        /// `revoke` or `review`.
        action: String,
        /// The request, when one was named.
        request_id: Option<String>,
        /// Target container.
        container: String,
        /// Login.
        login: String,
        /// Why (policy ids, limit, state).
        reason: String,
    },
    /// One approver approved an access request (one event per approval).
    /// The grant starts only once the policy permits `activate`
    /// ([`AuditEvent::GrantApproved`] records that step).
    AccessRequestApproved {
        /// The request id.
        request_id: String,
        /// Who asked for it.
        requester: String,
        /// Target container.
        container: String,
        /// Login asked for.
        login: String,
        /// Distinct approvals of the request, this one included.
        approvals: i64,
        /// The approver's comment.
        comment: Option<String>,
        /// Policies that allowed the approval.
        policies: Vec<String>,
    },
    /// An access request was activated (the policy permitted `activate`
    /// after its approvals): a grant starts now.
    GrantApproved {
        /// The grant (and request) id.
        grant_id: String,
        /// Who asked for it (the grant holder).
        requester: String,
        /// Target container.
        container: String,
        /// Login granted.
        login: String,
        /// The grant's end, unix ms.
        expires_at: i64,
        /// The comment of the approval that activated it.
        comment: Option<String>,
        /// Everyone who approved it, in order.
        approvers: Vec<String>,
        /// Policies that permitted `activate`.
        policies: Vec<String>,
    },
    /// An access request was denied.
    AccessRequestDenied {
        /// The request id.
        request_id: String,
        /// Who asked for it.
        requester: String,
        /// The denial reason.
        reason: String,
    },
    /// A grant was revoked before its expiry; sessions depending on it end.
    GrantRevoked {
        /// The grant id.
        grant_id: String,
        /// The grant holder.
        requester: String,
        /// Target container.
        container: String,
        /// Login.
        login: String,
        /// Why.
        reason: String,
    },
    /// A break-glass grant was taken: self-granted, flagged for review.
    BreakGlassGranted {
        /// The grant id.
        grant_id: String,
        /// Target container.
        container: String,
        /// Login granted.
        login: String,
        /// The grant's end, unix ms.
        expires_at: i64,
        /// Why, as given.
        reason: String,
    },
    /// A reviewer marked a break-glass grant reviewed.
    BreakGlassReviewed {
        /// The grant id.
        grant_id: String,
        /// Who took it.
        requester: String,
        /// The reviewer's comment.
        comment: Option<String>,
    },
    /// A grant reached its expiry; sessions depending on it ended.
    GrantExpired {
        /// The grant id.
        grant_id: String,
        /// The grant holder.
        requester: String,
        /// Target container.
        container: String,
        /// Login.
        login: String,
        /// The end, unix ms.
        expired_at: i64,
    },
    /// A workflow step lost a race (issue 12): another decision on the
    /// same request (another approver, a denial, an expiry) came first.
    AccessRequestRaceLost {
        /// `approve`, `deny`, `revoke` or `review`.
        action: String,
        /// The request.
        request_id: String,
        /// What the step found: the state the winner left.
        reason: String,
    },
    /// A pending request reached `[grants] request_ttl` undecided.
    AccessRequestExpired {
        /// The request.
        request_id: String,
        /// Who asked for it.
        requester: String,
        /// Target container and login, `login@container`.
        target: String,
    },
    /// An active grant was not honoured: the container is not where, or
    /// not labelled as, when the grant was approved (issue 12).
    GrantNotHonoured {
        /// The grant.
        grant_id: String,
        /// Target container and login, `login@container`.
        target: String,
        /// Why, as the user reads it.
        reason: String,
    },
    /// A join token was issued for a node (`portcullis nodes add`, issue
    /// 16); the node may join until it expires.
    NodeJoinTokenIssued {
        /// The node's name.
        node: String,
        /// The token's expiry, unix ms.
        expires_at: i64,
    },
    /// A node presented a valid join token and got its host certificate.
    NodeJoined {
        /// The node's name.
        node: String,
        /// `SHA256:...` of the node's key.
        key_fingerprint: String,
        /// The edge that admitted it.
        edge: String,
    },
    /// A join was refused: unknown, expired, replayed or misdirected token.
    NodeJoinRefused {
        /// The node name asked for, truncated to 64 bytes.
        node: String,
        /// Why.
        reason: String,
    },
    /// A node's tunnel login or certificate renewal was refused (removed
    /// node, certificate for another key, expired or untrusted).
    NodeLoginRefused {
        /// The node name asked for, truncated to 64 bytes.
        node: String,
        /// Why.
        reason: String,
    },
    /// A node was removed from the fleet; its certificate is refused.
    NodeRemoved {
        /// The node's name.
        node: String,
    },
    /// A lifecycle action (issue 18) was refused (policy, input, state).
    ContainerActionRefused {
        /// `start`, `stop`, `restart`, `snapshot`, `restore`, `inspect`.
        action: String,
        /// The container.
        container: String,
        /// Why, for the auditor (policies, the error).
        reason: String,
    },
    /// A lifecycle action was allowed and is about to run on the backend.
    ContainerActionStarted(ContainerAction),
    /// A lifecycle action finished (`error`: the backend's, if it failed).
    ContainerActionEnded {
        /// The action.
        action: String,
        /// The container.
        container: String,
        /// The snapshot taken or restored, if any.
        snapshot: Option<String>,
        /// The backend's error.
        error: Option<String>,
    },
    /// A node reported a container whose name another node owns; the
    /// claim was refused.
    ContainerClaimRefused {
        /// The container name.
        container: String,
        /// The node that claimed it.
        node: String,
        /// The node that owns it.
        owner: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    #[tokio::test]
    async fn record_writes_kind_outcome_and_detail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/a.db", dir.path().display()))
            .await
            .unwrap();
        let log = AuditLog::new(store.clone());
        log.record(
            &AuditSubject {
                session_id: Some("s"),
                principal: Some("alice"),
                client_addr: None,
            },
            &AuditEvent::AccessDecided {
                action: "shell".into(),
                container: "web1".into(),
                login: "root".into(),
                allowed: false,
                reasons: vec![],
            },
        )
        .await
        .unwrap();
        let rows = store.audit_events(None).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "decision");
        assert_eq!(rows[0].outcome, "deny");
        assert_eq!(rows[0].principal.as_deref(), Some("alice"));
        let detail: serde_json::Value = serde_json::from_str(&rows[0].detail).unwrap();
        assert_eq!(
            detail,
            json!({"action":"shell","container":"web1","login":"root","allowed":false,"reasons":[]})
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
