//! The edge's relay client (issue 16 point 2): over a tunnel stream, an SSH
//! client to the node's own server that logs in with a minted user
//! certificate and opens exactly one channel, relayed 1:1 with the user's.
//!
//! The interface has no russh type in it, so the session core plugs it in
//! where it would attach locally: [`RelayClient::connect`], then
//! [`RelayClient::open_session`] → [`RelaySession`] (send
//! [`RelayRequest`]s, input bytes, EOF; receive [`RelayEvent`]s: output,
//! exit status or signal, EOF, close) or
//! [`RelayClient::open_direct_tcpip`] → a byte stream.
//!
//! Flow control: output waits in a bounded queue (64 events) for the
//! session core to take it; when the user is slow, the queue fills and this
//! one inner connection waits, never the tunnel (see
//! [`crate::fleet::tunnel::TunnelStream`]) nor the user's connection loop.
//! Input is written with the node channel's window (`data` waits for it).
//!
//! The relay counts and hashes the output it passes on ([`Witness`]), the
//! edge's second witness of the session (`docs/fleet.md`); a node's own
//! notices come as [`NOTICE_DATA_TYPE`] and are not output.

use std::sync::Arc;

use bytes::Bytes;
use russh::client::{Handle, Msg};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::Fingerprint;
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Pty, Sig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc};

use crate::fleet::ca::{MintedCertificate, now_secs, verify_host_certificate};
use crate::fleet::tunnel::RELAY_WINDOW_BYTES;
use crate::metrics::Metrics;
use crate::recording::Utf8Decoder;

/// A failed relay step. The user sees "the node could not be reached";
/// `Display` is for the audit log.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The SSH handshake with the node failed (or its host certificate
    /// was refused).
    #[error("SSH to node {node}: {message}")]
    Handshake {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
    /// The node refused the certificate.
    #[error("node {0} refused the relay certificate")]
    Refused(String),
    /// Opening the channel failed.
    #[error("node {node} refused the channel: {message}")]
    Channel {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
    /// The node could not connect a `direct-tcpip` channel to its
    /// destination (RFC 4254 §5.1 `connect failed`); any other refusal of
    /// that channel is [`RelayError::Channel`].
    #[error("node {node} could not connect to the destination: {message}")]
    ConnectFailed {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
    /// Sending on the channel failed (the node went away).
    #[error("the connection to node {0} was lost")]
    Lost(String),
}

/// What the user asked on their channel, passed on as is (RFC 4254 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayRequest {
    /// `pty-req`.
    Pty {
        /// `TERM`.
        term: String,
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
        /// Width, pixels.
        pix_width: u32,
        /// Height, pixels.
        pix_height: u32,
        /// Terminal modes (RFC 4254 §8).
        modes: Vec<(Pty, u32)>,
    },
    /// `env`.
    Env {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// `shell`.
    Shell,
    /// `exec`.
    Exec(Vec<u8>),
    /// `subsystem` (`sftp`).
    Subsystem(String),
    /// `window-change` (no reply).
    WindowChange {
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
        /// Width, pixels.
        pix_width: u32,
        /// Height, pixels.
        pix_height: u32,
    },
    /// `signal` (no reply): the name without `SIG` (`TERM`, `INT`, ...).
    Signal(String),
}

/// What the node sent on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Standard output.
    Data(Bytes),
    /// Extended data (1 = standard error).
    ExtendedData(u32, Bytes),
    /// The node sent EOF.
    Eof,
    /// `exit-status`.
    ExitStatus(u32),
    /// `exit-signal`.
    ExitSignal {
        /// The signal's name without `SIG` (`TERM`, `KILL`, ...).
        signal: String,
        /// Core dumped.
        core_dumped: bool,
        /// Message.
        message: String,
    },
}

/// The extended data type (RFC 4254 §5.2 `data_type_code`, from the
/// private-use range of RFC 4250 §4.4.2) a node sends its own notices to
/// the user with ("session ended: ...", grant warnings, refusals): the
/// edge shows them on stderr like any other, but they are not the
/// session's output, so its witness leaves them out (the recording holds
/// only output).
pub const NOTICE_DATA_TYPE: u32 = 0xFE00_0001;

/// The edge's count and digest of a session's output as relayed: data and
/// extended data other than [`NOTICE_DATA_TYPE`], in relay order.
///
/// The count is of bytes as relayed. The digest is of that output as an
/// asciicast v2 recording holds it (`o` events), so `audit verify` can
/// compare it with the node's recording: decoded as UTF-8 across chunks,
/// each invalid sequence replaced by U+FFFD, NULs left out (what
/// [`crate::recording::Recorder::output`] writes), then SHA-256 of that
/// text's UTF-8.
#[derive(Debug, Clone, Default)]
pub struct Witness {
    bytes: u64,
    sha256: Sha256,
    text: Utf8Decoder,
    /// The text of a chunk that held NULs, without them (reused).
    scratch: Vec<u8>,
}

impl Witness {
    fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        let Witness {
            sha256,
            text,
            scratch,
            ..
        } = self;
        text.decode_into(data, |piece| hash_text(sha256, scratch, piece.as_bytes()));
    }

    /// Bytes of output (data and extended data) relayed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Lowercase hex SHA-256 of that output's text so far (see
    /// [`Witness`]; an incomplete UTF-8 sequence at the end counts as
    /// U+FFFD, as at the end of a recording).
    pub fn sha256(&self) -> String {
        let mut sha256 = self.sha256.clone();
        let rest = self.text.clone().finish();
        hash_text(&mut sha256, &mut Vec::new(), rest.as_bytes());
        hex::encode(sha256.finalize())
    }
}

/// Hashes `text` without its NULs (`scratch` holds a copy only when it
/// has some).
fn hash_text(sha256: &mut Sha256, scratch: &mut Vec<u8>, text: &[u8]) {
    if !text.contains(&0) {
        sha256.update(text);
        return;
    }
    scratch.clear();
    scratch.extend(text.iter().copied().filter(|b| *b != 0));
    sha256.update(&scratch[..]);
}

impl Witness {
    /// Writes this witness of `session_id`, relayed by `edge` to `node`, to
    /// `fleet_witness` (once, when the session ended), for `audit verify`
    /// to compare with the node's own count and digest.
    ///
    /// # Errors
    /// [`crate::store::StoreError`].
    pub async fn record(
        &self,
        store: &crate::store::Store,
        session_id: &str,
        edge: &str,
        node: &str,
    ) -> Result<(), crate::store::StoreError> {
        store
            .insert_witness(&crate::store::WitnessRecord {
                session_id: session_id.to_string(),
                edge: edge.to_string(),
                node: node.to_string(),
                output_bytes: self.bytes as i64,
                output_sha256: self.sha256(),
                ended_at: crate::store::now_ms(),
            })
            .await
    }
}

/// The check of the node's host certificate: the CA, and the node's name.
#[derive(Debug, Clone)]
pub struct NodeHostCheck {
    /// The node's name (the certificate's only principal).
    pub node: String,
    /// The edge CA.
    pub ca: Fingerprint,
}

struct RelayHandler {
    check: NodeHostCheck,
}

impl russh::client::Handler for RelayHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::Certificate(cert) = key else {
            return Ok(false);
        };
        Ok(
            verify_host_certificate(cert, &[self.check.ca], Some(&self.check.node), now_secs())
                .is_ok(),
        )
    }
}

/// An SSH connection from the edge to a node's server for one session.
pub struct RelayClient {
    handle: Handle<RelayHandler>,
    node: String,
    metrics: Option<Arc<Metrics>>,
}

impl RelayClient {
    /// Speaks SSH over `stream` (a tunnel stream to `check.node`), checks
    /// the node's host certificate and logs in with `minted`.
    ///
    /// # Errors
    /// [`RelayError::Handshake`] or [`RelayError::Refused`].
    pub async fn connect<S>(
        stream: S,
        minted: &MintedCertificate,
        check: NodeHostCheck,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<RelayClient, RelayError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let node = check.node.clone();
        let handshake = |message: String| RelayError::Handshake {
            node: node.clone(),
            message,
        };
        let config = Arc::new(russh::client::Config {
            window_size: RELAY_WINDOW_BYTES,
            inactivity_timeout: None,
            preferred: crate::fleet::ca::certificate_host_keys(),
            ..Default::default()
        });
        let mut handle = russh::client::connect_stream(config, stream, RelayHandler { check })
            .await
            .map_err(|e| handshake(e.to_string()))?;
        let auth = handle
            .authenticate_openssh_cert(
                minted.user.clone(),
                minted.key.clone(),
                minted.certificate.clone(),
            )
            .await
            .map_err(|e| handshake(e.to_string()))?;
        if !auth.success() {
            return Err(RelayError::Refused(node));
        }
        Ok(RelayClient {
            handle,
            node,
            metrics,
        })
    }

    /// Opens the session channel.
    ///
    /// # Errors
    /// [`RelayError::Channel`].
    pub async fn open_session(self) -> Result<RelaySession, RelayError> {
        let channel =
            self.handle
                .channel_open_session()
                .await
                .map_err(|e| RelayError::Channel {
                    node: self.node.clone(),
                    message: e.to_string(),
                })?;
        Ok(RelaySession::start(channel, self))
    }

    /// Opens a `direct-tcpip` channel to `host:port` inside the container's
    /// network (RFC 4254 §7.2), as the user asked; a byte stream.
    ///
    /// # Errors
    /// [`RelayError::ConnectFailed`] when the node could not connect,
    /// [`RelayError::Channel`] for any other refusal.
    pub async fn open_direct_tcpip(
        self,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
    ) -> Result<impl AsyncRead + AsyncWrite + Unpin + Send + use<>, RelayError> {
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, port, originator, originator_port)
            .await
            .map_err(|e| match e {
                russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::ConnectFailed) => {
                    RelayError::ConnectFailed {
                        node: self.node.clone(),
                        message: e.to_string(),
                    }
                }
                _ => RelayError::Channel {
                    node: self.node.clone(),
                    message: e.to_string(),
                },
            })?;
        Ok(ForwardStream {
            inner: channel.into_stream(),
            _client: self,
        })
    }
}

/// A `direct-tcpip` channel as a byte stream; keeps its connection open.
struct ForwardStream<S> {
    inner: S,
    _client: RelayClient,
}

impl<S: AsyncRead + Unpin> AsyncRead for ForwardStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ForwardStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One relayed session channel.
pub struct RelaySession {
    write: ChannelWriteHalf<Msg>,
    events: mpsc::Receiver<RelayEvent>,
    replies: Mutex<mpsc::Receiver<bool>>,
    witness: Arc<std::sync::Mutex<Witness>>,
    client: RelayClient,
}

impl RelaySession {
    fn start(channel: Channel<Msg>, client: RelayClient) -> RelaySession {
        let (mut read, write) = channel.split();
        let (events_tx, events) = mpsc::channel(64);
        let (replies_tx, replies) = mpsc::channel(16);
        let witness = Arc::new(std::sync::Mutex::new(Witness::default()));
        let seen = witness.clone();
        let metrics = client.metrics.clone();
        tokio::spawn(async move {
            while let Some(msg) = read.wait().await {
                let event = match msg {
                    ChannelMsg::Data { data } => {
                        count(&seen, &metrics, &data);
                        RelayEvent::Data(data)
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        if ext != NOTICE_DATA_TYPE {
                            count(&seen, &metrics, &data);
                        }
                        RelayEvent::ExtendedData(ext, data)
                    }
                    ChannelMsg::Eof => RelayEvent::Eof,
                    ChannelMsg::ExitStatus { exit_status } => RelayEvent::ExitStatus(exit_status),
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        ..
                    } => RelayEvent::ExitSignal {
                        signal: signal_name_of(&signal_name),
                        core_dumped,
                        message: error_message,
                    },
                    ChannelMsg::Success | ChannelMsg::Failure => {
                        let ok = matches!(msg, ChannelMsg::Success);
                        if replies_tx.send(ok).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    ChannelMsg::Close => break,
                    _ => continue,
                };
                if events_tx.send(event).await.is_err() {
                    break;
                }
            }
        });
        RelaySession {
            write,
            events,
            replies: Mutex::new(replies),
            witness,
            client,
        }
    }

    /// Passes `request` on. Requests that take a reply (`pty-req`, `env`,
    /// `shell`, `exec`, `subsystem`) wait for it: true when the node
    /// accepted. `window-change` and `signal` return true at once.
    ///
    /// # Errors
    /// [`RelayError::Lost`] when the node went away.
    pub async fn request(&self, request: RelayRequest) -> Result<bool, RelayError> {
        let lost = |_| RelayError::Lost(self.client.node.clone());
        // Replies come in request order (RFC 4254 §5.4): one at a time.
        let mut replies = self.replies.lock().await;
        match request {
            RelayRequest::Pty {
                term,
                cols,
                rows,
                pix_width,
                pix_height,
                modes,
            } => {
                self.write
                    .request_pty(true, &term, cols, rows, pix_width, pix_height, &modes)
                    .await
                    .map_err(lost)?;
            }
            RelayRequest::Env { name, value } => {
                self.write.set_env(true, name, value).await.map_err(lost)?
            }
            RelayRequest::Shell => self.write.request_shell(true).await.map_err(lost)?,
            RelayRequest::Exec(command) => self.write.exec(true, command).await.map_err(lost)?,
            RelayRequest::Subsystem(name) => self
                .write
                .request_subsystem(true, name)
                .await
                .map_err(lost)?,
            RelayRequest::WindowChange {
                cols,
                rows,
                pix_width,
                pix_height,
            } => {
                self.write
                    .window_change(cols, rows, pix_width, pix_height)
                    .await
                    .map_err(lost)?;
                return Ok(true);
            }
            RelayRequest::Signal(name) => {
                self.write
                    .signal(signal_of_name(&name))
                    .await
                    .map_err(lost)?;
                return Ok(true);
            }
        }
        replies
            .recv()
            .await
            .ok_or_else(|| RelayError::Lost(self.client.node.clone()))
    }

    /// Sends the user's input; waits for the node channel's window.
    ///
    /// # Errors
    /// [`RelayError::Lost`].
    pub async fn data(&self, bytes: &[u8]) -> Result<(), RelayError> {
        if let Some(m) = &self.client.metrics {
            m.relay_bytes(true, bytes.len() as u64);
        }
        self.write
            .data(bytes)
            .await
            .map_err(|_| RelayError::Lost(self.client.node.clone()))
    }

    /// Passes on the user's EOF.
    ///
    /// # Errors
    /// [`RelayError::Lost`].
    pub async fn eof(&self) -> Result<(), RelayError> {
        self.write
            .eof()
            .await
            .map_err(|_| RelayError::Lost(self.client.node.clone()))
    }

    /// The next thing the node sent; `None` once the channel closed.
    pub async fn next_event(&mut self) -> Option<RelayEvent> {
        self.events.recv().await
    }

    /// Takes what the node sends as a queue of its own, so one task can
    /// read it while others send input and requests through `&self`;
    /// [`RelaySession::next_event`] returns `None` afterwards.
    pub fn take_events(&mut self) -> mpsc::Receiver<RelayEvent> {
        let (_, closed) = mpsc::channel(1);
        std::mem::replace(&mut self.events, closed)
    }

    /// The node this session runs on.
    pub fn node(&self) -> &str {
        &self.client.node
    }

    /// The edge's witness of the output so far.
    pub fn witness(&self) -> Witness {
        self.witness.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Closes the channel and the connection.
    pub async fn close(self) {
        let _ = self.write.close().await;
        let _ = self
            .client
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn count(witness: &std::sync::Mutex<Witness>, metrics: &Option<Arc<Metrics>>, data: &[u8]) {
    if let Ok(mut w) = witness.lock() {
        w.add(data);
    }
    if let Some(m) = metrics {
        m.relay_bytes(false, data.len() as u64);
    }
}

/// RFC 4254 §6.10 signal names (without `SIG`) and russh's [`Sig`].
const SIGNALS: [(&str, Sig); 12] = [
    ("ABRT", Sig::ABRT),
    ("ALRM", Sig::ALRM),
    ("FPE", Sig::FPE),
    ("HUP", Sig::HUP),
    ("ILL", Sig::ILL),
    ("INT", Sig::INT),
    ("KILL", Sig::KILL),
    ("PIPE", Sig::PIPE),
    ("QUIT", Sig::QUIT),
    ("SEGV", Sig::SEGV),
    ("TERM", Sig::TERM),
    ("USR1", Sig::USR1),
];

/// The name of `sig` (`TERM`, or a custom name as sent).
pub fn signal_name_of(sig: &Sig) -> String {
    if let Sig::Custom(name) = sig {
        return name.clone();
    }
    SIGNALS
        .iter()
        .find(|(_, s)| std::mem::discriminant(s) == std::mem::discriminant(sig))
        .map(|(n, _)| n.to_string())
        .unwrap_or_default()
}

/// The [`Sig`] of `name` (a custom one when not standard).
pub fn signal_of_name(name: &str) -> Sig {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| Sig::Custom(name.to_string()))
}
