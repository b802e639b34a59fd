//! `portcullis containers list [--json]`: what the inventory finds (the
//! process backend and the configured one; in a fleet, every node's as
//! pushed to the database), with node, state, owner,
//! purpose, labels and last session, from
//! [`crate::inventory::container_rows`]; containers without an owner are
//! flagged.

use std::process::ExitCode;

use super::{ContainersCommand, format_time, print_table};
use crate::config::Config;
use crate::inventory::{ContainerRow, Inventory, container_rows};
use crate::store::Store;

/// How the table shows a container without an owner.
const NO_OWNER: &str = "(none)!";

pub(crate) async fn containers(
    config: Config,
    command: ContainersCommand,
) -> anyhow::Result<ExitCode> {
    let ContainersCommand::List { json } = command;
    let inventory = Inventory::new(&config);
    let store = Store::open(&config.database_url()).await?;
    let fresh = config.fleet.heartbeat.saturating_mul(3);
    let rows = container_rows(&inventory, &store, &config.gateway_id(), fresh).await;
    store.close().await;
    let rows = rows?;
    if json {
        let items: Vec<_> = rows.iter().map(json_row).collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let last = r
                .last_session
                .as_ref()
                .map(|s| {
                    format!(
                        "{} as {}, {}",
                        s.email.as_deref().unwrap_or(&s.principal),
                        s.login,
                        format_time(s.started_at)
                    )
                })
                .unwrap_or_else(|| "-".to_string());
            [
                r.name.clone(),
                r.node.clone(),
                r.backend.to_string(),
                r.state.clone(),
                r.owner.clone().unwrap_or_else(|| NO_OWNER.to_string()),
                r.purpose.clone().unwrap_or_else(|| "-".to_string()),
                labels.join(","),
                last,
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "NODE",
            "BACKEND",
            "STATE",
            "OWNER",
            "PURPOSE",
            "LABELS",
            "LAST SESSION",
        ],
        &table,
    );
    let unowned: Vec<&str> = rows
        .iter()
        .filter(|r| r.unowned)
        .map(|r| r.name.as_str())
        .collect();
    if !unowned.is_empty() {
        println!(
            "\n{} container(s) without an owner: {} (set `owner` in [containers.NAME], or \
             user.portcullis.owner on an Incus/LXD instance)",
            unowned.len(),
            unowned.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON of one row: the typed row's fields, with `init_pid` as a
/// string (`"-"` when not running), as this command has always printed it.
fn json_row(r: &ContainerRow) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "node": r.node,
        "backend": r.backend,
        "state": r.state,
        "init_pid": r.init_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".to_string()),
        "owner": r.owner,
        "purpose": r.purpose,
        "labels": r.labels,
        "last_session": r.last_session,
        "unowned": r.unowned,
    })
}
