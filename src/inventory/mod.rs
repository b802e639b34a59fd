//! Finding containers: the LXC backend asks `lxc-info` for a container's
//! state and init PID under the configured `lxcpath`; labels come from the
//! config file.
//!
//! Owns lookups only; it never enters a container. A name is checked with
//! [`crate::config::valid_name`] before it reaches any command line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{Config, valid_name};

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
    /// The runtime's tool printed something unexpected.
    #[error("unexpected output from {tool}: {output}")]
    Output {
        /// The tool.
        tool: &'static str,
        /// Its output, cut to 200 bytes.
        output: String,
    },
}

/// The LXC inventory.
#[derive(Debug, Clone)]
pub struct LxcInventory {
    lxcpath: PathBuf,
    labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl LxcInventory {
    /// An inventory over `config.inventory.lxcpath` with labels from
    /// `config.containers`.
    pub fn new(config: &Config) -> LxcInventory {
        LxcInventory {
            lxcpath: config.inventory.lxcpath.clone(),
            labels: config
                .containers
                .iter()
                .map(|(name, c)| (name.clone(), c.labels.clone()))
                .collect(),
        }
    }

    /// Looks up `name` with `lxc-info -P LXCPATH -n NAME -s -p -H`.
    ///
    /// # Errors
    /// [`InventoryError::InvalidName`], [`InventoryError::NotFound`], or a
    /// tool failure.
    pub async fn find(&self, name: &str) -> Result<Container, InventoryError> {
        if !valid_name(name) {
            return Err(InventoryError::InvalidName);
        }
        let output = tokio::process::Command::new("lxc-info")
            .arg("-P")
            .arg(&self.lxcpath)
            .args(["-n", name, "-s", "-p", "-H"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| InventoryError::Tool {
                tool: "lxc-info",
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(InventoryError::NotFound(name.to_string()));
        }
        let state = parse_lxc_info(&stdout).ok_or_else(|| InventoryError::Output {
            tool: "lxc-info",
            output: crate::audit::truncate(&stdout, 200),
        })?;
        Ok(Container {
            name: name.to_string(),
            state,
            labels: self.labels.get(name).cloned().unwrap_or_default(),
            cgroup: format!("/lxc.payload.{name}"),
        })
    }

    /// All containers under `lxcpath` (directories holding a `config`),
    /// sorted by name, with their state.
    ///
    /// # Errors
    /// As [`LxcInventory::find`], or when `lxcpath` cannot be read.
    pub async fn list(&self) -> Result<Vec<Container>, InventoryError> {
        let entries = std::fs::read_dir(&self.lxcpath).map_err(|source| InventoryError::Tool {
            tool: "lxcpath",
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("config").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        let mut containers = Vec::new();
        for name in names {
            containers.push(self.find(&name).await?);
        }
        Ok(containers)
    }
}

/// Parses `lxc-info -s -p -H` output: `State: RUNNING` and `PID: 123`.
fn parse_lxc_info(text: &str) -> Option<ContainerState> {
    let mut state = None;
    let mut pid = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("State:") {
            state = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("PID:") {
            pid = v.trim().parse::<i32>().ok().filter(|p| *p > 1);
        }
    }
    match (state?.as_str(), pid) {
        ("RUNNING", Some(init_pid)) => Some(ContainerState::Running { init_pid }),
        ("RUNNING", None) => None,
        (other, _) => Some(ContainerState::NotRunning(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_running_and_stopped() {
        assert_eq!(
            parse_lxc_info("State:          RUNNING\nPID:            3098\n"),
            Some(ContainerState::Running { init_pid: 3098 })
        );
        assert_eq!(
            parse_lxc_info("State:          STOPPED\n"),
            Some(ContainerState::NotRunning("STOPPED".into()))
        );
        assert_eq!(
            parse_lxc_info("State: FROZEN\nPID: 12\n"),
            Some(ContainerState::NotRunning("FROZEN".into()))
        );
        assert_eq!(parse_lxc_info("State: RUNNING\nPID: x\n"), None);
        assert_eq!(parse_lxc_info("garbage"), None);
    }
}
