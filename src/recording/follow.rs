//! Following a recording while it is written ([`Follower`], for `sessions
//! watch`) and replaying one in a terminal with its timing ([`play`],
//! [`play_from`] for `sessions play --at`).
//!
//! Owns reading for display only; it never writes a recording and never
//! trusts a line it cannot parse (it skips it).

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{Event, RecordingError};

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
    /// (empty when none). The header, input, resize and marker events are
    /// skipped,
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
    play_from(events, 0.0, speed, idle_limit, out).await
}

/// Replays `events` from `at` seconds on (`sessions play --at`, a search
/// hit's or a marker's offset): the output before `at` is written at once,
/// so the terminal shows what the session's screen showed then, and the
/// rest with its timing as [`play`] does.
///
/// # Errors
/// I/O errors of `out`.
pub async fn play_from<W: tokio::io::AsyncWrite + Unpin>(
    events: &[Event],
    at: f64,
    speed: f64,
    idle_limit: Option<f64>,
    out: &mut W,
) -> std::io::Result<()> {
    let speed = if speed > 0.0 { speed } else { 1.0 };
    let at = if at > 0.0 { at } else { 0.0 };
    let split = events.partition_point(|e| e.time < at);
    let (before, after) = events.split_at(split);
    let earlier: String = before
        .iter()
        .filter(|e| e.code == "o")
        .map(|e| e.data.as_str())
        .collect();
    if !earlier.is_empty() {
        out.write_all(earlier.as_bytes()).await?;
        out.flush().await?;
    }
    let mut last = at;
    for event in after {
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
    use std::io::Write as _;

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

    #[tokio::test]
    async fn play_from_writes_the_past_at_once_then_keeps_time() {
        let ev = |time: f64, code: &str, data: &str| Event {
            time,
            code: code.into(),
            data: data.into(),
        };
        let events = vec![
            ev(1.0, "o", "a"),
            ev(2.0, "m", "exec: x"),
            ev(5.0, "o", "b"),
            ev(10.0, "o", "c"),
            ev(11.0, "o", "d"),
        ];
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        play_from(&events, 5.0, 100.0, None, &mut out)
            .await
            .unwrap();
        assert_eq!(out, b"abcd");
        // From 5 s to 11 s at a hundred times the speed: 60 ms, never the
        // 10 s before 5 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(60), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        play_from(&events, 100.0, 1.0, None, &mut out)
            .await
            .unwrap();
        assert_eq!(out, b"abcd");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
