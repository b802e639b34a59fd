//! Locks (issue 12): a principal, a container or a login that no session
//! may use until the lock is removed or reaches its end. Queries only;
//! the gateway enforces locks (`crate::session::access` at every session,
//! the SSH front door at authentication, `crate::app`'s background loop
//! on live sessions) and the CLI and the broker add and remove them.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// What a lock covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockTarget {
    /// Every session of a principal (its subject).
    Principal,
    /// Every session into a container.
    Container,
    /// Every session as a login, in any container.
    Login,
}

impl LockTarget {
    /// `principal`, `container` or `login` (the `target` column).
    pub fn as_str(self) -> &'static str {
        match self {
            LockTarget::Principal => "principal",
            LockTarget::Container => "container",
            LockTarget::Login => "login",
        }
    }

    /// The inverse of [`LockTarget::as_str`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<LockTarget> {
        match text {
            "principal" => Some(LockTarget::Principal),
            "container" => Some(LockTarget::Container),
            "login" => Some(LockTarget::Login),
            _ => None,
        }
    }
}

/// A lock as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockRecord {
    /// Its id (12 hex digits).
    pub id: String,
    /// What it covers.
    pub target: LockTarget,
    /// The principal's subject, the container's name or the login.
    pub value: String,
    /// Why, shown to the user whose session it ends or refuses.
    pub reason: String,
    /// Who added it.
    pub created_by: String,
    /// When, unix milliseconds.
    pub created_at: i64,
    /// When it ends on its own, unix milliseconds; `None`: until removed.
    pub expires_at: Option<i64>,
    /// When it was removed, unix milliseconds.
    pub removed_at: Option<i64>,
    /// Who removed it.
    pub removed_by: Option<String>,
}

impl LockRecord {
    /// True when it holds at `now` (unix milliseconds): not removed, not
    /// past its end.
    pub fn is_active(&self, now: i64) -> bool {
        self.removed_at.is_none() && self.expires_at.is_none_or(|end| now < end)
    }

    /// True when it covers a session of `principal` into `container` as
    /// `login` (`None`: not known yet, e.g. at authentication: only a
    /// principal lock can cover it then).
    pub fn covers(&self, principal: &str, container: Option<&str>, login: Option<&str>) -> bool {
        match self.target {
            LockTarget::Principal => self.value == principal,
            LockTarget::Container => container == Some(self.value.as_str()),
            LockTarget::Login => login == Some(self.value.as_str()),
        }
    }
}

/// A lock to add.
#[derive(Debug, Clone)]
pub struct NewLock<'a> {
    /// What it covers.
    pub target: LockTarget,
    /// The principal, container or login (1..=256 bytes).
    pub value: &'a str,
    /// Why (1..=512 bytes).
    pub reason: &'a str,
    /// Who adds it.
    pub created_by: &'a str,
    /// Its end, unix milliseconds; `None`: until removed.
    pub expires_at: Option<i64>,
}

const COLUMNS: &str =
    "id, target, value, reason, created_by, created_at, expires_at, removed_at, removed_by";

fn lock_from_row(row: &sqlx::any::AnyRow) -> Option<LockRecord> {
    Some(LockRecord {
        id: row.get("id"),
        target: LockTarget::parse(&row.get::<String, _>("target"))?,
        value: row.get("value"),
        reason: row.get("reason"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        removed_at: row.get("removed_at"),
        removed_by: row.get("removed_by"),
    })
}

impl Store {
    /// Adds a lock; returns it as stored.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn add_lock(&self, new: &NewLock<'_>) -> Result<LockRecord, StoreError> {
        let lock = LockRecord {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            target: new.target,
            value: new.value.to_string(),
            reason: new.reason.to_string(),
            created_by: new.created_by.to_string(),
            created_at: now_ms(),
            expires_at: new.expires_at,
            removed_at: None,
            removed_by: None,
        };
        sqlx::query(
            "INSERT INTO locks (id, target, value, reason, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&lock.id)
        .bind(lock.target.as_str())
        .bind(&lock.value)
        .bind(&lock.reason)
        .bind(&lock.created_by)
        .bind(lock.created_at)
        .bind(lock.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(lock)
    }

    /// The locks that hold now, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn active_locks(&self) -> Result<Vec<LockRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM locks WHERE removed_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $1) ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().filter_map(lock_from_row).collect())
    }

    /// Every lock, removed and ended ones included, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn all_locks(&self) -> Result<Vec<LockRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM locks ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().filter_map(lock_from_row).collect())
    }

    /// Removes lock `id` (it stays listed as removed); false when no such
    /// lock holds.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn remove_lock(&self, id: &str, by: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE locks SET removed_at = $1, removed_by = $2 WHERE id = $3 AND removed_at IS NULL",
        )
        .bind(now_ms())
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

    #[tokio::test]
    async fn locks_are_added_listed_matched_and_removed() {
        let (_dir, store) = temp_store().await;
        let alice = store
            .add_lock(&NewLock {
                target: LockTarget::Principal,
                value: "alice",
                reason: "OPS-1 offboarded",
                created_by: "ops",
                expires_at: None,
            })
            .await
            .unwrap();
        let ended = store
            .add_lock(&NewLock {
                target: LockTarget::Container,
                value: "web1",
                reason: "over",
                created_by: "ops",
                expires_at: Some(now_ms() - 1),
            })
            .await
            .unwrap();
        assert!(!ended.is_active(now_ms()));
        assert_eq!(store.active_locks().await.unwrap(), vec![alice.clone()]);
        assert!(alice.covers("alice", None, None));
        assert!(!alice.covers("bob", Some("web1"), Some("root")));
        assert!(ended.covers("bob", Some("web1"), None));
        assert!(!ended.covers("bob", None, None));
        assert!(store.remove_lock(&alice.id, "ops").await.unwrap());
        assert!(!store.remove_lock(&alice.id, "ops").await.unwrap());
        assert!(store.active_locks().await.unwrap().is_empty());
        let all = store.all_locks().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].removed_by.as_deref(), Some("ops"));
    }
}
