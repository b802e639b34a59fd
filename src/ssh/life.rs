//! What ends an authenticated connection (issue 12): a lock that covers
//! it ([`crate::gateway::Gateway::end_locked`] through the connection
//! registry), the end of the credential it logged in with (a timer at the
//! certificate's `valid_before`, the ID token's `exp` or the key binding's
//! end, not only a check at the next channel), and
//! `auth.unused_connection_timeout` (no channel open for that long, like
//! OpenSSH's `UnusedConnectionTimeout`).
//!
//! Each asks the connection's loop (`super::run_connection`) to close with
//! one reason: the loop audits `ConnectionClosed`, ends the connection's
//! live sessions with that reason, waits for them and then disconnects,
//! the reason in the SSH disconnect message (RFC 4253 §11.1). Nothing here
//! decides policy or reads a lock itself.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::Gateway;
use crate::session::Caller;
use crate::session::live::{ConnectionRegistration, LiveConnection};
use crate::store::now_ms;

/// What one connection shares between its handler, its loop and its
/// timers.
pub(super) struct ConnectionLife {
    /// Its id in [`crate::gateway::Gateway::connections`].
    pub id: u64,
    /// The principal, once authenticated (the close's audit subject).
    principal: OnceLock<String>,
    close: mpsc::UnboundedSender<String>,
    /// Open channels, and since when none is (for the unused timeout).
    in_use: watch::Sender<(usize, Instant)>,
    /// The connection's channel tasks: the close waits for them.
    pub tasks: TaskTracker,
    registration: Mutex<Option<ConnectionRegistration>>,
}

/// An open channel; dropping it counts it closed.
pub(super) struct InUse(watch::Sender<(usize, Instant)>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.send_modify(|(open, since)| {
            *open = open.saturating_sub(1);
            if *open == 0 {
                *since = Instant::now();
            }
        });
    }
}

impl ConnectionLife {
    /// A new connection's life and the receiver of its close requests.
    pub(super) fn new(gateway: &Gateway) -> (Arc<ConnectionLife>, mpsc::UnboundedReceiver<String>) {
        let (close, requests) = mpsc::unbounded_channel();
        let (in_use, _) = watch::channel((0, Instant::now()));
        let life = ConnectionLife {
            id: gateway.connections.next_id(),
            principal: OnceLock::new(),
            close,
            in_use,
            tasks: TaskTracker::new(),
            registration: Mutex::new(None),
        };
        (Arc::new(life), requests)
    }

    /// Counts a channel open until the guard is dropped.
    pub(super) fn channel_opened(&self) -> InUse {
        self.in_use.send_modify(|(open, _)| *open += 1);
        InUse(self.in_use.clone())
    }

    /// The principal, once authenticated.
    pub(super) fn principal(&self) -> Option<&str> {
        self.principal.get().map(String::as_str)
    }

    /// `caller` authenticated: registers the connection (locks close it
    /// from now on), arms the credential's timer (`what` names the
    /// credential for the user: `the certificate`) and the unused timeout.
    pub(super) fn authenticated(&self, gateway: &Arc<Gateway>, caller: &Caller, what: &str) {
        let _ = self.principal.set(caller.principal.subject.clone());
        let (container, login) = match &caller.destination {
            crate::session::Destination::Container(t) => {
                (Some(t.container.clone()), Some(t.login.clone()))
            }
            _ => (None, None),
        };
        let connection = LiveConnection {
            id: self.id,
            principal: caller.principal.subject.clone(),
            groups: caller.principal.groups.clone(),
            issuer: caller.principal.issuer.clone(),
            key_fingerprint: caller.key_fingerprint.clone(),
            container,
            login,
        };
        let registration = gateway.connections.register(connection, self.close.clone());
        if let Ok(mut slot) = self.registration.lock() {
            *slot = Some(registration);
        }
        if let Some(end) = caller.credential_expires_at {
            let watch = CredentialWatch {
                gateway: gateway.clone(),
                close: self.close.clone(),
                end,
                what: what.to_string(),
                key: caller.key_fingerprint.clone(),
                principal: caller.principal.subject.clone(),
            };
            tokio::spawn(watch.run());
        }
        if let Some(timeout) = gateway.config.auth.unused_connection_timeout {
            self.in_use.send_modify(|(open, since)| {
                if *open == 0 {
                    *since = Instant::now();
                }
            });
            tokio::spawn(unused(self.in_use.subscribe(), timeout, self.close.clone()));
        }
    }

    /// Unregisters the connection (it is closing or closed).
    pub(super) fn unregister(&self) {
        if let Ok(mut slot) = self.registration.lock() {
            slot.take();
        }
    }
}

/// Closes the connection when its credential ends.
struct CredentialWatch {
    gateway: Arc<Gateway>,
    close: mpsc::UnboundedSender<String>,
    /// Unix ms.
    end: i64,
    what: String,
    /// A bound key's fingerprint: its binding is read again at the end
    /// (a renewed binding re-arms the timer).
    key: Option<String>,
    principal: String,
}

impl CredentialWatch {
    async fn run(mut self) {
        loop {
            let wait = u64::try_from(self.end.saturating_sub(now_ms())).unwrap_or(0);
            tokio::select! {
                _ = self.close.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            if let Some(later) = self.renewed().await {
                self.end = later;
                continue;
            }
            let _ = self.close.send(format!("{} expired", self.what));
            return;
        }
    }

    /// The binding's new end, when the key's binding (still this
    /// principal's, not revoked) now ends later; `None` otherwise, and
    /// when the database does not answer (fail closed).
    async fn renewed(&self) -> Option<i64> {
        let key = self.key.as_deref()?;
        let binding = self.gateway.store.key_binding(key).await.ok()??;
        (binding.principal == self.principal
            && binding.revoked_at.is_none()
            && binding.expires_at > self.end
            && binding.expires_at > now_ms())
        .then_some(binding.expires_at)
    }
}

/// Closes the connection once no channel has been open for `timeout`.
async fn unused(
    mut in_use: watch::Receiver<(usize, Instant)>,
    timeout: Duration,
    close: mpsc::UnboundedSender<String>,
) {
    loop {
        let (open, since) = *in_use.borrow_and_update();
        let due = since + timeout;
        tokio::select! {
            _ = close.closed() => return,
            changed = in_use.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(due), if open == 0 => {
                let reason = format!(
                    "no channel open for {} (auth.unused_connection_timeout)",
                    humantime::format_duration(timeout)
                );
                let _ = close.send(reason);
                return;
            }
        }
    }
}
