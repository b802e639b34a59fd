//! The facts of a lifecycle action (issue 18) as its
//! [`super::AuditEvent::ContainerActionStarted`] event records them,
//! before the backend is asked. Plain data; it records nothing itself.

use serde::Serialize;

/// A lifecycle action about to run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContainerAction {
    /// `start`, `stop`, `restart`, `snapshot` or `restore`.
    pub action: String,
    /// The container.
    pub container: String,
    /// The snapshot to restore, if any.
    pub snapshot: Option<String>,
    /// The reason given.
    pub reason: String,
    /// `--force` was given.
    pub force: bool,
    /// Live sessions this gateway served on the container then (-1 from
    /// the host's CLI, which does not know them).
    pub live_sessions: i64,
    /// The grant used (now spent), if any.
    pub grant_id: Option<String>,
    /// The policies that allowed it; `["host"]` from the host's own CLI.
    pub policies: Vec<String>,
}
