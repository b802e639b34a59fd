//! Queries on `key_bindings` (migration `0003_key_bindings.sql`): public
//! keys bound to a principal after an IdP login.
//!
//! The refresh token column is a secret: it is read into a
//! [`crate::config::Secret`] and never serialised or listed.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};
use crate::config::Secret;

/// A binding as stored.
#[derive(Debug, Clone, Serialize)]
pub struct KeyBinding {
    /// `SHA256:...` fingerprint of the key.
    pub fingerprint: String,
    /// The key in OpenSSH format.
    pub public_key: String,
    /// The principal (issuer prefix + subject).
    pub principal: String,
    /// Issuer URL the principal logged in at.
    pub issuer: String,
    /// Email from the latest token.
    pub email: Option<String>,
    /// Groups from the latest token.
    pub groups: Vec<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; the binding ends here at the latest.
    pub expires_at: i64,
    /// Unix ms: `exp` of the latest ID token.
    pub id_token_expires_at: i64,
    /// The refresh token, when the IdP gave one; never serialised.
    #[serde(skip)]
    pub refresh_token: Option<Secret>,
    /// True when a refresh token is stored (for listings).
    pub refreshable: bool,
    /// Unix ms of the last login with this key.
    pub last_used_at: Option<i64>,
    /// Unix ms of the revocation, when revoked.
    pub revoked_at: Option<i64>,
    /// Why it was revoked (`revoked by operator`, `refresh failed: ...`).
    pub revoked_reason: Option<String>,
}

/// A binding to create (or replace: the same key logged in again).
#[derive(Debug, Clone)]
pub struct NewKeyBinding<'a> {
    /// `SHA256:...` fingerprint.
    pub fingerprint: &'a str,
    /// OpenSSH public key text.
    pub public_key: &'a str,
    /// Principal.
    pub principal: &'a str,
    /// Issuer URL.
    pub issuer: &'a str,
    /// Email.
    pub email: Option<&'a str>,
    /// Groups.
    pub groups: &'a [String],
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms.
    pub id_token_expires_at: i64,
    /// Refresh token (secret).
    pub refresh_token: Option<&'a Secret>,
}

/// What a successful refresh changes.
#[derive(Debug, Clone)]
pub struct RefreshedBinding<'a> {
    /// Email of the new ID token.
    pub email: Option<&'a str>,
    /// Groups of the new ID token.
    pub groups: &'a [String],
    /// `exp` of the new ID token, unix ms.
    pub id_token_expires_at: i64,
    /// The new refresh token when the IdP rotated it.
    pub refresh_token: Option<&'a Secret>,
}

const COLUMNS: &str = "fingerprint, public_key, principal, issuer, email, groups, created_at, \
     expires_at, id_token_expires_at, refresh_token, last_used_at, revoked_at, revoked_reason";

impl Store {
    /// Binds a key, replacing any earlier binding of the same key
    /// (revoked or not).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn upsert_key_binding(&self, b: &NewKeyBinding<'_>) -> Result<(), StoreError> {
        let groups = serde_json::to_string(b.groups).unwrap_or_else(|_| "[]".into());
        let now = now_ms();
        sqlx::query(
            "INSERT INTO key_bindings (fingerprint, public_key, principal, issuer, email, groups, \
             created_at, expires_at, id_token_expires_at, refresh_token, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (fingerprint) DO UPDATE SET public_key = excluded.public_key, \
             principal = excluded.principal, issuer = excluded.issuer, email = excluded.email, \
             groups = excluded.groups, created_at = excluded.created_at, \
             expires_at = excluded.expires_at, id_token_expires_at = excluded.id_token_expires_at, \
             refresh_token = excluded.refresh_token, last_used_at = excluded.last_used_at, \
             revoked_at = NULL, revoked_reason = NULL",
        )
        .bind(b.fingerprint)
        .bind(b.public_key)
        .bind(b.principal)
        .bind(b.issuer)
        .bind(b.email)
        .bind(groups)
        .bind(now)
        .bind(b.expires_at)
        .bind(b.id_token_expires_at)
        .bind(b.refresh_token.map(Secret::expose))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The binding of `fingerprint`, revoked or expired ones included.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn key_binding(&self, fingerprint: &str) -> Result<Option<KeyBinding>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM key_bindings WHERE fingerprint = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(binding_from_row))
    }

    /// Bindings ordered by principal; with `all`, revoked and expired too.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn list_key_bindings(&self, all: bool) -> Result<Vec<KeyBinding>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM key_bindings WHERE $1 = 1 OR (revoked_at IS NULL AND expires_at > $2) \
             ORDER BY principal, created_at"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(all))
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(binding_from_row).collect())
    }

    /// Revokes the live bindings of `principal` and/or `fingerprint` (at
    /// least one must be given, else nothing is revoked); returns the
    /// fingerprints revoked. The refresh token is deleted with it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn revoke_key_bindings(
        &self,
        principal: Option<&str>,
        fingerprint: Option<&str>,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        if principal.is_none() && fingerprint.is_none() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "UPDATE key_bindings SET revoked_at = $1, revoked_reason = $2, refresh_token = NULL \
             WHERE revoked_at IS NULL AND ($3 = '' OR principal = $3) \
             AND ($4 = '' OR fingerprint = $4) RETURNING fingerprint",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(principal.unwrap_or(""))
        .bind(fingerprint.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get("fingerprint")).collect())
    }

    /// Records a successful refresh at the IdP and a use now.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn refresh_key_binding(
        &self,
        fingerprint: &str,
        r: &RefreshedBinding<'_>,
    ) -> Result<(), StoreError> {
        let groups = serde_json::to_string(r.groups).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "UPDATE key_bindings SET email = $1, groups = $2, id_token_expires_at = $3, \
             refresh_token = COALESCE($4, refresh_token), last_used_at = $5 \
             WHERE fingerprint = $6 AND revoked_at IS NULL",
        )
        .bind(r.email)
        .bind(groups)
        .bind(r.id_token_expires_at)
        .bind(r.refresh_token.map(Secret::expose))
        .bind(now_ms())
        .bind(fingerprint)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives every live binding of `principal` the groups and email of its
    /// latest token (so groups are never frozen at binding time); returns
    /// how many rows changed.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn update_binding_claims(
        &self,
        principal: &str,
        email: Option<&str>,
        groups: &[String],
    ) -> Result<u64, StoreError> {
        let groups = serde_json::to_string(groups).unwrap_or_else(|_| "[]".into());
        let done = sqlx::query(
            "UPDATE key_bindings SET email = $1, groups = $2 \
             WHERE principal = $3 AND revoked_at IS NULL",
        )
        .bind(email)
        .bind(groups)
        .bind(principal)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records a login with the key now.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn touch_key_binding(&self, fingerprint: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE key_bindings SET last_used_at = $1 WHERE fingerprint = $2")
            .bind(now_ms())
            .bind(fingerprint)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn binding_from_row(r: &sqlx::any::AnyRow) -> KeyBinding {
    let groups: String = r.get("groups");
    let refresh_token: Option<String> = r.get("refresh_token");
    KeyBinding {
        fingerprint: r.get("fingerprint"),
        public_key: r.get("public_key"),
        principal: r.get("principal"),
        issuer: r.get("issuer"),
        email: r.get("email"),
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        id_token_expires_at: r.get("id_token_expires_at"),
        refreshable: refresh_token.is_some(),
        refresh_token: refresh_token.map(Secret::new),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
        revoked_reason: r.get("revoked_reason"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_refresh_revoke_rebind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let secret = Secret::new("rt-1".into());
        let groups = vec!["ops".to_string()];
        let new = NewKeyBinding {
            fingerprint: "SHA256:abc",
            public_key: "ssh-ed25519 AAAA",
            principal: "alice",
            issuer: "http://idp",
            email: None,
            groups: &groups,
            expires_at: now_ms() + 60_000,
            id_token_expires_at: now_ms() + 1000,
            refresh_token: Some(&secret),
        };
        store.upsert_key_binding(&new).await.unwrap();
        let b = store.key_binding("SHA256:abc").await.unwrap().unwrap();
        assert_eq!(b.groups, groups);
        assert_eq!(b.refresh_token.as_ref().unwrap().expose(), "rt-1");
        assert!(!serde_json::to_string(&b).unwrap().contains("rt-1"));
        let newer = vec!["admins".to_string()];
        store
            .refresh_key_binding(
                "SHA256:abc",
                &RefreshedBinding {
                    email: Some("a@x"),
                    groups: &newer,
                    id_token_expires_at: 5,
                    refresh_token: None,
                },
            )
            .await
            .unwrap();
        let b = store.key_binding("SHA256:abc").await.unwrap().unwrap();
        assert_eq!(b.groups, newer);
        assert_eq!(b.refresh_token.as_ref().unwrap().expose(), "rt-1");
        assert_eq!(store.list_key_bindings(false).await.unwrap().len(), 1);
        assert!(
            store
                .revoke_key_bindings(None, None, "x")
                .await
                .unwrap()
                .is_empty()
        );
        let revoked = store
            .revoke_key_bindings(Some("alice"), None, "by operator")
            .await
            .unwrap();
        assert_eq!(revoked, ["SHA256:abc"]);
        let b = store.key_binding("SHA256:abc").await.unwrap().unwrap();
        assert!(b.revoked_at.is_some() && b.refresh_token.is_none());
        assert!(store.list_key_bindings(false).await.unwrap().is_empty());
        assert_eq!(store.list_key_bindings(true).await.unwrap().len(), 1);
        store.upsert_key_binding(&new).await.unwrap();
        let b = store.key_binding("SHA256:abc").await.unwrap().unwrap();
        assert!(b.revoked_at.is_none());
    }
}
