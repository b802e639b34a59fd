//! Queries for reviewers and admins: filtered session lists and kill
//! requests for live sessions.

use sqlx::Row;

use super::{SESSION_COLUMNS, SessionRecord, Store, StoreError, now_ms, session_from_row};

/// Filters of `sessions list`; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Principal subject, exact.
    pub principal: Option<String>,
    /// Container name, exact.
    pub container: Option<String>,
    /// Login, exact.
    pub login: Option<String>,
    /// Status, exact (`running`, `ended`, `failed`, `interrupted`).
    pub status: Option<String>,
    /// Started at or after, unix milliseconds.
    pub since_ms: Option<i64>,
    /// Started before, unix milliseconds.
    pub until_ms: Option<i64>,
    /// Most rows returned.
    pub limit: i64,
}

impl Store {
    /// Sessions matching `filter`, newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn find_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        // Every filter is always bound; an empty one matches everything, so
        // the SQL text is fixed (no string building from user input).
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE ($1 = '' OR principal = $1) AND ($2 = '' OR container = $2) \
             AND ($3 = '' OR login = $3) AND ($4 = '' OR status = $4) \
             AND started_at >= $5 AND started_at < $6 \
             ORDER BY started_at DESC, id LIMIT $7"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.principal.clone().unwrap_or_default())
            .bind(filter.container.clone().unwrap_or_default())
            .bind(filter.login.clone().unwrap_or_default())
            .bind(filter.status.clone().unwrap_or_default())
            .bind(filter.since_ms.unwrap_or(i64::MIN))
            .bind(filter.until_ms.unwrap_or(i64::MAX))
            .bind(filter.limit.max(0))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(session_from_row).collect())
    }

    /// Asks the gateway serving session `id` to end it with `reason`;
    /// false when no such session is running.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn request_kill(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET kill_requested_at = $1, kill_reason = $2 \
             WHERE id = $3 AND status = 'running'",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Running sessions of this gateway with a kill request: `(id, reason)`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn pending_kills(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kill_reason FROM sessions WHERE status = 'running' AND gateway = $1 \
             AND kill_requested_at IS NOT NULL",
        )
        .bind(&self.gateway_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("id"),
                    r.get::<Option<String>, _>("kill_reason")
                        .unwrap_or_default(),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::NewSession;
    use crate::store::tests::temp_store;

    #[tokio::test]
    async fn filters_and_kill_requests() {
        let (_dir, store) = temp_store().await;
        let store = store.for_gateway("gw");
        for (id, principal, container) in [
            ("a", "alice", "web1"),
            ("b", "bob", "web1"),
            ("c", "alice", "db1"),
        ] {
            store
                .insert_session(&NewSession {
                    id,
                    principal,
                    email: None,
                    container,
                    login: "root",
                    command: None,
                    client_addr: None,
                    recording_path: "r",
                    grant_id: None,
                })
                .await
                .unwrap();
        }
        let ids = |v: Vec<SessionRecord>| {
            let mut ids: Vec<String> = v.into_iter().map(|s| s.id).collect();
            ids.sort();
            ids
        };
        let all = SessionFilter {
            limit: 100,
            ..Default::default()
        };
        assert_eq!(
            ids(store.find_sessions(&all).await.unwrap()),
            ["a", "b", "c"]
        );
        let alice = SessionFilter {
            principal: Some("alice".into()),
            ..all.clone()
        };
        assert_eq!(ids(store.find_sessions(&alice).await.unwrap()), ["a", "c"]);
        let alice_web = SessionFilter {
            container: Some("web1".into()),
            ..alice.clone()
        };
        assert_eq!(ids(store.find_sessions(&alice_web).await.unwrap()), ["a"]);
        let future = SessionFilter {
            since_ms: Some(now_ms() + 60_000),
            ..all.clone()
        };
        assert!(store.find_sessions(&future).await.unwrap().is_empty());
        assert!(store.request_kill("b", "maintenance").await.unwrap());
        assert!(!store.request_kill("nope", "x").await.unwrap());
        assert_eq!(
            store.pending_kills().await.unwrap(),
            [("b".to_string(), "maintenance".to_string())]
        );
    }
}
