//! [`Recorder`], the session's end of a recording, and the writer task that
//! takes its batches to the file: written and hashed on a blocking thread,
//! at least every `flush_interval`, fsynced at the end.
//!
//! Owns the file while it is written. It must never lose an event it
//! accepted (back-pressure instead), never write past the free-space
//! reserve (the writer stops first), and never write more than
//! `recording.max_bytes` plus the marker that says the limit was reached.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::batch::{
    Failure, KEEP_BATCH_BYTES, MAX_PENDING_BYTES, Pending, Shared, WRITE_AT_BYTES, append_text,
    lock,
};
use super::escape::escape_json;
use super::marker::Marker;
use super::utf8::Utf8Decoder;
use super::{BENCH_NO_RECORDING, Digest256, Header, RecordingError};

/// What bounds one recording (issue 13 point 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderLimits {
    /// `recording.max_bytes`: events that would start past this size are
    /// refused with [`RecordingError::LimitReached`], after one marker
    /// saying so. In bytes; `u64::MAX` for none.
    pub max_bytes: u64,
    /// Free bytes the recording's filesystem keeps: a write that would
    /// leave less stops the writer ([`RecordingError::DiskReserve`]), so
    /// recordings never take the space the audit log needs. 0 for none.
    pub reserve_bytes: u64,
}

impl Default for RecorderLimits {
    /// No limits (the behaviour of [`Recorder::create`]).
    fn default() -> Self {
        RecorderLimits {
            max_bytes: u64::MAX,
            reserve_bytes: 0,
        }
    }
}

/// How the writer task ended: the finished file's digest, or why it
/// stopped (the file then holds what was written before).
pub(super) type WriterEnd = Result<Digest256, String>;

/// What the recorder tells the writer task besides "bytes are pending".
enum Command {
    Finish(oneshot::Sender<Result<Digest256, RecordingError>>),
}

/// The writing end of one session's recording. Dropping it without
/// [`Recorder::finish`] still writes what is pending.
pub struct Recorder {
    shared: std::sync::Arc<Shared>,
    start: Instant,
    control: mpsc::Sender<Command>,
    output: Utf8Decoder,
    record_input: bool,
    path: PathBuf,
    output_bytes: u64,
}

impl Recorder {
    /// Creates the file at `path` (mode 0600, must not exist), writes the
    /// header and starts the writer task; no size limit, no reserve.
    ///
    /// # Errors
    /// [`RecordingError::Create`] or [`RecordingError::Write`].
    pub async fn create(
        path: &Path,
        header: &Header,
        record_input: bool,
        flush_interval: Duration,
    ) -> Result<Recorder, RecordingError> {
        Recorder::create_limited(
            path,
            header,
            record_input,
            flush_interval,
            RecorderLimits::default(),
        )
        .await
    }

    /// [`Recorder::create`] with `limits`.
    ///
    /// # Errors
    /// [`RecordingError::Create`], [`RecordingError::Write`], or
    /// [`RecordingError::DiskReserve`] when even the header would eat into
    /// the reserve.
    pub async fn create_limited(
        path: &Path,
        header: &Header,
        record_input: bool,
        flush_interval: Duration,
        limits: RecorderLimits,
    ) -> Result<Recorder, RecordingError> {
        let (recorder, _ended) =
            Recorder::start(path, header, record_input, flush_interval, limits).await?;
        Ok(recorder)
    }

    /// Creates the recording and returns, besides the recorder, what its
    /// writer task says when it has finished with the file (the upload
    /// waits for it).
    pub(super) async fn start(
        path: &Path,
        header: &Header,
        record_input: bool,
        flush_interval: Duration,
        limits: RecorderLimits,
    ) -> Result<(Recorder, oneshot::Receiver<WriterEnd>), RecordingError> {
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
                max_bytes: limits.max_bytes,
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
                reserve_bytes: limits.reserve_bytes,
            }),
            spare: Vec::new(),
        };
        if let Err(e) = writer.write_pending().await {
            // Nothing of the session was recorded: leave no file behind.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let (control, rx) = mpsc::channel(1);
        let (ended_tx, ended) = oneshot::channel();
        tokio::spawn(writer.run(rx, flush_interval, ended_tx));
        Ok((
            Recorder {
                shared,
                start: Instant::now(),
                control,
                output: Utf8Decoder::default(),
                record_input,
                path: path.to_path_buf(),
                output_bytes: 0,
            },
            ended,
        ))
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

    /// A handle that records input (`i` events) from another task, into
    /// the same batch and in time order with output: the stdin task can
    /// record what it writes without a channel in between. It waits while
    /// the batch is full (bounded, like [`Recorder::output`]).
    pub fn input_tap(&self) -> InputTap {
        InputTap {
            shared: self.shared.clone(),
            start: self.start,
            record_input: self.records_input(),
        }
    }

    /// Records output bytes (`o`), NULs left out (module docs). Output
    /// within 10 ms of the last output event joins it.
    ///
    /// # Errors
    /// [`RecordingError::WriterGone`] when the writer failed (it names the
    /// I/O error, e.g. no space left on device),
    /// [`RecordingError::DiskReserve`], or
    /// [`RecordingError::LimitReached`] once the recording passed
    /// `max_bytes`.
    pub async fn output(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.output_bytes += bytes.len() as u64;
        if BENCH_NO_RECORDING {
            return Ok(());
        }
        wait_for_room(&self.shared).await?;
        let time = seconds_since(self.start);
        let mut pending = lock(&self.shared)?;
        let time = pending.monotonic(time);
        pending.check(time)?;
        let wrote = append_text(&mut pending, b'o', time, |batch| {
            self.output
                .decode_into(bytes, |text| escape_json(batch, text, true));
        });
        after_append(&self.shared, pending, wrote);
        Ok(())
    }

    /// Records input bytes (`i`) when input recording is on; else nothing.
    ///
    /// # Errors
    /// As [`Recorder::output`].
    pub async fn input(&mut self, bytes: &[u8]) -> Result<(), RecordingError> {
        self.input_tap().input(bytes).await
    }

    /// Records a terminal resize (`r`, data `COLSxROWS`), as an event of
    /// its own.
    ///
    /// # Errors
    /// As [`Recorder::output`].
    pub async fn resize(&mut self, cols: u32, rows: u32) -> Result<(), RecordingError> {
        self.event(b'r', &format!("{cols}x{rows}")).await
    }

    /// Records a marker (`m`, asciicast v2: data is the label) at this
    /// point of the output, as an event of its own: players show it as a
    /// chapter mark, `sessions search` finds its label and `sessions play
    /// --at` starts there. Written in bench builds too.
    ///
    /// # Errors
    /// As [`Recorder::output`].
    pub async fn marker(&mut self, marker: &Marker<'_>) -> Result<(), RecordingError> {
        self.event(b'm', &marker.label()).await
    }

    /// A handle that records markers from another task (the transfer
    /// server's reports), into the same batch and in time order with
    /// output, bounded like [`Recorder::output`].
    pub fn marker_tap(&self) -> MarkerTap {
        MarkerTap {
            shared: self.shared.clone(),
            start: self.start,
        }
    }

    /// Appends a whole event of `code` with `text` (escaped).
    async fn event(&mut self, code: u8, text: &str) -> Result<(), RecordingError> {
        append_event(&self.shared, self.start, code, text).await
    }

    /// Writes what the decoders still hold, flushes, fsyncs and returns the
    /// file's size and SHA-256, and the output byte count. After
    /// [`RecordingError::LimitReached`] it still succeeds (the file ends
    /// with the limit's marker).
    ///
    /// # Errors
    /// [`RecordingError::Write`], [`RecordingError::WriterGone`] or
    /// [`RecordingError::DiskReserve`].
    pub async fn finish(mut self) -> Result<Digest256, RecordingError> {
        let rest = self.output.finish();
        {
            let time = seconds_since(self.start);
            let mut pending = lock(&self.shared)?;
            if let Some(failure) = &pending.failed {
                return Err(failure.error());
            }
            let time = pending.monotonic(time);
            if !pending.limited {
                append_text(&mut pending, b'o', time, |batch| {
                    escape_json(batch, &rest, true);
                });
                if self.record_input {
                    let rest_input = pending.input.finish();
                    append_text(&mut pending, b'i', time, |batch| {
                        escape_json(batch, &rest_input, false);
                    });
                }
            }
            pending.close_event();
        }
        let gone = |shared: &Shared| {
            shared
                .pending
                .lock()
                .ok()
                .and_then(|p| p.failed.as_ref().map(Failure::error))
                .unwrap_or_else(|| RecordingError::WriterGone("unknown error".to_string()))
        };
        let (tx, rx) = oneshot::channel();
        if self.control.send(Command::Finish(tx)).await.is_err() {
            return Err(gone(&self.shared));
        }
        let mut digest = rx.await.map_err(|_| gone(&self.shared))??;
        digest.output_bytes = self.output_bytes;
        Ok(digest)
    }
}

/// Records a session's input from another task than its [`Recorder`]
/// (the task that writes to the process's stdin), straight into the
/// recording's batch: bounded by the same back-pressure as output, no
/// channel and no copy in between (review finding 7).
#[derive(Clone)]
pub struct InputTap {
    shared: std::sync::Arc<Shared>,
    start: Instant,
    record_input: bool,
}

impl InputTap {
    /// Records input bytes (`i`) when input recording is on; else nothing.
    /// Waits while more than 1 MiB is pending for the writer.
    ///
    /// # Errors
    /// As [`Recorder::output`].
    pub async fn input(&self, bytes: &[u8]) -> Result<(), RecordingError> {
        if !self.record_input {
            return Ok(());
        }
        wait_for_room(&self.shared).await?;
        let time = seconds_since(self.start);
        let mut pending = lock(&self.shared)?;
        let time = pending.monotonic(time);
        pending.check(time)?;
        let mut decoder = std::mem::take(&mut pending.input);
        let wrote = append_text(&mut pending, b'i', time, |batch| {
            decoder.decode_into(bytes, |text| escape_json(batch, text, false));
        });
        pending.input = decoder;
        after_append(&self.shared, pending, wrote);
        Ok(())
    }
}

/// Records markers (`m` events) from another task than the session's
/// [`Recorder`], straight into the recording's batch. After the recorder
/// finished, a marker is accepted and never written.
#[derive(Clone)]
pub struct MarkerTap {
    shared: std::sync::Arc<Shared>,
    start: Instant,
}

impl MarkerTap {
    /// Records `marker` as [`Recorder::marker`] does.
    ///
    /// # Errors
    /// As [`Recorder::output`].
    pub async fn marker(&self, marker: &Marker<'_>) -> Result<(), RecordingError> {
        append_event(&self.shared, self.start, b'm', &marker.label()).await
    }
}

/// Appends a whole event of `code` with `text` (escaped) to `shared`'s
/// batch, at the time since `start`.
async fn append_event(
    shared: &Shared,
    start: Instant,
    code: u8,
    text: &str,
) -> Result<(), RecordingError> {
    wait_for_room(shared).await?;
    let time = seconds_since(start);
    let mut pending = lock(shared)?;
    let time = pending.monotonic(time);
    pending.check(time)?;
    let wrote = append_text(&mut pending, code, time, |batch| {
        escape_json(batch, text, true);
    });
    pending.close_event();
    after_append(shared, pending, wrote);
    Ok(())
}

/// Seconds since `start`, rounded to microseconds as asciinema does.
fn seconds_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e6
}

/// Waits while the batch is over [`MAX_PENDING_BYTES`] (the writer is
/// behind), or fails when the writer stopped.
async fn wait_for_room(shared: &Shared) -> Result<(), RecordingError> {
    loop {
        // Armed before the check: a wake-up in between is kept.
        let room = shared.room.notified();
        {
            let pending = lock(shared)?;
            if let Some(failure) = &pending.failed {
                return Err(failure.error());
            }
            if pending.batch.len() < MAX_PENDING_BYTES {
                return Ok(());
            }
        }
        room.await;
    }
}

/// Releases the batch and wakes the writer when it passed
/// [`WRITE_AT_BYTES`].
fn after_append(shared: &Shared, pending: std::sync::MutexGuard<'_, Pending>, wrote: bool) {
    let wake = wrote && pending.batch.len() >= WRITE_AT_BYTES;
    drop(pending);
    if wake {
        shared.wake_writer.notify_one();
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
    /// Free bytes its filesystem must keep after a write.
    reserve_bytes: u64,
}

impl Sink {
    /// Writes `batch` unless that would leave less than the reserve free.
    fn write(&mut self, batch: &[u8]) -> Result<(), Failure> {
        if self.reserve_bytes > 0 {
            let stat = nix::sys::statvfs::fstatvfs(&self.file)
                .map_err(|e| Failure::Io(format!("cannot read free space: {e}")))?;
            let free_bytes = stat.blocks_available().saturating_mul(stat.fragment_size());
            if free_bytes < self.reserve_bytes.saturating_add(batch.len() as u64) {
                return Err(Failure::DiskReserve {
                    free_bytes,
                    reserve_bytes: self.reserve_bytes,
                });
            }
        }
        self.file
            .write_all(batch)
            .map_err(|e| Failure::Io(e.to_string()))?;
        self.hasher.update(batch);
        self.bytes += batch.len() as u64;
        Ok(())
    }
}

impl Writer {
    async fn run(
        mut self,
        mut control: mpsc::Receiver<Command>,
        flush_interval: Duration,
        ended: oneshot::Sender<WriterEnd>,
    ) {
        let mut tick = tokio::time::interval(flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                command = control.recv() => {
                    let result = self.finish().await;
                    let end = result.as_ref().map(Clone::clone).map_err(ToString::to_string);
                    if let Some(Command::Finish(reply)) = command {
                        let _ = reply.send(result);
                    }
                    // Else the recorder was dropped without finish: what
                    // it left is written all the same.
                    break end;
                }
                _ = self.shared.wake_writer.notified() => {
                    if let Err(e) = self.write_pending().await {
                        break Err(e.to_string());
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.write_pending().await {
                        break Err(e.to_string());
                    }
                }
            }
        };
        // The file is closed before anyone hears of its end.
        drop(self.sink.take());
        let _ = ended.send(end);
    }

    /// Takes the pending batch (closing its open event, so the file only
    /// ever gets whole lines), then writes and hashes it on a blocking
    /// thread while the session fills the spare buffer.
    async fn write_pending(&mut self) -> Result<(), RecordingError> {
        let batch = {
            let Ok(mut pending) = self.shared.pending.lock() else {
                return Err(self.failed(Failure::Io("the recorder panicked".into())));
            };
            if pending.batch.is_empty() {
                return Ok(());
            }
            pending.close_event();
            pending.taken += pending.batch.len() as u64;
            std::mem::replace(&mut pending.batch, std::mem::take(&mut self.spare))
        };
        self.shared.room.notify_one();
        let written = self
            .with_sink(move |sink| {
                let result = sink.write(&batch);
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
            Ok((Err(failure), _)) => Err(self.failed(failure)),
            Err(e) => Err(self.failed(Failure::Io(e.to_string()))),
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

    /// Records the writer's failure for the recorder (which then gets it
    /// from every call) and wakes it.
    fn failed(&self, failure: Failure) -> RecordingError {
        let error = failure.error();
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.failed = Some(failure);
        }
        self.shared.room.notify_one();
        match error {
            RecordingError::WriterGone(reason) => {
                RecordingError::Write(std::io::Error::other(reason))
            }
            other => other,
        }
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
