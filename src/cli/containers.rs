//! `portcullis containers list`: what the inventory finds, from both
//! backends (LXC and process), with state and labels.

use std::process::ExitCode;

use super::{ContainersCommand, print_table};
use crate::config::Config;
use crate::inventory::{ContainerState, Inventory};

pub(crate) async fn containers(
    config: Config,
    command: ContainersCommand,
) -> anyhow::Result<ExitCode> {
    let ContainersCommand::List { json } = command;
    let inventory = Inventory::new(&config);
    let list = inventory.list().await?;
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|c| {
            let (state, pid) = match &c.state {
                ContainerState::Running { init_pid } => {
                    ("RUNNING".to_string(), init_pid.to_string())
                }
                ContainerState::NotRunning(s) => (s.clone(), "-".to_string()),
            };
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                c.name.clone(),
                c.backend.as_str().to_string(),
                state,
                pid,
                labels.join(","),
            ]
        })
        .collect();
    if json {
        let items: Vec<_> = rows
            .iter()
            .zip(&list)
            .map(|(r, c)| {
                serde_json::json!({
                    "name": r[0], "backend": r[1], "state": r[2], "init_pid": r[3],
                    "labels": c.labels,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print_table(&["NAME", "BACKEND", "STATE", "INIT PID", "LABELS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
