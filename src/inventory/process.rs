//! The process backend: a container is whatever process tree the operator
//! names in `[containers.NAME]`, by `pid_file` or by `cgroup`, so any
//! runtime (systemd-nspawn, runc, podman, a hand-made `unshare`) can be
//! targeted.
//!
//! The init is found by this rule:
//! - `pid_file`: the decimal PID in the file (at most 64 bytes);
//! - `cgroup`: the lowest PID listed in the directory's `cgroup.procs` that
//!   is PID 1 of its own PID namespace (the last `NSpid:` entry of its
//!   `/proc/PID/status` is `1`).
//!
//! Either way the process must be PID 1 of a PID namespace other than the
//! gateway's, and live in another mount namespace, or the lookup is refused
//! ([`InventoryError::NotAContainer`]): a plain host process is the host.
//! A missing pid file, an empty or missing cgroup, or a PID that no longer
//! exists mean `STOPPED`. The expected cgroup (checked again when the init is
//! pinned) is the init's cgroup2 path at lookup time (else its first v1
//! path); an init in the root cgroup is refused.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Backend, Container, ContainerState, InventoryError};
use crate::config::Config;

/// Largest pid file read, in bytes.
const MAX_PID_FILE_BYTES: u64 = 64;
/// Largest `cgroup.procs` / procfs file read, in bytes.
const MAX_PROC_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
enum Source {
    PidFile(PathBuf),
    Cgroup(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    source: Source,
    labels: BTreeMap<String, String>,
}

/// The containers of `[containers.NAME]` sections that have `pid_file` or
/// `cgroup`.
#[derive(Debug, Clone)]
pub struct ProcessInventory {
    entries: BTreeMap<String, Entry>,
}

fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(text)
}

fn not_found(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// The `NSpid:` entries of a `/proc/PID/status` text.
fn nspid(status: &str) -> Vec<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

/// True when the status describes PID 1 of a nested PID namespace.
fn is_namespace_init(status: &str) -> bool {
    let ids = nspid(status);
    ids.len() >= 2 && ids.last() == Some(&"1")
}

/// The cgroup2 (`0::`) path of a `/proc/PID/cgroup` text, else the first
/// v1 path.
fn identifying_cgroup(text: &str) -> Option<String> {
    let mut first = None;
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if id == "0" && ctrl.is_empty() {
            return Some(path.to_owned());
        }
        if first.is_none() {
            first = Some(path.to_owned());
        }
    }
    first
}

fn io_err(source: std::io::Error) -> InventoryError {
    InventoryError::Tool {
        tool: "procfs",
        source,
    }
}

impl ProcessInventory {
    /// The process-backend entries of `config.containers`.
    pub fn new(config: &Config) -> ProcessInventory {
        let entries = config
            .containers
            .iter()
            .filter_map(|(name, c)| {
                let source = match (&c.pid_file, &c.cgroup) {
                    (Some(p), _) => Source::PidFile(p.clone()),
                    (None, Some(g)) => Source::Cgroup(g.clone()),
                    (None, None) => return None,
                };
                Some((
                    name.clone(),
                    Entry {
                        source,
                        labels: c.labels.clone(),
                    },
                ))
            })
            .collect();
        ProcessInventory { entries }
    }

    /// True when `name` is a process-backend container.
    pub fn knows(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Finds the init of `name` by the rule in the module docs.
    ///
    /// # Errors
    /// [`InventoryError::NotFound`] (not configured),
    /// [`InventoryError::NotAContainer`] (the process is not a namespace
    /// init, or shares the gateway's mount namespace), or a procfs read
    /// failure ([`InventoryError::Tool`]).
    pub fn find(&self, name: &str) -> Result<Container, InventoryError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| InventoryError::NotFound(name.to_string()))?;
        let container = |state, cgroup| Container {
            name: name.to_string(),
            state,
            labels: entry.labels.clone(),
            cgroup,
            backend: Backend::Process,
        };
        let stopped = || container(ContainerState::NotRunning("STOPPED".into()), String::new());
        let pid = match &entry.source {
            Source::PidFile(path) => match read_bounded(path, MAX_PID_FILE_BYTES) {
                Ok(text) => text
                    .trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 1)
                    .ok_or_else(|| {
                        InventoryError::NotAContainer(format!(
                            "{} does not hold a PID above 1",
                            path.display()
                        ))
                    })?,
                Err(e) if not_found(&e) => return Ok(stopped()),
                Err(e) => return Err(io_err(e)),
            },
            Source::Cgroup(dir) => match lowest_namespace_init(dir)? {
                Some(pid) => pid,
                None => return Ok(stopped()),
            },
        };
        let status = match read_bounded(Path::new(&format!("/proc/{pid}/status")), MAX_PROC_BYTES) {
            Ok(s) => s,
            Err(e) if not_found(&e) => return Ok(stopped()),
            Err(e) => return Err(io_err(e)),
        };
        if !is_namespace_init(&status) {
            return Err(InventoryError::NotAContainer(format!(
                "PID {pid} is not PID 1 of its own PID namespace"
            )));
        }
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/mnt"));
        let ours = std::fs::metadata("/proc/self/ns/mnt").map_err(io_err)?;
        match theirs {
            Ok(t) => {
                use std::os::unix::fs::MetadataExt;
                if (t.dev(), t.ino()) == (ours.dev(), ours.ino()) {
                    return Err(InventoryError::NotAContainer(format!(
                        "PID {pid} shares the gateway's mount namespace"
                    )));
                }
            }
            Err(e) if not_found(&e) => return Ok(stopped()),
            Err(e) => return Err(io_err(e)),
        }
        let cg_text = match read_bounded(Path::new(&format!("/proc/{pid}/cgroup")), MAX_PROC_BYTES)
        {
            Ok(t) => t,
            Err(e) if not_found(&e) => return Ok(stopped()),
            Err(e) => return Err(io_err(e)),
        };
        let cgroup = identifying_cgroup(&cg_text)
            .filter(|c| c.starts_with('/') && c.len() > 1)
            .ok_or_else(|| {
                InventoryError::NotAContainer(format!("PID {pid} is in the root cgroup"))
            })?;
        Ok(container(ContainerState::Running { init_pid: pid }, cgroup))
    }

    /// Every process-backend container with its state; one that cannot be
    /// looked up is listed as `INVALID` (the reason is logged).
    pub fn list(&self) -> Vec<Container> {
        self.entries
            .iter()
            .map(|(name, entry)| {
                self.find(name).unwrap_or_else(|e| {
                    tracing::warn!(container = %name, error = %e, "invalid process container");
                    Container {
                        name: name.clone(),
                        state: ContainerState::NotRunning("INVALID".into()),
                        labels: entry.labels.clone(),
                        cgroup: String::new(),
                        backend: Backend::Process,
                    }
                })
            })
            .collect()
    }
}

/// The lowest PID of `dir/cgroup.procs` that is PID 1 of its own PID
/// namespace; `None` when the cgroup is missing or holds no process.
fn lowest_namespace_init(dir: &Path) -> Result<Option<i32>, InventoryError> {
    let text = match read_bounded(&dir.join("cgroup.procs"), MAX_PROC_BYTES) {
        Ok(t) => t,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    pids.sort_unstable();
    if pids.is_empty() {
        return Ok(None);
    }
    for pid in &pids {
        let path = format!("/proc/{pid}/status");
        if let Ok(status) = read_bounded(Path::new(&path), MAX_PROC_BYTES)
            && is_namespace_init(&status)
        {
            return Ok(Some(*pid));
        }
    }
    Err(InventoryError::NotAContainer(format!(
        "no process of {} is PID 1 of its own PID namespace",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn namespace_init_rule() {
        assert!(is_namespace_init("Name:\tinit\nNSpid:\t25713\t1\n"));
        assert!(is_namespace_init("NSpid:\t9\t5\t1\n"));
        assert!(!is_namespace_init("NSpid:\t25721\t7\n"));
        assert!(!is_namespace_init("NSpid:\t1\n"));
        assert!(!is_namespace_init("Name:\tx\n"));
    }

    #[test]
    fn cgroup_choice() {
        let t = "12:memory:/a\n0::/lxc.payload.x\n";
        assert_eq!(identifying_cgroup(t).as_deref(), Some("/lxc.payload.x"));
        assert_eq!(identifying_cgroup("3:cpu:/b\n").as_deref(), Some("/b"));
        assert_eq!(identifying_cgroup(""), None);
    }

    #[test]
    fn host_processes_are_refused() {
        // This test process is PID-namespace root of nothing.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("p.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let text = format!(
            "[oidc]\nissuer = \"https://i.example\"\nclient_id = \"c\"\n\
             [containers.self]\npid_file = \"{}\"\n\
             [containers.gone]\npid_file = \"{}/missing.pid\"\n",
            pid_file.display(),
            dir.path().display()
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        let inv = ProcessInventory::new(&config);
        assert!(matches!(
            inv.find("self"),
            Err(InventoryError::NotAContainer(_))
        ));
        let gone = inv.find("gone").unwrap();
        assert_eq!(gone.state, ContainerState::NotRunning("STOPPED".into()));
        assert!(matches!(inv.find("nope"), Err(InventoryError::NotFound(_))));
    }
}
