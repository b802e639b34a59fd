//! `portcullis serve`: start the gateway and run until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::attach::HelperBinary;
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::config::Config;
use crate::identity::OidcIssuer;
use crate::inventory::Inventory;
use crate::policy::PolicyEngine;
use crate::ssh::{Gateway, fingerprint, load_or_create_host_key, russh_config, serve};
use crate::store::Store;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) fn create_private_dir(path: &Path) -> anyhow::Result<()> {
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

pub(crate) async fn serve_gateway(config: Config) -> anyhow::Result<ExitCode> {
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
        inventory: Inventory::new(&config),
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
