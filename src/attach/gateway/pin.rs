//! Pinning a container's init: a pidfd taken right after the lookup and
//! verified (cgroup, start time, that it is a PID namespace's init one
//! level below the gateway's), so a recycled PID or an ordinary process is
//! never entered; and a watch that resolves when the init exits (the
//! container stopped). Never reads anything but `/proc/<pid>` of the host.

use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::attach::error::AttachError;
use crate::attach::{procfs, sys};

/// The container's init process, pinned by a pidfd and verified.
#[derive(Debug)]
pub struct PinnedInit {
    pub(crate) pidfd: OwnedFd,
    pub(crate) pid: i32,
    pub(crate) start_time: u64,
    cgroup: String,
    pub(crate) expected_cgroup: String,
}

fn proc_err(path: String, e: std::io::Error) -> AttachError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => AttachError::ContainerNotRunning,
        _ => AttachError::Procfs { path, source: e },
    }
}

impl PinnedInit {
    /// `pidfd_open(pid)` immediately, then verifies the process: its cgroup
    /// (the v2 `0::` line of `/proc/<pid>/cgroup`, or any v1 line when there
    /// is no v2 line) must equal or be below `expected_cgroup` (e.g.
    /// `"/lxc.payload.web1"`; `"/"` is refused); it must be PID 1 of a PID
    /// namespace exactly one level below the gateway's (`NSpid:` of
    /// `/proc/<pid>/status` ends in `1` and has one entry more than the
    /// gateway's own), so an ordinary process of the container, or the init
    /// of a namespace nested inside it, is refused (review finding 9); and,
    /// when given, its start time (field 22 of `/proc/<pid>/stat`, clock
    /// ticks since boot) must equal `expected_start_time`. Callers pass the
    /// start time their lookup saw, so a container restarted (and a PID
    /// reused) between lookup and pin is refused. Finally
    /// `pidfd_send_signal(0)` must still succeed, which proves the `/proc`
    /// reads described the pinned process.
    ///
    /// Errors: [`AttachError::ContainerNotRunning`] (no such pid),
    /// [`AttachError::InitChanged`] (other cgroup/start time, or it died
    /// during the check), [`AttachError::InvalidRequest`],
    /// [`AttachError::PidfdOpen`], [`AttachError::Procfs`].
    pub fn pin(
        pid: i32,
        expected_cgroup: &str,
        expected_start_time: Option<u64>,
    ) -> Result<PinnedInit, AttachError> {
        if pid <= 1 {
            return Err(AttachError::InvalidRequest(format!(
                "pid {pid} cannot be a container init"
            )));
        }
        let expected = expected_cgroup.trim_end_matches('/');
        if !expected.starts_with('/') || expected.split('/').any(|c| c == "..") {
            return Err(AttachError::InvalidRequest(format!(
                "bad expected cgroup {expected_cgroup:?}"
            )));
        }
        let pidfd = sys::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => AttachError::ContainerNotRunning,
            _ => AttachError::PidfdOpen(e),
        })?;
        let cg_path = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&cg_path).map_err(|e| proc_err(cg_path, e))?;
        let lines = procfs::parse_cgroup_file(&text).map_err(AttachError::InitChanged)?;
        let cgroup = procfs::identifying_cgroup(&lines, expected)
            .ok_or_else(|| {
                AttachError::InitChanged(format!("pid {pid} is not in cgroup {expected}"))
            })?
            .to_owned();
        let status_path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&status_path).map_err(|e| proc_err(status_path, e))?;
        let own =
            std::fs::read_to_string("/proc/self/status").map_err(|e| AttachError::Procfs {
                path: "/proc/self/status".into(),
                source: e,
            })?;
        if !procfs::is_namespace_init_below(&status, &own) {
            return Err(AttachError::InitChanged(format!(
                "pid {pid} is not the init of a PID namespace one level below the gateway's"
            )));
        }
        let stat_path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&stat_path).map_err(|e| proc_err(stat_path, e))?;
        let start_time = procfs::start_time_from_stat(&stat)
            .ok_or_else(|| AttachError::Protocol(format!("unparsable /proc/{pid}/stat")))?;
        if let Some(want) = expected_start_time
            && want != start_time
        {
            return Err(AttachError::InitChanged(format!(
                "pid {pid} start time {start_time} != {want}"
            )));
        }
        sys::pidfd_send_signal(pidfd.as_fd(), 0, 0).map_err(|_| {
            AttachError::InitChanged(format!("pid {pid} exited during verification"))
        })?;
        Ok(PinnedInit {
            pidfd,
            pid,
            start_time,
            cgroup,
            expected_cgroup: expected.to_owned(),
        })
    }

    /// The init's pid in the host pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The init's start time (clock ticks since boot), for pinning later.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// The cgroup path the init was found in (relative to the hierarchy root).
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }

    /// True while the pinned process is alive.
    pub fn is_alive(&self) -> bool {
        sys::pidfd_send_signal(self.pidfd.as_fd(), 0, 0).is_ok()
    }
}

impl PinnedInit {
    /// A watch on the init's exit, for ending sessions when the container
    /// stops. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`AttachError::Control`] when the pidfd cannot be duplicated or
    /// registered with the runtime.
    pub fn watch(&self) -> Result<InitWatch, AttachError> {
        let fd = sys::dup_at_least(self.pidfd.as_fd(), 3).map_err(AttachError::Control)?;
        let fd = sys::async_fd_readable(fd).map_err(AttachError::Control)?;
        Ok(InitWatch { fd })
    }
}

/// Resolves when the pinned init exits: a pidfd polls readable once its
/// process has exited (Linux 5.3+), whether or not it has been reaped.
#[derive(Debug)]
pub struct InitWatch {
    fd: AsyncFd<OwnedFd>,
}

impl InitWatch {
    /// Waits until the init has exited. Cancel-safe; returns at once when
    /// it already has. Never returns if the runtime cannot poll the fd.
    pub async fn exited(&self) {
        match self.fd.readable().await {
            // Level-triggered for us: keep the readiness so later calls
            // return immediately too.
            Ok(_guard) => {}
            Err(_) => std::future::pending().await,
        }
    }
}
