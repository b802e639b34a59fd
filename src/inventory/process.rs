//! The process backend: a container is whatever process tree the operator
//! names in `[containers.NAME]`, by `pid_file` or by `cgroup`, so any
//! runtime (systemd-nspawn, runc, podman, a hand-made `unshare`) can be
//! targeted.
//!
//! The init comes from the runtime, never from what runs inside:
//! - `pid_file`: the decimal PID in the file (at most 64 bytes), which the
//!   runtime wrote;
//! - `cgroup`: the process of the directory's `cgroup.procs` that the
//!   runtime started as the container's init. A candidate must pass the
//!   rule of [`super::init`]: PID 1 of a PID namespace exactly one level
//!   below the gateway's, whose parent is outside that namespace. A user
//!   inside the container who makes a nested PID namespace
//!   (`unshare -p`) gets an init one level deeper, so it is never a
//!   candidate, whatever its PID (review finding 6). When several
//!   processes qualify (the directory holds more than one container) the
//!   lookup is refused rather than guessed.
//!
//! Either way the process must pass that rule and live in another mount
//! namespace than the gateway's, or the lookup is refused
//! ([`InventoryError::NotAContainer`]): a plain host process is the host.
//! A missing pid file, an empty or missing cgroup, or a PID that no longer
//! exists mean `STOPPED`. The expected cgroup (checked again when the init
//! is pinned) is the init's cgroup2 path at lookup time (else its first v1
//! path); an init in the root cgroup is refused. The init's start time is
//! returned for the pin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::init::{self, NotInit, gone, read_proc};
use super::{Backend, Container, ContainerState, InventoryError};
use crate::config::Config;

/// Largest pid file read, in bytes.
const MAX_PID_FILE_BYTES: u64 = 64;

#[derive(Debug, Clone)]
enum Source {
    PidFile(PathBuf),
    Cgroup(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    source: Source,
    labels: BTreeMap<String, String>,
    owner: Option<String>,
    purpose: Option<String>,
}

/// The containers of `[containers.NAME]` sections that have `pid_file` or
/// `cgroup`.
#[derive(Debug, Clone)]
pub struct ProcessInventory {
    entries: BTreeMap<String, Entry>,
}

fn read_pid_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_PID_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_PID_FILE_BYTES {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(text)
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
                        owner: c.owner.clone(),
                        purpose: c.purpose.clone(),
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
    /// [`InventoryError::NotAContainer`] (the process is not a container's
    /// init, several processes of the cgroup are, or it shares the
    /// gateway's mount namespace), or a procfs read failure
    /// ([`InventoryError::Tool`]).
    pub fn find(&self, name: &str) -> Result<Container, InventoryError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| InventoryError::NotFound(name.to_string()))?;
        let container = |state, cgroup, start_time| Container {
            labels: entry.labels.clone(),
            owner: entry.owner.clone(),
            purpose: entry.purpose.clone(),
            init_start_time: start_time,
            ..Container::new(name, state, cgroup, Backend::Process)
        };
        let stopped = || {
            container(
                ContainerState::NotRunning("STOPPED".into()),
                String::new(),
                None,
            )
        };
        let ours = init::gateway_depth().map_err(io_err)?;
        let facts = match &entry.source {
            Source::PidFile(path) => {
                let pid = match read_pid_file(path) {
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
                    Err(e) if gone(&e) => return Ok(stopped()),
                    Err(e) => return Err(io_err(e)),
                };
                match init::verify(pid, ours) {
                    Ok(facts) => facts,
                    Err(NotInit::Gone) => return Ok(stopped()),
                    Err(why) => {
                        return Err(InventoryError::NotAContainer(format!(
                            "PID {pid} of {} is not a container's init: {why}",
                            path.display()
                        )));
                    }
                }
            }
            Source::Cgroup(dir) => match runtime_init(dir, ours)? {
                Some(facts) => facts,
                None => return Ok(stopped()),
            },
        };
        let pid = facts.pid;
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/mnt"));
        let mine = std::fs::metadata("/proc/self/ns/mnt").map_err(io_err)?;
        match theirs {
            Ok(t) => {
                use std::os::unix::fs::MetadataExt;
                if (t.dev(), t.ino()) == (mine.dev(), mine.ino()) {
                    return Err(InventoryError::NotAContainer(format!(
                        "PID {pid} shares the gateway's mount namespace"
                    )));
                }
            }
            Err(e) if gone(&e) => return Ok(stopped()),
            Err(e) => return Err(io_err(e)),
        }
        let cg_text = match read_proc(Path::new(&format!("/proc/{pid}/cgroup"))) {
            Ok(t) => t,
            Err(e) if gone(&e) => return Ok(stopped()),
            Err(e) => return Err(io_err(e)),
        };
        let cgroup = identifying_cgroup(&cg_text)
            .filter(|c| c.starts_with('/') && c.len() > 1)
            .ok_or_else(|| {
                InventoryError::NotAContainer(format!("PID {pid} is in the root cgroup"))
            })?;
        Ok(container(
            ContainerState::Running { init_pid: pid },
            cgroup,
            Some(facts.start_time),
        ))
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
                        labels: entry.labels.clone(),
                        owner: entry.owner.clone(),
                        purpose: entry.purpose.clone(),
                        ..Container::new(
                            name,
                            ContainerState::NotRunning("INVALID".into()),
                            String::new(),
                            Backend::Process,
                        )
                    }
                })
            })
            .collect()
    }
}

/// The init the runtime started in `dir`: the one process of its
/// `cgroup.procs` that passes [`init::verify`]. `None` when the cgroup is
/// missing or holds no process.
///
/// # Errors
/// [`InventoryError::NotAContainer`] when no process qualifies, or more
/// than one does (named with their start times); a procfs failure.
fn runtime_init(dir: &Path, ours: usize) -> Result<Option<init::ProcessFacts>, InventoryError> {
    let text = match read_proc(&dir.join("cgroup.procs")) {
        Ok(t) => t,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if pids.is_empty() {
        return Ok(None);
    }
    let mut candidates: Vec<init::ProcessFacts> = pids
        .iter()
        .filter_map(|pid| init::verify(*pid, ours).ok())
        .collect();
    candidates.sort_by_key(|f| (f.start_time, f.pid));
    match candidates.as_slice() {
        [one] => Ok(Some(one.clone())),
        [] => Err(InventoryError::NotAContainer(format!(
            "no process of {} is a container's init (PID 1 of a PID namespace directly \
             below the gateway's, started from outside it)",
            dir.display()
        ))),
        several => {
            let list: Vec<String> = several
                .iter()
                .map(|f| format!("{} (started at tick {})", f.pid, f.start_time))
                .collect();
            Err(InventoryError::NotAContainer(format!(
                "{} holds several container inits: {}; name the container's own cgroup",
                dir.display(),
                list.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

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
