//! Approvals of access requests (issue 7): one row per approver per
//! request, so each approver counts once, also when gateways race.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

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

pub(super) fn approval_row(r: &AnyRow) -> ApprovalRecord {
    ApprovalRecord {
        request_id: r.get("request_id"),
        approver: r.get("approver"),
        comment: r.get("comment"),
        approved_at: r.get("approved_at"),
    }
}

impl Store {
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
        Ok(rows.iter().map(approval_row).collect())
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
                let a = approval_row(&row);
                all.entry(a.request_id.clone()).or_default().push(a);
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

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
}
