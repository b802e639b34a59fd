//! Queries for access requests that ask for a lifecycle action on a
//! container instead of a login (issue 18: `containers request ACTION
//! NAME`). They are rows of `access_requests` with `action` set and an
//! empty `login`; approving, denying, revoking and expiring them are the
//! login requests' own queries. The grant of an action is used at most
//! once: [`Store::use_action_grant`] ends it in the same conditional
//! `UPDATE` that claims it, so two commands racing cannot both run under
//! it.

use super::grants::{COLUMNS, from_row};
use super::{AccessRequestRecord, NewAccessRequest, Store, StoreError, now_ms};

impl Store {
    /// Inserts a `pending` request created now for lifecycle `action` on
    /// `r.container` (`r.login` should be empty).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_action_request(
        &self,
        r: &NewAccessRequest<'_>,
        action: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_requests (id, requester, container, login, duration_seconds, \
             reason, status, created_at, break_glass, action) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9)",
        )
        .bind(r.id)
        .bind(r.requester)
        .bind(r.container)
        .bind(r.login)
        .bind(r.duration_seconds)
        .bind(r.reason)
        .bind(now_ms())
        .bind(i64::from(r.break_glass))
        .bind(action)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The active grant of `principal` for lifecycle `action` on
    /// `container` at `now` (unix ms) that ends first, if any.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn active_action_grant_for(
        &self,
        principal: &str,
        container: &str,
        action: &str,
        now: i64,
    ) -> Result<Option<AccessRequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_requests WHERE status = 'approved' \
             AND revoked_at IS NULL AND starts_at <= $1 AND expires_at > $1 \
             AND requester = $2 AND container = $3 AND action = $4 \
             ORDER BY expires_at, id LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(principal)
            .bind(container)
            .bind(action)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Uses the action grant `id` at `now`: it ends (`revoked_at` = now,
    /// `revoked_by` = `by`, `revoke_reason` = `used: ACTION`) so it cannot
    /// run a second command. False when it is no longer in force (used,
    /// revoked or expired meanwhile).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn use_action_grant(&self, id: &str, by: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_requests SET revoked_at = $1, revoked_by = $2, \
             revoke_reason = 'used: ' || action \
             WHERE id = $3 AND status = 'approved' AND revoked_at IS NULL \
             AND action IS NOT NULL AND starts_at <= $1 AND expires_at > $1",
        )
        .bind(now)
        .bind(by)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::tests::temp_store;

    fn new(id: &'static str, login: &'static str) -> NewAccessRequest<'static> {
        NewAccessRequest {
            id,
            requester: "alice",
            container: "web1",
            login,
            duration_seconds: 60,
            reason: "OPS-1",
            break_glass: false,
        }
    }

    #[tokio::test]
    async fn an_action_grant_is_used_once_and_never_opens_a_session() {
        let (_dir, store) = temp_store().await;
        store
            .insert_action_request(&new("s", ""), "stop")
            .await
            .unwrap();
        store
            .insert_access_request(&new("l", "root"))
            .await
            .unwrap();
        let now = now_ms();
        let r = store.access_request("s").await.unwrap().unwrap();
        assert_eq!((r.action.as_deref(), r.login.as_str()), (Some("stop"), ""));
        let l = store.access_request("l").await.unwrap().unwrap();
        assert_eq!(l.action, None);
        // Pending: not a grant yet.
        assert!(
            store
                .active_action_grant_for("alice", "web1", "stop", now)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .approve_access_request("s", "bob", None, now)
                .await
                .unwrap()
        );
        let at = now + 1;
        let g = store
            .active_action_grant_for("alice", "web1", "stop", at)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(g.id, "s");
        for other in [("bob", "stop"), ("alice", "start"), ("alice", "restore")] {
            assert!(
                store
                    .active_action_grant_for(other.0, "web1", other.1, at)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        // The action grant is no login grant, whatever login is asked.
        assert!(
            store
                .active_grant_for("alice", "web1", "", at)
                .await
                .unwrap()
                .is_none()
        );
        // A login grant is no action grant, and cannot be "used".
        assert!(
            store
                .approve_access_request("l", "bob", None, now)
                .await
                .unwrap()
        );
        assert!(!store.use_action_grant("l", "alice", at).await.unwrap());
        // Used once: the second use loses.
        assert!(store.use_action_grant("s", "alice", at).await.unwrap());
        assert!(!store.use_action_grant("s", "alice", at).await.unwrap());
        let used = store.access_request("s").await.unwrap().unwrap();
        assert_eq!(
            (used.revoke_reason.as_deref(), used.revoked_by.as_deref()),
            (Some("used: stop"), Some("alice"))
        );
        assert!(
            store
                .active_action_grant_for("alice", "web1", "stop", at)
                .await
                .unwrap()
                .is_none()
        );
    }
}
