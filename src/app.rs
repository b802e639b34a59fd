//! The composition root of `portcullis serve`: builds the [`Gateway`] from
//! the configuration (state directory, host key, policies, database, audit
//! log, identity, inventory, the sealed helper), marks the sessions a
//! previous run left running as interrupted, binds the listener, and runs
//! the front ends and the background loops until asked to stop. For a
//! fleet role it also starts that role's parts ([`crate::fleet::roles`]),
//! the metrics endpoint and, when `[web]` is set, the web console.
//!
//! Shutdown in order: stop accepting, end the sessions (each tells its
//! user why and closes its record), wait for them at most
//! [`SHUTDOWN_WAIT`], sign the audit chain's head, close the database.
//! Tests build an [`App`] on port 0 the same way ([`App::build_with`]).
//! Nothing here parses arguments or sets up logging: that is `cli`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::attach::{AttachError, HelperBinary};
use crate::audit::{AuditEvent, AuditLog, AuditSigner, AuditSubject};
use crate::config::Config;
use crate::fleet::Role;
use crate::gateway::Gateway;
use crate::identity::{
    BindingError, CertificateAuthorities, CertificateError, FailureThrottle, IdentityError,
    Issuers, KeyBindings,
};
use crate::inventory::Inventory;
use crate::metrics::{Metrics, MetricsError};
use crate::policy::{PolicyEngine, PolicyError};
use crate::recording::{RecordingAudit, RecordingError, Recordings, UploadEvent};
use crate::store::{Store, StoreError};
use crate::web::WebError;

/// How long shutdown waits for sessions to end.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// How often kill requests (from any gateway sharing the database) and
/// grant expiries are looked for.
const BACKGROUND_TICK: Duration = Duration::from_secs(1);
/// How often every gateway reads the locks (issue 12: a lock ends what it
/// covers within 1 s on every gateway sharing the database).
const LOCK_TICK: Duration = Duration::from_millis(250);

/// A failed step of starting or stopping the gateway.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A private directory could not be created or secured.
    #[error("{path}: {message}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The host key could not be read or created.
    #[error(transparent)]
    HostKey(#[from] crate::ssh::ServerError),
    /// The policies could not be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The database could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `audit.export` could not be opened.
    #[error("audit.export: cannot open {target}: {source}")]
    AuditExport {
        /// The configured target.
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The issuers could not be set up.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A trusted certificate authority is unusable.
    #[error(transparent)]
    Certificates(#[from] CertificateError),
    /// The key bindings could not be opened (the refresh-token key file
    /// of `auth.refresh_token_key_file`, or sealing the clear-text tokens
    /// an older version stored).
    #[error("key bindings: {0}")]
    Bindings(#[from] BindingError),
    /// The sealed helper could not be made.
    #[error(transparent)]
    Helper(#[from] AttachError),
    /// The audit signer could not be set up (key, anchors).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The recordings could not start (object store client, upload state).
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// A fleet role could not start.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::roles::RoleError),
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The web console could not start.
    #[error(transparent)]
    Web(#[from] WebError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Creates `path` (and its parents) with mode 0700 when missing, and sets
/// 0700 on it.
///
/// # Errors
/// [`AppError::StateDir`] when it cannot be created, is not a directory,
/// or its mode cannot be set.
pub fn create_private_dir(path: &Path) -> Result<(), AppError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |message: String| AppError::StateDir {
        path: path.to_path_buf(),
        message,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| err(format!("cannot create: {e}")))?;
    }
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Err(err("is not a directory".into()));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(format!("cannot set the mode: {e}")))?;
    Ok(())
}

/// A built gateway, bound and ready to serve.
pub struct App {
    /// The services every front end shares.
    pub gateway: Arc<Gateway>,
    signer: AuditSigner,
    russh: Arc<russh::server::Config>,
    listener: TcpListener,
    web: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Builds the gateway for `config` in `role` with the sealed copy of
    /// the installed helper ([`HelperBinary::sealed_copy_of_helper`]).
    ///
    /// # Errors
    /// [`AppError`] naming the step that failed.
    pub async fn build(config: Arc<Config>, role: Role) -> Result<App, AppError> {
        let helper = HelperBinary::sealed_copy_of_helper()?;
        App::build_as(config, helper, role).await
    }

    /// [`App::build_as`] for the all-in-one gateway ([`Role::All`]).
    ///
    /// # Errors
    /// [`AppError`] naming the step that failed.
    pub async fn build_with(config: Arc<Config>, helper: HelperBinary) -> Result<App, AppError> {
        App::build_as(config, helper, Role::All).await
    }

    /// Builds the gateway for `config` with `helper`: creates the state
    /// directories and the host key, loads the policies, opens the
    /// database, marks the sessions a previous run of this gateway left
    /// running as interrupted, signs the audit chain's head and binds
    /// `config.listen` (port 0 picks a free port, see
    /// [`App::local_addr`]); starts `role`'s fleet parts, the metrics
    /// endpoint (`metrics.listen`) and the web console (`[web]`).
    ///
    /// # Errors
    /// [`AppError`] naming the step that failed.
    pub async fn build_as(
        config: Arc<Config>,
        helper: HelperBinary,
        role: Role,
    ) -> Result<App, AppError> {
        create_private_dir(&config.state_dir)?;
        create_private_dir(&config.recordings_dir())?;
        let host_key = crate::ssh::load_or_create_host_key(&config.host_key_path())?;
        tracing::info!(
            fingerprint = %crate::ssh::fingerprint(&host_key),
            path = %config.host_key_path().display(),
            "host key"
        );
        if crate::recording::BENCH_NO_RECORDING {
            tracing::error!(
                "this binary was built with PORTCULLIS_BENCH_NO_RECORDING: sessions are NOT \
                 recorded; it is for benchmarks only"
            );
        }
        let policy = PolicyEngine::load(&config.policy.dir)?;
        let store = Store::open(&config.database_url())
            .await?
            .for_gateway(&config.gateway_id());
        let audit = match &config.audit.export {
            Some(target) => AuditLog::new(store.clone())
                .with_export(target)
                .map_err(|source| AppError::AuditExport {
                    target: target.clone(),
                    source,
                })?,
            None => AuditLog::new(store.clone()),
        };
        interrupt_leftover_sessions(&store, &audit).await?;
        let signer = AuditSigner::for_gateway(host_key.clone(), &config)?;
        signer.sign_head(&store).await?;
        let issuers = Arc::new(Issuers::from_config(&config)?);
        let cas = CertificateAuthorities::from_config(&config.certificates)?;
        // Refresh tokens sealed with `{state_dir}/refresh-token.key` (or
        // the configured key file); bound keys checked against the same
        // revocation list as certificates.
        let bindings = KeyBindings::open(store.clone(), &config)
            .await?
            .with_revoked_keys(cas.revoked_keys());
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        // Port 0 picks a free port: the config then names the one bound
        // (the broker's printed `ssh -p PORT` lines use it).
        let config = match listener.local_addr() {
            Ok(bound) if config.listen.port() == 0 => {
                let mut bound_config = (*config).clone();
                bound_config.listen = bound;
                Arc::new(bound_config)
            }
            _ => config,
        };
        let fleet_host_key = host_key.clone();
        let russh = Arc::new(crate::ssh::russh_config(
            host_key,
            config.auth.max_auth_attempts,
        ));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let inventory = Inventory::new(&config);
        let metrics = Metrics::new(role.as_str());
        if let Some(addr) = config.metrics.listen {
            let listener = crate::metrics::bind(addr).await?;
            tokio::spawn(crate::metrics::serve(
                metrics.clone(),
                listener,
                shutdown.clone(),
            ));
        }
        let node_server = Arc::new(std::sync::OnceLock::new());
        let fleet = crate::fleet::roles::start(
            role,
            &config,
            &store,
            &audit,
            fleet_host_key.clone(),
            &inventory,
            Some(metrics.clone()),
            shutdown.clone(),
            Some(relay_acceptor(node_server.clone())),
        )
        .await?;
        let edge = match (&fleet.tunnels, &fleet.ca) {
            (Some(tunnels), Some(ca)) => Some(crate::fleet::edge_relay::EdgeRelay {
                store: store.clone(),
                tunnels: tunnels.clone(),
                ca: ca.clone(),
                edge_id: config.gateway_id(),
                certificate_ttl: config.fleet.user_certificate_ttl,
                metrics: Some(metrics.clone()),
            }),
            _ => None,
        };
        // Manifests of uploaded recordings are signed with the host key
        // (SSHSIG), as the chain's heads are.
        let manifest_signer = AuditSigner::new(fleet_host_key.clone());
        let recordings = Recordings::start(
            &config,
            store.clone(),
            Arc::new(MeteredUploads {
                audit: audit.clone(),
                metrics: metrics.clone(),
            }),
            Arc::new(manifest_signer),
            shutdown.clone(),
        )
        .await?;
        let gateway = Arc::new(Gateway {
            inventory,
            recordings,
            store: store.clone(),
            audit,
            bindings,
            cas,
            throttle: FailureThrottle::new(&config.auth),
            issuers,
            policy,
            helper,
            shutdown,
            tasks: tokio_util::task::TaskTracker::new(),
            live: Default::default(),
            connections: Default::default(),
            edge,
            config,
        });
        if let Some(identity) = fleet.identity.clone() {
            let _ = node_server.set((gateway.clone(), identity));
        }
        if gateway.recordings.uploads().is_some() {
            tokio::spawn(measure_spool(gateway.clone(), metrics.clone()));
        }
        consume_fleet_notices(&gateway, fleet, metrics);
        let web = match gateway.config.web {
            Some(_) => Some(start_web(&gateway).await?),
            None => None,
        };
        Ok(App {
            gateway,
            signer,
            russh,
            listener,
            web,
        })
    }

    /// The address the SSH server listens on.
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves (or `gateway.shutdown` is cancelled),
    /// then shuts down in order (module docs).
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let App {
            gateway,
            signer,
            russh,
            listener,
            web,
        } = self;
        let background = tokio::spawn(background_work(gateway.clone(), signer));
        gateway.tasks.spawn(reload_on_hangup(gateway.clone()));
        if !gateway.config.grants.webhooks.is_empty() {
            gateway.tasks.spawn(deliver_webhooks(gateway.clone()));
        }
        // Warm the discovery cache; a failure here only means logins fail
        // until the issuer answers.
        for warm in gateway.issuers.all() {
            let warm = warm.clone();
            gateway.tasks.spawn(async move {
                if let Err(e) = warm.warm().await {
                    tracing::warn!(issuer = %warm.issuer_url(), error = %e, "identity provider not reachable yet");
                }
            });
        }
        let issuer_urls: Vec<&str> = gateway
            .config
            .oidc
            .iter()
            .map(|o| o.issuer.as_str())
            .collect();
        if let Ok(local) = listener.local_addr() {
            tracing::info!(listen = %local, issuers = ?issuer_urls, "portcullis listening");
        }
        let server = tokio::spawn(crate::ssh::serve(gateway.clone(), listener, russh));
        tokio::select! {
            _ = stop => {}
            _ = gateway.shutdown.cancelled() => {}
        }
        tracing::info!("shutting down");
        gateway.shutdown.cancel();
        let _ = server.await;
        if let Some(web) = web {
            let _ = web.await;
        }
        gateway.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, gateway.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not end within {SHUTDOWN_WAIT:?}");
        }
        // Sign the final head after the last session_end event.
        if let Ok(signer) = background.await
            && let Err(e) = signer.sign_head(&gateway.store).await
        {
            tracing::error!(error = %e, "cannot sign the audit chain at shutdown");
        }
        gateway.store.close().await;
    }
}

/// The node's relay server, once the gateway is built (`slot`): each
/// relay stream a tunnel hands over is served by [`crate::node::accept`];
/// one that arrives before is refused (the edge reports the node
/// unreachable).
fn relay_acceptor(slot: Arc<NodeServer>) -> Arc<dyn crate::fleet::tunnel::RelayAcceptor> {
    Arc::new(
        move |stream: crate::fleet::tunnel::TunnelStream,
              origin: crate::fleet::tunnel::RelayOrigin| {
            match slot.get() {
                Some((gateway, identity)) => {
                    crate::node::accept(gateway.clone(), identity.clone(), stream, origin);
                }
                None => {
                    tracing::warn!(edge = %origin.edge, "relay stream before the node is ready")
                }
            }
        },
    )
}

/// What a node's relay server runs with, set once the gateway is built.
type NodeServer = std::sync::OnceLock<(Arc<Gateway>, Arc<crate::fleet::tunnel::NodeIdentity>)>;

/// On a node or edge, the consumer of fleet notices (kills, locks,
/// revocations) that ends live sessions.
fn consume_fleet_notices(
    gateway: &Arc<Gateway>,
    fleet: crate::fleet::roles::FleetParts,
    metrics: Arc<Metrics>,
) {
    if let Some(notices) = fleet.notices {
        let gw = gateway.clone();
        let end = move |id: &str, reason: &str| gw.end_live_session(id, reason);
        let consume =
            crate::fleet::roles::consume_notices(notices, fleet.tunnels, Some(metrics), end, || {});
        // Not a session task: it ends when the fleet's listener does.
        tokio::spawn(consume);
    }
}

/// Starts the web console (issue 17) on `web.listen`.
async fn start_web(gateway: &Arc<Gateway>) -> Result<tokio::task::JoinHandle<()>, WebError> {
    crate::web::start(
        crate::web::ConsoleParts {
            config: gateway.config.clone(),
            store: gateway.store.clone(),
            audit: gateway.audit.clone(),
            issuers: gateway.issuers.clone(),
            policy: gateway.policy.clone(),
            inventory: gateway.inventory.clone(),
            gateway: gateway.clone(),
        },
        gateway.shutdown.clone(),
    )
    .await
}

/// How often the spool of recordings waiting for upload is measured for
/// the metrics.
const SPOOL_MEASURE_EVERY: Duration = Duration::from_secs(10);

/// The audit log for the upload queue's events, counting failed attempts
/// in the metrics (`recording` may not use `metrics`: they meet here).
struct MeteredUploads {
    audit: AuditLog,
    metrics: Arc<Metrics>,
}

impl RecordingAudit for MeteredUploads {
    fn record<'a>(
        &'a self,
        session_id: Option<&'a str>,
        event: &'a UploadEvent,
    ) -> futures_util::future::BoxFuture<'a, Result<(), String>> {
        if matches!(event, UploadEvent::Failed { .. }) {
            self.metrics.upload_failed();
        }
        RecordingAudit::record(&self.audit, session_id, event)
    }
}

/// Until shutdown: sets the metrics of the recordings waiting for upload
/// (how many, their bytes) every [`SPOOL_MEASURE_EVERY`].
async fn measure_spool(gateway: Arc<Gateway>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(SPOOL_MEASURE_EVERY);
    loop {
        tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            _ = tick.tick() => match gateway.recordings.spool().await {
                Ok((waiting, bytes)) => {
                    metrics.upload_queue(i64::try_from(waiting).unwrap_or(i64::MAX));
                    metrics.spool_bytes(i64::try_from(bytes).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::warn!(error = %e.detail(), "cannot measure the recording spool"),
            },
        }
    }
}

/// Sessions a previous run of this gateway left running: digest what was
/// flushed, audit, then mark them interrupted.
async fn interrupt_leftover_sessions(store: &Store, audit: &AuditLog) -> Result<(), StoreError> {
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
    Ok(())
}

/// Until shutdown: signs the audit chain head every `audit.sign_interval`,
/// ends live sessions whose kill was requested, and audits grants that
/// reached their expiry (both checked every [`BACKGROUND_TICK`]). Returns
/// the signer for the final signature.
async fn background_work(gateway: Arc<Gateway>, signer: AuditSigner) -> AuditSigner {
    // The head was signed at start ([`App::build_with`]): the next one is
    // due an interval later (not at once, when another gateway sharing the
    // database may already have appended to the chain).
    let every = gateway.config.audit.sign_interval;
    let mut sign = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut kills = tokio::time::interval(BACKGROUND_TICK);
    let mut expiries = tokio::time::interval(BACKGROUND_TICK);
    let mut locks = tokio::time::interval(LOCK_TICK);
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
            // Locks added on any gateway sharing the database (or by the
            // CLI) end the live sessions and connections they cover here
            // within a tick.
            _ = locks.tick() => match gateway.store.active_locks().await {
                Ok(active) => {
                    let (sessions, connections) = gateway.end_locked(&active);
                    if sessions + connections > 0 {
                        tracing::info!(sessions, connections, "locked: told to end");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read locks"),
            },
        }
    }
}

/// The gateway's pid, in the state directory (`portcullis policy reload`).
pub const PID_FILE: &str = "portcullis.pid";

/// Until shutdown: on SIGHUP loads the policy directory again (issue 12).
/// Fails closed: a set that does not load or validate is refused, audited
/// and logged, and the old one stays; a good one is audited before it is
/// used.
async fn reload_on_hangup(gateway: Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: policies load only at start");
        return;
    };
    let dir = gateway.config.policy.dir.clone();
    let subject = AuditSubject::default();
    loop {
        tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            _ = hangup.recv() => {}
        }
        let event = match PolicyEngine::load(&dir) {
            Ok(_) => AuditEvent::PolicyReloaded {
                dir: dir.display().to_string(),
            },
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; the old policies stay");
                AuditEvent::PolicyReloadRefused {
                    dir: dir.display().to_string(),
                    error: e.to_string(),
                }
            }
        };
        let ok = matches!(event, AuditEvent::PolicyReloaded { .. });
        if let Err(e) = gateway.audit.record(&subject, &event).await {
            tracing::error!(error = %e, "cannot audit the policy reload; the old policies stay");
            continue;
        }
        if ok {
            match gateway.policy.reload(&dir) {
                Ok(()) => {
                    let ended = gateway.end_denied_by_policy();
                    tracing::info!(dir = %dir.display(), ended, "policies reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; the old policies stay")
                }
            }
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
    let mut tick = tokio::time::interval(BACKGROUND_TICK);
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
