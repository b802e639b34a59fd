//! Starting the fleet parts of `portcullis serve --role edge|node` (and the
//! metrics endpoint of every role), apart from the composition root so it
//! only needs a few lines there.
//!
//! * edge: the CA (created by the first edge, then a file the operator
//!   copies to the others), its public key published in PostgreSQL, the
//!   fleet listener and [`Tunnels`], the fan-out listener;
//! * node: its identity (joining with the configured token on first start),
//!   the tunnels to every edge, the heartbeat, the fan-out listener.
//!
//! What each role does with a relayed session is the session core's (see
//! `docs/fleet.md`, "What calls what"): the composition root gives a node
//! its relay server as a [`RelayAcceptor`]. Owns startup order and checks;
//! it never serves users itself.

use std::path::PathBuf;
use std::sync::Arc;

use russh::keys::PrivateKey;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::fleet::ca::{CaError, EdgeCa, parse_fingerprint};
use crate::fleet::fanout::{Delivered, Notice, NoticeListener};
use crate::fleet::tunnel::edge::{self as edge_side, EdgeContext};
use crate::fleet::tunnel::node::TunnelSettings;
use crate::fleet::tunnel::{NodeIdentity, RelayAcceptor, TunnelClient, TunnelError, Tunnels};
use crate::fleet::{Role, heartbeat};
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::store::{Backend, Store, StoreError};

/// Why a fleet role could not start. One line naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// Edges and nodes share state in PostgreSQL.
    #[error("--role {0} needs PostgreSQL: set database.url = \"postgres://...\"")]
    NotPostgres(&'static str),
    /// A `[fleet]` key the role needs is missing.
    #[error("--role node needs fleet.{0}")]
    Missing(&'static str),
    /// The CA key file or a certificate failed.
    #[error("{0}")]
    Ca(#[from] CaError),
    /// The CA in PostgreSQL is not this edge's.
    #[error(
        "edge CA mismatch: PostgreSQL has {stored}, {path} holds {local}; every edge needs the \
         same CA key file (copy it from the first edge)"
    )]
    CaMismatch {
        /// Fingerprint in PostgreSQL.
        stored: String,
        /// Fingerprint of the local file.
        local: String,
        /// The file.
        path: String,
    },
    /// Another edge created the CA; this one has no copy.
    #[error(
        "the fleet's edge CA ({stored}) was created by another edge; copy its key file to {path} \
         (mode 0600) or set fleet.ca_key"
    )]
    CaMissing {
        /// Fingerprint in PostgreSQL.
        stored: String,
        /// Where this edge looks.
        path: String,
    },
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A tunnel step failed (join, identity, listener).
    #[error("{0}")]
    Tunnel(#[from] TunnelError),
    /// The fleet listener could not be bound.
    #[error("cannot listen on fleet.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a started role hands back to the composition root.
#[derive(Debug, Default)]
pub struct FleetParts {
    /// Edge: the nodes connected here (for the relay).
    pub tunnels: Option<Tunnels>,
    /// Edge: the CA (to mint relay certificates).
    pub ca: Option<EdgeCa>,
    /// Node: its identity (for the relay server's config and trust).
    pub identity: Option<Arc<NodeIdentity>>,
    /// Both: the fan-out, typed notices for the session core.
    pub notices: Option<tokio::sync::mpsc::Receiver<Delivered>>,
    /// Edge: the fleet listener's address.
    pub fleet_listen: Option<std::net::SocketAddr>,
}

/// `{state_dir}/fleet`.
fn fleet_dir(config: &Config) -> PathBuf {
    config.state_dir.join("fleet")
}

/// The edge CA for `config`: loaded from `fleet.ca_key` (default
/// `{state_dir}/fleet/edge_ca`), created there only when PostgreSQL has no
/// CA yet, and published; refuses a CA that differs from PostgreSQL's.
///
/// # Errors
/// [`RoleError`].
pub async fn edge_ca(config: &Config, store: &Store) -> Result<EdgeCa, RoleError> {
    let path = config
        .fleet
        .ca_key
        .clone()
        .unwrap_or_else(|| fleet_dir(config).join("edge_ca"));
    let stored = store.fleet_ca().await?;
    let ca = match (&stored, path.exists()) {
        (Some((_, fp)), false) => {
            return Err(RoleError::CaMissing {
                stored: fp.clone(),
                path: path.display().to_string(),
            });
        }
        _ => EdgeCa::load_or_create(&path, stored.is_none())?.0,
    };
    let (_, published) = store
        .publish_fleet_ca(
            &ca.public_key_openssh(),
            &ca.fingerprint().to_string(),
            &config.gateway_id(),
        )
        .await?;
    if published != ca.fingerprint().to_string() {
        return Err(RoleError::CaMismatch {
            stored: published,
            local: ca.fingerprint().to_string(),
            path: path.display().to_string(),
        });
    }
    Ok(ca)
}

/// Starts `role`'s fleet parts; nothing for [`Role::All`]. `host_key` is
/// the gateway's host key (an edge's fleet listener presents it with a CA
/// certificate). A node hands each relay stream to `acceptor` (its relay
/// server). Everything stops at `shutdown`.
///
/// # Errors
/// [`RoleError`] naming what to fix; nothing is left running then.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    role: Role,
    config: &Config,
    store: &Store,
    audit: &AuditLog,
    host_key: PrivateKey,
    inventory: &Inventory,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
    acceptor: Option<Arc<dyn RelayAcceptor>>,
) -> Result<FleetParts, RoleError> {
    if role == Role::All {
        return Ok(FleetParts::default());
    }
    if store.backend() != Backend::Postgres {
        return Err(RoleError::NotPostgres(role.as_str()));
    }
    let fleet = &config.fleet;
    let notices = Some(NoticeListener::start(
        config.database_url(),
        shutdown.clone(),
    ));
    if role == Role::Edge {
        let ca = edge_ca(config, store).await?;
        tracing::info!(fingerprint = %ca.fingerprint(), "edge CA");
        let tunnels = Tunnels::default();
        let ctx = Arc::new(EdgeContext {
            store: store.clone(),
            audit: audit.clone(),
            ca: ca.clone(),
            edge_id: config.gateway_id(),
            node_certificate_ttl: fleet.node_certificate_ttl,
            keepalive: fleet.keepalive,
            heartbeat: fleet.heartbeat,
            tunnels: tunnels.clone(),
            metrics,
        });
        let russh = Arc::new(edge_side::listener_config(&ctx, host_key)?);
        let listener = tokio::net::TcpListener::bind(fleet.listen)
            .await
            .map_err(|source| RoleError::Bind {
                addr: fleet.listen,
                source,
            })?;
        let local = listener.local_addr().ok();
        tracing::info!(listen = ?local, "fleet listener");
        tokio::spawn(edge_side::serve(ctx, listener, russh, shutdown));
        return Ok(FleetParts {
            tunnels: Some(tunnels),
            ca: Some(ca),
            notices,
            fleet_listen: local,
            ..Default::default()
        });
    }
    let name = fleet
        .node_name
        .clone()
        .ok_or(RoleError::Missing("node_name"))?;
    if fleet.edges.is_empty() {
        return Err(RoleError::Missing("edges"));
    }
    let dir = fleet_dir(config);
    let identity = match NodeIdentity::load(&dir, &name)? {
        Some(identity) => identity,
        None => {
            let token = fleet.join_token.as_ref().ok_or(RoleError::Missing(
                "join_token (from portcullis nodes add) to join",
            ))?;
            let pin = parse_fingerprint(fleet.ca_pin.as_deref().ok_or(RoleError::Missing(
                "ca_pin (from portcullis nodes add) to join",
            ))?)?;
            join_any(&dir, &name, &fleet.edges, token.expose(), pin).await?
        }
    };
    let identity = Arc::new(identity);
    tracing::info!(node = %name, ca = %identity.ca_fingerprint(), "node identity");
    // Without an acceptor (a test of the tunnels alone), refuse openly.
    let acceptor: Arc<dyn RelayAcceptor> = acceptor.unwrap_or_else(|| {
        Arc::new(
            |_stream: crate::fleet::tunnel::TunnelStream,
             origin: crate::fleet::tunnel::RelayOrigin| {
                tracing::error!(edge = %origin.edge, "relay stream refused: no relay server");
            },
        )
    });
    let settings = TunnelSettings {
        identity: identity.clone(),
        keepalive: fleet.keepalive,
        reconnect_max: fleet.reconnect_max,
        acceptor,
        metrics,
    };
    TunnelClient::start(settings, &fleet.edges, shutdown.clone());
    tokio::spawn(heartbeat::run(
        store.clone(),
        audit.clone(),
        inventory.clone(),
        name,
        fleet.heartbeat,
        shutdown,
    ));
    Ok(FleetParts {
        identity: Some(identity),
        notices,
        ..Default::default()
    })
}

/// Joins through the first edge that answers.
async fn join_any(
    dir: &std::path::Path,
    name: &str,
    edges: &[String],
    token: &str,
    pin: russh::keys::ssh_key::Fingerprint,
) -> Result<NodeIdentity, RoleError> {
    let mut last = None;
    for edge in edges {
        match NodeIdentity::join(dir, name, edge, token, pin).await {
            Ok(identity) => {
                tracing::info!(node = name, %edge, "joined the fleet");
                return Ok(identity);
            }
            Err(e) => {
                tracing::warn!(%edge, error = %e, "join failed");
                last = Some(e);
            }
        }
    }
    Err(last
        .map(RoleError::Tunnel)
        .unwrap_or(RoleError::Missing("edges")))
}

/// Until `notices` ends: ends sessions named by kill notices with
/// `end_session(id, reason)`, closes removed nodes' tunnels (edge), and
/// on every resync calls `resync()` (the consumer re-reads kills, locks
/// and grants). A stand-in consumer until the session core takes the
/// notices itself.
pub async fn consume_notices(
    mut notices: tokio::sync::mpsc::Receiver<Delivered>,
    tunnels: Option<Tunnels>,
    metrics: Option<Arc<Metrics>>,
    end_session: impl Fn(&str, &str) -> bool + Send,
    resync: impl Fn() + Send,
) {
    while let Some(d) = notices.recv().await {
        if let Some(m) = &metrics {
            m.notice(d.notice.kind(), d.latency);
        }
        match &d.notice {
            Notice::Kill { session_id, reason } => {
                if end_session(session_id, reason) {
                    tracing::info!(session_id = %session_id, latency = ?d.latency, "kill notice: session ended");
                }
            }
            Notice::NodeRemoved { node } => {
                if let Some(t) = &tunnels {
                    t.disconnect(node, "this node was removed from the fleet")
                        .await;
                }
            }
            Notice::Resync => resync(),
            Notice::Lock { .. } | Notice::GrantRevoked { .. } => resync(),
        }
    }
}
