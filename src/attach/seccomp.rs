//! The gateway's seccomp deny-list, installed in the helper before it
//! forks the session process, so the session and everything it starts
//! inherit it (filters survive fork and exec and can never be removed).
//!
//! What `lxc-attach` does: it loads the container's own policy
//! (`lxc.seccomp.profile`, LXC's text format, compiled with libseccomp) into
//! the attached process. Portcullis enters any runtime's containers (the
//! `process` backend knows no policy file), so it applies one deny-list of
//! its own to every session instead: the syscalls of LXC's default policy
//! (`/usr/share/lxc/config/common.seccomp`: kernel modules, kexec,
//! `open_by_handle_at`, the "shocker" escape from a privileged container to
//! any host file) plus `kexec_file_load`, each failing with `EPERM`. On top
//! of that the session keeps whatever filter the container's init has only
//! through the runtime, not through Portcullis: a container whose own
//! profile is stricter than this list is not reproduced (see README,
//! "Security model").
//!
//! Built with libseccomp (the library LXC and runc use), for the native
//! architecture and its compat ABIs (x86_64: also i386 and x32, so the
//! 32-bit and x32 numbers of the same calls are denied too).
//! `no_new_privs` is left off (setuid programs such as `sudo` keep working):
//! the kernel then requires `CAP_SYS_ADMIN` in the caller's user namespace,
//! which the helper has right after `setns` (host root, or the container's
//! user namespace it just joined) and before it narrows its capabilities.

use libseccomp::{ScmpAction, ScmpArch, ScmpFilterContext, ScmpSyscall};

use super::error::{HelperStep, WireError};

/// Syscalls every session is denied with `EPERM`.
pub const DENIED_SYSCALLS: [&str; 6] = [
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
];

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

/// Installs [`DENIED_SYSCALLS`] on the calling process (the helper, before
/// it forks the session). Fails closed: no session starts without it.
pub(crate) fn install_denylist() -> Result<(), WireError> {
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
    ctx.load().map_err(failed)
}
