//! Checks that an fd really is a pseudo-terminal of a devpts instance (runc's
//! `safeAllocPty`, CVE-2025-52565): used by the session process on the
//! container's `/dev/pts/ptmx` and by the helper and the gateway on the
//! master they are handed. Owns the checks only; opens nothing.

use std::os::fd::BorrowedFd;

use nix::sys::stat::{FileStat, SFlag, fstat};
use nix::sys::statfs::{DEVPTS_SUPER_MAGIC, fstatfs};

use crate::attach::sys;

/// Major and minor number of `/dev/ptmx` (and of every devpts `ptmx` node).
const PTMX: (u64, u64) = (5, 2);

fn is_chr(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
}

/// Major number of a `dev_t` (glibc's `gnu_dev_major`).
pub(crate) fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// Minor number of a `dev_t` (glibc's `gnu_dev_minor`).
pub(crate) fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// `fd` is the `ptmx` node of a devpts instance (`/dev/pts/ptmx`: on
/// devpts, character device 5:2, inode 2), not a look-alike a container
/// bind-mounted in its place.
///
/// # Errors
/// An `io::Error` naming what does not match.
pub(crate) fn check_ptmx(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    if fstatfs(fd)?.filesystem_type() != DEVPTS_SUPER_MAGIC {
        return Err(std::io::Error::other("/dev/pts/ptmx is not on devpts"));
    }
    let st = fstat(fd)?;
    if !is_chr(&st) || (dev_major(st.st_rdev), dev_minor(st.st_rdev)) != PTMX || st.st_ino != 2 {
        return Err(std::io::Error::other(
            "/dev/pts/ptmx is not the ptmx device",
        ));
    }
    Ok(())
}

/// `fd` is the master side of a devpts pseudo-terminal: opened from a
/// devpts `ptmx` (on devpts, character device 5:2) and answering
/// `TIOCGPTN` (only masters do). Returns the pty's number. Review finding
/// 3: neither the helper nor the gateway uses an fd it was handed before
/// this holds.
///
/// # Errors
/// An `io::Error` naming what does not match.
pub(crate) fn check_master(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    if fstatfs(fd)?.filesystem_type() != DEVPTS_SUPER_MAGIC {
        return Err(std::io::Error::other("the pty master is not on devpts"));
    }
    let st = fstat(fd)?;
    if !is_chr(&st) || (dev_major(st.st_rdev), dev_minor(st.st_rdev)) != PTMX {
        return Err(std::io::Error::other("the pty master is not a ptmx device"));
    }
    sys::pty_number(fd)
}

/// `fd` is the slave side of a devpts pseudo-terminal (on devpts, character
/// device of major 136..=143).
///
/// # Errors
/// An `io::Error` naming what does not match.
pub(crate) fn check_slave(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    if fstatfs(fd)?.filesystem_type() != DEVPTS_SUPER_MAGIC {
        return Err(std::io::Error::other("the pty peer is not on devpts"));
    }
    let st = fstat(fd)?;
    if !is_chr(&st) || !(136..=143).contains(&dev_major(st.st_rdev)) {
        return Err(std::io::Error::other("the pty peer is not a pty slave"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn dev_numbers() {
        let d = libc::makedev(136, 7);
        assert_eq!((dev_major(d), dev_minor(d)), (136, 7));
        let d = libc::makedev(5, 2);
        assert_eq!((dev_major(d), dev_minor(d)), (5, 2));
    }

    #[test]
    fn other_fds_are_no_pty_master() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(check_master(f.as_fd()).is_err());
        assert!(check_ptmx(f.as_fd()).is_err());
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(check_master(r.as_fd()).is_err());
        assert!(check_slave(r.as_fd()).is_err());
    }

    #[test]
    fn a_devpts_master_passes() {
        let m = nix::fcntl::open(
            "/dev/pts/ptmx",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
            nix::sys::stat::Mode::empty(),
        );
        // Hosts without a devpts mount at /dev/pts have nothing to check.
        let Ok(m) = m else { return };
        check_ptmx(m.as_fd()).unwrap();
        check_master(m.as_fd()).unwrap();
        sys::unlockpt(m.as_fd()).unwrap();
        let s = sys::open_pty_peer(m.as_fd()).unwrap();
        check_slave(s.as_fd()).unwrap();
        assert!(check_master(s.as_fd()).is_err());
    }
}
