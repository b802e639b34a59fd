//! The batch of event lines a session's [`super::Recorder`] writes into and
//! its writer task takes out: how an event is framed (`[time, "code", "`),
//! when output joins the event still in memory, and how many bytes the
//! recording has taken so far (for `recording.max_bytes`).
//!
//! Owns the in-memory lines only; it never touches the file and never
//! blocks (callers hold its mutex for one append).

use super::escape::escape_json;
use super::utf8::Utf8Decoder;
use super::{RecordingError, human_bytes};

/// Pending bytes that wake the writer before its next tick, in bytes.
pub(super) const WRITE_AT_BYTES: usize = 256 * 1024;

/// Pending bytes past which the session waits for the writer
/// (back-pressure: events are never dropped), in bytes.
pub(super) const MAX_PENDING_BYTES: usize = 1024 * 1024;

/// Capacity a session's batch buffer keeps between writes; a larger one
/// (after a burst of output) is given back so idle sessions stay small.
pub(super) const KEEP_BATCH_BYTES: usize = 16 * 1024;

/// Output of one stream that arrives within this many seconds of its
/// event's start joins that event, while the event is still in memory:
/// a PTY gives a few hundred bytes per read, and one event per read would
/// cost more than the bytes. Replay shows them at most this much early.
pub(super) const COALESCE_SECONDS: f64 = 0.010;

/// The batch shared by a session's recorder (which writes events straight
/// into it) and its writer task (which swaps it for an empty one and writes
/// it out): no copy and no hand-off per event.
pub(super) struct Shared {
    pub(super) pending: std::sync::Mutex<Pending>,
    /// Wakes the writer: the batch passed [`WRITE_AT_BYTES`].
    pub(super) wake_writer: tokio::sync::Notify,
    /// Wakes a recorder waiting for room, or to learn the writer failed.
    pub(super) room: tokio::sync::Notify,
}

/// Why the writer stopped.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// An I/O error, as text.
    Io(String),
    /// The filesystem's free space fell under the floor kept for the
    /// database and the audit log.
    DiskReserve { free_bytes: u64, reserve_bytes: u64 },
}

impl Failure {
    /// The error a recorder gets after this failure.
    pub(super) fn error(&self) -> RecordingError {
        match self {
            Failure::Io(reason) => RecordingError::WriterGone(reason.clone()),
            Failure::DiskReserve {
                free_bytes,
                reserve_bytes,
            } => RecordingError::DiskReserve {
                free_bytes: *free_bytes,
                reserve_bytes: *reserve_bytes,
            },
        }
    }
}

/// Event lines not yet written.
pub(super) struct Pending {
    pub(super) batch: Vec<u8>,
    /// The last event of `batch` still takes data (its closing `"]` and
    /// newline are not written yet): its code and time in seconds.
    pub(super) open: Option<(u8, f64)>,
    /// Why the writer stopped, once it has.
    pub(super) failed: Option<Failure>,
    /// Bytes the writer took out of earlier batches: the file's size is
    /// `taken + batch.len()` once everything is written.
    pub(super) taken: u64,
    /// `recording.max_bytes`: events that would start past it are refused.
    pub(super) max_bytes: u64,
    /// The limit was reached (and its marker written).
    pub(super) limited: bool,
    /// Time of the last event, seconds: later events never go back.
    pub(super) last_time: f64,
    /// The input stream's decoder, here so an [`super::InputTap`] on
    /// another task shares it.
    pub(super) input: Utf8Decoder,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            batch: Vec::new(),
            open: None,
            failed: None,
            taken: 0,
            max_bytes: u64::MAX,
            limited: false,
            last_time: 0.0,
            input: Utf8Decoder::default(),
        }
    }
}

impl Pending {
    /// Ends the open event, if any, so `batch` holds whole lines.
    pub(super) fn close_event(&mut self) {
        if self.open.take().is_some() {
            self.batch.extend_from_slice(b"\"]\n");
        }
    }

    /// Bytes of the recording so far (written and pending).
    pub(super) fn size(&self) -> u64 {
        self.taken + self.batch.len() as u64
    }

    /// `time`, or the last event's time when `time` is earlier (two tasks
    /// appending: the clock is read before the lock).
    pub(super) fn monotonic(&mut self, time: f64) -> f64 {
        let time = time.max(self.last_time);
        self.last_time = time;
        time
    }

    /// Fails when the writer stopped, or when the recording reached
    /// `max_bytes`; the first time it does, a marker saying so ends the
    /// recording (it may pass the limit by that marker).
    pub(super) fn check(&mut self, time: f64) -> Result<(), RecordingError> {
        if let Some(failure) = &self.failed {
            return Err(failure.error());
        }
        if self.limited {
            return Err(RecordingError::LimitReached {
                max_bytes: self.max_bytes,
            });
        }
        if self.size() < self.max_bytes {
            return Ok(());
        }
        self.limited = true;
        let time = self.monotonic(time);
        let label = format!(
            "recording stopped: limit of {} reached",
            human_bytes(self.max_bytes)
        );
        append_text(self, b'm', time, |batch| escape_json(batch, &label, true));
        self.close_event();
        Err(RecordingError::LimitReached {
            max_bytes: self.max_bytes,
        })
    }
}

/// Locks the batch; a poisoned lock (a panic while appending) is a
/// stopped writer.
pub(super) fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Pending>, RecordingError> {
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
pub(super) fn append_text(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn event_lines_are_what_serde_json_writes() {
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

    #[test]
    fn the_limit_is_marked_once_and_then_refuses() {
        let mut pending = Pending {
            max_bytes: 30,
            ..Pending::default()
        };
        pending.batch.extend_from_slice(b"{\"version\":2}\n");
        assert!(pending.check(0.5).is_ok());
        append_text(&mut pending, b'o', 0.5, |b| {
            escape_json(b, "0123456789", true)
        });
        // 14 header bytes + 21 of the open event: past 30.
        assert!(matches!(
            pending.check(0.6),
            Err(RecordingError::LimitReached { max_bytes: 30 })
        ));
        assert!(matches!(
            pending.check(0.7),
            Err(RecordingError::LimitReached { max_bytes: 30 })
        ));
        assert_eq!(
            String::from_utf8(pending.batch).unwrap(),
            "{\"version\":2}\n[0.5,\"o\",\"0123456789\"]\n\
             [0.6,\"m\",\"recording stopped: limit of 30 bytes reached\"]\n"
        );
    }
}
