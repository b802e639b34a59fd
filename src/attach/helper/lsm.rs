//! The init's LSM labels, read by the helper on the host before anything
//! else (CVE-2015-1334: never through the container's /proc), and the one
//! the session can be given: an AppArmor label, written by the session
//! process through its own attribute file that the helper opens on the
//! host procfs. Any other label the init has and the gateway has not
//! (SELinux, Smack) is refused: a session never runs with less confinement
//! than the init (review finding 5, fail closed).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use nix::sys::statfs::{PROC_SUPER_MAGIC, fstatfs};

use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::step::{HResult, fail, read_at, step};
use crate::attach::procfs;

/// The init's AppArmor label from the host procfs. `None` without AppArmor
/// (no such file, or EINVAL when the LSM is not active) or when the init is
/// unconfined.
fn apparmor_label(proc_dir: BorrowedFd<'_>) -> HResult<Option<String>> {
    let s = HelperStep::Lsm;
    match read_at(
        proc_dir,
        "attr/apparmor/current",
        procfs::MAX_LSM_LABEL_BYTES + 64,
    ) {
        Ok(b) => {
            let text = String::from_utf8(b).map_err(|_| fail(s, "label not UTF-8"))?;
            procfs::parse_apparmor_label(&text).map_err(|e| fail(s, &e))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(None),
        Err(e) => Err(WireError::step(s, &e)),
    }
}

/// An LSM attribute (`attr/current`, `attr/smack/current`) of `dir`, without
/// trailing NULs and newlines; `None` when the LSM is not active there.
fn attribute(dir: BorrowedFd<'_>, path: &str) -> HResult<Option<Vec<u8>>> {
    match read_at(dir, path, procfs::MAX_LSM_LABEL_BYTES + 64) {
        Ok(mut b) => {
            while b.last().is_some_and(|&c| c == 0 || c == b'\n') {
                b.pop();
            }
            Ok(Some(b))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(None),
        Err(e) => Err(WireError::step(HelperStep::Lsm, &e)),
    }
}

/// The label the session gets: the init's AppArmor label (`None`: no label
/// to set). Errors with [`WireError::LsmLabelUnsupported`] when the init
/// has a label of another LSM (the one `attr/current` shows, or Smack) that
/// differs from the helper's own, which the gateway shares.
pub(crate) fn session_label(init_dir: BorrowedFd<'_>) -> HResult<Option<String>> {
    let apparmor = apparmor_label(init_dir)?;
    let own = nix::fcntl::open(
        "/proc/self",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(step(HelperStep::Lsm))?;
    let mut attrs = Vec::new();
    for attr in ["attr/current", "attr/smack/current"] {
        attrs.push((
            attr,
            attribute(init_dir, attr)?,
            attribute(own.as_fd(), attr)?,
        ));
    }
    verdict(apparmor, &attrs)
}

/// One LSM attribute file: its path, the init's value and the helper's
/// (`None`: that LSM is not active).
type Attr<'a> = (&'a str, Option<Vec<u8>>, Option<Vec<u8>>);

/// [`session_label`]'s decision on what it read: the init's AppArmor label
/// and the attributes.
fn verdict(apparmor: Option<String>, attrs: &[Attr<'_>]) -> HResult<Option<String>> {
    for (attr, theirs, ours) in attrs {
        if theirs == ours {
            continue;
        }
        let text = theirs
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        // AppArmor shows its label in attr/current too, as `LABEL (mode)`.
        let is_apparmor = *attr == "attr/current"
            && apparmor.is_some()
            && procfs::parse_apparmor_label(&text).ok().flatten() == apparmor;
        if !is_apparmor {
            return Err(WireError::LsmLabelUnsupported { label: text });
        }
    }
    Ok(apparmor)
}

/// Opens the host procfs root (verified) so that the session's AppArmor
/// attribute can be opened through it once the session process exists.
pub(crate) fn open_host_proc() -> HResult<OwnedFd> {
    let s = HelperStep::Lsm;
    let fd = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(step(s))?;
    if fstatfs(fd.as_fd()).map_err(step(s))?.filesystem_type() != PROC_SUPER_MAGIC {
        return Err(fail(s, "/proc is not procfs"));
    }
    Ok(fd)
}

/// Opens the session process's AppArmor `exec` attribute (the profile
/// applied at its execve) or, with `current`, its `current` attribute (for
/// a session process that never execs, such as the SFTP server:
/// `changeprofile` applies at once), on the host procfs. The kernel lets a
/// task write only its own attributes, so the session process writes it;
/// this fd is the one file of the host it ever holds, and only until that
/// write (LXC does the same).
pub(crate) fn open_apparmor_attr(
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
    let which = if current { "current" } else { "exec" };
    let fd = openat2(
        host_proc,
        format!("{cpid}/attr/apparmor/{which}").as_str(),
        how,
    )
    .map_err(step(s))?;
    if fstatfs(fd.as_fd()).map_err(step(s))?.filesystem_type() != PROC_SUPER_MAGIC {
        return Err(fail(s, "attr file is not on procfs"));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn b(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn only_labels_the_session_can_get_pass() {
        // No LSM at all (this machine).
        assert_eq!(verdict(None, &[("attr/current", None, None)]), Ok(None));
        // SELinux: the init's MCS context is not the gateway's: fail closed.
        let selinux = [(
            "attr/current",
            b("system_u:system_r:container_t:s0:c1,c2"),
            b("system_u:system_r:unconfined_service_t:s0"),
        )];
        assert_eq!(
            verdict(None, &selinux),
            Err(WireError::LsmLabelUnsupported {
                label: "system_u:system_r:container_t:s0:c1,c2".into()
            })
        );
        // The same context as the gateway's: nothing to reproduce.
        let same = [("attr/current", b("unconfined_u:s0"), b("unconfined_u:s0"))];
        assert_eq!(verdict(None, &same), Ok(None));
        // AppArmor as the displayed LSM: its label, which the session gets.
        let aa = Some("lxc-container-default-cgns".to_owned());
        let shown = [(
            "attr/current",
            b("lxc-container-default-cgns (enforce)"),
            b("unconfined"),
        )];
        assert_eq!(verdict(aa.clone(), &shown), Ok(aa.clone()));
        // Smack beside AppArmor, differing: refused.
        let smack = [
            (
                "attr/current",
                b("lxc-container-default-cgns (enforce)"),
                b("unconfined"),
            ),
            ("attr/smack/current", b("container"), b("_")),
        ];
        assert!(matches!(
            verdict(aa, &smack),
            Err(WireError::LsmLabelUnsupported { .. })
        ));
    }
}
