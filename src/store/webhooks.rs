//! The webhook outbox (issue 7, item 5): notifications queued with the
//! step they report and delivered by whichever gateway claims them first
//! (see [`crate::grants::notify`]).

use sqlx::Row;

use super::{Store, StoreError, now_ms};

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

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
