//! Key bindings: after a client proved it holds a public key (a verified
//! `publickey` signature, RFC 4252 §7) *and* logged in at the IdP on the
//! same connection, the key stands for the principal until the binding
//! ends, so later connections need no prompt.
//!
//! A binding lasts `auth.key_binding_ttl` (default 8 h) but never past
//! what the IdP allows: without a refresh token it ends at the ID token's
//! `exp`; with one (scope `offline_access`), a use after `exp` refreshes at
//! the IdP (RFC 6749 §6) and the binding ends when the IdP refuses. Groups
//! always come from the principal's latest token. Refresh tokens are
//! secrets: stored, never logged.

use std::time::Duration;

use russh::keys::{HashAlg, PublicKey};

use super::{DeviceFlowError, IdentityError, Issuers, LoginTokens, Principal};
use crate::store::{KeyBinding, NewKeyBinding, RefreshedBinding, Store, now_ms};

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
    /// The IdP refused the refresh: the binding has ended now.
    Ended(IdentityError),
    /// The binding cannot be checked now (the database or, for a due
    /// refresh, the IdP is not answering): refuse this connection, keep the
    /// binding. The text is the full reason.
    Unavailable(String),
}

/// Key bindings in the store.
#[derive(Debug, Clone)]
pub struct KeyBindings {
    store: Store,
    ttl: Duration,
}

/// The `SHA256:...` fingerprint of `key`, as `ssh-keygen -l` prints it.
pub fn key_fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl KeyBindings {
    /// Bindings in `store` lasting at most `ttl` (zero: binding is off).
    pub fn new(store: Store, ttl: Duration) -> KeyBindings {
        KeyBindings { store, ttl }
    }

    /// True when keys are bound at all.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Looks up `key`; refreshes at the IdP when its ID token has expired.
    pub async fn check(&self, issuers: &Issuers, key: &PublicKey) -> BindingCheck {
        if !self.enabled() {
            return BindingCheck::Unbound(None);
        }
        let fingerprint = key_fingerprint(key);
        let binding = match self.store.key_binding(&fingerprint).await {
            Ok(Some(b)) => b,
            Ok(None) => return BindingCheck::Unbound(None),
            Err(e) => return BindingCheck::Unavailable(e.to_string()),
        };
        let now = now_ms();
        if let Some(reason) = &binding.revoked_reason {
            return BindingCheck::Unbound(Some(format!("binding revoked: {reason}")));
        }
        if binding.revoked_at.is_some() {
            return BindingCheck::Unbound(Some("binding revoked".into()));
        }
        if now >= binding.expires_at {
            return BindingCheck::Unbound(Some("binding expired".into()));
        }
        if now < binding.id_token_expires_at {
            if let Err(e) = self.store.touch_key_binding(&fingerprint).await {
                return BindingCheck::Unavailable(e.to_string());
            }
            return BindingCheck::Bound {
                principal: principal_of(&binding),
                refreshed: false,
            };
        }
        let Some(refresh_token) = binding.refresh_token.clone() else {
            return BindingCheck::Unbound(Some("the ID token expired".into()));
        };
        let Some(issuer) = issuers.by_url(&binding.issuer) else {
            return self
                .end(
                    &binding,
                    IdentityError::WrongIssuer,
                    "issuer not configured",
                )
                .await;
        };
        match issuer.refresh(&refresh_token).await {
            Ok(tokens) => {
                let fresh = &tokens.id_token.principal;
                if fresh.subject != binding.principal {
                    return self
                        .end(
                            &binding,
                            IdentityError::Claims("subject changed".into()),
                            "",
                        )
                        .await;
                }
                let update = RefreshedBinding {
                    email: fresh.email.as_deref(),
                    groups: &fresh.groups,
                    id_token_expires_at: tokens.id_token.expires_at_ms,
                    refresh_token: tokens.refresh_token.as_ref(),
                };
                if let Err(e) = self.store.refresh_key_binding(&fingerprint, &update).await {
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
            Err(e) => self.end(&binding, e, "").await,
        }
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

    /// Binds `key` to the principal of `tokens`; returns when it ends (unix
    /// ms), or `None` when binding is off. Also gives the principal's other
    /// bindings the groups of this newest token.
    ///
    /// Call only after both the key's signature and the IdP login succeeded
    /// on the same connection.
    ///
    /// # Errors
    /// [`crate::store::StoreError`] when the database fails.
    pub async fn bind(
        &self,
        key: &PublicKey,
        tokens: &LoginTokens,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        let principal = &tokens.id_token.principal;
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
        let mut expires_at = now_ms().saturating_add(self.ttl.as_millis() as i64);
        if tokens.refresh_token.is_none() {
            expires_at = expires_at.min(tokens.id_token.expires_at_ms);
        }
        let public_key = key.to_openssh().unwrap_or_default();
        self.store
            .upsert_key_binding(&NewKeyBinding {
                fingerprint: &key_fingerprint(key),
                public_key: &public_key,
                principal: &principal.subject,
                issuer: &principal.issuer,
                email: principal.email.as_deref(),
                groups: &principal.groups,
                expires_at,
                id_token_expires_at: tokens.id_token.expires_at_ms,
                refresh_token: tokens.refresh_token.as_ref(),
            })
            .await?;
        Ok(Some(expires_at))
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
