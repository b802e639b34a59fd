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
}

impl AccessRequestRecord {
    /// `pending`, `denied`, `active`, `revoked` or `expired` at `now`
    /// (unix ms).
    pub fn state_at(&self, now: i64) -> &'static str {
        match self.status.as_str() {
            "pending" => "pending",
            "denied" => "denied",
            _ if self.revoked_at.is_some() => "revoked",
            _ if self.active_at(now) => "active",
            _ => "expired",
        }
    }

    /// True when this is a grant in force at `now` (unix ms).
    pub fn active_at(&self, now: i64) -> bool {
        self.status == "approved"
            && self.revoked_at.is_none()
            && self.starts_at.is_some_and(|s| s <= now)
            && self.expires_at.is_some_and(|e| now < e)
    }
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

/// One approval of an access request: who approved, when, with what
/// comment. One per approver per request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// The request approved.
    pub request_id: String,
    /// Who approved (principal subject).
    pub approver: String,
    /// The approver's comment.
    pub comment: Option<String>,
    /// When, unix ms.
    pub approved_at: i64,
}

fn approval_from_row(r: &AnyRow) -> ApprovalRecord {
    ApprovalRecord {
        request_id: r.get("request_id"),
        approver: r.get("approver"),
        comment: r.get("comment"),
        approved_at: r.get("approved_at"),
    }
}

const COLUMNS: &str = "id, requester, container, login, duration_seconds, reason, status, \
     created_at, decided_by, decided_at, decision_comment, starts_at, expires_at, revoked_at, \
     revoked_by, revoke_reason, break_glass, reviewed_by, reviewed_at, review_comment";

fn from_row(r: &AnyRow) -> AccessRequestRecord {
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
    }
}

impl Store {
    /// Inserts a `pending` request created now.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_access_request(&self, r: &NewAccessRequest<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_requests (id, requester, container, login, duration_seconds, \
             reason, status, created_at, break_glass) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
        )
        .bind(r.id)
        .bind(r.requester)
        .bind(r.container)
        .bind(r.login)
        .bind(r.duration_seconds)
        .bind(r.reason)
        .bind(now_ms())
        .bind(i64::from(r.break_glass))
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

    /// Requests, newest first, at most `limit`: only `status` when given,
    /// only `requester`'s when given.
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
             AND ($2 = '' OR requester = $2) ORDER BY created_at DESC, id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(status.unwrap_or(""))
            .bind(requester.unwrap_or(""))
            .bind(limit.max(0))
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
    /// last, if any.
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
             AND requester = $2 AND container = $3 AND login = $4 \
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

    /// Records `approver`'s approval of request `id` at `now` (unix ms).
    /// False when `approver` already approved it (one approval per
    /// approver per request, also when two gateways race).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn add_approval(
        &self,
        id: &str,
        approver: &str,
        comment: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO access_approvals (request_id, approver, comment, approved_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (request_id, approver) DO NOTHING",
        )
        .bind(id)
        .bind(approver)
        .bind(comment)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The approvals of request `id`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn approvals_of(&self, id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id, approver, comment, approved_at FROM access_approvals \
             WHERE request_id = $1 ORDER BY approved_at, approver",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(approval_from_row).collect())
    }

    /// The approvals of each of the requests `ids` (oldest first; requests
    /// without approvals are left out).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn approvals_of_many(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, Vec<ApprovalRecord>>, StoreError> {
        let mut all: BTreeMap<String, Vec<ApprovalRecord>> = BTreeMap::new();
        // A bounded number of placeholders per query.
        for chunk in ids.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT request_id, approver, comment, approved_at FROM access_approvals \
                 WHERE request_id IN ({}) ORDER BY approved_at, approver",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let a = approval_from_row(&row);
                all.entry(a.request_id.clone()).or_default().push(a);
            }
        }
        Ok(all)
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

    /// Marks grant `id`'s expiry audited (`done` true) or not (false, to
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

    /// Queues `body` for each of `urls` (the webhook outbox), due now.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn enqueue_webhooks(&self, urls: &[String], body: &str) -> Result<(), StoreError> {
        let now = now_ms();
        for url in urls {
            sqlx::query(
                "INSERT INTO webhook_outbox (url, body, created_at, next_attempt_at) \
                 VALUES ($1, $2, $3, $3)",
            )
            .bind(url)
            .bind(body)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Undelivered webhook rows due at `now` (unix ms) and not under
    /// another claim's lease, oldest first, at most `limit`: `(id, url,
    /// body, attempts)`. Claim each with [`Store::claim_webhook`] before
    /// posting it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn due_webhooks(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, url, body, attempts FROM webhook_outbox \
             WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
             AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("id"), r.get("url"), r.get("body"), r.get("attempts")))
            .collect())
    }

    /// Claims undelivered webhook row `id` for `claimer` (one delivery
    /// worker of one gateway) until `until` (unix ms), when no other claim
    /// holds it at `now`. True when this call won the row: of several
    /// gateways sharing the database exactly one does, until the lease
    /// runs out.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn claim_webhook(
        &self,
        id: i64,
        claimer: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhook_outbox SET claimed_by = $1, claimed_until = $2 \
             WHERE id = $3 AND delivered_at IS NULL \
             AND (claimed_until IS NULL OR claimed_until < $4)",
        )
        .bind(claimer)
        .bind(until)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks webhook row `id` delivered and ends its claim.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn webhook_delivered(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_outbox SET delivered_at = $1, claimed_by = NULL, \
             claimed_until = NULL WHERE id = $2",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed delivery of webhook row `id` by `claimer`:
    /// `attempts` so far and the next try at `next_attempt_at` (unix ms);
    /// ends the claim. Does nothing when the row is no longer `claimer`'s
    /// (its lease ran out and another gateway took it).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn webhook_failed(
        &self,
        id: i64,
        claimer: &str,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, \
             claimed_by = NULL, claimed_until = NULL \
             WHERE id = $4 AND claimed_by = $5 AND delivered_at IS NULL",
        )
        .bind(attempts)
        .bind(next_attempt_at)
        .bind(error)
        .bind(id)
        .bind(claimer)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that session `session_id` depends on grant `grant_id`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn set_session_grant(
        &self,
        session_id: &str,
        grant_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET grant_id = $1 WHERE id = $2")
            .bind(grant_id)
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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

    #[tokio::test]
    async fn one_approval_per_approver_per_request() {
        let (_dir, store) = temp_store().await;
        assert!(
            store
                .add_approval("r1", "bob", Some("ok"), 10)
                .await
                .unwrap()
        );
        assert!(!store.add_approval("r1", "bob", None, 11).await.unwrap());
        assert!(store.add_approval("r1", "carol", None, 12).await.unwrap());
        assert!(store.add_approval("r2", "bob", None, 13).await.unwrap());
        let r1 = store.approvals_of("r1").await.unwrap();
        assert_eq!(
            r1,
            vec![
                ApprovalRecord {
                    request_id: "r1".into(),
                    approver: "bob".into(),
                    comment: Some("ok".into()),
                    approved_at: 10,
                },
                ApprovalRecord {
                    request_id: "r1".into(),
                    approver: "carol".into(),
                    comment: None,
                    approved_at: 12,
                },
            ]
        );
        let many = store
            .approvals_of_many(&["r1".into(), "r2".into(), "r3".into()])
            .await
            .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many["r1"], r1);
        assert_eq!(many["r2"].len(), 1);
        assert_eq!(many["r2"][0].approver, "bob");
    }

    #[tokio::test]
    async fn a_webhook_row_is_claimed_by_one_worker_until_its_lease_ends() {
        let (_dir, store) = temp_store().await;
        store
            .enqueue_webhooks(&["http://h/1".to_string()], "{}")
            .await
            .unwrap();
        let now = now_ms();
        let due = store.due_webhooks(now, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let id = due[0].0;
        assert!(
            store
                .claim_webhook(id, "gw-a/1", now, now + 30_000)
                .await
                .unwrap()
        );
        assert!(
            !store
                .claim_webhook(id, "gw-b/1", now, now + 30_000)
                .await
                .unwrap()
        );
        // Claimed rows are not due for others while the lease lasts.
        assert!(store.due_webhooks(now + 1, 10).await.unwrap().is_empty());
        // A failure reported by someone else's worker changes nothing.
        store
            .webhook_failed(id, "gw-b/1", 1, now, "x")
            .await
            .unwrap();
        assert!(store.due_webhooks(now + 1, 10).await.unwrap().is_empty());
        // The lease runs out: another worker may take it.
        let later = now + 30_001;
        assert_eq!(store.due_webhooks(later, 10).await.unwrap().len(), 1);
        assert!(
            store
                .claim_webhook(id, "gw-b/1", later, later + 30_000)
                .await
                .unwrap()
        );
        // The owner's failure frees it for the next attempt.
        store
            .webhook_failed(id, "gw-b/1", 1, later, "HTTP 503")
            .await
            .unwrap();
        let due = store.due_webhooks(later, 10).await.unwrap();
        assert_eq!(
            due,
            vec![(id, "http://h/1".to_string(), "{}".to_string(), 1)]
        );
        assert!(
            store
                .claim_webhook(id, "gw-a/1", later, later + 30_000)
                .await
                .unwrap()
        );
        store.webhook_delivered(id).await.unwrap();
        assert!(
            store
                .due_webhooks(later + 60_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            !store
                .claim_webhook(id, "gw-b/1", later + 60_000, later + 90_000)
                .await
                .unwrap()
        );
    }
}
