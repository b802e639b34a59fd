//! `[policy]`, `[inventory]` and `[containers.NAME]`: where policies
//! live, how containers are found, and per-container settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, ConfigError, valid_name};

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory holding `*.cedar` policies and `portcullis.cedarschema`
    /// (default `./policies`).
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: default_policy_dir(),
        }
    }
}

/// Which inventory backend finds containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InventoryBackend {
    /// LXC containers under `lxcpath`, found with `lxc-info`; a
    /// `[containers.NAME]` with `pid_file` or `cgroup` is still found by the
    /// process backend (mixing).
    Lxc,
    /// Only the `[containers.NAME]` sections, each with `pid_file` or
    /// `cgroup` (any runtime: systemd-nspawn, runc, podman...).
    Process,
}

/// `[inventory]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// Backend (default `lxc`).
    #[serde(default = "default_backend")]
    pub backend: InventoryBackend,
    /// LXC's container directory (default `/var/lib/lxc`).
    #[serde(default = "default_lxcpath")]
    pub lxcpath: PathBuf,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            backend: default_backend(),
            lxcpath: default_lxcpath(),
        }
    }
}

/// `[containers.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Labels the policy sees as the container's tags, e.g. `env = "dev"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Process backend: a file holding the host PID of the container's init
    /// (decimal, at most 64 bytes), e.g. `/run/web1.pid`. Absolute.
    pub pid_file: Option<PathBuf>,
    /// Process backend: the container's cgroup directory on the host, e.g.
    /// `/sys/fs/cgroup/unified/machine.slice/web1`; the init is the lowest
    /// PID of its `cgroup.procs` that is PID 1 of its own PID namespace.
    /// Absolute, no `..`.
    pub cgroup: Option<PathBuf>,
}

impl ContainerConfig {
    /// True when this container is found by the process backend.
    pub fn is_process(&self) -> bool {
        self.pid_file.is_some() || self.cgroup.is_some()
    }
}

impl Config {
    pub(super) fn validate_containers(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.to_string(),
        };
        for (name, c) in &self.containers {
            if !valid_name(name) {
                return Err(invalid(
                    &format!("containers.{name}"),
                    "container names are [A-Za-z0-9_.-], at most 64 bytes",
                ));
            }
            if c.pid_file.is_some() && c.cgroup.is_some() {
                return Err(invalid(
                    &format!("containers.{name}"),
                    "set pid_file or cgroup, not both",
                ));
            }
            for (key, p) in [("pid_file", &c.pid_file), ("cgroup", &c.cgroup)] {
                if let Some(p) = p
                    && (!p.is_absolute()
                        || p.components().any(|c| c == std::path::Component::ParentDir))
                {
                    return Err(invalid(
                        &format!("containers.{name}.{key}"),
                        "must be an absolute path without '..'",
                    ));
                }
            }
            if self.inventory.backend == InventoryBackend::Process && !c.is_process() {
                return Err(invalid(
                    &format!("containers.{name}"),
                    "the process backend needs pid_file or cgroup",
                ));
            }
        }
        Ok(())
    }
}

fn default_policy_dir() -> PathBuf {
    PathBuf::from("./policies")
}

fn default_backend() -> InventoryBackend {
    InventoryBackend::Lxc
}

fn default_lxcpath() -> PathBuf {
    PathBuf::from("/var/lib/lxc")
}
