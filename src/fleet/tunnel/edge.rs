//! The edge's end of the tunnels: the fleet listener (`[fleet] listen`, a
//! russh server apart from the users' port) and [`Tunnels`], the nodes
//! connected to this edge.
//!
//! A node logs in as its name with its host certificate (signed by this
//! edge's CA, naming the node, for the key PostgreSQL holds for the node,
//! which must be `active`); anything else is refused and audited. The same
//! listener serves the join exchange (`publickey` with the new key as a
//! partial success, then `password` = the join token, then `exec
//! portcullis-join`) and renewals (`exec portcullis-renew` on a tunnel).
//! Nothing else is served: no shell, no forwarding.
//!
//! An edge holds no state another edge needs: its tunnels are its own and
//! are mirrored to `fleet_tunnels` only for `nodes list`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::ssh_key::{Certificate, PublicKey};
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{RELAY_ADDRESS, TunnelError, TunnelStream, commands};
use crate::audit::{AuditEvent, AuditLog, AuditSubject, truncate};
use crate::fleet::ca::{EdgeCa, now_secs, verify_host_certificate};
use crate::metrics::Metrics;
use crate::store::{Store, TokenRefusal};

/// Everything the fleet listener needs.
pub struct EdgeContext {
    /// The database.
    pub store: Store,
    /// The audit log.
    pub audit: AuditLog,
    /// The edge CA.
    pub ca: EdgeCa,
    /// This edge's gateway id (`edge@portcullis`, `fleet_tunnels.edge`).
    pub edge_id: String,
    /// Lifetime of node host certificates.
    pub node_certificate_ttl: Duration,
    /// Keepalive interval on tunnels.
    pub keepalive: Duration,
    /// How often tunnel rows are refreshed and nodes re-checked.
    pub heartbeat: Duration,
    /// The nodes connected here.
    pub tunnels: Tunnels,
    /// Metrics, when served.
    pub metrics: Option<Arc<Metrics>>,
}

struct Registered {
    handle: russh::server::Handle,
    generation: u64,
    key_fingerprint: String,
}

/// The nodes whose tunnel to this edge is up; cheap to clone.
#[derive(Clone, Default)]
pub struct Tunnels(Arc<Mutex<HashMap<String, Registered>>>);

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tunnels").field(&self.connected()).finish()
    }
}

impl Tunnels {
    /// Names of the nodes connected now, sorted.
    pub fn connected(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// True when `node`'s tunnel is up here.
    pub fn is_connected(&self, node: &str) -> bool {
        self.0.lock().map(|m| m.contains_key(node)).unwrap_or(false)
    }

    /// Opens a relay stream to `node`'s SSH server through its tunnel: a
    /// `forwarded-tcpip` channel (RFC 4254 §7.2) to `portcullis-relay`;
    /// `originator` (the user's address) is informative only.
    ///
    /// # Errors
    /// [`TunnelError::NotConnected`] when no tunnel from `node` is up here;
    /// [`TunnelError::Open`] when the node refused or the tunnel broke.
    pub async fn open_stream(
        &self,
        node: &str,
        originator: Option<SocketAddr>,
    ) -> Result<TunnelStream, TunnelError> {
        let handle = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(node).map(|r| r.handle.clone()))
            .ok_or_else(|| TunnelError::NotConnected(node.to_string()))?;
        let (addr, port) = originator
            .map(|a| (a.ip().to_string(), u32::from(a.port())))
            .unwrap_or_else(|| ("0.0.0.0".to_string(), 0));
        let channel = handle
            .channel_open_forwarded_tcpip(RELAY_ADDRESS, 0, addr, port)
            .await
            .map_err(|e| TunnelError::Open(format!("{node}: {e}")))?;
        Ok(TunnelStream::new(channel))
    }

    /// Closes `node`'s tunnel here (removal), telling it `reason`; it is
    /// forgotten (and `portcullis_tunnel_up` falls to 0) when its
    /// connection has ended.
    pub async fn disconnect(&self, node: &str, reason: &str) {
        let handle = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(node).map(|r| r.handle.clone()));
        if let Some(handle) = handle {
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    reason.to_string(),
                    "en".into(),
                )
                .await;
        }
    }

    fn register(&self, node: &str, handle: russh::server::Handle, key_fingerprint: &str) -> u64 {
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let old = self.0.lock().ok().and_then(|mut m| {
            m.insert(
                node.to_string(),
                Registered {
                    handle,
                    generation,
                    key_fingerprint: key_fingerprint.to_string(),
                },
            )
        });
        if let Some(old) = old {
            // The node reconnected before the old tunnel was noticed dead.
            tokio::spawn(async move {
                let _ = old
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "replaced by a newer tunnel".into(),
                        "en".into(),
                    )
                    .await;
            });
        }
        generation
    }

    /// Forgets `node` if its registration is still `generation`; true then.
    fn unregister(&self, node: &str, generation: u64) -> bool {
        self.0
            .lock()
            .map(|mut m| {
                if m.get(node).is_some_and(|r| r.generation == generation) {
                    m.remove(node);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false)
    }

    fn snapshot(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(n, r)| (n.clone(), r.key_fingerprint.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The russh configuration of the fleet listener: `host_key` with a host
/// certificate from the CA (principal `edge:<edge id>`, one year, minted at
/// each start), `publickey` and `password` (join) only.
///
/// # Errors
/// [`TunnelError::Certificate`] when the certificate cannot be minted.
pub fn listener_config(
    ctx: &EdgeContext,
    host_key: PrivateKey,
) -> Result<russh::server::Config, TunnelError> {
    let cert = ctx
        .ca
        .mint_host_certificate(
            host_key.public_key(),
            &format!("edge:{}", ctx.edge_id),
            now_secs(),
            Duration::from_secs(365 * 24 * 3600),
        )
        .map_err(|e| TunnelError::Certificate(e.to_string()))?;
    Ok(russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        certificates: vec![cert],
        max_auth_attempts: 4,
        inactivity_timeout: None,
        keepalive_interval: Some(ctx.keepalive),
        keepalive_max: 3,
        nodelay: true,
        maximum_packet_size: super::TUNNEL_PACKET_BYTES,
        ..Default::default()
    })
}

/// Accepts node connections on `listener` until `shutdown`; refreshes the
/// tunnel rows and re-checks every connected node each `heartbeat`
/// (closing the tunnel of a node no longer active).
pub async fn serve(
    ctx: Arc<EdgeContext>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shutdown: CancellationToken,
) {
    tokio::spawn(refresh(ctx.clone(), shutdown.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "fleet listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let slot = Arc::new(Mutex::new(None));
            let handler = EdgeHandler {
                ctx: ctx.clone(),
                peer,
                verified_key: None,
                node: None,
                join_certificate: None,
                slot: slot.clone(),
            };
            let running = match russh::server::run_stream(config, stream, handler).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "fleet listener: handshake failed");
                    return;
                }
            };
            let handle = running.handle();
            tokio::select! {
                _ = running => {}
                _ = shutdown.cancelled() => {
                    let _ = handle.disconnect(
                        russh::Disconnect::ByApplication,
                        "the edge is shutting down".into(),
                        "en".into(),
                    ).await;
                }
            }
            let registered = slot.lock().ok().and_then(|mut s| s.take());
            if let Some((node, generation)) = registered
                && ctx.tunnels.unregister(&node, generation)
            {
                tracing::info!(node = %node, "tunnel down");
                if let Some(m) = &ctx.metrics {
                    m.tunnel_state(&node, &ctx.edge_id, false);
                }
                if let Err(e) = ctx.store.tunnel_down(&node, &ctx.edge_id).await {
                    tracing::warn!(error = %e, "cannot record a tunnel down");
                }
            }
        });
    }
}

async fn refresh(ctx: Arc<EdgeContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.heartbeat);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (node, fingerprint) in ctx.tunnels.snapshot() {
            match ctx.store.fleet_node(&node).await {
                Ok(Some(n))
                    if n.state == "active"
                        && n.key_fingerprint.as_deref() == Some(fingerprint.as_str()) =>
                {
                    if let Err(e) = ctx.store.tunnel_up(&node, &ctx.edge_id).await {
                        tracing::warn!(error = %e, "cannot refresh a tunnel row");
                    }
                }
                Ok(_) => {
                    tracing::warn!(node = %node, "node removed or re-keyed: closing its tunnel");
                    ctx.tunnels
                        .disconnect(&node, "this node was removed from the fleet")
                        .await;
                }
                // Database down: keep the tunnel (fail closed happens at
                // session start, which needs the database anyway).
                Err(e) => tracing::warn!(error = %e, "cannot re-check a node"),
            }
        }
    }
}

struct EdgeHandler {
    ctx: Arc<EdgeContext>,
    peer: SocketAddr,
    /// A plain key whose signature verified (join: the node's new key).
    verified_key: Option<PublicKey>,
    /// The node logged in with its certificate, and its key fingerprint.
    node: Option<(String, String)>,
    /// The certificate of a join that succeeded on this connection.
    join_certificate: Option<Certificate>,
    /// `(node, generation)` once registered, for the accept loop's cleanup.
    slot: Arc<Mutex<Option<(String, u64)>>>,
}

impl EdgeHandler {
    async fn audit(&self, node: &str, event: AuditEvent) -> bool {
        let peer = self.peer.to_string();
        let subject = AuditSubject {
            client_addr: Some(&peer),
            ..Default::default()
        };
        match self.ctx.audit.record(&subject, &event).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(node, error = %e, "cannot write audit event");
                false
            }
        }
    }

    async fn refuse_login(&self, user: &str, reason: String) -> Auth {
        tracing::warn!(node = %truncate(user, 64), peer = %self.peer, %reason, "node refused");
        let event = AuditEvent::NodeLoginRefused {
            node: truncate(user, 64),
            reason,
        };
        self.audit(user, event).await;
        Auth::reject()
    }

    /// Checks a node certificate and its row; the node's key fingerprint.
    async fn check_node(&self, user: &str, cert: &Certificate) -> Result<String, String> {
        let cas = [self.ctx.ca.fingerprint()];
        verify_host_certificate(cert, &cas, Some(user), now_secs()).map_err(|e| e.to_string())?;
        let fingerprint = PublicKey::from(cert.public_key().clone())
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let row = self
            .ctx
            .store
            .fleet_node(user)
            .await
            .map_err(|e| format!("cannot read the node: {e}"))?;
        match row {
            None => Err("no such node".into()),
            Some(n) if n.state != "active" => Err(format!("node is {}", n.state)),
            Some(n) if n.key_fingerprint.as_deref() != Some(fingerprint.as_str()) => Err(format!(
                "certificate for key {fingerprint}, not the node's current key"
            )),
            Some(_) => Ok(fingerprint),
        }
    }

    fn mint(&self, node: &str, key: &PublicKey) -> Result<Certificate, String> {
        self.ctx
            .ca
            .mint_host_certificate(key, node, now_secs(), self.ctx.node_certificate_ttl)
            .map_err(|e| e.to_string())
    }

    /// The reply of `exec` `command` on a session channel.
    async fn exec_reply(&mut self, command: &[u8]) -> Result<Vec<u8>, String> {
        let ca = self.ctx.ca.public_key_openssh();
        match command {
            c if c == commands::JOIN.as_bytes() => {
                let cert = self
                    .join_certificate
                    .take()
                    .ok_or("no join on this connection")?;
                commands::reply(&cert, &ca)
            }
            c if c == commands::RENEW.as_bytes() => {
                let (node, _) = self.node.clone().ok_or("not a node login")?;
                // Re-checked now: a node removed since its login gets nothing.
                let row = self.ctx.store.fleet_node(&node).await;
                let active = matches!(&row, Ok(Some(n)) if n.state == "active");
                if !active {
                    let reason = "renewal refused: node not active".to_string();
                    self.refuse_login(&node, reason.clone()).await;
                    return Err(reason);
                }
                let key = self.verified_key.clone().ok_or("no key")?;
                let cert = self.mint(&node, &key)?;
                let _ = self
                    .ctx
                    .store
                    .set_node_certificate(&node, cert.valid_before() as i64)
                    .await;
                commands::reply(&cert, &ca)
            }
            _ => Err("unknown command".into()),
        }
    }
}

impl russh::server::Handler for EdgeHandler {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only the join uses a plain key: it proves the node holds the key
        // its certificate will name; the token must follow.
        self.verified_key = Some(key.public_key.clone());
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::Password][..])),
            partial_success: true,
        })
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        match self.check_node(user, certificate).await {
            Ok(fingerprint) => {
                self.verified_key = Some(PublicKey::from(certificate.public_key().clone()));
                self.node = Some((user.to_string(), fingerprint));
                Ok(Auth::Accept)
            }
            Err(reason) => Ok(self.refuse_login(user, reason).await),
        }
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let Some(key) = self.verified_key.clone() else {
            return Ok(Auth::reject());
        };
        let node = truncate(user, 64);
        let refuse = |reason: String| AuditEvent::NodeJoinRefused {
            node: node.clone(),
            reason,
        };
        if !crate::config::valid_name(user) {
            self.audit(user, refuse("invalid node name".into())).await;
            return Ok(Auth::reject());
        }
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let cert = match self.mint(user, &key) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot mint a node certificate");
                return Ok(Auth::reject());
            }
        };
        let hash = crate::fleet::join::token_sha256(password);
        let used = self
            .ctx
            .store
            .use_join_token(user, &hash, &fingerprint, cert.valid_before() as i64)
            .await;
        let reason = match used {
            Ok(Ok(())) => None,
            Ok(Err(TokenRefusal::Unknown)) => Some("unknown join token"),
            Ok(Err(TokenRefusal::OtherNode)) => Some("join token issued for another node"),
            Ok(Err(TokenRefusal::Expired)) => Some("join token expired"),
            Ok(Err(TokenRefusal::Used)) => Some("join token already used"),
            Ok(Err(TokenRefusal::NodeRemoved)) => Some("node removed or already joined"),
            Err(e) => {
                tracing::error!(error = %e, "cannot check a join token");
                Some("database unavailable")
            }
        };
        if let Some(reason) = reason {
            tracing::warn!(node = %node, peer = %self.peer, reason, "join refused");
            self.audit(user, refuse(reason.to_string())).await;
            return Ok(Auth::reject());
        }
        let joined = AuditEvent::NodeJoined {
            node: user.to_string(),
            key_fingerprint: fingerprint,
            edge: self.ctx.edge_id.clone(),
        };
        self.audit(user, joined).await;
        tracing::info!(node = %user, "node joined");
        self.join_certificate = Some(cert);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some((node, fingerprint)) = &self.node {
            let generation = self
                .ctx
                .tunnels
                .register(node, session.handle(), fingerprint);
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some((node.clone(), generation));
            }
            tracing::info!(node = %node, peer = %self.peer, "tunnel up");
            if let Some(m) = &self.ctx.metrics {
                m.tunnel_state(node, &self.ctx.edge_id, true);
            }
            if let Err(e) = self.ctx.store.tunnel_up(node, &self.ctx.edge_id).await {
                tracing::warn!(error = %e, "cannot record a tunnel up");
            }
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.node.is_some() || self.join_certificate.is_some() {
            reply.accept().await;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        match self.exec_reply(data).await {
            Ok(bytes) => {
                session.data(channel, bytes)?;
                session.exit_status_request(channel, 0)?;
            }
            Err(reason) => {
                session.extended_data(channel, 1, format!("{reason}\n").into_bytes())?;
                session.exit_status_request(channel, 1)?;
            }
        }
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}
