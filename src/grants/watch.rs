//! Following one grant for a live session: warnings before its end, and
//! its end (expiry or revocation), read from the database so that a
//! revocation by any gateway of a shared database is seen.

use std::time::Duration;

use crate::store::{Store, now_ms};

/// How often the grant row is read again for revocations, in ms. The end
/// of a revoked grant is seen at most this late.
pub const POLL_MS: i64 = 250;

/// What happened to the watched grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantEvent {
    /// The grant ends in `remaining` (one of `[grants] warn_before`).
    Warning {
        /// Time left, rounded to whole seconds.
        remaining: Duration,
    },
    /// The grant ended; the reason is for the user ("the grant X expired").
    Ended {
        /// Why, one clause without a final period.
        reason: String,
    },
}

/// Follows grant `id` from the moment a session starts using it.
pub struct GrantWatch {
    store: Store,
    id: String,
    expires_at: i64,
    /// Warning times, unix ms, latest last-popped: soonest first.
    warnings: Vec<(i64, Duration)>,
    ended: bool,
}

impl GrantWatch {
    /// Watches grant `id` ending at `expires_at` (unix ms), warning
    /// `warn_before` its end; warnings whose time has passed are skipped.
    pub fn new(store: Store, id: &str, expires_at: i64, warn_before: &[Duration]) -> GrantWatch {
        let now = now_ms();
        let mut warnings: Vec<(i64, Duration)> = warn_before
            .iter()
            .map(|w| (expires_at.saturating_sub(w.as_millis() as i64), *w))
            .filter(|(at, _)| *at > now)
            .collect();
        // Latest first, so the soonest is popped from the end.
        warnings.sort_by_key(|w| std::cmp::Reverse(w.0));
        GrantWatch {
            store,
            id: id.to_string(),
            expires_at,
            warnings,
            ended: false,
        }
    }

    /// Waits for the next event. After [`GrantEvent::Ended`] it never
    /// returns again. A database error is logged and the known expiry
    /// still holds (the row is read again next poll).
    pub async fn next(&mut self) -> GrantEvent {
        if self.ended {
            std::future::pending::<()>().await;
        }
        loop {
            let now = now_ms();
            if now >= self.expires_at {
                self.ended = true;
                return GrantEvent::Ended {
                    reason: format!("the grant {} expired", self.id),
                };
            }
            if let Some(&(at, remaining)) = self.warnings.last()
                && now >= at
            {
                self.warnings.pop();
                return GrantEvent::Warning { remaining };
            }
            match self.store.access_request(&self.id).await {
                Ok(Some(r)) => {
                    if r.revoked_at.is_some() {
                        self.ended = true;
                        let by = r.revoked_by.unwrap_or_default();
                        let why = r.revoke_reason.unwrap_or_default();
                        return GrantEvent::Ended {
                            reason: format!("the grant {} was revoked by {by} ({why})", self.id),
                        };
                    }
                    if let Some(e) = r.expires_at {
                        self.expires_at = e;
                    }
                }
                Ok(None) => {
                    self.ended = true;
                    return GrantEvent::Ended {
                        reason: format!("the grant {} no longer exists", self.id),
                    };
                }
                Err(e) => tracing::warn!(grant = %self.id, error = %e, "cannot read the grant"),
            }
            let now = now_ms();
            let mut next = now + POLL_MS;
            next = next.min(self.expires_at);
            if let Some(&(at, _)) = self.warnings.last() {
                next = next.min(at);
            }
            let wait = u64::try_from(next - now).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}
