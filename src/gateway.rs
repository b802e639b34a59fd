//! The services bag: everything a session, a broker command or a front end
//! needs from the running gateway, built once by [`crate::app`] and shared
//! as `Arc<Gateway>` by every connection.
//!
//! It sits below every front end (`ssh`, the web console, the fleet relay)
//! and below [`crate::session`] and [`crate::commands`], and holds no
//! logic of its own beyond how users are told to reach the broker
//! ([`Gateway::broker_line`]). It never imports a front end.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attach::HelperBinary;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::fleet::edge_relay::EdgeRelay;
use crate::identity::{CertificateAuthorities, FailureThrottle, Issuers, KeyBindings};
use crate::inventory::Inventory;
use crate::policy::PolicyEngine;
use crate::recording::Recordings;
use crate::session::live::{LiveConnections, LiveSessions};
use crate::store::Store;

/// Everything a connection needs, shared by all connections.
pub struct Gateway {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// The audit log.
    pub audit: AuditLog,
    /// The OpenID Connect issuers.
    pub issuers: Arc<Issuers>,
    /// Public keys bound to principals.
    pub bindings: KeyBindings,
    /// Trusted SSH user CAs.
    pub cas: CertificateAuthorities,
    /// Delays for addresses that failed to authenticate.
    pub throttle: FailureThrottle,
    /// The loaded policies.
    pub policy: PolicyEngine,
    /// The container inventory.
    pub inventory: Inventory,
    /// The node's recordings: may a session start, where its recording is
    /// written, its upload ([`crate::recording::Recordings`]).
    pub recordings: Recordings,
    /// The sealed attach helper binary.
    pub helper: HelperBinary,
    /// Cancelled at shutdown; sessions end when it is.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The sessions this gateway serves now ([`crate::session::live`]).
    pub live: LiveSessions,
    /// The authenticated connections this gateway serves now.
    pub connections: LiveConnections,
    /// On a fleet edge: how sessions are relayed to nodes (`None` on the
    /// all-in-one gateway and on nodes).
    pub edge: Option<EdgeRelay>,
}

impl Gateway {
    /// Ends live session `id` because an admin asked, with `reason` shown
    /// to its user; false when this gateway serves no such session.
    pub fn end_live_session(&self, id: &str, reason: &str) -> bool {
        self.live.end(
            id,
            crate::session::end::EndReason::Killed {
                by: None,
                reason: reason.to_string(),
            },
        )
    }

    /// Tells every gateway sharing a PostgreSQL database that session `id`
    /// is to be killed (`reason`), through the fleet's fan-out
    /// ([`crate::fleet::fanout`]); its row's kill request, already written,
    /// stays the durable record that each gateway's poll also reads, so a
    /// failed notice is only logged. Nothing on SQLite.
    pub async fn notify_kill(&self, id: &str, reason: &str) {
        let notice = crate::fleet::fanout::Notice::Kill {
            session_id: id.to_string(),
            reason: reason.to_string(),
        };
        if let Err(e) = crate::fleet::fanout::notify(&self.store, &notice).await {
            tracing::warn!(session_id = %id, error = %e, "cannot send the kill notice");
        }
    }

    /// Ends every live session one of `locks` covers (issue 12), each with
    /// its lock's id and reason shown to its user, then tells every
    /// authenticated connection one covers to close (a ControlMaster's
    /// with no session open too; its front door audits the close and shows
    /// the reason); returns how many sessions and connections were told.
    pub fn end_locked(&self, locks: &[crate::store::LockRecord]) -> (usize, usize) {
        use crate::session::live::{LiveConnection, LiveSession};
        let lock_of = |s: &LiveSession| locks.iter().find(|l| l.covers(&s.lock_subject()));
        let sessions = self.live.end_where(
            |s| lock_of(s).is_some(),
            |s| crate::session::end::EndReason::Locked {
                lock_id: lock_of(s).map(|l| l.id.clone()).unwrap_or_default(),
                reason: lock_of(s).map(|l| l.reason.clone()).unwrap_or_default(),
            },
        );
        let covering = |c: &LiveConnection| locks.iter().find(|l| l.covers(&c.lock_subject()));
        let connections = self.connections.close_where(
            |c| covering(c).is_some(),
            |c| {
                covering(c)
                    .map(|l| format!("locked ({}): {}", l.id, l.reason))
                    .unwrap_or_default()
            },
        );
        (sessions, connections)
    }

    /// Decides every live session again with the policies loaded now
    /// (after a reload, issue 12 point 5) and ends each one they no longer
    /// allow ([`crate::session::end::EndReason::PolicyChanged`]: audited
    /// by the session and shown to its user); returns how many.
    pub fn end_denied_by_policy(&self) -> usize {
        self.live.end_where(
            |s| s.recheck.as_ref().is_some_and(|r| !r.allows(&self.policy)),
            |_| crate::session::end::EndReason::PolicyChanged,
        )
    }

    /// How users reach the broker in printed `ssh` lines, followed by
    /// `rest`: `ssh [grants] gateway_address rest`, else
    /// `ssh -p PORT BROKER@HOST rest` (the port left out when 22).
    pub fn broker_line(&self, rest: &str) -> String {
        let g = &self.config.grants;
        let host = match g.gateway_address.as_deref().map(str::trim) {
            Some(a) => match a.rsplit_once(' ') {
                Some((opts, host)) => format!("{opts} {}@{host}", g.broker_user),
                None => format!("{}@{a}", g.broker_user),
            },
            None => {
                let port = self.config.listen.port();
                let host = self.config.gateway_id();
                if port == 22 {
                    format!("{}@{host}", g.broker_user)
                } else {
                    format!("-p {port} {}@{host}", g.broker_user)
                }
            }
        };
        format!("ssh {host} {rest}")
    }
}
