//! The sessions this gateway serves right now, each with what it is (who,
//! where, with which key and issuer) and the switch that ends it with an
//! [`EndReason`].
//!
//! Sessions are ended by id (`sessions kill`, a grant that ended) or by
//! what they are ([`LiveSessions::end_where`]: every session of a
//! principal, a container, a key or an issuer, as a lock needs). The
//! registry only delivers the reason; the session itself audits it, tells
//! its user and stops its process. It never touches the database: a kill
//! asked on another gateway reaches this one through the store
//! ([`crate::app`] polls for kill requests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::EndReason;

/// What a live session is, for listing it and for ending it by predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    /// Session id (its row's id).
    pub id: String,
    /// The principal's subject.
    pub principal: String,
    /// Who vouched for the principal (issuer URL, `ssh-ca:...`, `host`).
    pub issuer: String,
    /// The container.
    pub container: String,
    /// Login inside the container.
    pub login: String,
    /// Client `ip:port` (`local` for `portcullis attach`).
    pub client_addr: String,
    /// `SHA256:...` of the public key the client logged in with, if any.
    pub key_fingerprint: Option<String>,
}

struct Entry {
    session: LiveSession,
    /// Tells this registration apart from a later one of the same id.
    serial: u64,
    end: oneshot::Sender<EndReason>,
}

/// Live sessions by id. Cheap to share (inside `Arc<Gateway>`).
#[derive(Default)]
pub struct LiveSessions {
    map: Mutex<HashMap<String, Entry>>,
    serial: AtomicU64,
}

impl LiveSessions {
    /// Registers `session`; the returned [`Ending`] resolves with the
    /// reason when something ends it, and unregisters it when dropped.
    pub fn register(&self, session: LiveSession) -> Ending<'_> {
        let (tx, rx) = oneshot::channel();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let id = session.id.clone();
        if let Ok(mut map) = self.map.lock() {
            map.insert(
                id.clone(),
                Entry {
                    session,
                    serial,
                    end: tx,
                },
            );
        }
        Ending {
            registry: self,
            id,
            serial,
            rx,
        }
    }

    /// Ends live session `id` with `reason`; false when this gateway serves
    /// no such session (or it is already ending).
    pub fn end(&self, id: &str, reason: EndReason) -> bool {
        let entry = self.map.lock().ok().and_then(|mut map| map.remove(id));
        match entry {
            Some(e) => e.end.send(reason).is_ok(),
            None => false,
        }
    }

    /// Ends every live session `matches` selects, each with the reason
    /// `reason` gives for it; returns how many were told to end.
    pub fn end_where(
        &self,
        matches: impl Fn(&LiveSession) -> bool,
        reason: impl Fn(&LiveSession) -> EndReason,
    ) -> usize {
        let ending: Vec<Entry> = match self.map.lock() {
            Ok(mut map) => {
                let ids: Vec<String> = map
                    .values()
                    .filter(|e| matches(&e.session))
                    .map(|e| e.session.id.clone())
                    .collect();
                ids.iter().filter_map(|id| map.remove(id)).collect()
            }
            Err(_) => Vec::new(),
        };
        let mut told = 0;
        for e in ending {
            let why = reason(&e.session);
            // A session that finished meanwhile dropped its receiver.
            if e.end.send(why).is_ok() {
                told += 1;
            }
        }
        told
    }

    /// The live sessions, in no particular order.
    pub fn list(&self) -> Vec<LiveSession> {
        self.map
            .lock()
            .map(|map| map.values().map(|e| e.session.clone()).collect())
            .unwrap_or_default()
    }

    fn remove(&self, id: &str, serial: u64) {
        if let Ok(mut map) = self.map.lock()
            && map.get(id).is_some_and(|e| e.serial == serial)
        {
            map.remove(id);
        }
    }
}

/// A registered live session's end: [`Ending::wait`] resolves with the
/// reason once something ends it. Dropping it unregisters the session.
pub struct Ending<'a> {
    registry: &'a LiveSessions,
    id: String,
    serial: u64,
    rx: oneshot::Receiver<EndReason>,
}

impl Ending<'_> {
    /// Waits for the reason the session must end; never resolves while
    /// nothing ends it. Cancel-safe.
    pub async fn wait(&mut self) -> EndReason {
        match (&mut self.rx).await {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.registry.remove(&self.id, self.serial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, principal: &str, container: &str) -> LiveSession {
        LiveSession {
            id: id.into(),
            principal: principal.into(),
            issuer: "https://idp".into(),
            container: container.into(),
            login: "root".into(),
            client_addr: "127.0.0.1:1".into(),
            key_fingerprint: None,
        }
    }

    #[tokio::test]
    async fn end_by_id_and_by_predicate() {
        let live = LiveSessions::default();
        let mut a = live.register(session("a", "alice", "web1"));
        let mut b = live.register(session("b", "alice", "db1"));
        let c = live.register(session("c", "bob", "web1"));
        assert_eq!(live.list().len(), 3);
        assert!(live.end("a", EndReason::Shutdown));
        assert_eq!(a.wait().await, EndReason::Shutdown);
        assert!(!live.end("a", EndReason::Shutdown), "already ending");
        let n = live.end_where(
            |s| s.principal == "alice",
            |s| EndReason::Locked {
                lock_id: "L1".into(),
                reason: format!("{} locked", s.principal),
            },
        );
        assert_eq!(n, 1);
        assert_eq!(b.wait().await.kind(), "locked");
        drop(c);
        assert!(live.list().is_empty());
    }

    #[test]
    fn a_new_registration_of_an_id_is_not_removed_by_the_old_one() {
        let live = LiveSessions::default();
        let old = live.register(session("x", "p", "c"));
        let new = live.register(session("x", "p", "c"));
        drop(old);
        assert_eq!(live.list().len(), 1);
        drop(new);
        assert!(live.list().is_empty());
    }
}
