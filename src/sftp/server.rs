//! The russh-sftp [`Handler`] over `std::fs`, run by the session process
//! inside the container (see the module docs of [`super`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use russh_sftp::protocol::{
    Attrs, Data, File as DirEntry, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode,
    Version,
};
use russh_sftp::server::{Handler, StatusReply};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::{Direction, EventSink, TransferRecord, normalise};

/// Largest client packet accepted (a 256 KiB write plus headers).
pub(crate) const MAX_PACKET_BYTES: u32 = 256 * 1024 + 1024;

/// Largest read answered in one packet.
const MAX_READ_BYTES: u32 = 255 * 1024;

/// Most handles open at once.
const MAX_HANDLES: usize = 256;

/// Directory entries per READDIR answer.
const DIR_BATCH: usize = 128;

/// Digest of one direction of one handle.
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
        if self.sequential {
            self.hasher.update(data);
        }
        self.bytes += data.len() as u64;
        self.next = offset + data.len() as u64;
    }
}

struct OpenFile {
    file: File,
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
    done: Option<oneshot::Sender<()>>,
}

fn status_of(e: &std::io::Error) -> StatusReply {
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

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn attrs_of(m: &std::fs::Metadata) -> FileAttributes {
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

fn apply_attrs(
    path: Option<&Path>,
    file: Option<&File>,
    a: &FileAttributes,
) -> std::io::Result<()> {
    let open;
    let file = match (file, path) {
        (Some(f), _) => f,
        (None, Some(p)) => {
            if let Some(mode) = a.permissions {
                // Without opening (a directory or a file we cannot read).
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if a.size.is_none() && a.atime.is_none() && a.mtime.is_none() {
                return Ok(());
            }
            open = OpenOptions::new()
                .write(a.size.is_some())
                .read(a.size.is_none())
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(p)?;
            &open
        }
        (None, None) => return Ok(()),
    };
    if path.is_none()
        && let Some(mode) = a.permissions
    {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let Some(size) = a.size {
        file.set_len(size)?;
    }
    if let (Some(at), Some(mt)) = (a.atime, a.mtime) {
        let t = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s));
        file.set_times(
            std::fs::FileTimes::new()
                .set_accessed(t(at))
                .set_modified(t(mt)),
        )?;
    }
    Ok(())
}

/// SHA-256 of the whole file, read through `file`.
fn digest_file(file: &File) -> (String, u64) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                offset += n as u64;
            }
        }
    }
    (hex::encode(h.finalize()), offset)
}

impl SftpHandler {
    pub(crate) fn new(read_only: bool, sink: EventSink, done: oneshot::Sender<()>) -> SftpHandler {
        SftpHandler {
            read_only,
            sink,
            handles: HashMap::new(),
            next_handle: 0,
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
            let (sha256, sequential) = if f.write.sequential {
                (hex::encode(f.write.hasher.clone().finalize()), true)
            } else {
                (digest_file(&f.file).0, false)
            };
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
            let sha256 = hex::encode(f.read.hasher.finalize());
            self.sink.emit(&TransferRecord {
                path: f.path,
                direction: Direction::Read,
                bytes: f.read.bytes,
                sha256,
                sequential: f.read.sequential,
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
        Ok(Version::new())
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
            file,
            path: normalise(&filename),
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
        apply_attrs(Some(Path::new(&path)), None, &attrs).map_err(|e| status_of(&e))?;
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
        apply_attrs(None, Some(&f.file), &attrs).map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, StatusReply> {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&path).map_err(|e| status_of(&e))? {
            let e = e.map_err(|e| status_of(&e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let attrs = e
                .metadata()
                .map(|m| attrs_of(&m))
                .unwrap_or_else(|_| FileAttributes::empty());
            entries.push(DirEntry::new(name, attrs));
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
        let p = std::fs::canonicalize(if path.is_empty() { "." } else { &path })
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| normalise(&path));
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
        // SFTP v3: renaming onto an existing file fails.
        if std::fs::symlink_metadata(&newpath).is_ok() {
            return Err(StatusCode::Failure.with_message("target exists"));
        }
        std::fs::rename(&oldpath, &newpath).map_err(|e| status_of(&e))?;
        Ok(ok(id))
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
        // (linkpath, targetpath); follow OpenSSH, as every client does.
        std::os::unix::fs::symlink(&linkpath, &targetpath).map_err(|e| status_of(&e))?;
        Ok(ok(id))
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
