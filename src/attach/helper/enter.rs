//! The entering process I: the helper's child that goes into the container
//! and creates the session process there. Born in the session's cgroup
//! (`CLONE_INTO_CGROUP`) with the helper's fds, it is visible to nobody in
//! the container (it stays in the host's PID namespace). In order: it moves
//! itself into its v1 cgroups, takes the init's rlimits and
//! `oom_score_adj`, closes every host handle, joins the init's namespaces
//! with one `setns(pidfd)` (the cgroup namespace too: it is already in its
//! cgroup, so `nsdelegate` rules never apply to it, review finding 10),
//! becomes the namespace's root, joins a fresh session keyring (review
//! finding 2), installs the seccomp filters, narrows its capabilities to
//! the init's, and only then creates the session process as the helper's
//! child (`CLONE_PARENT`) with nothing but 0-2 and the inner socket, hands
//! its pidfd to the helper and exits. So the first process the container
//! can see holds no host handle from its first instruction (review
//! finding 1, CVE-2024-21626).

use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::fcntl::OFlag;
use nix::sched::setns;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::statfs::{PROC_SUPER_MAGIC, fstatfs};

use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::facts::InitFacts;
use crate::attach::helper::seccomp::SessionFilters;
use crate::attach::helper::step::{HResult, fail, step};
use crate::attach::proto::{self, InnerMsg, WireRequest};
use crate::attach::session_process::{self, SessionCtx, become_namespace_root, confine_caps};
use crate::attach::sys::{self, Forked};

/// What I inherits from the helper (by reference: I never returns into it).
pub(crate) struct EnterCtx<'a> {
    pub req: &'a WireRequest,
    pub facts: &'a InitFacts,
    pub filters: &'a SessionFilters,
    /// Cgroup files I writes `0` to, to move itself, and where they are.
    pub self_moves: Vec<(RawFd, String)>,
    /// The init's pidfd.
    pub pidfd: RawFd,
    /// I's (and then C's) end of the inner socket.
    pub inner: RawFd,
    /// 0-2 are not the gateway's pipes (the session has a PTY, or connects
    /// a forward): they get a placeholder pipe instead of the host's
    /// `/dev/null`, until C makes its PTY its stdio.
    pub placeholder_stdio: bool,
    /// The helper's pid: I's parent.
    pub helper_pid: i32,
}

/// Runs I; never returns. A failure goes to the helper on the inner socket.
pub(crate) fn main(ctx: &EnterCtx<'_>) -> ! {
    let Err(w) = run(ctx);
    if let Ok(inner) = sys::claim_inherited_fd(ctx.inner) {
        let _ = proto::send_json(inner.as_fd(), &InnerMsg::Error(w), &[]);
        std::mem::forget(inner);
    }
    sys::exit_now(1)
}

fn set_oom_score_adj(value: i32) -> HResult<()> {
    let s = HelperStep::Limits;
    let fd = nix::fcntl::open(
        "/proc/self/oom_score_adj",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(step(s))?;
    if fstatfs(fd.as_fd()).map_err(step(s))?.filesystem_type() != PROC_SUPER_MAGIC {
        return Err(fail(s, "/proc is not procfs"));
    }
    nix::unistd::write(&fd, value.to_string().as_bytes()).map_err(step(s))?;
    Ok(())
}

fn run(ctx: &EnterCtx<'_>) -> HResult<Infallible> {
    let facts = ctx.facts;
    // Into every cgroup first (cgroup2: already, by CLONE_INTO_CGROUP).
    for (fd, where_) in &ctx.self_moves {
        let fd = sys::claim_inherited_fd(*fd)
            .map_err(|e| WireError::step(HelperStep::JoinCgroup, &e))?;
        nix::unistd::write(&fd, b"0").map_err(|e| WireError::Step {
            step: HelperStep::JoinCgroup,
            errno: e as i32,
            detail: format!("{where_}: {}", e.desc()),
        })?;
    }
    // The init's limits (raising a hard limit needs CAP_SYS_RESOURCE of the
    // host, which I still has here) and oom_score_adj, through the host
    // procfs.
    for &(resource, soft, hard) in &facts.limits {
        nix::sys::resource::setrlimit(resource, soft, hard).map_err(step(HelperStep::Limits))?;
    }
    set_oom_score_adj(facts.oom_score_adj)?;
    // Nothing of the host goes further: only 0-2, the init's pidfd (until
    // setns) and the inner socket.
    sys::close_fds_except(&[ctx.pidfd, ctx.inner])
        .map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
    if ctx.placeholder_stdio {
        // The helper's 0-2 are /dev/null of the host: a pipe instead.
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(step(HelperStep::CloseFds))?;
        for (fd, target) in [(&r, 0), (&w, 1), (&w, 2)] {
            sys::dup_onto(fd.as_fd(), target)
                .map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
        }
    }
    let pidfd = sys::claim_inherited_fd(ctx.pidfd)
        .map_err(|e| WireError::step(HelperStep::InheritedFds, &e))?;
    if !facts.ns_flags.is_empty() {
        setns(pidfd.as_fd(), facts.ns_flags).map_err(step(HelperStep::Setns))?;
    }
    // "We can't risk leaking file descriptors into the container."
    drop(pidfd);
    // A credential change (user ns) clears the parent-death signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step(HelperStep::Prctl))?;
    if nix::unistd::getppid().as_raw() != ctx.helper_pid {
        return Err(fail(HelperStep::Prctl, "the helper exited"));
    }
    become_namespace_root(&facts.uid_map, &facts.gid_map)?;
    // Never the gateway's or the operator's keyring (possession ignores
    // user namespaces), and never one shared with another session.
    sys::join_new_session_keyring().map_err(|e| WireError::step(HelperStep::Keyring, &e))?;
    // Needs CAP_SYS_ADMIN (unless no_new_privs), so before the capabilities
    // are narrowed.
    ctx.filters.install()?;
    confine_caps(facts.cap_mask, facts.cap_last)?;
    match sys::clone3(None, true).map_err(|e| WireError::step(HelperStep::Fork, &e))? {
        Forked::Child => session_process::main(&SessionCtx {
            inner: ctx.inner,
            req: ctx.req,
            cap_mask: facts.cap_mask,
            apparmor: facts.apparmor.as_deref(),
            no_new_privs: facts.no_new_privs,
            uid_map: &facts.uid_map,
            gid_map: &facts.gid_map,
        }),
        Forked::Parent { pidfd, .. } => {
            let inner = sys::claim_inherited_fd(ctx.inner)
                .map_err(|e| WireError::step(HelperStep::Report, &e))?;
            proto::send_json(inner.as_fd(), &InnerMsg::Forked, &[pidfd.as_raw_fd()])
                .map_err(|e| WireError::step(HelperStep::Report, &e))?;
            sys::exit_now(0)
        }
    }
}
