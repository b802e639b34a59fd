//! The session's own cgroup (issue 12 point 1): every process a session
//! starts lives in it, below the container's cgroup, and the session's end
//! kills all of it (`cgroup.kill`, or freeze + SIGKILL + thaw) and removes
//! it, reaping nothing of the container's own. On cgroup2 (unified or
//! hybrid hosts) it is `<container cgroup>/.portcullis-<helper pid>-<helper
//! start time>`; on hosts with cgroup v1 only, the same name in the freezer
//! and pids hierarchies. In every other v1 hierarchy the session joins the
//! container's own cgroup, like the init. The helper creates it on the host
//! before the session exists and keeps its handles: no process the container
//! can see ever holds one (review finding 1).
//!
//! A session cgroup whose helper died (killed before it could clean up) is
//! killed and removed by the next helper that enters the same container; a
//! kept one (processes left running on purpose after a normal end; its
//! directory is made mode 0555, since cgroup2 cannot rename) is removed by
//! it once empty.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::Mode;
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, fstatfs};
use nix::unistd::UnlinkatFlags;

use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::step::{HResult, fail, read_at, read_text_at, step};
use crate::attach::procfs;
use crate::attach::sys;

/// Longest wait for a killed session's processes to be gone.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// Prefix of every session cgroup's name.
const PREFIX: &str = ".portcullis-";
/// Mode of a session cgroup whose processes were kept (the usual 0755 for
/// the others).
const KEPT_MODE: u32 = 0o555;

/// One session cgroup in one hierarchy.
struct Own {
    parent: OwnedFd,
    dir: OwnedFd,
    /// cgroup2 `cgroup.procs`; v1 `tasks` (written `0` by the entering
    /// process to move itself).
    procs: OwnedFd,
    v2: bool,
    /// The v1 freezer hierarchy.
    freezer: bool,
    where_: String,
}

/// The session's cgroups, held by the helper for the session's life.
pub(crate) struct SessionCgroup {
    name: String,
    /// The cgroup2 session cgroup (absent on v1-only hosts).
    v2: Option<Own>,
    /// v1-only hosts: the session cgroups in the freezer (first) and pids
    /// hierarchies.
    v1_own: Vec<Own>,
    /// Other v1 hierarchies: the container's own `tasks` file.
    v1_join: Vec<(OwnedFd, String)>,
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

fn open_dir(at: BorrowedFd<'_>, path: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(beneath());
    openat2(at, path, how)
}

/// Opens `mount_point/rel` on the host (checked to be cgroupfs or cgroup2).
fn open_hierarchy_dir(t: &procfs::CgroupTarget) -> HResult<OwnedFd> {
    let s = HelperStep::OpenCgroups;
    let mnt = openat2(
        nix::fcntl::AT_FDCWD,
        t.mount_point.as_str(),
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
    .map_err(step(s))?;
    let dir = if t.rel.is_empty() {
        mnt
    } else {
        open_dir(mnt.as_fd(), &t.rel).map_err(step(s))?
    };
    let magic = fstatfs(dir.as_fd()).map_err(step(s))?.filesystem_type();
    let expect = if t.v2 {
        CGROUP2_SUPER_MAGIC
    } else {
        CGROUP_SUPER_MAGIC
    };
    if magic != expect {
        return Err(fail(
            s,
            &format!("{} is not a cgroup filesystem", t.mount_point),
        ));
    }
    Ok(dir)
}

/// A frozen container would freeze the session on its way in (the startup
/// would then hang until the gateway's timeout): refuse it clearly.
fn refuse_if_frozen(dir: BorrowedFd<'_>, v2: bool) -> HResult<()> {
    let (file, frozen): (&str, fn(&str) -> bool) = if v2 {
        ("cgroup.events", procfs::cgroup2_frozen)
    } else {
        ("freezer.state", procfs::freezer_v1_frozen)
    };
    match read_at(dir, file, 4096) {
        Ok(b) if frozen(&String::from_utf8_lossy(&b)) => Err(WireError::ContainerFrozen),
        Ok(_) => Ok(()),
        // Not the freezer hierarchy (v1), or a root cgroup.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(WireError::step(HelperStep::OpenCgroups, &e)),
    }
}

/// Writes `value` to `file` of `dir` (a cgroupfs control file).
fn write_at(dir: BorrowedFd<'_>, file: &str, value: &[u8]) -> nix::Result<()> {
    let fd = openat(
        dir,
        file,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    nix::unistd::write(&fd, value).map(|_| ())
}

/// The helper's name for its session cgroup: its pid and start time on the
/// host, so a later helper can tell whether it is still alive.
fn own_name() -> HResult<String> {
    let stat = read_text_at(nix::fcntl::AT_FDCWD, "/proc/self/stat")?;
    let start = procfs::start_time_from_stat(&stat)
        .ok_or_else(|| fail(HelperStep::SessionCgroup, "no start time"))?;
    Ok(format!("{PREFIX}{}-{start}", std::process::id()))
}

/// True when the helper named by a session cgroup `name` still runs.
fn creator_alive(name: &str) -> bool {
    let rest = name.strip_prefix(PREFIX).unwrap_or("");
    let Some((pid, start)) = rest.split_once('-') else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| procfs::start_time_from_stat(&s))
        .is_some_and(|t| t.to_string() == start)
}

/// Removes what earlier sessions left in `parent`: kept cgroups once empty,
/// and the cgroups of helpers that died (their processes killed first).
/// Cgroups of live helpers are never touched. Best effort: what cannot go
/// now goes at a later session.
fn sweep(parent: BorrowedFd<'_>, v2: bool) {
    let Ok(dir) = nix::dir::Dir::openat(
        parent,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let names: Vec<String> = dir
        .into_iter()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PREFIX) && !creator_alive(n))
        .collect();
    for name in names {
        let Ok(d) = open_dir(parent, &name) else {
            continue;
        };
        let kept =
            nix::sys::stat::fstat(d.as_fd()).is_ok_and(|st| st.st_mode & 0o7777 == KEPT_MODE);
        if !kept {
            let _ = kill_all(d.as_fd(), v2, &name);
        }
        let _ = nix::unistd::unlinkat(parent, name.as_str(), UnlinkatFlags::RemoveDir);
    }
}

impl SessionCgroup {
    /// Creates the session's cgroups for an init whose `/proc/<pid>/cgroup`
    /// is `cgroup_text` and whose container cgroup is `expected` (e.g.
    /// `/lxc.payload.web1`), after sweeping what earlier sessions left.
    pub(crate) fn create(cgroup_text: &str, expected: &str) -> HResult<SessionCgroup> {
        let s = HelperStep::OpenCgroups;
        let lines = procfs::parse_cgroup_file(cgroup_text)
            .map_err(|e| WireError::InitChanged { detail: e })?;
        let mountinfo = read_text_at(nix::fcntl::AT_FDCWD, "/proc/self/mountinfo")?;
        let mounts = procfs::cgroup_mounts(&mountinfo);
        let (targets, missing) = procfs::cgroup_targets(&lines, &mounts);
        for m in &missing {
            // A hierarchy the host does not mount cannot have placed the
            // init anywhere but its root; anything else means we would leave
            // the session outside one of the container's limits.
            let line = lines
                .iter()
                .find(|l| &l.controllers == m || (m == "cgroup2" && l.id == 0));
            if line.is_some_and(|l| l.path != "/") {
                return Err(fail(
                    s,
                    &format!("cgroup hierarchy {m} is not mounted on the host"),
                ));
            }
        }
        let name = own_name()?;
        let has_v2 = targets.iter().any(|t| t.v2);
        let mut cg = SessionCgroup {
            name,
            v2: None,
            v1_own: Vec::new(),
            v1_join: Vec::new(),
        };
        for t in &targets {
            let controllers = &t.controllers;
            let own_v1 = !has_v2
                && controllers
                    .split(',')
                    .any(|c| c == "freezer" || c == "pids");
            if t.v2 {
                // Below the container's cgroup, not the init's own (a
                // systemd init sits in `init.scope` below it).
                let parent_t = procfs::cgroup_targets(
                    &[procfs::CgroupLine {
                        id: 0,
                        controllers: String::new(),
                        path: expected.to_owned(),
                    }],
                    &mounts,
                )
                .0;
                let parent_t = parent_t.first().unwrap_or(t);
                cg.v2 = Some(cg.own(parent_t)?);
            } else if own_v1 {
                let own = cg.own(t)?;
                if controllers.split(',').any(|c| c == "freezer") {
                    cg.v1_own.insert(0, own);
                } else {
                    cg.v1_own.push(own);
                }
            } else {
                let dir = open_hierarchy_dir(t)?;
                refuse_if_frozen(dir.as_fd(), false)?;
                let tasks = openat(
                    dir.as_fd(),
                    "tasks",
                    OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(step(s))?;
                cg.v1_join
                    .push((tasks, format!("{}/{}", t.mount_point, t.rel)));
            }
        }
        // The end needs cgroup.kill (cgroup2) or a freezer (v1) to kill.
        let freezer = cg.v1_own.first().is_some_and(|o| o.freezer);
        if cg.v2.is_none() && !freezer {
            return Err(fail(
                HelperStep::SessionCgroup,
                "neither cgroup2 nor a v1 freezer hierarchy holds the container",
            ));
        }
        Ok(cg)
    }

    /// Makes the session cgroup below the hierarchy directory `t`.
    fn own(&self, t: &procfs::CgroupTarget) -> HResult<Own> {
        let s = HelperStep::SessionCgroup;
        let parent = open_hierarchy_dir(t)?;
        refuse_if_frozen(parent.as_fd(), t.v2)?;
        sweep(parent.as_fd(), t.v2);
        nix::sys::stat::mkdirat(
            parent.as_fd(),
            self.name.as_str(),
            Mode::from_bits_truncate(0o755),
        )
        .map_err(step(s))?;
        let dir = open_dir(parent.as_fd(), &self.name).map_err(step(s))?;
        let procs = openat(
            dir.as_fd(),
            if t.v2 { "cgroup.procs" } else { "tasks" },
            OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(step(s))?;
        Ok(Own {
            parent,
            dir,
            procs,
            v2: t.v2,
            freezer: !t.v2 && t.controllers.split(',').any(|c| c == "freezer"),
            where_: format!("{}/{}/{}", t.mount_point, t.rel, self.name),
        })
    }

    /// The cgroup2 directory to create the entering process in
    /// (`CLONE_INTO_CGROUP`).
    pub(crate) fn v2_dir(&self) -> Option<BorrowedFd<'_>> {
        self.v2.as_ref().map(|o| o.dir.as_fd())
    }

    /// Files the entering process writes `0` to, to move itself: every v1
    /// `tasks` file (the session's own or the container's), and the cgroup2
    /// `cgroup.procs` when `CLONE_INTO_CGROUP` was not used.
    pub(crate) fn self_moves(&self, cloned_into_v2: bool) -> Vec<(RawFd, String)> {
        let v2 = self
            .v2
            .iter()
            .filter(|_| !cloned_into_v2)
            .map(|o| (o.procs.as_raw_fd(), o.where_.clone()));
        let own = self
            .v1_own
            .iter()
            .map(|o| (o.procs.as_raw_fd(), o.where_.clone()));
        let join = self
            .v1_join
            .iter()
            .map(|(fd, w)| (fd.as_raw_fd(), w.clone()));
        v2.chain(own).chain(join).collect()
    }

    fn owns(&self) -> impl Iterator<Item = &Own> {
        self.v2.iter().chain(self.v1_own.iter())
    }

    /// Kills every process of the session, waits (at most [`KILL_WAIT`])
    /// until none is left, and removes the cgroups. Returns whether they
    /// are gone.
    pub(crate) fn kill_and_remove(&self) -> HResult<bool> {
        let killer = self.v2.as_ref().or(self.v1_own.first());
        if let Some(o) = killer {
            kill_all(o.dir.as_fd(), o.v2, &self.name)?;
        }
        let deadline = Instant::now() + KILL_WAIT;
        for o in self.owns() {
            if !wait_empty(o, deadline)? {
                return Ok(false);
            }
        }
        let mut removed = true;
        for o in self.owns() {
            removed &= nix::unistd::unlinkat(
                o.parent.as_fd(),
                self.name.as_str(),
                UnlinkatFlags::RemoveDir,
            )
            .is_ok();
        }
        Ok(removed)
    }

    /// Leaves the session's processes running: the cgroups are marked
    /// kept (mode 0555), for a later session to remove once empty.
    pub(crate) fn keep(&self) -> HResult<()> {
        for o in self.owns() {
            nix::sys::stat::fchmod(o.dir.as_fd(), Mode::from_bits_truncate(KEPT_MODE))
                .map_err(step(HelperStep::SessionCgroup))?;
        }
        Ok(())
    }
}

/// SIGKILL to every process of the cgroup `dir`: `cgroup.kill` (cgroup2,
/// Linux 5.14+), else freeze, signal each member through a pidfd checked to
/// be in this cgroup, thaw.
fn kill_all(dir: BorrowedFd<'_>, v2: bool, name: &str) -> HResult<()> {
    let s = HelperStep::SessionCgroup;
    if v2 {
        match write_at(dir, "cgroup.kill", b"1") {
            Ok(()) => return Ok(()),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(WireError::errno(s, e)),
        }
    }
    let (file, on, off) = if v2 {
        ("cgroup.freeze", &b"1"[..], &b"0"[..])
    } else {
        ("freezer.state", &b"FROZEN"[..], &b"THAWED"[..])
    };
    write_at(dir, file, on).map_err(step(s))?;
    // Frozen: nobody in the cgroup forks or exits by itself, so the list
    // stays true while we go through it.
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let state = read_text_at(dir, if v2 { "cgroup.events" } else { "freezer.state" })?;
        let frozen = if v2 {
            procfs::cgroup2_frozen(&state)
        } else {
            state.trim() == "FROZEN"
        };
        if frozen || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let procs = read_text_at(dir, "cgroup.procs")?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let Ok(pidfd) = sys::pidfd_open(pid) else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.lines().any(|l| l.ends_with(&format!("/{name}"))) {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL, 0);
        }
    }
    write_at(dir, file, off).map_err(step(s))
}

/// Waits until the session cgroup `o` has no process (cgroup2: `populated
/// 0` in `cgroup.events`, which wakes `poll` with `POLLPRI`; v1: an empty
/// `cgroup.procs`), or `deadline`.
fn wait_empty(o: &Own, deadline: Instant) -> HResult<bool> {
    let s = HelperStep::SessionCgroup;
    let events = if o.v2 {
        Some(
            openat(
                o.dir.as_fd(),
                "cgroup.events",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(step(s))?,
        )
    } else {
        None
    };
    loop {
        let empty = match &events {
            Some(fd) => {
                let mut buf = [0u8; 256];
                let n = nix::sys::uio::pread(fd, &mut buf, 0).map_err(step(s))?;
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l.split_whitespace().eq(["populated", "0"]))
            }
            None => read_text_at(o.dir.as_fd(), "cgroup.procs")?
                .trim()
                .is_empty(),
        };
        if empty {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let wait_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).min(50);
        match &events {
            Some(fd) => {
                sys::poll(&[(fd.as_fd(), libc::POLLPRI)], wait_ms)
                    .map_err(|e| WireError::step(s, &e))?;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The v1-only path (freeze, SIGKILL each member through a checked
    /// pidfd, thaw, wait until empty) on a real freezer cgroup of this host,
    /// with processes that detach (`setsid`, a double fork). Hosts without
    /// a v1 freezer hierarchy (cgroup2 only) have nothing to run it on.
    #[test]
    fn freezer_v1_kills_every_member() {
        let base = std::path::Path::new("/sys/fs/cgroup/freezer");
        if !base.join("freezer.state").exists() && !base.join("cgroup.procs").exists() {
            return;
        }
        let name = format!(".portcullis-test-{}", std::process::id());
        let path = base.join(&name);
        std::fs::create_dir(&path).unwrap();
        // Whatever happens, nothing of this test outlives it.
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
                let procs =
                    std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if let Ok(fd) = sys::pidfd_open(pid) {
                        let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL, 0);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _cleanup = Cleanup(path.clone());
        let quiet = "</dev/null >/dev/null 2>&1";
        let script = format!(
            "echo $$ > {}/tasks; setsid sleep 7001 {quiet} & sh -c 'sleep 7002 {quiet} &'; \
             exec sleep 7003 {quiet}",
            path.display()
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let members = || {
            std::fs::read_to_string(path.join("cgroup.procs"))
                .unwrap()
                .lines()
                .count()
        };
        let started = Instant::now();
        while members() < 3 {
            assert!(started.elapsed() < Duration::from_secs(10), "{}", members());
            std::thread::sleep(Duration::from_millis(10));
        }
        let parent = nix::fcntl::open(
            base,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let dir = open_dir(parent.as_fd(), &name).unwrap();
        kill_all(dir.as_fd(), false, &name).unwrap();
        let own = Own {
            procs: openat(
                dir.as_fd(),
                "tasks",
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap(),
            parent,
            dir,
            v2: false,
            freezer: true,
            where_: name.clone(),
        };
        let _ = child.wait();
        assert!(wait_empty(&own, Instant::now() + KILL_WAIT).unwrap());
        assert_eq!(
            std::fs::read_to_string(path.join("freezer.state")).unwrap(),
            "THAWED\n"
        );
    }
}
