//! One decision on one access request, in one transaction (issue 12):
//! the request and its approvals are read, the step (an approval, the
//! activation, a denial, a revocation, a review) written and its audit
//! events appended while the audit append lock is held (SQLite `BEGIN
//! IMMEDIATE`, PostgreSQL advisory lock), so decisions on a request are
//! serialised across gateways: two approvers never both count as
//! "first", and a step that lost a race sees the winner's state.
//!
//! Owns SQL only; what may be decided is the workflow's
//! ([`crate::grants`]). Nothing may write the audit log through another
//! connection while a decision is open (it would wait for this lock).

use super::approvals::approval_row;
use super::audit::{AuditRow, NewAuditRow, append_in};
use super::grants::{COLUMNS, from_row};
use super::{AccessRequestRecord, ApprovalRecord, Store, StoreError};

/// An open decision on one request; dropped without
/// [`RequestDecision::commit`], nothing of it is written.
pub struct RequestDecision {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// The request as it is now, under the lock.
    pub request: AccessRequestRecord,
    /// Its approvals now, oldest first.
    pub approvals: Vec<ApprovalRecord>,
    written: Vec<AuditRow>,
}

impl Store {
    /// Takes the audit append lock and reads request `id` and its
    /// approvals; `None` when there is no such request.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn begin_request_decision(
        &self,
        id: &str,
    ) -> Result<Option<RequestDecision>, StoreError> {
        let mut tx = self.begin_audit().await?;
        let sql = format!("SELECT {COLUMNS} FROM access_requests WHERE id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let approvals = sqlx::query(
            "SELECT request_id, approver, comment, approved_at FROM access_approvals \
             WHERE request_id = $1 ORDER BY approved_at, approver",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Some(RequestDecision {
            tx,
            request: from_row(&row),
            approvals: approvals.iter().map(approval_row).collect(),
            written: Vec::new(),
        }))
    }
}

impl RequestDecision {
    /// Appends an audit event inside the decision; it is committed with
    /// the step (or not at all).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn append_audit(&mut self, e: &NewAuditRow<'_>) -> Result<(), StoreError> {
        let row = append_in(&mut self.tx, e).await?;
        self.written.push(row);
        Ok(())
    }

    /// Records `approver`'s approval at `now` (unix ms) and adds it to
    /// [`RequestDecision::approvals`]. False when they already approved.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn add_approval(
        &mut self,
        approver: &str,
        comment: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO access_approvals (request_id, approver, comment, approved_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (request_id, approver) DO NOTHING",
        )
        .bind(&self.request.id)
        .bind(approver)
        .bind(comment)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        self.approvals.push(ApprovalRecord {
            request_id: self.request.id.clone(),
            approver: approver.to_string(),
            comment: comment.map(str::to_string),
            approved_at: now,
        });
        Ok(true)
    }

    /// Runs one conditional `UPDATE` of the request (`set`, with `$1`
    /// the id and `$2`, `$3`, `$4` the given values); true when it changed
    /// the row.
    async fn update(
        &mut self,
        sql: &'static str,
        a: Option<&str>,
        b: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql)
            .bind(&self.request.id)
            .bind(a)
            .bind(b)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Turns the pending request into a grant from `now` for its
    /// duration, decided by `approver`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn activate(
        &mut self,
        approver: &str,
        comment: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.update(
            "UPDATE access_requests SET status = 'approved', decided_by = $2, decided_at = $4, \
             decision_comment = $3, starts_at = $4, expires_at = $4 + duration_seconds * 1000 \
             WHERE id = $1 AND status = 'pending'",
            Some(approver),
            comment,
            now,
        )
        .await
    }

    /// Denies the pending request.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn deny(&mut self, by: &str, reason: &str, now: i64) -> Result<bool, StoreError> {
        self.update(
            "UPDATE access_requests SET status = 'denied', decided_by = $2, decided_at = $4, \
             decision_comment = $3 WHERE id = $1 AND status = 'pending'",
            Some(by),
            Some(reason),
            now,
        )
        .await
    }

    /// Revokes the grant at `now`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn revoke(&mut self, by: &str, reason: &str, now: i64) -> Result<bool, StoreError> {
        self.update(
            "UPDATE access_requests SET revoked_at = $4, revoked_by = $2, revoke_reason = $3 \
             WHERE id = $1 AND status = 'approved' AND revoked_at IS NULL AND expires_at > $4",
            Some(by),
            Some(reason),
            now,
        )
        .await
    }

    /// Marks the break-glass grant reviewed.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn review(
        &mut self,
        by: &str,
        comment: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.update(
            "UPDATE access_requests SET reviewed_by = $2, reviewed_at = $4, review_comment = $3 \
             WHERE id = $1 AND break_glass = 1 AND status = 'approved' AND reviewed_at IS NULL",
            Some(by),
            comment,
            now,
        )
        .await
    }

    /// Commits the step and its audit events; returns the events as
    /// written, for export and logging.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is written then.
    pub async fn commit(self) -> Result<Vec<AuditRow>, StoreError> {
        self.tx.commit().await?;
        Ok(self.written)
    }
}
