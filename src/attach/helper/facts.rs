//! What the helper learns about the container's init before anything else,
//! through the host's procfs (never the container's): that it still is the
//! verified init, and everything a session must get exactly as the init
//! has it: capabilities, `no_new_privs`, seccomp mode, rlimits,
//! `oom_score_adj`, LSM label, id maps, namespaces. Reads only; changes
//! nothing.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::Mode;
use nix::sys::statfs::{PROC_SUPER_MAGIC, fstatfs};

use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::lsm;
use crate::attach::helper::step::{HResult, fail, init_changed, read_text_at, step};
use crate::attach::procfs::{self, IdRange};
use crate::attach::proto::WireRequest;

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

/// The init's `/proc/<pid>/limits` names and the resources they are.
const LIMITS: [(&str, Resource); 16] = [
    ("Max cpu time", Resource::RLIMIT_CPU),
    ("Max file size", Resource::RLIMIT_FSIZE),
    ("Max data size", Resource::RLIMIT_DATA),
    ("Max stack size", Resource::RLIMIT_STACK),
    ("Max core file size", Resource::RLIMIT_CORE),
    ("Max resident set", Resource::RLIMIT_RSS),
    ("Max processes", Resource::RLIMIT_NPROC),
    ("Max open files", Resource::RLIMIT_NOFILE),
    ("Max locked memory", Resource::RLIMIT_MEMLOCK),
    ("Max address space", Resource::RLIMIT_AS),
    ("Max file locks", Resource::RLIMIT_LOCKS),
    ("Max pending signals", Resource::RLIMIT_SIGPENDING),
    ("Max msgqueue size", Resource::RLIMIT_MSGQUEUE),
    ("Max nice priority", Resource::RLIMIT_NICE),
    ("Max realtime priority", Resource::RLIMIT_RTPRIO),
    ("Max realtime timeout", Resource::RLIMIT_RTTIME),
];

/// The init, as the helper found it.
pub(crate) struct InitFacts {
    /// `/proc/<pid>/cgroup`, already checked to be within the expected cgroup.
    pub cgroup_text: String,
    /// CapBnd & CapPrm & CapEff ([`procfs::session_cap_mask`]).
    pub cap_mask: u64,
    /// `/proc/sys/kernel/cap_last_cap`.
    pub cap_last: u32,
    /// `NoNewPrivs: 1`.
    pub no_new_privs: bool,
    /// `Seccomp:` 0 (none), 1 (strict) or 2 (filter).
    pub seccomp_mode: u8,
    /// Every rlimit of the init (`lxc.prlimit.*` included).
    pub limits: Vec<(Resource, u64, u64)>,
    /// The init's `oom_score_adj`.
    pub oom_score_adj: i32,
    /// The init's AppArmor label, which the session gets.
    pub apparmor: Option<String>,
    /// The init's user namespace id maps.
    pub uid_map: Vec<IdRange>,
    /// See `uid_map`.
    pub gid_map: Vec<IdRange>,
    /// The namespaces that differ from the helper's.
    pub ns_flags: CloneFlags,
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

fn limits(text: &str) -> HResult<Vec<(Resource, u64, u64)>> {
    let s = HelperStep::HostFacts;
    let parsed = procfs::parse_limits(text).map_err(|e| fail(s, &e))?;
    parsed
        .into_iter()
        .map(|l| {
            // A limit this build does not know could not be reproduced.
            let r = LIMITS
                .iter()
                .find(|(n, _)| *n == l.name)
                .map(|(_, r)| *r)
                .ok_or_else(|| fail(s, &format!("unknown limit {:?}", l.name)))?;
            Ok((r, l.soft, l.hard))
        })
        .collect()
}

/// Opens `/proc/<init>` of the host (verified procfs), checks it still is
/// the process the gateway pinned (start time, cgroup, PID 1 of a namespace
/// one level below ours) and reads what the session must get. The caller
/// checks the init is still alive afterwards, which proves these reads
/// described it.
pub(crate) fn read(req: &WireRequest) -> HResult<InitFacts> {
    let s = HelperStep::HostFacts;
    let proc_dir = nix::fcntl::open(
        format!("/proc/{}", req.init_pid).as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|_| init_changed("init exited"))?;
    let dir = proc_dir.as_fd();
    if fstatfs(dir).map_err(step(s))?.filesystem_type() != PROC_SUPER_MAGIC {
        return Err(fail(s, "/proc is not procfs"));
    }
    let stat = read_text_at(dir, "stat")?;
    if procfs::start_time_from_stat(&stat) != Some(req.init_start_time) {
        return Err(init_changed("start time differs"));
    }
    let cgroup_text = read_text_at(dir, "cgroup")?;
    let lines = procfs::parse_cgroup_file(&cgroup_text).map_err(init_changed)?;
    if procfs::identifying_cgroup(&lines, &req.init_cgroup).is_none() {
        return Err(init_changed("cgroup differs"));
    }
    let status = read_text_at(dir, "status")?;
    let own_status = read_text_at(nix::fcntl::AT_FDCWD, "/proc/self/status")?;
    if !procfs::is_namespace_init_below(&status, &own_status) {
        return Err(init_changed("not the init of a PID namespace below ours"));
    }
    let field =
        |key: &str| procfs::status_field(&status, key).ok_or_else(|| fail(s, &format!("no {key}")));
    let cap =
        |key: &str| procfs::status_hex(&status, key).ok_or_else(|| fail(s, &format!("no {key}")));
    let cap_mask = procfs::session_cap_mask(cap("CapBnd")?, cap("CapPrm")?, cap("CapEff")?);
    let no_new_privs = field("NoNewPrivs")? == "1";
    let seccomp_mode = field("Seccomp")?
        .parse()
        .map_err(|_| fail(s, "bad Seccomp field"))?;
    let limits = limits(&read_text_at(dir, "limits")?)?;
    let oom_score_adj = read_text_at(dir, "oom_score_adj")?
        .trim()
        .parse()
        .map_err(|_| fail(s, "bad oom_score_adj"))?;
    let apparmor = lsm::session_label(dir)?;
    let map = |file: &str| -> HResult<Vec<IdRange>> {
        procfs::parse_id_map(&read_text_at(dir, file)?).map_err(|e| fail(s, &e))
    };
    let (uid_map, gid_map) = (map("uid_map")?, map("gid_map")?);
    let ns_flags = differing_namespaces(dir)?;
    let cap_last = read_text_at(nix::fcntl::AT_FDCWD, "/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|_| fail(s, "bad cap_last_cap"))?;
    Ok(InitFacts {
        cgroup_text,
        cap_mask,
        cap_last,
        no_new_privs,
        seccomp_mode,
        limits,
        oom_score_adj,
        apparmor,
        uid_map,
        gid_map,
        ns_flags,
    })
}
