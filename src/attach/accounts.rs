//! The login's account as the container's own files say it, read through a
//! handle on the container's root with `openat2(RESOLVE_IN_ROOT)` and the
//! bounded parser of [`crate::attach::passwd`] (never NSS: it would load the
//! container's libraries into a privileged process). Used by the session
//! process inside the container and by the gateway before its decision
//! ([`crate::attach::resolve_login`]). Also the check that the resolved ids
//! are the ones the decision allowed (issue 12 point 6). Reads only.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};

use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::step::{HResult, fail, read_bounded, step};
use crate::attach::passwd::{self, PasswdEntry};
use crate::attach::request::LoginIds;

/// A login resolved in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// Its `/etc/passwd` entry.
    pub entry: PasswdEntry,
    /// Primary gid first, then the supplementary groups.
    pub groups: Vec<u32>,
    /// The container's `tty` group, if it has one.
    pub tty_gid: Option<u32>,
}

impl Account {
    /// The ids, for the gateway and the audit.
    pub(crate) fn ids(&self) -> LoginIds {
        LoginIds {
            login: self.entry.name.clone(),
            uid: self.entry.uid,
            gid: self.entry.gid,
            groups: self.groups.clone(),
        }
    }
}

/// Opens `path` (relative to the container root `root`) with symlinks
/// confined to the root and no magic links.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &str,
    flags: OFlag,
    extra: ResolveFlag,
) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | extra);
    openat2(root, path.trim_start_matches('/'), how)
}

/// Reads a regular file of the container (bounded; FIFOs and devices
/// refused without blocking).
fn read_container_file(root: BorrowedFd<'_>, path: &str) -> HResult<Vec<u8>> {
    let s = HelperStep::ReadAccounts;
    let fd = open_in_root(
        root,
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        ResolveFlag::empty(),
    )
    .map_err(step(s))?;
    let st = fstat(fd.as_fd()).map_err(step(s))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(fail(s, "not a regular file"));
    }
    read_bounded(fd.as_fd(), passwd::MAX_FILE_BYTES).map_err(|e| WireError::step(s, &e))
}

/// Resolves `login` in `/etc/passwd` and `/etc/group` below `root` (a
/// handle on the container's root directory).
pub(crate) fn read(root: BorrowedFd<'_>, login: &str) -> HResult<Account> {
    let s = HelperStep::ReadAccounts;
    let pw = read_container_file(root, "/etc/passwd")?;
    let entry = passwd::find_user(&pw, login)
        .map_err(|e| fail(s, &e))?
        .ok_or_else(|| WireError::LoginNotFound {
            login: login.to_owned(),
        })?;
    let (groups, tty_gid) = match read_container_file(root, "/etc/group") {
        Ok(g) => (
            passwd::groups_of(&g, login, entry.gid).map_err(|e| fail(s, &e))?,
            passwd::group_gid(&g, "tty").map_err(|e| fail(s, &e))?,
        ),
        // No /etc/group: only the primary group.
        Err(WireError::Step { errno, .. }) if errno == libc::ENOENT => (vec![entry.gid], None),
        Err(e) => return Err(e),
    };
    Ok(Account {
        entry,
        groups,
        tty_gid,
    })
}

/// The decision's terms hold for `account`: uid 0 only when `allow_uid0`
/// (whatever the name: `toor:x:0:0` is root), and exactly the `expected`
/// ids when the decision was made for resolved ids.
pub(crate) fn admit(
    account: &Account,
    allow_uid0: bool,
    expected: Option<&LoginIds>,
) -> HResult<()> {
    let login = account.entry.name.clone();
    if account.entry.uid == 0 && !allow_uid0 {
        return Err(WireError::Uid0Refused { login });
    }
    if let Some(want) = expected {
        let got = account.ids();
        if &got != want {
            let detail = format!(
                "uid {} gid {} groups {:?}, decided for uid {} gid {} groups {:?}",
                got.uid, got.gid, got.groups, want.uid, want.gid, want.groups
            );
            return Err(WireError::LoginChanged { login, detail });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn account(name: &str, uid: u32) -> Account {
        Account {
            entry: PasswdEntry {
                name: name.into(),
                uid,
                gid: uid,
                home: "/".into(),
                shell: "/bin/sh".into(),
            },
            groups: vec![uid],
            tty_gid: None,
        }
    }

    #[test]
    fn uid_0_needs_the_decision_whatever_the_name() {
        for name in ["root", "toor"] {
            let a = account(name, 0);
            assert_eq!(
                admit(&a, false, None),
                Err(WireError::Uid0Refused { login: name.into() })
            );
            assert_eq!(admit(&a, true, None), Ok(()));
        }
        assert_eq!(admit(&account("app", 1000), false, None), Ok(()));
    }

    #[test]
    fn the_ids_must_be_those_decided_on() {
        let a = account("app", 1000);
        assert_eq!(admit(&a, false, Some(&a.ids())), Ok(()));
        let mut other = a.ids();
        other.groups.push(27);
        assert!(matches!(
            admit(&a, false, Some(&other)),
            Err(WireError::LoginChanged { .. })
        ));
        // Rewritten to uid 0 after the decision: refused either way.
        let turned = account("app", 0);
        assert!(matches!(
            admit(&turned, false, Some(&a.ids())),
            Err(WireError::Uid0Refused { .. })
        ));
        assert!(matches!(
            admit(&turned, true, Some(&a.ids())),
            Err(WireError::LoginChanged { .. })
        ));
    }
}
