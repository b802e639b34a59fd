//! Session transcripts in asciicast v2
//! (<https://docs.asciinema.org/manual/asciicast/v2/>): the writer used by
//! live sessions, the reader and the player, the bounds on what recordings
//! may take, and their upload to S3-compatible object storage.
//!
//! Knows nothing of SSH or containers: it takes timed byte events. It must
//! never drop an event silently, never delete a local recording before its
//! uploaded copy is verified, and never let recordings fill the disk that
//! holds the audit log.
//!
//! The file is newline-delimited JSON: a header object, then
//! `[time, code, data]` arrays where `time` is seconds since the start
//! (float), `code` is `o` (output), `i` (input), `r` (resize, data
//! `"COLSxROWS"`) or `m` (marker, data a label: players show markers as
//! chapter marks and can jump to them). Output is decoded as UTF-8
//! incrementally per stream, so a multibyte sequence split across reads is
//! never split across events (§4.4 of the research brief).
//!
//! NUL bytes are left out of output (`o`) events: ECMA-48 §8.3.88 defines
//! NUL as media-fill that "may be inserted into, or removed from, a data
//! stream without affecting the information content", terminals ignore it,
//! and JSON can only write it as the six bytes `\u0000`, so `cat
//! /dev/zero` would cost six bytes of recording per byte shown. How many
//! output bytes a session printed, NULs included, is counted
//! ([`Digest256::output_bytes`]) and goes in its `session_end` audit event.
//! Input (`i`) events keep NUL (Ctrl-@ is a keystroke).
//!
//! The session writes event lines straight into a batch it shares with a
//! writer task, which swaps it for an empty buffer and writes and hashes it
//! on a blocking thread: no copy and no hand-off per read. Output of one
//! stream arriving within 10 ms of its event's start joins that event
//! while it is in memory (a PTY gives a few hundred bytes per read).
//!
//! Events are batched in memory and written at least every
//! `flush_interval` (default 1 s) and at the end, so a crash of the gateway
//! loses at most that much. The SHA-256 of the file is computed as it is
//! written.
//!
//! # Layout
//!
//! - `escape`: JSON string escaping, byte for byte as serde_json writes it.
//! - `batch`: the in-memory batch of event lines shared by a recorder and
//!   its writer task (joining output, markers, the size limit).
//! - `writer`: [`Recorder`] (the session's end) and the writer task.
//! - `marker`: [`Marker`], the labels of `m` events.
//! - `reader`: parsing, digests, transcript and marker lines.
//! - `follow`: [`Follower`] (live watching) and [`play`].
//! - `spool`: [`Recordings`], the node's recordings directory: where a
//!   recording is created, whether a new one may start (free space, spool
//!   bound), and opening one for review wherever it is.
//! - `archive`, `manifest`, `upload`, `upload_event`: object storage
//!   (issue 16): the bucket and its keys, the signed write-once manifest,
//!   the upload queue with retries that resumes after a restart, and what
//!   it reports to the audit log.

mod archive;
mod batch;
mod escape;
mod follow;
mod manifest;
mod marker;
mod reader;
mod spool;
mod upload;
mod upload_event;
mod utf8;
mod writer;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use archive::{Archive, Bucket, ObjectLocation};
pub use follow::{Follower, play, play_from};
pub use manifest::{MANIFEST_NAMESPACE, Manifest};
pub use marker::{Marker, TransferDirection};
pub use reader::{digest_bytes, digest_file, markers, parse, read, search_lines, transcript_lines};
pub use spool::{OpenedRecording, RecordingSource, Recordings, StartRefused, open};
pub use upload::UploadQueue;
pub use upload_event::{ManifestSigner, RecordingAudit, UploadEvent};
pub use utf8::Utf8Decoder;
pub use writer::{InputTap, MarkerTap, Recorder, RecorderLimits};

/// True only in the recording-off binary of `benches/vs_openssh.sh`
/// (`cargo build --features bench-no-recording`): such a build writes each
/// recording's header and no events, so the benchmark can measure what
/// recording costs. A compile-time switch, so no configuration or
/// environment can turn recording off in a normal build.
pub const BENCH_NO_RECORDING: bool = cfg!(feature = "bench-no-recording");

/// A failed recording step.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file could not be created.
    #[error("cannot create recording {path}: {source}")]
    Create {
        /// The recording's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing or syncing failed.
    #[error("cannot write recording: {0}")]
    Write(#[source] std::io::Error),
    /// The writer task is gone: it failed earlier with this error.
    #[error("the recording writer stopped: {0}")]
    WriterGone(String),
    /// The recording reached `recording.max_bytes`: nothing more is
    /// recorded for this session (issue 13 point 8).
    #[error("the recording reached its limit of {max_bytes} bytes")]
    LimitReached {
        /// The limit, in bytes.
        max_bytes: u64,
    },
    /// The filesystem holding the recording has less free space than the
    /// reserve kept for the audit log and the database.
    #[error(
        "the recordings filesystem has {free_bytes} bytes free, under the reserve of {reserve_bytes}"
    )]
    DiskReserve {
        /// Free bytes (for unprivileged users) when it was checked.
        free_bytes: u64,
        /// The reserve that must stay free, in bytes.
        reserve_bytes: u64,
    },
    /// Reading a recording failed.
    #[error("cannot read recording {path}: {source}")]
    Read {
        /// The recording's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the recording is not asciicast v2.
    #[error("recording line {line}: {message}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// `recording.store` could not be turned into an object store client.
    #[error("recording.store: {0}")]
    StoreConfig(String),
    /// An object store request failed.
    #[error("object store: cannot {step} {key}: {source}")]
    Object {
        /// What was being done (`upload a part of`, `read`, ...).
        step: &'static str,
        /// The object's key.
        key: Box<str>,
        /// object_store's error (boxed: this enum stays small on the
        /// recorder's hot path).
        #[source]
        source: Box<object_store::Error>,
    },
    /// A manifest or the object it describes does not check out: "manifest
    /// of session ID: what is wrong" ([`RecordingError::manifest`]).
    #[error("{0}")]
    Manifest(String),
    /// The audit log could not take an upload event (the step it records
    /// does not go ahead).
    #[error("cannot write the upload's audit event: {0}")]
    Audit(String),
    /// The database holding upload state failed.
    #[error("recording upload state: {0}")]
    Store(#[source] Box<crate::store::StoreError>),
    /// The recording is neither on local disk nor in the object store.
    #[error("the recording of session {0} is neither on disk nor in the object store")]
    NotFound(String),
}

impl From<crate::store::StoreError> for RecordingError {
    fn from(e: crate::store::StoreError) -> Self {
        RecordingError::Store(Box::new(e))
    }
}

impl RecordingError {
    /// [`RecordingError::Manifest`] about session `session_id`.
    pub fn manifest(session_id: &str, message: impl std::fmt::Display) -> RecordingError {
        RecordingError::Manifest(format!("manifest of session {session_id}: {message}"))
    }

    /// A sentence for the user whose session ends because of this error
    /// (no paths, no internals), without a final period.
    pub fn user_message(&self) -> String {
        match self {
            RecordingError::LimitReached { max_bytes } => format!(
                "the session recording reached its limit of {}",
                human_bytes(*max_bytes)
            ),
            RecordingError::DiskReserve { .. } => {
                "the gateway is running out of space for session recordings".to_string()
            }
            _ => "the session recording failed".to_string(),
        }
    }
}

/// `n` bytes for people: `1 GiB`, `512 MiB`, `300 KiB`, `17 bytes`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size {
            let whole = n / size;
            let tenths = (n % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

/// Session facts put in the header under the `portcullis` key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionMetadata {
    /// Session id.
    pub session_id: String,
    /// Principal subject.
    pub principal: String,
    /// Target container.
    pub container: String,
    /// Login inside the container.
    pub login: String,
    /// Command, for exec sessions.
    pub command: Option<String>,
}

/// The asciicast v2 header (first line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// Always 2.
    pub version: u32,
    /// Terminal columns.
    pub width: u32,
    /// Terminal rows.
    pub height: u32,
    /// Start, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// The command run, for exec sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A human title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `TERM` (and `SHELL` when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// Portcullis session metadata (players ignore unknown keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portcullis: Option<SessionMetadata>,
}

/// One event line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the start.
    pub time: f64,
    /// `o`, `i`, `r`, `m` or another code (kept, players ignore unknown
    /// codes).
    pub code: String,
    /// The event's data.
    pub data: String,
}

/// Size and SHA-256 of a finished recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest256 {
    /// File size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// Output bytes the session printed (all [`Recorder::output`] calls,
    /// NULs included); 0 when digesting a file found on disk.
    pub output_bytes: u64,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn limits_are_told_in_human_units() {
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(
            RecordingError::LimitReached { max_bytes: 1 << 30 }.user_message(),
            "the session recording reached its limit of 1 GiB"
        );
    }
}
