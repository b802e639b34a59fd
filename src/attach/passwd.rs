//! A small, bounded parser for the container's `/etc/passwd` and `/etc/group`.
//!
//! Never NSS: `getpwnam` would load the container's `libnss_*.so` into a
//! process that still holds host privileges. Input is hostile: files over
//! [`MAX_FILE_BYTES`] are rejected, lines over [`MAX_LINE_BYTES`] and
//! malformed lines are skipped, the first matching entry wins (like glibc's
//! `files` backend).

/// Largest accepted `/etc/passwd` or `/etc/group`, in bytes.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Longest accepted line, in bytes; longer lines are ignored.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Most supplementary groups collected for one login.
pub const MAX_GROUPS: usize = 1024;
/// Longest accepted login name, in bytes.
pub const MAX_LOGIN_BYTES: usize = 64;

/// One resolved `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// Numeric uid (in the container's user namespace).
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory (absolute; "/" when the field is empty or relative).
    pub home: String,
    /// Login shell (absolute; "/bin/sh" when the field is empty).
    pub shell: String,
}

/// Default shell when the passwd field is empty.
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// True when `login` is an acceptable account name: 1..=64 bytes, no
/// leading `-`/`+`, only `[A-Za-z0-9._-]` and an optional final `$`.
pub fn valid_login(login: &str) -> bool {
    let b = login.as_bytes();
    if b.is_empty() || b.len() > MAX_LOGIN_BYTES || b[0] == b'-' || b[0] == b'+' {
        return false;
    }
    let (body, _) = match b.split_last() {
        Some((b'$', rest)) if !rest.is_empty() => (rest, true),
        _ => (b, false),
    };
    body.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // (uid_t)-1 is "no id" for the setres*id calls; never accept it.
    s.parse::<u32>().ok().filter(|&v| v != u32::MAX)
}

/// Lines of `data` no longer than [`MAX_LINE_BYTES`], as UTF-8, without
/// comments or blank lines.
fn lines(data: &[u8]) -> impl Iterator<Item = &str> {
    data.split(|&c| c == b'\n')
        .filter(|l| l.len() <= MAX_LINE_BYTES && !l.contains(&0))
        .filter_map(|l| std::str::from_utf8(l).ok())
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Finds `login` in passwd data. Errors when the data exceeds
/// [`MAX_FILE_BYTES`]; `Ok(None)` when there is no well-formed entry.
pub fn find_user(passwd: &[u8], login: &str) -> Result<Option<PasswdEntry>, String> {
    if passwd.len() > MAX_FILE_BYTES {
        return Err(format!("passwd file larger than {MAX_FILE_BYTES} bytes"));
    }
    for line in lines(passwd) {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 || f[0] != login {
            continue;
        }
        let (Some(uid), Some(gid)) = (parse_id(f[2]), parse_id(f[3])) else {
            continue;
        };
        let home = if f[5].starts_with('/') { f[5] } else { "/" };
        let shell = if f[6].is_empty() {
            DEFAULT_SHELL
        } else if f[6].starts_with('/') {
            f[6]
        } else {
            continue;
        };
        return Ok(Some(PasswdEntry {
            name: f[0].to_owned(),
            uid,
            gid,
            home: home.to_owned(),
            shell: shell.to_owned(),
        }));
    }
    Ok(None)
}

/// Supplementary groups of `login`: `primary` first, then every well-formed
/// group that lists `login` as a member, deduplicated, at most
/// [`MAX_GROUPS`]. Errors when the data exceeds [`MAX_FILE_BYTES`].
pub fn groups_of(group: &[u8], login: &str, primary: u32) -> Result<Vec<u32>, String> {
    if group.len() > MAX_FILE_BYTES {
        return Err(format!("group file larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut out = vec![primary];
    for line in lines(group) {
        if out.len() >= MAX_GROUPS {
            break;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 || f[0].is_empty() {
            continue;
        }
        let Some(gid) = parse_id(f[2]) else { continue };
        if f[3].split(',').any(|m| m.trim() == login) && !out.contains(&gid) {
            out.push(gid);
        }
    }
    Ok(out)
}

/// The gid of the group `name` in group data (`tty`, for the session's
/// PTY), or `None` when there is no well-formed entry. Errors when the data
/// exceeds [`MAX_FILE_BYTES`].
pub fn group_gid(group: &[u8], name: &str) -> Result<Option<u32>, String> {
    if group.len() > MAX_FILE_BYTES {
        return Err(format!("group file larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(lines(group).find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() == 4 && f[0] == name)
            .then(|| parse_id(f[2]))
            .flatten()
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const PASSWD: &str = "\
# comment
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1::/usr/sbin:/usr/sbin/nologin
nohome:x:1000:1000::relative:
bad:x:notanumber:1::/:/bin/sh
minus:x:4294967295:1::/:/bin/sh
short:x:5:5
";

    #[test]
    fn finds_root() {
        let e = find_user(PASSWD.as_bytes(), "root").unwrap().unwrap();
        assert_eq!((e.uid, e.gid), (0, 0));
        assert_eq!(e.home, "/root");
        assert_eq!(e.shell, "/bin/sh");
    }

    #[test]
    fn defaults_for_empty_fields() {
        let e = find_user(PASSWD.as_bytes(), "nohome").unwrap().unwrap();
        assert_eq!(e.home, "/");
        assert_eq!(e.shell, DEFAULT_SHELL);
    }

    #[test]
    fn rejects_malformed() {
        for login in ["bad", "minus", "short", "missing", "# comment", ""] {
            assert_eq!(
                find_user(PASSWD.as_bytes(), login).unwrap(),
                None,
                "{login}"
            );
        }
        // Relative shell paths are not accepted.
        let p = b"rel:x:1:1::/:bin/sh\n";
        assert_eq!(find_user(p, "rel").unwrap(), None);
        // Extra fields, overflow, signs, spaces.
        for l in [
            "x:x:1:1::/:/bin/sh:extra",
            "x:x:99999999999:1::/:/bin/sh",
            "x:x:+1:1::/:/bin/sh",
            "x:x: 1:1::/:/bin/sh",
            "x:x:-1:1::/:/bin/sh",
        ] {
            assert_eq!(find_user(l.as_bytes(), "x").unwrap(), None, "{l}");
        }
    }

    #[test]
    fn first_match_wins_and_crlf() {
        let p = b"a:x:1:1::/h1:/bin/sh\r\na:x:2:2::/h2:/bin/sh\n";
        let e = find_user(p, "a").unwrap().unwrap();
        assert_eq!((e.uid, e.home.as_str()), (1, "/h1"));
    }

    #[test]
    fn long_lines_and_binary_skipped() {
        let mut p = format!("a:x:1:1:{}:/h:/bin/sh\n", "g".repeat(MAX_LINE_BYTES));
        p.push_str("b:x:2:2::/h:/bin/sh\n");
        assert_eq!(find_user(p.as_bytes(), "a").unwrap(), None);
        assert!(find_user(p.as_bytes(), "b").unwrap().is_some());
        let bin = b"\xff\xfe:x:1:1::/:/bin/sh\nc\0:x:1:1::/:/bin/sh\nc:x:3:3::/:/bin/sh\n";
        assert_eq!(find_user(bin, "c").unwrap().unwrap().uid, 3);
    }

    #[test]
    fn oversized_file_rejected() {
        let big = vec![b'\n'; MAX_FILE_BYTES + 1];
        assert!(find_user(&big, "root").is_err());
        assert!(groups_of(&big, "root", 0).is_err());
    }

    #[test]
    fn groups() {
        let g = b"root:x:0:\nwheel:x:10:root,alice\nusers:x:100: alice \n\
                  dup:x:10:alice\nbad:x:zz:alice\nshort:x:5\naudio:x:29:bob\n";
        assert_eq!(groups_of(g, "alice", 1000).unwrap(), vec![1000, 10, 100]);
        assert_eq!(groups_of(g, "root", 0).unwrap(), vec![0, 10]);
        assert_eq!(groups_of(g, "nobody", 7).unwrap(), vec![7]);
    }

    #[test]
    fn group_by_name() {
        let g = b"root:x:0:\ntty:x:5:\ntty:x:6:\nbad:x:zz:\nshort:x:7\n";
        assert_eq!(group_gid(g, "tty").unwrap(), Some(5));
        assert_eq!(group_gid(g, "bad").unwrap(), None);
        assert_eq!(group_gid(g, "short").unwrap(), None);
        assert_eq!(group_gid(g, "nope").unwrap(), None);
        assert!(group_gid(&vec![b'\n'; MAX_FILE_BYTES + 1], "tty").is_err());
    }

    #[test]
    fn groups_bounded() {
        let mut g = String::new();
        for i in 0..(MAX_GROUPS + 50) {
            g.push_str(&format!("g{i}:x:{}:u\n", i + 1));
        }
        assert_eq!(groups_of(g.as_bytes(), "u", 0).unwrap().len(), MAX_GROUPS);
    }

    #[test]
    fn login_names() {
        for ok in ["root", "a", "user.name", "svc-x", "machine$", "_apt"] {
            assert!(valid_login(ok), "{ok}");
        }
        let long = "a".repeat(MAX_LOGIN_BYTES + 1);
        for bad in [
            "", "-root", "+nis", "a:b", "a/b", "a b", "a\n", "$", "é", "a\0", &long,
        ] {
            assert!(!valid_login(bad), "{bad:?}");
        }
    }
}
