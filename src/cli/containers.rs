//! `portcullis containers list [--json]`: what the inventory finds (the
//! process backend and the configured one; in a fleet, every node's as
//! pushed to the database), with node, state, owner,
//! purpose, labels and last session, from
//! [`crate::inventory::container_rows`]; containers without an owner are
//! flagged.
//!
//! `portcullis containers start|stop|restart|snapshot NAME --reason TEXT`,
//! `restore NAME SNAPSHOT --reason TEXT` and `snapshots NAME`: the host
//! operator's own lifecycle commands (issue 18). No policy asks (root on
//! the host is past every policy), but each runs through
//! [`crate::commands::containers::perform`] under the principal
//! `host:uid=N`, audited before and after like the broker's.

use std::process::ExitCode;

use super::{ContainersCommand, format_time, print_table};
use crate::audit::{AuditLog, AuditSubject, ContainerAction};
use crate::config::Config;
use crate::inventory::{ContainerRow, Inventory, Operation, container_rows};
use crate::store::Store;

/// How the table shows a container without an owner.
const NO_OWNER: &str = "(none)!";

pub(crate) async fn containers(
    config: Config,
    command: ContainersCommand,
) -> anyhow::Result<ExitCode> {
    let json = match command {
        ContainersCommand::List { json } => json,
        ContainersCommand::Start(a) => return act(config, a, Operation::Start).await,
        ContainersCommand::Stop(a) => return act(config, a, Operation::Stop).await,
        ContainersCommand::Restart(a) => return act(config, a, Operation::Restart).await,
        ContainersCommand::Snapshot(a) => return act(config, a, Operation::Snapshot).await,
        ContainersCommand::Restore {
            name,
            snapshot,
            reason,
        } => {
            return act(
                config,
                ActArgs { name, reason },
                Operation::Restore(snapshot),
            )
            .await;
        }
        ContainersCommand::Snapshots { name, json } => return snapshots(config, &name, json).await,
    };
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

/// The words of `containers start|stop|restart|snapshot`.
#[derive(Debug, clap::Args)]
pub(crate) struct ActArgs {
    /// The container.
    name: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: String,
}

/// `containers start|stop|restart|snapshot|restore` on the host.
async fn act(config: Config, a: ActArgs, op: Operation) -> anyhow::Result<ExitCode> {
    if !crate::config::valid_name(&a.name) {
        anyhow::bail!("invalid container name");
    }
    if a.reason.trim().is_empty() || a.reason.chars().any(char::is_control) {
        anyhow::bail!("--reason TEXT is required (one line)");
    }
    let inventory = Inventory::new(&config);
    let container = inventory.find(&a.name).await?;
    let store = Store::open(&config.database_url()).await?;
    let audit = AuditLog::new(store.clone());
    let principal = format!("host:uid={}", nix::unistd::getuid());
    let subject = AuditSubject {
        session_id: None,
        principal: Some(&principal),
        client_addr: Some("local"),
    };
    let facts = ContainerAction {
        action: op.as_str().to_string(),
        container: container.name.clone(),
        snapshot: match &op {
            Operation::Restore(s) => Some(s.clone()),
            _ => None,
        },
        reason: a.reason.clone(),
        force: false,
        live_sessions: -1,
        grant_id: None,
        policies: vec!["host".to_string()],
    };
    let done =
        crate::commands::containers::perform(&inventory, &audit, &subject, &container, &op, facts)
            .await;
    drop(store);
    match (done?, &op) {
        (Some(s), Operation::Snapshot) => println!("Took snapshot {s} of {}.", a.name),
        (_, op) => println!("{}: done on {}.", op.as_str(), a.name),
    }
    Ok(ExitCode::SUCCESS)
}

/// `containers snapshots NAME [--json]` on the host.
async fn snapshots(config: Config, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let inventory = Inventory::new(&config);
    let container = inventory.find(name).await?;
    let list = inventory.snapshots(&container).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        println!("{name} has no snapshots.");
    } else {
        for s in list {
            println!("{} {}", s.name, s.created);
        }
    }
    Ok(ExitCode::SUCCESS)
}
