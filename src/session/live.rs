//! The sessions this gateway serves right now, each with what it is (who,
//! where, with which key and issuer) and the switch that ends it with an
//! [`EndReason`]; and the authenticated connections it serves
//! ([`LiveConnections`]), each with the switch that closes it (a lock,
//! its credential's end, its unused time).
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

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::EndReason;

/// What a live session is, for listing it and for ending it by predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    /// Session id (its row's id).
    pub id: String,
    /// The principal's subject.
    pub principal: String,
    /// The principal's groups at login.
    pub groups: Vec<String>,
    /// Who vouched for the principal (issuer URL, `ssh-ca:...`, `host`).
    pub issuer: String,
    /// The connection it runs on ([`LiveConnection::id`]), if any.
    pub connection: Option<u64>,
    /// The container.
    pub container: String,
    /// Login inside the container.
    pub login: String,
    /// Client `ip:port` (`local` for `portcullis attach`).
    pub client_addr: String,
    /// `SHA256:...` of the public key the client logged in with, if any.
    pub key_fingerprint: Option<String>,
    /// Its decision, to make again after a policy reload (`None`: nothing
    /// to decide again, e.g. host root's `portcullis attach`).
    pub recheck: Option<Recheck>,
}

/// A live session's policy decision, made again with the policies loaded
/// now (issue 12 point 5): the same principal, container, login, uid,
/// action, command, context and grant as when it started.
#[derive(Clone)]
pub struct Recheck(Arc<dyn Fn(&crate::policy::PolicyEngine) -> bool + Send + Sync>);

impl Recheck {
    /// A recheck that asks `decide`.
    pub fn new(
        decide: impl Fn(&crate::policy::PolicyEngine) -> bool + Send + Sync + 'static,
    ) -> Self {
        Recheck(Arc::new(decide))
    }

    /// True when `policy` still allows the session (an error denies).
    pub fn allows(&self, policy: &crate::policy::PolicyEngine) -> bool {
        (self.0)(policy)
    }
}

impl std::fmt::Debug for Recheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recheck")
    }
}

impl PartialEq for Recheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Recheck {}

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

impl LiveSession {
    /// What a lock sees of this session.
    pub fn lock_subject(&self) -> crate::store::LockSubject<'_> {
        crate::store::LockSubject {
            principal: &self.principal,
            groups: &self.groups,
            issuer: &self.issuer,
            key_fingerprint: self.key_fingerprint.as_deref(),
            container: Some(&self.container),
            login: Some(&self.login),
        }
    }
}

/// An authenticated connection, for closing it by what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConnection {
    /// Its id ([`LiveConnections::next_id`]), unique in this process.
    pub id: u64,
    /// The principal's subject.
    pub principal: String,
    /// The principal's groups at login.
    pub groups: Vec<String>,
    /// Who vouched for the principal.
    pub issuer: String,
    /// `SHA256:...` of the key it logged in with, if any.
    pub key_fingerprint: Option<String>,
    /// The container its SSH user name names, if any.
    pub container: Option<String>,
    /// The login its SSH user name names, if any.
    pub login: Option<String>,
}

impl LiveConnection {
    /// What a lock sees of this connection (a `login@container` user name
    /// is covered by container and login locks too: every channel it
    /// opens goes there).
    pub fn lock_subject(&self) -> crate::store::LockSubject<'_> {
        crate::store::LockSubject {
            principal: &self.principal,
            groups: &self.groups,
            issuer: &self.issuer,
            key_fingerprint: self.key_fingerprint.as_deref(),
            container: self.container.as_deref(),
            login: self.login.as_deref(),
        }
    }
}

type ConnectionMap = Mutex<HashMap<u64, (LiveConnection, mpsc::UnboundedSender<String>)>>;

/// Authenticated connections by id. Cheap to share (inside
/// `Arc<Gateway>`); a [`ConnectionRegistration`] unregisters its
/// connection when dropped.
#[derive(Default)]
pub struct LiveConnections {
    map: Arc<ConnectionMap>,
    next: AtomicU64,
}

impl LiveConnections {
    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Registers `connection`; `close` receives the reason (one clause,
    /// shown to the user) when something closes it.
    pub fn register(
        &self,
        connection: LiveConnection,
        close: mpsc::UnboundedSender<String>,
    ) -> ConnectionRegistration {
        let id = connection.id;
        if let Ok(mut map) = self.map.lock() {
            map.insert(id, (connection, close));
        }
        ConnectionRegistration {
            map: self.map.clone(),
            id,
        }
    }

    /// Tells every connection `matches` selects to close, each with the
    /// reason `reason` gives for it (once: it is unregistered); returns
    /// how many were told.
    pub fn close_where(
        &self,
        matches: impl Fn(&LiveConnection) -> bool,
        reason: impl Fn(&LiveConnection) -> String,
    ) -> usize {
        let closing: Vec<(LiveConnection, mpsc::UnboundedSender<String>)> = match self.map.lock() {
            Ok(mut map) => {
                let ids: Vec<u64> = map
                    .values()
                    .filter(|(c, _)| matches(c))
                    .map(|(c, _)| c.id)
                    .collect();
                ids.iter().filter_map(|id| map.remove(id)).collect()
            }
            Err(_) => Vec::new(),
        };
        closing
            .into_iter()
            .filter(|(c, tx)| tx.send(reason(c)).is_ok())
            .count()
    }

    /// The live connections, in no particular order.
    pub fn list(&self) -> Vec<LiveConnection> {
        self.map
            .lock()
            .map(|map| map.values().map(|(c, _)| c.clone()).collect())
            .unwrap_or_default()
    }
}

/// A registered connection; dropping it unregisters the connection.
pub struct ConnectionRegistration {
    map: Arc<ConnectionMap>,
    id: u64,
}

impl Drop for ConnectionRegistration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&self.id);
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
            groups: vec!["developers".into()],
            issuer: "https://idp".into(),
            connection: None,
            container: container.into(),
            login: "root".into(),
            client_addr: "127.0.0.1:1".into(),
            key_fingerprint: None,
            recheck: None,
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
    fn connections_close_by_predicate_once_and_unregister_when_dropped() {
        let live = LiveConnections::default();
        let conn = |principal: &str| LiveConnection {
            id: live.next_id(),
            principal: principal.into(),
            groups: vec!["developers".into()],
            issuer: "https://idp".into(),
            key_fingerprint: None,
            container: Some("web1".into()),
            login: None,
        };
        let (tx_a, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        let a = live.register(conn("alice"), tx_a);
        let b = live.register(conn("bob"), tx_b);
        assert_ne!(live.list()[0].id, live.list()[1].id);
        let told = live.close_where(
            |c| c.principal == "alice",
            |c| format!("{} locked", c.principal),
        );
        assert_eq!(told, 1);
        assert_eq!(rx_a.try_recv().unwrap(), "alice locked");
        assert!(rx_b.try_recv().is_err());
        assert_eq!(
            live.close_where(|c| c.principal == "alice", |_| String::new()),
            0
        );
        drop(b);
        assert!(live.list().is_empty());
        drop(a);
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
