//! OpenSSH's SFTP extensions (OpenSSH `PROTOCOL` §4.3–4.11), announced in
//! `SSH_FXP_VERSION` and answered by the in-container handler:
//! `posix-rename@openssh.com`, `statvfs@openssh.com` (so `sftp df`
//! works), `hardlink@openssh.com`, `fsync@openssh.com`,
//! `limits@openssh.com` (so clients use large reads and writes),
//! `expand-path@openssh.com` (`~` and `~user`), and `copy-data`
//! (draft-ietf-secsh-filexfer-extensions-00 §7, OpenSSH 9's `sftp cp`). Changes are refused in a
//! read-only session like every other change.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use russh_sftp::extensions::{LimitsExtension, Statvfs};
use russh_sftp::protocol::{ExtendedReply, File as DirEntry, Name, Packet, StatusCode};
use russh_sftp::server::StatusReply;

use super::{
    MAX_HANDLES, MAX_PACKET_BYTES, MAX_READ_BYTES, MAX_WRITE_BYTES, SftpHandler, canonical_path,
    ok, status_of,
};

const POSIX_RENAME: &str = "posix-rename@openssh.com";
const COPY_DATA: &str = "copy-data";

/// Bytes moved per step of a `copy-data` request.
const COPY_CHUNK: usize = 64 * 1024;

/// Extension names and versions sent in `SSH_FXP_VERSION`.
pub(super) fn announced() -> HashMap<String, String> {
    [
        (POSIX_RENAME, "1"),
        (russh_sftp::extensions::STATVFS, "2"),
        (russh_sftp::extensions::HARDLINK, "1"),
        (russh_sftp::extensions::FSYNC, "1"),
        (russh_sftp::extensions::LIMITS, "1"),
        (russh_sftp::extensions::EXPAND_PATH, "1"),
        (COPY_DATA, "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Reads the SFTP strings of an extended request's data (`uint32`
/// length, then the bytes, UTF-8), exactly `N` of them and nothing after.
fn strings<const N: usize>(data: &[u8]) -> Result<[String; N], StatusReply> {
    let bad = || StatusCode::BadMessage.with_message("malformed extended request");
    let mut rest = data;
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for slot in out.iter_mut() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad());
        }
        let (s, tail) = tail.split_at(len);
        *slot = String::from_utf8(s.to_vec()).map_err(|_| bad())?;
        rest = tail;
    }
    if rest.is_empty() { Ok(out) } else { Err(bad()) }
}

fn reply<T: serde::Serialize>(id: u32, value: &T) -> Result<Packet, StatusReply> {
    let data = russh_sftp::ser::to_bytes(value)
        .map_err(|_| StatusCode::Failure.with_message("cannot encode the reply"))?;
    Ok(Packet::ExtendedReply(ExtendedReply {
        id,
        data: data.to_vec(),
    }))
}

fn io_status(e: &std::io::Error) -> StatusReply {
    status_of(e)
}

/// The fields of a `copy-data` request: `string read-from-handle, uint64
/// read-from-offset, uint64 read-data-length (0: to the end), string
/// write-to-handle, uint64 write-to-offset`.
fn copy_request(data: &[u8]) -> Result<(String, u64, u64, String, u64), StatusReply> {
    let bad = || StatusCode::BadMessage.with_message("malformed copy-data request");
    let mut rest = data;
    let string = |rest: &mut &[u8]| -> Result<String, StatusReply> {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad());
        }
        let (s, tail) = tail.split_at(len);
        *rest = tail;
        String::from_utf8(s.to_vec()).map_err(|_| bad())
    };
    let number = |rest: &mut &[u8]| -> Result<u64, StatusReply> {
        let (n, tail) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        *rest = tail;
        Ok(u64::from_be_bytes(*n))
    };
    let from = string(&mut rest)?;
    let from_offset = number(&mut rest)?;
    let length = number(&mut rest)?;
    let to = string(&mut rest)?;
    let to_offset = number(&mut rest)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok((from, from_offset, length, to, to_offset))
}

/// `statvfs(3)` of `path` in OpenSSH's reply layout (flags: 1 read-only,
/// 2 no set-id).
fn statvfs(path: &str) -> std::io::Result<Statvfs> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let f = s.flags();
    let mut flags = 0u64;
    if f.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        flags |= 1;
    }
    if f.contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
        flags |= 2;
    }
    Ok(Statvfs {
        block_size: s.block_size(),
        fragment_size: s.fragment_size(),
        blocks: s.blocks(),
        blocks_free: s.blocks_free(),
        blocks_avail: s.blocks_available(),
        inodes: s.files(),
        inodes_free: s.files_free(),
        inodes_avail: s.files_available(),
        fs_id: s.filesystem_id(),
        flags,
        name_max: s.name_max(),
    })
}

impl SftpHandler {
    /// `~`, `~/rest`, `~user` and `~user/rest` made absolute (the login's
    /// home; another user's home from the container's `/etc/passwd`, read
    /// as a file), then resolved like `realpath`.
    fn expand_path(&self, path: &str) -> std::io::Result<String> {
        let Some(rest) = path.strip_prefix('~') else {
            return canonical_path(path);
        };
        let (user, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let home = if user.is_empty() {
            self.home.clone()
        } else {
            let passwd = std::fs::read("/etc/passwd")?;
            match crate::attach::passwd::find_user(&passwd, user) {
                Ok(Some(entry)) => entry.home,
                _ => return Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
            }
        };
        canonical_path(&format!("{}/{tail}", home.trim_end_matches('/')))
    }

    /// `copy-data`: copies from one open handle to another inside the
    /// container (as OpenSSH's `sftp-server`: the same handle with
    /// overlapping ranges is refused). The bytes count, and are digested, as
    /// read from the source handle and written to the target handle.
    fn copy_data(&mut self, data: &[u8]) -> Result<(), StatusReply> {
        let (from, mut from_offset, length, to, mut to_offset) = copy_request(data)?;
        if from == to {
            let end = |o: u64| {
                if length == 0 {
                    u64::MAX
                } else {
                    o.saturating_add(length)
                }
            };
            if from_offset < end(to_offset) && to_offset < end(from_offset) {
                return Err(StatusCode::Failure.with_message("copy-data: overlapping ranges"));
            }
        }
        // Both handles must be open files; the target must be writable.
        if !self.file(&to)?.wants_write {
            return Err(
                StatusCode::PermissionDenied.with_message("copy-data: target not open for writing")
            );
        }
        self.file(&from)?;
        let mut left = if length == 0 { u64::MAX } else { length };
        let mut buf = vec![0u8; COPY_CHUNK];
        while left > 0 {
            let want = usize::try_from(left).map_or(COPY_CHUNK, |l| l.min(COPY_CHUNK));
            let src = self.file(&from)?;
            let n = src
                .file
                .read_at(&mut buf[..want], from_offset)
                .map_err(|e| io_status(&e))?;
            if n == 0 {
                break;
            }
            src.read.add(from_offset, &buf[..n]);
            let dst = self.file(&to)?;
            dst.file
                .write_all_at(&buf[..n], to_offset)
                .map_err(|e| io_status(&e))?;
            dst.write.add(to_offset, &buf[..n]);
            from_offset += n as u64;
            to_offset += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    /// Answers one `SSH_FXP_EXTENDED` request; unknown ones are
    /// `SSH_FX_OP_UNSUPPORTED`.
    pub(super) fn extended_request(
        &mut self,
        id: u32,
        request: &str,
        data: Vec<u8>,
    ) -> Result<Packet, StatusReply> {
        match request {
            POSIX_RENAME => {
                self.writable()?;
                let [old, new] = strings(&data)?;
                std::fs::rename(&old, &new).map_err(|e| io_status(&e))?;
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::HARDLINK => {
                self.writable()?;
                let [old, new] = strings(&data)?;
                std::fs::hard_link(&old, &new).map_err(|e| io_status(&e))?;
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::FSYNC => {
                let [handle] = strings(&data)?;
                self.file(&handle)?
                    .file
                    .sync_all()
                    .map_err(|e| io_status(&e))?;
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::STATVFS => {
                let [path] = strings(&data)?;
                let s = statvfs(&path).map_err(|e| io_status(&e))?;
                reply(id, &s)
            }
            russh_sftp::extensions::LIMITS => reply(
                id,
                &LimitsExtension {
                    max_packet_len: u64::from(MAX_PACKET_BYTES),
                    max_read_len: u64::from(MAX_READ_BYTES),
                    max_write_len: u64::from(MAX_WRITE_BYTES),
                    max_open_handles: MAX_HANDLES as u64,
                },
            ),
            russh_sftp::extensions::EXPAND_PATH => {
                let [path] = strings(&data)?;
                let path = self.expand_path(&path).map_err(|e| io_status(&e))?;
                Ok(Packet::Name(Name {
                    id,
                    files: vec![DirEntry::dummy(path)],
                }))
            }
            COPY_DATA => {
                self.writable()?;
                self.copy_data(&data)?;
                Ok(Packet::Status(ok(id)))
            }
            _ => Err(StatusCode::OpUnsupported.with_message(format!("{request}: not supported"))),
        }
    }
}
