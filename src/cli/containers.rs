//! `portcullis containers list`: what the inventory finds.

use std::process::ExitCode;

use super::{ContainersCommand, print_table};
use crate::config::Config;
use crate::inventory::{ContainerState, LxcInventory};

pub(crate) async fn containers(
    config: Config,
    command: ContainersCommand,
) -> anyhow::Result<ExitCode> {
    let ContainersCommand::List { json } = command;
    let inventory = LxcInventory::new(&config);
    let list = inventory.list().await?;
    let rows: Vec<[String; 4]> = list
        .iter()
        .map(|c| {
            let (state, pid) = match &c.state {
                ContainerState::Running { init_pid } => {
                    ("RUNNING".to_string(), init_pid.to_string())
                }
                ContainerState::NotRunning(s) => (s.clone(), "-".to_string()),
            };
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [c.name.clone(), state, pid, labels.join(",")]
        })
        .collect();
    if json {
        let items: Vec<_> = rows
            .iter()
            .zip(&list)
            .map(|(r, c)| serde_json::json!({"name": r[0], "state": r[1], "init_pid": r[2], "labels": c.labels}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        print_table(&["NAME", "STATE", "INIT PID", "LABELS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
