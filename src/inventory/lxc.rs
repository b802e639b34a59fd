//! The LXC backend: a container's state and init PID under the configured
//! `lxcpath`, asked of its monitor's command socket ([`super::lxc_monitor`],
//! about 0.2 ms) and, when that is not conclusive, of `lxc-info` (3-5 ms).
//! The PID either names is checked to be the container's init (the rule of
//! [`super::init`]) and returned with its start time. Labels, owner and
//! purpose come from `[containers.NAME]`.

mod lifecycle;

use std::path::{Path, PathBuf};

use super::init::{self, NotInit};
use super::{Backend, Container, ContainerState, InventoryError};
use crate::config::{Config, ContainerConfig, valid_name};

/// The LXC inventory.
#[derive(Debug, Clone)]
pub struct LxcInventory {
    lxcpath: PathBuf,
    sections: std::collections::BTreeMap<String, ContainerConfig>,
}

/// `container` with the labels, owner and purpose of its section.
pub(super) fn with_section(
    mut container: Container,
    section: Option<&ContainerConfig>,
) -> Container {
    if let Some(s) = section {
        container.labels = s.labels.clone();
        container.owner = s.owner.clone();
        container.purpose = s.purpose.clone();
    }
    container
}

/// Checks that the running `state`'s PID is the container's init and
/// returns its start time (`None` when not running).
///
/// # Errors
/// [`InventoryError::NotAContainer`] naming the rule the PID failed.
pub(super) fn verify_init(
    runtime: &str,
    name: &str,
    state: &ContainerState,
) -> Result<Option<u64>, InventoryError> {
    let ContainerState::Running { init_pid } = state else {
        return Ok(None);
    };
    let ours = init::gateway_depth().map_err(|source| InventoryError::Tool {
        tool: "procfs",
        source,
    })?;
    match init::verify(*init_pid, ours) {
        Ok(facts) => Ok(Some(facts.start_time)),
        Err(NotInit::Gone) => Err(InventoryError::NotAContainer(format!(
            "{runtime} named PID {init_pid} as the init of {name}, and it exited during the lookup"
        ))),
        Err(why) => Err(InventoryError::NotAContainer(format!(
            "{runtime} named PID {init_pid} as the init of {name}, but {why}"
        ))),
    }
}

impl LxcInventory {
    /// An inventory over `config.inventory.lxcpath` with labels, owners and
    /// purposes from `config.containers`.
    pub fn new(config: &Config) -> LxcInventory {
        LxcInventory {
            lxcpath: config.inventory.lxcpath.clone(),
            sections: config.containers.clone(),
        }
    }

    /// Looks up `name`: its state and init PID from the container's
    /// monitor (the same answer `lxc-info -s -p` prints), or, when the
    /// monitor cannot be asked (no monitor: the container is stopped or does
    /// not exist; anything unexpected), from `lxc-info -P LXCPATH -n NAME -s
    /// -p -H`.
    ///
    /// The init PID is then checked (PID 1 of a PID namespace directly
    /// below the gateway's, parent outside it) and its start time read.
    ///
    /// # Errors
    /// [`InventoryError::InvalidName`], [`InventoryError::NotFound`],
    /// [`InventoryError::NotAContainer`] (the PID is not the init), or a
    /// tool failure.
    pub async fn find(&self, name: &str) -> Result<Container, InventoryError> {
        if !valid_name(name) {
            return Err(InventoryError::InvalidName);
        }
        let state = match super::lxc_monitor::query(&self.lxcpath, name).await {
            Some(state) => state,
            None => self.lxc_info(name).await?,
        };
        let start_time = verify_init("LXC", name, &state)?;
        let cgroup = match &state {
            ContainerState::Running { init_pid } => payload_cgroup(&self.lxcpath, name, *init_pid),
            ContainerState::NotRunning(_) => None,
        }
        .unwrap_or_else(|| format!("/lxc.payload.{name}"));
        let container = Container {
            init_start_time: start_time,
            ..Container::new(name, state, cgroup, Backend::Lxc)
        };
        Ok(with_section(container, self.sections.get(name)))
    }

    /// The state of `name` from `lxc-info -P LXCPATH -n NAME -s -p -H`.
    async fn lxc_info(&self, name: &str) -> Result<ContainerState, InventoryError> {
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
        parse_lxc_info(&stdout).ok_or_else(|| InventoryError::Output {
            tool: "lxc-info",
            output: crate::audit::truncate(&stdout, 200),
        })
    }

    /// All containers under `lxcpath` (directories holding a `config`),
    /// sorted by name, with their state (`UNKNOWN` for one whose lookup
    /// failed, e.g. while it is being created or destroyed).
    ///
    /// # Errors
    /// When `lxcpath` cannot be read.
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
            // A container being created or destroyed right now makes
            // lxc-info fail; list it as UNKNOWN rather than failing the list.
            let c = match self.find(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "cannot look up container");
                    let unknown = Container::new(
                        &name,
                        ContainerState::NotRunning("UNKNOWN".into()),
                        format!("/lxc.payload.{name}"),
                        Backend::Lxc,
                    );
                    with_section(unknown, self.sections.get(&name))
                }
            };
            containers.push(c);
        }
        Ok(containers)
    }
}

/// The payload cgroup LXC gave `name`'s running init `pid`: normally
/// `/lxc.payload.NAME`, but `/lxc.payload.NAME-N` when a cgroup of that
/// name was left behind by an earlier run (LXC then appends `-1`, `-2`,
/// ...). The suffixed form is taken only when the init's parent is this
/// container's own monitor (`[lxc monitor] LXCPATH NAME`), so a container
/// really named `NAME-1` is never mistaken for `NAME`. `None` (the caller
/// then expects `/lxc.payload.NAME`, and the attach's pin check refuses a
/// mismatch) when the files cannot be read or say anything else.
pub(super) fn payload_cgroup(lxcpath: &Path, name: &str, pid: i32) -> Option<String> {
    let lines = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let top = lines
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .filter_map(|path| path.trim_start_matches('/').split('/').next())
        .find(|first| first.starts_with("lxc.payload."))?;
    match payload_suffix(top, name)? {
        false => Some(format!("/{top}")),
        true => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: i32 = stat
                .get(stat.rfind(')')? + 1..)?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
            let monitor = format!("[lxc monitor] {} {name}", lxcpath.display());
            (String::from_utf8_lossy(&cmdline).trim_end_matches('\0') == monitor)
                .then(|| format!("/{top}"))
        }
    }
}

/// For a cgroup directory name: `Some(false)` when it is `lxc.payload.NAME`,
/// `Some(true)` when it is `lxc.payload.NAME-DIGITS` (LXC's suffix for a
/// name taken), `None` otherwise.
fn payload_suffix(dir: &str, name: &str) -> Option<bool> {
    let rest = dir.strip_prefix("lxc.payload.")?.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(false);
    }
    let digits = rest.strip_prefix('-')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(true)
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
    fn payload_cgroups_with_lxc_suffix_are_recognised() {
        assert_eq!(payload_suffix("lxc.payload.web1", "web1"), Some(false));
        assert_eq!(payload_suffix("lxc.payload.web1-1", "web1"), Some(true));
        assert_eq!(payload_suffix("lxc.payload.web1-12", "web1"), Some(true));
        assert_eq!(payload_suffix("lxc.payload.web1-", "web1"), None);
        assert_eq!(payload_suffix("lxc.payload.web1-x", "web1"), None);
        assert_eq!(payload_suffix("lxc.payload.web12", "web1"), None);
        assert_eq!(payload_suffix("lxc.payload.web", "web1"), None);
        assert_eq!(payload_suffix("lxc.monitor.web1", "web1"), None);
    }

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
