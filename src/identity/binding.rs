//! Key bindings: after a client proved it holds a public key (a verified
//! `publickey` signature, RFC 4252 §7) *and* logged in at the IdP on the
//! same connection, the key stands for the principal until the binding
//! ends, so later connections need no prompt.
//!
//! A binding lasts `auth.key_binding_ttl` (default 8 h) but never past
//! what the IdP allows: without a refresh token it ends at the ID token's
//! `exp`; with one (scope `offline_access`), a use after `exp` refreshes at
//! the IdP (RFC 6749 §6) and the binding ends when the IdP refuses. Groups
//! always come from the principal's latest token.
//!
//! Issue 14 (review findings H2, M5, L3, L5):
//! - every new binding records its client address, its login method and
//!   its time, is audited before it is made and queues a `key_bound`
//!   webhook in the same transaction ([`KeyBindings::bind_key`]); the
//!   principal's next login is told ([`super::own_keys`]);
//! - `auth.bind_keys_from_device_flow = false` binds only after a pasted
//!   token;
//! - refresh tokens are sealed at rest with a key outside the database
//!   ([`super::sealing`]); an unsealed or tampered one is never used;
//! - refreshes of one key are serialised (in this process by a lock per
//!   fingerprint, across gateways by a claim in the database), so parallel
//!   connections never spend one rotating refresh token twice (which an
//!   IdP with reuse detection answers by revoking the login);
//! - keys in `certificates.revoked_keys` are neither accepted nor bound.
//!
//! Refresh tokens are secrets: sealed, never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use russh::keys::{HashAlg, PublicKey};

use super::krl::{KrlError, RevokedKeys};
use super::sealing::{RefreshTokenKey, SealedFor, SealingError};
use super::{DeviceFlowError, IdentityError, Issuers, LoginTokens, Principal, TokenSource};
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::config::{Config, Secret};
use crate::store::{KeyBinding, NewKeyBinding, RefreshedBinding, Store, StoreError, now_ms};

/// How long a gateway's claim on one binding's refresh lasts (the IdP
/// request has `oidc.http_timeout`, 10 s by default).
pub const REFRESH_CLAIM: Duration = Duration::from_secs(30);

/// How long a connection waits for another gateway's refresh of the same
/// key before giving up (then: try again later).
pub const REFRESH_WAIT: Duration = Duration::from_secs(15);

/// The outcome of looking up a key.
#[derive(Debug)]
pub enum BindingCheck {
    /// No live binding: the user must log in (which binds the key). The
    /// reason, when there was a binding (revoked, expired), is for the
    /// audit log.
    Unbound(Option<String>),
    /// The key stands for this principal.
    Bound {
        /// Who, with the groups of the latest token.
        principal: Principal,
        /// True when this check refreshed the ID token at the IdP.
        refreshed: bool,
    },
    /// The IdP refused the refresh, or the stored refresh token was not
    /// sealed by this gateway: the binding has ended now.
    Ended(IdentityError),
    /// Refuse this key on this connection and do not bind it: the
    /// database or, for a due refresh, the IdP is not answering; or the
    /// key is in `certificates.revoked_keys` (or that list is unusable).
    /// The text is the full reason.
    Unavailable(String),
}

/// A failed binding step.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit event could not be written (so nothing was done).
    #[error("cannot write the audit event: {0}")]
    Audit(#[source] StoreError),
    /// The refresh token key is unusable.
    #[error(transparent)]
    Sealing(#[from] SealingError),
    /// The key is revoked, or the revocation list is unusable.
    #[error(transparent)]
    Revoked(#[from] KrlError),
    /// The principal has no live binding with this fingerprint.
    #[error("no live key binding {0} of this principal")]
    NotFound(String),
}

/// Where a new binding comes from.
#[derive(Debug, Clone, Copy)]
pub struct BindingOrigin<'a> {
    /// The client address of the connection (`ip:port`).
    pub client_addr: &'a str,
}

/// Key bindings in the store. Cheap to clone (the refresh locks are
/// shared).
#[derive(Debug, Clone)]
pub struct KeyBindings {
    pub(crate) store: Store,
    ttl: Duration,
    sealing: Option<Arc<RefreshTokenKey>>,
    bind_from_device_flow: bool,
    revoked: RevokedKeys,
    pub(crate) webhooks: Vec<String>,
    refreshes: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
}

/// The `SHA256:...` fingerprint of `key`, as `ssh-keygen -l` prints it.
pub fn key_fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl KeyBindings {
    /// Bindings in `store` lasting at most `ttl` (zero: binding is off),
    /// without sealing, notifications or revoked keys: what the gateway
    /// did before issue 14. Use [`KeyBindings::open`].
    pub fn new(store: Store, ttl: Duration) -> KeyBindings {
        KeyBindings {
            store,
            ttl,
            sealing: None,
            bind_from_device_flow: true,
            revoked: RevokedKeys::none(),
            webhooks: Vec::new(),
            refreshes: Arc::default(),
        }
    }

    /// Bindings as `config` says: `auth.key_binding_ttl`,
    /// `auth.bind_keys_from_device_flow`, refresh tokens sealed with the
    /// key of `auth.refresh_token_key_file` (default
    /// `{state_dir}/refresh-token.key`, created at first start), keys in
    /// `certificates.revoked_keys` refused, `key_bound` events queued for
    /// `grants.webhooks`. Refresh tokens an older version stored in clear
    /// text are sealed now.
    ///
    /// # Errors
    /// [`BindingError::Sealing`] when the key file is unusable (missing
    /// when configured, readable by others, not a key);
    /// [`BindingError::Store`] when the clear-text tokens cannot be sealed.
    pub async fn open(store: Store, config: &Config) -> Result<KeyBindings, BindingError> {
        let (path, create) = match &config.auth.refresh_token_key_file {
            Some(path) => (path.clone(), false),
            None => (
                config.state_dir.join(super::sealing::DEFAULT_KEY_FILE),
                true,
            ),
        };
        let key = RefreshTokenKey::load_or_create(&path, create)?;
        let bindings = KeyBindings {
            sealing: Some(Arc::new(key)),
            bind_from_device_flow: config.auth.bind_keys_from_device_flow,
            revoked: config
                .certificates
                .revoked_keys
                .as_deref()
                .map(RevokedKeys::at)
                .unwrap_or_default(),
            webhooks: config.grants.webhooks.clone(),
            ..KeyBindings::new(store, config.auth.key_binding_ttl)
        };
        bindings.seal_clear_text_tokens().await?;
        Ok(bindings)
    }

    /// These bindings checking `revoked` (e.g. the list the certificate
    /// authorities use, [`super::CertificateAuthorities::revoked_keys`]).
    pub fn with_revoked_keys(mut self, revoked: RevokedKeys) -> KeyBindings {
        self.revoked = revoked;
        self
    }

    /// These bindings sealing refresh tokens with `key`.
    pub fn with_sealing_key(mut self, key: RefreshTokenKey) -> KeyBindings {
        self.sealing = Some(Arc::new(key));
        self
    }

    /// True when keys are bound at all.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    async fn seal_clear_text_tokens(&self) -> Result<(), BindingError> {
        let Some(key) = &self.sealing else {
            return Ok(());
        };
        let clear = self
            .store
            .clear_text_refresh_tokens(super::sealing::SEALED_PREFIX)
            .await?;
        let mut sealed = 0;
        for (fingerprint, principal, issuer, token) in &clear {
            let for_ = SealedFor {
                fingerprint,
                principal,
                issuer,
            };
            let new = Secret::new(key.seal(token, &for_)?);
            if self
                .store
                .replace_refresh_token(fingerprint, token, &new)
                .await?
            {
                sealed += 1;
            }
        }
        if sealed > 0 {
            tracing::warn!(sealed, "refresh tokens stored in clear text were sealed");
        }
        Ok(())
    }

    /// Looks up `key`; refreshes at the IdP when its ID token has expired
    /// (one refresh per key at a time, see the module documentation).
    pub async fn check(&self, issuers: &Issuers, key: &PublicKey) -> BindingCheck {
        if !self.enabled() {
            return BindingCheck::Unbound(None);
        }
        let fingerprint = key_fingerprint(key);
        if let Err(e) = self.revoked.check_key(key.key_data()) {
            return BindingCheck::Unavailable(e.to_string());
        }
        let binding = match self.live_binding(&fingerprint).await {
            Ok(b) => b,
            Err(check) => return check,
        };
        if now_ms() < binding.id_token_expires_at {
            return self.use_binding(&binding).await;
        }
        let lock = self.refresh_lock(&fingerprint);
        let _serialised = lock.lock().await;
        // Another connection may have refreshed while we waited.
        let binding = match self.live_binding(&fingerprint).await {
            Ok(b) => b,
            Err(check) => return check,
        };
        if now_ms() < binding.id_token_expires_at {
            return self.use_binding(&binding).await;
        }
        if binding.refresh_token.is_none() {
            return BindingCheck::Unbound(Some("the ID token expired".into()));
        }
        let claim_until = now_ms().saturating_add(REFRESH_CLAIM.as_millis() as i64);
        match self
            .store
            .claim_key_binding_refresh(&fingerprint, binding.id_token_expires_at, claim_until)
            .await
        {
            Ok(true) => {}
            Ok(false) => return self.wait_for_other_refresh(&binding).await,
            Err(e) => return BindingCheck::Unavailable(e.to_string()),
        }
        let outcome = self.refresh(issuers, &binding).await;
        if matches!(outcome, BindingCheck::Unavailable(_))
            && let Err(e) = self.store.release_key_binding_refresh(&fingerprint).await
        {
            tracing::warn!(error = %e, "cannot release the refresh claim");
        }
        outcome
    }

    /// The binding of `fingerprint` when live, else the check to return.
    async fn live_binding(&self, fingerprint: &str) -> Result<KeyBinding, BindingCheck> {
        let binding = match self.store.key_binding(fingerprint).await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(BindingCheck::Unbound(None)),
            Err(e) => return Err(BindingCheck::Unavailable(e.to_string())),
        };
        if let Some(reason) = &binding.revoked_reason {
            return Err(BindingCheck::Unbound(Some(format!(
                "binding revoked: {reason}"
            ))));
        }
        if binding.revoked_at.is_some() {
            return Err(BindingCheck::Unbound(Some("binding revoked".into())));
        }
        if now_ms() >= binding.expires_at {
            return Err(BindingCheck::Unbound(Some("binding expired".into())));
        }
        Ok(binding)
    }

    async fn use_binding(&self, binding: &KeyBinding) -> BindingCheck {
        if let Err(e) = self.store.touch_key_binding(&binding.fingerprint).await {
            return BindingCheck::Unavailable(e.to_string());
        }
        BindingCheck::Bound {
            principal: principal_of(binding),
            refreshed: false,
        }
    }

    /// Another gateway holds the refresh claim: wait (polling) until its
    /// refresh shows, the binding ends, or [`REFRESH_WAIT`] passes.
    async fn wait_for_other_refresh(&self, before: &KeyBinding) -> BindingCheck {
        let started = tokio::time::Instant::now();
        while started.elapsed() < REFRESH_WAIT {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let binding = match self.live_binding(&before.fingerprint).await {
                Ok(b) => b,
                Err(check) => return check,
            };
            if binding.id_token_expires_at != before.id_token_expires_at
                && now_ms() < binding.id_token_expires_at
            {
                return self.use_binding(&binding).await;
            }
        }
        BindingCheck::Unavailable("another gateway is refreshing this key's login".into())
    }

    /// The refresh token of `binding`, opened when sealing is on.
    fn refresh_token_of(&self, binding: &KeyBinding) -> Result<Option<Secret>, SealingError> {
        let Some(stored) = &binding.refresh_token else {
            return Ok(None);
        };
        match &self.sealing {
            None => Ok(Some(stored.clone())),
            Some(key) => key.open(stored.expose(), &sealed_for(binding)).map(Some),
        }
    }

    async fn refresh(&self, issuers: &Issuers, binding: &KeyBinding) -> BindingCheck {
        let refresh_token = match self.refresh_token_of(binding) {
            Ok(Some(t)) => t,
            Ok(None) => return BindingCheck::Unbound(Some("the ID token expired".into())),
            Err(e @ SealingError::OtherKey(_)) => {
                return BindingCheck::Unavailable(e.to_string());
            }
            Err(e) => {
                return self
                    .end(binding, IdentityError::Claims(e.to_string()), "")
                    .await;
            }
        };
        let Some(issuer) = issuers.by_url(&binding.issuer) else {
            return self
                .end(binding, IdentityError::WrongIssuer, "issuer not configured")
                .await;
        };
        match issuer.refresh(&refresh_token).await {
            Ok(tokens) => {
                let fresh = &tokens.id_token.principal;
                if fresh.subject != binding.principal {
                    return self
                        .end(binding, IdentityError::Claims("subject changed".into()), "")
                        .await;
                }
                let sealed = match (&tokens.refresh_token, &self.sealing) {
                    (Some(t), Some(key)) => match key.seal(t, &sealed_for(binding)) {
                        Ok(s) => Some(Secret::new(s)),
                        Err(e) => return BindingCheck::Unavailable(e.to_string()),
                    },
                    (t, None) => t.clone(),
                    (None, Some(_)) => None,
                };
                let update = RefreshedBinding {
                    email: fresh.email.as_deref(),
                    groups: &fresh.groups,
                    id_token_expires_at: tokens.id_token.expires_at_ms,
                    refresh_token: sealed.as_ref(),
                };
                if let Err(e) = self
                    .store
                    .refresh_key_binding(&binding.fingerprint, &update)
                    .await
                {
                    return BindingCheck::Unavailable(e.to_string());
                }
                BindingCheck::Bound {
                    principal: fresh.clone(),
                    refreshed: true,
                }
            }
            Err(
                e @ (IdentityError::Discovery(_)
                | IdentityError::Jwks(_)
                | IdentityError::DeviceFlow(DeviceFlowError::Request(_))),
            ) => BindingCheck::Unavailable(format!("refresh at the IdP: {e}")),
            Err(e) => self.end(binding, e, "").await,
        }
    }

    fn refresh_lock(&self, fingerprint: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.refreshes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = map.get(fingerprint).and_then(Weak::upgrade) {
            return lock;
        }
        if map.len() >= 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(fingerprint.to_string(), Arc::downgrade(&lock));
        lock
    }

    async fn end(&self, binding: &KeyBinding, error: IdentityError, note: &str) -> BindingCheck {
        let reason = format!("refresh failed: {error} {note}");
        match self
            .store
            .revoke_key_bindings(None, Some(&binding.fingerprint), reason.trim())
            .await
        {
            Ok(_) => BindingCheck::Ended(error),
            Err(e) => BindingCheck::Unavailable(e.to_string()),
        }
    }

    /// Binds `key` to the principal of `tokens` as [`Self::bind_key`] does,
    /// but without an audit event, client address or notification (the
    /// caller audits): the call of the gateway before issue 14.
    ///
    /// # Errors
    /// As [`Self::bind_key`].
    pub async fn bind(
        &self,
        key: &PublicKey,
        tokens: &LoginTokens,
    ) -> Result<Option<i64>, BindingError> {
        self.bind_from(key, tokens, None).await
    }

    /// Binds `key` to the principal of `tokens`; returns when it ends
    /// (unix ms), or `None` when nothing was bound (binding is off, or
    /// the login was a device flow and `auth.bind_keys_from_device_flow`
    /// is false). Also gives the principal's other bindings the groups of
    /// this newest token. The binding records `origin`'s client address,
    /// the login method and the time; the audit event
    /// (`key_binding`/`bound`) is written first, and a `key_bound` webhook
    /// (fingerprint, principal, client address, time; Slack `text`
    /// escaped) is queued with the binding in one transaction.
    ///
    /// Call only after both the key's signature and the IdP login succeeded
    /// on the same connection.
    ///
    /// # Errors
    /// [`BindingError::Revoked`] (the key is in the revocation list:
    /// refuse the login), [`BindingError::Audit`], [`BindingError::Store`],
    /// [`BindingError::Sealing`]; nothing is bound then.
    pub async fn bind_key(
        &self,
        audit: &AuditLog,
        key: &PublicKey,
        tokens: &LoginTokens,
        origin: &BindingOrigin<'_>,
    ) -> Result<Option<i64>, BindingError> {
        self.bind_from(key, tokens, Some((audit, origin))).await
    }

    async fn bind_from(
        &self,
        key: &PublicKey,
        tokens: &LoginTokens,
        origin: Option<(&AuditLog, &BindingOrigin<'_>)>,
    ) -> Result<Option<i64>, BindingError> {
        let principal = &tokens.id_token.principal;
        self.revoked.check_key(key.key_data())?;
        self.store
            .update_binding_claims(
                &principal.subject,
                principal.email.as_deref(),
                &principal.groups,
            )
            .await?;
        if !self.enabled() {
            return Ok(None);
        }
        let method = match tokens.id_token.obtained_by {
            TokenSource::DeviceFlow => "device_flow",
            TokenSource::Pasted => "token",
            TokenSource::Refresh => "refresh",
        };
        if tokens.id_token.obtained_by == TokenSource::DeviceFlow && !self.bind_from_device_flow {
            tracing::info!(
                principal = %principal.subject,
                "key not bound: auth.bind_keys_from_device_flow is false"
            );
            return Ok(None);
        }
        let mut expires_at = now_ms().saturating_add(self.ttl.as_millis() as i64);
        if tokens.refresh_token.is_none() {
            expires_at = expires_at.min(tokens.id_token.expires_at_ms);
        }
        let fingerprint = key_fingerprint(key);
        let public_key = key.to_openssh().unwrap_or_default();
        let for_ = SealedFor {
            fingerprint: &fingerprint,
            principal: &principal.subject,
            issuer: &principal.issuer,
        };
        let refresh_token = match (&tokens.refresh_token, &self.sealing) {
            (Some(t), Some(key)) => Some(Secret::new(key.seal(t, &for_)?)),
            (t, _) => t.clone(),
        };
        let client_addr = origin.map(|(_, o)| o.client_addr);
        if let Some((audit, origin)) = origin {
            let event = AuditEvent::KeyBindingChanged {
                fingerprint: fingerprint.clone(),
                change: "bound".into(),
                until: Some(expires_at),
                reason: Some(format!("{method} login from {}", origin.client_addr)),
            };
            let subject = AuditSubject {
                principal: Some(&principal.subject),
                client_addr: Some(origin.client_addr),
                ..Default::default()
            };
            audit
                .record(&subject, &event)
                .await
                .map_err(BindingError::Audit)?;
        }
        let body = super::announce::key_bound_body(
            &fingerprint,
            principal,
            client_addr,
            method,
            expires_at,
        );
        let urls: &[String] = if origin.is_some() {
            &self.webhooks
        } else {
            &[]
        };
        self.store
            .upsert_key_binding_notified(
                &NewKeyBinding {
                    fingerprint: &fingerprint,
                    public_key: &public_key,
                    principal: &principal.subject,
                    issuer: &principal.issuer,
                    email: principal.email.as_deref(),
                    groups: &principal.groups,
                    expires_at,
                    id_token_expires_at: tokens.id_token.expires_at_ms,
                    refresh_token: refresh_token.as_ref(),
                    bound_from: client_addr,
                    bound_by: Some(method),
                },
                urls,
                &body,
            )
            .await?;
        Ok(Some(expires_at))
    }
}

fn sealed_for(b: &KeyBinding) -> SealedFor<'_> {
    SealedFor {
        fingerprint: &b.fingerprint,
        principal: &b.principal,
        issuer: &b.issuer,
    }
}

fn principal_of(b: &KeyBinding) -> Principal {
    Principal {
        subject: b.principal.clone(),
        email: b.email.clone(),
        groups: b.groups.clone(),
        issuer: b.issuer.clone(),
    }
}

#[cfg(test)]
#[path = "binding_tests.rs"]
mod tests;
