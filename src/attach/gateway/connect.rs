//! Connect mode, the gateway's side: a TCP connection for a forward (`ssh
//! -L`) made inside the container by a session process of the login (see
//! `session_process/connect.rs`), in a session cgroup of its own that is
//! removed once the socket is handed over. The socket the gateway gets is
//! checked to be a TCP stream connected to the requested address.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::attach::error::AttachError;
use crate::attach::gateway::binary::HelperBinary;
use crate::attach::gateway::pin::PinnedInit;
use crate::attach::gateway::spawn::{start_helper, startup, validate, wire_request};
use crate::attach::proto::{GatewayMsg, HelperMsg, WireEnd, WireMode};
use crate::attach::request::{AttachOptions, AttachRequest, LoginIds};
use crate::attach::sys;

/// How long the whole connect may take (helper start, namespace entry, the
/// TCP handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A forwarded connection to open inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Container name, for messages and logs only.
    pub container: String,
    /// The login the connection is made as (resolved in the container).
    pub login: String,
    /// Destination as seen from inside the container; an IP literal the
    /// caller made canonical ([`crate::policy::addr::canonical_destination`]).
    /// The unspecified address (`0.0.0.0`, `::`) is refused.
    pub addr: SocketAddr,
}

/// The socket the session process handed over must be what was asked for:
/// a TCP stream connected to `addr`.
fn check_socket(fd: OwnedFd, addr: SocketAddr) -> Result<std::net::TcpStream, AttachError> {
    let bad = |what: &str| AttachError::Protocol(format!("connect: the socket {what}"));
    let int = |opt| sys::socket_int_option(fd.as_fd(), opt).map_err(AttachError::Control);
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    if int(libc::SO_DOMAIN)? != family
        || int(libc::SO_TYPE)? != libc::SOCK_STREAM
        || int(libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
    {
        return Err(bad("is not a TCP socket"));
    }
    let stream = std::net::TcpStream::from(fd);
    if stream.peer_addr().ok() != Some(addr) {
        return Err(bad("is not connected to the requested address"));
    }
    Ok(stream)
}

/// Gateway side of [`crate::attach::connect_as`]; returns the stream and
/// the ids it was made as.
pub(crate) async fn connect(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &ConnectRequest,
    options: &AttachOptions,
) -> Result<(tokio::net::TcpStream, LoginIds), AttachError> {
    if req.addr.ip().is_unspecified() || req.addr.port() == 0 {
        return Err(AttachError::InvalidRequest(
            "a forward needs a specific address and port".into(),
        ));
    }
    let attach = AttachRequest {
        container: req.container.clone(),
        login: req.login.clone(),
        command: None,
        pty: None,
        env: Vec::new(),
    };
    validate(&attach)?;
    let (mut child, control) = start_helper(helper, init, false)?;
    let wire = wire_request(init, &attach, WireMode::Connect { addr: req.addr }, options);
    let exchange = async {
        let started = startup(&control, &wire).await?;
        // The session process exits once it handed the socket over; its
        // (empty) cgroup goes with the helper.
        control.send(&GatewayMsg::End(WireEnd::Kill)).await?;
        while let Some((msg, _)) = control.recv().await? {
            if matches!(msg, HelperMsg::Ended { .. }) {
                break;
            }
        }
        Ok::<_, AttachError>(started)
    };
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(AttachError::Protocol("timed out connecting".into())));
    drop(control);
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    let started = outcome?;
    let fd = started
        .socket
        .ok_or_else(|| AttachError::Protocol("no socket received".into()))?;
    let stream = check_socket(fd, req.addr)?;
    stream.set_nonblocking(true).map_err(AttachError::Control)?;
    let stream = tokio::net::TcpStream::from_std(stream).map_err(AttachError::Control)?;
    Ok((stream, started.ids))
}
