//! Joining and leaving (issue 16 point 3): one-time join tokens for
//! `portcullis nodes add`, and `nodes remove`. The join exchange itself is
//! SSH on the fleet listener ([`crate::fleet::tunnel::edge`] and
//! [`crate::fleet::tunnel::NodeIdentity::join`]).
//!
//! A token is 32 random bytes, base64url with the prefix `pcj_`, shown once
//! and stored only as its SHA-256; it expires, is used at most once, and is
//! valid only for the node name it was issued for. Owns token making and
//! the audited add/remove steps; it never prints (the CLI does).

use std::time::Duration;

use base64::Engine;
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::fleet::fanout::{self, Notice};
use crate::store::{Store, StoreError, now_ms};

/// The prefix of join tokens (so a leaked one is recognisable in a scan).
pub const TOKEN_PREFIX: &str = "pcj_";

/// A failed join-management step.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The name is not a valid node name.
    #[error("invalid node name {0:?}: 1 to 64 bytes of [A-Za-z0-9_.-]")]
    InvalidName(String),
    /// The node is active: it must be removed before a new token.
    #[error("node {0} has joined already; remove it first (portcullis nodes remove {0})")]
    Active(String),
    /// No such node (remove).
    #[error("no node named {0}")]
    NotFound(String),
    /// No edge has created the CA yet.
    #[error("no edge CA yet: start an edge (portcullis serve --role edge) first")]
    NoCa,
    /// The database or the audit log failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The removal notice could not be sent.
    #[error("{0}")]
    Fanout(#[from] fanout::FanoutError),
}

/// What `nodes add` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTicket {
    /// The one-time token (shown once).
    pub token: String,
    /// Its expiry, unix ms.
    pub expires_at: i64,
    /// The edge CA fingerprint the node pins (`SHA256:...`).
    pub ca_fingerprint: String,
}

/// Lowercase hex SHA-256 of `token`, as stored.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Issues a join token for `node`, valid for `ttl`; audited
/// (`NodeJoinTokenIssued`) before it is stored. `operator` names who asked.
///
/// # Errors
/// [`JoinError`].
pub async fn add_node(
    store: &Store,
    audit: &AuditLog,
    node: &str,
    ttl: Duration,
    operator: &str,
) -> Result<JoinTicket, JoinError> {
    if !crate::config::valid_name(node) {
        return Err(JoinError::InvalidName(node.to_string()));
    }
    let (_, ca_fingerprint) = store.fleet_ca().await?.ok_or(JoinError::NoCa)?;
    if store
        .fleet_node(node)
        .await?
        .is_some_and(|n| n.state == "active")
    {
        return Err(JoinError::Active(node.to_string()));
    }
    let token = new_token();
    let expires_at = now_ms().saturating_add(ttl.as_millis() as i64);
    let subject = AuditSubject {
        principal: Some(operator),
        ..Default::default()
    };
    let event = AuditEvent::NodeJoinTokenIssued {
        node: node.to_string(),
        expires_at,
    };
    audit.record(&subject, &event).await?;
    if !store
        .add_join_token(node, &token_sha256(&token), expires_at, operator)
        .await?
    {
        return Err(JoinError::Active(node.to_string()));
    }
    Ok(JoinTicket {
        token,
        expires_at,
        ca_fingerprint,
    })
}

/// Removes `node`: audited (`NodeRemoved`) first, then the row becomes
/// `removed` (every edge refuses its certificate from now on) and every
/// gateway is told (`Notice::NodeRemoved`) so edges close its tunnels.
///
/// # Errors
/// [`JoinError::NotFound`] when there is no such node (or it was removed).
pub async fn remove_node(
    store: &Store,
    audit: &AuditLog,
    node: &str,
    operator: &str,
) -> Result<(), JoinError> {
    let known = store.fleet_node(node).await?;
    if known.is_none_or(|n| n.state == "removed") {
        return Err(JoinError::NotFound(node.to_string()));
    }
    let subject = AuditSubject {
        principal: Some(operator),
        ..Default::default()
    };
    let event = AuditEvent::NodeRemoved {
        node: node.to_string(),
    };
    audit.record(&subject, &event).await?;
    if !store.remove_fleet_node(node).await? {
        return Err(JoinError::NotFound(node.to_string()));
    }
    let notice = Notice::NodeRemoved {
        node: node.to_string(),
    };
    fanout::notify(store, &notice).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("pcj_"));
        assert_eq!(a.len(), 4 + 43);
        assert_eq!(token_sha256("pcj_x").len(), 64);
        assert_ne!(token_sha256(&a), token_sha256(&b));
    }
}
