//! The session's PTY, from the container's own devpts: opened and checked
//! like runc's `safeAllocPty`, the master handed to the helper, the slave
//! made the controlling terminal and stdio, owned by the login with the
//! container's `tty` group and mode 0620 like `login(1)` and sshd (0600
//! when the container has no `tty` group, or it is not mapped).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{OFlag, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::attach::accounts::{self, Account};
use crate::attach::devpts;
use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::step::{HResult, step};
use crate::attach::procfs::{self, IdRange};
use crate::attach::proto::{self, InnerMsg, WirePty};
use crate::attach::sys;

/// Opens the container's own `/dev/pts/ptmx`, checks it, and returns
/// (master, slave).
fn open_pty(root: BorrowedFd<'_>) -> HResult<(OwnedFd, OwnedFd)> {
    let s = HelperStep::OpenPty;
    let master = accounts::open_in_root(
        root,
        "dev/pts/ptmx",
        OFlag::O_RDWR | OFlag::O_NOFOLLOW,
        ResolveFlag::RESOLVE_NO_SYMLINKS,
    )
    .map_err(step(s))?;
    devpts::check_ptmx(master.as_fd()).map_err(|e| WireError::step(s, &e))?;
    sys::unlockpt(master.as_fd()).map_err(|e| WireError::step(s, &e))?;
    let slave = sys::open_pty_peer(master.as_fd()).map_err(|e| WireError::step(s, &e))?;
    devpts::check_slave(slave.as_fd()).map_err(|e| WireError::step(s, &e))?;
    Ok((master, slave))
}

/// The PTY's group and mode: the container's `tty` group (when it is
/// mapped in the container's user namespace) and 0620, else the login's
/// primary group and 0600.
pub(crate) fn owner_and_mode(account: &Account, gid_map: &[IdRange]) -> (u32, u32) {
    match account.tty_gid {
        Some(g) if procfs::is_identity_map(gid_map) || procfs::id_mapped(gid_map, g) => (g, 0o620),
        _ => (account.entry.gid, 0o600),
    }
}

/// Allocates the PTY, sends the master to the helper over `inner`, and
/// makes the slave the controlling terminal and fds 0-2, owned by the
/// login.
pub(crate) fn set_up(
    root: BorrowedFd<'_>,
    inner: BorrowedFd<'_>,
    pty: &WirePty,
    account: &Account,
    gid_map: &[IdRange],
) -> HResult<()> {
    let (master, slave) = open_pty(root)?;
    sys::set_winsize(master.as_fd(), pty.cols, pty.rows)
        .map_err(|e| WireError::step(HelperStep::OpenPty, &e))?;
    proto::send_json(inner, &InnerMsg::Pty, &[master.as_raw_fd()])
        .map_err(|e| WireError::step(HelperStep::Report, &e))?;
    drop(master);
    let t = HelperStep::SetupTty;
    sys::set_controlling_tty(slave.as_fd()).map_err(|e| WireError::step(t, &e))?;
    for fd in 0..3 {
        sys::dup_onto(slave.as_fd(), fd).map_err(|e| WireError::step(t, &e))?;
    }
    let (group, mode) = owner_and_mode(account, gid_map);
    nix::unistd::fchown(
        slave.as_fd(),
        Some(Uid::from_raw(account.entry.uid)),
        Some(Gid::from_raw(group)),
    )
    .map_err(step(t))?;
    nix::sys::stat::fchmod(slave.as_fd(), Mode::from_bits_truncate(mode)).map_err(step(t))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::attach::passwd::PasswdEntry;

    fn account(tty: Option<u32>) -> Account {
        Account {
            entry: PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                home: "/".into(),
                shell: "/bin/sh".into(),
            },
            groups: vec![1000, 100],
            tty_gid: tty,
        }
    }

    #[test]
    fn tty_group_or_private() {
        let identity = [(0, 0, u32::MAX)];
        assert_eq!(owner_and_mode(&account(Some(5)), &identity), (5, 0o620));
        assert_eq!(owner_and_mode(&account(None), &identity), (1000, 0o600));
        let userns = [(0, 100_000, 65_536)];
        assert_eq!(owner_and_mode(&account(Some(5)), &userns), (5, 0o620));
        let narrow = [(1000, 101_000, 1)];
        assert_eq!(owner_and_mode(&account(Some(5)), &narrow), (1000, 0o600));
    }
}
