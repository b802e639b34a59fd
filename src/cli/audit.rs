//! `portcullis audit`: the audit log in order, and `audit verify`, which
//! checks the hash chain, the signed heads and every recording.

use std::process::ExitCode;

use clap::Subcommand;

use super::{format_time, print_table};
use crate::config::Config;
use crate::store::Store;

/// `portcullis audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Audit events in order.
    List {
        /// Only the events of this session.
        #[arg(long)]
        session: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check the chain, its signatures and every recording; exit 1 and name
    /// the first bad event and every bad recording when anything differs.
    Verify {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn audit(config: Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url()).await?;
    match command {
        AuditCommand::List { session, json } => {
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
        AuditCommand::Verify { json } => {
            // The gateway's own key, when this host has it: signatures by any
            // other key are reported.
            let gateway_key = russh::keys::load_secret_key(config.host_key_path(), None)
                .ok()
                .map(|k| k.public_key().clone());
            let report = crate::audit::verify(&store, gateway_key.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "checked {} events, {} signed heads, {} recordings",
                    report.events, report.signatures, report.recordings
                );
                if let Some((id, problem)) = &report.first_bad_event {
                    println!("BAD event {id}: {problem}");
                }
                for s in &report.bad_signatures {
                    println!("BAD signature {}: {}", s.signature_id, s.problem);
                }
                for r in &report.bad_recordings {
                    println!("BAD recording of session {}: {}", r.session_id, r.problem);
                }
                if report.ok() {
                    println!("OK");
                }
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
