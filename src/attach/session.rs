//! The session process C: forked by the helper after `setns`, so it runs in
//! the container's namespaces (and, once released, its cgroups). It
//! confines itself and execs the login's shell, or reports a structured
//! error on the error pipe.

use std::convert::Infallible;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::signal::Signal;
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::sys::statfs::{DEVPTS_SUPER_MAGIC, fstatfs};
use nix::unistd::{Gid, Uid};

use super::error::{HelperStep, WireError};
use super::passwd::{self, PasswdEntry};
use super::plan;
use super::procfs::{self, IdRange};
use super::proto::{self, HelperMsg, WireRequest};
use super::sys;

/// What C inherits from H (by reference; C never returns to H's code).
pub(crate) struct SessionCtx<'a> {
    pub ctl: RawFd,
    /// The container's v1 `tasks` files (opened by H on the host) and where
    /// they are, for messages: C writes `0` to each to move itself.
    pub cgroup_tasks: &'a [(RawFd, &'a str)],
    /// H <-> C: C sends `m` once in its cgroups, H sends the release.
    pub release: RawFd,
    pub err: RawFd,
    pub req: &'a WireRequest,
    /// The init's CapBnd & CapPrm & CapEff ([`procfs::session_cap_mask`]).
    pub cap_mask: u64,
    pub cap_last: u32,
    /// The init's AppArmor label; H then sends the exec attribute fd.
    pub apparmor: Option<&'a str>,
    pub uid_map: &'a [IdRange],
    pub gid_map: &'a [IdRange],
}

type CResult<T> = Result<T, WireError>;

fn step(s: HelperStep) -> impl Fn(Errno) -> WireError {
    move |e| WireError::errno(s, e)
}

fn fail(s: HelperStep, msg: &str) -> WireError {
    WireError::step(s, &std::io::Error::other(msg.to_owned()))
}

/// Runs C; never returns. On failure the error is written to the error
/// pipe (read by H) and C exits with 126.
pub(crate) fn child_main(ctx: &SessionCtx<'_>) -> ! {
    let Err(w) = run(ctx);
    if let Ok(bytes) = serde_json::to_vec(&w) {
        // SAFETY-free: the raw fd is C's error pipe, kept open until exec.
        let err = sys::claim_inherited_fd(ctx.err);
        if let Ok(err) = err {
            let _ = nix::unistd::write(&err, &bytes);
            std::mem::forget(err);
        }
    }
    sys::exit_now(126)
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// Opens `path` (relative to the container root) with symlinks confined to
/// the root and no magic links.
fn open_in_root(
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

/// Reads a regular file of the container (bounded; FIFOs and devices refused).
fn read_container_file(root: BorrowedFd<'_>, path: &str) -> CResult<Vec<u8>> {
    let s = HelperStep::ReadAccounts;
    let fd = open_in_root(
        root,
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        ResolveFlag::empty(),
    )
    .map_err(step(s))?;
    let st = fstat(fd.as_fd()).map_err(step(s))?;
    if !is_kind(&st, SFlag::S_IFREG) {
        return Err(fail(s, "not a regular file"));
    }
    super::helper::read_bounded(fd.as_fd(), passwd::MAX_FILE_BYTES)
        .map_err(|e| WireError::step(s, &e))
}

/// Opens the container's own `/dev/pts/ptmx`, verifies it (runc's
/// `safeAllocPty`), and returns (master, slave).
fn open_pty(root: BorrowedFd<'_>) -> CResult<(OwnedFd, OwnedFd)> {
    let s = HelperStep::OpenPty;
    let master = open_in_root(
        root,
        "dev/pts/ptmx",
        OFlag::O_RDWR | OFlag::O_NOFOLLOW,
        ResolveFlag::RESOLVE_NO_SYMLINKS,
    )
    .map_err(step(s))?;
    if fstatfs(master.as_fd()).map_err(step(s))?.filesystem_type() != DEVPTS_SUPER_MAGIC {
        return Err(fail(s, "/dev/pts/ptmx is not on devpts"));
    }
    let st = fstat(master.as_fd()).map_err(step(s))?;
    if !is_kind(&st, SFlag::S_IFCHR)
        || dev_major(st.st_rdev) != 5
        || dev_minor(st.st_rdev) != 2
        || st.st_ino != 2
    {
        return Err(fail(s, "/dev/pts/ptmx is not the ptmx device"));
    }
    sys::unlockpt(master.as_fd()).map_err(|e| WireError::step(s, &e))?;
    let slave = sys::open_pty_peer(master.as_fd()).map_err(|e| WireError::step(s, &e))?;
    if fstatfs(slave.as_fd()).map_err(step(s))?.filesystem_type() != DEVPTS_SUPER_MAGIC {
        return Err(fail(s, "pty peer is not on devpts"));
    }
    Ok((master, slave))
}

fn resolve_user(root: BorrowedFd<'_>, login: &str) -> CResult<(PasswdEntry, Vec<u32>)> {
    let s = HelperStep::ReadAccounts;
    let pw = read_container_file(root, "/etc/passwd")?;
    let user = passwd::find_user(&pw, login)
        .map_err(|e| fail(s, &e))?
        .ok_or_else(|| WireError::LoginNotFound {
            login: login.to_owned(),
        })?;
    let groups = match read_container_file(root, "/etc/group") {
        Ok(g) => passwd::groups_of(&g, login, user.gid).map_err(|e| fail(s, &e))?,
        // No /etc/group: only the primary group.
        Err(WireError::Step { errno, .. }) if errno == libc::ENOENT => vec![user.gid],
        Err(e) => return Err(e),
    };
    Ok((user, groups))
}

fn check_shell(shell: &str) -> CResult<()> {
    let missing = || WireError::ShellNotFound {
        path: shell.to_owned(),
    };
    let st = nix::sys::stat::stat(shell).map_err(|_| missing())?;
    if !is_kind(&st, SFlag::S_IFREG) || st.st_mode & 0o111 == 0 {
        return Err(missing());
    }
    Ok(())
}

/// A program to exec directly: an absolute path to an executable regular
/// file, looked up in the container (C is in its mount namespace).
fn check_program(path: &str) -> CResult<()> {
    let missing = || WireError::ProgramNotFound {
        path: path.to_owned(),
    };
    if !path.starts_with('/') {
        return Err(missing());
    }
    let st = nix::sys::stat::stat(path).map_err(|_| missing())?;
    if !is_kind(&st, SFlag::S_IFREG) || st.st_mode & 0o111 == 0 {
        return Err(missing());
    }
    Ok(())
}

/// What the session process serves itself instead of exec'ing.
enum InProcess<'a> {
    /// SFTP; `true` = read-only.
    Sftp(bool),
    /// Legacy scp.
    Scp(&'a crate::scp::ScpCommand),
}

fn drop_bounding_set(cap_bnd: u64, cap_last: u32) -> CResult<()> {
    for cap in 0..=cap_last.min(63) {
        if cap_bnd & (1u64 << cap) == 0 && sys::capbset_read(cap).unwrap_or(false) {
            sys::capbset_drop(cap).map_err(|e| WireError::step(HelperStep::DropCaps, &e))?;
        }
    }
    Ok(())
}

fn switch_user(ctx: &SessionCtx<'_>, user: &PasswdEntry, groups: &[u32]) -> CResult<()> {
    let s = HelperStep::SwitchUser;
    if !procfs::is_identity_map(ctx.uid_map) && !procfs::id_mapped(ctx.uid_map, user.uid) {
        return Err(WireError::IdNotMapped { id: user.uid });
    }
    if !procfs::is_identity_map(ctx.gid_map)
        && let Some(&g) = groups.iter().find(|&&g| !procfs::id_mapped(ctx.gid_map, g))
    {
        return Err(WireError::IdNotMapped { id: g });
    }
    // Inheritable + ambient would hand capabilities across exec to binaries
    // with file capabilities, whatever the uid; permitted and effective stay
    // within the init's (already narrowed at start; narrowed again here).
    sys::limit_caps(ctx.cap_mask).map_err(|e| WireError::step(s, &e))?;
    let gids: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&gids).map_err(step(s))?;
    let (u, g) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    nix::unistd::setresgid(g, g, g).map_err(step(s))?;
    nix::unistd::setresuid(u, u, u).map_err(step(s))?;
    let r = nix::unistd::getresuid().map_err(step(s))?;
    let rg = nix::unistd::getresgid().map_err(step(s))?;
    if (r.real, r.effective, r.saved) != (u, u, u) || (rg.real, rg.effective, rg.saved) != (g, g, g)
    {
        return Err(fail(s, "credentials did not change"));
    }
    // Cleared by the credential change; re-arm so C dies with H.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step(s))?;
    Ok(())
}

/// In a user namespace, our host uid is unmapped there: become the
/// namespace's root first (as runc does) so files we create, such as the pty
/// slave, belong to mapped ids the container can chown. Capabilities in the
/// namespace are kept (the old ids were not the namespace's root).
fn become_namespace_root(ctx: &SessionCtx<'_>) -> CResult<()> {
    if procfs::is_identity_map(ctx.uid_map) && procfs::is_identity_map(ctx.gid_map) {
        return Ok(());
    }
    if !procfs::id_mapped(ctx.uid_map, 0) || !procfs::id_mapped(ctx.gid_map, 0) {
        return Err(WireError::IdNotMapped { id: 0 });
    }
    let s = HelperStep::SwitchUser;
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setgroups(&[g]).map_err(step(s))?;
    nix::unistd::setresgid(g, g, g).map_err(step(s))?;
    nix::unistd::setresuid(u, u, u).map_err(step(s))?;
    Ok(())
}

fn enter_home(home: &str) -> CResult<()> {
    let s = HelperStep::Chdir;
    if nix::unistd::chdir(home).is_err() {
        nix::unistd::chdir("/").map_err(step(s))?;
    }
    // CVE-2024-21626: the cwd must be inside the container's root.
    let cwd = nix::unistd::getcwd().map_err(step(s))?;
    let cwd = cwd.to_string_lossy();
    if !cwd.starts_with('/') || cwd.starts_with("(unreachable)") {
        return Err(fail(s, "working directory is outside the container"));
    }
    Ok(())
}

/// Narrows the bounding set, then permitted and effective, to `mask` (the
/// init's, [`SessionCtx::cap_mask`]). H calls it before forking C, so C is
/// never visible in the container holding more than the container's root
/// has; C calls it again (idempotent).
pub(crate) fn confine_caps(mask: u64, cap_last: u32) -> CResult<()> {
    drop_bounding_set(mask, cap_last)?;
    sys::limit_caps(mask).map_err(|e| WireError::step(HelperStep::DropCaps, &e))
}

/// Waits for H's release (sent once C is in the container's cgroups) and
/// takes the AppArmor exec attribute fd that comes with it when the init
/// has a label.
fn await_release(ctx: &SessionCtx<'_>, release: OwnedFd) -> CResult<Option<OwnedFd>> {
    let mut b = [0u8; 8];
    let (n, mut fds) = match proto::recv_bytes_blocking(release.as_fd(), &mut b) {
        Ok(r) => r,
        Err(_) => sys::exit_now(1),
    };
    if n != 1 || b[0] != b'1' {
        sys::exit_now(1);
    }
    drop(release);
    let want = usize::from(ctx.apparmor.is_some());
    if fds.len() != want {
        return Err(fail(HelperStep::Apparmor, "AppArmor attribute fd missing"));
    }
    Ok(fds.pop())
}

/// Writes `exec LABEL` to the session's own exec attribute (opened by H on
/// the host procfs), so the shell runs confined like the init.
fn set_apparmor_exec(fd: OwnedFd, label: &str, now: bool) -> CResult<()> {
    let s = HelperStep::Apparmor;
    // `now`: the SFTP server never execs, so it changes profile at once
    // (through its `current` attribute, opened by H).
    let cmd = if now {
        format!("changeprofile {label}")
    } else {
        format!("exec {label}")
    };
    let n = nix::unistd::write(&fd, cmd.as_bytes()).map_err(step(s))?;
    if n != cmd.len() {
        return Err(fail(s, "short write to the AppArmor exec attribute"));
    }
    Ok(())
}

/// Moves C into each v1 hierarchy of the container (`0` to `tasks` moves
/// the calling thread; C is single-threaded), then tells H (`m`).
fn join_v1_cgroups(ctx: &SessionCtx<'_>, release: BorrowedFd<'_>) -> CResult<()> {
    for &(fd, where_) in ctx.cgroup_tasks {
        let fd =
            sys::claim_inherited_fd(fd).map_err(|e| WireError::step(HelperStep::JoinCgroup, &e))?;
        nix::unistd::write(&fd, b"0").map_err(|e| WireError::Step {
            step: HelperStep::JoinCgroup,
            errno: e as i32,
            detail: format!("{where_}: {}", e.desc()),
        })?;
    }
    proto::send_bytes_blocking(release, b"m", &[])
        .map_err(|e| WireError::step(HelperStep::JoinCgroup, &e))
}

fn run(ctx: &SessionCtx<'_>) -> CResult<Infallible> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step(HelperStep::Prctl))?;
    let release = sys::claim_inherited_fd(ctx.release)
        .map_err(|e| WireError::step(HelperStep::JoinCgroup, &e))?;
    // First of all, into the container's cgroups (cgroup2: already, by
    // clone3 or H's write).
    join_v1_cgroups(ctx, release.as_fd())?;
    // Drop every host fd H holds (cgroup files, /dev/null) at once.
    sys::close_fds_except(&[ctx.ctl, ctx.release, ctx.err])
        .map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
    confine_caps(ctx.cap_mask, ctx.cap_last)?;
    // Wait until H has checked the cgroups and sent the release.
    let apparmor_fd = await_release(ctx, release)?;
    let ctl =
        sys::claim_inherited_fd(ctx.ctl).map_err(|e| WireError::step(HelperStep::Report, &e))?;

    sys::reset_signals().map_err(|e| WireError::step(HelperStep::Session, &e))?;
    nix::unistd::setsid().map_err(step(HelperStep::Session))?;

    become_namespace_root(ctx)?;

    let req = ctx.req;
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(step(HelperStep::ReadAccounts))?;
    let (user, groups) = resolve_user(root.as_fd(), &req.login)?;
    // Served by this process (no exec), or a program exec'd directly.
    let in_process = match &req.mode {
        proto::WireMode::Sftp { read_only } => Some(InProcess::Sftp(*read_only)),
        proto::WireMode::Scp { command } => Some(InProcess::Scp(command)),
        _ => None,
    };
    let program = match &req.mode {
        proto::WireMode::Program { path, args } => Some((path.as_str(), args.as_slice())),
        _ => None,
    };
    match program {
        Some((path, _)) => check_program(path)?,
        None if in_process.is_none() => check_shell(&user.shell)?,
        None => {}
    }
    let term = req.pty.as_ref().map(|p| p.term.as_str());
    let env = plan::build_env(&user, term, &req.env);
    let envp = plan::env_cstrings(&env).map_err(|detail| WireError::InvalidRequest { detail })?;
    let invalid = |detail: String| WireError::InvalidRequest { detail };
    let (exe_path, argv) = match program {
        Some((path, args)) => {
            let argv = std::iter::once(path)
                .chain(args.iter().map(String::as_str))
                .map(|a| std::ffi::CString::new(a).map_err(|_| invalid("NUL in argument".into())))
                .collect::<Result<Vec<_>, _>>()?;
            (path, argv)
        }
        None => (
            user.shell.as_str(),
            plan::build_argv(&user.shell, req.command.as_deref()).map_err(invalid)?,
        ),
    };
    let shell = std::ffi::CString::new(exe_path).map_err(|_| invalid("NUL in shell".into()))?;

    if let Some(p) = &req.pty {
        let (master, slave) = open_pty(root.as_fd())?;
        sys::set_winsize(master.as_fd(), p.cols, p.rows)
            .map_err(|e| WireError::step(HelperStep::OpenPty, &e))?;
        proto::send_blocking(
            ctl.as_fd(),
            &HelperMsg::Pty,
            &[std::os::fd::AsRawFd::as_raw_fd(&master)],
        )
        .map_err(|e| WireError::step(HelperStep::Report, &e))?;
        drop(master);
        let t = HelperStep::SetupTty;
        sys::set_controlling_tty(slave.as_fd()).map_err(|e| WireError::step(t, &e))?;
        for fd in 0..3 {
            sys::dup_onto(slave.as_fd(), fd).map_err(|e| WireError::step(t, &e))?;
        }
        nix::unistd::fchown(
            slave.as_fd(),
            Some(Uid::from_raw(user.uid)),
            Some(Gid::from_raw(user.gid)),
        )
        .map_err(step(t))?;
        nix::sys::stat::fchmod(slave.as_fd(), Mode::from_bits_truncate(0o620)).map_err(step(t))?;
    }
    drop(root);
    drop(ctl);

    if let (Some(fd), Some(label)) = (apparmor_fd, ctx.apparmor) {
        set_apparmor_exec(fd, label, in_process.is_some())?;
    }
    switch_user(ctx, &user, &groups)?;
    enter_home(&user.home)?;
    if let Some(serve) = in_process {
        // No exec: close every fd above 2 now (the error pipe too, which
        // tells H the session runs) and serve SFTP as the login, in the
        // container's mount namespace. Nothing of the host is left: the
        // binary is H's sealed memfd, the process stays non-dumpable (the
        // credential change keeps it so), the environment is empty.
        sys::close_range(3, u32::MAX, 0).map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
        nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        let fd = |n| sys::claim_inherited_fd(n).unwrap_or_else(|_| sys::exit_now(1));
        let (input, output, events) = (fd(0), fd(1), fd(2));
        sys::exit_now(match serve {
            InProcess::Sftp(read_only) => crate::sftp::serve(input, output, events, read_only),
            InProcess::Scp(command) => crate::scp::serve(input, output, events, command),
        });
    }

    // Only 0-2 and the (close-on-exec) error pipe remain; mark everything
    // above 2 close-on-exec anyway so nothing can leak into the shell.
    sys::close_fds_except(&[ctx.err]).map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
    sys::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC)
        .map_err(|e| WireError::step(HelperStep::CloseFds, &e))?;
    let e = match nix::unistd::execve(&shell, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    if e == Errno::ENOENT {
        return Err(match program {
            Some((path, _)) => WireError::ProgramNotFound { path: path.into() },
            None => WireError::ShellNotFound {
                path: user.shell.clone(),
            },
        });
    }
    Err(WireError::errno(HelperStep::Exec, e))
}
