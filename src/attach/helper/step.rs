//! The step vocabulary shared by the helper (H), the process it forks to
//! enter the container (I) and the session process (C): reporting a failed
//! step as a [`WireError`], bounded reads of small files, the liveness and
//! single-thread checks. Never opens anything of its own accord.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::attach::error::{HelperStep, WireError};
use crate::attach::{procfs, sys};

/// Fixed fd numbers in the helper: the init's pidfd and the control socket.
pub(crate) const PIDFD_FD: i32 = 3;
/// See [`PIDFD_FD`].
pub(crate) const CTL_FD: i32 = 4;

/// The result of a step of H, I or C.
pub(crate) type HResult<T> = Result<T, WireError>;

/// Maps an errno to a failure of step `s`.
pub(crate) fn step(s: HelperStep) -> impl Fn(Errno) -> WireError {
    move |e| WireError::errno(s, e)
}

/// Maps an io error to a failure of step `s`.
pub(crate) fn io_step(s: HelperStep) -> impl Fn(std::io::Error) -> WireError {
    move |e| WireError::step(s, &e)
}

/// A failure of step `s` without an errno.
pub(crate) fn fail(s: HelperStep, msg: &str) -> WireError {
    WireError::step(s, &std::io::Error::other(msg.to_owned()))
}

/// The pinned init is not (any more) the process the gateway verified.
pub(crate) fn init_changed(detail: impl Into<String>) -> WireError {
    WireError::InitChanged {
        detail: detail.into(),
    }
}

/// Reads a small file relative to `dir`, at most `max` bytes.
pub(crate) fn read_at(dir: BorrowedFd<'_>, path: &str, max: usize) -> std::io::Result<Vec<u8>> {
    let fd = openat(
        dir,
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    read_bounded(fd.as_fd(), max)
}

/// Reads `fd` to EOF; errors with EFBIG above `max` bytes.
pub(crate) fn read_bounded(fd: BorrowedFd<'_>, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > max {
                    return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A small procfs or cgroupfs text file relative to `dir` (at most
/// [`procfs::MAX_PROC_FILE_BYTES`]).
pub(crate) fn read_text_at(dir: BorrowedFd<'_>, path: &str) -> HResult<String> {
    let b =
        read_at(dir, path, procfs::MAX_PROC_FILE_BYTES).map_err(io_step(HelperStep::HostFacts))?;
    String::from_utf8(b).map_err(|_| fail(HelperStep::HostFacts, &format!("{path}: not UTF-8")))
}

/// `Threads: 1` in our own status: `setns` of the user and mount
/// namespaces, and `clone3` without a stack, need a single thread.
pub(crate) fn ensure_single_threaded() -> HResult<()> {
    let status = read_text_at(nix::fcntl::AT_FDCWD, "/proc/self/status")?;
    match procfs::status_field(&status, "Threads") {
        Some("1") => Ok(()),
        _ => Err(fail(HelperStep::Fork, "helper is not single-threaded")),
    }
}

/// The process behind `pidfd` is alive (a pid is never reused while its
/// process, or its zombie, exists).
pub(crate) fn alive(pidfd: BorrowedFd<'_>) -> HResult<()> {
    sys::pidfd_send_signal(pidfd, 0, 0).map_err(|_| init_changed("init exited or pid was recycled"))
}

/// The pid a pidfd refers to (`Pid:` of its fdinfo; -1 once it was reaped).
pub(crate) fn pid_of_pidfd(pidfd: BorrowedFd<'_>) -> HResult<i32> {
    use std::os::fd::AsRawFd;
    let info = read_text_at(
        nix::fcntl::AT_FDCWD,
        &format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()),
    )?;
    procfs::status_field(&info, "Pid")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| fail(HelperStep::HostFacts, "not a pidfd"))
}
