//! The database: an sqlx pool on SQLite (default, one file) or PostgreSQL
//! (shared by several gateways), its migrations (`migrations/sqlite`,
//! `migrations/postgres`) and every query the gateway makes.
//!
//! Owns SQL only; it knows nothing of SSH or containers. Times are stored as
//! unix milliseconds (UTC), ids as text. Queries use `$N` placeholders, which
//! both backends accept, and only the types sqlx's `Any` driver carries
//! (integers and text); where the SQL differs, [`Backend`] picks it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, Pool};

mod approvals;
mod bindings;
mod container_actions;
mod decisions;
mod fleet;
mod grants;
mod webhooks;

pub use approvals::ApprovalRecord;
pub use bindings::{KeyBinding, NewKeyBinding, RefreshedBinding};
pub use decisions::RequestDecision;
pub use fleet::{
    ContainerConflict, FleetContainer, InventoryPush, NodeRecord, TokenRefusal, WitnessRecord,
    notify_fleet_query,
};
pub use grants::{AccessRequestRecord, NewAccessRequest, RequestScope, labels_text};

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

/// Which database the store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// The backend of a `sqlite:` or `postgres:`/`postgresql:` URL.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The gateway's database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool<Any>,
    pub(crate) backend: Backend,
    gateway_id: String,
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
    /// Why an admin asked to end it, when one did.
    pub kill_reason: Option<String>,
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
    /// The grant the session depends on, when it does (issue 7).
    pub grant_id: Option<&'a str>,
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

pub(crate) const SESSION_COLUMNS: &str = "id, principal, email, container, login, command, \
     client_addr, started_at, ended_at, status, exit_status, exit_signal, recording_path, \
     recording_bytes, recording_sha256, kill_reason";

/// The `UPDATE` of [`Store::end_session`], to run on any executor.
pub(crate) fn end_session_query<'q>(
    id: &'q str,
    end: &SessionEnd<'q>,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "UPDATE sessions SET ended_at = $1, status = $2, exit_status = $3, exit_signal = $4, \
         recording_bytes = $5, recording_sha256 = $6 WHERE id = $7",
    )
    .bind(now_ms())
    .bind(end.status)
    .bind(end.exit_status)
    .bind(end.exit_signal)
    .bind(end.recording_bytes)
    .bind(end.recording_sha256)
    .bind(id)
}

/// True when `_sqlx_migrations` lists exactly the migrations of `migrator`
/// (same versions, same checksums, all successful), so `run` has nothing to
/// do; any doubt (no table yet, a failed or unknown migration, a query
/// error) is `false` and the migrator runs and decides as usual.
async fn schema_is_current(pool: &Pool<Any>, migrator: &sqlx::migrate::Migrator) -> bool {
    let Ok(rows) = sqlx::query(
        "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    else {
        return false;
    };
    let applied: Option<Vec<(i64, Vec<u8>)>> = rows
        .iter()
        .map(|r| Some((r.try_get("version").ok()?, r.try_get("checksum").ok()?)))
        .collect();
    let wanted: Vec<(i64, Vec<u8>)> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect();
    applied.is_some_and(|a| a == wanted)
}

/// Now as unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

mod audit;
mod console;
mod inventory;
mod locks;
mod review;
mod transcripts;
mod uploads;

pub use audit::{
    AuditRow, ChainHead, GENESIS_HASH, HeadSigning, NewAuditRow, NewSignedHead, SignedHead,
    chain_hash,
};
pub use console::{AuditFilter, LoginStateRecord, SshWebLoginRecord, WebSessionRecord};
pub use inventory::LastSession;
pub use locks::{LockRecord, LockSubject, LockTarget, NewLock};
pub use review::SessionFilter;
pub use transcripts::TranscriptHit;
pub use uploads::UploadRecord;

impl Store {
    /// Opens the database at `url` (`sqlite://PATH?mode=rwc` creates the
    /// file; `postgres://...`) and applies the backend's migrations.
    ///
    /// # Errors
    /// [`StoreError::Open`] or [`StoreError::Migrate`].
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| {
            StoreError::Open(sqlx::Error::Configuration(
                "database.url must start with sqlite: or postgres:".into(),
            ))
        })?;
        let options = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10));
        let options = match backend {
            Backend::Sqlite => options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    use sqlx::Executor;
                    // One round trip to the connection's thread for all three.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                         PRAGMA synchronous = NORMAL;",
                    )
                    .await?;
                    Ok(())
                })
            }),
            Backend::Postgres => options,
        };
        // SQLite files are created when missing unless the URL says otherwise.
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let pool = options.connect(&url).await.map_err(StoreError::Open)?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        if !schema_is_current(&pool, &migrator).await {
            migrator.run(&pool).await.map_err(StoreError::Migrate)?;
        }
        Ok(Store {
            pool,
            backend,
            gateway_id: String::new(),
        })
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
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
        self.insert_session_query(s).execute(&self.pool).await?;
        Ok(())
    }

    /// The `INSERT` of [`Store::insert_session`], to run on any executor.
    pub(crate) fn insert_session_query<'q>(
        &self,
        s: &NewSession<'q>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
        sqlx::query(
            "INSERT INTO sessions (id, principal, email, container, login, command, client_addr, \
             started_at, status, recording_path, gateway, grant_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, $10, $11)",
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
        .bind(self.gateway_id.clone())
        .bind(s.grant_id)
    }

    /// Closes a session row: end time now, status, exit and recording digest.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn end_session(&self, id: &str, end: &SessionEnd<'_>) -> Result<(), StoreError> {
        end_session_query(id, end).execute(&self.pool).await?;
        Ok(())
    }

    /// Names the gateway this store writes sessions for (config
    /// `gateway_id`); sessions inserted later carry it.
    pub fn for_gateway(mut self, gateway_id: &str) -> Store {
        self.gateway_id = gateway_id.to_string();
        self
    }

    /// The gateway id given to [`Store::for_gateway`] (`""` when none
    /// was): where this gateway's containers are, for grants (issue 12).
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Sessions of this gateway still marked `running`: left by a gateway
    /// process that stopped without closing them.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn running_sessions_of_gateway(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE status = 'running' AND gateway = $1 \
             ORDER BY started_at"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.gateway_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(session_from_row).collect())
    }

    /// Marks a session `interrupted`, with its recording's size and digest as
    /// found.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn mark_interrupted(
        &self,
        id: &str,
        recording_bytes: i64,
        recording_sha256: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions SET status = 'interrupted', ended_at = $1, recording_bytes = $2, \
             recording_sha256 = $3 WHERE id = $4 AND status = 'running'",
        )
        .bind(now_ms())
        .bind(recording_bytes)
        .bind(recording_sha256)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest sessions first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn list_sessions(&self, limit: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let sql =
            format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY started_at DESC, id LIMIT $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(session_from_row).collect())
    }

    /// Ids of the sessions that depended on grant `grant_id`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn sessions_of_grant(&self, grant_id: &str) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT id FROM sessions WHERE grant_id = $1 ORDER BY started_at, id")
                .bind(grant_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>("id")).collect())
    }

    /// One session by id.
    ///
    /// # Errors
    /// [`StoreError::SessionNotFound`] or [`StoreError::Query`].
    pub async fn session(&self, id: &str) -> Result<SessionRecord, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(session_from_row)
            .ok_or_else(|| StoreError::SessionNotFound(id.to_string()))
    }
}

pub(crate) fn session_from_row(r: &AnyRow) -> SessionRecord {
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
        kill_reason: r.get("kill_reason"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
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
                grant_id: None,
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
    async fn only_this_gateways_running_sessions_are_interrupted() {
        let (_dir, store) = temp_store().await;
        let mine = store.clone().for_gateway("gw-a");
        let theirs = store.clone().for_gateway("gw-b");
        for (s, id) in [(&mine, "a"), (&mine, "b"), (&theirs, "c")] {
            s.insert_session(&NewSession {
                id,
                principal: "p",
                email: None,
                container: "c",
                login: "l",
                command: None,
                client_addr: None,
                recording_path: "r",
                grant_id: None,
            })
            .await
            .unwrap();
        }
        let ids: Vec<String> = mine
            .running_sessions_of_gateway()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        mine.mark_interrupted("a", 10, "ff").await.unwrap();
        let a = store.session("a").await.unwrap();
        assert_eq!(a.status, "interrupted");
        assert_eq!(a.recording_sha256.as_deref(), Some("ff"));
        assert_eq!(store.session("c").await.unwrap().status, "running");
    }
}
