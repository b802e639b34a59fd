//! The `portcullis` command line: `serve`, `sessions`, `policy`,
//! `containers`, `audit`. Every subcommand takes `--config FILE` (default
//! `./portcullis.toml`). Errors print one line and exit non-zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::attach::HelperBinary;
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::config::Config;
use crate::identity::OidcIssuer;
use crate::inventory::{ContainerState, LxcInventory};
use crate::policy::{AccessRequest, Action, PolicyEngine};
use crate::ssh::{Gateway, fingerprint, load_or_create_host_key, russh_config, serve};
use crate::store::{SessionRecord, Store};

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
    Serve,
    /// Review recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
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
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List sessions, newest first.
    List {
        /// Most sessions to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replay a session's recording in the terminal with its timing.
    Play {
        /// Session id.
        id: String,
        /// Playback speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause replayed, in seconds.
        #[arg(long)]
        idle_time_limit: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
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
        /// `shell` or `exec`.
        #[arg(long, default_value = "shell")]
        action: String,
        /// Command, for `exec`.
        #[arg(long)]
        command: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContainersCommand {
    /// Containers with state and labels.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Audit events in order.
    List {
        /// Only the events of this session.
        #[arg(long)]
        session: Option<String>,
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
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve => serve_gateway(config).await,
        Command::Sessions { command } => sessions(config, command).await,
        Command::Policy { command } => policy(config, command),
        Command::Containers { command } => containers(config, command).await,
        Command::Audit { command } => audit(config, command).await,
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", path.display());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(())
}

async fn serve_gateway(config: Config) -> anyhow::Result<ExitCode> {
    init_tracing();
    let config = Arc::new(config);
    create_private_dir(&config.state_dir)?;
    create_private_dir(&config.recordings_dir())?;
    let host_key = load_or_create_host_key(&config.host_key_path())?;
    tracing::info!(
        fingerprint = %fingerprint(&host_key),
        path = %config.host_key_path().display(),
        "host key"
    );
    let policy = PolicyEngine::load(&config.policy.dir)?;
    let store = Store::open(&config.database_url()).await?;
    let audit = AuditLog::new(store.clone());
    for id in store.interrupt_running_sessions().await? {
        let subject = AuditSubject {
            session_id: Some(&id),
            ..Default::default()
        };
        audit
            .record(&subject, &AuditEvent::SessionInterrupted)
            .await?;
    }
    let issuer = Arc::new(OidcIssuer::new(&config.oidc)?);
    let helper = HelperBinary::sealed_copy_of_current_exe()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let russh = Arc::new(russh_config(host_key));
    let gateway = Arc::new(Gateway {
        inventory: LxcInventory::new(&config),
        config: config.clone(),
        store: store.clone(),
        audit,
        issuer,
        policy,
        helper,
        shutdown: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
    });
    // Warm the discovery cache; a failure here only means logins fail until
    // the issuer answers.
    let warm = gateway.issuer.clone();
    tokio::spawn(async move {
        if let Err(e) = warm.validate_id_token("x.y.z").await
            && !matches!(e, crate::identity::IdentityError::Malformed(_))
        {
            tracing::warn!(error = %e, "identity provider not reachable yet");
        }
    });
    tracing::info!(listen = %local, issuer = %config.oidc.issuer, "portcullis listening");
    let server = tokio::spawn(serve(gateway.clone(), listener, russh));
    wait_for_signal().await;
    tracing::info!("shutting down");
    gateway.shutdown.cancel();
    let _ = server.await;
    gateway.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), gateway.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not end within 10 s");
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn sessions(config: Config, command: SessionsCommand) -> anyhow::Result<ExitCode> {
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

fn format_time(ms: i64) -> String {
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

fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
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

fn policy(config: Config, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check {
        principal,
        groups,
        container,
        login,
        action,
        command,
        json,
    } = command;
    let engine = PolicyEngine::load(&config.policy.dir)?;
    let action: Action = action.parse()?;
    let labels: BTreeMap<String, String> = config
        .containers
        .get(&container)
        .map(|c| c.labels.clone())
        .unwrap_or_default();
    let decision = engine.decide(&AccessRequest {
        principal: &principal,
        groups: &groups,
        container: &container,
        labels: &labels,
        login: &login,
        action,
        command: command.as_deref(),
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "decision": if decision.allowed { "allow" } else { "deny" },
                "policies": decision.policies,
                "errors": decision.errors,
            })
        );
    } else {
        println!(
            "{}: {} {} as {} on {}",
            if decision.allowed { "ALLOW" } else { "DENY" },
            principal,
            action.as_str(),
            login,
            container
        );
        if decision.policies.is_empty() {
            println!("decided by: no policy applied (default deny)");
        } else {
            println!("decided by: {}", decision.policies.join(", "));
        }
        for e in &decision.errors {
            println!("error: {e}");
        }
    }
    Ok(if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn containers(config: Config, command: ContainersCommand) -> anyhow::Result<ExitCode> {
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

async fn audit(config: Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
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
