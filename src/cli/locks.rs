//! `portcullis locks`: add, list and remove locks (issue 12). A lock
//! refuses every new session of a principal, into a container or as a
//! login, and every gateway sharing the database ends the live sessions it
//! covers within a second. Audited before the change.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{format_time, print_table};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::session::lock;
use crate::store::{LockRecord, LockTarget, NewLock, Store, now_ms};

/// `portcullis locks ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum LocksCommand {
    /// Lock a principal, a container or a login: refuse its new sessions
    /// and end its live ones.
    #[command(group(clap::ArgGroup::new("what").required(true)
        .args(["principal", "container", "login"])))]
    Add {
        /// Every session of this principal (subject, as `sessions list`
        /// shows it).
        #[arg(long)]
        principal: Option<String>,
        /// Every session into this container.
        #[arg(long)]
        container: Option<String>,
        /// Every session as this login, in any container.
        #[arg(long)]
        login: Option<String>,
        /// Shown to the user whose session it ends or refuses; audited.
        #[arg(long)]
        reason: String,
        /// Ends on its own after this long (`30m`, `8h`); default: until
        /// removed.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Who adds it, for the audit log (default: $SUDO_USER or $USER).
        #[arg(long)]
        admin: Option<String>,
    },
    /// The locks that hold (with `--all`, removed and ended ones too).
    List {
        /// Also removed and ended locks.
        #[arg(long)]
        all: bool,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lock: new sessions it refused are allowed again.
    Remove {
        /// The lock's id.
        id: String,
        /// Who removes it, for the audit log (default: $SUDO_USER or $USER).
        #[arg(long)]
        admin: Option<String>,
    },
}

fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .map(|u| format!("host:{u}"))
        .unwrap_or_else(|_| "host:unknown".to_string())
}

pub(crate) async fn locks(config: Config, command: LocksCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url()).await?;
    let audit = AuditLog::new(store.clone());
    match command {
        LocksCommand::Add {
            principal,
            container,
            login,
            reason,
            ttl,
            admin,
        } => {
            let (target, value) = match (principal, container, login) {
                (Some(p), _, _) => (LockTarget::Principal, p),
                (_, Some(c), _) => (LockTarget::Container, c),
                (_, _, Some(l)) => (LockTarget::Login, l),
                _ => anyhow::bail!("name a --principal, a --container or a --login"),
            };
            let expires_at = ttl
                .map(|d| now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
            let by = admin.unwrap_or_else(operator);
            let new = NewLock {
                target,
                value: &value,
                reason: &reason,
                created_by: &by,
                expires_at,
            };
            let added = lock::add(&store, &audit, &new).await?;
            println!("{}", added.id);
        }
        LocksCommand::List { all, json } => {
            let locks = if all {
                store.all_locks().await?
            } else {
                store.active_locks().await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&locks)?);
            } else {
                print_locks(&locks);
            }
        }
        LocksCommand::Remove { id, admin } => {
            let by = admin.unwrap_or_else(operator);
            lock::remove(&store, &audit, &id, &by).await?;
            println!("removed {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_locks(locks: &[LockRecord]) {
    let now = now_ms();
    let rows: Vec<[String; 6]> = locks
        .iter()
        .map(|l| {
            [
                l.id.clone(),
                format!("{} {}", l.target.as_str(), l.value),
                l.expires_at.map(format_time).unwrap_or_else(|| "-".into()),
                l.created_by.clone(),
                if l.is_active(now) { "holds" } else { "ended" }.to_string(),
                l.reason.clone(),
            ]
        })
        .collect();
    print_table(&["ID", "ON", "UNTIL (UTC)", "BY", "STATE", "REASON"], &rows);
}
