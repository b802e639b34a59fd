//! Locks (issue 12): a principal, a group, a key, an issuer, a container
//! or a login that no session may use until the lock is removed or
//! reaches its end. Queries only; the gateway enforces locks
//! (`crate::session::access` at every session, the SSH front door at
//! authentication, `crate::app`'s background loop on live sessions and
//! connections) and the CLI and the broker add and remove them. The
//! `target` column is free text: a new kind needs no migration.

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
    /// Every session of a principal in a group (as the login's groups
    /// claim or certificate extension named it, namespaced).
    Group,
    /// Every session of a connection that logged in with a public key
    /// (`SHA256:...`, a bound key or a certificate's key).
    Key,
    /// Every session of a principal an issuer vouched for (issuer URL, or
    /// `ssh-ca:SHA256:...` for a certificate authority).
    Issuer,
}

/// Who asks and for what, as a lock sees it: everything a lock may be on.
/// `None` where not known yet (at authentication no container or login).
#[derive(Debug, Clone, Copy, Default)]
pub struct LockSubject<'a> {
    /// The principal's subject.
    pub principal: &'a str,
    /// The principal's groups.
    pub groups: &'a [String],
    /// Who vouched for the principal.
    pub issuer: &'a str,
    /// `SHA256:...` of the key the connection logged in with.
    pub key_fingerprint: Option<&'a str>,
    /// The container.
    pub container: Option<&'a str>,
    /// The login in the container.
    pub login: Option<&'a str>,
}

impl LockTarget {
    /// `principal`, `container`, `login`, `group`, `key` or `issuer` (the
    /// `target` column, and the CLI's option name).
    pub fn as_str(self) -> &'static str {
        match self {
            LockTarget::Principal => "principal",
            LockTarget::Container => "container",
            LockTarget::Login => "login",
            LockTarget::Group => "group",
            LockTarget::Key => "key",
            LockTarget::Issuer => "issuer",
        }
    }

    /// Every kind, in the order the CLI lists them.
    pub const ALL: [LockTarget; 6] = [
        LockTarget::Principal,
        LockTarget::Group,
        LockTarget::Key,
        LockTarget::Container,
        LockTarget::Issuer,
        LockTarget::Login,
    ];

    /// The inverse of [`LockTarget::as_str`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<LockTarget> {
        match text {
            "principal" => Some(LockTarget::Principal),
            "container" => Some(LockTarget::Container),
            "login" => Some(LockTarget::Login),
            "group" => Some(LockTarget::Group),
            "key" => Some(LockTarget::Key),
            "issuer" => Some(LockTarget::Issuer),
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

    /// True when it covers `who` (a container or login lock covers only a
    /// subject whose container or login is known).
    pub fn covers(&self, who: &LockSubject<'_>) -> bool {
        let value = self.value.as_str();
        match self.target {
            LockTarget::Principal => value == who.principal,
            LockTarget::Group => who.groups.iter().any(|g| g == value),
            LockTarget::Key => who.key_fingerprint == Some(value),
            LockTarget::Issuer => value == who.issuer,
            LockTarget::Container => who.container == Some(value),
            LockTarget::Login => who.login == Some(value),
        }
    }
}

/// A lock to add.
#[derive(Debug, Clone)]
pub struct NewLock<'a> {
    /// What it covers.
    pub target: LockTarget,
    /// The principal, group, key, issuer, container or login (1..=256
    /// bytes).
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
        let who = |principal, container| LockSubject {
            principal,
            container,
            ..LockSubject::default()
        };
        assert!(alice.covers(&who("alice", None)));
        assert!(!alice.covers(&who("bob", Some("web1"))));
        assert!(ended.covers(&who("bob", Some("web1"))));
        assert!(!ended.covers(&who("bob", None)));
        assert!(store.remove_lock(&alice.id, "ops").await.unwrap());
        assert!(!store.remove_lock(&alice.id, "ops").await.unwrap());
        assert!(store.active_locks().await.unwrap().is_empty());
        let groups = ["developers".to_string()];
        let dev = LockSubject {
            principal: "carol",
            groups: &groups,
            issuer: "https://idp",
            key_fingerprint: Some("SHA256:k"),
            ..LockSubject::default()
        };
        for (target, value, covered) in [
            (LockTarget::Group, "developers", true),
            (LockTarget::Group, "admins", false),
            (LockTarget::Key, "SHA256:k", true),
            (LockTarget::Key, "SHA256:x", false),
            (LockTarget::Issuer, "https://idp", true),
            (LockTarget::Issuer, "https://other", false),
            (LockTarget::Login, "root", false),
        ] {
            let lock = store
                .add_lock(&NewLock {
                    target,
                    value,
                    reason: "r",
                    created_by: "ops",
                    expires_at: None,
                })
                .await
                .unwrap();
            assert_eq!(lock.covers(&dev), covered, "{target:?} {value}");
            assert_eq!(LockTarget::parse(target.as_str()), Some(target));
            assert!(store.remove_lock(&lock.id, "ops").await.unwrap());
        }
        let all = store.all_locks().await.unwrap();
        assert_eq!(all.len(), 9);
        assert_eq!(all[0].removed_by.as_deref(), Some("ops"));
    }
}
