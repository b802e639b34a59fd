//! Host-side facts the helper reads before and after `setns` for the
//! container's confinement: the freezer state and the AppArmor label
//! (always through the host procfs, CVE-2015-1334).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use nix::sys::statfs::{PROC_SUPER_MAGIC, fstatfs};

use super::error::{HelperStep, WireError};
use super::helper::{HResult, read_at, step};
use super::procfs;

/// A frozen container would freeze the session on its way in (the startup
/// would then hang until the gateway's timeout): refuse it clearly.
pub(crate) fn refuse_if_frozen(dir: BorrowedFd<'_>, t: &procfs::CgroupTarget) -> HResult<()> {
    let (file, frozen): (&str, fn(&str) -> bool) = if t.v2 {
        ("cgroup.events", procfs::cgroup2_frozen)
    } else {
        ("freezer.state", procfs::freezer_v1_frozen)
    };
    match read_at(dir, file, 4096) {
        Ok(b) if frozen(&String::from_utf8_lossy(&b)) => Err(WireError::ContainerFrozen),
        Ok(_) => Ok(()),
        // Not the freezer hierarchy (v1), or the container's root cgroup.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(WireError::step(HelperStep::OpenCgroups, &e)),
    }
}

/// The init's AppArmor label from the host procfs (CVE-2015-1334: never
/// through the container's /proc). `None` without AppArmor (no such file,
/// or EINVAL when the LSM is not active) or when the init is unconfined.
pub(crate) fn apparmor_label(proc_dir: BorrowedFd<'_>) -> HResult<Option<String>> {
    let s = HelperStep::HostFacts;
    match read_at(
        proc_dir,
        "attr/apparmor/current",
        procfs::MAX_LSM_LABEL_BYTES + 64,
    ) {
        Ok(b) => {
            let text = String::from_utf8(b)
                .map_err(|_| WireError::step(s, &std::io::Error::other("label not UTF-8")))?;
            procfs::parse_apparmor_label(&text)
                .map_err(|e| WireError::step(s, &std::io::Error::other(e)))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(None),
        Err(e) => Err(WireError::step(s, &e)),
    }
}

/// Opens the host procfs root (verified) so that the session's AppArmor
/// exec attribute can be opened through it after `setns`.
pub(crate) fn open_host_proc() -> HResult<OwnedFd> {
    let s = HelperStep::HostFacts;
    let fd = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(step(s))?;
    if fstatfs(fd.as_fd()).map_err(step(s))?.filesystem_type() != PROC_SUPER_MAGIC {
        return Err(WireError::step(
            s,
            &std::io::Error::other("/proc is not procfs"),
        ));
    }
    Ok(fd)
}

/// Opens `<host proc>/<cpid>/attr/apparmor/exec` for writing, for C to
/// write its own exec label into (the kernel only lets a task write its own
/// attributes; LXC does the same).
/// Opens C's AppArmor `exec` attribute (the profile applied at its
/// execve) or, with `current`, its `current` attribute (for a session
/// process that never execs, such as the SFTP server: `changeprofile`
/// applies at once).
pub(crate) fn open_apparmor_exec(
    host_proc: BorrowedFd<'_>,
    cpid: i32,
    current: bool,
) -> HResult<OwnedFd> {
    let s = HelperStep::Apparmor;
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = openat2(
        host_proc,
        format!(
            "{cpid}/attr/apparmor/{}",
            if current { "current" } else { "exec" }
        )
        .as_str(),
        how,
    )
    .map_err(step(s))?;
    if fstatfs(fd.as_fd()).map_err(step(s))?.filesystem_type() != PROC_SUPER_MAGIC {
        return Err(WireError::step(
            s,
            &std::io::Error::other("attr file is not on procfs"),
        ));
    }
    Ok(fd)
}
