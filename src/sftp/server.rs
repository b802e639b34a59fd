//! The russh-sftp [`Handler`] over `std::fs`, run by the session process
//! inside the container (see the module docs of [`super`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::AT_FDCWD;
use russh_sftp::protocol::{
    Attrs, Data, File as DirEntry, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::attrs::{self, attrs_of};
use super::{Direction, EventSink, TransferRecord, resolved_path};

#[path = "extended.rs"]
mod extended;

/// Largest client packet accepted (a 256 KiB write plus headers).
pub(crate) const MAX_PACKET_BYTES: u32 = 256 * 1024 + 1024;

/// Largest read answered in one packet.
pub(crate) const MAX_READ_BYTES: u32 = 255 * 1024;

/// Largest write accepted in one packet (fits [`MAX_PACKET_BYTES`]).
pub(crate) const MAX_WRITE_BYTES: u32 = 256 * 1024;

/// Most handles open at once.
pub(crate) const MAX_HANDLES: usize = 256;

/// Directory entries per READDIR answer.
const DIR_BATCH: usize = 128;

/// Digest of one direction of one handle: every byte that moved, in the
/// order it moved, and whether that order was the file's own from offset
/// 0 without gaps or overlaps.
struct Stream {
    hasher: Sha256,
    bytes: u64,
    next: u64,
    sequential: bool,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            hasher: Sha256::new(),
            bytes: 0,
            next: 0,
            sequential: true,
        }
    }

    fn add(&mut self, offset: u64, data: &[u8]) {
        if offset != self.next {
            self.sequential = false;
        }
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.next = offset + data.len() as u64;
    }
}

struct OpenFile {
    file: File,
    /// The handle may be read through (opened with read access).
    readable: bool,
    /// The path the opened file has inside the container ([`resolved_path`]).
    path: String,
    wants_write: bool,
    read: Stream,
    write: Stream,
}

enum Open {
    File(Box<OpenFile>),
    Dir(Vec<DirEntry>),
}

/// The SFTP handler; one per session.
pub(crate) struct SftpHandler {
    read_only: bool,
    sink: EventSink,
    handles: HashMap<String, Open>,
    next_handle: u64,
    /// The login's home (the cwd the session started in), for `~`.
    home: String,
    done: Option<oneshot::Sender<()>>,
}

pub(crate) fn status_of(e: &std::io::Error) -> StatusReply {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

fn read_only_refusal() -> StatusReply {
    StatusCode::PermissionDenied.with_message("read-only: policy allows only reading")
}

pub(crate) fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// SHA-256 of the whole file and its length, read through `file`; `None`
/// when it cannot be read to the end.
fn digest_file(file: &File) -> Option<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) => return Some(hex::encode(h.finalize())),
            Ok(n) => {
                h.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// The digest a record carries for `stream` of `f`: the bytes as they
/// moved when they moved in file order from offset 0
/// (`sequential: true`); otherwise (a resumed or ranged read, an
/// out-of-order write) the whole file as left at close, read through the
/// handle or, for a write-only handle, a new read-only open of the same
/// file (`/proc/self/fd/N`). Only when the login cannot read the file at
/// all is it the bytes as they moved, in the order they moved.
fn digest_for(f: &OpenFile, stream: &Stream) -> (String, bool) {
    if stream.sequential {
        return (hex::encode(stream.hasher.clone().finalize()), true);
    }
    let whole = if f.readable {
        digest_file(&f.file)
    } else {
        File::open(format!("/proc/self/fd/{}", f.file.as_raw_fd()))
            .ok()
            .and_then(|r| digest_file(&r))
    };
    let digest = whole.unwrap_or_else(|| hex::encode(stream.hasher.clone().finalize()));
    (digest, false)
}

impl SftpHandler {
    pub(crate) fn new(read_only: bool, sink: EventSink, done: oneshot::Sender<()>) -> SftpHandler {
        let home = std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into());
        SftpHandler {
            read_only,
            sink,
            handles: HashMap::new(),
            next_handle: 0,
            home,
            done: Some(done),
        }
    }

    fn insert(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        self.next_handle += 1;
        let h = self.next_handle.to_string();
        self.handles.insert(h.clone(), open);
        Ok(h)
    }

    fn file(&mut self, handle: &str) -> Result<&mut OpenFile, StatusReply> {
        match self.handles.get_mut(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(StatusCode::Failure.with_message("bad handle")),
        }
    }

    fn writable(&self) -> Result<(), StatusReply> {
        if self.read_only {
            Err(read_only_refusal())
        } else {
            Ok(())
        }
    }

    fn report(&mut self, f: OpenFile, closed: bool) {
        let wrote = f.write.bytes > 0 || f.wants_write;
        if wrote {
            let (sha256, sequential) = digest_for(&f, &f.write);
            self.sink.emit(&TransferRecord {
                path: f.path.clone(),
                direction: Direction::Write,
                bytes: f.write.bytes,
                sha256,
                sequential,
                closed,
            });
        }
        if f.read.bytes > 0 || !wrote {
            let (sha256, sequential) = digest_for(&f, &f.read);
            self.sink.emit(&TransferRecord {
                path: f.path.clone(),
                direction: Direction::Read,
                bytes: f.read.bytes,
                sha256,
                sequential,
                closed,
            });
        }
    }
}

impl Drop for SftpHandler {
    fn drop(&mut self) {
        let open: Vec<Open> = self.handles.drain().map(|(_, v)| v).collect();
        for o in open {
            if let Open::File(f) = o {
                self.report(*f, false);
            }
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// OpenSSH's `realpath`: the canonical path when it exists; when only its
/// last component is missing, the canonical parent joined with that name
/// (so a client can `put` to a new name); otherwise the lookup's error
/// (a missing parent is refused, as OpenSSH's `sftp_realpath` does).
pub(crate) fn canonical_path(path: &str) -> std::io::Result<String> {
    let path = if path.is_empty() { "." } else { path };
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(p.to_string_lossy().into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let p = Path::new(path);
            let name = match p.file_name() {
                Some(n) if !path.ends_with('/') => n,
                _ => return Err(e),
            };
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let dir = std::fs::canonicalize(parent)?;
            if !dir.is_dir() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            Ok(dir.join(name).to_string_lossy().into_owned())
        }
        Err(e) => Err(e),
    }
}

impl Handler for SftpHandler {
    type Error = StatusReply;

    fn unimplemented(&self) -> StatusReply {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, StatusReply> {
        Ok(Version {
            version: russh_sftp::protocol::VERSION,
            extensions: extended::announced(),
        })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, StatusReply> {
        let write = pflags.intersects(
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        );
        if write {
            self.writable()?;
        }
        let mode = attrs.permissions.map(|p| p & 0o7777).unwrap_or(0o666);
        let mut o = OpenOptions::new();
        o.read(pflags.contains(OpenFlags::READ) || !write)
            .write(pflags.contains(OpenFlags::WRITE))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE))
            .mode(mode)
            .custom_flags(libc::O_NOCTTY);
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                o.create_new(true);
            } else {
                o.create(true);
            }
        }
        let file = o.open(&filename).map_err(|e| status_of(&e))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(StatusCode::Failure.with_message("is a directory"));
        }
        let handle = self.insert(Open::File(Box::new(OpenFile {
            path: resolved_path(&file, &filename),
            file,
            readable: pflags.contains(OpenFlags::READ) || !write,
            wants_write: write,
            read: Stream::new(),
            write: Stream::new(),
        })))?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, StatusReply> {
        match self.handles.remove(&handle) {
            Some(Open::File(f)) => self.report(*f, true),
            Some(Open::Dir(_)) => {}
            None => return Err(StatusCode::Failure.with_message("bad handle")),
        }
        Ok(ok(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, StatusReply> {
        let f = self.file(&handle)?;
        let mut buf = vec![0u8; len.min(MAX_READ_BYTES) as usize];
        let n = f
            .file
            .read_at(&mut buf, offset)
            .map_err(|e| status_of(&e))?;
        if n == 0 {
            return Err(StatusCode::Eof.into());
        }
        buf.truncate(n);
        f.read.add(offset, &buf);
        Ok(Data { id, data: buf })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, StatusReply> {
        self.writable()?;
        let f = self.file(&handle)?;
        f.file
            .write_all_at(&data, offset)
            .map_err(|e| status_of(&e))?;
        f.write.add(offset, &data);
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, StatusReply> {
        let m = std::fs::symlink_metadata(&path).map_err(|e| status_of(&e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&m),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, StatusReply> {
        let m = std::fs::metadata(&path).map_err(|e| status_of(&e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&m),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, StatusReply> {
        let f = self.file(&handle)?;
        let m = f.file.metadata().map_err(|e| status_of(&e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&m),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, StatusReply> {
        self.writable()?;
        attrs::apply_to_path(Path::new(&path), &attrs).map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, StatusReply> {
        self.writable()?;
        let f = self.file(&handle)?;
        attrs::apply_to_file(&f.file, &attrs).map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, StatusReply> {
        let mut entries = Vec::new();
        let users = attrs::IdNames::load("/etc/passwd");
        let groups = attrs::IdNames::load("/etc/group");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for e in std::fs::read_dir(&path).map_err(|e| status_of(&e))? {
            let e = e.map_err(|e| status_of(&e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            // Not following symlinks (lstat), as OpenSSH's readdir.
            let entry = match e.metadata() {
                Ok(m) => DirEntry {
                    longname: attrs::longname(&name, &m, &users, &groups, now),
                    attrs: attrs_of(&m),
                    filename: name,
                },
                Err(_) => DirEntry::new(name, FileAttributes::empty()),
            };
            entries.push(entry);
        }
        // Served from the end.
        entries.reverse();
        let handle = self.insert(Open::Dir(entries))?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, StatusReply> {
        let Some(Open::Dir(entries)) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("bad handle"));
        };
        if entries.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let take = entries.len().min(DIR_BATCH);
        let files = entries.split_off(entries.len() - take);
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, StatusReply> {
        self.writable()?;
        std::fs::remove_file(&filename).map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, StatusReply> {
        self.writable()?;
        let mode = attrs.permissions.map(|p| p & 0o7777).unwrap_or(0o777);
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(&path)
            .map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, StatusReply> {
        self.writable()?;
        std::fs::remove_dir(&path).map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, StatusReply> {
        let p = canonical_path(&path).map_err(|e| status_of(&e))?;
        Ok(Name {
            id,
            files: vec![DirEntry::dummy(p)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, StatusReply> {
        self.writable()?;
        // SFTP v3: renaming onto an existing file fails (atomically:
        // RENAME_NOREPLACE; posix-rename@openssh.com replaces).
        let r = nix::fcntl::renameat2(
            AT_FDCWD,
            oldpath.as_str(),
            AT_FDCWD,
            newpath.as_str(),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        );
        match r {
            Ok(()) => Ok(ok(id)),
            Err(nix::errno::Errno::EEXIST) => {
                Err(StatusCode::Failure.with_message("target exists"))
            }
            Err(nix::errno::Errno::EINVAL) if std::fs::symlink_metadata(&newpath).is_err() => {
                // A filesystem without RENAME_NOREPLACE.
                std::fs::rename(&oldpath, &newpath).map_err(|e| status_of(&e))?;
                Ok(ok(id))
            }
            Err(e) => Err(status_of(&std::io::Error::from(e))),
        }
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, StatusReply> {
        let t = std::fs::read_link(&path).map_err(|e| status_of(&e))?;
        Ok(Name {
            id,
            files: vec![DirEntry::dummy(t.to_string_lossy())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, StatusReply> {
        self.writable()?;
        // OpenSSH sends (target, link) in the fields the draft names
        // (linkpath, targetpath) and so does this server, as it announces
        // in its identification string (`crate::ssh::algorithms::server_id`:
        // draft-order clients such as asyncssh swap for "OpenSSH").
        std::os::unix::fs::symlink(&linkpath, &targetpath).map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, StatusReply> {
        self.extended_request(id, &request, data)
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
