//! The SSH server (russh): host key, accept loop, authentication and
//! session channels, wiring identity, inventory, policy, recording and
//! attach together. This is the only module where they meet.
//!
//! The russh [`russh::server::Handler`] ([`handler`]) stays thin: it keeps
//! per-channel requests (pty, env) and hands each shell or exec to a session
//! task ([`session`]) that owns the process and its recording.

mod handler;
mod login;
mod pump;
mod session;
mod target;

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
use tokio_util::task::TaskTracker;

use crate::attach::HelperBinary;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::identity::OidcIssuer;
use crate::inventory::Inventory;
use crate::policy::PolicyEngine;
use crate::store::Store;

pub use login::TOKEN_PROMPT;
pub use target::{Target, TargetError};

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

/// Everything a connection needs, shared by all connections.
pub struct Gateway {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// The audit log.
    pub audit: AuditLog,
    /// The OpenID Connect issuer.
    pub issuer: Arc<OidcIssuer>,
    /// The loaded policies.
    pub policy: PolicyEngine,
    /// The container inventory.
    pub inventory: Inventory,
    /// The sealed attach helper binary.
    pub helper: HelperBinary,
    /// Cancelled at shutdown; sessions end when it is.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
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

/// The russh server configuration for `host_key`.
pub fn russh_config(host_key: PrivateKey) -> russh::server::Config {
    russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Portcullis_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::KeyboardInteractive][..]),
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: 6,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    }
}

/// Accepts connections on `listener` until `gateway.shutdown` is
/// cancelled, at most `session.max_connections` at once.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    russh_config: Arc<russh::server::Config>,
) {
    let permits = Arc::new(Semaphore::new(gateway.config.session.max_connections));
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
        let _ = stream.set_nodelay(true);
        let handler = handler::ConnectionHandler::new(gateway.clone(), peer);
        let config = russh_config.clone();
        let shutdown = gateway.shutdown.clone();
        gateway.tasks.spawn(async move {
            let _permit = permit;
            match russh::server::run_stream(config, stream, handler).await {
                Ok(running) => {
                    let handle = running.handle();
                    tokio::select! {
                        result = running => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        }
                        _ = shutdown.cancelled() => {
                            let _ = handle
                                .disconnect(
                                    russh::Disconnect::ByApplication,
                                    "the gateway is shutting down".into(),
                                    "en".into(),
                                )
                                .await;
                        }
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "handshake failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
