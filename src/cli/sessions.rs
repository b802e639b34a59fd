//! `portcullis sessions`: list and replay recorded sessions.

use std::path::Path;
use std::process::ExitCode;

use super::{SessionsCommand, format_time, print_table};
use crate::config::Config;
use crate::store::{SessionRecord, Store};

pub(crate) async fn sessions(config: Config, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url()).await?;
    match command {
        SessionsCommand::List { limit, json } => {
            let sessions = store.list_sessions(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print_sessions(&sessions);
            }
        }
        SessionsCommand::Play {
            id,
            speed,
            idle_time_limit,
        } => {
            let session = store.session(&id).await?;
            let (_, events) = crate::recording::read(Path::new(&session.recording_path))?;
            let mut out = tokio::io::stdout();
            crate::recording::play(&events, speed, idle_time_limit, &mut out).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_sessions(sessions: &[SessionRecord]) {
    let rows: Vec<[String; 8]> = sessions
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                format_time(s.started_at),
                s.principal.clone(),
                format!("{}@{}", s.login, s.container),
                s.command.clone().unwrap_or_else(|| "(shell)".into()),
                s.status.clone(),
                match (&s.exit_status, &s.exit_signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(sig)) => sig.clone(),
                    _ => "-".into(),
                },
                s.client_addr.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "STARTED (UTC)",
            "PRINCIPAL",
            "TARGET",
            "COMMAND",
            "STATUS",
            "EXIT",
            "CLIENT",
        ],
        &rows,
    );
}
