//! Reading recordings: parsing asciicast v2, digests, and the text lines
//! reviewers search (output with escape sequences stripped, and marker
//! labels), each with its time offset.
//!
//! Owns reading only; it never writes or deletes a recording. Works on
//! bytes as well as files, so a web handler can serve and parse a `.cast`
//! fetched from anywhere.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Digest256, Event, Header, RecordingError};

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

/// Lowercase hex SHA-256 and size of the file at `path`, read in 1 MiB
/// pieces (a recording may be gigabytes).
///
/// # Errors
/// [`RecordingError::Read`].
pub fn digest_file(path: &Path) -> Result<Digest256, RecordingError> {
    use std::io::Read as _;
    let failed = |source| RecordingError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Digest256 {
        bytes,
        sha256: hex::encode(hasher.finalize()),
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

/// SHA-256 and size of a recording held in memory.
pub fn digest_bytes(bytes: &[u8]) -> Digest256 {
    Digest256 {
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        output_bytes: 0,
    }
}

/// The markers (`m` events) of a recording: `(seconds, label)` in order.
pub fn markers(events: &[Event]) -> Vec<(f64, String)> {
    events
        .iter()
        .filter(|e| e.code == "m")
        .map(|e| (e.time, e.data.clone()))
        .collect()
}

/// What `sessions search` indexes: the transcript lines
/// ([`transcript_lines`]) and the marker labels ([`markers`]), merged in
/// time order (a marker before output of the same time), so a search for
/// an exec command or a file name finds the moment it happened.
pub fn search_lines(events: &[Event]) -> Vec<(f64, String)> {
    let text = transcript_lines(events);
    let marks = markers(events);
    let mut merged = Vec::with_capacity(text.len() + marks.len());
    let (mut t, mut m) = (text.into_iter().peekable(), marks.into_iter().peekable());
    loop {
        let take_marker = match (t.peek(), m.peek()) {
            (Some(line), Some(mark)) => mark.0 <= line.0,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let next = if take_marker { m.next() } else { t.next() };
        match next {
            Some(line) => merged.push(line),
            None => break,
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

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

    #[test]
    fn markers_are_read_and_searched_in_time_order() {
        let text = "{\"version\":2,\"width\":80,\"height\":24}\n\
                    [0.0,\"m\",\"exec: ls /tmp\"]\n\
                    [0.1,\"o\",\"a\\r\\nb\\r\\n\"]\n\
                    [0.2,\"m\",\"download: /etc/hosts (12 bytes)\"]\n\
                    [0.3,\"o\",\"c\\r\\n\"]\n";
        let (_, events) = parse(text).unwrap();
        assert_eq!(
            markers(&events),
            [
                (0.0, "exec: ls /tmp".to_string()),
                (0.2, "download: /etc/hosts (12 bytes)".to_string())
            ]
        );
        // Output lines are unchanged by markers (export --format txt).
        assert_eq!(
            transcript_lines(&events),
            [
                (0.1, "a".to_string()),
                (0.1, "b".to_string()),
                (0.3, "c".to_string())
            ]
        );
        assert_eq!(
            search_lines(&events),
            [
                (0.0, "exec: ls /tmp".to_string()),
                (0.1, "a".to_string()),
                (0.1, "b".to_string()),
                (0.2, "download: /etc/hosts (12 bytes)".to_string()),
                (0.3, "c".to_string())
            ]
        );
        let digest = digest_bytes(text.as_bytes());
        assert_eq!(digest.bytes, text.len() as u64);
        assert_eq!(digest.sha256, hex::encode(Sha256::digest(text.as_bytes())));
    }
}
