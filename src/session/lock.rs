//! Locks (issue 12) as the session core applies them: adding and removing
//! one (audited before it happens; for `portcullis lock` and the broker's
//! `lock`), and the lock that covers a caller, if any. Live sessions and
//! connections a new lock covers are ended by every gateway's background
//! loop ([`crate::gateway::Gateway::end_locked`]), within a tick.
//!
//! Never decides policy: who may add a lock is the caller's business (host
//! root for the CLI, Cedar's `lock` action for the broker).

use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::store::{LockRecord, LockSubject, LockTarget, NewLock, Store, StoreError};
use crate::text;

/// Longest lock value (principal, group, key, issuer, container or
/// login), bytes.
pub const MAX_VALUE_BYTES: usize = 256;
/// Longest reason, bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// Why a lock could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The value or reason is empty, too long or holds hidden characters.
    #[error("invalid lock: {0}")]
    Invalid(String),
    /// No lock with this id holds.
    #[error("no lock {0} holds")]
    NotFound(String),
    /// The audit event could not be written: nothing was done.
    #[error("cannot write the audit event: {0}")]
    Audit(String),
    /// The database did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check(what: &str, value: &str, max: usize) -> Result<(), LockError> {
    if value.is_empty() || value.len() > max {
        return Err(LockError::Invalid(format!(
            "{what} must be 1 to {max} bytes"
        )));
    }
    text::check_visible(value).map_err(|e| LockError::Invalid(format!("{what}: {e}")))
}

/// Adds `lock` for `by` (a principal, or `host:USER` for the CLI): the
/// `LockAdded` event first, then the row. Sessions it covers are refused
/// from now on and live ones end within a tick of every gateway's loop.
///
/// # Errors
/// [`LockError::Invalid`] (value 1..=[`MAX_VALUE_BYTES`], reason
/// 1..=[`MAX_REASON_BYTES`], no control or hidden characters),
/// [`LockError::Audit`], [`LockError::Store`].
pub async fn add(
    store: &Store,
    audit: &AuditLog,
    lock: &NewLock<'_>,
) -> Result<LockRecord, LockError> {
    check(lock.target.as_str(), lock.value, MAX_VALUE_BYTES)?;
    check("the reason", lock.reason, MAX_REASON_BYTES)?;
    let event = AuditEvent::LockAdded {
        target: lock.target.as_str().to_string(),
        value: lock.value.to_string(),
        reason: lock.reason.to_string(),
        expires_at: lock.expires_at,
    };
    let subject = AuditSubject {
        principal: Some(lock.created_by),
        ..Default::default()
    };
    audit
        .record(&subject, &event)
        .await
        .map_err(|e| LockError::Audit(e.to_string()))?;
    Ok(store.add_lock(lock).await?)
}

/// Removes lock `id` for `by`: the `LockRemoved` event first, then the row.
///
/// # Errors
/// [`LockError::NotFound`], [`LockError::Audit`], [`LockError::Store`].
pub async fn remove(store: &Store, audit: &AuditLog, id: &str, by: &str) -> Result<(), LockError> {
    if !store.active_locks().await?.iter().any(|l| l.id == id) {
        return Err(LockError::NotFound(text::display_safe(id).into_owned()));
    }
    let subject = AuditSubject {
        principal: Some(by),
        ..Default::default()
    };
    audit
        .record(&subject, &AuditEvent::LockRemoved { lock_id: id.into() })
        .await
        .map_err(|e| LockError::Audit(e.to_string()))?;
    if store.remove_lock(id, by).await? {
        Ok(())
    } else {
        Err(LockError::NotFound(id.to_string()))
    }
}

/// The first lock holding now that covers `who`, if any.
///
/// # Errors
/// [`StoreError`] when the locks cannot be read: the caller refuses (fail
/// closed).
pub async fn covering(
    store: &Store,
    who: &LockSubject<'_>,
) -> Result<Option<LockRecord>, StoreError> {
    Ok(store
        .active_locks()
        .await?
        .into_iter()
        .find(|l| l.covers(who)))
}

/// What the user reads when a lock refuses or ends their session.
pub fn message(lock: &LockRecord) -> String {
    format!(
        "Access denied: locked ({}): {}.",
        lock.id,
        text::display_safe(&lock.reason)
    )
}

/// Parses `principal`, `group`, `key`, `issuer`, `container` or `login`.
///
/// # Errors
/// [`LockError::Invalid`] for anything else.
pub fn target(text: &str) -> Result<LockTarget, LockError> {
    LockTarget::parse(text).ok_or_else(|| {
        LockError::Invalid(format!(
            "a lock is on a principal, a group, a key, an issuer, a container or a login, \
             not {text:?}"
        ))
    })
}
