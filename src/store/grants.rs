//! Queries for access requests and grants (issue 7). An approved request is
//! a grant with the same id; it is active from `starts_at` until
//! `expires_at` (unix ms) unless `revoked_at` is set. Every state change is
//! a conditional `UPDATE`, so two approvers racing cannot both win.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, now_ms};

/// One access request (and, once approved, its grant) as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccessRequestRecord {
    /// Request id (also the grant id once approved).
    pub id: String,
    /// Who asked (principal subject).
    pub requester: String,
    /// Target container.
    pub container: String,
    /// Login inside the container.
    pub login: String,
    /// Asked-for length of the grant, seconds.
    pub duration_seconds: i64,
    /// Why (a ticket, when a pattern is configured).
    pub reason: String,
    /// `pending`, `approved` or `denied`.
    pub status: String,
    /// When asked, unix ms.
    pub created_at: i64,
    /// Who approved or denied.
    pub decided_by: Option<String>,
    /// When approved or denied, unix ms.
    pub decided_at: Option<i64>,
    /// The approval comment or the denial reason.
    pub decision_comment: Option<String>,
    /// Grant start (the approval), unix ms.
    pub starts_at: Option<i64>,
    /// Grant end, unix ms.
    pub expires_at: Option<i64>,
    /// When revoked, unix ms.
    pub revoked_at: Option<i64>,
    /// Who revoked.
    pub revoked_by: Option<String>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// True for a break-glass grant (self-granted, to be reviewed).
    pub break_glass: bool,
    /// Who reviewed the break-glass grant.
    pub reviewed_by: Option<String>,
    /// When it was reviewed, unix ms.
    pub reviewed_at: Option<i64>,
    /// The reviewer's comment.
    pub review_comment: Option<String>,
    /// The lifecycle action asked for (`start`, `stop`, `restart`,
    /// `snapshot`, `restore`; issue 18), `None` for a login request. A
    /// request with an action has an empty `login`, and its grant never
    /// opens a session.
    pub action: Option<String>,
    /// Where the container was when asked and approved: the gateway's
    /// configured id (later the fleet node); `None` on rows from before
    /// migration 0017, whose grants are never honoured.
    pub gateway: Option<String>,
    /// The container's labels when asked and approved; `None` as above
    /// (or when the stored text is not a JSON object of strings).
    pub labels: Option<BTreeMap<String, String>>,
    /// A pending request expires at this time, unix ms (`[grants]
    /// request_ttl` after it was made); `None` for decided rows made before
    /// migration 0017.
    pub pending_until: Option<i64>,
}

impl AccessRequestRecord {
    /// `pending`, `denied`, `active`, `revoked` or `expired` at `now`
    /// (unix ms).
    pub fn state_at(&self, now: i64) -> &'static str {
        match self.status.as_str() {
            "pending" if self.pending_expired_at(now) => "expired",
            "pending" => "pending",
            "denied" => "denied",
            _ if self.revoked_at.is_some() => "revoked",
            _ if self.active_at(now) => "active",
            _ => "expired",
        }
    }

    /// True when this request is pending and its `pending_until` has
    /// passed at `now` (unix ms): it can no longer be approved or denied.
    pub fn pending_expired_at(&self, now: i64) -> bool {
        self.status == "pending" && self.pending_until.is_some_and(|t| t <= now)
    }

    /// Why grant `self` is not honoured for a container at `gateway` with
    /// `labels` (issue 12: a grant is for what was approved), or `None`
    /// when both match what was recorded when it was asked for and
    /// approved. A grant without a record (made before migration 0017) is
    /// never honoured. The answer is one clause for the user.
    pub fn scope_mismatch(
        &self,
        gateway: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<String> {
        let (Some(at), Some(approved)) = (&self.gateway, &self.labels) else {
            return Some(format!(
                "the grant {} does not record where it was approved (made before this \
                 gateway recorded it); ask for access again",
                self.id
            ));
        };
        if at != gateway {
            return Some(format!(
                "the grant {} was approved for {} on gateway {at}, not on {gateway}",
                self.id, self.container
            ));
        }
        if approved != labels {
            return Some(format!(
                "the grant {} was approved for {} labelled {}; it is now labelled {}",
                self.id,
                self.container,
                labels_text(approved),
                labels_text(labels)
            ));
        }
        None
    }

    /// True when this is a grant in force at `now` (unix ms).
    pub fn active_at(&self, now: i64) -> bool {
        self.status == "approved"
            && self.revoked_at.is_none()
            && self.starts_at.is_some_and(|s| s <= now)
            && self.expires_at.is_some_and(|e| now < e)
    }
}

/// `k=v, k=v` (sorted), or `(none)`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".to_string();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(", ")
}

/// Where a new request's container is, and until when it may wait
/// ([`Store::insert_access_request_scoped`]).
#[derive(Debug, Clone)]
pub struct RequestScope<'a> {
    /// The gateway's configured id (later the fleet node).
    pub gateway: &'a str,
    /// The container's labels now.
    pub labels: &'a BTreeMap<String, String>,
    /// The request expires unless decided by then, unix ms.
    pub pending_until: i64,
    /// The lifecycle action asked for (issue 18), `None` for a login.
    pub action: Option<&'a str>,
}

/// A new request.
#[derive(Debug, Clone)]
pub struct NewAccessRequest<'a> {
    /// Request id.
    pub id: &'a str,
    /// Who asks.
    pub requester: &'a str,
    /// Target container.
    pub container: &'a str,
    /// Login inside the container.
    pub login: &'a str,
    /// Length of the grant, seconds.
    pub duration_seconds: i64,
    /// Why.
    pub reason: &'a str,
    /// True for a break-glass request (approved by its requester at once).
    pub break_glass: bool,
}

pub(super) const COLUMNS: &str = "id, requester, container, login, duration_seconds, reason, status, \
     created_at, decided_by, decided_at, decision_comment, starts_at, expires_at, revoked_at, \
     revoked_by, revoke_reason, break_glass, reviewed_by, reviewed_at, review_comment, action, \
     gateway, labels, pending_until";

pub(super) fn from_row(r: &AnyRow) -> AccessRequestRecord {
    AccessRequestRecord {
        id: r.get("id"),
        requester: r.get("requester"),
        container: r.get("container"),
        login: r.get("login"),
        duration_seconds: r.get("duration_seconds"),
        reason: r.get("reason"),
        status: r.get("status"),
        created_at: r.get("created_at"),
        decided_by: r.get("decided_by"),
        decided_at: r.get("decided_at"),
        decision_comment: r.get("decision_comment"),
        starts_at: r.get("starts_at"),
        expires_at: r.get("expires_at"),
        revoked_at: r.get("revoked_at"),
        revoked_by: r.get("revoked_by"),
        revoke_reason: r.get("revoke_reason"),
        break_glass: r.get::<i64, _>("break_glass") != 0,
        reviewed_by: r.get("reviewed_by"),
        reviewed_at: r.get("reviewed_at"),
        review_comment: r.get("review_comment"),
        action: r.get("action"),
        gateway: r.get("gateway"),
        labels: r
            .get::<Option<String>, _>("labels")
            .and_then(|t| serde_json::from_str(&t).ok()),
        pending_until: r.get("pending_until"),
    }
}

impl Store {
    /// Inserts a `pending` request created now.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_access_request(&self, r: &NewAccessRequest<'_>) -> Result<(), StoreError> {
        self.insert_request(r, None).await
    }

    /// [`Store::insert_access_request`] with where the container is and
    /// until when the request may wait (issue 12).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_access_request_scoped(
        &self,
        r: &NewAccessRequest<'_>,
        scope: &RequestScope<'_>,
    ) -> Result<(), StoreError> {
        self.insert_request(r, Some(scope)).await
    }

    async fn insert_request(
        &self,
        r: &NewAccessRequest<'_>,
        scope: Option<&RequestScope<'_>>,
    ) -> Result<(), StoreError> {
        let labels = scope.and_then(|s| serde_json::to_string(s.labels).ok());
        sqlx::query(
            "INSERT INTO access_requests (id, requester, container, login, duration_seconds, \
             reason, status, created_at, break_glass, gateway, labels, pending_until, action) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $12)",
        )
        .bind(r.id)
        .bind(r.requester)
        .bind(r.container)
        .bind(r.login)
        .bind(r.duration_seconds)
        .bind(r.reason)
        .bind(now_ms())
        .bind(i64::from(r.break_glass))
        .bind(scope.map(|s| s.gateway))
        .bind(labels)
        .bind(scope.map(|s| s.pending_until))
        .bind(scope.and_then(|s| s.action))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One request by id, `None` when there is none.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn access_request(
        &self,
        id: &str,
    ) -> Result<Option<AccessRequestRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM access_requests WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Requests, newest first, at most `limit`: only `status` when given
    /// (`pending` leaves out the requests that expired waiting), only
    /// `requester`'s when given.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn access_requests(
        &self,
        status: Option<&str>,
        requester: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccessRequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_requests WHERE ($1 = '' OR status = $1) \
             AND ($2 = '' OR requester = $2) \
             AND ($1 <> 'pending' OR pending_until IS NULL OR pending_until > $4) \
             ORDER BY created_at DESC, id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status.unwrap_or(""))
            .bind(requester.unwrap_or(""))
            .bind(limit.max(0))
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Grants in force at `now` (unix ms), soonest end first; only
    /// `principal`'s when given.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn active_grants(
        &self,
        principal: Option<&str>,
        now: i64,
    ) -> Result<Vec<AccessRequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_requests WHERE status = 'approved' \
             AND revoked_at IS NULL AND starts_at <= $1 AND expires_at > $1 \
             AND ($2 = '' OR requester = $2) ORDER BY expires_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(principal.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// The active grant of `principal` for `login@container` that ends
    /// last, if any (never the grant of a lifecycle action).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn active_grant_for(
        &self,
        principal: &str,
        container: &str,
        login: &str,
        now: i64,
    ) -> Result<Option<AccessRequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_requests WHERE status = 'approved' \
             AND revoked_at IS NULL AND starts_at <= $1 AND expires_at > $1 \
             AND requester = $2 AND container = $3 AND login = $4 AND action IS NULL \
             ORDER BY expires_at DESC, id LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(principal)
            .bind(container)
            .bind(login)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Approves pending request `id`: the grant runs from `now` for its
    /// duration. False when it is no longer pending.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn approve_access_request(
        &self,
        id: &str,
        approver: &str,
        comment: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_requests SET status = 'approved', decided_by = $1, decided_at = $2, \
             decision_comment = $3, starts_at = $2, expires_at = $2 + duration_seconds * 1000 \
             WHERE id = $4 AND status = 'pending'",
        )
        .bind(approver)
        .bind(now)
        .bind(comment)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Denies pending request `id`. False when it is no longer pending.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn deny_access_request(
        &self,
        id: &str,
        approver: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_requests SET status = 'denied', decided_by = $1, decided_at = $2, \
             decision_comment = $3 WHERE id = $4 AND status = 'pending'",
        )
        .bind(approver)
        .bind(now_ms())
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes grant `id` at `now`. False when it is not in force.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn revoke_grant(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_requests SET revoked_at = $1, revoked_by = $2, revoke_reason = $3 \
             WHERE id = $4 AND status = 'approved' AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Grants that expired by `now` (not revoked) whose expiry is not yet
    /// audited.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn unaudited_expired_grants(
        &self,
        now: i64,
    ) -> Result<Vec<AccessRequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_requests WHERE status = 'approved' \
             AND revoked_at IS NULL AND expires_at <= $1 AND expiry_audited = 0 \
             ORDER BY expires_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Pending requests whose `pending_until` passed by `now` and whose
    /// expiry is not yet audited (issue 12).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn unaudited_expired_requests(
        &self,
        now: i64,
    ) -> Result<Vec<AccessRequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_requests WHERE status = 'pending' \
             AND pending_until <= $1 AND expiry_audited = 0 ORDER BY pending_until, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Marks grant (or pending request) `id`'s expiry audited (`done` true) or not (false, to
    /// undo a claim whose audit event failed). Returns true when this call
    /// changed it, so of several gateways exactly one audits an expiry.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn set_expiry_audited(&self, id: &str, done: bool) -> Result<bool, StoreError> {
        let (to, from) = if done { (1i64, 0i64) } else { (0, 1) };
        let r = sqlx::query(
            "UPDATE access_requests SET expiry_audited = $1 WHERE id = $2 AND expiry_audited = $3",
        )
        .bind(to)
        .bind(id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Break-glass grants not reviewed yet, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn unreviewed_break_glass(&self) -> Result<Vec<AccessRequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM access_requests WHERE break_glass = 1 \
             AND status = 'approved' AND reviewed_at IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Marks break-glass grant `id` reviewed. False when it is not an
    /// unreviewed break-glass grant.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn review_break_glass(
        &self,
        id: &str,
        reviewer: &str,
        comment: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_requests SET reviewed_by = $1, reviewed_at = $2, review_comment = $3 \
             WHERE id = $4 AND break_glass = 1 AND status = 'approved' AND reviewed_at IS NULL",
        )
        .bind(reviewer)
        .bind(now_ms())
        .bind(comment)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    #[tokio::test]
    async fn request_approve_revoke_expire() {
        let (_dir, store) = temp_store().await;
        let new = |id: &'static str| NewAccessRequest {
            id,
            requester: "alice",
            container: "web1",
            login: "root",
            duration_seconds: 60,
            reason: "OPS-1",
            break_glass: false,
        };
        store.insert_access_request(&new("a")).await.unwrap();
        store.insert_access_request(&new("b")).await.unwrap();
        let now = now_ms();
        assert!(
            store
                .approve_access_request("a", "bob", Some("ok"), now)
                .await
                .unwrap()
        );
        assert!(
            !store
                .approve_access_request("a", "bob", None, now)
                .await
                .unwrap()
        );
        let a = store.access_request("a").await.unwrap().unwrap();
        assert_eq!(a.expires_at, Some(now + 60_000));
        assert!(a.active_at(now));
        let g = store
            .active_grant_for("alice", "web1", "root", now)
            .await
            .unwrap();
        assert_eq!(g.map(|g| g.id).as_deref(), Some("a"));
        assert!(store.deny_access_request("b", "bob", "no").await.unwrap());
        assert!(
            !store
                .approve_access_request("b", "bob", None, now)
                .await
                .unwrap()
        );
        let pending = store
            .access_requests(Some("pending"), None, 10)
            .await
            .unwrap();
        assert!(pending.is_empty());
        // Expired later: listed once for audit.
        let later = now + 61_000;
        assert!(store.active_grants(None, later).await.unwrap().is_empty());
        let expired = store.unaudited_expired_grants(later).await.unwrap();
        assert_eq!(expired.len(), 1);
        assert!(store.set_expiry_audited("a", true).await.unwrap());
        assert!(!store.set_expiry_audited("a", true).await.unwrap());
        assert!(
            store
                .unaudited_expired_grants(later)
                .await
                .unwrap()
                .is_empty()
        );
        // Revoked while in force.
        assert!(
            store
                .revoke_grant("a", "bob", "done", now + 1)
                .await
                .unwrap()
        );
        assert!(
            !store
                .revoke_grant("a", "bob", "again", now + 2)
                .await
                .unwrap()
        );
        assert!(
            store
                .active_grant_for("alice", "web1", "root", now + 3)
                .await
                .unwrap()
                .is_none()
        );
    }
}
