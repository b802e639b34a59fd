//! The session's seccomp filters: the container init's own filters, copied
//! (`PTRACE_SECCOMP_GET_FILTER`, as CRIU does), then the gateway's
//! deny-list. Installed by the process that enters the container before it
//! creates the session process, so the session and everything it starts
//! inherit them (filters survive fork and exec and can never be removed).
//!
//! Why copy: the session is not a child of the init, so it does not
//! inherit the init's filter; `lxc-attach` compiles `lxc.seccomp.profile`
//! again, which works for LXC only. The init's filters, copied, are exactly
//! what the container runs under, whatever the runtime (LXC, Docker,
//! Podman through the process backend). When the init has a filter that
//! cannot be copied (the gateway itself runs under seccomp, ptrace of the
//! init is refused), the session is refused by default
//! ([`crate::attach::UnreproducibleSeccomp`]).
//!
//! The deny-list: the syscalls of LXC's default policy
//! (`/usr/share/lxc/config/common.seccomp`: kernel modules, kexec,
//! `open_by_handle_at`, the "shocker" escape from a privileged container to
//! any host file) plus `kexec_file_load`, each failing with `EPERM`, and
//! LXC's `reject_force_umount` (`umount2` with `MNT_FORCE` fails with
//! `EACCES`). Built with libseccomp (the library LXC and runc use), for the
//! native architecture and its compat ABIs (x86_64: also i386 and x32).
//! `no_new_privs` is left as the init has it: the kernel then requires
//! `CAP_SYS_ADMIN` in the caller's user namespace, which the entering
//! process has right after `setns` and before it narrows its capabilities.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::sys::ptrace;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::step::HResult;
use crate::attach::request::UnreproducibleSeccomp;
use crate::attach::sys::{self, BpfInsn};

/// Syscalls every session is denied with `EPERM`.
pub const DENIED_SYSCALLS: [&str; 6] = [
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
];

/// Most filters copied from one init.
const MAX_FILTERS: usize = 64;

/// The compat ABIs of the native architecture, filtered as well.
fn compat_arches() -> &'static [ScmpArch] {
    match ScmpArch::native() {
        ScmpArch::X8664 => &[ScmpArch::X86, ScmpArch::X32],
        ScmpArch::Aarch64 => &[ScmpArch::Arm],
        _ => &[],
    }
}

fn failed(e: impl std::fmt::Display) -> WireError {
    WireError::step(
        HelperStep::Seccomp,
        &std::io::Error::other(format!("seccomp deny-list: {e}")),
    )
}

/// The filters a session is installed: the init's (oldest first), then the
/// gateway's deny-list.
pub(crate) struct SessionFilters {
    init: Vec<Vec<BpfInsn>>,
}

/// Copies the filters of the init `pid` whose `Seccomp:` mode is
/// `mode`, for the session. `mode` 0: nothing to copy. A filter that
/// cannot be copied is refused, or skipped under
/// [`UnreproducibleSeccomp::DenyListOnly`]. The init is stopped (ptrace
/// interrupt) for the few system calls of the copy and resumed.
pub(crate) fn filters_of_init(
    pid: i32,
    mode: u8,
    fallback: UnreproducibleSeccomp,
) -> HResult<SessionFilters> {
    let copied = match mode {
        0 => return Ok(SessionFilters { init: Vec::new() }),
        2 => copy_filters(pid),
        _ => Err("strict seccomp mode".to_owned()),
    };
    match (copied, fallback) {
        (Ok(init), _) => Ok(SessionFilters { init }),
        (Err(_), UnreproducibleSeccomp::DenyListOnly) => Ok(SessionFilters { init: Vec::new() }),
        (Err(reason), UnreproducibleSeccomp::Refuse) => {
            Err(WireError::SeccompUnreproducible { reason })
        }
    }
}

fn copy_filters(pid: i32) -> Result<Vec<Vec<BpfInsn>>, String> {
    let target = Pid::from_raw(pid);
    ptrace::seize(target, ptrace::Options::empty())
        .map_err(|e| format!("ptrace of the init: {}", e.desc()))?;
    // The first stop is ours (PTRACE_EVENT_STOP), or the delivery of a
    // signal that arrived meanwhile, which goes back in at the detach.
    let stop = ptrace::interrupt(target)
        .and_then(|()| waitpid(target, Some(WaitPidFlag::__WALL)))
        .map_err(|e| format!("stopping the init: {}", e.desc()));
    let signal = stop.as_ref().ok().and_then(|s| match s {
        WaitStatus::Stopped(_, sig) => Some(*sig),
        _ => None,
    });
    let copied = stop.and_then(|_| {
        let mut filters = Vec::new();
        for index in 0..MAX_FILTERS {
            match sys::ptrace_seccomp_filter(pid, index) {
                Ok(Some(f)) => filters.push(f),
                Ok(None) => break,
                Err(e) => return Err(format!("PTRACE_SECCOMP_GET_FILTER: {e}")),
            }
        }
        if filters.is_empty() || filters.len() == MAX_FILTERS {
            return Err(format!("{} filters", filters.len()));
        }
        // Index 0 is the newest; install the oldest first.
        filters.reverse();
        Ok(filters)
    });
    ptrace::detach(target, signal).map_err(|e| format!("detaching: {}", e.desc()))?;
    copied
}

impl SessionFilters {
    /// Installs the init's filters, then the deny-list, on the calling
    /// process. Fails closed: no session starts without them.
    pub(crate) fn install(&self) -> HResult<()> {
        for f in &self.init {
            sys::seccomp_install(f).map_err(|e| {
                WireError::step(
                    HelperStep::Seccomp,
                    &std::io::Error::other(format!("the init's filter: {e}")),
                )
            })?;
        }
        install_denylist()
    }
}

/// Installs [`DENIED_SYSCALLS`] and `reject_force_umount` on the calling
/// process.
fn install_denylist() -> HResult<()> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(failed)?;
    ctx.set_ctl_nnp(false).map_err(failed)?;
    for &arch in compat_arches() {
        ctx.add_arch(arch).map_err(failed)?;
    }
    for name in DENIED_SYSCALLS {
        let call = ScmpSyscall::from_name(name).map_err(failed)?;
        ctx.add_rule(ScmpAction::Errno(libc::EPERM), call)
            .map_err(failed)?;
    }
    // LXC's `reject_force_umount`: umount2(_, flags & MNT_FORCE).
    let force = libc::MNT_FORCE as u64;
    ctx.add_rule_conditional(
        ScmpAction::Errno(libc::EACCES),
        ScmpSyscall::from_name("umount2").map_err(failed)?,
        &[ScmpArgCompare::new(
            1,
            ScmpCompareOp::MaskedEqual(force),
            force,
        )],
    )
    .map_err(failed)?;
    ctx.load().map_err(failed)
}
