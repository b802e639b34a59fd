//! Every raw syscall and `unsafe` block of the attach module lives here.
//!
//! Each function is a thin, documented wrapper that returns `std::io::Result`
//! and keeps the unsafety local. Nothing here allocates unless stated, so the
//! `pre_exec` hook stays async-signal-safe.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `pidfd_open(pid, 0)`; the returned fd is close-on-exec.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integer arguments and returns a new fd or -1.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, flags)`. Signal 0 only checks liveness.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32, flags: u32) -> io::Result<()> {
    // SAFETY: integer arguments and a NULL siginfo pointer, as documented.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    })?;
    Ok(())
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`: a close-on-exec duplicate numbered `>= min`.
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl with an integer argument; returns a new fd or -1.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) }.into())?;
    let new = RawFd::try_from(new).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: fresh fd from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Takes ownership of an fd that the helper inherited at a fixed number.
/// Fails with EBADF when that fd is not open.
pub(crate) fn claim_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }.into())?;
    // SAFETY: the fd is open and, by the helper protocol, owned by nobody else
    // in this freshly exec'd process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wraps fds received with SCM_RIGHTS (nix returns raw numbers).
pub(crate) fn own_received_fds(fds: &[RawFd]) -> Vec<OwnedFd> {
    fds.iter()
        // SAFETY: the kernel installed these fds in our table for this message;
        // nothing else refers to them yet.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// Registers an owned fd with the tokio reactor (must run inside a runtime).
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for its whole lifetime and `as_raw_fd`
    // always returns the same number, as `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Registers an owned fd with the tokio reactor for readability only (a
/// pidfd never polls writable). Must run inside a runtime.
pub(crate) fn async_fd_readable(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: as in `async_fd`: an OwnedFd stays open and keeps its number
    // for its whole lifetime.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Makes the helper inherit `pidfd` as fd 3 and `ctl` as fd 4. The hook only
/// calls `dup2` (async-signal-safe, no allocation). Callers must pass source
/// fds numbered above 4 (see [`dup_at_least`]) so neither `dup2` clobbers the
/// other source; `dup2` onto a different number clears close-on-exec.
pub(crate) fn install_fixed_fds(cmd: &mut tokio::process::Command, pidfd: RawFd, ctl: RawFd) {
    let hook = move || -> io::Result<()> {
        // SAFETY: dup2 on two valid integers; runs in the forked child only.
        if unsafe { libc::dup2(pidfd, 3) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::dup2(ctl, 4) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook is async-signal-safe: two dup2 calls, no allocation,
    // no locks (io::Error::last_os_error does not allocate).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Result of [`clone3`].
pub(crate) enum Forked {
    /// In the parent: the child's pid (in the caller's pid namespace) and a
    /// pidfd for it.
    Parent {
        /// The child's pid.
        pid: i32,
        /// `CLONE_PIDFD`: refers to the child whatever happens to the pid.
        pidfd: OwnedFd,
    },
    /// In the child.
    Child,
}

/// `CLONE_INTO_CGROUP` (`0x200000000`; libc's constant is an `int` that
/// overflows).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `clone3(2)` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`,
/// 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3({flags: CLONE_PIDFD [| CLONE_INTO_CGROUP] [| CLONE_PARENT],
/// exit_signal: SIGCHLD (0 with CLONE_PARENT)})`: a `fork()` that also returns a pidfd of the
/// child; with `into_cgroup` the child starts in that cgroup2 directory
/// (Linux 5.7+, no `cgroup.procs` write and its RCU grace period); with
/// `sibling` (`CLONE_PARENT`) the child's parent is the caller's parent,
/// which then waits for it. Only for the single-threaded helper (checked by
/// the caller, see `helper::step::ensure_single_threaded`). Fails, creating
/// nothing, e.g. with ENOSYS/E2BIG on old kernels or ENOENT/EBUSY when the
/// cgroup refuses.
///
/// Unlike glibc's `fork`, the raw syscall leaves glibc's cached thread id
/// of the parent in the child: the child must not use `raise`, `abort` or
/// `pthread_kill` (it exits with `_exit` on every path).
pub(crate) fn clone3(into_cgroup: Option<BorrowedFd<'_>>, sibling: bool) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_PIDFD as u64;
    let mut cgroup = 0u64;
    if let Some(fd) = into_cgroup {
        flags |= CLONE_INTO_CGROUP;
        cgroup =
            u64::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    }
    if sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    let args = CloneArgs {
        flags,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        // With CLONE_PARENT the kernel takes the caller's own exit signal
        // and refuses any other.
        exit_signal: if sibling { 0 } else { libc::SIGCHLD as u64 },
        cgroup,
        ..CloneArgs::default()
    };
    // SAFETY: no CLONE_VM and no stack: the kernel duplicates the address
    // space as fork does, and the child returns 0 from this same call; the
    // caller is single-threaded (checked), so the child's heap and locks are
    // consistent. `args` is a valid `clone_args` of the size passed, and
    // `pidfd` a valid `int` the kernel writes the pidfd into.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        p => {
            let pid = i32::try_from(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            if pidfd < 0 {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            // SAFETY: CLONE_PIDFD made the kernel install this fd for us.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent { pid, pidfd })
        }
    }
}

/// `_exit(code)`: leaves without running destructors or atexit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// `close_range(first, last, flags)`.
pub(crate) fn close_range(first: u32, last: u32, flags: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::close_range(first, last, flags as libc::c_int) }.into())?;
    Ok(())
}

/// Closes every fd `>= 3` except those in `keep` (any order).
pub(crate) fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd >= 3)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 3u32;
    for fd in keep {
        if fd > next {
            close_range(next, fd - 1, 0)?;
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX, 0)
}

/// Resets every catchable signal to `SIG_DFL` and unblocks all signals
/// (ignored dispositions and the mask survive `execve`).
pub(crate) fn reset_signals() -> io::Result<()> {
    for sig in 1..libc::SIGRTMAX() + 1 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; signals 32/33 used by
        // glibc internally return EINVAL, which we ignore.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // SAFETY: zeroed sigset_t then sigemptyset: a valid empty set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own.
    unsafe {
        libc::sigemptyset(&mut set);
    }
    // SAFETY: valid pointer to an initialized set; old set not requested.
    let rc = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    cvt(rc.into())?;
    Ok(())
}

/// `dup2(fd, target)`: makes `target` a copy of `fd` (not close-on-exec).
/// `target` is typically 0-2, which the caller does not own as `OwnedFd`.
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        // dup2 onto itself would keep close-on-exec; clear it instead.
        // SAFETY: fcntl F_SETFD with an integer argument on a valid fd.
        cvt(unsafe { libc::fcntl(target, libc::F_SETFD, 0) }.into())?;
        return Ok(());
    }
    loop {
        // SAFETY: dup2 on integers; the old `target` (if open) is replaced
        // atomically; the caller does not hold an OwnedFd for `target`.
        let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
}

/// `waitpid(pid, &status, 0)`, retried on EINTR; returns the raw status.
pub(crate) fn wait_pid(pid: i32) -> io::Result<libc::c_int> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: valid pointer to a c_int we own.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if r < 0 && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `poll(2)` on `fds` (each with its `events`, e.g. `POLLIN`, `POLLPRI`)
/// for at most `timeout_ms` (-1: no limit), retried on EINTR. Returns each
/// fd's `revents` (all 0 on a timeout).
pub(crate) fn poll(fds: &[(BorrowedFd<'_>, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, events)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: *events,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: a valid array of `pfds.len()` pollfd structures.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(pfds.iter().map(|p| p.revents).collect());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `ioctl(fd, TIOCSWINSZ, {rows, cols})`.
pub(crate) fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from a valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }.into())?;
    Ok(())
}

/// `ioctl(fd, TIOCGWINSZ)`: (cols, rows) of a terminal.
pub(crate) fn get_winsize(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into a valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }.into())?;
    Ok((ws.ws_col, ws.ws_row))
}

/// `ioctl(master, TIOCSPTLCK, 0)` (what `unlockpt` does).
pub(crate) fn unlockpt(master: BorrowedFd<'_>) -> io::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a valid pointer.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) }.into())?;
    Ok(())
}

/// `ioctl(master, TIOCGPTPEER, O_RDWR|O_NOCTTY|O_CLOEXEC)`: opens the slave
/// without any path lookup.
pub(crate) fn open_pty_peer(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as an integer argument.
    let fd = cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) }.into())?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ioctl(fd, TIOCSCTTY, 0)`: make the tty the caller's controlling terminal.
pub(crate) fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0 = do not steal).
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }.into())?;
    Ok(())
}

/// `ioctl(master, TIOCGPTN)`: the number of the pty whose master `fd` is
/// (fails for anything but a pty master).
pub(crate) fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into a valid pointer.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) }.into())?;
    Ok(n)
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: joins a new anonymous
/// session keyring (`_ses`), owned by the caller's fsuid. Returns its serial.
pub(crate) fn join_new_session_keyring() -> io::Result<i64> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_int = 1;
    // SAFETY: keyctl with an integer operation and a NULL name.
    let serial = cvt(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    })?;
    Ok(serial)
}

/// One classic BPF instruction of a seccomp filter (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BpfInsn {
    /// Opcode.
    pub code: u16,
    /// Jump if true.
    pub jt: u8,
    /// Jump if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const BpfInsn,
}

/// `PTRACE_SECCOMP_GET_FILTER` (not in libc for every target).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// Most instructions of one seccomp filter (`BPF_MAXINSNS`).
pub(crate) const BPF_MAXINSNS: usize = 4096;

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)`: adds `prog` to the caller's
/// filters (needs `no_new_privs` or `CAP_SYS_ADMIN` in the caller's user
/// namespace). Filters survive fork and exec and cannot be removed.
pub(crate) fn seccomp_install(prog: &[BpfInsn]) -> io::Result<()> {
    if prog.is_empty() || prog.len() > BPF_MAXINSNS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let fprog = SockFprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr(),
    };
    // SAFETY: `fprog` points at `prog.len()` valid instructions that outlive
    // the call; the kernel copies them.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &fprog as *const SockFprog,
        )
    })?;
    Ok(())
}

/// `PTRACE_SECCOMP_GET_FILTER` of a traced, stopped `pid`: filter `index`
/// (0 = the most recently installed). `Ok(None)` past the last one.
pub(crate) fn ptrace_seccomp_filter(pid: i32, index: usize) -> io::Result<Option<Vec<BpfInsn>>> {
    // SAFETY: a NULL buffer asks only for the instruction count.
    let n = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            pid,
            index,
            std::ptr::null_mut::<BpfInsn>(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    let n = usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if n == 0 || n > BPF_MAXINSNS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut prog = vec![BpfInsn::default(); n];
    // SAFETY: `prog` has room for the `n` instructions the kernel reported;
    // the filter of a stopped tracee cannot change in between (filters are
    // only ever added, and the tracee is stopped).
    let got =
        cvt(unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index, prog.as_mut_ptr()) })?;
    if got as usize != n {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    Ok(Some(prog))
}

/// `getsockopt(fd, SOL_SOCKET, opt)` for an integer option (`SO_DOMAIN`,
/// `SO_TYPE`, `SO_PROTOCOL`).
pub(crate) fn socket_int_option(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointers to an int and its length.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    }
    .into())?;
    Ok(v)
}

/// `prctl(PR_CAPBSET_DROP, cap)`. EINVAL means `cap` is beyond the kernel's last cap.
pub(crate) fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) }.into())?;
    Ok(())
}

/// `prctl(PR_CAPBSET_READ, cap)`: Ok(true) when `cap` is in the bounding set.
pub(crate) fn capbset_read(cap: u32) -> io::Result<bool> {
    // SAFETY: prctl with integer arguments.
    let r = cvt(
        unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) }.into(),
    )?;
    Ok(r == 1)
}

/// Narrows the permitted and effective sets to `mask` (bit n = capability
/// n; never widens them), clears the inheritable set and the ambient set.
pub(crate) fn limit_caps(mask: u64) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    }
    .into())?;
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two `CapData` (version 3) into a valid array.
    cvt(unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) })?;
    // Low 32 bits in data[0], high 32 bits in data[1] (truncation intended).
    let parts = [mask as u32, (mask >> 32) as u32];
    for (d, m) in data.iter_mut().zip(parts) {
        d.permitted &= m;
        d.effective &= m;
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two `CapData` from valid pointers.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) })?;
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pidfd_of_self_is_alive() {
        let fd = pidfd_open(std::process::id() as i32).unwrap();
        pidfd_send_signal(fd.as_fd(), 0, 0).unwrap();
    }

    #[test]
    fn dup_at_least_respects_minimum() {
        let fd = pidfd_open(std::process::id() as i32).unwrap();
        let d = dup_at_least(fd.as_fd(), 50).unwrap();
        assert!(d.as_raw_fd() >= 50);
    }
}
