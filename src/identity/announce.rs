//! The texts that tell a principal about their key bindings (review
//! finding H2): the line shown at login ("a new key was bound to you from
//! ADDR at TIME") and the body of the `key_bound` webhook. Pure: no I/O.

use serde_json::json;

use super::Principal;
use crate::store::{KeyBinding, now_ms};

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
    pub(crate) fn of(b: &KeyBinding) -> BindingNotice {
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
