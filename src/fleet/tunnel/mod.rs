//! The node → edge tunnel (issue 16 point 2): SSH, no new protocol. Each
//! node dials every edge ([`node`]) and keeps the connection up; through
//! it the edge ([`edge`]) opens one `forwarded-tcpip` channel per relayed
//! session, which the node hands as a byte stream ([`TunnelStream`]) to its
//! own SSH server (`russh::server::run_stream`).
//!
//! Owns the tunnel connections, their authentication (node host
//! certificates, edge host certificates, the join exchange) and the
//! streams; it never looks inside a stream (that is the relayed SSH
//! connection, end to end between the edge's relay client and the node's
//! SSH server).

pub mod edge;
pub mod node;
mod stream;

pub use edge::{EdgeContext, Tunnels};
pub use node::{NodeIdentity, RelayAcceptor, RelayOrigin, TunnelClient};
pub use stream::{RELAY_WINDOW_BYTES, STREAM_BUFFER_BYTES, TUNNEL_PACKET_BYTES, TunnelStream};

/// The `connected address` of relay channels (RFC 4254 §7.2
/// `forwarded-tcpip`); the node accepts no other.
pub const RELAY_ADDRESS: &str = "portcullis-relay";

/// A failed tunnel step.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// No tunnel from this node to this edge is up.
    #[error("node {0} is not connected to this edge")]
    NotConnected(String),
    /// Opening a relay channel failed.
    #[error("cannot open a relay stream to node {0}")]
    Open(String),
    /// A certificate could not be minted, read or verified.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Connecting or authenticating to an edge failed.
    #[error("edge {edge}: {message}")]
    Connect {
        /// The edge address.
        edge: String,
        /// What failed.
        message: String,
    },
    /// The node's key or certificate files could not be read or written.
    #[error("node identity {path}: {message}")]
    Identity {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// The two `exec` commands of the fleet listener and their reply: the
/// certificate and the CA public key, one per line, OpenSSH format.
pub(crate) mod commands {
    use russh::keys::ssh_key::{Certificate, PublicKey};

    /// After a join: the node's first host certificate.
    pub const JOIN: &str = "portcullis-join";
    /// On a tunnel: a fresh host certificate for the same key.
    pub const RENEW: &str = "portcullis-renew";

    /// The reply bytes.
    pub fn reply(cert: &Certificate, ca: &str) -> Result<Vec<u8>, String> {
        let cert = cert.to_openssh().map_err(|e| e.to_string())?;
        Ok(format!("{cert}\n{ca}\n").into_bytes())
    }

    /// Parses a reply.
    pub fn parse(bytes: &[u8]) -> Result<(Certificate, PublicKey), String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "reply is not UTF-8".to_string())?;
        let mut lines = text.lines();
        let cert = lines
            .next()
            .ok_or("empty reply")
            .and_then(|l| Certificate::from_openssh(l).map_err(|_| "bad certificate"))?;
        let ca = lines
            .next()
            .ok_or("no CA key")
            .and_then(|l| PublicKey::from_openssh(l).map_err(|_| "bad CA key"))?;
        Ok((cert, ca))
    }
}
