//! The inventory's read-only question to the sessions table: who last
//! logged in to each container of a gateway, and when (for `containers
//! list`, the broker's `containers` command and the web console).
//!
//! Owns this one query; it never writes and knows nothing of containers
//! beyond their names.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// The newest session row of one container.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastSession {
    /// Session id.
    pub session_id: String,
    /// The principal's subject.
    pub principal: String,
    /// The principal's email, when the ID token carried one.
    pub email: Option<String>,
    /// Login inside the container.
    pub login: String,
    /// Start, unix milliseconds.
    pub started_at: i64,
    /// `running`, `ended`, `failed` or `interrupted`.
    pub status: String,
}

impl Store {
    /// The newest session (by start time; among equal starts, the greatest
    /// id) of each container that `gateway` served, keyed by container
    /// name. One query, on the index of migration 0010.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn last_sessions(
        &self,
        gateway: &str,
    ) -> Result<BTreeMap<String, LastSession>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.container, s.id, s.principal, s.email, s.login, s.started_at, s.status \
             FROM sessions s \
             WHERE s.gateway = $1 AND s.started_at = (SELECT MAX(t.started_at) FROM sessions t \
             WHERE t.gateway = $1 AND t.container = s.container) \
             ORDER BY s.container, s.id",
        )
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        let mut last = BTreeMap::new();
        for row in rows {
            let container: String = row.try_get("container")?;
            last.insert(
                container,
                LastSession {
                    session_id: row.try_get("id")?,
                    principal: row.try_get("principal")?,
                    email: row.try_get("email")?,
                    login: row.try_get("login")?,
                    started_at: row.try_get("started_at")?,
                    status: row.try_get("status")?,
                },
            );
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::NewSession;

    async fn session(store: &Store, id: &str, principal: &str, container: &str) {
        store
            .insert_session(&NewSession {
                id,
                principal,
                email: None,
                container,
                login: "root",
                command: None,
                client_addr: None,
                recording_path: "/r.cast",
                grant_id: None,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_newest_session_of_each_container_of_this_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let a = store.clone().for_gateway("gw-a");
        let b = store.clone().for_gateway("gw-b");
        session(&a, "1", "alice", "web1").await;
        session(&b, "2", "mallory", "web1").await;
        session(&a, "3", "bob", "db1").await;
        // Equal start times are possible (milliseconds): the greatest id.
        sqlx::query("UPDATE sessions SET started_at = 1000 WHERE id IN ('1', '3')")
            .execute(&store.pool)
            .await
            .unwrap();
        session(&a, "4", "carol", "db1").await;
        let last = a.last_sessions("gw-a").await.unwrap();
        let who: Vec<(&str, &str)> = last
            .iter()
            .map(|(c, s)| (c.as_str(), s.principal.as_str()))
            .collect();
        assert_eq!(who, [("db1", "carol"), ("web1", "alice")]);
        assert_eq!(last["web1"].started_at, 1000);
        assert_eq!(last["web1"].status, "running");
        let theirs = a.last_sessions("gw-b").await.unwrap();
        assert_eq!(theirs["web1"].principal, "mallory");
        assert_eq!(theirs.len(), 1);
    }
}
