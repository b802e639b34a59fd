//! Upload state of recordings sent to object storage
//! (`recording_uploads`, migration 0009): what each node has uploaded of
//! each recording, so an upload resumes after a restart and a reviewer
//! finds a recording whose local copy is gone.
//!
//! Owns SQL only; it never touches files or the object store. A node only
//! ever changes its own rows (`gateway` = this store's gateway id).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, now_ms};

/// One recording's upload, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// The session.
    pub session_id: String,
    /// The node that recorded it.
    pub gateway: String,
    /// The local recording's path.
    pub local_path: String,
    /// The recording's object key.
    pub object_key: String,
    /// The manifest's object key.
    pub manifest_key: String,
    /// `recording`, `pending`, `uploaded` or `failed`.
    pub state: String,
    /// The multipart upload's id, once one was created.
    pub multipart_id: Option<String>,
    /// Ids of the parts uploaded so far, in order (JSON array in the row).
    pub parts: Vec<String>,
    /// Bytes of the recording the parts hold.
    pub uploaded_bytes: i64,
    /// Final size, once the session ended.
    pub bytes: Option<i64>,
    /// Final SHA-256 (lowercase hex), once the session ended.
    pub sha256: Option<String>,
    /// True when the recorder finished the file; false when it is the file
    /// as found after the session's writer stopped or the node restarted.
    pub finished: bool,
    /// Attempts at finishing the upload so far.
    pub attempts: i64,
    /// Not retried before this time, unix ms.
    pub next_attempt_at: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

const COLUMNS: &str = "session_id, gateway, local_path, object_key, manifest_key, state, \
     multipart_id, parts, uploaded_bytes, bytes, sha256, finished, attempts, next_attempt_at, \
     last_error";

fn from_row(r: &AnyRow) -> UploadRecord {
    let parts: String = r.get("parts");
    UploadRecord {
        session_id: r.get("session_id"),
        gateway: r.get("gateway"),
        local_path: r.get("local_path"),
        object_key: r.get("object_key"),
        manifest_key: r.get("manifest_key"),
        state: r.get("state"),
        multipart_id: r.get("multipart_id"),
        parts: serde_json::from_str(&parts).unwrap_or_default(),
        uploaded_bytes: r.get("uploaded_bytes"),
        bytes: r.get("bytes"),
        sha256: r.get("sha256"),
        finished: r.get::<i64, _>("finished") != 0,
        attempts: r.get("attempts"),
        next_attempt_at: r.get("next_attempt_at"),
        last_error: r.get("last_error"),
    }
}

impl Store {
    /// Adds the upload of a recording that starts now (`recording`).
    ///
    /// # Errors
    /// [`StoreError::Query`], e.g. when the session already has one.
    pub async fn insert_upload(
        &self,
        session_id: &str,
        local_path: &str,
        object_key: &str,
        manifest_key: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO recording_uploads (session_id, gateway, local_path, object_key, \
             manifest_key, state, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'recording', $6, $6)",
        )
        .bind(session_id)
        .bind(&self.gateway_id)
        .bind(local_path)
        .bind(object_key)
        .bind(manifest_key)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One recording's upload, whichever node made it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn upload(&self, session_id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM recording_uploads WHERE session_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// This node's uploads in `state`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn uploads_in_state(&self, state: &str) -> Result<Vec<UploadRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM recording_uploads WHERE gateway = $1 AND state = $2 \
             ORDER BY created_at, session_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.gateway_id)
            .bind(state)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Records the multipart upload so far: its id, the part ids in order
    /// and the bytes they hold (`None` id: start over).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn set_upload_parts(
        &self,
        session_id: &str,
        multipart_id: Option<&str>,
        parts: &[String],
        uploaded_bytes: i64,
    ) -> Result<(), StoreError> {
        let parts = serde_json::to_string(parts).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "UPDATE recording_uploads SET multipart_id = $1, parts = $2, uploaded_bytes = $3, \
             updated_at = $4 WHERE session_id = $5 AND gateway = $6",
        )
        .bind(multipart_id)
        .bind(parts)
        .bind(uploaded_bytes)
        .bind(now_ms())
        .bind(session_id)
        .bind(&self.gateway_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The recording ended (or was found after a restart): its final size
    /// and digest; the rest of the upload is due now (`pending`).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn set_upload_pending(
        &self,
        session_id: &str,
        bytes: i64,
        sha256: &str,
        finished: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE recording_uploads SET state = 'pending', bytes = $1, sha256 = $2, \
             finished = $3, next_attempt_at = 0, updated_at = $4 \
             WHERE session_id = $5 AND gateway = $6",
        )
        .bind(bytes)
        .bind(sha256)
        .bind(i64::from(finished))
        .bind(now_ms())
        .bind(session_id)
        .bind(&self.gateway_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An attempt failed: counted, and the next one not before
    /// `next_attempt_at` (unix ms). `state` is `pending` (retried) or
    /// `failed` (not retried).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn set_upload_failed(
        &self,
        session_id: &str,
        state: &str,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE recording_uploads SET state = $1, attempts = $2, next_attempt_at = $3, \
             last_error = $4, updated_at = $5 WHERE session_id = $6 AND gateway = $7",
        )
        .bind(state)
        .bind(attempts)
        .bind(next_attempt_at)
        .bind(error)
        .bind(now_ms())
        .bind(session_id)
        .bind(&self.gateway_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The manifest was verified: `uploaded` (the local copy may go).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn set_upload_done(&self, session_id: &str, attempts: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE recording_uploads SET state = 'uploaded', attempts = $1, last_error = NULL, \
             updated_at = $2 WHERE session_id = $3 AND gateway = $4",
        )
        .bind(attempts)
        .bind(now_ms())
        .bind(session_id)
        .bind(&self.gateway_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Local paths of this node's recordings not yet uploaded (the spool).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn spooled_recordings(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT local_path FROM recording_uploads WHERE gateway = $1 \
             AND state IN ('recording', 'pending', 'failed')",
        )
        .bind(&self.gateway_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get("local_path")).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use crate::store::tests::temp_store;

    #[tokio::test]
    async fn an_upload_goes_from_recording_to_uploaded_on_its_node_only() {
        let (_dir, store) = temp_store().await;
        let node = store.clone().for_gateway("n1");
        let other = store.clone().for_gateway("n2");
        node.insert_upload("s1", "/r/s1.cast", "p/sessions/s1/recording.cast", "p/m")
            .await
            .unwrap();
        assert_eq!(node.uploads_in_state("recording").await.unwrap().len(), 1);
        assert!(
            other
                .uploads_in_state("recording")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(node.spooled_recordings().await.unwrap(), ["/r/s1.cast"]);
        node.set_upload_parts("s1", Some("mp"), &["e1".into(), "e2".into()], 16 << 20)
            .await
            .unwrap();
        // Another node cannot change it.
        other.set_upload_pending("s1", 1, "x", true).await.unwrap();
        let row = store.upload("s1").await.unwrap().unwrap();
        assert_eq!(row.state, "recording");
        assert_eq!(row.parts, ["e1", "e2"]);
        assert_eq!(row.uploaded_bytes, 16 << 20);
        node.set_upload_pending("s1", 20 << 20, "ab", true)
            .await
            .unwrap();
        node.set_upload_failed("s1", "pending", 1, 5_000, "store down")
            .await
            .unwrap();
        let row = store.upload("s1").await.unwrap().unwrap();
        assert_eq!(
            (
                row.state.as_str(),
                row.bytes,
                row.sha256.as_deref(),
                row.finished
            ),
            ("pending", Some(20 << 20), Some("ab"), true)
        );
        assert_eq!((row.attempts, row.next_attempt_at), (1, 5_000));
        assert_eq!(row.last_error.as_deref(), Some("store down"));
        node.set_upload_done("s1", 2).await.unwrap();
        let row = store.upload("s1").await.unwrap().unwrap();
        assert_eq!((row.state.as_str(), row.attempts), ("uploaded", 2));
        assert!(node.spooled_recordings().await.unwrap().is_empty());
        assert_eq!(store.upload("nope").await.unwrap(), None);
    }
}
