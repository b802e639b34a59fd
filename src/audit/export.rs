//! Audit events as JSON lines for a SIEM (config `audit.export`: a file
//! path, appended to, or `-` for stdout), written after the event is in the
//! database; the signed chain heads go to the same file as they are made
//! (one anchor of the chain outside the database, see `anchor.rs`). A
//! failed export never loses or refuses an event: the database is the
//! record.
//!
//! # Schema (version 1, stable)
//!
//! One JSON object per line, UTF-8, with exactly these keys:
//!
//! | key | type | meaning |
//! | --- | --- | --- |
//! | `schema` | string | always `"portcullis.audit.v1"` |
//! | `id` | integer | sequence number in the chain (1, 2, ...) |
//! | `time` | string | RFC 3339 UTC time with milliseconds |
//! | `time_ms` | integer | the same as unix milliseconds |
//! | `kind` | string | `authentication`, `target`, `decision`, `session_start`, `session_end`, `session_control`, `recording`, `key_binding`, ... |
//! | `outcome` | string | `success`, `failure`, `allow`, `deny` or `info` |
//! | `session_id` | string or null | the session the event belongs to |
//! | `principal` | string or null | who (subject, or `host:USER` for host operators) |
//! | `client_addr` | string or null | `ip:port` of the SSH client |
//! | `detail` | object | the event's fields (see `AuditEvent` in `src/audit/mod.rs`) |
//! | `prev_hash` | string | chain hash of the event before (hex SHA-256) |
//! | `hash` | string | this event's chain hash (hex SHA-256) |
//!
//! Signed heads are lines with `schema` `"portcullis.audit-head.v1"` and the
//! keys of `AnchoredHead` (`src/audit/head.rs`): `version`, `seq`, `at`,
//! `time`, `gateway`, `event_id`, `event_hash`, `reason`, `prev_digest`,
//! `public_key`, `signature`. A consumer that wants events only keeps the
//! lines whose `schema` is `portcullis.audit.v1`.

use std::io::Write;
use std::sync::Mutex;

use crate::store::AuditRow;

/// Where exported lines go.
pub struct Export {
    sink: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Export")
    }
}

impl Export {
    /// Opens `target`: `-` is stdout, anything else a file opened for
    /// appending (created with mode 0600).
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(target: &str) -> std::io::Result<Export> {
        let sink: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(target)?,
            )
        };
        Ok(Export {
            sink: Mutex::new(sink),
        })
    }

    /// Writes `row` as one line (one `write` call, so lines never interleave
    /// in an `O_APPEND` file).
    ///
    /// # Errors
    /// The write fails.
    pub fn write(&self, row: &AuditRow) -> std::io::Result<()> {
        self.write_value(&line_of(row))
    }

    /// Writes `value` as one line (one `write` call).
    ///
    /// # Errors
    /// The write fails.
    pub fn write_value(&self, value: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| std::io::Error::other("export lock poisoned"))?;
        sink.write_all(&line)?;
        sink.flush()
    }
}

/// `ms` (unix milliseconds) as RFC 3339 UTC with milliseconds, e.g.
/// `2026-12-01T07:48:14.123Z`; empty when out of range.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// The exported object of `row` (schema above).
pub fn line_of(row: &AuditRow) -> serde_json::Value {
    let detail: serde_json::Value =
        serde_json::from_str(&row.detail).unwrap_or_else(|_| serde_json::json!({}));
    serde_json::json!({
        "schema": EVENT_SCHEMA,
        "id": row.id,
        "time": rfc3339_ms(row.at),
        "time_ms": row.at,
        "kind": row.kind,
        "outcome": row.outcome,
        "session_id": row.session_id,
        "principal": row.principal,
        "client_addr": row.client_addr,
        "detail": detail,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    })
}

/// `schema` of an exported event line.
pub const EVENT_SCHEMA: &str = "portcullis.audit.v1";

/// The row of an exported event line, `None` when `value` is not one.
/// `detail` is re-serialised compactly, as [`crate::audit::AuditLog`]
/// writes it, so the chain hash can be recomputed.
pub fn row_of(value: &serde_json::Value) -> Option<AuditRow> {
    if value.get("schema")?.as_str()? != EVENT_SCHEMA {
        return None;
    }
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    Some(AuditRow {
        id: value.get("id")?.as_i64()?,
        at: value.get("time_ms")?.as_i64()?,
        kind: text("kind")?,
        outcome: text("outcome")?,
        session_id: text("session_id"),
        principal: text("principal"),
        client_addr: text("client_addr"),
        detail: value.get("detail")?.to_string(),
        prev_hash: text("prev_hash")?,
        hash: text("hash")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn lines_follow_the_schema() {
        let row = AuditRow {
            id: 7,
            at: 1_796_111_294_123,
            kind: "decision".into(),
            outcome: "deny".into(),
            session_id: None,
            principal: Some("alice".into()),
            client_addr: Some("127.0.0.1:5".into()),
            detail: "{\"login\":\"root\"}".into(),
            prev_hash: "aa".into(),
            hash: "bb".into(),
        };
        let v = line_of(&row);
        assert_eq!(v["schema"], "portcullis.audit.v1");
        assert_eq!(v["time"], "2026-12-01T07:48:14.123Z");
        assert_eq!(v["detail"]["login"], "root");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 12);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let export = Export::open(path.to_str().unwrap()).unwrap();
        export.write(&row).unwrap();
        export.write(&row).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let back: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(back, v);
        assert_eq!(row_of(&back).unwrap(), row);
    }
}
