//! What a principal sees of their own key bindings (review finding H2):
//! at login, the bindings made to them since they were last told ("a new
//! key was bound to you from ADDR at TIME"); with the broker's `keys`
//! command, their bindings, and revoking one by fingerprint (audited).
//! Also the `key_bound` webhook body.
//!
//! Owns these library calls; the SSH front door and the broker call them
//! and show the text. It never shows another principal's bindings.

use russh::keys::PublicKey;
use serde_json::json;

use super::Principal;
use super::binding::{BindingError, KeyBindings, key_fingerprint};
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::store::{KeyBinding, StoreError, now_ms};

/// A binding its principal has not been told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingNotice {
    /// `SHA256:...` fingerprint of the bound key.
    pub fingerprint: String,
    /// Client address that bound it (`ip:port`), when recorded.
    pub bound_from: Option<String>,
    /// `device_flow` or `token`, when recorded.
    pub bound_by: Option<String>,
    /// When, unix ms.
    pub bound_at: i64,
    /// True when it has been revoked or has ended since.
    pub ended: bool,
}

impl BindingNotice {
    fn of(b: &KeyBinding) -> BindingNotice {
        BindingNotice {
            fingerprint: b.fingerprint.clone(),
            bound_from: b.bound_from.clone(),
            bound_by: b.bound_by.clone(),
            bound_at: b.created_at,
            ended: b.revoked_at.is_some() || b.expires_at <= now_ms(),
        }
    }

    /// The line to show at login, e.g. "A new key SHA256:... was bound to
    /// you from 192.0.2.7:50522 at 2026-12-01 10:00:00 UTC (browser
    /// login). Not you? Run: ssh portcullis@GW keys revoke SHA256:...";
    /// `revoke_command` is the command up to `keys` (how the gateway is
    /// reached), e.g. `ssh -p 2222 portcullis@gw.example.com`.
    pub fn message(&self, revoke_command: &str) -> String {
        let from = self
            .bound_from
            .as_deref()
            .unwrap_or("an unrecorded address");
        let how = match self.bound_by.as_deref() {
            Some("device_flow") => " (browser login)",
            Some("token") => " (pasted token)",
            _ => "",
        };
        let when = format_utc(self.bound_at);
        if self.ended {
            format!(
                "A key {} was bound to you from {from} at {when}{how}; it has ended since.",
                self.fingerprint
            )
        } else {
            format!(
                "A new key {} was bound to you from {from} at {when}{how}. Not you? Run: \
                 {revoke_command} keys revoke {}",
                self.fingerprint, self.fingerprint
            )
        }
    }
}

/// `ms` as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_utc(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The JSON body of a `key_bound` webhook: `event`, `principal`, `email`,
/// `fingerprint`, `client_addr`, `method`, `at`, `expires_at` (unix ms)
/// and a Slack-compatible `text` (escaped, display-safe).
pub(crate) fn key_bound_body(
    fingerprint: &str,
    principal: &Principal,
    client_addr: Option<&str>,
    method: &str,
    expires_at: i64,
) -> String {
    let at = now_ms();
    let who = crate::text::display_safe(&principal.subject);
    let text = format!(
        ":key: A new key {fingerprint} was bound to {who} from {} at {} ({method} login).",
        client_addr.unwrap_or("-"),
        format_utc(at)
    );
    json!({
        "event": "key_bound",
        "principal": principal.subject,
        "email": principal.email,
        "fingerprint": fingerprint,
        "client_addr": client_addr,
        "method": method,
        "at": at,
        "expires_at": expires_at,
        "text": crate::text::slack_escape(&text),
    })
    .to_string()
}

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
