//! The `portcullis` command line: `serve`, `sessions`, `policy`,
//! `containers`, `audit`, `keys`, `attach`. Every subcommand takes `--config FILE` (default
//! `./portcullis.toml`). Errors print one line and exit non-zero.

mod attach;
mod audit;
mod containers;
mod keys;
mod locks;
mod nodes;
mod policy;
mod serve;
mod sessions;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Portcullis: SSH gateway and privileged-access broker for OS containers.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, default_value = "./portcullis.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// `all` (one host, default), `node` or `edge` (a fleet; see
        /// docs/fleet.md).
        #[arg(long, value_enum, default_value = "all")]
        role: crate::fleet::Role,
    },
    /// Review recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Ask the policy for a decision.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// List the containers the inventory finds.
    Containers {
        #[command(subcommand)]
        command: ContainersCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// List and revoke key bindings.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Locks: refuse and end every session and connection of a
    /// principal, a group, a key or an issuer, into a container or as a
    /// login (`locks` is the same command).
    #[command(alias = "locks")]
    Lock {
        #[command(subcommand)]
        command: locks::LocksCommand,
    },
    /// Fleet nodes: add (join token), list, remove.
    Nodes {
        #[command(subcommand)]
        command: nodes::NodesCommand,
    },
    /// Enter a container from the host (operators), through the same
    /// helper as SSH sessions; audited and recorded.
    Attach {
        /// Container name.
        container: String,
        /// Login inside the container (default: `default_login`).
        #[arg(long)]
        login: Option<String>,
        /// Command (joined with spaces, run with the login's shell `-c`);
        /// none = a login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
// Parsed once per run: the size of `Check` costs nothing.
#[allow(clippy::large_enum_variant)]
enum PolicyCommand {
    /// Decide one request and name the policies that decided it.
    Check {
        /// Principal subject.
        #[arg(long)]
        principal: String,
        /// A group of the principal (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Container name (labels come from the config).
        #[arg(long)]
        container: String,
        /// Login inside the container.
        #[arg(long)]
        login: String,
        /// `shell`, `exec`, `sftp`, `port_forward`, `agent_forward`, or a
        /// workflow action: `request`, `approve` (also deny), `activate`,
        /// `revoke`, `review`.
        #[arg(long, default_value = "shell")]
        action: String,
        /// Command, for `exec`.
        #[arg(long)]
        command: Option<String>,
        /// A label of the container, `KEY=VALUE` (repeat for several); adds
        /// to or replaces the labels of its `[containers.NAME]` section.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// `sftp`: `read` or `write`.
        #[arg(long, default_value = "read")]
        access: String,
        /// `port_forward`: destination address inside the container.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// `port_forward`: destination port.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// Workflow actions: who asked for the grant (default: the
        /// principal, i.e. their own request).
        #[arg(long)]
        requester: Option<String>,
        /// Workflow actions: the grant's length (e.g. `2h`).
        #[arg(long = "for", value_name = "DURATION", default_value = "1h")]
        duration: String,
        /// Workflow actions: the request's reason.
        #[arg(long, default_value = "")]
        reason: String,
        /// Workflow actions: approvals so far (for `activate`, counting the
        /// one just given).
        #[arg(long, default_value_t = 0)]
        approvals: i64,
        /// Workflow actions: a break-glass request.
        #[arg(long)]
        break_glass: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check the policy directory and have the running gateway load it
    /// again (SIGHUP to the pid in `STATE_DIR/portcullis.pid`); a set
    /// that does not validate is refused and the old one stays.
    Reload,
}

#[derive(Debug, Subcommand)]
enum ContainersCommand {
    /// Containers with state and labels.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Start a container, as the host's operator (no policy; audited
    /// like every action).
    Start(containers::ActArgs),
    /// Stop a container, as the host's operator.
    Stop(containers::ActArgs),
    /// Stop and start a container, as the host's operator.
    Restart(containers::ActArgs),
    /// Take a snapshot of a container, as the host's operator.
    Snapshot(containers::ActArgs),
    /// Put a container back to a snapshot, as the host's operator.
    Restore {
        /// The container.
        name: String,
        /// The snapshot (see `containers snapshots NAME`).
        snapshot: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// A container's snapshots.
    Snapshots {
        /// The container.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Audit { command } = &cli.command
        && let Some(code) = audit::without_database(&cli.config, command)?
    {
        return Ok(code);
    }
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve { role } => serve::serve_gateway(config, role).await,
        Command::Sessions { command } => sessions::sessions(config, command).await,
        Command::Policy { command } => policy::policy(config, command),
        Command::Containers { command } => containers::containers(config, command).await,
        Command::Audit { command } => audit::audit(config, command).await,
        Command::Keys { command } => keys::keys(config, command).await,
        Command::Lock { command } => locks::locks(config, command).await,
        Command::Nodes { command } => nodes::nodes(config, command).await,
        Command::Attach {
            container,
            login,
            command,
        } => attach::attach(config, container, login, command).await,
    }
}

/// A UTC time for tables: `YYYY-MM-DD HH:MM:SS` from unix milliseconds.
pub(crate) fn format_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Prints an aligned table; cells are cut to 60 characters and made
/// display-safe ([`crate::text::display_safe`]: names and reasons come
/// from people and from the database, and must not drive the terminal).
pub(crate) fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| {
            row.clone()
                .map(|c| crate::text::display_safe(&c).into_owned())
        })
        .collect();
    let rows = rows.as_slice();
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count().min(60));
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| {
                let c: String = c.chars().take(60).collect();
                format!("{c:<w$}")
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.to_vec());
    }
}
