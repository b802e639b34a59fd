//! A forwarded TCP connection (`ssh -L`) on a fleet edge (issue 16 point
//! 2): decided on the edge as [`super::forward`] decides (the policy
//! action `port_forward` with the canonical destination's `host` and
//! `port`, audited), then relayed to the container's node on its own
//! inner connection, whose certificate names this one destination; the
//! node decides again, connects from inside the container's netns, records
//! and audits the forward (`ForwardOpened`/`ForwardClosed`) under the same
//! session id. The edge only pumps bytes both ways.
//!
//! It never connects anywhere itself, never writes a session row and never
//! speaks SSH.

use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Caller;
use super::access::Ask;
use super::io::{Input, InputReceiver, Output};
use super::remote::{admit, unreachable};
use crate::fleet::edge_relay::EdgeRelay;
use crate::fleet::relay::RelayError;
use crate::gateway::Gateway;
use crate::policy::{Action, ContextValue};

/// Bytes read from the node per chunk.
const CHUNK_BYTES: usize = 32 * 1024;

/// A byte stream both ways (the relayed `direct-tcpip` channel).
trait ByteStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> ByteStream for T {}

/// A forward the edge allowed and the node opened.
pub struct RemoteForward {
    stream: Pin<Box<dyn ByteStream>>,
    session_id: String,
    node: String,
    destination: SocketAddr,
}

impl std::fmt::Debug for RemoteForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteForward")
            .field("session_id", &self.session_id)
            .field("node", &self.node)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

/// Why a relayed forward was not opened (RFC 4254 §5.1 reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoteRefused {
    /// Not allowed, or the node could not be reached.
    Prohibited,
    /// The node could not connect to the destination.
    ConnectFailed,
}

/// Decides a forward to `addr` (canonical already) on the edge and opens
/// it on the container's node; `originator` is the client's
/// `address:port`.
///
/// # Errors
/// [`RemoteRefused::Prohibited`] when the edge's or the node's policy
/// refuses or the node cannot be reached, [`RemoteRefused::ConnectFailed`]
/// when the node could not connect; each audited first (the node audits
/// its own refusals).
pub(crate) async fn open(
    gw: &Gateway,
    edge: &EdgeRelay,
    caller: &Caller,
    addr: SocketAddr,
    originator: &str,
) -> Result<RemoteForward, RemoteRefused> {
    let context = [
        ("host", ContextValue::Ip(addr.ip())),
        ("port", ContextValue::Long(i64::from(addr.port()))),
    ];
    let ask = Ask {
        action: Action::PortForward,
        command: None,
        context: &context,
        verb: "forward ports",
    };
    let admitted = admit(gw, edge, caller, &ask, Some(addr))
        .await
        .map_err(|_| RemoteRefused::Prohibited)?;
    let (originator, originator_port) = match originator.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or(0)),
        None => (originator.to_string(), 0),
    };
    let (session_id, node, container) = (
        admitted.session_id.clone(),
        admitted.node.clone(),
        admitted.container.clone(),
    );
    let opened = admitted
        .client
        .open_direct_tcpip(
            &addr.ip().to_string(),
            u32::from(addr.port()),
            &originator,
            originator_port,
        )
        .await;
    match opened {
        Ok(stream) => {
            tracing::info!(%session_id, %node, %addr, "forward relayed");
            Ok(RemoteForward {
                stream: Box::pin(stream),
                session_id,
                node,
                destination: addr,
            })
        }
        // The node audited why (its decision, or the failed connect).
        Err(RelayError::ConnectFailed { .. }) => Err(RemoteRefused::ConnectFailed),
        Err(RelayError::Channel { message, .. }) => {
            tracing::info!(%session_id, %node, %message, "the node refused the forward");
            Err(RemoteRefused::Prohibited)
        }
        Err(e) => {
            let _ = unreachable(gw, caller, &session_id, &container, &node, &e.to_string()).await;
            Err(RemoteRefused::Prohibited)
        }
    }
}

impl RemoteForward {
    /// Pumps both ways until both sides are done, the user closes the
    /// channel, the node closes it or the edge shuts down. The node counts,
    /// audits and records the forward.
    pub async fn run<O: Output>(self, gw: &Gateway, mut input: InputReceiver, output: O) {
        let RemoteForward {
            stream,
            session_id,
            node,
            destination,
        } = self;
        let (mut from_node, mut to_node) = tokio::io::split(stream);
        // User → node in its own future, so a full window one way never
        // stops the other way. True: the user sent EOF (the node's side
        // may still send); false: the user closed the channel or the node
        // took no more.
        let feed = async {
            while let Some(event) = input.recv().await {
                match event {
                    Input::Data(d) => {
                        if to_node.write_all(&d).await.is_err() {
                            return false;
                        }
                        input.consumed(d.len());
                    }
                    Input::Eof => {
                        let _ = to_node.shutdown().await;
                        return true;
                    }
                    Input::Resize { .. } | Input::Signal(_) => {}
                }
            }
            false
        };
        tokio::pin!(feed);
        let mut buf = vec![0u8; CHUNK_BYTES];
        let (mut user_done, mut node_done) = (false, false);
        while !(user_done && node_done) {
            tokio::select! {
                n = from_node.read(&mut buf), if !node_done => match n {
                    Ok(0) | Err(_) => {
                        node_done = true;
                        output.eof().await;
                    }
                    Ok(n) => {
                        if output.stdout(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                },
                eof = &mut feed, if !user_done => {
                    if !eof {
                        break;
                    }
                    user_done = true;
                }
                () = gw.shutdown.cancelled() => break,
            }
        }
        drop(from_node);
        output.finish(None).await;
        tracing::info!(%session_id, %node, %destination, "relayed forward ended");
    }
}
