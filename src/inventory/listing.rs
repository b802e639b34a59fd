//! The inventory as rows: each container with its node, state, owner,
//! purpose, labels and last session, and a flag on containers that have no
//! owner. One function, [`container_rows`], serves `portcullis containers
//! list`, the broker's `containers` command and the web console, so they
//! show the same thing: in a fleet (nodes pushed their inventories to the
//! shared database) every node's containers, an offline node's marked
//! `OFFLINE`; otherwise this gateway's own.
//!
//! Reads only (the inventory's backends, the fleet's tables and the
//! sessions table); never filters by policy: a front end that shows rows to
//! a principal decides which rows that principal may see.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{Backend, Container, ContainerState, Inventory, InventoryError};
use crate::store::{FleetContainer, LastSession, NodeRecord, Store};

/// One container as the listing shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContainerRow {
    /// Name, as the runtime knows it.
    pub name: String,
    /// The node (container host) that serves it: in a fleet the node that
    /// reported it, otherwise this gateway's `gateway_id`.
    pub node: String,
    /// `lxc`, `process` or `incus`.
    pub backend: &'static str,
    /// `RUNNING`, or the runtime's word for not running (`STOPPED`,
    /// `FROZEN`, `UNKNOWN`, `INVALID`...); in a fleet `OFFLINE` when its
    /// node has no live tunnel to an edge, `REMOVED` when the node was
    /// removed.
    pub state: String,
    /// The init's host PID while running.
    pub init_pid: Option<i32>,
    /// Who answers for it; `None` is flagged ([`ContainerRow::unowned`]).
    pub owner: Option<String>,
    /// What it is for.
    pub purpose: Option<String>,
    /// Labels (policy tags).
    pub labels: BTreeMap<String, String>,
    /// The newest session this gateway recorded for it.
    pub last_session: Option<LastSession>,
    /// True when it has no owner: someone should claim it.
    pub unowned: bool,
}

impl ContainerRow {
    /// The row of `container` on `node`, with its `last_session`.
    pub fn new(
        container: Container,
        node: &str,
        last_session: Option<LastSession>,
    ) -> ContainerRow {
        let (state, init_pid) = match container.state {
            ContainerState::Running { init_pid } => ("RUNNING".to_string(), Some(init_pid)),
            ContainerState::NotRunning(s) => (s, None),
        };
        ContainerRow {
            unowned: container.owner.is_none(),
            name: container.name,
            node: node.to_string(),
            backend: container.backend.as_str(),
            state,
            init_pid,
            owner: container.owner,
            purpose: container.purpose,
            labels: container.labels,
            last_session,
        }
    }
}

/// The containers to list. In a fleet (the database holds nodes' pushed
/// inventories): every node's, each as its node last reported it, and
/// `OFFLINE` when no edge saw the node's tunnel within `fleet_fresh` (use
/// three `fleet.heartbeat`s). Otherwise every container of `inventory` (as
/// [`Inventory::list`]) on `node` (this gateway's `Config::gateway_id()`).
/// Sorted by name; each with the newest session its node recorded for it.
///
/// # Errors
/// As [`Inventory::list`]; [`InventoryError::LastSessions`] when the
/// sessions or fleet tables cannot be read.
pub async fn container_rows(
    inventory: &Inventory,
    store: &Store,
    node: &str,
    fleet_fresh: Duration,
) -> Result<Vec<ContainerRow>, InventoryError> {
    let fleet = store
        .fleet_containers()
        .await
        .map_err(InventoryError::Fleet)?;
    if !fleet.is_empty() {
        return fleet_rows(store, fleet, fleet_fresh).await;
    }
    let (containers, last) = tokio::join!(inventory.list(), store.last_sessions(node));
    let containers = containers?;
    let mut last = last.map_err(InventoryError::LastSessions)?;
    Ok(containers
        .into_iter()
        .map(|c| {
            let session = last.remove(&c.name);
            ContainerRow::new(c, node, session)
        })
        .collect())
}

/// The fleet's containers as rows (see [`container_rows`]).
async fn fleet_rows(
    store: &Store,
    fleet: Vec<FleetContainer>,
    fresh: Duration,
) -> Result<Vec<ContainerRow>, InventoryError> {
    let fresh_ms = i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
    let nodes = store
        .list_fleet_nodes(fresh_ms)
        .await
        .map_err(InventoryError::Fleet)?;
    // Each node records its own sessions: the newest per container from
    // every node that reports one (joined or not).
    let mut last: BTreeMap<String, BTreeMap<String, LastSession>> = BTreeMap::new();
    for f in &fleet {
        if last.contains_key(&f.node) {
            continue;
        }
        let sessions = store
            .last_sessions(&f.node)
            .await
            .map_err(InventoryError::LastSessions)?;
        last.insert(f.node.clone(), sessions);
    }
    Ok(fleet
        .into_iter()
        .map(|f| {
            let session = last.get_mut(&f.node).and_then(|m| m.remove(&f.name));
            let node = nodes.iter().find(|n| n.name == f.node);
            fleet_row(f, node, session)
        })
        .collect())
}

/// One container as its node reported it, its state overridden when the
/// node is `removed` or has no live tunnel.
fn fleet_row(
    f: FleetContainer,
    node: Option<&NodeRecord>,
    last_session: Option<LastSession>,
) -> ContainerRow {
    let state = match node {
        Some(n) if n.state != "active" => "REMOVED".to_string(),
        Some(n) if n.edges.is_empty() => "OFFLINE".to_string(),
        // A node the fleet's table does not name (not joined): unreachable.
        None => "OFFLINE".to_string(),
        Some(_) => f.state,
    };
    ContainerRow {
        unowned: f.owner.is_none(),
        name: f.name,
        node: f.node,
        backend: Backend::parse(&f.backend).map_or("unknown", Backend::as_str),
        state,
        // The init is the node's, never the edge's to use.
        init_pid: None,
        owner: f.owner,
        purpose: f.purpose,
        labels: serde_json::from_str(&f.labels).unwrap_or_default(),
        last_session,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::inventory::Backend;

    #[test]
    fn rows_flag_containers_without_owner() {
        let mut c = Container::new(
            "web1",
            ContainerState::Running { init_pid: 42 },
            "/lxc.payload.web1".into(),
            Backend::Lxc,
        );
        c.purpose = Some("shop".into());
        let row = ContainerRow::new(c.clone(), "gw1", None);
        assert!(row.unowned);
        assert_eq!(
            (
                row.state.as_str(),
                row.init_pid,
                row.backend,
                row.node.as_str()
            ),
            ("RUNNING", Some(42), "lxc", "gw1")
        );
        c.owner = Some("alice".into());
        c.state = ContainerState::NotRunning("STOPPED".into());
        let row = ContainerRow::new(c, "gw1", None);
        assert!(!row.unowned);
        assert_eq!((row.state.as_str(), row.init_pid), ("STOPPED", None));
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["owner"], "alice");
        assert_eq!(json["purpose"], "shop");
        assert_eq!(json["last_session"], serde_json::Value::Null);
    }
}
