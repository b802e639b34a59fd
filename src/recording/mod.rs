//! Session transcripts in asciicast v2
//! (<https://docs.asciinema.org/manual/asciicast/v2/>): the writer used by
//! live sessions, the reader and the player.
//!
//! Knows nothing of SSH or containers: it takes timed byte events. The file
//! is newline-delimited JSON: a header object, then `[time, code, data]`
//! arrays where `time` is seconds since the start (float), `code` is `o`
//! (output), `i` (input) or `r` (resize, data `"COLSxROWS"`). Output is
//! decoded as UTF-8 incrementally per stream, so a multibyte sequence split
//! across reads is never split across events (§4.4 of the research brief).
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

mod utf8;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write as _;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use utf8::Utf8Decoder;

/// Pending bytes that wake the writer before its next tick, in bytes.
const WRITE_AT_BYTES: usize = 256 * 1024;

/// Pending bytes past which the session waits for the writer
/// (back-pressure: events are never dropped), in bytes.
const MAX_PENDING_BYTES: usize = 1024 * 1024;

/// Capacity a session's batch buffer keeps between writes; a larger one
/// (after a burst of output) is given back so idle sessions stay small.
const KEEP_BATCH_BYTES: usize = 16 * 1024;

/// Output of one stream that arrives within this many seconds of its
/// event's start joins that event, while the event is still in memory:
/// a PTY gives a few hundred bytes per read, and one event per read would
/// cost more than the bytes. Replay shows them at most this much early.
const COALESCE_SECONDS: f64 = 0.010;

/// Set only when building the recording-off binary of
/// `benches/vs_openssh.sh` (`PORTCULLIS_BENCH_NO_RECORDING=1 cargo build`):
/// such a build writes each recording's header and no events, so the
/// benchmark can measure what recording costs. A compile-time switch, so no
/// configuration or environment can turn recording off in a normal build.
pub const BENCH_NO_RECORDING: bool = option_env!("PORTCULLIS_BENCH_NO_RECORDING").is_some();

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
    /// `o`, `i`, `r` or another code (kept, players ignore unknown codes).
    pub code: String,
    /// The event's data.
    pub data: String,
}

/// What the recorder tells the writer task besides "bytes are pending".
enum Command {
    Finish(tokio::sync::oneshot::Sender<Result<Digest256, RecordingError>>),
}

/// The batch shared by a session's [`Recorder`] (which writes events
/// straight into it) and its writer task (which swaps it for an empty one
/// and writes it out): no copy and no hand-off per event.
struct Shared {
    pending: std::sync::Mutex<Pending>,
    /// Wakes the writer: the batch passed [`WRITE_AT_BYTES`].
    wake_writer: tokio::sync::Notify,
    /// Wakes a recorder waiting for room, or to learn the writer failed.
    room: tokio::sync::Notify,
}

/// Event lines not yet written.
#[derive(Default)]
struct Pending {
    batch: Vec<u8>,
    /// The last event of `batch` still takes data (its closing `"]` and
    /// newline are not written yet): its code and time in seconds.
    open: Option<(u8, f64)>,
    /// The I/O error that stopped the writer.
    failed: Option<String>,
}

impl Pending {
    /// Ends the open event, if any, so `batch` holds whole lines.
    fn close_event(&mut self) {
        if self.open.take().is_some() {
            self.batch.extend_from_slice(b"\"]\n");
        }
    }
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

/// The writing end of one session's recording. Dropping it without
/// [`Recorder::finish`] still writes what is pending.
pub struct Recorder {
    shared: std::sync::Arc<Shared>,
    start: Instant,
    control: mpsc::Sender<Command>,
    output: Utf8Decoder,
    input: Utf8Decoder,
    record_input: bool,
    path: PathBuf,
    output_bytes: u64,
}

impl Recorder {
    /// Creates the file at `path` (mode 0600, must not exist), writes the
    /// header and starts the writer task.
    ///
    /// # Errors
    /// [`RecordingError::Create`] or [`RecordingError::Write`].
    pub async fn create(
        path: &Path,
        header: &Header,
        record_input: bool,
        flush_interval: Duration,
    ) -> Result<Recorder, RecordingError> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .await
            .map_err(|source| RecordingError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        let mut line = serde_json::to_vec(header).map_err(|e| RecordingError::Write(e.into()))?;
        line.push(b'\n');
        let shared = std::sync::Arc::new(Shared {
            pending: std::sync::Mutex::new(Pending {
                batch: line,
                ..Pending::default()
            }),
            wake_writer: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        });
        let mut writer = Writer {
            shared: shared.clone(),
            sink: Some(Sink {
                file: file.into_std().await,
                hasher: Sha256::new(),
                bytes: 0,
            }),
            spare: Vec::new(),
        };
        writer.write_pending().await?;
        let (control, rx) = mpsc::channel(1);
        tokio::spawn(writer.run(rx, flush_interval));
        Ok(Recorder {
            shared,
            start: Instant::now(),
            control,
            output: Utf8Decoder::default(),
            input: Utf8Decoder::default(),
            record_input,
            path: path.to_path_buf(),
            output_bytes: 0,
        })
    }

    /// The recording's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when [`Recorder::input`] records anything: callers may skip
    /// handing it input otherwise.
    pub fn records_input(&self) -> bool {
        self.record_input && !BENCH_NO_RECORDING
    }

    /// Records output bytes (`o`), NULs left out (module docs). Output
    /// within [`COALESCE_SECONDS`] of the last output event joins it.
    ///
    /// # Errors
    /// [`RecordingError::WriterGone`] when the writer failed (it names the
    /// I/O error, e.g. no space left on device).
    pub async fn output(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.output_bytes += bytes.len() as u64;
        if BENCH_NO_RECORDING {
            return Ok(());
        }
        self.wait_for_room().await?;
        let time = self.now();
        let mut pending = lock(&self.shared)?;
        let wrote = append_text(&mut pending, b'o', time, |batch| {
            self.output
                .decode_into(bytes, |text| escape_json(batch, text, true));
        });
        self.after_append(pending, wrote)
    }

    /// Records input bytes (`i`) when input recording is on; else nothing.
    ///
    /// # Errors
    /// [`RecordingError::WriterGone`] when the writer failed.
    pub async fn input(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        if !self.record_input || BENCH_NO_RECORDING {
            return Ok(());
        }
        self.wait_for_room().await?;
        let time = self.now();
        let mut pending = lock(&self.shared)?;
        let wrote = append_text(&mut pending, b'i', time, |batch| {
            self.input
                .decode_into(bytes, |text| escape_json(batch, text, false));
        });
        self.after_append(pending, wrote)
    }

    /// Records a terminal resize (`r`, data `COLSxROWS`), as an event of
    /// its own.
    ///
    /// # Errors
    /// [`RecordingError::WriterGone`] when the writer failed.
    pub async fn resize(&mut self, cols: u32, rows: u32) -> Result<(), RecordingError> {
        self.wait_for_room().await?;
        let time = self.now();
        let mut pending = lock(&self.shared)?;
        let wrote = append_text(&mut pending, b'r', time, |batch| {
            batch.extend_from_slice(format!("{cols}x{rows}").as_bytes());
        });
        pending.close_event();
        self.after_append(pending, wrote)
    }

    /// Seconds since the start, rounded to microseconds as asciinema does.
    fn now(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e6
    }

    /// Waits while the batch is over [`MAX_PENDING_BYTES`] (the writer is
    /// behind), or fails when the writer stopped.
    async fn wait_for_room(&self) -> Result<(), RecordingError> {
        loop {
            // Armed before the check: a wake-up in between is kept.
            let room = self.shared.room.notified();
            {
                let pending = lock(&self.shared)?;
                if let Some(reason) = &pending.failed {
                    return Err(RecordingError::WriterGone(reason.clone()));
                }
                if pending.batch.len() < MAX_PENDING_BYTES {
                    return Ok(());
                }
            }
            room.await;
        }
    }

    fn after_append(
        &self,
        pending: std::sync::MutexGuard<'_, Pending>,
        wrote: bool,
    ) -> Result<(), RecordingError> {
        let wake = wrote && pending.batch.len() >= WRITE_AT_BYTES;
        drop(pending);
        if wake {
            self.shared.wake_writer.notify_one();
        }
        Ok(())
    }

    /// Writes what the decoders still hold, flushes, fsyncs and returns the
    /// file's size and SHA-256, and the output byte count.
    ///
    /// # Errors
    /// [`RecordingError::Write`] or [`RecordingError::WriterGone`].
    pub async fn finish(mut self) -> Result<Digest256, RecordingError> {
        let rest = self.output.finish();
        let rest_input = self.input.finish();
        {
            let time = self.now();
            let mut pending = lock(&self.shared)?;
            if let Some(reason) = &pending.failed {
                return Err(RecordingError::WriterGone(reason.clone()));
            }
            append_text(&mut pending, b'o', time, |batch| {
                escape_json(batch, &rest, true);
            });
            if self.record_input {
                append_text(&mut pending, b'i', time, |batch| {
                    escape_json(batch, &rest_input, false);
                });
            }
            pending.close_event();
        }
        let gone = |shared: &Shared| {
            let reason = shared
                .pending
                .lock()
                .ok()
                .and_then(|p| p.failed.clone())
                .unwrap_or_else(|| "unknown error".to_string());
            RecordingError::WriterGone(reason)
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.control.send(Command::Finish(tx)).await.is_err() {
            return Err(gone(&self.shared));
        }
        let mut digest = rx.await.map_err(|_| gone(&self.shared))??;
        digest.output_bytes = self.output_bytes;
        Ok(digest)
    }
}

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Pending>, RecordingError> {
    shared
        .pending
        .lock()
        .map_err(|_| RecordingError::WriterGone("the writer panicked".into()))
}

/// Appends to `pending` an event of `code` at `time` whose JSON-escaped
/// text `fill` writes into the batch: into the open event when it has the
/// same code and began less than [`COALESCE_SECONDS`] before, else as a
/// new `[time, "CODE", "` line (the open one, if any, closed first).
/// Nothing is left when `fill` writes nothing. Returns true when it wrote.
fn append_text(
    pending: &mut Pending,
    code: u8,
    time: f64,
    fill: impl FnOnce(&mut Vec<u8>),
) -> bool {
    let joins = matches!(pending.open, Some((c, t)) if c == code && time - t < COALESCE_SECONDS);
    let mark = pending.batch.len();
    let reopened = if joins {
        None
    } else {
        let before = pending.open;
        pending.close_event();
        let batch = &mut pending.batch;
        batch.push(b'[');
        // Into a Vec this cannot fail (a non-finite time would be `null`).
        let _ = serde_json::to_writer(&mut *batch, &time);
        batch.extend_from_slice(b",\"");
        batch.push(code);
        batch.extend_from_slice(b"\",\"");
        Some(before)
    };
    let text_at = pending.batch.len();
    fill(&mut pending.batch);
    if pending.batch.len() == text_at {
        // Nothing to record: undo the new line and reopen what it closed.
        if let Some(before) = reopened {
            pending.batch.truncate(mark);
            pending.open = before;
        }
        return false;
    }
    if reopened.is_some() {
        pending.open = Some((code, time));
    }
    true
}

/// How each byte is written inside a JSON string, as serde_json does:
/// 0 = as is, `u` = `\u00XX`, else the letter after a backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Length of the start of `bytes` that JSON writes as is (up to the first
/// control character, `"` or `\\`), eight bytes at a time: a word holds
/// such a byte when it has a byte below 0x20 or a zero byte after XOR with
/// `"` or `\\` (the "has less" and "has zero byte" tests of Sean Eron
/// Anderson's Bit Twiddling Hacks); only such a word is looked at byte by
/// byte.
fn plain_prefix_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let needs_escape = |b: &u8| ESCAPE[usize::from(*b)] != 0;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        let x = u64::from_le_bytes(word);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let found = below_space
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')));
        if found != 0
            && let Some(p) = word.iter().position(needs_escape)
        {
            return at + p;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(needs_escape)
        .unwrap_or(bytes.len() - at)
}

/// How many bytes at the start of `bytes` equal `b`, compared eight at a
/// time (a 32 KiB read of `/dev/zero` is one run).
fn run_len(bytes: &[u8], b: u8) -> usize {
    let pattern = u64::from_ne_bytes([b; 8]);
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        if u64::from_ne_bytes(word) != pattern {
            break;
        }
        at += 8;
    }
    at + bytes[at..].iter().take_while(|&&c| c == b).count()
}

/// Appends `text` JSON-escaped (without quotes), byte for byte as
/// serde_json writes strings: `\"`, `\\`, the short escapes of control
/// characters that have one and `\u00XX` for the others; NULs are left
/// out when `drop_nul`. Plain stretches are found a word at a time
/// ([`plain_prefix_len`]) and copied whole.
fn escape_json(out: &mut Vec<u8>, text: &str, drop_nul: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.reserve(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let plain = plain_prefix_len(&bytes[i..]);
        out.extend_from_slice(&bytes[i..i + plain]);
        i += plain;
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let escape = ESCAPE[usize::from(b)];
        // A run of one escaped byte (NUL padding, `/dev/zero`): dropped,
        // or its escape written once, then what is written copied, doubling.
        let run = run_len(&bytes[i..], b);
        i += run;
        if b == 0 && drop_nul {
            continue;
        }
        let at = out.len();
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        let total = (out.len() - at) * run;
        while out.len() - at < total {
            let have = out.len() - at;
            out.extend_from_within(at..at + have.min(total - have));
        }
    }
}

/// The writer task's side: the file, and the spare batch buffer it swaps
/// in for the full one.
struct Writer {
    shared: std::sync::Arc<Shared>,
    /// The file and its running digest; away on a blocking thread while a
    /// batch is written (`None` after a writer thread died).
    sink: Option<Sink>,
    spare: Vec<u8>,
}

/// The file, with the SHA-256 and size of what was written to it.
struct Sink {
    file: std::fs::File,
    hasher: Sha256,
    bytes: u64,
}

impl Writer {
    async fn run(mut self, mut control: mpsc::Receiver<Command>, flush_interval: Duration) {
        let mut tick = tokio::time::interval(flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = control.recv() => {
                    let result = self.finish().await;
                    if let Some(Command::Finish(reply)) = command {
                        let _ = reply.send(result);
                    }
                    // Else the recorder was dropped without finish: what
                    // it left is written all the same.
                    return;
                }
                _ = self.shared.wake_writer.notified() => {
                    if self.write_pending().await.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    if self.write_pending().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Takes the pending batch (closing its open event, so the file only
    /// ever gets whole lines), then writes and hashes it on a blocking
    /// thread while the session fills the spare buffer.
    async fn write_pending(&mut self) -> Result<(), RecordingError> {
        let batch = {
            let Ok(mut pending) = self.shared.pending.lock() else {
                return Err(self.failed(std::io::Error::other("the recorder panicked")));
            };
            if pending.batch.is_empty() {
                return Ok(());
            }
            pending.close_event();
            std::mem::replace(&mut pending.batch, std::mem::take(&mut self.spare))
        };
        self.shared.room.notify_one();
        let written = self
            .with_sink(move |sink| {
                let result = sink.file.write_all(&batch);
                if result.is_ok() {
                    sink.hasher.update(&batch);
                    sink.bytes += batch.len() as u64;
                }
                (result, batch)
            })
            .await;
        match written {
            Ok((Ok(()), mut batch)) => {
                batch.clear();
                if batch.capacity() > KEEP_BATCH_BYTES {
                    batch = Vec::new();
                }
                self.spare = batch;
                Ok(())
            }
            Ok((Err(e), _)) | Err(e) => Err(self.failed(e)),
        }
    }

    /// Runs `work` on the sink on a blocking thread.
    async fn with_sink<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Sink) -> T + Send + 'static,
    ) -> Result<T, std::io::Error> {
        let Some(mut sink) = self.sink.take() else {
            return Err(std::io::Error::other("the recording file was lost"));
        };
        let (sink, out) = tokio::task::spawn_blocking(move || {
            let out = work(&mut sink);
            (sink, out)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.sink = Some(sink);
        Ok(out)
    }

    /// Records the writer's failure for the recorder (which then gets
    /// [`RecordingError::WriterGone`]) and wakes it.
    fn failed(&self, e: std::io::Error) -> RecordingError {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.failed = Some(e.to_string());
        }
        self.shared.room.notify_one();
        RecordingError::Write(e)
    }

    async fn finish(&mut self) -> Result<Digest256, RecordingError> {
        self.write_pending().await?;
        let synced = self
            .with_sink(|sink| {
                sink.file.sync_all().map(|()| Digest256 {
                    bytes: sink.bytes,
                    sha256: hex::encode(sink.hasher.clone().finalize()),
                    output_bytes: 0,
                })
            })
            .await;
        match synced {
            Ok(Ok(digest)) => Ok(digest),
            Ok(Err(e)) | Err(e) => Err(RecordingError::Write(e)),
        }
    }
}

/// Parses a whole recording.
///
/// # Errors
/// [`RecordingError::Malformed`] naming the first bad line.
pub fn parse(text: &str) -> Result<(Header, Vec<Event>), RecordingError> {
    let mut lines = text.lines().enumerate();
    let header_line = lines.next().map(|(_, l)| l).unwrap_or("");
    let header: Header =
        serde_json::from_str(header_line).map_err(|e| RecordingError::Malformed {
            line: 1,
            message: format!("bad header: {e}"),
        })?;
    if header.version != 2 {
        return Err(RecordingError::Malformed {
            line: 1,
            message: format!("version {} is not 2", header.version),
        });
    }
    let mut events = Vec::new();
    let mut last = 0.0;
    for (index, line) in lines {
        if line.is_empty() {
            continue;
        }
        let malformed = |message: String| RecordingError::Malformed {
            line: index + 1,
            message,
        };
        let (time, code, data): (f64, String, String) =
            serde_json::from_str(line).map_err(|e| malformed(format!("bad event: {e}")))?;
        if time < last {
            return Err(malformed(format!("time {time} goes backwards")));
        }
        last = time;
        events.push(Event { time, code, data });
    }
    Ok((header, events))
}

/// Reads and parses the recording at `path`.
///
/// # Errors
/// [`RecordingError::Read`] or [`RecordingError::Malformed`].
pub fn read(path: &Path) -> Result<(Header, Vec<Event>), RecordingError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecordingError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// Lowercase hex SHA-256 and size of the file at `path`.
///
/// # Errors
/// [`RecordingError::Read`].
pub fn digest_file(path: &Path) -> Result<Digest256, RecordingError> {
    let bytes = std::fs::read(path).map_err(|source| RecordingError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Digest256 {
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        output_bytes: 0,
    })
}

/// The transcript as text lines: output (`o`) events with escape
/// sequences stripped (strip-ansi-escapes, a vte parser), split at line
/// feeds; each line carries the time (seconds) of the event that ended it.
pub fn transcript_lines(events: &[Event]) -> Vec<(f64, String)> {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let sink = Sink::default();
    let mut writer = strip_ansi_escapes::Writer::new(sink.clone());
    let mut lines = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let take = |time: f64, partial: &mut Vec<u8>, lines: &mut Vec<(f64, String)>| {
        let bytes = sink
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(partial).replace('\r', "");
                lines.push((time, line));
                partial.clear();
            } else {
                partial.push(b);
            }
        }
    };
    let mut last = 0.0;
    for event in events.iter().filter(|e| e.code == "o") {
        let _ = writer.write_all(event.data.as_bytes());
        let _ = writer.flush();
        take(event.time, &mut partial, &mut lines);
        last = event.time;
    }
    drop(writer.into_inner());
    take(last, &mut partial, &mut lines);
    if !partial.is_empty() {
        lines.push((last, String::from_utf8_lossy(&partial).replace('\r', "")));
    }
    lines
}

/// Largest line a [`Follower`] buffers while waiting for its end, in bytes:
/// a longer one (never written by [`Recorder`], whose events hold at most
/// one read of output escaped) is skipped.
const MAX_FOLLOW_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Reads a recording while it is being written, for live watching
/// (`sessions watch`): each [`Follower::next_output`] returns the output
/// (`o`) text of the complete event lines written since the last call.
/// The writer flushes at least every `recording.flush_interval`, so a
/// watcher lags the session by at most that much.
pub struct Follower {
    file: tokio::fs::File,
    pending: Vec<u8>,
}

impl Follower {
    /// Opens the recording at `path` from its start.
    ///
    /// # Errors
    /// [`RecordingError::Read`] when it cannot be opened.
    pub async fn open(path: &Path) -> Result<Follower, RecordingError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| RecordingError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Follower {
            file,
            pending: Vec::new(),
        })
    }

    /// The output text of the event lines completed since the last call
    /// (empty when none). The header, input and resize events are skipped,
    /// and so is a line that is not an event; a partial last line waits
    /// for its end.
    ///
    /// # Errors
    /// [`RecordingError::Write`] wrapping a read error.
    pub async fn next_output(&mut self) -> Result<String, RecordingError> {
        use tokio::io::AsyncReadExt;
        let mut fresh = Vec::new();
        self.file
            .read_to_end(&mut fresh)
            .await
            .map_err(RecordingError::Write)?;
        self.pending.extend_from_slice(&fresh);
        let mut text = String::new();
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + end];
            start += end + 1;
            if let Ok((_, code, data)) = serde_json::from_slice::<(f64, &str, String)>(line)
                && code == "o"
            {
                text.push_str(&data);
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_FOLLOW_LINE_BYTES {
            self.pending.clear();
        }
        Ok(text)
    }
}

/// Replays `events` to `out` with their timing, like `asciinema play`:
/// waits are divided by `speed` and capped at `idle_limit` seconds.
///
/// # Errors
/// I/O errors of `out`.
pub async fn play<W: tokio::io::AsyncWrite + Unpin>(
    events: &[Event],
    speed: f64,
    idle_limit: Option<f64>,
    out: &mut W,
) -> std::io::Result<()> {
    let speed = if speed > 0.0 { speed } else { 1.0 };
    let mut last = 0.0;
    for event in events {
        let mut wait = (event.time - last).max(0.0);
        if let Some(limit) = idle_limit {
            wait = wait.min(limit);
        }
        last = event.time;
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait / speed)).await;
        }
        if event.code == "o" {
            out.write_all(event.data.as_bytes()).await?;
            out.flush().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn header() -> Header {
        Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: Some(1_700_000_000),
            command: None,
            title: None,
            env: None,
            portcullis: Some(SessionMetadata {
                session_id: "s".into(),
                principal: "alice".into(),
                container: "web1".into(),
                login: "root".into(),
                command: None,
            }),
        }
    }

    #[tokio::test]
    async fn writes_parseable_asciicast_with_exact_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let mut rec = Recorder::create(&path, &header(), false, Duration::from_secs(1))
            .await
            .unwrap();
        rec.output(b"hello \xc3").await.unwrap();
        rec.output(b"\xa9\x1b[0m\r\n").await.unwrap();
        rec.input(b"secret").await.unwrap();
        rec.resize(100, 50).await.unwrap();
        let digest = rec.finish().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(digest.output_bytes, 14);
        assert_eq!(
            Digest256 {
                output_bytes: 0,
                ..digest
            },
            digest_file(&path).unwrap()
        );
        let (h, events) = parse(&text).unwrap();
        assert_eq!(h, header());
        let codes: Vec<_> = events
            .iter()
            .map(|e| (e.code.as_str(), e.data.as_str()))
            .collect();
        // The two outputs came within COALESCE_SECONDS: one event.
        assert_eq!(codes, [("o", "hello é\u{1b}[0m\r\n"), ("r", "100x50")]);
        assert!(!text.contains("secret"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn escaping_matches_serde_json_on_random_text() {
        // A fixed xorshift sequence: characters biased towards the escaped
        // ones and multibyte ones, at every alignment, up to 40 of them.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const PICK: &[char] = &[
            '\0', '\u{1}', '\u{1f}', ' ', '"', '\\', '\n', '\r', '\u{7f}', 'a', '~', 'é', '€',
            '😀', '\u{80}', '\u{a0}', '\u{ffff}',
        ];
        for _ in 0..20_000 {
            let len = (next() % 41) as usize;
            let text: String = (0..len)
                .map(|_| match next() % 4 {
                    0 => char::from((next() % 128) as u8),
                    _ => PICK[(next() % PICK.len() as u64) as usize],
                })
                .collect();
            let bytes = text.as_bytes();
            let len = bytes.len();
            let text = text.as_str();
            for drop_nul in [false, true] {
                let mut mine = Vec::new();
                escape_json(&mut mine, text, drop_nul);
                let expect = if drop_nul {
                    text.replace('\0', "")
                } else {
                    text.to_string()
                };
                let theirs = serde_json::to_vec(&expect).unwrap();
                assert_eq!(mine, theirs[1..theirs.len() - 1], "{text:?}");
            }
            if let Some(&b) = bytes.first() {
                let same = bytes.iter().take_while(|&&c| c == b).count();
                assert_eq!(run_len(bytes, b), same, "{bytes:?}");
            }
            let first = bytes.iter().position(|&b| ESCAPE[usize::from(b)] != 0);
            assert_eq!(plain_prefix_len(bytes), first.unwrap_or(len), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn output_nuls_are_left_out_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.cast");
        let mut rec = Recorder::create(&path, &header(), true, Duration::from_secs(1))
            .await
            .unwrap();
        rec.output(&[0; 65536]).await.unwrap();
        rec.output(b"a\0b\0\0").await.unwrap();
        rec.input(b"\0q").await.unwrap();
        rec.output(b"\xc3").await.unwrap();
        let digest = rec.finish().await.unwrap();
        assert_eq!(digest.output_bytes, 65536 + 5 + 1);
        let (_, events) = read(&path).unwrap();
        let codes: Vec<_> = events
            .iter()
            .map(|e| (e.code.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(codes, [("o", "ab"), ("i", "\0q"), ("o", "\u{FFFD}")]);
        let on_disk = digest_file(&path).unwrap();
        assert_eq!(
            (on_disk.bytes, on_disk.sha256),
            (digest.bytes, digest.sha256)
        );
    }

    #[test]
    fn event_lines_are_what_serde_json_writes() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\u{FFFD}\u{7f}\"\\");
        let runs = "\0".repeat(1000) + "x" + &"\n".repeat(7) + "\u{1}\u{1}\"\"";
        for text in [all.as_str(), "", "plain", "\0\0\0", "a\"b\\c\r\n", &runs] {
            let mut mine = Vec::new();
            escape_json(&mut mine, text, false);
            let theirs = serde_json::to_vec(text).unwrap();
            assert_eq!(mine, theirs[1..theirs.len() - 1], "{text:?}");
            let mut without_nul = Vec::new();
            escape_json(&mut without_nul, text, true);
            let theirs = serde_json::to_vec(&text.replace('\0', "")).unwrap();
            assert_eq!(without_nul, theirs[1..theirs.len() - 1], "{text:?}");
        }
        // Whole event lines, byte for byte.
        let mut decoder = Utf8Decoder::default();
        let mut line = |code: u8, time: f64, bytes: &[u8], drop_nul: bool| {
            let mut pending = Pending::default();
            let wrote = append_text(&mut pending, code, time, |batch| {
                decoder.decode_into(bytes, |text| escape_json(batch, text, drop_nul));
            });
            pending.close_event();
            assert_eq!(wrote, !pending.batch.is_empty());
            String::from_utf8(pending.batch).unwrap()
        };
        assert_eq!(
            line(b'i', 0.5, b"x\x00\xc3", false),
            "[0.5,\"i\",\"x\\u0000\"]\n"
        );
        assert_eq!(line(b'o', 1.0, b"", true), "");
        // NULs after a pending partial character still end it (U+FFFD);
        // only NULs give no event.
        assert_eq!(
            line(b'o', 1.25, b"\0\0", true),
            "[1.25,\"o\",\"\u{FFFD}\"]\n"
        );
        assert_eq!(line(b'o', 2.0, &[0; 4096], true), "");
        assert_eq!(line(b'o', 3.0, b"\xc3", true), "");
        assert_eq!(
            line(b'o', 3.000001, b"\xa9", true),
            "[3.000001,\"o\",\"é\"]\n"
        );
    }

    #[tokio::test]
    async fn a_burst_eight_times_the_pending_limit_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.cast");
        let mut rec = Recorder::create(&path, &header(), false, Duration::from_secs(60))
            .await
            .unwrap();
        // 8 MiB in 32 KiB reads: eight times the pending limit, so the
        // session waits for the writer (woken at WRITE_AT_BYTES, not by the
        // 60 s tick) several times over; every byte must come back, in order.
        let mut sent = String::new();
        for i in 0..256u32 {
            let chunk = format!("{i:05}\"").repeat(32 * 1024 / 6);
            rec.output(chunk.as_bytes()).await.unwrap();
            sent.push_str(&chunk);
        }
        let digest = rec.finish().await.unwrap();
        assert_eq!(digest.output_bytes, sent.len() as u64);
        let (_, events) = read(&path).unwrap();
        let got: String = events.iter().map(|e| e.data.as_str()).collect();
        assert!(
            got == sent,
            "{} of {} bytes came back",
            got.len(),
            sent.len()
        );
        assert_eq!(digest_file(&path).unwrap().sha256, digest.sha256);
    }

    #[test]
    fn events_of_one_stream_within_the_window_are_joined() {
        let mut pending = Pending::default();
        let mut put = |code: u8, time: f64, text: &str| {
            append_text(&mut pending, code, time, |batch| {
                escape_json(batch, text, true)
            })
        };
        assert!(put(b'o', 0.1, "ab"));
        assert!(put(b'o', 0.105, "c\n"));
        // Input closes the output event; nothing to add changes nothing.
        assert!(put(b'i', 0.106, "q"));
        assert!(!put(b'i', 0.107, ""));
        assert!(put(b'i', 0.108, "w"));
        assert!(!put(b'o', 0.2, "\0"));
        assert!(put(b'o', 0.2, "d"));
        // Past the window: a new event.
        assert!(put(b'o', 0.211, "e"));
        pending.close_event();
        assert_eq!(
            String::from_utf8(pending.batch).unwrap(),
            "[0.1,\"o\",\"abc\\n\"]\n[0.106,\"i\",\"qw\"]\n[0.2,\"o\",\"d\"]\n[0.211,\"o\",\"e\"]\n"
        );
    }

    #[tokio::test]
    async fn input_recorded_only_when_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let mut rec = Recorder::create(&path, &header(), true, Duration::from_secs(1))
            .await
            .unwrap();
        rec.input(b"ls\r").await.unwrap();
        rec.finish().await.unwrap();
        let (_, events) = read(&path).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].code, "i");
        assert_eq!(events[0].data, "ls\r");
    }

    #[tokio::test]
    async fn flushes_within_the_interval_without_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let mut rec = Recorder::create(&path, &header(), false, Duration::from_millis(50))
            .await
            .unwrap();
        rec.output(b"still here").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Not finished: the file must already hold the event.
        let (_, events) = read(&path).unwrap();
        assert_eq!(events[0].data, "still here");
        drop(rec);
    }

    #[test]
    fn parse_rejects_bad_lines() {
        assert!(matches!(
            parse("{\"version\":1,\"width\":1,\"height\":1}\n"),
            Err(RecordingError::Malformed { line: 1, .. })
        ));
        let bad =
            "{\"version\":2,\"width\":1,\"height\":1}\n[1.0,\"o\",\"a\"]\n[0.5,\"o\",\"b\"]\n";
        assert!(matches!(
            parse(bad),
            Err(RecordingError::Malformed { line: 3, .. })
        ));
    }

    #[test]
    fn transcript_lines_strip_escapes_and_keep_times() {
        let ev = |time: f64, data: &str| Event {
            time,
            code: "o".into(),
            data: data.into(),
        };
        let events = vec![
            ev(0.1, "\u{1b}[1;32m~ #\u{1b}[0m ec"),
            ev(0.2, "ho hi\r\nhi\r\n\u{1b}]0;title\u{7}last"),
            Event {
                time: 0.3,
                code: "r".into(),
                data: "1x1".into(),
            },
        ];
        assert_eq!(
            transcript_lines(&events),
            vec![
                (0.2, "~ # echo hi".to_string()),
                (0.2, "hi".to_string()),
                (0.2, "last".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn follower_returns_output_of_complete_lines_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.cast");
        std::fs::write(
            &path,
            "{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"a\\u0000b\"]\n[0.2,\"i\",\"x\"]\n[0.3,\"o\",\"c",
        )
        .unwrap();
        let mut follower = Follower::open(&path).await.unwrap();
        assert_eq!(follower.next_output().await.unwrap(), "a\0b");
        assert_eq!(follower.next_output().await.unwrap(), "");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"d\"]\n[0.4,\"r\",\"10x5\"]\n").unwrap();
        assert_eq!(follower.next_output().await.unwrap(), "cd");
    }

    #[tokio::test]
    async fn play_writes_output_only() {
        let events = vec![
            Event {
                time: 0.0,
                code: "o".into(),
                data: "a".into(),
            },
            Event {
                time: 5.0,
                code: "r".into(),
                data: "1x1".into(),
            },
            Event {
                time: 10.0,
                code: "o".into(),
                data: "b".into(),
            },
        ];
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        play(&events, 1.0, Some(0.01), &mut out).await.unwrap();
        assert_eq!(out, b"ab");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
