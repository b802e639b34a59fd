//! Pure parsers for the host-side `/proc` facts the attach path needs.
//!
//! All input comes from the host procfs but may contain container-chosen
//! strings (cgroup names), so parsers are strict and reject ambiguity.

/// Largest procfs file read, in bytes.
pub const MAX_PROC_FILE_BYTES: usize = 1024 * 1024;

/// One line of `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    /// Hierarchy id (0 for the cgroup2 unified hierarchy).
    pub id: u32,
    /// Comma-separated controllers (empty for cgroup2, `name=x` for named).
    pub controllers: String,
    /// Path relative to the hierarchy root, starting with `/`.
    pub path: String,
}

fn clean_abs_path(p: &str) -> bool {
    p.starts_with('/') && p.split('/').all(|c| c != ".." && c != ".")
}

/// Parses `/proc/<pid>/cgroup`. Rejects duplicate hierarchy ids (a cgroup
/// name containing a newline could otherwise forge a line), relative paths
/// and `..` components.
pub fn parse_cgroup_file(text: &str) -> Result<Vec<CgroupLine>, String> {
    let mut out: Vec<CgroupLine> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("malformed cgroup line {line:?}"));
        };
        let id: u32 = id.parse().map_err(|_| format!("bad hierarchy id {id:?}"))?;
        if !clean_abs_path(path) {
            return Err(format!("bad cgroup path {path:?}"));
        }
        if out.iter().any(|l| l.id == id) {
            return Err(format!("duplicate hierarchy id {id}"));
        }
        out.push(CgroupLine {
            id,
            controllers: ctrl.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// True when `path` is `expected` or below it (`expected/...`).
pub fn cgroup_within(path: &str, expected: &str) -> bool {
    let expected = expected.trim_end_matches('/');
    path == expected
        || path
            .strip_prefix(expected)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The cgroup path that identifies the process: the cgroup2 (`0::`) line
/// when present, else the first v1 line within `expected`. `None` when the
/// process is not within `expected`.
pub fn identifying_cgroup<'a>(lines: &'a [CgroupLine], expected: &str) -> Option<&'a str> {
    if let Some(v2) = lines.iter().find(|l| l.id == 0 && l.controllers.is_empty()) {
        return cgroup_within(&v2.path, expected).then_some(v2.path.as_str());
    }
    lines
        .iter()
        .find(|l| cgroup_within(&l.path, expected))
        .map(|l| l.path.as_str())
}

/// Field 22 (`starttime`, clock ticks since boot) of `/proc/<pid>/stat`.
/// The comm field may contain spaces and parentheses, so parsing starts
/// after the last `)`.
pub fn start_time_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" the first field is field 3 (state): field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `status` (of `/proc/<pid>/status`) is PID 1 of a PID
/// namespace exactly one level below the one of `own_status` (the reader's
/// `/proc/self/status`): its `NSpid:` has one entry more than the reader's
/// and the last one is `1`. A container's init passes; any other process of
/// the container, and the init of a namespace nested inside the container,
/// do not.
pub fn is_namespace_init_below(status: &str, own_status: &str) -> bool {
    let depth = |s: &str| status_field(s, "NSpid").map(|v| v.split_whitespace().count());
    match (depth(status), depth(own_status)) {
        (Some(theirs), Some(ours)) => {
            theirs == ours + 1
                && status_field(status, "NSpid").and_then(|v| v.split_whitespace().last())
                    == Some("1")
        }
        _ => false,
    }
}

/// A hex field such as `CapBnd:` of `/proc/<pid>/status`.
pub fn status_hex(status: &str, key: &str) -> Option<u64> {
    let v = status_field(status, key)?;
    u64::from_str_radix(v, 16).ok()
}

/// A field of `/proc/<pid>/status` (or `fdinfo`), trimmed.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// One range of `uid_map`/`gid_map`: (inside start, outside start, count).
pub type IdRange = (u32, u32, u32);

/// Parses `/proc/<pid>/uid_map` or `gid_map` (at most 340 lines).
pub fn parse_id_map(text: &str) -> Result<Vec<IdRange>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vec<u32> = line
            .split_whitespace()
            .map(|x| x.parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad id map line {line:?}"))?;
        if v.len() != 3 || out.len() >= 340 {
            return Err(format!("bad id map line {line:?}"));
        }
        out.push((v[0], v[1], v[2]));
    }
    Ok(out)
}

/// True when `id` (inside the namespace) is covered by `map`.
pub fn id_mapped(map: &[IdRange], id: u32) -> bool {
    map.iter().any(|&(inside, _, count)| {
        id >= inside && u64::from(id) < u64::from(inside) + u64::from(count)
    })
}

/// True when the map is the initial namespace's identity map.
pub fn is_identity_map(map: &[IdRange]) -> bool {
    map == [(0, 0, u32::MAX)]
}

/// Longest AppArmor label accepted, in bytes.
pub const MAX_LSM_LABEL_BYTES: usize = 4096;

/// Parses the text of the host's `/proc/<init>/attr/apparmor/current`:
/// `"lxc-container-default-cgns (enforce)\n"` -> `Some("lxc-container-default-cgns")`.
/// The mode suffix (` (enforce)`, ` (complain)`, ...) is dropped, since the
/// exec attribute takes a bare label. `unconfined` (or an empty file) is
/// `None`: nothing to set. Stacked labels (`a//&b`) are kept as they are.
///
/// # Errors
/// A label longer than [`MAX_LSM_LABEL_BYTES`], or holding NUL, a newline
/// inside, or other control characters (a label we could not write back
/// verbatim must not be silently weakened).
pub fn parse_apparmor_label(text: &str) -> Result<Option<String>, String> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    let label = match t.rfind(" (") {
        Some(i) if t.ends_with(')') => &t[..i],
        _ => t,
    };
    if label.is_empty() || label == "unconfined" {
        return Ok(None);
    }
    if label.len() > MAX_LSM_LABEL_BYTES {
        return Err("AppArmor label too long".to_owned());
    }
    if label.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("AppArmor label with control characters: {label:?}"));
    }
    Ok(Some(label.to_owned()))
}

/// The capability set a session may hold: the init's bounding set
/// intersected with its permitted and effective sets (bit n = capability n).
/// Used as the session's bounding set, so that root's permitted and
/// effective sets after `execve` (which the kernel sets to the bounding set
/// for uid 0) are no wider than the init's; for a root init of LXC, nspawn
/// or runc the three are equal and this is exactly the init's bounding set.
pub fn session_cap_mask(cap_bnd: u64, cap_prm: u64, cap_eff: u64) -> u64 {
    cap_bnd & cap_prm & cap_eff
}

/// One line of `/proc/<pid>/limits`: the limit's name as the kernel prints
/// it (`Max open files`) and its soft and hard values, `u64::MAX`
/// (`RLIM_INFINITY`) for `unlimited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The kernel's name, e.g. `Max open files`.
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Parses `/proc/<pid>/limits` (fs/proc/base.c `proc_pid_limits`: a
/// header, then per limit the name in 25 columns and the soft and hard
/// values, `unlimited` or a number).
///
/// # Errors
/// A missing header, a malformed line or more than 32 lines.
pub fn parse_limits(text: &str) -> Result<Vec<Limit>, String> {
    let mut lines = text.lines();
    if !lines.next().is_some_and(|h| h.starts_with("Limit ")) {
        return Err("no header in limits".to_owned());
    }
    let value = |v: &str| match v {
        "unlimited" => Ok(u64::MAX),
        v => v.parse().map_err(|_| format!("bad limit value {v:?}")),
    };
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (name, rest) = line
            .get(..25)
            .zip(line.get(25..))
            .ok_or_else(|| format!("bad limits line {line:?}"))?;
        let mut v = rest.split_whitespace();
        let (Some(soft), Some(hard)) = (v.next(), v.next()) else {
            return Err(format!("bad limits line {line:?}"));
        };
        if out.len() >= 32 {
            return Err("too many limits".to_owned());
        }
        out.push(Limit {
            name: name.trim().to_owned(),
            soft: value(soft)?,
            hard: value(hard)?,
        });
    }
    Ok(out)
}

/// True when a cgroup2 `cgroup.events` text says the cgroup is frozen.
pub fn cgroup2_frozen(events: &str) -> bool {
    events
        .lines()
        .any(|l| l.split_whitespace().eq(["frozen", "1"]))
}

/// True when a cgroup v1 `freezer.state` text is anything but `THAWED`
/// (`FROZEN` or `FREEZING`).
pub fn freezer_v1_frozen(state: &str) -> bool {
    state.trim() != "THAWED"
}

/// A cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Root of the mount within the hierarchy (field 4).
    pub root: String,
    /// Mount point (field 5).
    pub mount_point: String,
    /// True for cgroup2.
    pub v2: bool,
    /// Super options (controllers for v1, e.g. `rw,memory`).
    pub super_options: Vec<String>,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup and cgroup2 mounts listed in a mountinfo text.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 3 {
            continue;
        }
        let v2 = match post[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        out.push(CgroupMount {
            root: unescape_mountinfo(pre[3]),
            mount_point: unescape_mountinfo(pre[4]),
            v2,
            super_options: post[2].split(',').map(str::to_owned).collect(),
        });
    }
    out
}

/// A host directory to join: `mount_point` + `rel` (relative, no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTarget {
    /// The host mount point of the hierarchy.
    pub mount_point: String,
    /// Path below the mount point ("" for the mount root itself).
    pub rel: String,
    /// True for cgroup2.
    pub v2: bool,
    /// The hierarchy's controllers as the cgroup file names them (`""` for
    /// cgroup2, `memory`, `cpu,cpuacct`, `name=systemd`).
    pub controllers: String,
}

/// Maps each line of the init's cgroup file to a host mount. Hierarchies
/// without a usable host mount are returned in the second list (by
/// controllers) so the caller can decide.
pub fn cgroup_targets(
    lines: &[CgroupLine],
    mounts: &[CgroupMount],
) -> (Vec<CgroupTarget>, Vec<String>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for l in lines {
        let v2 = l.id == 0 && l.controllers.is_empty();
        let want: Vec<&str> = l.controllers.split(',').filter(|c| !c.is_empty()).collect();
        let m = mounts.iter().find(|m| {
            m.v2 == v2
                && (v2 || want.iter().all(|c| m.super_options.iter().any(|o| o == c)))
                && cgroup_within(&l.path, &m.root)
        });
        match m {
            Some(m) => {
                let rel = l.path[m.root.trim_end_matches('/').len()..].trim_start_matches('/');
                found.push(CgroupTarget {
                    mount_point: m.mount_point.clone(),
                    rel: rel.to_owned(),
                    v2,
                    controllers: l.controllers.clone(),
                });
            }
            None => missing.push(if v2 {
                "cgroup2".to_owned()
            } else {
                l.controllers.clone()
            }),
        }
    }
    (found, missing)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const CG: &str = "12:memory:/lxc.payload.web1\n11:pids:/lxc.payload.web1\n\
        1:name=systemd:/lxc.payload.web1/init.scope\n0::/lxc.payload.web1\n";

    #[test]
    fn cgroup_parse_and_match() {
        let l = parse_cgroup_file(CG).unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(
            identifying_cgroup(&l, "/lxc.payload.web1"),
            Some("/lxc.payload.web1")
        );
        assert_eq!(identifying_cgroup(&l, "/lxc.payload.web"), None);
        assert_eq!(
            identifying_cgroup(&l, "/lxc.payload.web1/"),
            Some("/lxc.payload.web1")
        );
        let v1only = parse_cgroup_file("3:cpu,cpuacct:/lxc.payload.a/x\n").unwrap();
        assert_eq!(
            identifying_cgroup(&v1only, "/lxc.payload.a"),
            Some("/lxc.payload.a/x")
        );
    }

    #[test]
    fn cgroup_hostile() {
        assert!(parse_cgroup_file("0::/a\n0::/lxc.payload.b\n").is_err());
        assert!(parse_cgroup_file("0::relative\n").is_err());
        assert!(parse_cgroup_file("0::/a/../b\n").is_err());
        assert!(parse_cgroup_file("x::/a\n").is_err());
        assert!(parse_cgroup_file("0:/a\n").is_err());
        // Colons in the path are fine (splitn 3).
        assert_eq!(parse_cgroup_file("0::/a:b\n").unwrap()[0].path, "/a:b");
    }

    #[test]
    fn stat_start_time() {
        let stat = "1234 (we ird) (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time_from_stat(stat), Some(987654));
        assert_eq!(start_time_from_stat("1 (x) S 1"), None);
        assert_eq!(start_time_from_stat("no paren"), None);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tinit\nCapBnd:\t000001ffffffffff\nThreads:\t1\n";
        assert_eq!(status_hex(s, "CapBnd"), Some(0x1ff_ffff_ffff));
        assert_eq!(status_field(s, "Threads"), Some("1"));
        assert_eq!(status_field(s, "Thread"), None);
    }

    #[test]
    fn limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1000                 2000                 files     \n\
Max nice priority         0                    0                    \n";
        let l = parse_limits(text).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(
            l[0],
            Limit {
                name: "Max cpu time".into(),
                soft: u64::MAX,
                hard: u64::MAX
            }
        );
        assert_eq!(
            (l[1].name.as_str(), l[1].soft, l[1].hard),
            ("Max open files", 1000, 2000)
        );
        assert_eq!(
            (l[2].name.as_str(), l[2].soft, l[2].hard),
            ("Max nice priority", 0, 0)
        );
        assert!(parse_limits("Max open files 1 2\n").is_err());
        assert!(parse_limits("Limit x\nMax open files            x 2\n").is_err());
        assert!(parse_limits("Limit x\nshort\n").is_err());
        // This process's own limits parse, with every limit the kernel has.
        let own = parse_limits(&std::fs::read_to_string("/proc/self/limits").unwrap()).unwrap();
        assert_eq!(own.len(), 16);
    }

    #[test]
    fn namespace_init_depth() {
        let host = "Name:\tportcullis\nNSpid:\t4242\n";
        assert!(is_namespace_init_below("NSpid:\t777\t1\n", host));
        // An ordinary process of the container.
        assert!(!is_namespace_init_below("NSpid:\t778\t12\n", host));
        // The init of a namespace nested inside the container.
        assert!(!is_namespace_init_below("NSpid:\t779\t13\t1\n", host));
        // A host process, and missing fields.
        assert!(!is_namespace_init_below("NSpid:\t1\n", host));
        assert!(!is_namespace_init_below("Name:\tx\n", host));
        assert!(!is_namespace_init_below("NSpid:\t777\t1\n", "Name:\tx\n"));
        // A gateway that itself runs in a container.
        assert!(is_namespace_init_below(
            "NSpid:\t90\t31\t1\n",
            "NSpid:\t50\t7\n"
        ));
    }

    #[test]
    fn id_maps() {
        let ident = parse_id_map("         0          0 4294967295\n").unwrap();
        assert!(is_identity_map(&ident));
        let m = parse_id_map("0 100000 65536\n").unwrap();
        assert!(!is_identity_map(&m));
        assert!(id_mapped(&m, 0) && id_mapped(&m, 65535) && !id_mapped(&m, 65536));
        assert!(parse_id_map("0 1\n").is_err());
        assert!(parse_id_map("a b c\n").is_err());
    }

    #[test]
    fn apparmor_labels() {
        let p = |s: &str| parse_apparmor_label(s);
        assert_eq!(
            p("lxc-container-default-cgns (enforce)\n")
                .unwrap()
                .as_deref(),
            Some("lxc-container-default-cgns")
        );
        assert_eq!(
            p("my prof (complain)\n").unwrap().as_deref(),
            Some("my prof")
        );
        assert_eq!(
            p("lxd-c1_</var/lib/lxd>//&:lxd-c1:unconfined (enforce)\n")
                .unwrap()
                .as_deref(),
            Some("lxd-c1_</var/lib/lxd>//&:lxd-c1:unconfined")
        );
        assert_eq!(p("unconfined\n").unwrap(), None);
        assert_eq!(p("").unwrap(), None);
        assert_eq!(p("bare").unwrap().as_deref(), Some("bare"));
        assert!(p("a\nb (enforce)\n").is_err());
        assert!(p("a\0b\n").is_err());
        assert!(p(&"x".repeat(MAX_LSM_LABEL_BYTES + 1)).is_err());
    }

    #[test]
    fn cap_mask_and_freezer() {
        assert_eq!(session_cap_mask(0xff, 0xff, 0xff), 0xff);
        assert_eq!(session_cap_mask(0xff, 0x0f, 0xff), 0x0f);
        assert_eq!(session_cap_mask(0xff, 0xff, 0x03), 0x03);
        assert!(cgroup2_frozen("populated 1\nfrozen 1\n"));
        assert!(!cgroup2_frozen("populated 1\nfrozen 0\n"));
        assert!(freezer_v1_frozen("FROZEN\n") && freezer_v1_frozen("FREEZING\n"));
        assert!(!freezer_v1_frozen("THAWED\n"));
    }

    #[test]
    fn mounts_and_targets() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /mnt/with\\040space rw - cgroup cgroup rw,pids
";
        let m = cgroup_mounts(mi);
        assert_eq!(m.len(), 5);
        assert_eq!(m[4].mount_point, "/mnt/with space");
        let lines = parse_cgroup_file(
            "5:pids:/lxc.payload.a\n4:cpu,cpuacct:/lxc.payload.a\n3:memory:/lxc.payload.a\n\
             2:name=systemd:/lxc.payload.a\n1:blkio:/lxc.payload.a\n0::/lxc.payload.a\n",
        )
        .unwrap();
        let (t, missing) = cgroup_targets(&lines, &m);
        assert_eq!(missing, vec!["blkio".to_owned()]);
        assert_eq!(t.len(), 5);
        assert_eq!(t[0].mount_point, "/mnt/with space");
        assert_eq!(t[1].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        let v2 = t.iter().find(|t| t.v2).unwrap();
        assert_eq!(
            (v2.mount_point.as_str(), v2.rel.as_str()),
            ("/sys/fs/cgroup/unified", "lxc.payload.a")
        );
    }
}
