//! Queries on the fleet tables (migration `0015_fleet.sql`): the edge CA's
//! public key, nodes and their join tokens, tunnels, the fleet's
//! containers and the edge's witness of relayed sessions.
//!
//! SQL only: what a row means and who may change it is `crate::fleet`'s.
//! Join tokens are stored as the SHA-256 of the token, never the token.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, now_ms};

/// A node as stored, with what `nodes list` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRecord {
    /// The node's name.
    pub name: String,
    /// `pending`, `active` or `removed`.
    pub state: String,
    /// `SHA256:...` of the node's key, once joined.
    pub key_fingerprint: Option<String>,
    /// The version the node last reported.
    pub version: Option<String>,
    /// Unix ms of the `nodes add`.
    pub created_at: i64,
    /// Unix ms of the join.
    pub joined_at: Option<i64>,
    /// Unix ms of the removal.
    pub removed_at: Option<i64>,
    /// Unix ms of the last heartbeat.
    pub last_heartbeat: Option<i64>,
    /// Unix seconds: end of the node's current host certificate.
    pub cert_valid_before: Option<i64>,
    /// Containers the node reported.
    pub containers: i64,
    /// Edges with a tunnel from this node seen within the freshness window.
    pub edges: Vec<String>,
}

/// One container as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetContainer {
    /// Container name (unique across the fleet).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// `RUNNING`, `STOPPED`, ... as the runtime says.
    pub state: String,
    /// Labels as a JSON object text.
    pub labels: String,
    /// Who answers for it, as the node's inventory says (`None`: unowned).
    pub owner: Option<String>,
    /// What it is for, as the node's inventory says.
    pub purpose: Option<String>,
    /// The node's inventory backend (`lxc`, `process`, `incus`).
    pub backend: String,
    /// Unix ms of the node's last report.
    pub updated_at: i64,
}

/// One container in a node's heartbeat ([`Store::push_inventory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryPush {
    /// Container name.
    pub name: String,
    /// `RUNNING`, `STOPPED`, ... as the runtime says.
    pub state: String,
    /// Labels as a JSON object text.
    pub labels: String,
    /// Its owner, when the inventory names one.
    pub owner: Option<String>,
    /// Its purpose, when the inventory names one.
    pub purpose: Option<String>,
    /// The inventory backend that found it.
    pub backend: String,
}

/// A container name another node already owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConflict {
    /// The container name.
    pub name: String,
    /// The node that owns it.
    pub owner: String,
}

/// Why a join token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token.
    Unknown,
    /// It was issued for another node name.
    OtherNode,
    /// Past its expiry.
    Expired,
    /// Already used (a replay).
    Used,
    /// The node was removed since.
    NodeRemoved,
}

/// The edge's witness of one relayed session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WitnessRecord {
    /// The session id (the one the certificate named).
    pub session_id: String,
    /// The edge that relayed it.
    pub edge: String,
    /// The node that ran it.
    pub node: String,
    /// Output bytes relayed (data and extended data).
    pub output_bytes: i64,
    /// SHA-256 of those bytes in relay order, lowercase hex.
    pub output_sha256: String,
    /// Unix ms.
    pub ended_at: i64,
}

fn node_from_row(r: &AnyRow) -> NodeRecord {
    NodeRecord {
        name: r.get("name"),
        state: r.get("state"),
        key_fingerprint: r.get("key_fingerprint"),
        version: r.get("version"),
        created_at: r.get("created_at"),
        joined_at: r.get("joined_at"),
        removed_at: r.get("removed_at"),
        last_heartbeat: r.get("last_heartbeat"),
        cert_valid_before: r.get("cert_valid_before"),
        containers: 0,
        edges: Vec::new(),
    }
}

const NODE_COLUMNS: &str = "name, state, key_fingerprint, version, created_at, joined_at, \
     removed_at, last_heartbeat, cert_valid_before";

impl Store {
    /// The edge CA's public key and fingerprint, when one was published.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn fleet_ca(&self) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT public_key, fingerprint FROM fleet_ca WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get("public_key"), r.get("fingerprint"))))
    }

    /// Publishes the CA public key unless one is there; returns the one
    /// stored afterwards (another edge may have won the race).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn publish_fleet_ca(
        &self,
        public_key: &str,
        fingerprint: &str,
        created_by: &str,
    ) -> Result<(String, String), StoreError> {
        sqlx::query(
            "INSERT INTO fleet_ca (id, public_key, fingerprint, created_at, created_by) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(public_key)
        .bind(fingerprint)
        .bind(now_ms())
        .bind(created_by)
        .execute(&self.pool)
        .await?;
        self.fleet_ca()
            .await?
            .ok_or_else(|| StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// Issues a join token for `node` (stored as `token_sha256`), creating
    /// the node as `pending` or re-opening a removed one, and voiding its
    /// earlier unused tokens. Returns false (nothing written) when the node
    /// is `active`: it must be removed first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn add_join_token(
        &self,
        node: &str,
        token_sha256: &str,
        expires_at: i64,
        created_by: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let state: Option<String> = sqlx::query("SELECT state FROM fleet_nodes WHERE name = $1")
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get("state"));
        match state.as_deref() {
            Some("active") => return Ok(false),
            Some(_) => {
                sqlx::query(
                    "UPDATE fleet_nodes SET state = 'pending', key_fingerprint = NULL, \
                     removed_at = NULL, joined_at = NULL WHERE name = $1",
                )
                .bind(node)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO fleet_nodes (name, state, created_at) VALUES ($1, 'pending', $2)",
                )
                .bind(node)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "UPDATE fleet_join_tokens SET used_at = $1 WHERE node = $2 AND used_at IS NULL",
        )
        .bind(now)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO fleet_join_tokens (token_sha256, node, created_at, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_sha256)
        .bind(node)
        .bind(now)
        .bind(expires_at)
        .bind(created_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Uses the join token `token_sha256` for `node` at most once: when it
    /// is unused, unexpired, for this node and the node is `pending`, marks
    /// it used and the node `active` with `key_fingerprint`, in one
    /// transaction. Otherwise says why and writes nothing.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn use_join_token(
        &self,
        node: &str,
        token_sha256: &str,
        key_fingerprint: &str,
        cert_valid_before: i64,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE fleet_join_tokens SET used_at = $1 WHERE token_sha256 = $2 AND node = $3 \
             AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(token_sha256)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            drop(tx);
            let row = sqlx::query(
                "SELECT node, expires_at, used_at FROM fleet_join_tokens WHERE token_sha256 = $1",
            )
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await?;
            let refusal = match row {
                None => TokenRefusal::Unknown,
                Some(r) if r.get::<String, _>("node") != node => TokenRefusal::OtherNode,
                Some(r) if r.get::<Option<i64>, _>("used_at").is_some() => TokenRefusal::Used,
                Some(_) => TokenRefusal::Expired,
            };
            return Ok(Err(refusal));
        }
        let joined = sqlx::query(
            "UPDATE fleet_nodes SET state = 'active', key_fingerprint = $1, joined_at = $2, \
             cert_valid_before = $3 WHERE name = $4 AND state = 'pending'",
        )
        .bind(key_fingerprint)
        .bind(now)
        .bind(cert_valid_before)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        if joined.rows_affected() != 1 {
            return Ok(Err(TokenRefusal::NodeRemoved));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// One node by name.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn fleet_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM fleet_nodes WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(node_from_row))
    }

    /// Every node by name, with its container count and the edges whose
    /// tunnel row was refreshed in the last `fresh_ms` milliseconds.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn list_fleet_nodes(&self, fresh_ms: i64) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM fleet_nodes ORDER BY name");
        let mut nodes: Vec<NodeRecord> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(node_from_row)
            .collect();
        let counts = sqlx::query("SELECT node, COUNT(*) AS n FROM fleet_containers GROUP BY node")
            .fetch_all(&self.pool)
            .await?;
        let tunnels =
            sqlx::query("SELECT node, edge FROM fleet_tunnels WHERE last_seen > $1 ORDER BY edge")
                .bind(now_ms() - fresh_ms)
                .fetch_all(&self.pool)
                .await?;
        for node in &mut nodes {
            node.containers = counts
                .iter()
                .find(|r| r.get::<String, _>("node") == node.name)
                .map(|r| r.get("n"))
                .unwrap_or(0);
            node.edges = tunnels
                .iter()
                .filter(|r| r.get::<String, _>("node") == node.name)
                .map(|r| r.get("edge"))
                .collect();
        }
        Ok(nodes)
    }

    /// Marks `node` removed, frees its container names and forgets its
    /// tunnels; false when no such node or already removed.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn remove_fleet_node(&self, node: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE fleet_nodes SET state = 'removed', removed_at = $1 \
             WHERE name = $2 AND state <> 'removed'",
        )
        .bind(now_ms())
        .bind(node)
        .execute(&mut *tx)
        .await?;
        for sql in [
            "DELETE FROM fleet_containers WHERE node = $1",
            "DELETE FROM fleet_tunnels WHERE node = $1",
            "UPDATE fleet_join_tokens SET used_at = 0 WHERE node = $1 AND used_at IS NULL",
        ] {
            sqlx::query(sql).bind(node).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the end of `node`'s newest host certificate (unix seconds).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn set_node_certificate(
        &self,
        node: &str,
        valid_before: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE fleet_nodes SET cert_valid_before = $1 WHERE name = $2")
            .bind(valid_before)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that `node`'s tunnel to `edge` is up (now), or refreshes it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn tunnel_up(&self, node: &str, edge: &str) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO fleet_tunnels (node, edge, connected_at, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (node, edge) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(node)
        .bind(edge)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets `node`'s tunnel to `edge`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn tunnel_down(&self, node: &str, edge: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM fleet_tunnels WHERE node = $1 AND edge = $2")
            .bind(node)
            .bind(edge)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The heartbeat of `node`: its version and its containers, in one
    /// transaction. Its rows are upserted, its names no longer listed are
    /// deleted, and names another node owns are left alone and returned.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn push_inventory(
        &self,
        node: &str,
        version: &str,
        containers: &[InventoryPush],
    ) -> Result<Vec<ContainerConflict>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE fleet_nodes SET last_heartbeat = $1, version = $2 WHERE name = $3")
            .bind(now)
            .bind(version)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        let mut conflicts = Vec::new();
        for c in containers {
            let name = &c.name;
            let done = sqlx::query(
                "INSERT INTO fleet_containers (name, node, state, labels, owner, purpose, backend, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO UPDATE \
                 SET state = excluded.state, labels = excluded.labels, owner = excluded.owner, \
                 purpose = excluded.purpose, backend = excluded.backend, \
                 updated_at = excluded.updated_at WHERE fleet_containers.node = excluded.node",
            )
            .bind(name)
            .bind(node)
            .bind(&c.state)
            .bind(&c.labels)
            .bind(&c.owner)
            .bind(&c.purpose)
            .bind(&c.backend)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                let owner: String =
                    sqlx::query("SELECT node FROM fleet_containers WHERE name = $1")
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await?
                        .get("node");
                conflicts.push(ContainerConflict {
                    name: name.clone(),
                    owner,
                });
            }
        }
        let mine: Vec<String> = sqlx::query("SELECT name FROM fleet_containers WHERE node = $1")
            .bind(node)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get("name"))
            .collect();
        for gone in mine
            .iter()
            .filter(|n| !containers.iter().any(|c| &c.name == *n))
        {
            sqlx::query("DELETE FROM fleet_containers WHERE name = $1 AND node = $2")
                .bind(gone)
                .bind(node)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(conflicts)
    }

    /// The fleet's containers by name.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn fleet_containers(&self) -> Result<Vec<FleetContainer>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, node, state, labels, owner, purpose, backend, updated_at \
             FROM fleet_containers ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| FleetContainer {
                name: r.get("name"),
                node: r.get("node"),
                state: r.get("state"),
                labels: r.get("labels"),
                owner: r.get("owner"),
                purpose: r.get("purpose"),
                backend: r.get("backend"),
                updated_at: r.get("updated_at"),
            })
            .collect())
    }

    /// Writes the edge's witness of a relayed session (once per session).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_witness(&self, w: &WitnessRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO fleet_witness (session_id, edge, node, output_bytes, output_sha256, \
             ended_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&w.session_id)
        .bind(&w.edge)
        .bind(&w.node)
        .bind(w.output_bytes)
        .bind(&w.output_sha256)
        .bind(w.ended_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The edge's witness of `session_id`, when it was relayed.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn witness(&self, session_id: &str) -> Result<Option<WitnessRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT session_id, edge, node, output_bytes, output_sha256, ended_at \
             FROM fleet_witness WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| WitnessRecord {
            session_id: r.get("session_id"),
            edge: r.get("edge"),
            node: r.get("node"),
            output_bytes: r.get("output_bytes"),
            output_sha256: r.get("output_sha256"),
            ended_at: r.get("ended_at"),
        }))
    }
}

impl Store {
    /// `pg_notify(channel, payload)` (PostgreSQL only; the caller checks
    /// the backend). Sent outside any transaction: delivered at once.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn notify_fleet(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        notify_fleet_query(channel, payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The `pg_notify` of [`Store::notify_fleet`], to run inside the
/// transaction that writes the row the notice is about (PostgreSQL
/// delivers it at commit).
pub fn notify_fleet_query<'q>(
    channel: &'q str,
    payload: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
}
