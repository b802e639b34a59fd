//! `portcullis serve`: start the gateway and run until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::attach::HelperBinary;
use crate::audit::{AuditEvent, AuditLog, AuditSigner, AuditSubject};
use crate::config::Config;
use crate::identity::{CertificateAuthorities, Issuers, KeyBindings};
use crate::inventory::Inventory;
use crate::policy::PolicyEngine;
use crate::ssh::{
    FailureThrottle, Gateway, fingerprint, load_or_create_host_key, russh_config, serve,
};
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

pub(crate) async fn serve_gateway(
    config: Config,
    role: crate::fleet::Role,
) -> anyhow::Result<ExitCode> {
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
    if crate::recording::BENCH_NO_RECORDING {
        tracing::error!(
            "this binary was built with PORTCULLIS_BENCH_NO_RECORDING: sessions are NOT recorded; \
             it is for benchmarks only"
        );
    }
    let policy = PolicyEngine::load(&config.policy.dir)?;
    let store = Store::open(&config.database_url())
        .await?
        .for_gateway(&config.gateway_id());
    let audit = match &config.audit.export {
        Some(target) => AuditLog::new(store.clone())
            .with_export(target)
            .with_context(|| format!("audit.export: cannot open {target}"))?,
        None => AuditLog::new(store.clone()),
    };
    // Sessions a previous run of this gateway left running: digest what was
    // flushed, audit, then mark them interrupted.
    for session in store.running_sessions_of_gateway().await? {
        let digest = crate::recording::digest_file(Path::new(&session.recording_path)).ok();
        let (bytes, sha) = digest
            .map(|d| (d.bytes as i64, d.sha256))
            .unwrap_or((0, String::new()));
        let subject = AuditSubject {
            session_id: Some(&session.id),
            principal: Some(&session.principal),
            client_addr: session.client_addr.as_deref(),
        };
        audit
            .record(
                &subject,
                &AuditEvent::SessionInterrupted {
                    recording_bytes: bytes,
                    recording_sha256: sha.clone(),
                },
            )
            .await?;
        store.mark_interrupted(&session.id, bytes, &sha).await?;
        tracing::warn!(session_id = %session.id, "session of a previous run marked interrupted");
    }
    let signer = AuditSigner::for_gateway(host_key.clone(), &config)?;
    signer.sign_head(&store).await?;
    let issuers = Arc::new(Issuers::from_config(&config)?);
    let cas = CertificateAuthorities::from_config(&config.certificates)?;
    let helper = HelperBinary::sealed_copy_of_helper()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let fleet_host_key = host_key.clone();
    let russh = Arc::new(russh_config(host_key, config.auth.max_auth_attempts));
    let gateway = Arc::new(Gateway {
        inventory: Inventory::new(&config),
        config: config.clone(),
        store: store.clone(),
        audit,
        bindings: KeyBindings::new(store.clone(), config.auth.key_binding_ttl),
        cas,
        throttle: FailureThrottle::new(&config.auth),
        issuers,
        policy,
        helper,
        shutdown: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        live: Default::default(),
    });
    let metrics = crate::metrics::Metrics::new(role.as_str());
    if let Some(addr) = config.metrics.listen {
        let listener = crate::metrics::bind(addr).await?;
        let shutdown = gateway.shutdown.clone();
        tokio::spawn(crate::metrics::serve(metrics.clone(), listener, shutdown));
    }
    let fleet = crate::fleet::roles::start(
        role,
        &config,
        &store,
        &gateway.audit,
        fleet_host_key,
        &gateway.inventory,
        Some(metrics.clone()),
        gateway.shutdown.clone(),
    )
    .await?;
    if let Some(notices) = fleet.notices {
        let gw = gateway.clone();
        let end = move |id: &str, reason: &str| gw.end_live_session(id, reason);
        let consume =
            crate::fleet::roles::consume_notices(notices, fleet.tunnels, Some(metrics), end, || {});
        tokio::spawn(consume);
    }
    let background = tokio::spawn(background_work(gateway.clone(), signer));
    if !config.grants.webhooks.is_empty() {
        tokio::spawn(deliver_webhooks(gateway.clone()));
    }
    // Warm the discovery cache; a failure here only means logins fail until
    // the issuer answers.
    for warm in gateway.issuers.all() {
        let warm = warm.clone();
        tokio::spawn(async move {
            if let Err(e) = warm.warm().await {
                tracing::warn!(issuer = %warm.issuer_url(), error = %e, "identity provider not reachable yet");
            }
        });
    }
    // The web console (issue 17), when `[web]` is configured.
    let web = if config.web.is_some() {
        Some(
            crate::web::start(
                crate::web::ConsoleParts {
                    config: config.clone(),
                    store: store.clone(),
                    audit: gateway.audit.clone(),
                    issuers: gateway.issuers.clone(),
                    policy: gateway.policy.clone(),
                    inventory: gateway.inventory.clone(),
                    end_live_session: {
                        let gateway = gateway.clone();
                        Arc::new(move |id: &str, reason: &str| gateway.end_live_session(id, reason))
                    },
                },
                gateway.shutdown.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    let issuer_urls: Vec<&str> = config.oidc.iter().map(|o| o.issuer.as_str()).collect();
    tracing::info!(listen = %local, issuers = ?issuer_urls, "portcullis listening");
    let server = tokio::spawn(serve(gateway.clone(), listener, russh));
    wait_for_signal().await;
    tracing::info!("shutting down");
    gateway.shutdown.cancel();
    let _ = server.await;
    if let Some(web) = web {
        let _ = web.await;
    }
    gateway.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), gateway.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not end within 10 s");
    }
    // Sign the final head after the last session_end event.
    if let Ok(signer) = background.await
        && let Err(e) = signer.sign_head(&store).await
    {
        tracing::error!(error = %e, "cannot sign the audit chain at shutdown");
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Until shutdown: signs the audit chain head every `audit.sign_interval`
/// and ends live sessions whose kill was requested, and audits grants that
/// reached their expiry (both checked every second).
/// Returns the signer for the final signature.
async fn background_work(gateway: Arc<Gateway>, signer: AuditSigner) -> AuditSigner {
    let mut sign = tokio::time::interval(gateway.config.audit.sign_interval);
    let mut kills = tokio::time::interval(Duration::from_secs(1));
    let mut expiries = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = gateway.shutdown.cancelled() => return signer,
            _ = sign.tick() => {
                if let Err(e) = signer.sign_head(&gateway.store).await {
                    tracing::error!(error = %e, "cannot sign the audit chain");
                }
            }
            _ = expiries.tick() => {
                let grants = &gateway.config.grants;
                if let Err(e) =
                    crate::grants::audit_expired(&gateway.store, &gateway.audit, grants).await
                {
                    tracing::error!(error = %e, "cannot audit expired grants");
                }
            }
            _ = kills.tick() => match gateway.store.pending_kills().await {
                Ok(pending) => {
                    for (id, reason) in pending {
                        gateway.end_live_session(&id, &reason);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read kill requests"),
            },
        }
    }
}

/// Until shutdown: delivers due webhook notifications from the outbox,
/// once a second (apart from the other background work, so a slow webhook
/// never delays it).
async fn deliver_webhooks(gateway: Arc<Gateway>) {
    let client = reqwest::Client::new();
    // Unique to this process: two gateways sharing a database (even with
    // the same gateway_id) never hold the same claim.
    let claimer = format!(
        "{}/{}",
        gateway.config.gateway_id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let grants = &gateway.config.grants;
                if let Err(e) =
                    crate::grants::notify::deliver_due(&gateway.store, grants, &client, &claimer)
                        .await
                {
                    tracing::error!(error = %e, "cannot deliver webhooks");
                }
            }
        }
    }
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
