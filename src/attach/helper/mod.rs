//! The helper process H: a fresh single-threaded exec of the helper binary
//! (from the gateway's sealed memfd) that does the host side of an attach
//! and never enters the container itself. It checks the pinned init again,
//! reads what the session must get (`facts.rs`, `lsm.rs`, `seccomp.rs`),
//! creates the session's own cgroup (`cgroup.rs`), and creates the entering
//! process (`enter.rs`) in it, which goes into the container and creates the
//! session process there as H's child. H keeps every host handle (the
//! cgroup directories, the host procfs) in itself: it is in no namespace of
//! the container, so nothing in there can reach it, and the only processes
//! it creates start with nothing but what they need. Then it relays the
//! session (`relay.rs`) until its end and kills or keeps its cgroup.
//!
//! Inherited fds: 0-2 = the session's pipes or /dev/null, 3 = the init's
//! pidfd, 4 = the control socket. Everything else is closed first thing.

mod cgroup;
mod enter;
mod facts;
mod lsm;
mod relay;
pub mod seccomp;
pub(crate) mod step;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::{Pid, getppid};

use crate::attach::error::{HelperStep, WireError};
use crate::attach::proto::{self, HelperMsg, InnerMsg, WireMode, WireRequest};
use crate::attach::sys::{self, Forked};
use cgroup::SessionCgroup;
use step::{CTL_FD, HResult, PIDFD_FD, fail, init_changed, io_step, pid_of_pidfd, step};

pub use cgroup::KILL_WAIT;

/// Entry point (see [`crate::attach::helper_main`]).
pub(crate) fn main() -> ! {
    // CVE-2016-9962: nobody may ptrace us or read our memory from here on.
    if nix::sys::prctl::set_dumpable(false).is_err() {
        sys::exit_now(120);
    }
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        sys::exit_now(120);
    }
    let parent = getppid();
    // Only 0-2, the pidfd and the control socket may survive.
    if sys::close_range(5, u32::MAX, 0).is_err() {
        sys::exit_now(121);
    }
    let Ok(ctl) = sys::claim_inherited_fd(CTL_FD) else {
        sys::exit_now(122);
    };
    let code = match run(ctl.as_fd(), parent) {
        Ok(()) => 0,
        Err(w) => {
            let _ = proto::send_blocking(ctl.as_fd(), &HelperMsg::Error(w), &[]);
            1
        }
    };
    sys::exit_now(code)
}

fn open_host_devnull() -> HResult<OwnedFd> {
    let s = HelperStep::HostFacts;
    let fd = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(step(s))?;
    let st = fstat(fd.as_fd()).map_err(step(s))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFCHR
        || st.st_rdev != libc::makedev(1, 3)
    {
        return Err(fail(s, "/dev/null is not the null device"));
    }
    Ok(fd)
}

fn run(ctl: BorrowedFd<'_>, parent: Pid) -> HResult<()> {
    let pidfd = sys::claim_inherited_fd(PIDFD_FD).map_err(io_step(HelperStep::InheritedFds))?;
    let req: WireRequest = proto::recv_request_blocking(ctl)
        .map_err(|e| WireError::step(HelperStep::ReadRequest, &std::io::Error::other(e)))?;
    // The pidfd must be the process the gateway verified.
    if pid_of_pidfd(pidfd.as_fd())? != req.init_pid {
        return Err(init_changed("pidfd does not refer to the requested pid"));
    }
    step::alive(pidfd.as_fd())?;
    let facts = facts::read(&req)?;
    if matches!(req.mode, WireMode::Connect { .. })
        && !facts.ns_flags.contains(CloneFlags::CLONE_NEWNET)
    {
        // Its "loopback" would be the host's: fail closed.
        return Err(fail(
            HelperStep::Connect,
            "the container shares the host's network namespace",
        ));
    }
    let filters =
        seccomp::filters_of_init(req.init_pid, facts.seccomp_mode, req.unreproducible_seccomp)?;
    // Everything read above described the pinned process only if it is
    // still alive now (a pid is not reused while its owner exists).
    step::alive(pidfd.as_fd())?;
    let cgroup = SessionCgroup::create(&facts.cgroup_text, &req.init_cgroup)?;
    let r = start(ctl, parent, pidfd, &req, &facts, &filters, &cgroup);
    if r.is_err() {
        let _ = cgroup.kill_and_remove();
    }
    r
}

/// Creates the entering process in the session cgroup, takes the session
/// process's pidfd from it, lets the session process go on and relays it.
fn start(
    ctl: BorrowedFd<'_>,
    parent: Pid,
    pidfd: OwnedFd,
    req: &WireRequest,
    facts: &facts::InitFacts,
    filters: &seccomp::SessionFilters,
    cgroup: &SessionCgroup,
) -> HResult<()> {
    let host_proc = match &facts.apparmor {
        Some(_) => Some(lsm::open_host_proc()?),
        None => None,
    };
    let devnull = open_host_devnull()?;
    step::ensure_single_threaded()?;
    let (inner, inner_theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(step(HelperStep::Fork))?;
    let helper_pid = std::process::id() as i32;
    let into = cgroup.v2_dir().map(|d| sys::clone3(Some(d), false));
    let (forked, into_v2) = match into {
        Some(Ok(f)) => (f, true),
        _ => (
            sys::clone3(None, false).map_err(io_step(HelperStep::Fork))?,
            false,
        ),
    };
    let entering = match forked {
        Forked::Child => enter::main(&enter::EnterCtx {
            req,
            facts,
            filters,
            self_moves: cgroup.self_moves(into_v2),
            pidfd: pidfd.as_raw_fd(),
            inner: inner_theirs.as_raw_fd(),
            // Without the gateway's pipes, 0-2 are the host's /dev/null.
            placeholder_stdio: req.pty.is_some() || matches!(req.mode, WireMode::Connect { .. }),
            helper_pid,
        }),
        Forked::Parent { pid, .. } => pid,
    };
    drop(inner_theirs);
    drop(pidfd);
    // Our copies of the session's stdio must not hold its pipes open.
    for target in 0..3 {
        sys::dup_onto(devnull.as_fd(), target).map_err(io_step(HelperStep::CloseFds))?;
    }
    drop(devnull);
    let forked = proto::recv_json::<InnerMsg>(inner.as_fd());
    let _ = sys::wait_pid(entering);
    let cpidfd = match forked {
        Ok(Some((InnerMsg::Forked, mut fds))) if fds.len() == 1 => fds
            .pop()
            .ok_or_else(|| fail(HelperStep::Fork, "no pidfd"))?,
        Ok(Some((InnerMsg::Error(w), _))) => return Err(w),
        _ => return Err(fail(HelperStep::Fork, "the entering process failed")),
    };
    let cpid = pid_of_pidfd(cpidfd.as_fd())?;
    let go = || -> HResult<()> {
        let attr = match &host_proc {
            Some(p) => {
                // A session process that never execs changes profile at once.
                let current = matches!(
                    req.mode,
                    WireMode::Sftp { .. } | WireMode::Scp { .. } | WireMode::Connect { .. }
                );
                Some(lsm::open_apparmor_attr(p.as_fd(), cpid, current)?)
            }
            None => None,
        };
        drop(host_proc);
        let fds: Vec<i32> = attr.iter().map(AsRawFd::as_raw_fd).collect();
        proto::send_json(inner.as_fd(), &InnerMsg::Go, &fds).map_err(io_step(HelperStep::Report))
    };
    if let Err(w) = go() {
        let _ = sys::pidfd_send_signal(cpidfd.as_fd(), libc::SIGKILL, 0);
        let _ = sys::wait_pid(cpid);
        return Err(w);
    }
    relay::serve(ctl, parent, inner, cpidfd, cpid, req, cgroup)
}
