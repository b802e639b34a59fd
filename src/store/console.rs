//! Queries of the web console (issue 17, migration 0013): console logins
//! (`web_sessions`), authorization requests in flight
//! (`web_login_states`), SSH logins waiting for the console
//! (`ssh_web_logins`) and the filtered, paged audit listing.
//!
//! Secrets sent to browsers are looked up by their SHA-256 only; the
//! caller hashes them. Single-use rows are taken with a conditional
//! `DELETE`/`UPDATE` whose row count says who won, so two gateways sharing
//! the database never both use one.

use sqlx::Row;

use super::{AuditRow, Store, StoreError};

/// A console login as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSessionRecord {
    /// SHA-256 (hex) of the cookie value.
    pub cookie_sha256: String,
    /// Principal subject.
    pub principal: String,
    /// Email, when the ID token had one.
    pub email: Option<String>,
    /// Groups from the ID token.
    pub groups: Vec<String>,
    /// Issuer URL.
    pub issuer: String,
    /// Last login at the issuer (`auth_time`), unix ms.
    pub auth_time: i64,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last request, unix ms.
    pub last_seen_at: i64,
    /// Hard end, unix ms.
    pub expires_at: i64,
    /// Client address at login.
    pub client_addr: Option<String>,
}

/// An authorization request in flight (OpenID Connect Core 1.0 §3.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStateRecord {
    /// SHA-256 (hex) of `state`.
    pub state_sha256: String,
    /// SHA-256 (hex) of the browser cookie that started it.
    pub browser_sha256: String,
    /// Issuer URL.
    pub issuer: String,
    /// PKCE `code_verifier` (RFC 7636 §4.1).
    pub code_verifier: String,
    /// The `nonce` sent.
    pub nonce: String,
    /// `login`, `fresh` or `ssh`.
    pub purpose: String,
    /// For `ssh`: the SHA-256 of the SSH login's code.
    pub ssh_code_sha256: Option<String>,
    /// Local path to go back to.
    pub return_to: String,
    /// Started, unix ms.
    pub created_at: i64,
    /// Ends, unix ms.
    pub expires_at: i64,
}

/// An SSH login waiting for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshWebLoginRecord {
    /// SHA-256 (hex) of the code in the link.
    pub code_sha256: String,
    /// The SSH client's `ip:port`.
    pub client_addr: String,
    /// `SHA256:...` of the key that will be bound, when one is.
    pub fingerprint: Option<String>,
    /// The SSH user name asked for.
    pub target: String,
    /// The gateway holding the SSH connection.
    pub gateway: String,
    /// Created, unix ms.
    pub created_at: i64,
    /// Ends, unix ms.
    pub expires_at: i64,
    /// `pending`, `authenticated`, `confirmed`, `taken` or `refused`.
    pub status: String,
    /// Who logged in at the issuer, once someone did.
    pub principal: Option<String>,
    /// SHA-256 (hex) of the browser cookie that may confirm it.
    pub browser_sha256: Option<String>,
    /// The ID token, between login and hand-over.
    pub id_token: Option<String>,
}

/// Filters of the audit listing; empty strings and `None` match all.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Event kind, exact.
    pub kind: String,
    /// Outcome, exact.
    pub outcome: String,
    /// Principal, exact.
    pub principal: String,
    /// Session id, exact.
    pub session_id: String,
    /// At or after, unix ms.
    pub since_ms: Option<i64>,
    /// Before, unix ms.
    pub until_ms: Option<i64>,
    /// Only ids below this (paging backwards).
    pub before_id: Option<i64>,
    /// Most rows.
    pub limit: i64,
}

const WEB_SESSION_COLUMNS: &str = "cookie_sha256, principal, email, groups_json, issuer, \
     auth_time, created_at, last_seen_at, expires_at, client_addr";

const LOGIN_STATE_COLUMNS: &str = "state_sha256, browser_sha256, issuer, code_verifier, nonce, \
     purpose, ssh_code_sha256, return_to, created_at, expires_at";

const SSH_LOGIN_COLUMNS: &str = "code_sha256, client_addr, fingerprint, target, gateway, \
     created_at, expires_at, status, principal, browser_sha256, id_token";

impl Store {
    /// Stores a new console login.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_web_session(&self, s: &WebSessionRecord) -> Result<(), StoreError> {
        let groups = serde_json::to_string(&s.groups).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO web_sessions (cookie_sha256, principal, email, groups_json, issuer, \
             auth_time, created_at, last_seen_at, expires_at, client_addr) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.cookie_sha256)
        .bind(&s.principal)
        .bind(&s.email)
        .bind(groups)
        .bind(&s.issuer)
        .bind(s.auth_time)
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .bind(s.expires_at)
        .bind(&s.client_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The console login of cookie hash `cookie_sha256` unless it ended
    /// (logout) or expired at `now`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn web_session(
        &self,
        cookie_sha256: &str,
        now: i64,
    ) -> Result<Option<WebSessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {WEB_SESSION_COLUMNS} FROM web_sessions WHERE cookie_sha256 = $1 \
             AND ended_at IS NULL AND expires_at > $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cookie_sha256)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| {
            let groups: String = r.get("groups_json");
            WebSessionRecord {
                cookie_sha256: r.get("cookie_sha256"),
                principal: r.get("principal"),
                email: r.get("email"),
                groups: serde_json::from_str(&groups).unwrap_or_default(),
                issuer: r.get("issuer"),
                auth_time: r.get("auth_time"),
                created_at: r.get("created_at"),
                last_seen_at: r.get("last_seen_at"),
                expires_at: r.get("expires_at"),
                client_addr: r.get("client_addr"),
            }
        }))
    }

    /// Notes a request of console login `cookie_sha256` at `now`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn touch_web_session(&self, cookie_sha256: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE web_sessions SET last_seen_at = $1 WHERE cookie_sha256 = $2")
            .bind(now)
            .bind(cookie_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a fresh login at the issuer (`auth_time`, unix ms) for
    /// console login `cookie_sha256`, only when it belongs to `principal`.
    /// False when no such login is open.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn refresh_web_session_auth(
        &self,
        cookie_sha256: &str,
        principal: &str,
        auth_time: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE web_sessions SET auth_time = $1 WHERE cookie_sha256 = $2 AND principal = $3 \
             AND ended_at IS NULL",
        )
        .bind(auth_time)
        .bind(cookie_sha256)
        .bind(principal)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends console login `cookie_sha256` (logout).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn end_web_session(&self, cookie_sha256: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE web_sessions SET ended_at = $1 WHERE cookie_sha256 = $2 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(cookie_sha256)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes console logins, login states and SSH logins that ended
    /// before `now`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn purge_web_console(&self, now: i64) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM web_sessions WHERE expires_at <= $1 OR ended_at IS NOT NULL",
            "DELETE FROM web_login_states WHERE expires_at <= $1",
            "DELETE FROM ssh_web_logins WHERE expires_at <= $1",
        ] {
            sqlx::query(sql).bind(now).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Stores an authorization request in flight.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_login_state(&self, s: &LoginStateRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO web_login_states (state_sha256, browser_sha256, issuer, code_verifier, \
             nonce, purpose, ssh_code_sha256, return_to, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.state_sha256)
        .bind(&s.browser_sha256)
        .bind(&s.issuer)
        .bind(&s.code_verifier)
        .bind(&s.nonce)
        .bind(&s.purpose)
        .bind(&s.ssh_code_sha256)
        .bind(&s.return_to)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes (reads and deletes) the authorization request of state hash
    /// `state_sha256`; `None` when there is none or another request took it
    /// first. Expiry is the caller's to check.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn take_login_state(
        &self,
        state_sha256: &str,
    ) -> Result<Option<LoginStateRecord>, StoreError> {
        let sql =
            format!("SELECT {LOGIN_STATE_COLUMNS} FROM web_login_states WHERE state_sha256 = $1");
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(state_sha256)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let deleted = sqlx::query("DELETE FROM web_login_states WHERE state_sha256 = $1")
            .bind(state_sha256)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() != 1 {
            return Ok(None);
        }
        Ok(Some(LoginStateRecord {
            state_sha256: r.get("state_sha256"),
            browser_sha256: r.get("browser_sha256"),
            issuer: r.get("issuer"),
            code_verifier: r.get("code_verifier"),
            nonce: r.get("nonce"),
            purpose: r.get("purpose"),
            ssh_code_sha256: r.get("ssh_code_sha256"),
            return_to: r.get("return_to"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    /// Stores a new SSH login waiting for the console (status `pending`).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn insert_ssh_web_login(&self, s: &SshWebLoginRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ssh_web_logins (code_sha256, client_addr, fingerprint, target, gateway, \
             created_at, expires_at, status) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')",
        )
        .bind(&s.code_sha256)
        .bind(&s.client_addr)
        .bind(&s.fingerprint)
        .bind(&s.target)
        .bind(&s.gateway)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The SSH login of code hash `code_sha256`, whatever its status.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn ssh_web_login(
        &self,
        code_sha256: &str,
    ) -> Result<Option<SshWebLoginRecord>, StoreError> {
        let sql = format!("SELECT {SSH_LOGIN_COLUMNS} FROM ssh_web_logins WHERE code_sha256 = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(code_sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| SshWebLoginRecord {
            code_sha256: r.get("code_sha256"),
            client_addr: r.get("client_addr"),
            fingerprint: r.get("fingerprint"),
            target: r.get("target"),
            gateway: r.get("gateway"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
            status: r.get("status"),
            principal: r.get("principal"),
            browser_sha256: r.get("browser_sha256"),
            id_token: r.get("id_token"),
        }))
    }

    /// Moves SSH login `code_sha256` from `from` to `to` (unless it expired
    /// at `now`), setting the given columns when `Some`. False when it was
    /// not in `from` (someone else moved it first) or expired.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn advance_ssh_web_login(
        &self,
        code_sha256: &str,
        from: &str,
        to: &str,
        now: i64,
        set: (Option<&str>, Option<&str>, Option<&str>),
    ) -> Result<bool, StoreError> {
        let (principal, browser_sha256, id_token) = set;
        let done = sqlx::query(
            "UPDATE ssh_web_logins SET status = $1, decided_at = $2, \
             principal = COALESCE($3, principal), browser_sha256 = COALESCE($4, browser_sha256), \
             id_token = CASE WHEN $1 = 'taken' OR $1 = 'refused' THEN NULL \
             ELSE COALESCE($5, id_token) END \
             WHERE code_sha256 = $6 AND status = $7 AND expires_at > $2",
        )
        .bind(to)
        .bind(now)
        .bind(principal)
        .bind(browser_sha256)
        .bind(id_token)
        .bind(code_sha256)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Audit events matching `filter`, newest first.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, outcome, session_id, principal, client_addr, detail, \
             prev_hash, hash FROM audit_events \
             WHERE ($1 = '' OR kind = $1) AND ($2 = '' OR outcome = $2) \
             AND ($3 = '' OR principal = $3) AND ($4 = '' OR session_id = $4) \
             AND at >= $5 AND at < $6 AND id < $7 ORDER BY id DESC LIMIT $8",
        )
        .bind(&filter.kind)
        .bind(&filter.outcome)
        .bind(&filter.principal)
        .bind(&filter.session_id)
        .bind(filter.since_ms.unwrap_or(i64::MIN))
        .bind(filter.until_ms.unwrap_or(i64::MAX))
        .bind(filter.before_id.unwrap_or(i64::MAX))
        .bind(filter.limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get("id"),
                at: r.get("at"),
                kind: r.get("kind"),
                outcome: r.get("outcome"),
                session_id: r.get("session_id"),
                principal: r.get("principal"),
                client_addr: r.get("client_addr"),
                detail: r.get("detail"),
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
            })
            .collect())
    }

    /// The grant session `id` depended on, if any.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn grant_of_session(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT grant_id FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| r.get::<Option<String>, _>("grant_id")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::tests::temp_store;

    fn session(hash: &str, expires_at: i64) -> WebSessionRecord {
        WebSessionRecord {
            cookie_sha256: hash.into(),
            principal: "alice".into(),
            email: None,
            groups: vec!["reviewers".into()],
            issuer: "https://i".into(),
            auth_time: 1,
            created_at: 1,
            last_seen_at: 1,
            expires_at,
            client_addr: None,
        }
    }

    #[tokio::test]
    async fn web_sessions_end_at_logout_and_expiry() {
        let (_dir, store) = temp_store().await;
        store
            .insert_web_session(&session("h1", 1000))
            .await
            .unwrap();
        let s = store.web_session("h1", 999).await.unwrap().unwrap();
        assert_eq!(s.groups, ["reviewers"]);
        assert!(store.web_session("h1", 1000).await.unwrap().is_none());
        assert!(
            store
                .refresh_web_session_auth("h1", "alice", 50)
                .await
                .unwrap()
        );
        assert!(
            !store
                .refresh_web_session_auth("h1", "bob", 60)
                .await
                .unwrap()
        );
        assert_eq!(
            store.web_session("h1", 2).await.unwrap().unwrap().auth_time,
            50
        );
        store.end_web_session("h1", 3).await.unwrap();
        assert!(store.web_session("h1", 4).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_login_state_is_taken_once() {
        let (_dir, store) = temp_store().await;
        let state = LoginStateRecord {
            state_sha256: "s".into(),
            browser_sha256: "b".into(),
            issuer: "https://i".into(),
            code_verifier: "v".into(),
            nonce: "n".into(),
            purpose: "login".into(),
            ssh_code_sha256: None,
            return_to: "/".into(),
            created_at: 1,
            expires_at: 2,
        };
        store.insert_login_state(&state).await.unwrap();
        assert_eq!(store.take_login_state("s").await.unwrap(), Some(state));
        assert_eq!(store.take_login_state("s").await.unwrap(), None);
    }

    #[tokio::test]
    async fn ssh_logins_move_forward_only() {
        let (_dir, store) = temp_store().await;
        let login = SshWebLoginRecord {
            code_sha256: "c".into(),
            client_addr: "192.0.2.1:5000".into(),
            fingerprint: Some("SHA256:x".into()),
            target: "root@web1".into(),
            gateway: "gw".into(),
            created_at: 1,
            expires_at: 100,
            status: "pending".into(),
            principal: None,
            browser_sha256: None,
            id_token: None,
        };
        store.insert_ssh_web_login(&login).await.unwrap();
        let set = (Some("alice"), Some("b"), Some("tok"));
        assert!(
            store
                .advance_ssh_web_login("c", "pending", "authenticated", 5, set)
                .await
                .unwrap()
        );
        assert!(
            !store
                .advance_ssh_web_login("c", "pending", "authenticated", 5, set)
                .await
                .unwrap()
        );
        let none = (None, None, None);
        assert!(
            store
                .advance_ssh_web_login("c", "authenticated", "confirmed", 6, none)
                .await
                .unwrap()
        );
        let row = store.ssh_web_login("c").await.unwrap().unwrap();
        assert_eq!(row.id_token.as_deref(), Some("tok"));
        assert_eq!(row.principal.as_deref(), Some("alice"));
        assert!(
            store
                .advance_ssh_web_login("c", "confirmed", "taken", 7, none)
                .await
                .unwrap()
        );
        let row = store.ssh_web_login("c").await.unwrap().unwrap();
        assert_eq!(row.status, "taken");
        assert_eq!(row.id_token, None);
        // Expired rows do not move.
        store
            .insert_ssh_web_login(&SshWebLoginRecord {
                code_sha256: "d".into(),
                ..login
            })
            .await
            .unwrap();
        assert!(
            !store
                .advance_ssh_web_login("d", "pending", "refused", 100, none)
                .await
                .unwrap()
        );
    }
}
