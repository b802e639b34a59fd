//! The database: an sqlx SQLite pool, its migrations (`migrations/sqlite`)
//! and every query the gateway makes.
//!
//! Owns SQL only; it knows nothing of SSH or containers. Times are stored as
//! unix milliseconds (UTC), ids as text.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

mod bindings;

pub use bindings::{KeyBinding, NewKeyBinding, RefreshedBinding};

/// A failed database step.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open database: {0}")]
    Open(#[source] sqlx::Error),
    /// A migration failed.
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// No session has this id.
    #[error("no session with id {0}")]
    SessionNotFound(String),
}

/// The gateway's database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

/// A session as stored, for `sessions list` and `sessions play`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id (UUID v4 text).
    pub id: String,
    /// The principal's subject.
    pub principal: String,
    /// The principal's email, when the ID token carried one.
    pub email: Option<String>,
    /// Target container name.
    pub container: String,
    /// Login inside the container.
    pub login: String,
    /// The command for exec sessions; `None` for a shell.
    pub command: Option<String>,
    /// Client address `ip:port`.
    pub client_addr: Option<String>,
    /// Start, unix milliseconds.
    pub started_at: i64,
    /// End, unix milliseconds; `None` while running.
    pub ended_at: Option<i64>,
    /// `running`, `ended`, `failed` or `interrupted`.
    pub status: String,
    /// Exit code, when the process exited normally.
    pub exit_status: Option<i64>,
    /// Signal name, when the process was killed by one.
    pub exit_signal: Option<String>,
    /// Path of the asciicast v2 file.
    pub recording_path: String,
    /// Size of the recording in bytes, set at session end.
    pub recording_bytes: Option<i64>,
    /// Lowercase hex SHA-256 of the recording, set at session end.
    pub recording_sha256: Option<String>,
}

/// What is known when a session starts.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// Session id.
    pub id: &'a str,
    /// The principal's subject.
    pub principal: &'a str,
    /// The principal's email.
    pub email: Option<&'a str>,
    /// Target container.
    pub container: &'a str,
    /// Login inside the container.
    pub login: &'a str,
    /// Command, for exec sessions.
    pub command: Option<&'a str>,
    /// Client address.
    pub client_addr: Option<&'a str>,
    /// Recording path.
    pub recording_path: &'a str,
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct SessionEnd<'a> {
    /// `ended` or `failed`.
    pub status: &'a str,
    /// Exit code.
    pub exit_status: Option<i64>,
    /// Signal name (`TERM`, `KILL`, ...).
    pub exit_signal: Option<&'a str>,
    /// Recording size in bytes.
    pub recording_bytes: i64,
    /// Recording SHA-256, lowercase hex.
    pub recording_sha256: &'a str,
}

/// An audit event row, for reading back.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Event kind, e.g. `authentication`.
    pub kind: String,
    /// `success`, `failure`, `allow`, `deny` or `info`.
    pub outcome: String,
    /// Session id, when the event belongs to one.
    pub session_id: Option<String>,
    /// Principal subject, when known.
    pub principal: Option<String>,
    /// Client address, when known.
    pub client_addr: Option<String>,
    /// JSON object with the event's details.
    pub detail: String,
}

/// An audit event to append.
#[derive(Debug, Clone)]
pub struct NewAuditRow<'a> {
    /// Event kind.
    pub kind: &'a str,
    /// Outcome.
    pub outcome: &'a str,
    /// Session id.
    pub session_id: Option<&'a str>,
    /// Principal subject.
    pub principal: Option<&'a str>,
    /// Client address.
    pub client_addr: Option<&'a str>,
    /// JSON object text.
    pub detail: &'a str,
}

const SESSION_COLUMNS: &str = "id, principal, email, container, login, command, client_addr, \
     started_at, ended_at, status, exit_status, exit_signal, recording_path, recording_bytes, \
     recording_sha256";

/// Now as unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `url` and applies
    /// the migrations in `migrations/sqlite`.
    ///
    /// # Errors
    /// [`StoreError::Open`] or [`StoreError::Migrate`].
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Open)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(StoreError::Open)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(Store { pool })
    }

    /// Closes the pool, waiting for in-flight queries.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Inserts a `running` session row started now.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_session(&self, s: &NewSession<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, principal, email, container, login, command, client_addr, \
             started_at, status, recording_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
        )
        .bind(s.id)
        .bind(s.principal)
        .bind(s.email)
        .bind(s.container)
        .bind(s.login)
        .bind(s.command)
        .bind(s.client_addr)
        .bind(now_ms())
        .bind(s.recording_path)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes a session row: end time now, status, exit and recording digest.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn end_session(&self, id: &str, end: &SessionEnd<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions SET ended_at = ?, status = ?, exit_status = ?, exit_signal = ?, \
             recording_bytes = ?, recording_sha256 = ? WHERE id = ?",
        )
        .bind(now_ms())
        .bind(end.status)
        .bind(end.exit_status)
        .bind(end.exit_signal)
        .bind(end.recording_bytes)
        .bind(end.recording_sha256)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks sessions still `running` (left by a gateway that stopped without
    /// closing them) as `interrupted`; returns their ids.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn interrupt_running_sessions(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "UPDATE sessions SET status = 'interrupted', ended_at = ? WHERE status = 'running' \
             RETURNING id",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>("id")).collect())
    }

    /// The newest sessions first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn list_sessions(&self, limit: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let sql =
            format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY started_at DESC, id LIMIT ?");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(session_from_row).collect())
    }

    /// One session by id.
    ///
    /// # Errors
    /// [`StoreError::SessionNotFound`] or [`StoreError::Query`].
    pub async fn session(&self, id: &str) -> Result<SessionRecord, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(session_from_row)
            .ok_or_else(|| StoreError::SessionNotFound(id.to_string()))
    }

    /// Appends an audit event at now; returns its sequence number.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn append_audit(&self, e: &NewAuditRow<'_>) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO audit_events (at, kind, outcome, session_id, principal, client_addr, \
             detail) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(now_ms())
        .bind(e.kind)
        .bind(e.outcome)
        .bind(e.session_id)
        .bind(e.principal)
        .bind(e.client_addr)
        .bind(e.detail)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64, _>("id"))
    }

    /// Audit events in order, optionally only those of one session.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_events(
        &self,
        session_id: Option<&str>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, outcome, session_id, principal, client_addr, detail \
             FROM audit_events WHERE (? IS NULL OR session_id = ?) ORDER BY id",
        )
        .bind(session_id)
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get("id"),
                at: r.get("at"),
                kind: r.get("kind"),
                outcome: r.get("outcome"),
                session_id: r.get("session_id"),
                principal: r.get("principal"),
                client_addr: r.get("client_addr"),
                detail: r.get("detail"),
            })
            .collect())
    }
}

fn session_from_row(r: &sqlx::sqlite::SqliteRow) -> SessionRecord {
    SessionRecord {
        id: r.get("id"),
        principal: r.get("principal"),
        email: r.get("email"),
        container: r.get("container"),
        login: r.get("login"),
        command: r.get("command"),
        client_addr: r.get("client_addr"),
        started_at: r.get("started_at"),
        ended_at: r.get("ended_at"),
        status: r.get("status"),
        exit_status: r.get("exit_status"),
        exit_signal: r.get("exit_signal"),
        recording_path: r.get("recording_path"),
        recording_bytes: r.get("recording_bytes"),
        recording_sha256: r.get("recording_sha256"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn session_round_trip() {
        let (_dir, store) = temp_store().await;
        store
            .insert_session(&NewSession {
                id: "s1",
                principal: "alice",
                email: Some("alice@example.com"),
                container: "web1",
                login: "root",
                command: Some("true"),
                client_addr: Some("127.0.0.1:5555"),
                recording_path: "/x/s1.cast",
            })
            .await
            .unwrap();
        let running = store.session("s1").await.unwrap();
        assert_eq!(running.status, "running");
        assert_eq!(running.ended_at, None);
        store
            .end_session(
                "s1",
                &SessionEnd {
                    status: "ended",
                    exit_status: Some(7),
                    exit_signal: None,
                    recording_bytes: 123,
                    recording_sha256: "ab",
                },
            )
            .await
            .unwrap();
        let s = store.session("s1").await.unwrap();
        assert_eq!(s.status, "ended");
        assert_eq!(s.exit_status, Some(7));
        assert_eq!(s.recording_bytes, Some(123));
        assert_eq!(s.recording_sha256.as_deref(), Some("ab"));
        assert!(s.ended_at.unwrap() >= s.started_at);
        assert_eq!(store.list_sessions(10).await.unwrap(), vec![s]);
        assert!(matches!(
            store.session("nope").await,
            Err(StoreError::SessionNotFound(_))
        ));
    }

    #[tokio::test]
    async fn running_sessions_become_interrupted() {
        let (_dir, store) = temp_store().await;
        for id in ["a", "b"] {
            store
                .insert_session(&NewSession {
                    id,
                    principal: "p",
                    email: None,
                    container: "c",
                    login: "l",
                    command: None,
                    client_addr: None,
                    recording_path: "r",
                })
                .await
                .unwrap();
        }
        let mut ids = store.interrupt_running_sessions().await.unwrap();
        ids.sort();
        assert_eq!(ids, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(store.session("a").await.unwrap().status, "interrupted");
        assert!(store.interrupt_running_sessions().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn audit_rows_keep_order_and_filter_by_session() {
        let (_dir, store) = temp_store().await;
        for (kind, sid) in [("a", Some("s1")), ("b", None), ("c", Some("s1"))] {
            store
                .append_audit(&NewAuditRow {
                    kind,
                    outcome: "info",
                    session_id: sid,
                    principal: None,
                    client_addr: None,
                    detail: "{}",
                })
                .await
                .unwrap();
        }
        let all: Vec<_> = store.audit_events(None).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let s1: Vec<_> = store.audit_events(Some("s1")).await.unwrap();
        assert_eq!(
            s1.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
    }
}
