//! Why a live session ends before its process does: one typed reason,
//! audited (`SessionTerminated`, or `ContainerStopped`) and shown to the
//! user ("Portcullis: session ended: REASON."), whoever ended it.
//!
//! Several reasons are seams for what comes next (locks, idle and length
//! limits, policy reloads); the recording's limit is produced by
//! [`super::record`].
//! [`attach_end`] says how each reason ends the session's processes:
//! every process the session started ends with it, except that a
//! container labelled `keep_processes = "true"` keeps them after a normal
//! end (the client gone, or the session's own process exited) of a
//! session that no grant allowed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::attach::{End, Leftovers};

/// The container label that lets a session's processes outlive a normal
/// end (`keep_processes = "true"`, issue 12): for `nohup ./job &` habits.
/// A label, so the policy sees it too (`resource.getTag("keep_processes")`).
pub const KEEP_PROCESSES_LABEL: &str = "keep_processes";

/// What a normal end does with the session's other processes in
/// `container` (labelled `labels`): kept when the container is labelled
/// [`KEEP_PROCESSES_LABEL`] `= "true"` and the session does not depend on
/// a grant (`granted`: what a grant allowed ends with it), else killed.
pub fn normal_leftovers(labels: &BTreeMap<String, String>, granted: bool) -> Leftovers {
    let keep = labels
        .get(KEEP_PROCESSES_LABEL)
        .is_some_and(|v| v == "true");
    if keep && !granted {
        Leftovers::Keep
    } else {
        Leftovers::Kill
    }
}

/// How the processes of a session that `reason` ended are ended
/// ([`crate::attach::Attached::end`]): a kill, a lock, a grant's end or a
/// policy change kills every process of the session at once; any other
/// end hangs up the session process and gives it `grace` (config
/// `session.kill_grace`) to exit. Then the session's other processes are
/// killed, except when the client went away and `leftovers` (see
/// [`normal_leftovers`]) keeps them: the only end that may keep a process
/// running.
pub fn attach_end(reason: &EndReason, grace: Duration, leftovers: Leftovers) -> End {
    match reason {
        EndReason::Killed { .. }
        | EndReason::Locked { .. }
        | EndReason::GrantEnded { .. }
        | EndReason::ConnectionClosed { .. }
        | EndReason::PolicyChanged => End::Kill,
        EndReason::ClientGone => End::Normal { grace, leftovers },
        _ => End::Normal {
            grace,
            leftovers: Leftovers::Kill,
        },
    }
}

/// Why the gateway ends a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed the channel, or its connection dropped. Not shown
    /// to anyone (there is no one to show it to).
    ClientGone,
    /// An admin ended it (`sessions kill`, the web console).
    Killed {
        /// Who, when known to this gateway (a kill request read from the
        /// database carries only its reason; the requester is audited there).
        by: Option<String>,
        /// The reason given, shown to the user as is.
        reason: String,
    },
    /// The grant the session depended on expired or was revoked.
    GrantEnded {
        /// The grant.
        grant_id: String,
        /// One clause for the user, e.g. `the grant X expired`.
        reason: String,
    },
    /// A lock covering its principal, container, key or issuer was set.
    Locked {
        /// The lock.
        lock_id: String,
        /// The lock's reason.
        reason: String,
    },
    /// Its connection is being closed (its credential ended, a lock
    /// covers it).
    ConnectionClosed {
        /// One clause for the user, e.g. `the certificate expired`.
        reason: String,
    },
    /// No input or output for this long.
    IdleTimeout(Duration),
    /// The session reached its longest allowed length.
    MaxDuration(Duration),
    /// A policy reload no longer allows the session.
    PolicyChanged,
    /// The container's init exited.
    ContainerStopped {
        /// The container.
        container: String,
    },
    /// Writing the recording failed under `recording.on_failure =
    /// "terminate"`.
    RecordingFailed,
    /// The recording reached its size limit (`recording.max_bytes`).
    RecordingLimit {
        /// The limit, in bytes.
        max_bytes: u64,
    },
    /// The gateway cannot write its audit log (fail closed).
    AuditUnavailable,
    /// The gateway lost track of the session process.
    ProcessLost,
    /// The gateway is shutting down.
    Shutdown,
    /// A relayed session's node stopped answering (an edge's view: the
    /// tunnel or the node went away before the session's exit).
    NodeLost {
        /// The node.
        node: String,
    },
}

impl EndReason {
    /// A stable word for logs and metrics: `client_gone`, `killed`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            EndReason::ClientGone => "client_gone",
            EndReason::Killed { .. } => "killed",
            EndReason::GrantEnded { .. } => "grant_ended",
            EndReason::Locked { .. } => "locked",
            EndReason::ConnectionClosed { .. } => "connection_closed",
            EndReason::IdleTimeout(_) => "idle_timeout",
            EndReason::MaxDuration(_) => "max_duration",
            EndReason::PolicyChanged => "policy_changed",
            EndReason::ContainerStopped { .. } => "container_stopped",
            EndReason::RecordingFailed => "recording_failed",
            EndReason::RecordingLimit { .. } => "recording_limit",
            EndReason::AuditUnavailable => "audit_unavailable",
            EndReason::ProcessLost => "process_lost",
            EndReason::Shutdown => "shutdown",
            EndReason::NodeLost { .. } => "node_lost",
        }
    }

    /// False when nobody is there to be told ([`EndReason::ClientGone`]).
    pub fn is_shown(&self) -> bool {
        !matches!(self, EndReason::ClientGone)
    }
}

/// One clause without a final period, as the user reads it after
/// "session ended: ".
impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::ClientGone => f.write_str("disconnected"),
            EndReason::Killed { reason, .. }
            | EndReason::GrantEnded { reason, .. }
            | EndReason::ConnectionClosed { reason } => f.write_str(reason),
            EndReason::Locked { lock_id, reason } => write!(f, "locked ({lock_id}): {reason}"),
            EndReason::IdleTimeout(d) => {
                write!(f, "idle for {}", humantime::format_duration(*d))
            }
            EndReason::MaxDuration(d) => write!(
                f,
                "it reached the longest allowed session ({})",
                humantime::format_duration(*d)
            ),
            EndReason::PolicyChanged => f.write_str("the policy no longer allows it"),
            EndReason::ContainerStopped { container } => {
                write!(f, "the container {container} stopped")
            }
            EndReason::RecordingFailed => f.write_str("the session recording failed"),
            EndReason::RecordingLimit { max_bytes } => write!(
                f,
                "the session recording reached its limit of {}",
                crate::recording::human_bytes(*max_bytes)
            ),
            EndReason::AuditUnavailable => f.write_str("the gateway cannot write its audit log"),
            EndReason::ProcessLost => f.write_str("the gateway lost the session process"),
            EndReason::Shutdown => f.write_str("the gateway is shutting down"),
            EndReason::NodeLost { node } => {
                write!(f, "the connection to node {node} was lost")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_before() {
        let killed = EndReason::Killed {
            by: Some("ops".into()),
            reason: "maintenance window".into(),
        };
        assert_eq!(killed.to_string(), "maintenance window");
        assert_eq!(
            EndReason::ContainerStopped {
                container: "web1".into()
            }
            .to_string(),
            "the container web1 stopped"
        );
        assert_eq!(
            EndReason::RecordingFailed.to_string(),
            "the session recording failed"
        );
        assert_eq!(
            EndReason::Shutdown.to_string(),
            "the gateway is shutting down"
        );
        assert!(!EndReason::ClientGone.is_shown());
        assert_eq!(killed.kind(), "killed");
    }
}
