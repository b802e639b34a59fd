//! What a principal sees of their own key bindings (review finding H2):
//! at login, the bindings made to them since they were last told ("a new
//! key was bound to you from ADDR at TIME"); with the broker's `keys`
//! command, their bindings, and revoking one by fingerprint (audited).
//!
//! Owns these library calls; the SSH front door and the broker call them
//! and show the text ([`super::announce`]). It never shows another
//! principal's bindings.

use russh::keys::PublicKey;

use super::announce::BindingNotice;
use super::binding::{BindingError, KeyBindings, key_fingerprint};
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::store::{KeyBinding, StoreError};

impl KeyBindings {
    /// The bindings of `principal` made since a login of theirs was last
    /// told, except the key this login uses (`key_in_use`): a key someone
    /// else bound to them shows at their next login by another key or by
    /// the IdP, not at the logins of that key. Each binding is returned
    /// once (marked told in the same statement, across gateways). Show
    /// [`BindingNotice::message`] for each, after authentication.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails (log it; the login need not
    /// fail).
    pub async fn announce_new_bindings(
        &self,
        principal: &str,
        key_in_use: Option<&PublicKey>,
    ) -> Result<Vec<BindingNotice>, StoreError> {
        let except = key_in_use.map(key_fingerprint).unwrap_or_default();
        Ok(self
            .store
            .announce_key_bindings(principal, &except)
            .await?
            .iter()
            .map(BindingNotice::of)
            .collect())
    }

    /// `keys` for a principal: their bindings, newest first (with `all`,
    /// revoked and expired ones too). Refresh tokens are never part of a
    /// [`KeyBinding`]'s JSON.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn own_bindings(
        &self,
        principal: &str,
        all: bool,
    ) -> Result<Vec<KeyBinding>, StoreError> {
        self.store.key_bindings_of(principal, all).await
    }

    /// `keys revoke FINGERPRINT` for a principal: revokes their own live
    /// binding of that key (never another principal's: that is
    /// [`BindingError::NotFound`], as for an unknown key). The audit event
    /// (`key_binding`/`revoked`, "revoked by its principal") is written
    /// first.
    ///
    /// # Errors
    /// [`BindingError::NotFound`], [`BindingError::Audit`],
    /// [`BindingError::Store`].
    pub async fn revoke_own(
        &self,
        audit: &AuditLog,
        principal: &str,
        fingerprint: &str,
        client_addr: &str,
    ) -> Result<(), BindingError> {
        let live = self.store.key_bindings_of(principal, false).await?;
        if !live.iter().any(|b| b.fingerprint == fingerprint) {
            return Err(BindingError::NotFound(
                crate::text::display_safe(&crate::audit::truncate(fingerprint, 100)).into_owned(),
            ));
        }
        let reason = "revoked by its principal";
        let event = AuditEvent::KeyBindingChanged {
            fingerprint: fingerprint.to_string(),
            change: "revoked".into(),
            until: None,
            reason: Some(reason.into()),
        };
        let subject = AuditSubject {
            principal: Some(principal),
            client_addr: Some(client_addr),
            ..Default::default()
        };
        audit
            .record(&subject, &event)
            .await
            .map_err(BindingError::Audit)?;
        let revoked = self
            .store
            .revoke_key_bindings(Some(principal), Some(fingerprint), reason)
            .await?;
        if revoked.is_empty() {
            return Err(BindingError::NotFound(fingerprint.to_string()));
        }
        Ok(())
    }
}
