//! `portcullis keys`: list and revoke key bindings (public keys bound to a
//! principal after an IdP login). A revoked key is refused on its next
//! connection: it needs a new IdP login, which binds it again.

use std::process::ExitCode;

use clap::Subcommand;

use super::{format_time, print_table};
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::config::Config;
use crate::store::{KeyBinding, Store};

/// `portcullis keys ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Bound keys, by principal (refresh tokens are never shown).
    List {
        /// Also revoked and expired bindings.
        #[arg(long)]
        all: bool,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the bindings of a principal or of one key.
    Revoke {
        /// Every key bound to this principal.
        #[arg(long, required_unless_present = "fingerprint")]
        principal: Option<String>,
        /// The key with this fingerprint (`SHA256:...`, as `ssh-keygen -l`
        /// prints it).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

pub(crate) async fn keys(config: Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url()).await?;
    match command {
        KeysCommand::List { all, json } => {
            let bindings = store.list_key_bindings(all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&bindings)?);
            } else {
                print_bindings(&bindings);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke {
            principal,
            fingerprint,
            reason,
        } => {
            let revoked = store
                .revoke_key_bindings(principal.as_deref(), fingerprint.as_deref(), &reason)
                .await?;
            let audit = AuditLog::new(store.clone());
            for fp in &revoked {
                let event = AuditEvent::KeyBindingChanged {
                    fingerprint: fp.clone(),
                    change: "revoked".into(),
                    until: None,
                    reason: Some(reason.clone()),
                };
                let subject = AuditSubject {
                    principal: principal.as_deref(),
                    ..Default::default()
                };
                audit.record(&subject, &event).await?;
                println!("revoked {fp}");
            }
            if revoked.is_empty() {
                eprintln!("portcullis: no live key binding matches");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_bindings(bindings: &[KeyBinding]) {
    let rows: Vec<[String; 6]> = bindings
        .iter()
        .map(|b| {
            let state = match (&b.revoked_at, b.expires_at <= crate::store::now_ms()) {
                (Some(_), _) => "revoked",
                (None, true) => "expired",
                (None, false) => "bound",
            };
            [
                b.principal.clone(),
                b.fingerprint.clone(),
                b.groups.join(","),
                format_time(b.expires_at),
                if b.refreshable { "yes" } else { "no" }.to_string(),
                state.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "PRINCIPAL",
            "FINGERPRINT",
            "GROUPS",
            "UNTIL (UTC)",
            "REFRESH",
            "STATE",
        ],
        &rows,
    );
}
