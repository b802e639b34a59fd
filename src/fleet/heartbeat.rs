//! The node's heartbeat (issue 16 point 4): every `fleet.heartbeat`, and
//! within [`CHANGE_CHECK`] of a change, it lists what [`Inventory::list`]
//! finds (state, labels, owner, purpose, backend) and writes it to
//! `fleet_containers` with its heartbeat and version, in one transaction. A container name
//! another node owns is refused (names are unique across the fleet): the
//! claim is audited once (`ContainerClaimRefused`) and logged naming both
//! nodes, and the owner's row is left alone.
//!
//! Owns the push; it never changes another node's rows.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::inventory::{ContainerState, Inventory, InventoryError};
use crate::store::{ContainerConflict, InventoryPush, Store, StoreError};

/// A failed heartbeat.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The inventory could not list containers.
    #[error("cannot list containers: {0}")]
    Inventory(#[from] InventoryError),
    /// The database refused the push.
    #[error("cannot push the inventory: {0}")]
    Store(#[from] StoreError),
}

/// How often a node lists its containers between heartbeats, to push a
/// change (a container started, stopped, relabelled, created or removed)
/// at once rather than at the next heartbeat.
pub const CHANGE_CHECK: Duration = Duration::from_secs(1);

/// What `inventory` finds now, as a heartbeat reports it.
///
/// # Errors
/// [`HeartbeatError::Inventory`].
pub async fn observe(inventory: &Inventory) -> Result<Vec<InventoryPush>, HeartbeatError> {
    Ok(inventory
        .list()
        .await?
        .into_iter()
        .map(|c| {
            let state = match c.state {
                ContainerState::Running { .. } => "RUNNING".to_string(),
                ContainerState::NotRunning(s) => s,
            };
            InventoryPush {
                labels: serde_json::to_string(&c.labels).unwrap_or_else(|_| "{}".into()),
                name: c.name,
                state,
                owner: c.owner,
                purpose: c.purpose,
                backend: c.backend.as_str().to_string(),
            }
        })
        .collect())
}

/// One push: `node`'s containers and heartbeat. Returns the refused
/// claims; those not in `reported` are audited and added to it.
///
/// # Errors
/// [`HeartbeatError`].
pub async fn push_once(
    store: &Store,
    audit: &AuditLog,
    inventory: &Inventory,
    node: &str,
    reported: &mut BTreeSet<(String, String)>,
) -> Result<Vec<ContainerConflict>, HeartbeatError> {
    let rows = observe(inventory).await?;
    push_rows(store, audit, node, &rows, reported).await
}

/// Pushes `rows` as `node`'s heartbeat; audits new refused claims.
async fn push_rows(
    store: &Store,
    audit: &AuditLog,
    node: &str,
    rows: &[InventoryPush],
    reported: &mut BTreeSet<(String, String)>,
) -> Result<Vec<ContainerConflict>, HeartbeatError> {
    let conflicts = store
        .push_inventory(node, env!("CARGO_PKG_VERSION"), rows)
        .await?;
    for c in &conflicts {
        if !reported.insert((c.name.clone(), c.owner.clone())) {
            continue;
        }
        tracing::error!(
            container = %c.name,
            node,
            owner = %c.owner,
            "container {} is on node {node} but node {} owns that name; refused \
             (container names are unique across the fleet)",
            c.name,
            c.owner
        );
        let event = AuditEvent::ContainerClaimRefused {
            container: c.name.clone(),
            node: node.to_string(),
            owner: c.owner.clone(),
        };
        audit.record(&AuditSubject::default(), &event).await?;
    }
    // Conflicts that went away may be reported again if they come back.
    reported.retain(|r| conflicts.iter().any(|c| c.name == r.0 && c.owner == r.1));
    Ok(conflicts)
}

/// Pushes every `interval` (the heartbeat) until `shutdown`, and between
/// heartbeats as soon as a listing every [`CHANGE_CHECK`] differs from the
/// last push; failures are logged and retried on the next tick.
pub async fn run(
    store: Store,
    audit: AuditLog,
    inventory: Inventory,
    node: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut reported = BTreeSet::new();
    let mut beat = tokio::time::interval(interval);
    let mut look = tokio::time::interval(CHANGE_CHECK.min(interval));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pushed: Option<Vec<InventoryPush>> = None;
    loop {
        let heartbeat = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = beat.tick() => true,
            _ = look.tick() => false,
        };
        let rows = match observe(&inventory).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers for the heartbeat; retrying");
                continue;
            }
        };
        if !heartbeat && pushed.as_ref() == Some(&rows) {
            continue;
        }
        match push_rows(&store, &audit, &node, &rows, &mut reported).await {
            Ok(_) => pushed = Some(rows),
            Err(e) => {
                pushed = None;
                tracing::warn!(error = %e, "heartbeat failed; retrying");
            }
        }
    }
}
