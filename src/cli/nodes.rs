//! `portcullis nodes`: add (a one-time join token), list and remove the
//! nodes of a fleet (issue 16 point 3). Needs the fleet's PostgreSQL
//! (`database.url`); run it on an edge host.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{format_time, print_table};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::fleet::join;
use crate::store::{Store, now_ms};

/// `portcullis nodes ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum NodesCommand {
    /// Issue a one-time join token for a node (printed once), with the
    /// edge CA fingerprint the node pins.
    Add {
        /// The node's name (`[fleet] node_name` on the node).
        name: String,
        /// How long the token is valid.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Nodes with state, last heartbeat, version, containers and edges.
    List {
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: its certificate is refused from now on and its
    /// tunnels are closed.
    Remove {
        /// The node's name.
        name: String,
    },
}

/// The operator running the CLI, for audit events.
fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .map(|u| format!("host:{u}"))
        .unwrap_or_else(|_| "host:unknown".to_string())
}

pub(crate) async fn nodes(config: Config, command: NodesCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url())
        .await?
        .for_gateway(&config.gateway_id());
    let audit = AuditLog::new(store.clone());
    match command {
        NodesCommand::Add { name, ttl } => {
            let ticket = join::add_node(&store, &audit, &name, ttl, &operator()).await?;
            println!("node:        {name}");
            println!("join token:  {}", ticket.token);
            println!(
                "expires:     {} UTC (used once)",
                format_time(ticket.expires_at)
            );
            println!("CA pin:      {}", ticket.ca_fingerprint);
            println!();
            println!("On the node, in [fleet]:");
            println!("  node_name = \"{name}\"");
            println!("  join_token = \"{}\"", ticket.token);
            println!("  ca_pin = \"{}\"", ticket.ca_fingerprint);
        }
        NodesCommand::List { json } => {
            let fresh = 3 * config.fleet.heartbeat.as_millis() as i64;
            let nodes = store.list_fleet_nodes(fresh).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                let now = now_ms();
                let rows: Vec<[String; 6]> = nodes
                    .iter()
                    .map(|n| {
                        let heartbeat = n
                            .last_heartbeat
                            .map(|t| {
                                let age = Duration::from_secs(((now - t).max(0) / 1000) as u64);
                                format!("{} ago", humantime::format_duration(age))
                            })
                            .unwrap_or_else(|| "-".into());
                        [
                            n.name.clone(),
                            n.state.clone(),
                            heartbeat,
                            n.version.clone().unwrap_or_else(|| "-".into()),
                            n.containers.to_string(),
                            if n.edges.is_empty() {
                                "-".into()
                            } else {
                                n.edges.join(",")
                            },
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NAME",
                        "STATE",
                        "LAST HEARTBEAT",
                        "VERSION",
                        "CONTAINERS",
                        "EDGES",
                    ],
                    &rows,
                );
            }
        }
        NodesCommand::Remove { name } => {
            join::remove_node(&store, &audit, &name, &operator()).await?;
            println!("node {name} removed: its certificate is refused from now on");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
