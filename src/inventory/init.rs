//! What the host's procfs says about a process that a backend names as a
//! container's init: its `NSpid` chain, its parent, its start time and its
//! cgroup, and the checks every backend makes with them before it hands a
//! PID to the attach path (review findings 6 and 9).
//!
//! A container's init, as a runtime starts it, is PID 1 of a PID namespace
//! that is a direct child of the gateway's (its `NSpid:` line has exactly
//! one entry more than the gateway's own, the last being `1`), and its
//! parent (the runtime's monitor, `unshare`, `conmon`...) lives outside
//! that namespace. A process that someone inside the container made PID 1
//! of a nested namespace (`unshare -p`) is one level deeper, so it never
//! qualifies. The start time (field 22 of `/proc/PID/stat`, clock ticks
//! since boot) goes with the PID to the pin, which compares it after taking
//! its pidfd, so a PID recycled in between is never entered.
//!
//! Reads procfs only; never signals, opens a pidfd or enters anything.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest procfs file read here, in bytes.
const MAX_PROC_BYTES: u64 = 64 * 1024;

/// One process as procfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessFacts {
    /// Host PID.
    pub(crate) pid: i32,
    /// The `NSpid:` entries, outermost (the reader's namespace) first.
    pub(crate) nspid: Vec<i32>,
    /// Parent's host PID.
    pub(crate) ppid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub(crate) start_time: u64,
}

/// Why a process is not taken as a container's init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotInit {
    /// The process is gone (ENOENT/ESRCH while reading it).
    Gone,
    /// It is not PID 1 of a PID namespace one level below the gateway's.
    Depth {
        /// Its `NSpid:` entries.
        nspid: Vec<i32>,
        /// The gateway's `NSpid:` depth.
        ours: usize,
    },
    /// Its parent is in its own PID namespace (or unreadable): a runtime
    /// starts the init from outside.
    ParentInside {
        /// Parent's host PID.
        ppid: i32,
    },
    /// procfs could not be read or parsed.
    Unreadable(String),
}

impl std::fmt::Display for NotInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotInit::Gone => write!(f, "the process exited"),
            NotInit::Depth { nspid, ours } => write!(
                f,
                "it is not PID 1 of a PID namespace directly below the gateway's \
                 (NSpid {nspid:?}, the gateway's depth {ours})"
            ),
            NotInit::ParentInside { ppid } => write!(
                f,
                "its parent {ppid} is inside its PID namespace (a runtime starts an init from outside)"
            ),
            NotInit::Unreadable(why) => write!(f, "{why}"),
        }
    }
}

/// Reads `path`, at most [`MAX_PROC_BYTES`].
pub(crate) fn read_proc(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_PROC_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_PROC_BYTES {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok(text)
}

/// True for the errors that mean "no such process".
pub(crate) fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// The `NSpid:` entries of a `/proc/PID/status` text (empty when absent).
pub(crate) fn nspid(status: &str) -> Vec<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `(ppid, start_time)` from a `/proc/PID/stat` text: fields 4 and 22,
/// counted after the command name in parentheses (which may itself hold
/// spaces and parentheses, so the last `)` ends it).
pub(crate) fn stat_fields(stat: &str) -> Option<(i32, u64)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state).
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// The `NSpid:` depth of the gateway itself (1 on a host, more when the
/// gateway runs inside a container).
pub(crate) fn gateway_depth() -> Result<usize, std::io::Error> {
    let depth = nspid(&read_proc(Path::new("/proc/self/status"))?).len();
    if depth == 0 {
        return Err(std::io::Error::other("/proc/self/status has no NSpid line"));
    }
    Ok(depth)
}

/// Reads `pid`'s `NSpid`, parent and start time.
pub(crate) fn facts(pid: i32) -> Result<ProcessFacts, NotInit> {
    let read = |name: &str| {
        read_proc(Path::new(&format!("/proc/{pid}/{name}"))).map_err(|e| {
            if gone(&e) {
                NotInit::Gone
            } else {
                NotInit::Unreadable(format!("/proc/{pid}/{name}: {e}"))
            }
        })
    };
    let status = read("status")?;
    let stat = read("stat")?;
    let (ppid, start_time) = stat_fields(&stat)
        .ok_or_else(|| NotInit::Unreadable(format!("unparsable /proc/{pid}/stat")))?;
    Ok(ProcessFacts {
        pid,
        nspid: nspid(&status),
        ppid,
        start_time,
    })
}

/// The depth rule: `NSpid` has `ours + 1` entries and ends in `1`.
pub(crate) fn is_child_namespace_init(nspid: &[i32], ours: usize) -> bool {
    nspid.len() == ours + 1 && nspid.last() == Some(&1)
}

/// Checks that `pid` is a container's init by the rule in the module docs
/// and returns its facts (the start time goes to the pin).
pub(crate) fn verify(pid: i32, ours: usize) -> Result<ProcessFacts, NotInit> {
    let facts = facts(pid)?;
    if !is_child_namespace_init(&facts.nspid, ours) {
        return Err(NotInit::Depth {
            nspid: facts.nspid,
            ours,
        });
    }
    let ns = |p: i32| std::fs::metadata(format!("/proc/{p}/ns/pid")).map(|m| (m.dev(), m.ino()));
    let own = ns(pid).map_err(|e| {
        if gone(&e) {
            NotInit::Gone
        } else {
            NotInit::Unreadable(format!("/proc/{pid}/ns/pid: {e}"))
        }
    })?;
    match ns(facts.ppid) {
        Ok(parent) if parent != own => {}
        _ => return Err(NotInit::ParentInside { ppid: facts.ppid }),
    }
    // The reads above described `pid` only if it is still the same
    // process: a recycled PID has another start time.
    match self::facts(pid) {
        Ok(again) if again.start_time == facts.start_time => Ok(facts),
        Ok(_) | Err(NotInit::Gone) => Err(NotInit::Gone),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn depth_rule() {
        assert!(is_child_namespace_init(&[25713, 1], 1));
        // A nested namespace inside the container: one level too deep.
        assert!(!is_child_namespace_init(&[9, 5, 1], 1));
        assert!(is_child_namespace_init(&[9, 5, 1], 2));
        assert!(!is_child_namespace_init(&[25721, 7], 1));
        assert!(!is_child_namespace_init(&[1], 1));
        assert!(!is_child_namespace_init(&[], 1));
    }

    #[test]
    fn stat_parsing() {
        let stat = "4242 (we ird) pro) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(stat_fields(stat), Some((17, 987654)));
        assert_eq!(stat_fields("1 (x) S"), None);
        assert_eq!(nspid("Name:\tx\nNSpid:\t9\t5\t1\n"), vec![9, 5, 1]);
        assert_eq!(nspid("Name:\tx\n"), Vec::<i32>::new());
    }

    #[test]
    fn this_process_is_no_init() {
        let ours = gateway_depth().unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let f = facts(me).unwrap();
        assert_eq!(f.nspid.len(), ours);
        assert!(f.start_time > 0);
        assert!(matches!(verify(me, ours), Err(NotInit::Depth { .. })));
        assert_eq!(verify(i32::MAX - 1, ours), Err(NotInit::Gone));
    }
}
