//! The node's end of the tunnels: its identity (key, host certificate, the
//! pinned edge CA, in `{state_dir}/fleet/`), the join exchange, and
//! [`TunnelClient`], which dials every edge, keeps each tunnel up
//! (keepalives; reconnection with backoff from 250 ms doubling to
//! `reconnect_max`, ±20 % jitter), renews the certificate at half its life,
//! and hands each relay channel to a [`RelayAcceptor`].
//!
//! russh's client accepts every server-initiated channel by default; here
//! each kind is refused but `forwarded-tcpip` to [`RELAY_ADDRESS`], and an
//! edge is accepted only with a host certificate from the pinned CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngExt;
use russh::client::{AuthResult, Handle, Msg, Session};
use russh::keys::ssh_key::{Certificate, Fingerprint, PublicKey};
use russh::keys::{HashAlg, PrivateKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, MethodKind, MethodSet};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{RELAY_ADDRESS, RELAY_WINDOW_BYTES, TunnelError, TunnelStream, commands};
use crate::fleet::ca::{NodeTrust, load_or_create_key, now_secs, verify_host_certificate};
use crate::metrics::Metrics;

/// Where a relay stream came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOrigin {
    /// The edge's address as configured (`fleet.edges`).
    pub edge: String,
    /// The user's `ip:port` as the edge announced it (informative only).
    pub originator: String,
}

/// What the node does with a relay stream: run its SSH server on it
/// (`russh::server::run_stream` with [`NodeIdentity::relay_server_config`]
/// and a handler that authenticates with [`NodeIdentity::trust`]). Called
/// on the tunnel's connection task: it must not block (spawn).
pub trait RelayAcceptor: Send + Sync {
    /// Takes one relay stream.
    fn accept(&self, stream: TunnelStream, origin: RelayOrigin);
}

impl<F> RelayAcceptor for F
where
    F: Fn(TunnelStream, RelayOrigin) + Send + Sync,
{
    fn accept(&self, stream: TunnelStream, origin: RelayOrigin) {
        self(stream, origin)
    }
}

/// A node's fleet identity: its name, key, host certificate and the edge CA
/// it pinned.
pub struct NodeIdentity {
    name: String,
    key: Arc<PrivateKey>,
    certificate: RwLock<Certificate>,
    ca: Fingerprint,
    dir: PathBuf,
    renewing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("name", &self.name)
            .field("ca", &self.ca.to_string())
            .finish_non_exhaustive()
    }
}

const KEY_FILE: &str = "node_key";
const CERT_FILE: &str = "node_key-cert.pub";
const CA_FILE: &str = "edge_ca.pub";

fn identity_err(path: &Path, message: impl std::fmt::Display) -> TunnelError {
    TunnelError::Identity {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
fn replace_file(path: &Path, text: &str) -> Result<(), TunnelError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| identity_err(path, e))
}

impl NodeIdentity {
    /// The identity stored in `dir` for `name`, or `None` when the node has
    /// not joined yet (no certificate).
    ///
    /// # Errors
    /// [`TunnelError::Identity`] when a file is unreadable or does not fit
    /// (another node's certificate, another key).
    pub fn load(dir: &Path, name: &str) -> Result<Option<NodeIdentity>, TunnelError> {
        let cert_path = dir.join(CERT_FILE);
        if !cert_path.exists() {
            return Ok(None);
        }
        let (key, _) = load_or_create_key(&dir.join(KEY_FILE), false)
            .map_err(|e| identity_err(&dir.join(KEY_FILE), e))?;
        let cert = Certificate::read_file(&cert_path).map_err(|e| identity_err(&cert_path, e))?;
        let ca_path = dir.join(CA_FILE);
        let ca = std::fs::read_to_string(&ca_path)
            .map_err(|e| identity_err(&ca_path, e))
            .and_then(|t| PublicKey::from_openssh(t.trim()).map_err(|e| identity_err(&ca_path, e)))?
            .fingerprint(HashAlg::Sha256);
        if cert.valid_principals() != [name.to_string()] {
            return Err(identity_err(
                &cert_path,
                format!("not a certificate of {name}"),
            ));
        }
        if cert.public_key() != key.public_key().key_data() {
            return Err(identity_err(&cert_path, "not a certificate of node_key"));
        }
        Ok(Some(NodeIdentity {
            name: name.to_string(),
            key: Arc::new(key),
            certificate: RwLock::new(cert),
            ca,
            dir: dir.to_path_buf(),
            renewing: tokio::sync::Mutex::new(()),
        }))
    }

    /// Joins the fleet through the edge at `edge` with the one-time `token`,
    /// accepting only an edge whose host certificate the CA of `ca_pin`
    /// signed; stores the key (0600), certificate and CA key in `dir`.
    ///
    /// # Errors
    /// [`TunnelError::Connect`] when the edge cannot be reached, is not
    /// certified by the pinned CA, or refuses the token;
    /// [`TunnelError::Identity`] when the files cannot be written.
    pub async fn join(
        dir: &Path,
        name: &str,
        edge: &str,
        token: &str,
        ca_pin: Fingerprint,
    ) -> Result<NodeIdentity, TunnelError> {
        let err = |message: String| TunnelError::Connect {
            edge: edge.to_string(),
            message,
        };
        let (key, _) = load_or_create_key(&dir.join(KEY_FILE), true)
            .map_err(|e| identity_err(&dir.join(KEY_FILE), e))?;
        let key = Arc::new(key);
        let (mut handle, _closed) = dial(edge, ca_pin, None, Duration::from_secs(10)).await?;
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let first = handle
            .authenticate_publickey(
                name,
                russh::keys::PrivateKeyWithHashAlg::new(key.clone(), hash),
            )
            .await
            .map_err(|e| err(e.to_string()))?;
        if !matches!(
            first,
            AuthResult::Failure {
                partial_success: true,
                ..
            }
        ) {
            return Err(err("the edge did not accept the node key for a join".into()));
        }
        let auth = handle
            .authenticate_password(name, token)
            .await
            .map_err(|e| err(e.to_string()))?;
        if !auth.success() {
            return Err(err(
                "join refused: the token is unknown, expired, already used or for another node \
                 (ask for a new one: portcullis nodes add NAME)"
                    .into(),
            ));
        }
        let reply = exec(&handle, commands::JOIN).await.map_err(err)?;
        let (cert, ca) = commands::parse(&reply).map_err(err)?;
        let ca_fingerprint = ca.fingerprint(HashAlg::Sha256);
        if ca_fingerprint != ca_pin {
            return Err(err(format!("CA key {ca_fingerprint} is not the pinned CA")));
        }
        check_own_certificate(&cert, name, &key, ca_pin).map_err(err)?;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "joined", "en")
            .await;
        let ca_text = ca.to_openssh().map_err(|e| err(e.to_string()))?;
        replace_file(&dir.join(CA_FILE), &format!("{ca_text}\n"))?;
        let identity = NodeIdentity {
            name: name.to_string(),
            key,
            certificate: RwLock::new(cert.clone()),
            ca: ca_pin,
            dir: dir.to_path_buf(),
            renewing: tokio::sync::Mutex::new(()),
        };
        identity.save_certificate(cert)?;
        Ok(identity)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's private key.
    pub fn key(&self) -> Arc<PrivateKey> {
        self.key.clone()
    }

    /// The current host certificate.
    pub fn certificate(&self) -> Option<Certificate> {
        self.certificate.read().ok().map(|c| c.clone())
    }

    /// The pinned edge CA.
    pub fn ca_fingerprint(&self) -> Fingerprint {
        self.ca
    }

    /// The check of relay user certificates (the pinned CA only).
    pub fn trust(&self) -> NodeTrust {
        NodeTrust::new(vec![self.ca])
    }

    /// `base` adapted for relayed connections: the node key with its host
    /// certificate as host key, `publickey` only (certificates from the
    /// edge CA), the window [`RELAY_WINDOW_BYTES`] the tunnel's buffers are
    /// sized for.
    pub fn relay_server_config(&self, base: russh::server::Config) -> russh::server::Config {
        russh::server::Config {
            keys: vec![self.key.as_ref().clone()],
            certificates: self.certificate().into_iter().collect(),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            window_size: RELAY_WINDOW_BYTES,
            ..base
        }
    }

    fn save_certificate(&self, cert: Certificate) -> Result<(), TunnelError> {
        let path = self.dir.join(CERT_FILE);
        let text = cert.to_openssh().map_err(|e| identity_err(&path, e))?;
        replace_file(&path, &format!("{text}\n"))?;
        if let Ok(mut c) = self.certificate.write() {
            *c = cert;
        }
        Ok(())
    }

    /// True when more than half of the certificate's life is used.
    fn renewal_due(&self, now: u64) -> bool {
        self.certificate().is_none_or(|c| {
            let half = c.valid_after() + (c.valid_before().saturating_sub(c.valid_after())) / 2;
            now >= half
        })
    }

    /// Renews the certificate over `handle` when due.
    async fn renew_if_due(&self, handle: &Handle<EdgeClient>) -> Result<(), String> {
        let _one = self.renewing.lock().await;
        if !self.renewal_due(now_secs()) {
            return Ok(());
        }
        let reply = exec(handle, commands::RENEW).await?;
        let (cert, _) = commands::parse(&reply)?;
        check_own_certificate(&cert, &self.name, &self.key, self.ca)?;
        self.save_certificate(cert).map_err(|e| e.to_string())?;
        tracing::info!(node = %self.name, "host certificate renewed");
        Ok(())
    }
}

/// A certificate for `name` and `key`, signed by `ca`, valid now.
fn check_own_certificate(
    cert: &Certificate,
    name: &str,
    key: &PrivateKey,
    ca: Fingerprint,
) -> Result<(), String> {
    verify_host_certificate(cert, &[ca], Some(name), now_secs()).map_err(|e| e.to_string())?;
    if cert.public_key() != key.public_key().key_data() {
        return Err("the certificate is for another key".into());
    }
    Ok(())
}

/// Runs `command` on a new session channel; its stdout when it exits 0.
async fn exec(handle: &Handle<EdgeClient>, command: &str) -> Result<Vec<u8>, String> {
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| e.to_string())?;
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    match status {
        Some(0) => Ok(out),
        _ => Err(format!(
            "{command} refused: {}",
            String::from_utf8_lossy(&err).trim()
        )),
    }
}

/// The russh client handler of a connection to an edge.
pub struct EdgeClient {
    ca: Fingerprint,
    edge: String,
    acceptor: Option<Arc<dyn RelayAcceptor>>,
    _closed: DropGuard,
}

impl russh::client::Handler for EdgeClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::Certificate(cert) = key else {
            tracing::warn!(edge = %self.edge, "edge offered a plain host key: refused");
            return Ok(false);
        };
        match verify_host_certificate(cert, &[self.ca], None, now_secs()) {
            Ok(())
                if cert
                    .valid_principals()
                    .iter()
                    .all(|p| p.starts_with("edge:")) =>
            {
                Ok(true)
            }
            Ok(()) => {
                tracing::warn!(edge = %self.edge, "edge certificate does not name an edge");
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(edge = %self.edge, error = %e, "edge host certificate refused");
                Ok(false)
            }
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        _connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(acceptor) = &self.acceptor else {
            return Ok(());
        };
        if connected_address != RELAY_ADDRESS {
            tracing::warn!(edge = %self.edge, "refused a forwarded-tcpip channel not for the relay");
            return Ok(());
        }
        reply.accept().await;
        let origin = RelayOrigin {
            edge: self.edge.clone(),
            originator: format!("{originator_address}:{originator_port}"),
        };
        acceptor.accept(TunnelStream::new(channel), origin);
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        _reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _originator_address: &str,
        _originator_port: u32,
        _reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        _reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        _reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        _reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        _reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Connects to `edge`, checking its certificate against `ca`; the handle
/// and a token cancelled when the connection ends.
async fn dial(
    edge: &str,
    ca: Fingerprint,
    acceptor: Option<Arc<dyn RelayAcceptor>>,
    keepalive: Duration,
) -> Result<(Handle<EdgeClient>, CancellationToken), TunnelError> {
    let err = |message: String| TunnelError::Connect {
        edge: edge.to_string(),
        message,
    };
    let closed = CancellationToken::new();
    let handler = EdgeClient {
        ca,
        edge: edge.to_string(),
        acceptor,
        _closed: closed.clone().drop_guard(),
    };
    let config = Arc::new(russh::client::Config {
        keepalive_interval: Some(keepalive),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        maximum_packet_size: super::TUNNEL_PACKET_BYTES,
        preferred: crate::fleet::ca::certificate_host_keys(),
        ..Default::default()
    });
    let connect = russh::client::connect(config, edge, handler);
    let handle = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| err("timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
    Ok((handle, closed))
}

/// Dials every edge and keeps the tunnels up.
#[derive(Debug)]
pub struct TunnelClient;

/// How the node's tunnels behave.
#[derive(Clone)]
pub struct TunnelSettings {
    /// The node's identity.
    pub identity: Arc<NodeIdentity>,
    /// Keepalive interval (three missed end a tunnel).
    pub keepalive: Duration,
    /// Longest wait between attempts.
    pub reconnect_max: Duration,
    /// Who takes relay streams.
    pub acceptor: Arc<dyn RelayAcceptor>,
    /// Metrics, when served.
    pub metrics: Option<Arc<Metrics>>,
}

impl TunnelClient {
    /// Starts one task per edge in `edges`; they run until `shutdown`.
    pub fn start(settings: TunnelSettings, edges: &[String], shutdown: CancellationToken) {
        for edge in edges {
            tokio::spawn(keep_up(settings.clone(), edge.clone(), shutdown.clone()));
        }
    }
}

/// `base` ± 20 %.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

async fn keep_up(s: TunnelSettings, edge: String, shutdown: CancellationToken) {
    let floor = Duration::from_millis(250);
    let mut backoff = floor;
    let node = s.identity.name().to_string();
    loop {
        match connect_tunnel(&s, &edge).await {
            Ok((handle, closed)) => {
                backoff = floor;
                tracing::info!(node = %node, %edge, "tunnel up");
                if let Some(m) = &s.metrics {
                    m.tunnel_state(&node, &edge, true);
                }
                let mut renew = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = closed.cancelled() => break,
                        _ = shutdown.cancelled() => {
                            let _ = handle.disconnect(
                                russh::Disconnect::ByApplication,
                                "the node is shutting down",
                                "en",
                            ).await;
                            return;
                        }
                        _ = renew.tick() => {
                            if let Err(e) = s.identity.renew_if_due(&handle).await {
                                tracing::warn!(node = %node, %edge, error = %e, "renewal failed");
                            }
                        }
                    }
                }
                tracing::warn!(node = %node, %edge, "tunnel down; reconnecting");
                if let Some(m) = &s.metrics {
                    m.tunnel_state(&node, &edge, false);
                }
            }
            Err(e) => tracing::warn!(node = %node, error = %e, "tunnel not up; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(s.reconnect_max);
    }
}

async fn connect_tunnel(
    s: &TunnelSettings,
    edge: &str,
) -> Result<(Handle<EdgeClient>, CancellationToken), TunnelError> {
    let (mut handle, closed) = dial(
        edge,
        s.identity.ca_fingerprint(),
        Some(s.acceptor.clone()),
        s.keepalive,
    )
    .await?;
    let cert = s
        .identity
        .certificate()
        .ok_or_else(|| TunnelError::Certificate("no node certificate".into()))?;
    let auth = handle
        .authenticate_openssh_cert(s.identity.name(), s.identity.key(), cert)
        .await
        .map_err(|e| TunnelError::Connect {
            edge: edge.to_string(),
            message: e.to_string(),
        })?;
    if !auth.success() {
        return Err(TunnelError::Connect {
            edge: edge.to_string(),
            message: "the edge refused the node certificate (removed from the fleet, expired, \
                      or another CA)"
                .into(),
        });
    }
    Ok((handle, closed))
}
