//! Finding containers. Three backends: `lxc` ([`LxcInventory`]: the
//! container's monitor socket or `lxc-info`, under `lxcpath`), `process`
//! ([`ProcessInventory`]: a pid file or a cgroup directory per
//! `[containers.NAME]`, for any runtime) and `incus` ([`IncusInventory`]:
//! an Incus or LXD daemon's REST API on its Unix socket). A container
//! section with `pid_file` or `cgroup` always uses the process backend;
//! others use the configured `[inventory] backend`. Labels, owner and
//! purpose come from `[containers.NAME]` (LXC, process) or from the
//! instance's `user.portcullis.*` config keys (Incus/LXD).
//!
//! Every backend checks the init it names (the rule of [`init`]: PID 1 of a
//! PID namespace directly below the gateway's, started from outside it)
//! and returns its start time, which the attach path's pin compares after
//! taking the pidfd. [`listing`] joins the inventory with each container's
//! last session for `containers list` (CLI, broker, web console).
//!
//! [`lifecycle`] starts, stops, restarts, snapshots and restores a
//! container through the backend that found it (issue 18).
//!
//! Owns lookups and the runtime's lifecycle steps; it never enters a
//! container, never decides (policy) and never audits (its callers do, before and after
//! each step). A name is checked with [`crate::config::valid_name`] before
//! it reaches any command line or URL.

mod incus;
mod init;
pub mod lifecycle;
pub mod listing;
mod lxc;
mod lxc_monitor;
mod process;

use std::collections::BTreeMap;

pub use incus::IncusInventory;
pub use lifecycle::{LifecycleError, Operation, Snapshot};
pub use listing::{ContainerRow, container_rows};
pub use lxc::LxcInventory;
pub use process::ProcessInventory;

use crate::config::{Config, InventoryBackend};

/// Which backend found a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// LXC (its monitor socket or `lxc-info`).
    Lxc,
    /// A pid file or a cgroup directory from the config.
    Process,
    /// An Incus or LXD daemon's REST API.
    Incus,
}

impl Backend {
    /// `lxc`, `process` or `incus`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Lxc => "lxc",
            Backend::Process => "process",
            Backend::Incus => "incus",
        }
    }

    /// The backend named `name` (as [`Backend::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "lxc" => Some(Backend::Lxc),
            "process" => Some(Backend::Process),
            "incus" => Some(Backend::Incus),
            _ => None,
        }
    }
}

/// The state of a container, as its runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Running, with its init process's host PID.
    Running {
        /// Host PID of the container's init.
        init_pid: i32,
    },
    /// Known but not running (`STOPPED`, `FROZEN`, `STOPPING`, ...).
    NotRunning(String),
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Name, as the runtime knows it.
    pub name: String,
    /// State and init PID.
    pub state: ContainerState,
    /// Labels from `[containers.NAME]` (or the instance's
    /// `user.portcullis.label.KEY` keys), seen by policy as tags.
    pub labels: BTreeMap<String, String>,
    /// The container's cgroup path below each hierarchy's root, e.g.
    /// `/lxc.payload.web1`; the init's `/proc/PID/cgroup` must show it.
    pub cgroup: String,
    /// The backend that found it.
    pub backend: Backend,
    /// Who answers for it (`owner` of `[containers.NAME]`, or the
    /// instance's `user.portcullis.owner`); policy sees `resource.owner`.
    pub owner: Option<String>,
    /// What it is for (`purpose`, or `user.portcullis.purpose`); policy
    /// sees `resource.purpose`.
    pub purpose: Option<String>,
    /// When running: the init's start time, field 22 of `/proc/PID/stat`
    /// (clock ticks after boot), read when the lookup checked that the PID
    /// is the container's init. Pass it to the pin
    /// (`PinnedInit::pin(pid, cgroup, container.init_start_time)`) so a
    /// PID recycled after the lookup is refused. `None` when not running.
    pub init_start_time: Option<u64>,
}

impl Container {
    /// A container known to `backend` in `state`, with no labels, owner,
    /// purpose or start time yet.
    pub fn new(name: &str, state: ContainerState, cgroup: String, backend: Backend) -> Container {
        Container {
            name: name.to_string(),
            state,
            labels: BTreeMap::new(),
            cgroup,
            backend,
            owner: None,
            purpose: None,
            init_start_time: None,
        }
    }
}

/// A failed lookup.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The name is not a valid container name.
    #[error("invalid container name")]
    InvalidName,
    /// The runtime does not know this container.
    #[error("no such container: {0}")]
    NotFound(String),
    /// The runtime's tool could not be run.
    #[error("cannot run {tool}: {source}")]
    Tool {
        /// The tool, e.g. `lxc-info`.
        tool: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configured process is not the init of a container: not PID 1 of
    /// its own PID namespace, or in the gateway's own mount namespace (that
    /// would be the host).
    #[error("{0}")]
    NotAContainer(String),
    /// The runtime's tool printed something unexpected.
    #[error("unexpected output from {tool}: {output}")]
    Output {
        /// The tool.
        tool: &'static str,
        /// Its output, cut to 200 bytes.
        output: String,
    },
    /// The Incus/LXD daemon could not be asked (no socket, timeout,
    /// connection closed) or sent more than the response limit.
    #[error("cannot ask the Incus/LXD daemon at {socket} for {path}: {reason}")]
    DaemonRequest {
        /// The daemon's Unix socket.
        socket: String,
        /// The API path asked, e.g. `/1.0/instances/web1/state`.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The daemon answered with an error or something that is not its API.
    #[error("the Incus/LXD daemon answered {path} with {answer}")]
    DaemonAnswer {
        /// The API path asked.
        path: String,
        /// Its status and error text, cut to 200 bytes.
        answer: String,
    },
    /// The sessions table could not be read for the listing's last
    /// sessions.
    #[error("cannot read the last sessions: {0}")]
    LastSessions(#[source] crate::store::StoreError),
    /// The fleet's tables (nodes' pushed inventories) could not be read.
    #[error("cannot read the fleet's inventory: {0}")]
    Fleet(#[source] crate::store::StoreError),
}

/// The inventory the gateway uses: the process backend and the configured
/// one, by the rule in the module docs.
#[derive(Debug, Clone)]
pub struct Inventory {
    lxc: Option<LxcInventory>,
    incus: Option<IncusInventory>,
    process: ProcessInventory,
}

impl Inventory {
    /// The inventory described by `config.inventory` and `config.containers`.
    pub fn new(config: &Config) -> Inventory {
        Inventory {
            lxc: (config.inventory.backend == InventoryBackend::Lxc)
                .then(|| LxcInventory::new(config)),
            incus: (config.inventory.backend == InventoryBackend::Incus)
                .then(|| IncusInventory::new(config)),
            process: ProcessInventory::new(config),
        }
    }

    /// Looks up `name` in the backend that owns it.
    ///
    /// # Errors
    /// [`InventoryError::NotFound`] when no backend knows it; otherwise as
    /// [`LxcInventory::find`], [`IncusInventory::find`] or
    /// [`ProcessInventory::find`].
    pub async fn find(&self, name: &str) -> Result<Container, InventoryError> {
        if self.process.knows(name) {
            return self.process.find(name);
        }
        match (&self.lxc, &self.incus) {
            (Some(lxc), _) => lxc.find(name).await,
            (None, Some(incus)) => incus.find(name).await,
            (None, None) => Err(InventoryError::NotFound(name.to_string())),
        }
    }

    /// Every container of the process backend and the configured one,
    /// sorted by name (a process-backend entry hides a container of the
    /// same name in the other backend).
    ///
    /// # Errors
    /// As the backends' `list`.
    pub async fn list(&self) -> Result<Vec<Container>, InventoryError> {
        let mut all = self.process.list();
        let others = match (&self.lxc, &self.incus) {
            (Some(lxc), _) => lxc.list().await?,
            (None, Some(incus)) => incus.list().await?,
            (None, None) => Vec::new(),
        };
        for c in others {
            if !self.process.knows(&c.name) {
                all.push(c);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}
