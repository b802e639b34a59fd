//! Audit rows and their hash chain: each row holds the SHA-256 of the row
//! before it (`prev_hash`) and its own (`hash`, over every column and
//! `prev_hash`, see [`chain_hash`]); appends are serialised across
//! processes (SQLite `BEGIN IMMEDIATE`, PostgreSQL advisory lock) so the
//! chain never forks.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Backend, Store, StoreError, now_ms};

/// `prev_hash` of the first event: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// PostgreSQL advisory lock key held while appending (any fixed number).
const AUDIT_LOCK_KEY: i64 = 0x706f_7274_6375;

/// An audit event row, for reading back.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number, 1, 2, 3, ... without gaps.
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
    /// Hash of the previous row ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This row's hash ([`chain_hash`]).
    pub hash: String,
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

/// The newest event of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Its sequence number.
    pub event_id: i64,
    /// Its hash.
    pub event_hash: String,
}

/// A signed chain head as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SignedHead {
    /// Row id.
    pub id: i64,
    /// When it was signed, unix milliseconds (signed in version 2).
    pub at: i64,
    /// The signed event's sequence number.
    pub event_id: i64,
    /// The signed event's hash.
    pub event_hash: String,
    /// The signer's public key, OpenSSH format.
    pub public_key: String,
    /// SSHSIG armored signature (OpenSSH PROTOCOL.sshsig).
    pub signature: String,
    /// 1: the head alone was signed (before migration 0008); 2: a chained
    /// head (`seq`, `at`, `gateway`, `reason`, `prev_digest` are signed).
    pub version: i64,
    /// Place in the chain of heads, 1, 2, ... (version 2).
    pub seq: Option<i64>,
    /// The signing gateway's id (version 2).
    pub gateway: String,
    /// Why it was signed: `start` (the first head of a gateway process) or
    /// `interval` (version 2).
    pub reason: String,
    /// Digest of the head before it in the chain of heads (64 zeros for the
    /// first), see `crate::audit` (version 2).
    pub prev_digest: String,
}

/// A head to store (version 2): every field but the row id.
#[derive(Debug, Clone)]
pub struct NewSignedHead<'a> {
    /// When it was signed, unix milliseconds.
    pub at: i64,
    /// Place in the chain of heads.
    pub seq: i64,
    /// The signed event.
    pub head: &'a ChainHead,
    /// The signer's public key, OpenSSH format.
    pub public_key: &'a str,
    /// SSHSIG armored signature.
    pub signature: &'a str,
    /// The signing gateway's id.
    pub gateway: &'a str,
    /// `start` or `interval`.
    pub reason: &'a str,
    /// Digest of the head before it.
    pub prev_digest: &'a str,
}

/// Signing a head under the audit append lock ([`Store::begin_head_signing`]):
/// no event is appended and no other head signed until it is committed
/// ([`HeadSigning::insert`]) or dropped (rolled back).
pub struct HeadSigning {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// The newest head of the chain of heads, `None` when none is stored.
    pub last: Option<SignedHead>,
    /// The newest event, `None` for an empty log.
    pub head: Option<ChainHead>,
}

impl HeadSigning {
    /// Events with ids from `first` on, in order.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn events_from(&mut self, first: i64) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE id >= $1 ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(first)
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows.iter().map(audit_from_row).collect())
    }

    /// The head at place `seq` of the chain of heads, if stored.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn head_at(&mut self, seq: i64) -> Result<Option<SignedHead>, StoreError> {
        let sql = format!("SELECT {HEAD_COLUMNS} FROM audit_signatures WHERE seq = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(seq)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.as_ref().map(head_from_row))
    }

    /// Stores `new` and commits.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is stored then.
    pub async fn insert(mut self, new: &NewSignedHead<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_signatures (at, event_id, event_hash, public_key, signature, \
             version, seq, gateway, reason, prev_digest) \
             VALUES ($1, $2, $3, $4, $5, 2, $6, $7, $8, $9)",
        )
        .bind(new.at)
        .bind(new.head.event_id)
        .bind(&new.head.event_hash)
        .bind(new.public_key)
        .bind(new.signature)
        .bind(new.seq)
        .bind(new.gateway)
        .bind(new.reason)
        .bind(new.prev_digest)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

const HEAD_COLUMNS: &str = "id, at, event_id, event_hash, public_key, signature, version, seq, \
     gateway, reason, prev_digest";

/// Legacy rows (no `seq`) first by id, then the chain of heads by `seq`.
const HEAD_ORDER: &str = "ORDER BY COALESCE(seq, 0), id";

fn head_from_row(r: &sqlx::any::AnyRow) -> SignedHead {
    SignedHead {
        id: r.get("id"),
        at: r.get("at"),
        event_id: r.get("event_id"),
        event_hash: r.get("event_hash"),
        public_key: r.get("public_key"),
        signature: r.get("signature"),
        version: r.get("version"),
        seq: r.get("seq"),
        gateway: r.get("gateway"),
        reason: r.get("reason"),
        prev_digest: r.get("prev_digest"),
    }
}

/// The chain hash of a row: lowercase hex SHA-256 of the JSON array
/// `[id, at, kind, outcome, session_id, principal, client_addr, detail,
/// prev_hash]` (JSON escaping makes the encoding unambiguous).
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    id: i64,
    at: i64,
    kind: &str,
    outcome: &str,
    session_id: Option<&str>,
    principal: Option<&str>,
    client_addr: Option<&str>,
    detail: &str,
    prev_hash: &str,
) -> String {
    let encoded = serde_json::json!([
        id,
        at,
        kind,
        outcome,
        session_id,
        principal,
        client_addr,
        detail,
        prev_hash
    ])
    .to_string();
    hex::encode(Sha256::digest(encoded.as_bytes()))
}

impl AuditRow {
    /// Recomputes this row's hash from its columns.
    pub fn computed_hash(&self) -> String {
        chain_hash(
            self.id,
            self.at,
            &self.kind,
            &self.outcome,
            self.session_id.as_deref(),
            self.principal.as_deref(),
            self.client_addr.as_deref(),
            &self.detail,
            &self.prev_hash,
        )
    }
}

const AUDIT_COLUMNS: &str =
    "id, at, kind, outcome, session_id, principal, client_addr, detail, prev_hash, hash";

fn audit_from_row(r: &sqlx::any::AnyRow) -> AuditRow {
    AuditRow {
        id: r.get("id"),
        at: r.get("at"),
        kind: r.get("kind"),
        outcome: r.get("outcome"),
        session_id: r.get("session_id"),
        principal: r.get("principal"),
        client_addr: r.get("client_addr"),
        detail: r.get("detail"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    }
}

impl Store {
    /// Appends an audit event at now, chained to the newest one; returns
    /// the row as written (sequence number, time, hashes).
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is written then.
    pub async fn append_audit(&self, e: &NewAuditRow<'_>) -> Result<AuditRow, StoreError> {
        let mut tx = self.begin_audit().await?;
        let row = append_in(&mut tx, e).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Inserts the `running` row of a new session and appends its audit
    /// event `e` in one transaction (one commit instead of two): both are
    /// durable before this returns, or neither is written.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is written then.
    pub async fn insert_session_audited(
        &self,
        s: &super::NewSession<'_>,
        e: &NewAuditRow<'_>,
    ) -> Result<AuditRow, StoreError> {
        let mut tx = self.begin_audit().await?;
        self.insert_session_query(s).execute(&mut *tx).await?;
        let row = append_in(&mut tx, e).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Closes session `id` ([`Store::end_session`]) and appends its audit
    /// event `e` in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is written then.
    pub async fn end_session_audited(
        &self,
        id: &str,
        end: &super::SessionEnd<'_>,
        e: &NewAuditRow<'_>,
    ) -> Result<AuditRow, StoreError> {
        let mut tx = self.begin_audit().await?;
        super::end_session_query(id, end).execute(&mut *tx).await?;
        let row = append_in(&mut tx, e).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// A transaction that holds the audit append lock (SQLite `BEGIN
    /// IMMEDIATE`, PostgreSQL advisory lock) until it ends.
    pub(super) async fn begin_audit(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(AUDIT_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                tx
            }
        })
    }

    /// Every audit event in sequence order.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_events(
        &self,
        session_id: Option<&str>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let rows = match session_id {
            Some(sid) => {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE session_id = $1 ORDER BY id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(sid)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(audit_from_row).collect())
    }

    /// The newest event, `None` for an empty log.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn chain_head(&self) -> Result<Option<ChainHead>, StoreError> {
        let row = sqlx::query("SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| ChainHead {
            event_id: r.get("id"),
            event_hash: r.get("hash"),
        }))
    }

    /// Takes the audit append lock and reads the newest head of the chain
    /// of heads and the newest event, to sign a new head.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn begin_head_signing(&self) -> Result<HeadSigning, StoreError> {
        let mut tx = self.begin_audit().await?;
        let sql = format!(
            "SELECT {HEAD_COLUMNS} FROM audit_signatures \
             ORDER BY COALESCE(seq, 0) DESC, id DESC LIMIT 1"
        );
        let last = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&mut *tx)
            .await?;
        let head = sqlx::query("SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        Ok(HeadSigning {
            tx,
            last: last.as_ref().map(head_from_row),
            head: head.map(|r| ChainHead {
                event_id: r.get("id"),
                event_hash: r.get("hash"),
            }),
        })
    }

    /// Every signed head: rows from before migration 0008 by id, then the
    /// chain of heads by `seq`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn signed_heads(&self) -> Result<Vec<SignedHead>, StoreError> {
        let sql = format!("SELECT {HEAD_COLUMNS} FROM audit_signatures {HEAD_ORDER}");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(head_from_row).collect())
    }
}

/// Appends `e` inside `tx` (which holds the append lock, see
/// [`Store::begin_audit`]).
pub(super) async fn append_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    e: &NewAuditRow<'_>,
) -> Result<AuditRow, StoreError> {
    let last = sqlx::query("SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (prev_id, prev_hash) = match last {
        Some(r) => (r.get::<i64, _>("id"), r.get::<String, _>("hash")),
        None => (0, GENESIS_HASH.to_string()),
    };
    let id = prev_id + 1;
    let at = now_ms();
    let hash = chain_hash(
        id,
        at,
        e.kind,
        e.outcome,
        e.session_id,
        e.principal,
        e.client_addr,
        e.detail,
        &prev_hash,
    );
    sqlx::query(
        "INSERT INTO audit_events (id, at, kind, outcome, session_id, principal, client_addr, \
             detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(at)
    .bind(e.kind)
    .bind(e.outcome)
    .bind(e.session_id)
    .bind(e.principal)
    .bind(e.client_addr)
    .bind(e.detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    Ok(AuditRow {
        id,
        at,
        kind: e.kind.to_string(),
        outcome: e.outcome.to_string(),
        session_id: e.session_id.map(str::to_string),
        principal: e.principal.map(str::to_string),
        client_addr: e.client_addr.map(str::to_string),
        detail: e.detail.to_string(),
        prev_hash,
        hash,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::tests::temp_store;

    fn row<'a>(kind: &'a str, sid: Option<&'a str>) -> NewAuditRow<'a> {
        NewAuditRow {
            kind,
            outcome: "info",
            session_id: sid,
            principal: None,
            client_addr: None,
            detail: "{}",
        }
    }

    #[tokio::test]
    async fn rows_are_chained_in_order_and_filter_by_session() {
        let (_dir, store) = temp_store().await;
        for (kind, sid) in [("a", Some("s1")), ("b", None), ("c", Some("s1"))] {
            store.append_audit(&row(kind, sid)).await.unwrap();
        }
        let all = store.audit_events(None).await.unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[0].prev_hash, GENESIS_HASH);
        for pair in all.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
        }
        for r in &all {
            assert_eq!(r.hash, r.computed_hash());
        }
        let s1 = store.audit_events(Some("s1")).await.unwrap();
        assert_eq!(
            s1.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        let head = store.chain_head().await.unwrap().unwrap();
        assert_eq!(head.event_id, 3);
        assert_eq!(head.event_hash, all[2].hash);
    }

    #[tokio::test]
    async fn concurrent_appends_never_fork_the_chain() {
        let (_dir, store) = temp_store().await;
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.append_audit(&row("x", None)).await.unwrap().id })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let all = store.audit_events(None).await.unwrap();
        assert_eq!(all.len(), 40);
        for (i, pair) in all.windows(2).enumerate() {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "fork at {i}");
            assert_eq!(pair[1].id, pair[0].id + 1);
        }
    }

    #[test]
    fn the_hash_covers_every_column() {
        let base = chain_hash(
            1,
            2,
            "k",
            "info",
            Some("s"),
            Some("p"),
            Some("a"),
            "{}",
            GENESIS_HASH,
        );
        assert_ne!(
            base,
            chain_hash(
                2,
                2,
                "k",
                "info",
                Some("s"),
                Some("p"),
                Some("a"),
                "{}",
                GENESIS_HASH
            )
        );
        assert_ne!(
            base,
            chain_hash(
                1,
                3,
                "k",
                "info",
                Some("s"),
                Some("p"),
                Some("a"),
                "{}",
                GENESIS_HASH
            )
        );
        assert_ne!(
            base,
            chain_hash(
                1,
                2,
                "k",
                "info",
                None,
                Some("p"),
                Some("a"),
                "{}",
                GENESIS_HASH
            )
        );
        assert_ne!(
            base,
            chain_hash(
                1,
                2,
                "k",
                "info",
                Some("s"),
                Some("p"),
                Some("a"),
                "{ }",
                GENESIS_HASH
            )
        );
        assert_ne!(
            base,
            chain_hash(
                1,
                2,
                "k",
                "info",
                Some("s"),
                Some("p"),
                Some("a"),
                "{}",
                "1"
            )
        );
    }
}
