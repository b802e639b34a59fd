//! The SFTP server that runs *inside* a container, as the login (issue 5).
//!
//! The attach helper's session process calls [`serve`] instead of exec'ing
//! a shell ([`crate::attach::spawn_sftp`]): it has joined the container's
//! namespaces and cgroups and dropped to the login, so every path and
//! symlink resolves in the container's mount namespace (its `/` is the
//! container's root: `..` and absolute symlinks cannot leave it), files
//! are created by the login's ids with its umask, and the kernel checks
//! every access with the login's credentials. The protocol is russh-sftp's
//! (SFTP v3); the handler ([`server`]) is plain `std::fs` on a
//! current-thread tokio runtime started after the privilege drop.
//!
//! Each file handle, when closed (or when the session ends), is reported as
//! one JSON line ([`TransferRecord`]) on the events fd (the process's
//! stderr); the gateway turns the lines into audit events. The database
//! never enters the container.

mod attrs;
mod server;

use std::io::Write;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

/// Longest accepted events line, in bytes (paths are bounded by the kernel
/// at 4096; the rest is small).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// Direction of a file transfer, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Bytes read from the container (download).
    Read,
    /// Bytes written into the container (upload).
    Write,
}

impl Direction {
    /// `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }
}

/// One file handle's transfer, as reported by the in-container server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// The path as opened (relative paths are relative to the login's home).
    pub path: String,
    /// Read or write.
    pub direction: Direction,
    /// Bytes transferred in that direction.
    pub bytes: u64,
    /// SHA-256 (lowercase hex). When `sequential`, of the bytes
    /// transferred (in file order from offset 0). Otherwise (a resumed or
    /// ranged read, an out-of-order or overlapping write) of the whole file
    /// as left when the handle closed; only when the login cannot read the
    /// file is it of the bytes transferred in the order they moved. Never
    /// the digest of nothing when bytes moved.
    pub sha256: String,
    /// True when the bytes came in file order from offset 0 without gaps,
    /// so `sha256` is exactly the digest of what crossed the wire.
    pub sequential: bool,
    /// False when the session ended with the handle still open.
    pub closed: bool,
}

impl TransferRecord {
    /// Parses one events line; `None` for anything malformed or too long
    /// (the line comes from inside the container: untrusted).
    pub fn parse(line: &[u8]) -> Option<TransferRecord> {
        if line.len() > MAX_RECORD_BYTES {
            return None;
        }
        let r: TransferRecord = serde_json::from_slice(line).ok()?;
        let hex_ok = r.sha256.len() == 64 && r.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        (hex_ok && r.path.len() <= 4096).then_some(r)
    }
}

/// Writes [`TransferRecord`]s as JSON lines.
pub(crate) struct EventSink {
    out: std::fs::File,
}

impl EventSink {
    /// A sink writing to `out` (the events fd).
    pub(crate) fn new(out: std::fs::File) -> EventSink {
        EventSink { out }
    }

    /// Writes one record line; a failure is dropped (see the body).
    pub(crate) fn emit(&mut self, record: &TransferRecord) {
        if let Ok(mut line) = serde_json::to_vec(record) {
            line.push(b'\n');
            // Nobody to tell if this fails: the gateway then sees no record
            // and audits the session's end without it.
            let _ = self.out.write_all(&line);
        }
    }
}

/// The path `file` has inside the container: the kernel's name of the
/// opened file (`/proc/self/fd/N`, resolved through every symlink, in the
/// process's own mount namespace and root), so a symlink `~/x ->
/// /etc/passwd` is reported as `/etc/passwd`. Falls back to `asked` made
/// absolute lexically ([`normalise`]) when `/proc` cannot say (not
/// mounted, or the file was already unlinked).
pub(crate) fn resolved_path(file: &std::fs::File, asked: &str) -> String {
    use std::os::fd::AsRawFd;
    match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(p) => {
            let p = p.to_string_lossy().into_owned();
            if p.starts_with('/') && !p.ends_with(" (deleted)") {
                p
            } else {
                normalise(asked)
            }
        }
        Err(_) => normalise(asked),
    }
}

/// `path` made absolute against the cwd and normalised lexically (`.`,
/// `..`; `..` at the root stays at the root, as the kernel does).
pub(crate) fn normalise(path: &str) -> String {
    let base = std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("/"));
    let joined = if path.is_empty() {
        base
    } else {
        base.join(path)
    };
    let mut out = std::path::PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

/// Serves SFTP on `input`/`output` (pipes) until the client goes away,
/// writing one [`TransferRecord`] line per file handle to `events`;
/// `read_only` refuses every change. Returns the process exit code (0, or
/// 1 when the runtime or the pipes could not be set up). Call only in a
/// single-threaded process that has already dropped its privileges.
pub fn serve(input: OwnedFd, output: OwnedFd, events: OwnedFd, read_only: bool) -> i32 {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    else {
        return 1;
    };
    let sink = EventSink {
        out: std::fs::File::from(events),
    };
    rt.block_on(async move {
        let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(input) else {
            return 1;
        };
        let Ok(tx) = tokio::net::unix::pipe::Sender::from_owned_fd(output) else {
            return 1;
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let handler = server::SftpHandler::new(read_only, sink, done_tx);
        let config = russh_sftp::server::Config {
            max_client_packet_len: server::MAX_PACKET_BYTES,
        };
        russh_sftp::server::run_with_config(tokio::io::join(rx, tx), handler, config).await;
        // The server task drops the handler (which flushes open handles)
        // when the stream ends.
        let _ = done_rx.await;
        0
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn records_parse_and_reject_garbage() {
        let r = TransferRecord {
            path: "/tmp/x".into(),
            direction: Direction::Write,
            bytes: 3,
            sha256: "a".repeat(64),
            sequential: true,
            closed: true,
        };
        let line = serde_json::to_vec(&r).unwrap();
        assert_eq!(TransferRecord::parse(&line), Some(r));
        assert!(TransferRecord::parse(b"not json").is_none());
        let bad = br#"{"path":"x","direction":"read","bytes":1,"sha256":"zz","sequential":true,"closed":true}"#;
        assert!(TransferRecord::parse(bad).is_none());
    }
}
