//! What an edge needs to relay a user's session to a node, in one value the
//! session core holds ([`EdgeRelay`]): where a container runs
//! ([`crate::fleet::locate`]), a user certificate minted for the one
//! session ([`EdgeCa::mint_user_certificate`]), a stream through the node's
//! tunnel ([`Tunnels::open_stream`]) and the SSH connection over it
//! ([`RelayClient`]), as `docs/fleet.md` ("What calls what") lays out.
//!
//! Owns the order of those steps and their one error type; it never decides
//! policy (the session core did, and the node decides again) and never
//! audits (the session core audits each refusal before it is sent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::fleet::ca::{CaError, EdgeCa, RelayGrant, now_secs};
use crate::fleet::locate::{self, LocateError, Location};
use crate::fleet::relay::{NodeHostCheck, RelayClient, RelayError, RelaySession};
use crate::fleet::tunnel::{TunnelError, Tunnels};
use crate::metrics::Metrics;
use crate::store::{FleetContainer, Store};

/// A failed step of opening a relayed session. `Display` is the full
/// reason, for the audit log; every variant means the node could not be
/// reached for this session.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The user certificate could not be minted.
    #[error("cannot mint the relay certificate: {0}")]
    Mint(#[from] CaError),
    /// No stream through the node's tunnel.
    #[error("{0}")]
    Stream(#[from] TunnelError),
    /// The SSH connection or its channel failed.
    #[error("{0}")]
    Relay(#[from] RelayError),
}

/// The edge's side of the relay: its tunnels, its CA and who it is.
#[derive(Clone)]
pub struct EdgeRelay {
    /// The database (fleet containers, nodes, witnesses).
    pub store: Store,
    /// The nodes connected to this edge.
    pub tunnels: Tunnels,
    /// The edge CA (mints one user certificate per session).
    pub ca: EdgeCa,
    /// This edge's gateway id (`edge@portcullis`).
    pub edge_id: String,
    /// Lifetime of relay user certificates (`fleet.user_certificate_ttl`).
    pub certificate_ttl: Duration,
    /// Metrics, when served (relay bytes).
    pub metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for EdgeRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeRelay")
            .field("edge_id", &self.edge_id)
            .field("tunnels", &self.tunnels)
            .finish_non_exhaustive()
    }
}

impl EdgeRelay {
    /// The fleet's row for `container` ([`locate::find`]).
    ///
    /// # Errors
    /// [`LocateError::Unknown`] or [`LocateError::Store`].
    pub async fn find(&self, container: &str) -> Result<FleetContainer, LocateError> {
        locate::find(&self.store, container).await
    }

    /// Checks `found`'s node can be reached from this edge now
    /// ([`locate::reachable`]).
    ///
    /// # Errors
    /// [`LocateError`] naming the node and why.
    pub async fn reachable(&self, found: FleetContainer) -> Result<Location, LocateError> {
        locate::reachable(&self.store, &self.tunnels, found).await
    }

    /// Opens `grant`'s session channel on `node`: mints the certificate,
    /// opens a tunnel stream (`originator` is the user's address, for the
    /// node's logs), logs in and opens the channel.
    ///
    /// # Errors
    /// [`OpenError`] naming the failed step.
    pub async fn open_session(
        &self,
        node: &str,
        grant: &RelayGrant,
        originator: Option<SocketAddr>,
    ) -> Result<RelaySession, OpenError> {
        let client = self.connect(node, grant, originator).await?;
        Ok(client.open_session().await?)
    }

    /// Logs in to `node` for `grant` (mints the certificate, opens a tunnel
    /// stream, SSH), without opening a channel: a forward opens its
    /// `direct-tcpip` channel on it ([`RelayClient::open_direct_tcpip`]).
    ///
    /// # Errors
    /// [`OpenError`] naming the failed step.
    pub async fn connect(
        &self,
        node: &str,
        grant: &RelayGrant,
        originator: Option<SocketAddr>,
    ) -> Result<RelayClient, OpenError> {
        let minted = self
            .ca
            .mint_user_certificate(grant, now_secs(), self.certificate_ttl)?;
        let stream = self.tunnels.open_stream(node, originator).await?;
        let check = NodeHostCheck {
            node: node.to_string(),
            ca: self.ca.fingerprint(),
        };
        Ok(RelayClient::connect(stream, &minted, check, self.metrics.clone()).await?)
    }
}
