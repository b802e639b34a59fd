//! `[policy]`, `[inventory]` and `[containers.NAME]`: where policies
//! live, how containers are found, and per-container settings (labels,
//! owner, purpose).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The containers (not VMs) of an Incus or LXD daemon, through its REST
    /// API on `incus_socket`; a `[containers.NAME]` with `pid_file` or
    /// `cgroup` is still found by the process backend (mixing).
    Incus,
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
    /// The Incus or LXD daemon's Unix socket for `backend = "incus"`
    /// (default: `/var/lib/incus/unix.socket` when it exists, else LXD's
    /// `/var/lib/lxd/unix.socket`). Absolute.
    #[serde(default)]
    pub incus_socket: Option<PathBuf>,
    /// How long one request to the Incus/LXD daemon may take, connecting
    /// included (humantime, default `5s`, at most `60s`).
    #[serde(default = "default_incus_timeout", with = "humantime_serde")]
    pub incus_timeout: Duration,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            backend: default_backend(),
            lxcpath: default_lxcpath(),
            incus_socket: None,
            incus_timeout: default_incus_timeout(),
        }
    }
}

/// The Incus daemon's socket.
pub const INCUS_SOCKET: &str = "/var/lib/incus/unix.socket";
/// The LXD daemon's socket (Debian's package; the snap's is
/// `/var/snap/lxd/common/lxd/unix.socket`).
pub const LXD_SOCKET: &str = "/var/lib/lxd/unix.socket";

impl InventoryConfig {
    /// The daemon socket `backend = "incus"` talks to: `incus_socket`, else
    /// [`INCUS_SOCKET`] when it exists, else [`LXD_SOCKET`].
    pub fn incus_socket(&self) -> PathBuf {
        match &self.incus_socket {
            Some(p) => p.clone(),
            None if Path::new(INCUS_SOCKET).exists() => PathBuf::from(INCUS_SOCKET),
            None => PathBuf::from(LXD_SOCKET),
        }
    }
}

/// Longest `owner` or `purpose`, in bytes.
pub const MAX_OWNER_PURPOSE_BYTES: usize = 256;

/// `[containers.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Labels the policy sees as the container's tags, e.g. `env = "dev"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Who answers for this container (a principal subject, an email or a
    /// team), at most 256 bytes; policy sees it as `resource.owner`.
    /// `containers list` flags containers without one.
    pub owner: Option<String>,
    /// What the container is for, at most 256 bytes; policy sees it as
    /// `resource.purpose`.
    pub purpose: Option<String>,
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
            if self.inventory.backend == InventoryBackend::Incus && !c.is_process() {
                return Err(invalid(
                    &format!("containers.{name}"),
                    "with backend = \"incus\", an instance's labels, owner and purpose are its \
                     user.portcullis.* config keys; a [containers.NAME] section needs pid_file \
                     or cgroup",
                ));
            }
            for (key, value) in [("owner", &c.owner), ("purpose", &c.purpose)] {
                if let Some(v) = value
                    && (v.trim().is_empty()
                        || v.len() > MAX_OWNER_PURPOSE_BYTES
                        || v.chars().any(char::is_control))
                {
                    return Err(invalid(
                        &format!("containers.{name}.{key}"),
                        "must be 1 to 256 bytes without control characters",
                    ));
                }
            }
        }
        if let Some(p) = &self.inventory.incus_socket
            && !p.is_absolute()
        {
            return Err(invalid(
                "inventory.incus_socket",
                "must be an absolute path",
            ));
        }
        let timeout = self.inventory.incus_timeout;
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err(invalid(
                "inventory.incus_timeout",
                "must be more than 0s and at most 60s",
            ));
        }
        Ok(())
    }
}

fn default_incus_timeout() -> Duration {
    Duration::from_secs(5)
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
