//! A container's lifecycle (issue 18): start, stop, restart, snapshot,
//! list snapshots, restore, done by the runtime that owns it. One small
//! trait, [`Lifecycle`], per backend: LXC runs `lxc-start`, `lxc-stop`,
//! `lxc-snapshot` under its `lxcpath` ([`super::lxc`]); Incus/LXD asks the
//! daemon's REST API ([`super::incus`]); the `process` backend refuses,
//! since it only knows a pid file or a cgroup, not the runtime.
//!
//! This layer acts and reports the runtime's own error; it never decides
//! and never audits: the caller ([`crate::commands`], the host CLI) asks
//! the policy and writes the audit events before and after.

use super::{Backend, Container, ContainerState, Inventory, InventoryError};
use crate::config::valid_name;

/// How long a lifecycle step may take on the runtime, seconds: a clean
/// shutdown is given [`STOP_TIMEOUT_SECS`], then the runtime kills.
pub const STEP_TIMEOUT_SECS: u64 = 120;
/// How long a container gets to shut down cleanly, seconds.
pub const STOP_TIMEOUT_SECS: u64 = 30;

/// A lifecycle step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Start a stopped container.
    Start,
    /// Stop a running container (clean shutdown, then kill after
    /// [`STOP_TIMEOUT_SECS`]).
    Stop,
    /// Stop, then start.
    Restart,
    /// Take a snapshot; the backend names it (`snap0`, `snap1`, ...).
    Snapshot,
    /// Put the container back to the named snapshot.
    Restore(String),
}

impl Operation {
    /// `start`, `stop`, `restart`, `snapshot` or `restore`: the Cedar
    /// action and the word of the command.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Restart => "restart",
            Operation::Snapshot => "snapshot",
            Operation::Restore(_) => "restore",
        }
    }
}

/// One snapshot of a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Its name (`snap0`, ...), as `restore` takes it.
    pub name: String,
    /// When it was taken, as the runtime prints it.
    pub created: String,
}

/// A lifecycle step that did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The backend cannot do this (the `process` backend, a backend not
    /// configured).
    #[error("{0}")]
    Unsupported(String),
    /// The container is not in a state the step applies to.
    #[error("{0}")]
    State(String),
    /// The snapshot name is not a valid name.
    #[error("invalid snapshot name")]
    SnapshotName,
    /// The runtime's tool could not be run.
    #[error("cannot run {tool}: {source}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime refused or failed: its own message.
    #[error("{runtime}: {message}")]
    Runtime {
        /// `lxc-stop`, `Incus/LXD`...
        runtime: &'static str,
        /// Its error, cut to 500 bytes.
        message: String,
    },
    /// The Incus/LXD daemon could not be asked, or its answer read.
    #[error(transparent)]
    Daemon(#[from] InventoryError),
}

/// The lifecycle steps of one backend. Each takes the container as the
/// inventory just found it (its state decides whether the step applies).
pub(crate) trait Lifecycle {
    /// Starts `c`.
    async fn start(&self, c: &Container) -> Result<(), LifecycleError>;
    /// Stops `c`.
    async fn stop(&self, c: &Container) -> Result<(), LifecycleError>;
    /// Stops and starts `c`.
    async fn restart(&self, c: &Container) -> Result<(), LifecycleError>;
    /// Takes a snapshot of `c`; returns its name.
    async fn snapshot(&self, c: &Container) -> Result<String, LifecycleError>;
    /// The snapshots of `c`, oldest first.
    async fn snapshots(&self, c: &Container) -> Result<Vec<Snapshot>, LifecycleError>;
    /// Puts `c` back to `snapshot`.
    async fn restore(&self, c: &Container, snapshot: &str) -> Result<(), LifecycleError>;
}

/// Refuses a step on a running container, or one that is not running.
pub(super) fn must_be(c: &Container, running: bool, step: &str) -> Result<(), LifecycleError> {
    match (&c.state, running) {
        (ContainerState::Running { .. }, false) => Err(LifecycleError::State(format!(
            "{} is running; {step} needs it stopped",
            c.name
        ))),
        (ContainerState::NotRunning(s), true) => Err(LifecycleError::State(format!(
            "{} is not running ({s})",
            c.name
        ))),
        _ => Ok(()),
    }
}

/// `text` (a tool's stderr, a daemon's error) as one line of at most 500
/// bytes, or `what` when it is empty.
pub(super) fn runtime_message(text: &str, what: String) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if line.is_empty() {
        what
    } else {
        crate::audit::truncate(&line, 500)
    }
}

impl Inventory {
    /// Runs `op` on `container` (as [`Inventory::find`] returned it) with
    /// the backend that found it. Returns the snapshot taken or restored,
    /// if any.
    ///
    /// # Errors
    /// [`LifecycleError::Unsupported`] for the `process` backend;
    /// otherwise the backend's refusal or error.
    pub async fn act(
        &self,
        container: &Container,
        op: &Operation,
    ) -> Result<Option<String>, LifecycleError> {
        match container.backend {
            Backend::Lxc => match &self.lxc {
                Some(lxc) => run(lxc, container, op).await,
                None => Err(unconfigured(container)),
            },
            Backend::Incus => match &self.incus {
                Some(incus) => run(incus, container, op).await,
                None => Err(unconfigured(container)),
            },
            Backend::Process => Err(process_refusal(container, op.as_str())),
        }
    }

    /// The snapshots of `container`, oldest first.
    ///
    /// # Errors
    /// As [`Inventory::act`].
    pub async fn snapshots(&self, container: &Container) -> Result<Vec<Snapshot>, LifecycleError> {
        match container.backend {
            Backend::Lxc => match &self.lxc {
                Some(lxc) => lxc.snapshots(container).await,
                None => Err(unconfigured(container)),
            },
            Backend::Incus => match &self.incus {
                Some(incus) => incus.snapshots(container).await,
                None => Err(unconfigured(container)),
            },
            Backend::Process => Err(process_refusal(container, "list the snapshots of")),
        }
    }
}

async fn run(
    backend: &impl Lifecycle,
    c: &Container,
    op: &Operation,
) -> Result<Option<String>, LifecycleError> {
    match op {
        Operation::Start => backend.start(c).await.map(|()| None),
        Operation::Stop => backend.stop(c).await.map(|()| None),
        Operation::Restart => backend.restart(c).await.map(|()| None),
        Operation::Snapshot => backend.snapshot(c).await.map(Some),
        Operation::Restore(s) => {
            if !valid_name(s) {
                return Err(LifecycleError::SnapshotName);
            }
            backend.restore(c, s).await.map(|()| Some(s.clone()))
        }
    }
}

fn unconfigured(c: &Container) -> LifecycleError {
    LifecycleError::Unsupported(format!(
        "the {} backend of {} is not configured on this gateway",
        c.backend.as_str(),
        c.name
    ))
}

fn process_refusal(c: &Container, verb: &str) -> LifecycleError {
    LifecycleError::Unsupported(format!(
        "{} is found by the process backend (a pid file or a cgroup), which cannot {verb} \
         containers; its runtime's own tools do that on the host",
        c.name
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[tokio::test]
    async fn the_process_backend_refuses_with_a_clear_message() {
        let config = crate::config::Config::parse(
            "[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"p\"\n\
             [inventory]\nbackend = \"process\"\n\
             [containers.web1]\npid_file = \"/nonexistent/web1.pid\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let inventory = Inventory::new(&config);
        let c = Container::new(
            "web1",
            ContainerState::NotRunning("STOPPED".into()),
            "/x".into(),
            Backend::Process,
        );
        let e = inventory.act(&c, &Operation::Start).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "web1 is found by the process backend (a pid file or a cgroup), which cannot start \
             containers; its runtime's own tools do that on the host"
        );
        assert!(matches!(
            inventory.snapshots(&c).await,
            Err(LifecycleError::Unsupported(_))
        ));
        // An LXC container on a gateway configured for the process backend.
        let lxc = Container {
            backend: Backend::Lxc,
            ..c
        };
        assert_eq!(
            inventory
                .act(&lxc, &Operation::Stop)
                .await
                .unwrap_err()
                .to_string(),
            "the lxc backend of web1 is not configured on this gateway"
        );
    }

    #[test]
    fn state_checks_and_runtime_messages() {
        let running = Container::new(
            "web1",
            ContainerState::Running { init_pid: 42 },
            "/x".into(),
            Backend::Lxc,
        );
        assert!(must_be(&running, true, "stop").is_ok());
        assert_eq!(
            must_be(&running, false, "an LXC snapshot")
                .unwrap_err()
                .to_string(),
            "web1 is running; an LXC snapshot needs it stopped"
        );
        let stopped = Container {
            state: ContainerState::NotRunning("STOPPED".into()),
            ..running
        };
        assert_eq!(
            must_be(&stopped, true, "stop").unwrap_err().to_string(),
            "web1 is not running (STOPPED)"
        );
        assert_eq!(runtime_message("\n a \n\n b\n", "x".into()), "a; b");
        assert_eq!(
            runtime_message("  \n", "said nothing".into()),
            "said nothing"
        );
    }
}
