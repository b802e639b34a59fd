//! The rcp protocol's two server roles, over `std::fs` in the session
//! process (see the module docs of [`super`]): the sink (`scp -t`, OpenSSH
//! `scp.c` `sink()`) and the source (`scp -f`, `source()`/`rsource()`).
//! Blocking I/O on the session's pipes: the process is single-threaded and
//! serves one client.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::record::{MAX_LINE_BYTES, Record, parse_record};
use super::{ScpCommand, ScpMode};
use crate::sftp::{Direction, EventSink, TransferRecord, resolved_path};

/// Deepest directory nesting copied with `-r` (deeper directories are
/// skipped with a warning; this also ends symlink loops on download).
pub const MAX_DEPTH: usize = 64;

/// Bytes moved per read.
const CHUNK: usize = 64 * 1024;

/// The mode bits sent and honoured (OpenSSH's `FILEMODEMASK`: set-id and
/// permission bits, no sticky bit).
const FILE_MODE_MASK: u32 = 0o6777;

/// The umask the session process serves with.
const UMASK: u32 = 0o022;

/// Why the protocol stopped.
#[derive(Debug)]
enum Stop {
    /// The client went away (EOF or an I/O error on the pipes).
    Lost,
    /// A fatal error, already sent to the client (or received from it).
    Fatal,
}

struct Conn<R, W: Write, F> {
    input: BufReader<R>,
    output: BufWriter<W>,
    report: F,
    /// Files or directories that failed (each told to the client with a
    /// `\x01` line): the exit status is 1 when there were any.
    errors: u32,
}

impl<R: Read, W: Write, F: FnMut(&TransferRecord)> Conn<R, W, F> {
    fn send(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.output.write_all(bytes).map_err(|_| Stop::Lost)
    }

    fn ack(&mut self) -> Result<(), Stop> {
        self.send(&[0])
    }

    /// OpenSSH `run_err()`: one `\x01scp: MESSAGE\n` line; the transfer
    /// goes on with the next file.
    fn warn(&mut self, message: &str) -> Result<(), Stop> {
        self.errors += 1;
        let line = format!("\x01scp: {}\n", one_line(message));
        self.send(line.as_bytes())
    }

    /// A `\x02scp: MESSAGE\n` line: the client stops.
    fn fatal(&mut self, message: &str) -> Stop {
        self.errors += 1;
        let line = format!("\x02scp: {}\n", one_line(message));
        let _ = self.send(line.as_bytes());
        let _ = self.output.flush();
        Stop::Fatal
    }

    /// Reads one record line (with its `\n`); `None` at a clean EOF.
    fn read_line(&mut self) -> Result<Option<Vec<u8>>, Stop> {
        self.output.flush().map_err(|_| Stop::Lost)?;
        let mut line = Vec::new();
        let n = (&mut self.input)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .map_err(|_| Stop::Lost)?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') && line.len() < MAX_LINE_BYTES {
            // EOF in the middle of a record.
            return Err(Stop::Lost);
        }
        Ok(Some(line))
    }

    /// OpenSSH `response()`: `true` for `\0`, `false` after a `\x01` line
    /// (the client could not handle that file), `Stop::Fatal` after `\x02`.
    fn response(&mut self) -> Result<bool, Stop> {
        self.output.flush().map_err(|_| Stop::Lost)?;
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b).map_err(|_| Stop::Lost)?;
        match b[0] {
            0 => Ok(true),
            1 | 2 => {
                let mut rest = Vec::new();
                (&mut self.input)
                    .take(MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut rest)
                    .map_err(|_| Stop::Lost)?;
                self.errors += 1;
                if b[0] == 1 {
                    Ok(false)
                } else {
                    Err(Stop::Fatal)
                }
            }
            _ => Err(self.fatal("protocol error: bad response")),
        }
    }
}

/// A message on one line (a path with a newline must not end the line).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], "?")
}

/// Serves `command` on `input`/`output` (the session's pipes), writing one
/// [`TransferRecord`] JSON line per file to `events`. Sets the umask to
/// `022`. Returns the exit status: 0 when every file went through, 1
/// otherwise (as OpenSSH's scp). Call only in a single-threaded process
/// that has dropped its privileges and entered the container.
pub fn serve(input: OwnedFd, output: OwnedFd, events: OwnedFd, command: &ScpCommand) -> i32 {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK as _));
    let mut sink = EventSink::new(File::from(events));
    serve_with(
        File::from(input),
        File::from(output),
        |r| sink.emit(r),
        command,
    )
}

/// [`serve`] over any byte streams, handing each file's record to
/// `report` (before the file's final status is sent). Paths are used as
/// given (relative ones against the cwd); the caller provides the
/// confinement (the container's mount namespace and the login's ids).
pub fn serve_with<R: Read, W: Write>(
    input: R,
    output: W,
    report: impl FnMut(&TransferRecord),
    command: &ScpCommand,
) -> i32 {
    let mut c = Conn {
        input: BufReader::with_capacity(CHUNK, input),
        output: BufWriter::with_capacity(CHUNK, output),
        report,
        errors: 0,
    };
    let r = match command.mode {
        ScpMode::Sink => sink(&mut c, command),
        ScpMode::Source => source(&mut c, command),
    };
    let flushed = c.output.flush().is_ok();
    match r {
        Ok(()) if flushed && c.errors == 0 => 0,
        _ => 1,
    }
}

/// A directory being received.
struct Level {
    path: PathBuf,
    times: Option<(i64, i64)>,
    mode: u32,
    set_mode: bool,
}

fn target_in(dir: &Path, is_dir: bool, name: &str) -> PathBuf {
    if is_dir {
        dir.join(name)
    } else {
        dir.to_path_buf()
    }
}

fn system_time(secs: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn set_times(file: &File, (mtime, atime): (i64, i64)) -> std::io::Result<()> {
    file.set_times(
        std::fs::FileTimes::new()
            .set_modified(system_time(mtime))
            .set_accessed(system_time(atime)),
    )
}

/// `scp -t`: receive files into `command.path`.
fn sink<R: Read, W: Write, F: FnMut(&TransferRecord)>(
    c: &mut Conn<R, W, F>,
    command: &ScpCommand,
) -> Result<(), Stop> {
    let target = PathBuf::from(&command.path);
    let target_is_dir = std::fs::metadata(&target).is_ok_and(|m| m.is_dir());
    if command.target_is_dir && !target_is_dir {
        return Err(c.fatal(&format!("{}: Not a directory", command.path)));
    }
    c.ack()?;
    let mut stack: Vec<Level> = Vec::new();
    let mut times = None;
    loop {
        let (cur, cur_is_dir) = match stack.last() {
            Some(l) => (l.path.clone(), true),
            None => (target.clone(), target_is_dir),
        };
        let Some(line) = c.read_line()? else {
            // A clean end only between top-level records.
            return if stack.is_empty() {
                Ok(())
            } else {
                Err(Stop::Lost)
            };
        };
        let record = match parse_record(&line) {
            Ok(r) => r,
            Err(e) => return Err(c.fatal(&format!("protocol error: {e}"))),
        };
        match record {
            Record::Warning(_) => c.errors += 1,
            Record::Fatal(_) => return Err(Stop::Fatal),
            Record::Times { mtime, atime } => {
                times = Some((mtime, atime));
                c.ack()?;
            }
            Record::End => {
                c.ack()?;
                let Some(level) = stack.pop() else {
                    return Ok(());
                };
                finish_dir(c, &level, command.preserve)?;
            }
            Record::Directory { mode, name } => {
                if !command.recursive {
                    return Err(c.fatal("protocol error: received directory without -r"));
                }
                let path = target_in(&cur, cur_is_dir, &name);
                let t = times.take();
                let shown = path.display().to_string();
                if stack.len() >= MAX_DEPTH {
                    c.warn(&format!(
                        "{shown}: directories nested deeper than {MAX_DEPTH}"
                    ))?;
                    continue;
                }
                let set_mode = match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => command.preserve,
                    Ok(_) => {
                        c.warn(&format!("{shown}: Not a directory"))?;
                        continue;
                    }
                    Err(_) => {
                        let made = std::fs::DirBuilder::new()
                            .mode((mode & FILE_MODE_MASK) | 0o700)
                            .create(&path);
                        if let Err(e) = made {
                            c.warn(&format!("{shown}: {e}"))?;
                            continue;
                        }
                        true
                    }
                };
                c.ack()?;
                stack.push(Level {
                    path,
                    times: t,
                    mode,
                    set_mode,
                });
            }
            Record::File { mode, size, name } => {
                let path = target_in(&cur, cur_is_dir, &name);
                let t = times.take();
                receive_file(c, command, &path, mode, size, t)?;
            }
        }
    }
}

/// A directory's `E`: its times (with `-p`) and mode.
fn finish_dir<R: Read, W: Write, F: FnMut(&TransferRecord)>(
    c: &mut Conn<R, W, F>,
    level: &Level,
    preserve: bool,
) -> Result<(), Stop> {
    let shown = level.path.display().to_string();
    if preserve && let Some(t) = level.times {
        let r = File::open(&level.path).and_then(|d| set_times(&d, t));
        if let Err(e) = r {
            c.warn(&format!("{shown}: set times: {e}"))?;
        }
    }
    if level.set_mode {
        let mode = if preserve {
            level.mode & FILE_MODE_MASK
        } else {
            level.mode & FILE_MODE_MASK & !UMASK
        };
        let r = std::fs::set_permissions(&level.path, std::fs::Permissions::from_mode(mode));
        if let Err(e) = r {
            c.warn(&format!("{shown}: set mode: {e}"))?;
        }
    }
    Ok(())
}

/// One `C` record: open, acknowledge, take exactly `size` bytes, digest
/// them, apply mode and times, report, and answer the client's status.
fn receive_file<R: Read, W: Write, F: FnMut(&TransferRecord)>(
    c: &mut Conn<R, W, F>,
    command: &ScpCommand,
    path: &Path,
    mode: u32,
    size: u64,
    times: Option<(i64, i64)>,
) -> Result<(), Stop> {
    let shown = path.display().to_string();
    let mode = mode & FILE_MODE_MASK;
    let existed = std::fs::metadata(path).is_ok();
    // O_NONBLOCK: a FIFO planted at the path must not hang the session.
    let opened = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(mode | 0o200)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| match f.metadata() {
            Ok(m) if m.is_file() => Ok(f),
            Ok(_) => Err(std::io::Error::other("not a regular file")),
            Err(e) => Err(e),
        });
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => {
            // The client sends no data after a refusal (scp.c source()).
            return c.warn(&format!("{shown}: {e}"));
        }
    };
    // The path the file really has in the container (symlinks resolved).
    let real = resolved_path(&file, &command_path(path));
    c.ack()?;
    c.output.flush().map_err(|_| Stop::Lost)?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut failed: Option<std::io::Error> = None;
    let mut buf = vec![0u8; CHUNK];
    while received < size {
        let want = usize::try_from(size - received).map_or(CHUNK, |r| r.min(CHUNK));
        let n = match c.input.read(&mut buf[..want]) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            // The client went away mid-file: report what arrived.
            let record = TransferRecord {
                path: real,
                direction: Direction::Write,
                bytes: received,
                sha256: hex::encode(hasher.finalize()),
                sequential: true,
                closed: false,
            };
            (c.report)(&record);
            return Err(Stop::Lost);
        }
        hasher.update(&buf[..n]);
        received += n as u64;
        // Keep reading after a write error, to stay in step (scp.c).
        if failed.is_none()
            && let Err(e) = file.write_all(&buf[..n])
        {
            failed = Some(e);
        }
    }
    if failed.is_none()
        && let Err(e) = file.set_len(size)
    {
        failed = Some(e);
    }
    let want_mode = if command.preserve {
        Some(mode)
    } else if !existed && mode | 0o200 != mode {
        Some(mode & !UMASK)
    } else {
        None
    };
    let mut late = Vec::new();
    if let Some(m) = want_mode
        && let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(m))
    {
        late.push(format!("{shown}: set mode: {e}"));
    }
    if command.preserve
        && let Some(t) = times
        && failed.is_none()
        && let Err(e) = set_times(&file, t)
    {
        late.push(format!("{shown}: set times: {e}"));
    }
    drop(file);
    // The client's status for its side of the data (scp.c source()).
    let client_ok = c.response()?;
    let record = TransferRecord {
        path: real,
        direction: Direction::Write,
        bytes: received,
        sha256: hex::encode(hasher.finalize()),
        sequential: true,
        closed: client_ok,
    };
    (c.report)(&record);
    if let Some(e) = failed {
        return c.warn(&format!("{shown}: {e}"));
    }
    for m in late {
        c.warn(&m)?;
    }
    c.ack()
}

fn command_path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `scp -f`: send `command.path`.
fn source<R: Read, W: Write, F: FnMut(&TransferRecord)>(
    c: &mut Conn<R, W, F>,
    command: &ScpCommand,
) -> Result<(), Stop> {
    // The client's sink starts with a `\0` (scp.c sink()).
    c.response()?;
    let mut path = command.path.as_str();
    while path.len() > 1 && path.ends_with('/') {
        path = &path[..path.len() - 1];
    }
    send_path(c, command, Path::new(path), 0)
}

/// The name a path is sent under: its last component (of the resolved
/// path for `.`, `..` or a path ending in them).
fn send_name(path: &Path) -> Option<String> {
    let name = match path.file_name() {
        Some(n) => n.to_os_string(),
        None => std::fs::canonicalize(path)
            .ok()?
            .file_name()?
            .to_os_string(),
    };
    let name = name.into_string().ok()?;
    (name != "." && name != ".." && !name.contains('\n')).then_some(name)
}

fn send_path<R: Read, W: Write, F: FnMut(&TransferRecord)>(
    c: &mut Conn<R, W, F>,
    command: &ScpCommand,
    path: &Path,
    depth: usize,
) -> Result<(), Stop> {
    let shown = path.display().to_string();
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| f.metadata().map(|m| (f, m)));
    let (file, meta) = match opened {
        Ok(pair) => pair,
        Err(e) => return c.warn(&format!("{shown}: {e}")),
    };
    let Some(name) = send_name(path) else {
        return c.warn(&format!("{shown}: cannot send under this name"));
    };
    if meta.is_dir() {
        if command.recursive {
            drop(file);
            return send_dir(c, command, path, &name, &meta, depth);
        }
        return c.warn(&format!("{shown}: not a regular file"));
    }
    if !meta.is_file() {
        return c.warn(&format!("{shown}: not a regular file"));
    }
    if command.preserve {
        let t = format!("T{} 0 {} 0\n", meta.mtime().max(0), meta.atime().max(0));
        c.send(t.as_bytes())?;
        if !c.response()? {
            return Ok(());
        }
    }
    let size = meta.len();
    let header = format!("C{:04o} {size} {name}\n", meta.mode() & FILE_MODE_MASK);
    c.send(header.as_bytes())?;
    if !c.response()? {
        return Ok(());
    }
    let real = resolved_path(&file, &command_path(path));
    let mut file = file;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut failed: Option<String> = None;
    let mut buf = vec![0u8; CHUNK];
    while sent < size {
        let want = usize::try_from(size - sent).map_or(CHUNK, |r| r.min(CHUNK));
        let n = if failed.is_none() {
            match file.read(&mut buf[..want]) {
                Ok(0) => {
                    failed = Some("file shrank while it was sent".into());
                    0
                }
                Ok(n) => n,
                Err(e) => {
                    failed = Some(e.to_string());
                    0
                }
            }
        } else {
            0
        };
        // After a read error, pad with zeros to stay in step (scp.c).
        let chunk = if n == 0 {
            buf[..want].fill(0);
            want
        } else {
            n
        };
        c.send(&buf[..chunk])?;
        hasher.update(&buf[..chunk]);
        sent += chunk as u64;
    }
    let record = TransferRecord {
        path: real,
        direction: Direction::Read,
        bytes: sent,
        sha256: hex::encode(hasher.finalize()),
        sequential: failed.is_none(),
        closed: true,
    };
    (c.report)(&record);
    match failed {
        None => c.ack()?,
        Some(e) => c.warn(&format!("{shown}: {e}"))?,
    }
    c.response()?;
    Ok(())
}

fn send_dir<R: Read, W: Write, F: FnMut(&TransferRecord)>(
    c: &mut Conn<R, W, F>,
    command: &ScpCommand,
    path: &Path,
    name: &str,
    meta: &std::fs::Metadata,
    depth: usize,
) -> Result<(), Stop> {
    let shown = path.display().to_string();
    if depth >= MAX_DEPTH {
        return c.warn(&format!(
            "{shown}: directories nested deeper than {MAX_DEPTH}"
        ));
    }
    let mut entries: Vec<String> = match std::fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) => return c.warn(&format!("{shown}: {e}")),
    };
    entries.sort();
    if command.preserve {
        let t = format!("T{} 0 {} 0\n", meta.mtime().max(0), meta.atime().max(0));
        c.send(t.as_bytes())?;
        if !c.response()? {
            return Ok(());
        }
    }
    let header = format!("D{:04o} 0 {name}\n", meta.mode() & FILE_MODE_MASK);
    c.send(header.as_bytes())?;
    if !c.response()? {
        return Ok(());
    }
    for entry in entries {
        if entry.contains('\n') {
            c.warn(&format!("{shown}/?: skipping, the name holds a newline"))?;
            continue;
        }
        let child = path.join(&entry);
        // A symlink to a directory inside the tree is not followed: it
        // could loop (OpenSSH's scp follows it; the depth limit would end
        // that, after exponentially many paths).
        let is_link = std::fs::symlink_metadata(&child).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && std::fs::metadata(&child).is_ok_and(|m| m.is_dir()) {
            c.warn(&format!(
                "{}: symbolic link to a directory, not followed",
                child.display()
            ))?;
            continue;
        }
        send_path(c, command, &child, depth + 1)?;
    }
    c.send(b"E\n")?;
    c.response()?;
    Ok(())
}
