//! File attributes for the in-container SFTP server: what `stat` answers,
//! how `setstat`/`fsetstat` apply (never by opening the file), and the
//! `ls -l` line (`longname`) of each directory entry.
//!
//! Follows OpenSSH's `sftp-server.c` (`process_setstat`: size, then
//! permissions, then times, then owner; each step answered with the
//! kernel's error) and `sftp-common.c` (`ls_file`). Never resolves names
//! through NSS: ids are named from the container's own `/etc/passwd` and
//! `/etc/group`, read as plain files by the login.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, fchmodat, futimens, utimensat};
use nix::sys::time::TimeSpec;
use russh_sftp::protocol::FileAttributes;

/// Attributes of `m` as SFTP v3 carries them (times clamped to `u32`).
pub(crate) fn attrs_of(m: &std::fs::Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(m.size()),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        permissions: Some(m.mode()),
        atime: Some(m.atime().clamp(0, i64::from(u32::MAX)) as u32),
        mtime: Some(m.mtime().clamp(0, i64::from(u32::MAX)) as u32),
        ..Default::default()
    }
}

fn io(e: nix::Error) -> std::io::Error {
    std::io::Error::from(e)
}

fn times(a: &FileAttributes) -> Option<(TimeSpec, TimeSpec)> {
    let (at, mt) = (a.atime?, a.mtime?);
    let t = |s: u32| TimeSpec::new(i64::from(s), 0);
    Some((t(at), t(mt)))
}

/// Applies `a` to the file at `path` (following symlinks, as OpenSSH's
/// `process_setstat`) without opening it: `truncate(2)`, `chmod(2)`,
/// `utimensat(2)`, `chown(2)`, in that order, stopping at the first
/// error. A file its owner cannot read can still have its times set.
///
/// # Errors
/// The kernel's error of the first step that failed (e.g. `EPERM` for a
/// chown the login may not make).
pub(crate) fn apply_to_path(path: &Path, a: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = a.size {
        let len =
            i64::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        nix::unistd::truncate(path, len).map_err(io)?;
    }
    if let Some(mode) = a.permissions {
        fchmodat(
            AT_FDCWD,
            path,
            Mode::from_bits_truncate((mode & 0o7777) as _),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(io)?;
    }
    if let Some((at, mt)) = times(a) {
        utimensat(AT_FDCWD, path, &at, &mt, UtimensatFlags::FollowSymlink).map_err(io)?;
    }
    if a.uid.is_some() || a.gid.is_some() {
        std::os::unix::fs::chown(path, a.uid, a.gid)?;
    }
    Ok(())
}

/// Applies `a` to the open `file` (`ftruncate`, `fchmod`, `futimens`,
/// `fchown`), in the order of [`apply_to_path`].
///
/// # Errors
/// The kernel's error of the first step that failed.
pub(crate) fn apply_to_file(file: &File, a: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = a.size {
        file.set_len(size)?;
    }
    if let Some(mode) = a.permissions {
        fchmod(file.as_fd(), Mode::from_bits_truncate((mode & 0o7777) as _)).map_err(io)?;
    }
    if let Some((at, mt)) = times(a) {
        futimens(file.as_fd(), &at, &mt).map_err(io)?;
    }
    if a.uid.is_some() || a.gid.is_some() {
        std::os::unix::fs::fchown(file, a.uid, a.gid)?;
    }
    Ok(())
}

/// Names of numeric ids, from the container's `/etc/passwd` or
/// `/etc/group` (`name:x:id:...` lines); unreadable files give no names.
pub(crate) struct IdNames(HashMap<u32, String>);

impl IdNames {
    /// Reads `path` (first name wins for a duplicated id).
    pub(crate) fn load(path: &str) -> IdNames {
        let text = std::fs::read(path).unwrap_or_default();
        let mut map = HashMap::new();
        for line in text.split(|&b| b == b'\n') {
            let mut fields = line.split(|&b| b == b':');
            let (Some(name), _, Some(id)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let (Ok(name), Some(id)) = (
                std::str::from_utf8(name),
                std::str::from_utf8(id).ok().and_then(|s| s.parse().ok()),
            ) else {
                continue;
            };
            if !name.is_empty() && name.len() <= 32 {
                map.entry(id).or_insert_with(|| name.to_string());
            }
        }
        IdNames(map)
    }

    /// The name of `id`, or the number.
    pub(crate) fn name(&self, id: u32) -> String {
        self.0.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }
}

/// `strmode(3)`'s ten characters: the type (`-dlpscb`) and the
/// permission bits with set-id and sticky bits.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '-',
    };
    let bit = |b: u32, c: char| if mode & b != 0 { c } else { '-' };
    let exec =
        |x: u32, special: u32, set: char, unset: char| match (mode & x != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// The `ls -l` line of one entry, as OpenSSH's `ls_file()` writes it:
/// mode, link count, owner, group, size, modification time (`Mon dd
/// HH:MM` within six months of `now`, else `Mon dd  YYYY`, in UTC: the
/// session has no time zone), name.
pub(crate) fn longname(
    name: &str,
    m: &std::fs::Metadata,
    users: &IdNames,
    groups: &IdNames,
    now: i64,
) -> String {
    const SIX_MONTHS: i64 = 365 * 24 * 60 * 60 / 2;
    let mtime = m.mtime();
    let when = time::OffsetDateTime::from_unix_timestamp(mtime)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let month = when.month().to_string();
    let month = month.get(..3).unwrap_or("???");
    let recent = mtime + SIX_MONTHS > now && mtime < now + SIX_MONTHS;
    let tail = if recent {
        format!("{:02}:{:02}", when.hour(), when.minute())
    } else {
        format!(" {}", when.year())
    };
    format!(
        "{} {:>4} {:<8} {:<8} {:>8} {month} {:>2} {tail} {name}",
        mode_string(m.mode()),
        m.nlink(),
        users.name(m.uid()),
        groups.name(m.gid()),
        m.size(),
        when.day(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn mode_strings_name_every_type() {
        assert_eq!(mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(libc::S_IFIFO | 0o600), "prw-------");
        assert_eq!(mode_string(libc::S_IFSOCK | 0o755), "srwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFREG | 0o4644), "-rwSr--r--");
        assert_eq!(mode_string(libc::S_IFREG | 0o2755), "-rwxr-sr-x");
    }

    #[test]
    fn longname_shows_symlinks_fifos_and_link_counts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        std::fs::hard_link(&file, dir.path().join("g")).unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("p"), Mode::from_bits_truncate(0o600)).unwrap();
        let users = IdNames(HashMap::from([(0, "root".to_string())]));
        let groups = IdNames(HashMap::new());
        let line = |n: &str| {
            let m = std::fs::symlink_metadata(dir.path().join(n)).unwrap();
            longname(n, &m, &users, &groups, m.mtime())
        };
        let f = line("f");
        assert!(
            f.starts_with("-rw-r--r--    2 root     0               3 "),
            "{f}"
        );
        assert!(f.ends_with(" f"), "{f}");
        assert!(line("l").starts_with("lrwxrwxrwx    1 "), "{}", line("l"));
        assert!(line("p").starts_with("prw-------    1 "), "{}", line("p"));
    }

    #[test]
    fn id_names_come_from_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbad\n",
        )
        .unwrap();
        let names = IdNames::load(p.to_str().unwrap());
        assert_eq!(names.name(1000), "app");
        assert_eq!(names.name(0), "root");
        assert_eq!(names.name(7), "7");
    }

    #[test]
    fn times_are_set_on_a_file_its_owner_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o200))
            .unwrap();
        let a = FileAttributes {
            atime: Some(1_000_000),
            mtime: Some(2_000_000),
            ..Default::default()
        };
        apply_to_path(&file, &a).unwrap();
        let m = std::fs::metadata(&file).unwrap();
        assert_eq!((m.atime(), m.mtime()), (1_000_000, 2_000_000));
    }
}
