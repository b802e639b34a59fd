//! Where a container runs, for the edge: its node from `fleet_containers`,
//! and whether that node is usable from this edge now. Every refusal is a
//! message for the user naming the reason (issue 16 point 7).
//!
//! Owns the lookup; it never decides policy.

use crate::fleet::tunnel::Tunnels;
use crate::store::{FleetContainer, Store, StoreError};

/// Why a container cannot be reached through this edge.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No node reports a container of that name.
    #[error("no container named {0} in the fleet")]
    Unknown(String),
    /// Its node's tunnel to this edge is down.
    #[error("container {container} is on node {node}, which is offline{since}")]
    Offline {
        /// The container.
        container: String,
        /// Its node.
        node: String,
        /// ` (last heartbeat ...)`, when known.
        since: String,
    },
    /// Its node was removed.
    #[error("container {container} was on node {node}, which was removed from the fleet")]
    Removed {
        /// The container.
        container: String,
        /// Its node.
        node: String,
    },
    /// The database cannot answer (fail closed).
    #[error("the fleet database is unavailable")]
    Store(#[from] StoreError),
}

/// A container's place in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The node.
    pub node: String,
    /// The container's state as the node last reported it.
    pub state: String,
    /// Its labels (JSON object text), for policy.
    pub labels: String,
}

/// Finds `container`'s node and checks its tunnel to this edge is up.
///
/// # Errors
/// [`LocateError`] with the user-facing reason.
pub async fn locate(
    store: &Store,
    tunnels: &Tunnels,
    container: &str,
) -> Result<Location, LocateError> {
    let found = find(store, container).await?;
    reachable(store, tunnels, found).await
}

/// The fleet's row for `container` (its node, state and labels), without
/// checking the node: the edge decides the policy on it first, so that an
/// offline node is only named to someone allowed in.
///
/// # Errors
/// [`LocateError::Unknown`], or [`LocateError::Store`] (fail closed).
pub async fn find(store: &Store, container: &str) -> Result<FleetContainer, LocateError> {
    store
        .fleet_containers()
        .await?
        .into_iter()
        .find(|c| c.name == container)
        .ok_or_else(|| LocateError::Unknown(container.to_string()))
}

/// Checks that `found`'s node is active and its tunnel to this edge is up.
///
/// # Errors
/// [`LocateError::Removed`], [`LocateError::Offline`] (with the node's
/// last heartbeat, when known) or [`LocateError::Store`].
pub async fn reachable(
    store: &Store,
    tunnels: &Tunnels,
    found: FleetContainer,
) -> Result<Location, LocateError> {
    let container = found.name.clone();
    let node = store.fleet_node(&found.node).await?;
    if node.as_ref().is_none_or(|n| n.state != "active") {
        return Err(LocateError::Removed {
            container,
            node: found.node,
        });
    }
    if !tunnels.is_connected(&found.node) {
        let since = node
            .and_then(|n| n.last_heartbeat)
            .map(|t| format!(" (last heartbeat {} UTC)", format_ms(t)))
            .unwrap_or_default();
        return Err(LocateError::Offline {
            container,
            node: found.node,
            since,
        });
    }
    Ok(Location {
        node: found.node,
        state: found.state,
        labels: found.labels,
    })
}

fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
