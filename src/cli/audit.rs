//! `portcullis audit list`: the audit log in order.

use std::process::ExitCode;

use super::{AuditCommand, format_time, print_table};
use crate::config::Config;
use crate::store::Store;

pub(crate) async fn audit(config: Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::List { session, json } = command;
    let store = Store::open(&config.database_url()).await?;
    let events = store.audit_events(session.as_deref()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else {
        let rows: Vec<[String; 6]> = events
            .iter()
            .map(|e| {
                [
                    e.id.to_string(),
                    format_time(e.at),
                    e.kind.clone(),
                    e.outcome.clone(),
                    e.principal.clone().unwrap_or_default(),
                    e.detail.clone(),
                ]
            })
            .collect();
        print_table(
            &["ID", "AT (UTC)", "KIND", "OUTCOME", "PRINCIPAL", "DETAIL"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}
