//! Queries on `key_bindings` (migrations `0003_key_bindings.sql`,
//! `0014_key_binding_origin.sql`): public keys bound to a principal after
//! an IdP login, where and how each was bound, and whether its principal
//! was told.
//!
//! The refresh token column is a secret (sealed by
//! [`crate::identity`] before it gets here): it is read into a
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
    /// Client address (`ip:port`) of the connection that bound it (none
    /// for bindings made before migration 0014).
    pub bound_from: Option<String>,
    /// The login that bound it: `device_flow` or `token`.
    pub bound_by: Option<String>,
    /// Unix ms a later login of its principal was told about it.
    pub announced_at: Option<i64>,
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
    /// Refresh token (secret; sealed).
    pub refresh_token: Option<&'a Secret>,
    /// Client address of the connection that binds it.
    pub bound_from: Option<&'a str>,
    /// `device_flow` or `token`.
    pub bound_by: Option<&'a str>,
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
     expires_at, id_token_expires_at, refresh_token, last_used_at, revoked_at, revoked_reason, \
     bound_from, bound_by, announced_at";

impl Store {
    /// Binds a key, replacing any earlier binding of the same key
    /// (revoked or not).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn upsert_key_binding(&self, b: &NewKeyBinding<'_>) -> Result<(), StoreError> {
        self.upsert_key_binding_notified(b, &[], "").await
    }

    /// Binds a key as [`Store::upsert_key_binding`] and, in the same
    /// transaction, queues `body` for each webhook URL in `urls` (the
    /// `webhook_outbox` of the grants notifier, which delivers it): a
    /// binding is never made without its notification. A re-binding of a
    /// key to another principal is news again (`announced_at` cleared);
    /// to the same principal it is not.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is written then.
    pub async fn upsert_key_binding_notified(
        &self,
        b: &NewKeyBinding<'_>,
        urls: &[String],
        body: &str,
    ) -> Result<(), StoreError> {
        let groups = serde_json::to_string(b.groups).unwrap_or_else(|_| "[]".into());
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO key_bindings (fingerprint, public_key, principal, issuer, email, groups, \
             created_at, expires_at, id_token_expires_at, refresh_token, last_used_at, \
             bound_from, bound_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (fingerprint) DO UPDATE SET public_key = excluded.public_key, \
             announced_at = CASE WHEN key_bindings.principal = excluded.principal \
             THEN key_bindings.announced_at ELSE NULL END, \
             principal = excluded.principal, issuer = excluded.issuer, email = excluded.email, \
             groups = excluded.groups, created_at = excluded.created_at, \
             expires_at = excluded.expires_at, id_token_expires_at = excluded.id_token_expires_at, \
             refresh_token = excluded.refresh_token, last_used_at = excluded.last_used_at, \
             bound_from = excluded.bound_from, bound_by = excluded.bound_by, \
             refresh_claimed_until = NULL, revoked_at = NULL, revoked_reason = NULL",
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
        .bind(b.bound_from)
        .bind(b.bound_by)
        .execute(&mut *tx)
        .await?;
        for url in urls {
            sqlx::query(
                "INSERT INTO webhook_outbox (url, body, created_at, next_attempt_at) \
                 VALUES ($1, $2, $3, $3)",
            )
            .bind(url)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The bindings of `principal` its logins were not told about yet,
    /// except the key `except` (the one in use), marked told now in the
    /// same statement (so two gateways never both show one). Newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn announce_key_bindings(
        &self,
        principal: &str,
        except: &str,
    ) -> Result<Vec<KeyBinding>, StoreError> {
        let sql = format!(
            "UPDATE key_bindings SET announced_at = $1 \
             WHERE principal = $2 AND announced_at IS NULL AND fingerprint <> $3 \
             RETURNING {COLUMNS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(principal)
            .bind(except)
            .fetch_all(&self.pool)
            .await?;
        let mut found: Vec<KeyBinding> = rows.iter().map(binding_from_row).collect();
        found.sort_by_key(|b| std::cmp::Reverse(b.created_at));
        Ok(found)
    }

    /// The bindings of `principal`, newest first; with `all`, revoked and
    /// expired ones too.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn key_bindings_of(
        &self,
        principal: &str,
        all: bool,
    ) -> Result<Vec<KeyBinding>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM key_bindings WHERE principal = $1 AND \
             ($2 = 1 OR (revoked_at IS NULL AND expires_at > $3)) ORDER BY created_at DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(principal)
            .bind(i64::from(all))
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(binding_from_row).collect())
    }

    /// Claims the refresh of binding `fingerprint` until `until` (unix ms)
    /// when its ID token still expires at `id_token_expires_at` (nobody
    /// refreshed it meanwhile) and no live claim is held; true when this
    /// caller got it.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn claim_key_binding_refresh(
        &self,
        fingerprint: &str,
        id_token_expires_at: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE key_bindings SET refresh_claimed_until = $1 \
             WHERE fingerprint = $2 AND revoked_at IS NULL AND id_token_expires_at = $3 \
             AND (refresh_claimed_until IS NULL OR refresh_claimed_until < $4)",
        )
        .bind(until)
        .bind(fingerprint)
        .bind(id_token_expires_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drops this gateway's refresh claim on `fingerprint` (the refresh
    /// could not be made; let the next connection try).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn release_key_binding_refresh(&self, fingerprint: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE key_bindings SET refresh_claimed_until = NULL WHERE fingerprint = $1")
            .bind(fingerprint)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Bindings whose refresh token does not start with `sealed_prefix`
    /// (no `%` or `_` in it): clear text written before sealing existed.
    /// `(fingerprint, principal, issuer, token)`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn clear_text_refresh_tokens(
        &self,
        sealed_prefix: &str,
    ) -> Result<Vec<(String, String, String, Secret)>, StoreError> {
        let rows = sqlx::query(
            "SELECT fingerprint, principal, issuer, refresh_token FROM key_bindings \
             WHERE refresh_token IS NOT NULL AND refresh_token NOT LIKE $1",
        )
        .bind(format!("{sealed_prefix}%"))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let token: String = r.get("refresh_token");
                (
                    r.get("fingerprint"),
                    r.get("principal"),
                    r.get("issuer"),
                    Secret::new(token),
                )
            })
            .collect())
    }

    /// Replaces the refresh token of `fingerprint` when it is still `old`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn replace_refresh_token(
        &self,
        fingerprint: &str,
        old: &Secret,
        new: &Secret,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE key_bindings SET refresh_token = $1 WHERE fingerprint = $2 \
             AND refresh_token = $3",
        )
        .bind(new.expose())
        .bind(fingerprint)
        .bind(old.expose())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
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
            "UPDATE key_bindings SET revoked_at = $1, revoked_reason = $2, refresh_token = NULL, \
             refresh_claimed_until = NULL WHERE revoked_at IS NULL AND ($3 = '' OR principal = $3) \
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
             refresh_token = COALESCE($4, refresh_token), last_used_at = $5, \
             refresh_claimed_until = NULL \
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
        bound_from: r.get("bound_from"),
        bound_by: r.get("bound_by"),
        announced_at: r.get("announced_at"),
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
            bound_from: Some("192.0.2.1:5000"),
            bound_by: Some("device_flow"),
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
