//! The SSH front door (russh): host key, accept loop, authentication and
//! channels. It relays each channel to [`crate::session`] (shell, exec,
//! sftp, scp, forwards) or to [`crate::commands`] (the broker), and never
//! writes a session row, a session audit event or a recording itself.
//!
//! The russh [`russh::server::Handler`] (`handler.rs`) stays thin: it
//! keeps per-channel requests (pty, env), hands each channel to a task of
//! the session core with an input queue and an output (`channel.rs`), and
//! never waits inside russh's connection loop: back-pressure goes through
//! the SSH window (see ARCHITECTURE.md, "Flow control").

mod algorithms;
mod auth;
mod channel;
mod command;
mod handler;
mod life;
mod limits;
mod login;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use crate::gateway::Gateway;
pub use crate::identity::FailureThrottle;
pub use crate::session::{Target, TargetError};
pub use login::TOKEN_PROMPT;

/// A failed server step.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The host key could not be read, generated or written.
    #[error("host key {path}: {message}")]
    HostKey {
        /// The key file.
        path: String,
        /// What failed.
        message: String,
    },
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

/// Loads the ed25519 host key at `path`, or generates and writes it (mode
/// 0600) when the file does not exist.
///
/// # Errors
/// [`ServerError::HostKey`] when the file cannot be read, parsed or written.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, ServerError> {
    let err = |message: String| ServerError::HostKey {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        return russh::keys::load_secret_key(path, None).map_err(|e| err(e.to_string()));
    }
    let key =
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| err(e.to_string()))?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))?;
    Ok(key)
}

/// The `SHA256:...` fingerprint of `key`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// The methods offered first: `publickey` (bound keys and certificates,
/// RFC 4252 §7) and `keyboard-interactive` (RFC 4256: the IdP login).
pub fn auth_methods() -> MethodSet {
    MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..])
}

/// The russh server configuration for `host_key`; `max_auth_attempts`
/// failed attempts end a connection (partial successes do not count, nor
/// does the `none` probe OpenSSH sends first: russh counts it, so it gets
/// one more).
pub fn russh_config(host_key: PrivateKey, max_auth_attempts: usize) -> russh::server::Config {
    russh::server::Config {
        server_id: russh::SshId::Standard(algorithms::server_id().into()),
        preferred: algorithms::preferred(),
        methods: auth_methods(),
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: max_auth_attempts.saturating_add(1),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        // Back-pressure through the SSH window: a channel's window is
        // granted again as its session consumes the data (vendor/russh).
        window_on_consume: true,
        ..Default::default()
    }
}

/// Accepts connections on `listener` until `gateway.shutdown` is
/// cancelled: at most `session.max_connections` at once, of which at most
/// `auth.max_unauthenticated` not yet authenticated, and of those at most
/// `auth.max_unauthenticated_per_source` from one source (an IPv4 address
/// or an IPv6 /64; OpenSSH `PerSourceMaxStartups`); a penalised source
/// (`auth.penalty_*`, OpenSSH `PerSourcePenalties`) is refused at accept,
/// before any protocol byte. A connection not authenticated within
/// `auth.login_grace_time` is dropped (and its source penalised), and so
/// is the source of one that closes without any authentication request
/// (`auth.penalty_noauth`).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    russh_config: Arc<russh::server::Config>,
) {
    let permits = Arc::new(Semaphore::new(gateway.config.session.max_connections));
    let unauthenticated = Arc::new(Semaphore::new(gateway.config.auth.max_unauthenticated));
    let limits = limits::FrontDoorLimits::new(&gateway.config.auth);
    loop {
        let accepted = tokio::select! {
            _ = gateway.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: too many connections");
            drop(stream);
            continue;
        };
        // Per source first: a source at its cap takes no listener-wide
        // slot, so it cannot lock other sources out.
        let source_permit = match limits.sources.admit(peer.ip()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%peer, reason = %e, "connection refused");
                drop(stream);
                continue;
            }
        };
        let Ok(unauth_permit) = unauthenticated.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: too many unauthenticated connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let authenticated = CancellationToken::new();
        let (life, closes) = life::ConnectionLife::new(&gateway);
        let attempted = limits::Attempted::default();
        let handler = handler::ConnectionHandler::new(
            gateway.clone(),
            peer,
            limits::Unauthenticated {
                _slot: unauth_permit,
                _source: source_permit,
                attempted: attempted.clone(),
            },
            limits.clone(),
            authenticated.clone(),
            life.clone(),
        );
        let config = russh_config.clone();
        let gw = gateway.clone();
        let sources = limits.sources.clone();
        gateway.tasks.spawn(async move {
            let _permit = permit;
            let connection = Connection {
                peer,
                authenticated,
                life,
                closes,
            };
            let ended = run_connection(gw.clone(), config, stream, handler, connection).await;
            penalise_ended(&gw, &sources, peer, ended, &attempted).await;
        });
    }
}

/// How a connection ended, for its source's penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Dropped at `auth.login_grace_time` without authenticating.
    GraceExceeded,
    /// Ended by the gateway's shutdown: no penalty.
    Shutdown,
    /// The client closed it, or the protocol failed.
    Closed,
}

/// Adds the penalty a connection from `peer` earned by how it `ended`
/// (OpenSSH `PerSourcePenalties`): `grace-exceeded`, or `noauth` when it
/// closed without a single authentication request (a scanner or a client
/// holding a slot); failed attempts were penalised as they failed.
async fn penalise_ended(
    gateway: &Gateway,
    sources: &crate::throttle::SourceLimits,
    peer: SocketAddr,
    ended: Ended,
    attempted: &limits::Attempted,
) {
    use crate::throttle::Penalty;
    let what = match ended {
        Ended::GraceExceeded => Penalty::GraceExceeded,
        Ended::Closed if !attempted.happened() => {
            tracing::debug!(%peer, "closed without an authentication attempt");
            Penalty::NoAuth
        }
        Ended::Closed | Ended::Shutdown => return,
    };
    penalise(gateway, sources, peer, what).await;
}

/// Adds `what`'s penalty to `peer`'s source and, when that makes the
/// source refused, audits it once (`SourcePenalised`; its connections
/// are refused at accept without an event each, so a flood cannot fill
/// the audit log).
async fn penalise(
    gateway: &Gateway,
    sources: &crate::throttle::SourceLimits,
    peer: SocketAddr,
    what: crate::throttle::Penalty,
) {
    let Some((source, refused_for)) = sources.penalise(peer.ip(), what) else {
        return;
    };
    tracing::warn!(%source, after = what.as_str(), seconds = refused_for.as_secs(), "source penalised");
    let peer_text = peer.to_string();
    let subject = crate::audit::AuditSubject {
        client_addr: Some(&peer_text),
        ..Default::default()
    };
    let event = crate::audit::AuditEvent::SourcePenalised {
        source: source.to_string(),
        after: what.as_str().into(),
        seconds: refused_for.as_secs(),
    };
    if let Err(e) = gateway.audit.record(&subject, &event).await {
        tracing::error!(error = %e, "cannot write audit event");
    }
}

/// What `run_connection` watches besides the SSH stream.
struct Connection {
    peer: SocketAddr,
    /// Cancelled once authenticated.
    authenticated: CancellationToken,
    life: Arc<life::ConnectionLife>,
    /// Requests to close ([`life`]: a lock, the credential's end, unused).
    closes: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// How long a closing connection waits for its sessions to end (and tell
/// their users why) before it disconnects anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Runs one connection: the SSH handshake and login within the grace time,
/// then until it ends, something closes it ([`life`]) or the gateway shuts
/// down; says how it ended.
async fn run_connection(
    gateway: Arc<Gateway>,
    config: Arc<russh::server::Config>,
    stream: tokio::net::TcpStream,
    handler: handler::ConnectionHandler,
    connection: Connection,
) -> Ended {
    let Connection {
        peer,
        authenticated,
        life,
        mut closes,
    } = connection;
    let _unregister = Unregister(life.clone());
    let grace = tokio::time::sleep(gateway.config.auth.login_grace_time);
    tokio::pin!(grace);
    let running = tokio::select! {
        r = russh::server::run_stream(config, stream, handler) => match r {
            Ok(running) => running,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "handshake failed");
                return Ended::Closed;
            }
        },
        _ = &mut grace => {
            grace_time_exceeded(&gateway, peer).await;
            return Ended::GraceExceeded;
        }
        _ = gateway.shutdown.cancelled() => return Ended::Shutdown,
    };
    let handle = running.handle();
    tokio::pin!(running);
    let mut in_grace = true;
    loop {
        tokio::select! {
            result = &mut running => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return Ended::Closed;
            }
            _ = authenticated.cancelled(), if in_grace => in_grace = false,
            Some(reason) = closes.recv() => {
                close(&gateway, &life, peer, &handle, &reason).await;
                // Authenticated: no penalty for its source.
                return Ended::Closed;
            }
            _ = &mut grace, if in_grace => {
                if authenticated.is_cancelled() {
                    in_grace = false;
                    continue;
                }
                grace_time_exceeded(&gateway, peer).await;
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "login grace time exceeded".into(),
                        "en".into(),
                    )
                    .await;
                return Ended::GraceExceeded;
            }
            _ = gateway.shutdown.cancelled() => {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "the gateway is shutting down".into(),
                        "en".into(),
                    )
                    .await;
                return Ended::Shutdown;
            }
        }
    }
}

/// Unregisters a connection when its loop ends.
struct Unregister(Arc<life::ConnectionLife>);

impl Drop for Unregister {
    fn drop(&mut self) {
        self.0.unregister();
    }
}

/// Closes an authenticated connection for `reason` (issue 12): audited
/// first (`ConnectionClosed`), then its live sessions end with the reason
/// (each audited and told to its user), then, once they ended or after
/// [`CLOSE_WAIT`], the disconnect carries the reason (RFC 4253 §11.1:
/// OpenSSH prints it).
async fn close(
    gateway: &Gateway,
    life: &life::ConnectionLife,
    peer: SocketAddr,
    handle: &russh::server::Handle,
    reason: &str,
) {
    life.unregister();
    tracing::info!(%peer, reason, "closing the connection");
    let peer_text = peer.to_string();
    let subject = crate::audit::AuditSubject {
        principal: life.principal(),
        client_addr: Some(&peer_text),
        ..Default::default()
    };
    let event = crate::audit::AuditEvent::ConnectionClosed {
        reason: reason.to_string(),
    };
    if let Err(e) = gateway.audit.record(&subject, &event).await {
        // Closing is the safe side: it goes on without its event.
        tracing::error!(error = %e, "cannot write audit event");
    }
    let id = life.id;
    gateway.live.end_where(
        |s| s.connection == Some(id),
        |_| crate::session::EndReason::ConnectionClosed {
            reason: reason.to_string(),
        },
    );
    life.tasks.close();
    let _ = tokio::time::timeout(CLOSE_WAIT, life.tasks.wait()).await;
    let _ = handle
        .disconnect(
            russh::Disconnect::ByApplication,
            format!("Portcullis: connection closed: {reason}."),
            "en".into(),
        )
        .await;
}

async fn grace_time_exceeded(gateway: &Gateway, peer: SocketAddr) {
    tracing::info!(%peer, "dropped: not authenticated within the login grace time");
    let peer_text = peer.to_string();
    let subject = crate::audit::AuditSubject {
        client_addr: Some(&peer_text),
        ..Default::default()
    };
    let event = crate::audit::AuditEvent::AuthenticationFailed {
        method: "none".into(),
        target: String::new(),
        reason: format!(
            "not authenticated within the login grace time ({})",
            humantime::format_duration(gateway.config.auth.login_grace_time)
        ),
    };
    if let Err(e) = gateway.audit.record(&subject, &event).await {
        tracing::error!(error = %e, "cannot write audit event");
    }
    let _ = gateway.throttle.record_failure(peer.ip());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn host_key_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_ed25519_key");
        let first = load_or_create_host_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(first.algorithm(), Algorithm::Ed25519);
        let second = load_or_create_host_key(&path).unwrap();
        assert_eq!(fingerprint(&first), fingerprint(&second));
        assert!(fingerprint(&first).starts_with("SHA256:"));
    }
}
