//! The inventory as rows: each container with its node, state, owner,
//! purpose, labels and last session, and a flag on containers that have no
//! owner. One function, [`container_rows`], serves `portcullis containers
//! list`, the broker's `containers` command and the web console, so they
//! show the same thing.
//!
//! Reads only (the inventory's backends and one query of the sessions
//! table); never filters by policy: a front end that shows rows to a
//! principal decides which rows that principal may see.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Container, ContainerState, Inventory, InventoryError};
use crate::store::{LastSession, Store};

/// One container as the listing shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContainerRow {
    /// Name, as the runtime knows it.
    pub name: String,
    /// The node (container host) that serves it: this gateway's
    /// `gateway_id` for now.
    pub node: String,
    /// `lxc`, `process` or `incus`.
    pub backend: &'static str,
    /// `RUNNING`, or the runtime's word for not running (`STOPPED`,
    /// `FROZEN`, `UNKNOWN`, `INVALID`...).
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

/// Every container of `inventory` (sorted by name, as
/// [`Inventory::list`]) as a row on `node` (this gateway's
/// `Config::gateway_id()`), with the newest session of `store` that the
/// gateway `node` recorded for it.
///
/// # Errors
/// As [`Inventory::list`]; [`InventoryError::LastSessions`] when the
/// sessions table cannot be read.
pub async fn container_rows(
    inventory: &Inventory,
    store: &Store,
    node: &str,
) -> Result<Vec<ContainerRow>, InventoryError> {
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
