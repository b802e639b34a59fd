//! `portcullis lock` (alias `locks`): add, list and remove locks (issue
//! 12). A lock refuses every new login and session of a principal, a
//! group, a key or an issuer, into a container or as a login, and every
//! gateway sharing the database ends the live sessions and closes the
//! connections it covers within a second. Audited before the change.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{format_time, print_table};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::session::lock;
use crate::store::{LockRecord, LockTarget, NewLock, Store, now_ms};

/// `portcullis lock ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum LocksCommand {
    /// Lock a principal, a group, a key, an issuer, a container or a
    /// login: refuse its new logins and sessions, end its live sessions
    /// and close its connections.
    #[command(group(clap::ArgGroup::new("what").required(true)
        .args(["principal", "group", "key", "container", "issuer", "login"])))]
    Add {
        /// Every session of this principal (subject, as `sessions list`
        /// shows it).
        #[arg(long)]
        principal: Option<String>,
        /// Every session of a principal in this group (as the policy
        /// sees it, e.g. `developers` or `ca:contractors`).
        #[arg(long)]
        group: Option<String>,
        /// Every session of a connection that logged in with this key
        /// (`SHA256:...`, a bound key's or a certificate's).
        #[arg(long)]
        key: Option<String>,
        /// Every session into this container.
        #[arg(long)]
        container: Option<String>,
        /// Every session of a principal this issuer vouched for (issuer
        /// URL, or `ssh-ca:SHA256:...` for a certificate authority).
        #[arg(long)]
        issuer: Option<String>,
        /// Every session as this login, in any container.
        #[arg(long)]
        login: Option<String>,
        /// Shown to the user whose session it ends or refuses; audited.
        #[arg(long)]
        reason: String,
        /// Ends on its own after this long (`30m`, `8h`); default: until
        /// removed. `--ttl` is the older name.
        #[arg(long = "for", alias = "ttl", value_parser = humantime::parse_duration)]
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
            group,
            key,
            container,
            issuer,
            login,
            reason,
            ttl,
            admin,
        } => {
            let (target, value) = [
                (LockTarget::Principal, principal),
                (LockTarget::Group, group),
                (LockTarget::Key, key),
                (LockTarget::Container, container),
                (LockTarget::Issuer, issuer),
                (LockTarget::Login, login),
            ]
            .into_iter()
            .find_map(|(t, v)| v.map(|v| (t, v)))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "name a --principal, --group, --key, --container, --issuer or --login"
                )
            })?;
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
