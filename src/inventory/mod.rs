//! Finding containers. Two backends: `lxc` ([`LxcInventory`]: the
//! container's monitor socket or `lxc-info`, under `lxcpath`) and
//! `process` ([`ProcessInventory`]: a pid file or a cgroup directory per
//! `[containers.NAME]`, for any runtime). A container
//! section with `pid_file` or `cgroup` always uses the process backend;
//! others use LXC unless `[inventory] backend = "process"`. Labels come
//! from the config file.
//!
//! Owns lookups only; it never enters a container. A name is checked with
//! [`crate::config::valid_name`] before it reaches any command line.

mod lxc;
mod lxc_monitor;
mod process;

use std::collections::BTreeMap;

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
}

impl Backend {
    /// `lxc` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Lxc => "lxc",
            Backend::Process => "process",
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
    /// Labels from `[containers.NAME]`, seen by policy.
    pub labels: BTreeMap<String, String>,
    /// The container's cgroup path below each hierarchy's root, e.g.
    /// `/lxc.payload.web1`; the init's `/proc/PID/cgroup` must show it.
    pub cgroup: String,
    /// The backend that found it.
    pub backend: Backend,
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
}

/// The inventory the gateway uses: both backends, by the rule in the module
/// docs.
#[derive(Debug, Clone)]
pub struct Inventory {
    lxc: Option<LxcInventory>,
    process: ProcessInventory,
}

impl Inventory {
    /// The inventory described by `config.inventory` and `config.containers`.
    pub fn new(config: &Config) -> Inventory {
        Inventory {
            lxc: (config.inventory.backend == InventoryBackend::Lxc)
                .then(|| LxcInventory::new(config)),
            process: ProcessInventory::new(config),
        }
    }

    /// Looks up `name` in the backend that owns it.
    ///
    /// # Errors
    /// [`InventoryError::NotFound`] when no backend knows it; otherwise as
    /// [`LxcInventory::find`] / [`ProcessInventory::find`].
    pub async fn find(&self, name: &str) -> Result<Container, InventoryError> {
        if self.process.knows(name) {
            return self.process.find(name);
        }
        match &self.lxc {
            Some(lxc) => lxc.find(name).await,
            None => Err(InventoryError::NotFound(name.to_string())),
        }
    }

    /// Every container of both backends, sorted by name (a process-backend
    /// entry hides an LXC container of the same name).
    ///
    /// # Errors
    /// As the backends' `list`.
    pub async fn list(&self) -> Result<Vec<Container>, InventoryError> {
        let mut all = self.process.list();
        if let Some(lxc) = &self.lxc {
            for c in lxc.list().await? {
                if !self.process.knows(&c.name) {
                    all.push(c);
                }
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}
