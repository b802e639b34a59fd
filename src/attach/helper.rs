//! The helper process H: a fresh single-threaded exec of the gateway binary
//! that gathers host facts, joins the container's namespaces, forks the
//! session process C into the container's cgroups and relays its status.
//!
//! Inherited fds: 0-2 = session pipes or /dev/null, 3 = the init's pidfd,
//! 4 = the control socket. Everything else is closed first thing.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, PROC_SUPER_MAGIC, fstatfs};
use nix::sys::wait::waitpid;
use nix::unistd::{Pid, getppid, pipe2};

use super::ExitStatus;
use super::error::{HelperStep, WireError};
use super::lsm::{apparmor_label, open_apparmor_exec, open_host_proc, refuse_if_frozen};
use super::procfs;
use super::proto::{self, HelperMsg, WireRequest};
use super::session::{self, SessionCtx};
use super::sys::{self, Forked};

/// Fixed fd numbers in the helper.
pub(crate) const PIDFD_FD: RawFd = 3;
pub(crate) const CTL_FD: RawFd = 4;

/// Namespaces compared and joined, in LXC's order (one atomic setns).
const NAMESPACES: [(&str, libc::c_int); 8] = [
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("pid", libc::CLONE_NEWPID),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
];

pub(crate) type HResult<T> = Result<T, WireError>;

pub(crate) fn step(s: HelperStep) -> impl Fn(Errno) -> WireError {
    move |e| WireError::errno(s, e)
}

fn io_step(s: HelperStep) -> impl Fn(std::io::Error) -> WireError {
    move |e| WireError::step(s, &e)
}

fn init_changed(detail: impl Into<String>) -> WireError {
    WireError::InitChanged {
        detail: detail.into(),
    }
}

/// Entry point (see [`super::helper_main`]).
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

/// Reads a small file relative to `dir`, at most `max` bytes.
pub(crate) fn read_at(dir: BorrowedFd<'_>, path: &str, max: usize) -> std::io::Result<Vec<u8>> {
    let fd = openat(
        dir,
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    read_bounded(fd.as_fd(), max)
}

/// Reads `fd` to EOF; errors with EFBIG above `max` bytes.
pub(crate) fn read_bounded(fd: BorrowedFd<'_>, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > max {
                    return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_text_at(dir: BorrowedFd<'_>, path: &str) -> HResult<String> {
    let b =
        read_at(dir, path, procfs::MAX_PROC_FILE_BYTES).map_err(io_step(HelperStep::HostFacts))?;
    String::from_utf8(b).map_err(|_| {
        WireError::step(
            HelperStep::HostFacts,
            &std::io::Error::other(format!("{path}: not UTF-8")),
        )
    })
}

pub(crate) fn ensure_single_threaded() -> HResult<()> {
    let root = nix::fcntl::AT_FDCWD;
    let status = read_text_at(root, "/proc/self/status")?;
    match procfs::status_field(&status, "Threads") {
        Some("1") => Ok(()),
        _ => Err(WireError::step(
            HelperStep::Fork,
            &std::io::Error::other("helper is not single-threaded"),
        )),
    }
}

pub(crate) fn alive(pidfd: BorrowedFd<'_>) -> HResult<()> {
    sys::pidfd_send_signal(pidfd, 0, 0).map_err(|_| init_changed("init exited or pid was recycled"))
}

/// One hierarchy of the container's cgroups, opened on the host before
/// setns (the kernel checks permissions and the cgroup namespace with the
/// opener's credentials).
///
/// Moving a process with a `cgroup.procs` write takes the kernel's
/// threadgroup lock for writing, which waits for an RCU grace period (7-8
/// ms measured here, the largest part of an attach). Two migrations avoid
/// it: on cgroup2, C is created in the cgroup (`clone3(CLONE_INTO_CGROUP)`
/// with `dir`); on cgroup v1, C moves itself by writing `0` to the `tasks`
/// file (`fd`), which moves only the calling thread (C has one) and takes
/// no such lock. `cgroup.procs` stays the fallback on cgroup2.
struct CgroupProcs {
    /// cgroup2: `cgroup.procs`; v1: `tasks` (written `0` by C itself).
    fd: OwnedFd,
    /// cgroup2: the directory, for `CLONE_INTO_CGROUP`.
    dir: Option<OwnedFd>,
    where_: String,
}

fn open_cgroups(cgroup_text: &str) -> HResult<Vec<CgroupProcs>> {
    let s = HelperStep::OpenCgroups;
    let lines = procfs::parse_cgroup_file(cgroup_text)
        .map_err(|e| init_changed(format!("cgroup file: {e}")))?;
    let mountinfo = read_text_at(nix::fcntl::AT_FDCWD, "/proc/self/mountinfo")?;
    let mounts = procfs::cgroup_mounts(&mountinfo);
    let (targets, missing) = procfs::cgroup_targets(&lines, &mounts);
    for m in &missing {
        // A hierarchy the host does not mount cannot have placed the init
        // anywhere but its root; anything else means we would leave the
        // session outside one of the container's limits.
        let line = lines
            .iter()
            .find(|l| &l.controllers == m || (m == "cgroup2" && l.id == 0));
        if line.is_some_and(|l| l.path != "/") {
            return Err(WireError::step(
                s,
                &std::io::Error::other(format!("cgroup hierarchy {m} is not mounted on the host")),
            ));
        }
    }
    let beneath = ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV;
    let dir_how = || {
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(beneath)
    };
    let mut out = Vec::new();
    for t in targets {
        let mnt = openat2(
            nix::fcntl::AT_FDCWD,
            t.mount_point.as_str(),
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_NO_MAGICLINKS),
        )
        .map_err(step(s))?;
        let mut dir = if t.rel.is_empty() {
            mnt
        } else {
            openat2(mnt.as_fd(), t.rel.as_str(), dir_how()).map_err(step(s))?
        };
        let magic = fstatfs(dir.as_fd()).map_err(step(s))?.filesystem_type();
        let expect = if t.v2 {
            CGROUP2_SUPER_MAGIC
        } else {
            CGROUP_SUPER_MAGIC
        };
        if magic != expect {
            return Err(WireError::step(
                s,
                &std::io::Error::other(format!("{} is not a cgroup filesystem", t.mount_point)),
            ));
        }
        if t.v2 {
            // No-internal-process rule: a cgroup with controllers enabled for
            // its children cannot take processes; use a leaf like LXC's `.lxc`.
            let sub = read_at(dir.as_fd(), "cgroup.subtree_control", 4096).map_err(io_step(s))?;
            if !sub.iter().all(u8::is_ascii_whitespace) {
                match nix::sys::stat::mkdirat(
                    dir.as_fd(),
                    ".portcullis",
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(WireError::errno(s, e)),
                }
                dir = openat2(dir.as_fd(), ".portcullis", dir_how()).map_err(step(s))?;
            }
        }
        refuse_if_frozen(dir.as_fd(), &t)?;
        let fd = openat(
            dir.as_fd(),
            if t.v2 { "cgroup.procs" } else { "tasks" },
            OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(step(s))?;
        out.push(CgroupProcs {
            fd,
            dir: t.v2.then_some(dir),
            where_: format!("{}/{}", t.mount_point, t.rel),
        });
    }
    Ok(out)
}

/// The namespaces of `proc_dir` that differ from ours.
fn differing_namespaces(proc_dir: BorrowedFd<'_>) -> HResult<CloneFlags> {
    let mut flags = CloneFlags::empty();
    for (name, flag) in NAMESPACES {
        let theirs = match nix::sys::stat::fstatat(
            proc_dir,
            format!("ns/{name}").as_str(),
            nix::fcntl::AtFlags::empty(),
        ) {
            Ok(st) => st,
            // Kernel without this namespace type.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(WireError::errno(HelperStep::HostFacts, e)),
        };
        let ours = nix::sys::stat::stat(format!("/proc/self/ns/{name}").as_str())
            .map_err(step(HelperStep::HostFacts))?;
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino) {
            flags |= CloneFlags::from_bits_retain(flag);
        }
    }
    Ok(flags)
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
        return Err(WireError::step(
            s,
            &std::io::Error::other("/dev/null is not the null device"),
        ));
    }
    Ok(fd)
}

fn run(ctl: BorrowedFd<'_>, parent: Pid) -> HResult<()> {
    let pidfd = sys::claim_inherited_fd(PIDFD_FD).map_err(io_step(HelperStep::InheritedFds))?;
    let req: WireRequest = proto::recv_request_blocking(ctl)
        .map_err(|e| WireError::step(HelperStep::ReadRequest, &std::io::Error::other(e)))?;

    // The pidfd must be the process the gateway verified.
    let fdinfo = read_text_at(
        nix::fcntl::AT_FDCWD,
        &format!("/proc/self/fdinfo/{PIDFD_FD}"),
    )?;
    if procfs::status_field(&fdinfo, "Pid") != Some(req.init_pid.to_string().as_str()) {
        return Err(init_changed("pidfd does not refer to the requested pid"));
    }
    alive(pidfd.as_fd())?;

    // Host facts, read through a verified host procfs before entering.
    let s = HelperStep::HostFacts;
    let proc_dir = nix::fcntl::open(
        format!("/proc/{}", req.init_pid).as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|_| init_changed("init exited"))?;
    if fstatfs(proc_dir.as_fd())
        .map_err(step(s))?
        .filesystem_type()
        != PROC_SUPER_MAGIC
    {
        return Err(WireError::step(
            s,
            &std::io::Error::other("/proc is not procfs"),
        ));
    }
    let stat = read_text_at(proc_dir.as_fd(), "stat")?;
    if procfs::start_time_from_stat(&stat) != Some(req.init_start_time) {
        return Err(init_changed("start time differs"));
    }
    let cgroup_text = read_text_at(proc_dir.as_fd(), "cgroup")?;
    let cg_lines = procfs::parse_cgroup_file(&cgroup_text).map_err(init_changed)?;
    if procfs::identifying_cgroup(&cg_lines, &req.init_cgroup).is_none() {
        return Err(init_changed("cgroup differs"));
    }
    let status = read_text_at(proc_dir.as_fd(), "status")?;
    let cap = |key: &str| {
        procfs::status_hex(&status, key)
            .ok_or_else(|| WireError::step(s, &std::io::Error::other(format!("no {key}"))))
    };
    let cap_mask = procfs::session_cap_mask(cap("CapBnd")?, cap("CapPrm")?, cap("CapEff")?);
    let apparmor = apparmor_label(proc_dir.as_fd())?;
    let host_proc = match apparmor {
        Some(_) => Some(open_host_proc()?),
        None => None,
    };
    let uid_map = procfs::parse_id_map(&read_text_at(proc_dir.as_fd(), "uid_map")?)
        .map_err(|e| WireError::step(s, &std::io::Error::other(e)))?;
    let gid_map = procfs::parse_id_map(&read_text_at(proc_dir.as_fd(), "gid_map")?)
        .map_err(|e| WireError::step(s, &std::io::Error::other(e)))?;
    let ns_flags = differing_namespaces(proc_dir.as_fd())?;
    let cap_last: u32 = read_text_at(nix::fcntl::AT_FDCWD, "/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|_| WireError::step(s, &std::io::Error::other("bad cap_last_cap")))?;
    if let proto::WireMode::Connect { addr } = &req.mode {
        drop(proc_dir);
        return super::connect::helper_connect(ctl, pidfd, ns_flags, *addr);
    }
    let cgroups = open_cgroups(&cgroup_text)?;
    let devnull = open_host_devnull()?;
    drop(proc_dir);
    // Everything read above described the pinned process only if it is
    // still alive now (a pid is not reused while its owner exists).
    alive(pidfd.as_fd())?;

    ensure_single_threaded()?;
    if !ns_flags.is_empty() {
        setns(pidfd.as_fd(), ns_flags).map_err(step(HelperStep::Setns))?;
    }
    // A credential change (user ns) clears the parent-death signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step(HelperStep::Prctl))?;
    if getppid() != parent {
        return Err(WireError::step(
            HelperStep::Prctl,
            &std::io::Error::other("gateway exited"),
        ));
    }
    // "We can't risk leaking file descriptors into the container."
    drop(pidfd);
    // Inherited by C and all it starts; needs CAP_SYS_ADMIN (no
    // no_new_privs), so before the capabilities are narrowed.
    super::seccomp::install_denylist()?;
    // C is visible in the container's /proc from the moment it is forked
    // (to container root with CAP_SYS_PTRACE in a privileged container):
    // it must never hold more than the init, so confine H before forking.
    // H needs nothing more from here on (cgroup.procs was opened above and
    // the kernel checks the opener's credentials).
    session::confine_caps(cap_mask, cap_last)?;

    // Release channel H -> C: one byte, plus the AppArmor exec fd if any.
    let (release_w, release_r) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(step(HelperStep::Fork))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(step(HelperStep::Fork))?;
    // C moves itself into every v1 hierarchy (see `CgroupProcs`).
    let v1_tasks: Vec<(RawFd, &str)> = cgroups
        .iter()
        .filter(|c| c.dir.is_none())
        .map(|c| (c.fd.as_raw_fd(), c.where_.as_str()))
        .collect();
    let v2 = cgroups.iter().find_map(|c| c.dir.as_ref().map(|d| (d, c)));
    let ctx = SessionCtx {
        ctl: CTL_FD,
        cgroup_tasks: &v1_tasks,
        release: release_r.as_raw_fd(),
        err: err_w.as_raw_fd(),
        req: &req,
        cap_mask,
        cap_last,
        apparmor: apparmor.as_deref(),
        uid_map: &uid_map,
        gid_map: &gid_map,
    };
    // On cgroup2, create C inside the container's cgroup; when the kernel
    // refuses (too old, namespace delegation rules), fork and write
    // cgroup.procs below.
    let (forked, v2_pending) = match v2.map(|(dir, _)| sys::clone3_into_cgroup(dir.as_fd())) {
        Some(Ok(f)) => (f, None),
        Some(Err(_)) => (
            sys::fork_single_threaded().map_err(io_step(HelperStep::Fork))?,
            v2.map(|(_, c)| c),
        ),
        None => (
            sys::fork_single_threaded().map_err(io_step(HelperStep::Fork))?,
            None,
        ),
    };
    let cpid = match forked {
        Forked::Child => session::child_main(&ctx),
        Forked::Parent(pid) => pid,
    };
    drop(release_r);
    drop(err_w);
    // Our copies of the session's stdio must not hold the pipes open.
    for target in 0..3 {
        sys::dup_onto(devnull.as_fd(), target).map_err(io_step(HelperStep::CloseFds))?;
    }
    drop(devnull);

    let parent_steps = || -> HResult<(OwnedFd, Option<OwnedFd>)> {
        if let Some(cg) = v2_pending {
            let pid = cpid.to_string();
            nix::unistd::write(cg.fd.as_fd(), pid.as_bytes()).map_err(|e| WireError::Step {
                step: HelperStep::JoinCgroup,
                errno: e as i32,
                detail: format!("{}: {}", cg.where_, e.desc()),
            })?;
        }
        // C reports `m` once it is in every v1 hierarchy; on failure it
        // writes its error to the error pipe and exits instead.
        let mut b = [0u8; 8];
        match proto::recv_bytes_blocking(release_w.as_fd(), &mut b) {
            Ok((1, _)) if b[0] == b'm' => {}
            _ => {
                let report = read_bounded(err_r.as_fd(), 64 * 1024).unwrap_or_default();
                return Err(serde_json::from_slice(&report).unwrap_or_else(|_| {
                    WireError::step(
                        HelperStep::JoinCgroup,
                        &std::io::Error::other("session process could not join the cgroups"),
                    )
                }));
            }
        }
        let cpidfd = sys::pidfd_open(cpid).map_err(io_step(HelperStep::Fork))?;
        let aa = match &host_proc {
            Some(p) => Some(open_apparmor_exec(
                p.as_fd(),
                cpid,
                matches!(
                    req.mode,
                    proto::WireMode::Sftp { .. } | proto::WireMode::Scp { .. }
                ),
            )?),
            None => None,
        };
        proto::send_blocking(
            ctl,
            &HelperMsg::Started { pid: cpid },
            &[cpidfd.as_raw_fd()],
        )
        .map_err(io_step(HelperStep::Report))?;
        Ok((cpidfd, aa))
    };
    let (cpidfd, aa) = match parent_steps() {
        Ok(fds) => fds,
        Err(w) => {
            // C is still blocked on the release pipe: kill and reap it.
            let _ = sys::kill(cpid, libc::SIGKILL);
            let _ = waitpid(Pid::from_raw(cpid), None);
            return Err(w);
        }
    };
    drop(cgroups);
    drop(host_proc);
    let aa_raw: Vec<RawFd> = aa.iter().map(AsRawFd::as_raw_fd).collect();
    proto::send_bytes_blocking(release_w.as_fd(), b"1", &aa_raw)
        .map_err(io_step(HelperStep::Report))?;
    drop(aa);
    drop(release_w);

    // EOF on the error pipe means C exec'd (the pipe is close-on-exec).
    let report = read_bounded(err_r.as_fd(), 64 * 1024).unwrap_or_default();
    drop(err_r);
    let msg = if report.is_empty() {
        HelperMsg::Running
    } else {
        HelperMsg::Error(serde_json::from_slice(&report).unwrap_or_else(|_| {
            WireError::step(
                HelperStep::Exec,
                &std::io::Error::other("session process failed"),
            )
        }))
    };
    let _ = proto::send_blocking(ctl, &msg, &[]);

    let status = wait_session(ctl, cpidfd.as_fd(), cpid)?;
    let _ = proto::send_blocking(ctl, &HelperMsg::Exit(status), &[]);
    Ok(())
}

/// Waits for C. If the gateway goes away (control socket hung up), kills
/// C's process group so no session outlives its gateway.
fn wait_session(ctl: BorrowedFd<'_>, cpidfd: BorrowedFd<'_>, cpid: i32) -> HResult<ExitStatus> {
    let mut ctl_open = true;
    loop {
        let (ctl_ev, pid_ev) =
            sys::poll2(ctl_open.then_some(ctl), cpidfd).map_err(io_step(HelperStep::Wait))?;
        if pid_ev {
            break;
        }
        if ctl_ev {
            let mut buf = [0u8; 512];
            match nix::sys::socket::recv(
                ctl.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) | Err(_) => {
                    ctl_open = false;
                    let _ = sys::pidfd_send_signal(
                        cpidfd,
                        libc::SIGKILL,
                        sys::PIDFD_SIGNAL_PROCESS_GROUP,
                    );
                    let _ = sys::pidfd_send_signal(cpidfd, libc::SIGKILL, 0);
                }
                Ok(_) => {} // nothing is expected; ignore
            }
        }
    }
    let raw = sys::wait_pid(cpid).map_err(io_step(HelperStep::Wait))?;
    Ok(decode_wait_status(raw))
}

/// Decodes a raw `waitpid` status.
pub(crate) fn decode_wait_status(raw: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        ExitStatus::Signal {
            signal: libc::WTERMSIG(raw),
            core_dumped: libc::WCOREDUMP(raw),
        }
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(raw))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn wait_status_decoding() {
        assert_eq!(decode_wait_status(7 << 8), ExitStatus::Code(7));
        assert_eq!(
            decode_wait_status(libc::SIGKILL),
            ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            decode_wait_status(libc::SIGSEGV | 0x80),
            ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            }
        );
        assert_eq!(
            decode_wait_status(40),
            ExitStatus::Signal {
                signal: 40,
                core_dumped: false
            }
        );
    }
}
