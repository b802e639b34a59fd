//! The session process C: created inside the container (every namespace of
//! the init, the session's own cgroup, the init's seccomp filters, rlimits
//! and capabilities at most) by the process that entered it, as the
//! helper's child. It holds nothing of the host: only fds 0-2 (the session's
//! pipes, or a placeholder pipe until its PTY) and the inner socket to the
//! helper, and it closes everything else first anyway. It resolves the
//! login in the container's files, refuses what the decision did not allow,
//! takes its PTY, confines itself and execs the login's shell, serves SFTP
//! or scp itself, or connects a forwarded TCP connection as the login. Any
//! failure goes to the helper as a structured error.

mod connect;
mod tty;
mod user;

pub(crate) use user::{become_namespace_root, confine_caps};

use std::convert::Infallible;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;

use crate::attach::accounts::{self, Account};
use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::step::{HResult, fail, step};
use crate::attach::plan;
use crate::attach::procfs::IdRange;
use crate::attach::proto::{self, InnerMsg, WireMode, WireRequest};
use crate::attach::sys;

/// What C inherits from the entering process (by reference: C never
/// returns into that code).
pub(crate) struct SessionCtx<'a> {
    /// C's end of the inner socket to the helper.
    pub inner: RawFd,
    pub req: &'a WireRequest,
    /// The init's CapBnd & CapPrm & CapEff.
    pub cap_mask: u64,
    /// The init's AppArmor label; the helper then sends the attribute fd.
    pub apparmor: Option<&'a str>,
    /// The init has `no_new_privs`: so does the session.
    pub no_new_privs: bool,
    pub uid_map: &'a [IdRange],
    pub gid_map: &'a [IdRange],
}

/// Runs C; never returns. A failure goes to the helper on the inner socket
/// and C exits with 126.
pub(crate) fn main(ctx: &SessionCtx<'_>) -> ! {
    // First of all: nothing but 0-2 and the inner socket (there is nothing
    // else; this makes sure).
    if sys::close_fds_except(&[ctx.inner]).is_err() {
        sys::exit_now(125);
    }
    let Ok(inner) = sys::claim_inherited_fd(ctx.inner) else {
        sys::exit_now(125);
    };
    let Err(w) = run(ctx, inner.as_fd());
    let _ = proto::send_json(inner.as_fd(), &InnerMsg::Error(w), &[]);
    sys::exit_now(126)
}

/// Waits for the helper's go (sent once it knows C's pid, with the
/// AppArmor attribute fd when the init has a label). End of file means
/// the helper is gone: leave quietly.
fn await_go(ctx: &SessionCtx<'_>, inner: BorrowedFd<'_>) -> HResult<Option<OwnedFd>> {
    let (msg, mut fds) = match proto::recv_json::<InnerMsg>(inner) {
        Ok(Some(m)) => m,
        _ => sys::exit_now(1),
    };
    if msg != InnerMsg::Go || fds.len() != usize::from(ctx.apparmor.is_some()) {
        return Err(fail(HelperStep::Apparmor, "unexpected go message"));
    }
    Ok(fds.pop())
}

/// Writes `exec LABEL` (or, for a session that never execs, `changeprofile
/// LABEL`) to the attribute fd the helper opened on the host procfs, and
/// closes it.
fn set_apparmor(fd: OwnedFd, label: &str, now: bool) -> HResult<()> {
    let s = HelperStep::Apparmor;
    let cmd = if now {
        format!("changeprofile {label}")
    } else {
        format!("exec {label}")
    };
    let n = nix::unistd::write(&fd, cmd.as_bytes()).map_err(step(s))?;
    if n != cmd.len() {
        return Err(fail(s, "short write to the AppArmor attribute"));
    }
    Ok(())
}

/// What C does once it is the login: exec (shell or program), serve in
/// this process, or connect.
enum Then<'a> {
    Exec {
        path: String,
        argv: Vec<std::ffi::CString>,
    },
    Sftp(bool),
    Scp(&'a crate::scp::ScpCommand),
    Connect(std::net::SocketAddr),
}

fn plan_of<'a>(req: &'a WireRequest, account: &Account) -> HResult<Then<'a>> {
    let invalid = |detail: String| WireError::InvalidRequest { detail };
    let cstr = |a: &str| std::ffi::CString::new(a).map_err(|_| invalid("NUL in argument".into()));
    Ok(match &req.mode {
        WireMode::Exec => {
            let shell = &account.entry.shell;
            if !user::is_executable(shell) {
                return Err(WireError::ShellNotFound {
                    path: shell.clone(),
                });
            }
            Then::Exec {
                path: shell.clone(),
                argv: plan::build_argv(shell, req.command.as_deref()).map_err(invalid)?,
            }
        }
        WireMode::Program { path, args } => {
            if !user::is_executable(path) {
                return Err(WireError::ProgramNotFound { path: path.clone() });
            }
            let argv = std::iter::once(path.as_str())
                .chain(args.iter().map(String::as_str))
                .map(cstr)
                .collect::<Result<Vec<_>, _>>()?;
            Then::Exec {
                path: path.clone(),
                argv,
            }
        }
        WireMode::Sftp { read_only } => Then::Sftp(*read_only),
        WireMode::Scp { command } => Then::Scp(command),
        WireMode::Connect { addr } => Then::Connect(*addr),
    })
}

fn run(ctx: &SessionCtx<'_>, inner: BorrowedFd<'_>) -> HResult<Infallible> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step(HelperStep::Prctl))?;
    let apparmor_fd = await_go(ctx, inner)?;
    sys::reset_signals().map_err(|e| WireError::step(HelperStep::Session, &e))?;
    nix::unistd::setsid().map_err(step(HelperStep::Session))?;

    let req = ctx.req;
    // The working directory is the container's root (setns of the mount
    // namespace put it there; chdir makes sure): every lookup below is
    // relative to it with RESOLVE_IN_ROOT, so C never holds a directory fd.
    nix::unistd::chdir("/").map_err(step(HelperStep::ReadAccounts))?;
    let root = nix::fcntl::AT_FDCWD;
    let account = accounts::read(root, &req.login)?;
    accounts::admit(&account, req.allow_uid0, req.expected.as_ref())?;
    user::check_mapped(&account, ctx.uid_map, ctx.gid_map)?;
    proto::send_json(inner, &InnerMsg::Ids(account.ids()), &[])
        .map_err(|e| WireError::step(HelperStep::Report, &e))?;
    let then = plan_of(req, &account)?;
    let term = req.pty.as_ref().map(|p| p.term.as_str());
    let env = plan::build_env(&account.entry, term, &req.env);
    let envp = plan::env_cstrings(&env).map_err(|detail| WireError::InvalidRequest { detail })?;

    if let Some(p) = &req.pty {
        tty::set_up(root, inner, p, &account, ctx.gid_map)?;
    }
    let in_process = !matches!(then, Then::Exec { .. });
    if let (Some(fd), Some(label)) = (apparmor_fd, ctx.apparmor) {
        set_apparmor(fd, label, in_process)?;
    }
    if ctx.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(step(HelperStep::NoNewPrivs))?;
    }
    user::switch_user(&account, ctx.cap_mask)?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    let (path, argv) = match then {
        Then::Connect(addr) => connect::connect_and_hand_over(inner, addr),
        Then::Sftp(_) | Then::Scp(_) => {
            user::enter_home(&account.entry.home)?;
            // No exec: close every fd above 2 now (the inner socket too,
            // which tells the helper the session runs) and serve as the
            // login, in the container's mount namespace. Nothing of the
            // host is left: the binary is the sealed memfd, the process
            // stays non-dumpable, the environment is empty.
            sys::close_range(3, u32::MAX, 0)
                .map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
            let fd = |n| sys::claim_inherited_fd(n).unwrap_or_else(|_| sys::exit_now(1));
            let (input, output, events) = (fd(0), fd(1), fd(2));
            sys::exit_now(match then {
                Then::Sftp(read_only) => crate::sftp::serve(input, output, events, read_only),
                Then::Scp(command) => crate::scp::serve(input, output, events, command),
                _ => 1,
            });
        }
        Then::Exec { path, argv } => (path, argv),
    };
    user::enter_home(&account.entry.home)?;
    let exe = std::ffi::CString::new(path.as_str()).map_err(|_| WireError::InvalidRequest {
        detail: "NUL in path".into(),
    })?;
    // Only 0-2 and the (close-on-exec) inner socket remain; mark everything
    // above 2 close-on-exec anyway so nothing can leak into the shell. The
    // inner socket closing at exec tells the helper the session runs.
    sys::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC)
        .map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
    let e = match nix::unistd::execve(&exe, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    if e == Errno::ENOENT {
        return Err(match &req.mode {
            WireMode::Program { path, .. } => WireError::ProgramNotFound { path: path.clone() },
            _ => WireError::ShellNotFound { path },
        });
    }
    Err(WireError::errno(HelperStep::Exec, e))
}
