//! Becoming the login: the bounding set and capabilities narrowed to the
//! init's, the namespace's root first in a user namespace, then the
//! login's groups and ids (checked to have taken, and to leave no
//! capability to a non-root login), its home as the verified working
//! directory. Never reads the container's files (see
//! [`crate::attach::accounts`]).

use nix::sys::signal::Signal;
use nix::sys::stat::{SFlag, stat};
use nix::unistd::{Gid, Uid};

use crate::attach::accounts::Account;
use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::step::{HResult, fail, step};
use crate::attach::procfs::{self, IdRange};
use crate::attach::sys;

fn drop_bounding_set(cap_bnd: u64, cap_last: u32) -> HResult<()> {
    for cap in 0..=cap_last.min(63) {
        if cap_bnd & (1u64 << cap) == 0 && sys::capbset_read(cap).unwrap_or(false) {
            sys::capbset_drop(cap).map_err(|e| WireError::step(HelperStep::DropCaps, &e))?;
        }
    }
    Ok(())
}

/// Narrows the bounding set, then permitted and effective, to `mask` (the
/// init's CapBnd & CapPrm & CapEff) and clears inheritable and ambient. The
/// entering process calls it before it creates the session process, so no
/// process the container can see ever holds more than the init; the
/// session process calls it again before switching ids (idempotent).
pub(crate) fn confine_caps(mask: u64, cap_last: u32) -> HResult<()> {
    drop_bounding_set(mask, cap_last)?;
    sys::limit_caps(mask).map_err(|e| WireError::step(HelperStep::DropCaps, &e))
}

/// In a user namespace our host uid is unmapped there: become the
/// namespace's root first (as runc does), so what we create (the session
/// keyring, the PTY) belongs to ids the container knows. Capabilities in
/// the namespace are kept (the old ids were not the namespace's root).
pub(crate) fn become_namespace_root(uid_map: &[IdRange], gid_map: &[IdRange]) -> HResult<()> {
    if procfs::is_identity_map(uid_map) && procfs::is_identity_map(gid_map) {
        return Ok(());
    }
    if !procfs::id_mapped(uid_map, 0) || !procfs::id_mapped(gid_map, 0) {
        return Err(WireError::IdNotMapped { id: 0 });
    }
    let s = HelperStep::SwitchUser;
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setgroups(&[g]).map_err(step(s))?;
    nix::unistd::setresgid(g, g, g).map_err(step(s))?;
    nix::unistd::setresuid(u, u, u).map_err(step(s))?;
    Ok(())
}

/// The login's ids must be mapped in the container's user namespace.
pub(crate) fn check_mapped(
    account: &Account,
    uid_map: &[IdRange],
    gid_map: &[IdRange],
) -> HResult<()> {
    if !procfs::is_identity_map(uid_map) && !procfs::id_mapped(uid_map, account.entry.uid) {
        return Err(WireError::IdNotMapped {
            id: account.entry.uid,
        });
    }
    if !procfs::is_identity_map(gid_map)
        && let Some(&g) = account
            .groups
            .iter()
            .find(|&&g| !procfs::id_mapped(gid_map, g))
    {
        return Err(WireError::IdNotMapped { id: g });
    }
    Ok(())
}

/// setgroups/setresgid/setresuid to the login, checked; a non-root login
/// must then hold no capability at all (whatever securebits the helper
/// inherited).
pub(crate) fn switch_user(account: &Account, cap_mask: u64) -> HResult<()> {
    let s = HelperStep::SwitchUser;
    // Inheritable + ambient would hand capabilities across exec to binaries
    // with file capabilities, whatever the uid; permitted and effective stay
    // within the init's (already narrowed at start; narrowed again here).
    sys::limit_caps(cap_mask).map_err(|e| WireError::step(s, &e))?;
    let gids: Vec<Gid> = account.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&gids).map_err(step(s))?;
    let (u, g) = (
        Uid::from_raw(account.entry.uid),
        Gid::from_raw(account.entry.gid),
    );
    nix::unistd::setresgid(g, g, g).map_err(step(s))?;
    nix::unistd::setresuid(u, u, u).map_err(step(s))?;
    let r = nix::unistd::getresuid().map_err(step(s))?;
    let rg = nix::unistd::getresgid().map_err(step(s))?;
    if (r.real, r.effective, r.saved) != (u, u, u) || (rg.real, rg.effective, rg.saved) != (g, g, g)
    {
        return Err(fail(s, "credentials did not change"));
    }
    if account.entry.uid != 0 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let held = ["CapPrm", "CapEff", "CapInh", "CapAmb"]
            .iter()
            .any(|k| procfs::status_hex(&status, k) != Some(0));
        if held {
            return Err(fail(s, "a non-root login kept capabilities"));
        }
    }
    // Cleared by the credential change; re-arm so C dies with H.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step(s))?;
    Ok(())
}

/// `chdir` to the home, `/` when that fails, and checks the working
/// directory is inside the container's root (CVE-2024-21626).
pub(crate) fn enter_home(home: &str) -> HResult<()> {
    let s = HelperStep::Chdir;
    if nix::unistd::chdir(home).is_err() {
        nix::unistd::chdir("/").map_err(step(s))?;
    }
    let cwd = nix::unistd::getcwd().map_err(step(s))?;
    let cwd = cwd.to_string_lossy();
    if !cwd.starts_with('/') || cwd.starts_with("(unreachable)") {
        return Err(fail(s, "working directory is outside the container"));
    }
    Ok(())
}

/// An executable regular file at the absolute `path` in the container (the
/// session process is in its mount namespace).
pub(crate) fn is_executable(path: &str) -> bool {
    path.starts_with('/')
        && stat(path).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
                && st.st_mode & 0o111 != 0
        })
}
