//! The life of a forwarded TCP connection (`ssh -L`, issue 5): allowed by
//! the policy action `port_forward` (with `host`, the canonical destination
//! as a Cedar `ipaddr`, and `port` in context), recorded as a session with
//! a header-only recording, connected from inside the container as the
//! session's login ([`crate::attach::connect_as`]: its user namespace, the
//! session's cgroup, the login's uid and gid, so the container's own egress
//! rules apply; issue 13 point 4) and pumped both ways. Its audit events say where it goes before it is
//! opened (`ForwardOpened`) and, when it ends, the bytes each way and how
//! long it lasted (`ForwardClosed`).
//!
//! In two steps, because a front end accepts the client's channel only
//! once the connection exists: [`open`], then [`OpenForward::run`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::access::{Access, Ask, authorize};
use super::io::{Input, InputReceiver, Output, Sending, sent, start_write};
use super::record::{RecordStart, SessionRecord};
use super::{Caller, EndReason, LiveSession};
use crate::attach::{self, ExitStatus};
use crate::audit::{AuditEvent, truncate};
use crate::gateway::Gateway;
use crate::policy::addr::canonical_destination;
use crate::policy::{Action, ContextValue};

/// Bytes read from the destination per chunk.
const CHUNK_BYTES: usize = 32 * 1024;

/// What a `direct-tcpip` channel asks for (RFC 4254 §7.2).
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    /// Host to connect to, as the client sent it.
    pub host: String,
    /// Port to connect to.
    pub port: u32,
    /// The client's originator `address:port`.
    pub originator: String,
}

/// Why a forward was not opened, as the front end answers the client
/// (RFC 4254 §5.1 reason codes); the audit log has the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardRefused {
    /// Not allowed, or not recordable (`administratively prohibited`).
    Prohibited,
    /// No such destination, or it refused the connection (`connect
    /// failed`).
    ConnectFailed,
}

/// The destination of a forward: an IP literal, or `localhost` (the
/// container's loopback). Names are refused: resolving them would read the
/// host's resolver configuration, not the container's. [`open`] uses the
/// stricter [`canonical_destination`]; this lenient parse is kept for
/// other callers.
pub fn destination(host: &str, port: u32) -> Option<SocketAddr> {
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?
    };
    Some(SocketAddr::new(ip, port))
}

/// A forward allowed, recorded and connected; its channel may be accepted.
pub struct OpenForward(Opened);

/// Where an allowed forward runs.
enum Opened {
    /// Here, from inside the container.
    Local(Box<LocalForward>),
    /// On the container's node (a fleet edge relays it).
    Remote(Arc<Gateway>, super::remote_forward::RemoteForward),
}

/// A forward connected from inside the container on this gateway.
struct LocalForward {
    gateway: Arc<Gateway>,
    caller: Caller,
    access: Access,
    record: SessionRecord,
    stream: tokio::net::TcpStream,
    destination: SocketAddr,
}

/// Authorises `request`, opens its record and connects inside the
/// container; on a fleet edge, decides it and opens it on the container's
/// node (`remote_forward.rs`).
///
/// # Errors
/// [`ForwardRefused`], after the refusal was audited.
pub async fn open(
    gateway: Arc<Gateway>,
    caller: Caller,
    request: &ForwardRequest,
) -> Result<OpenForward, ForwardRefused> {
    if let Some(edge) = gateway.edge.clone() {
        let addr = checked_destination(&gateway, &caller, request).await?;
        let remote =
            super::remote_forward::open(&gateway, &edge, &caller, addr, &request.originator)
                .await
                .map_err(|e| match e {
                    super::remote_forward::RemoteRefused::Prohibited => ForwardRefused::Prohibited,
                    super::remote_forward::RemoteRefused::ConnectFailed => {
                        ForwardRefused::ConnectFailed
                    }
                })?;
        return Ok(OpenForward(Opened::Remote(gateway, remote)));
    }
    open_with_id(gateway, caller, request, None).await
}

/// The canonical destination of `request`, or its refusal, audited. One
/// spelling per address before the policy sees it: `::ffff:10.1.2.3` is
/// 10.1.2.3; hex, decimal and octal IPv4 forms, names, zones and the
/// unspecified address are refused.
async fn checked_destination(
    gw: &Gateway,
    caller: &Caller,
    request: &ForwardRequest,
) -> Result<SocketAddr, ForwardRefused> {
    match canonical_destination(&request.host, request.port) {
        Ok(addr) => Ok(addr),
        Err(e) => {
            let event = AuditEvent::ChannelRefused {
                kind: "direct-tcpip".into(),
                reason: format!(
                    "destination {}:{} refused: {e}",
                    truncate(&request.host, 128),
                    request.port
                ),
            };
            let _ = caller.audit(gw, None, event).await;
            Err(ForwardRefused::Prohibited)
        }
    }
}

/// [`open`] on this gateway, with the session id given when `id` is some
/// (a node opening a forward an edge relays, under the id the edge's
/// certificate names).
///
/// # Errors
/// [`ForwardRefused`], after the refusal was audited.
pub async fn open_with_id(
    gateway: Arc<Gateway>,
    caller: Caller,
    request: &ForwardRequest,
    id: Option<String>,
) -> Result<OpenForward, ForwardRefused> {
    let gw = &gateway;
    let addr = checked_destination(gw, &caller, request).await?;
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
    let access = authorize(gw, &caller, &ask)
        .await
        .map_err(|_| ForwardRefused::Prohibited)?;
    let command = format!("direct-tcpip {addr}");
    let start = RecordStart {
        principal: &caller.principal.subject,
        email: caller.principal.email.as_deref(),
        client_addr: &caller.client_addr,
        container: &access.container.name,
        login: &access.target.login,
        command: Some(&command),
        pty: None,
        term_in_header: false,
        grant_id: None,
        record_input: false,
        index: false,
    };
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let record = SessionRecord::open_with_id(gw, &start, id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "forward record unavailable; refusing");
            ForwardRefused::Prohibited
        })?;
    let opened = AuditEvent::ForwardOpened {
        container: access.container.name.clone(),
        host: addr.ip().to_string(),
        port: i64::from(addr.port()),
        originator: truncate(&request.originator, 128),
    };
    if record.audit(opened).await.is_err() {
        record.close(None).await;
        return Err(ForwardRefused::Prohibited);
    }
    let connect = attach::ConnectRequest {
        container: access.container.name.clone(),
        login: access.target.login.clone(),
        addr,
    };
    // The decision was made on the login's name (uid decisions: the
    // session core's shells do the same).
    let options = attach::AttachOptions::name_only();
    let stream = match attach::connect_as(&gw.helper, &access.init, &connect, &options).await {
        Ok((s, _ids)) => s,
        Err(e) => {
            tracing::info!(error = ?e, %addr, "forward: connect inside the container failed");
            let _ = record
                .audit(closed(addr, 0, 0, 0, Some(e.user_message())))
                .await;
            record.close(None).await;
            return Err(ForwardRefused::ConnectFailed);
        }
    };
    Ok(OpenForward(Opened::Local(Box::new(LocalForward {
        gateway,
        caller,
        access,
        record,
        stream,
        destination: addr,
    }))))
}

/// The `ForwardClosed` event.
fn closed(to: SocketAddr, sent: u64, received: u64, ms: u128, error: Option<String>) -> AuditEvent {
    AuditEvent::ForwardClosed {
        destination: to.to_string(),
        bytes_to_destination: i64::try_from(sent).unwrap_or(i64::MAX),
        bytes_from_destination: i64::try_from(received).unwrap_or(i64::MAX),
        duration_ms: i64::try_from(ms).unwrap_or(i64::MAX),
        error,
    }
}

impl OpenForward {
    /// Pumps both ways until both sides are done, the client closes the
    /// channel, or something ends it; audits the totals and closes the
    /// record.
    pub async fn run<O: Output>(self, input: InputReceiver, output: O) {
        match self.0 {
            Opened::Local(local) => local.run(input, output).await,
            Opened::Remote(gateway, remote) => remote.run(&gateway, input, output).await,
        }
    }
}

impl LocalForward {
    async fn run<O: Output>(self, input: InputReceiver, output: O) {
        let LocalForward {
            gateway,
            caller,
            access,
            record,
            stream,
            destination,
        } = self;
        let mut ending = gateway.live.register(LiveSession {
            id: record.id().to_string(),
            principal: caller.principal.subject.clone(),
            groups: caller.principal.groups.clone(),
            connection: caller.connection,
            issuer: caller.principal.issuer.clone(),
            container: access.container.name.clone(),
            login: access.target.login.clone(),
            client_addr: caller.client_addr.clone(),
            key_fingerprint: caller.key_fingerprint.clone(),
            recheck: Some(access.recheck.clone()),
        });
        let started = Instant::now();
        let (mut from_tcp, to_tcp) = stream.into_split();
        // Bytes are counted as they are written on each side, so a forward
        // cut short (kill, shutdown, an error) still reports what crossed.
        let written = Arc::new(AtomicU64::new(0));
        let mut client = tokio::spawn(client_to_destination(input, to_tcp, written.clone()));
        let mut received = 0u64;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut sending: Option<Sending<'_>> = None;
        let mut pending_len = 0u64;
        let (mut client_done, mut destination_done) = (false, false);
        let mut error: Option<String> = None;
        while !(client_done && destination_done && sending.is_none()) {
            let idle = sending.is_none();
            tokio::select! {
                done = sent(&mut sending) => {
                    sending = None;
                    if done.is_err() {
                        break;
                    }
                    received += pending_len;
                }
                side = &mut client, if !client_done => match side {
                    Ok(ClientSide::Eof) => client_done = true,
                    Ok(ClientSide::Failed(e)) => {
                        error = Some(e);
                        break;
                    }
                    Ok(ClientSide::Closed) | Err(_) => break,
                },
                n = from_tcp.read(&mut buf), if idle && !destination_done => match n {
                    Ok(0) => {
                        destination_done = true;
                        output.eof().await;
                    }
                    Ok(n) => {
                        match start_write(Box::pin(output.stdout(buf[..n].to_vec()))).await {
                            Ok(None) => received += n as u64,
                            Ok(in_flight) => {
                                pending_len = n as u64;
                                sending = in_flight;
                            }
                            Err(_) => break,
                        }
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                },
                _ = gateway.shutdown.cancelled() => {
                    error = Some(EndReason::Shutdown.to_string());
                    break;
                }
                reason = ending.wait() => {
                    error = Some(reason.to_string());
                    break;
                }
            }
        }
        client.abort();
        let sent = written.load(Ordering::Relaxed);
        drop(sending);
        drop(ending);
        drop(from_tcp);
        let ms = started.elapsed().as_millis();
        let _ = record
            .audit(closed(destination, sent, received, ms, error))
            .await;
        tokio::join!(record.close(Some(ExitStatus::Code(0))), output.finish(None));
    }
}

/// How the client's side of a forward ended.
enum ClientSide {
    /// EOF: the destination's write side was shut down.
    Eof,
    /// The client closed the channel (or went away).
    Closed,
    /// Writing to the destination failed.
    Failed(String),
}

/// Client → destination, each chunk reported consumed once written.
async fn client_to_destination(
    mut input: InputReceiver,
    mut to_tcp: tokio::net::tcp::OwnedWriteHalf,
    sent: Arc<AtomicU64>,
) -> ClientSide {
    while let Some(event) = input.recv().await {
        match event {
            Input::Data(d) => {
                if let Err(e) = to_tcp.write_all(&d).await {
                    return ClientSide::Failed(e.to_string());
                }
                sent.fetch_add(d.len() as u64, Ordering::Relaxed);
                input.consumed(d.len());
            }
            Input::Eof => {
                let _ = to_tcp.shutdown().await;
                // Keep the queue open until the session ends: a close
                // after EOF is the client's normal goodbye.
                return ClientSide::Eof;
            }
            Input::Resize { .. } | Input::Signal(_) => {}
        }
    }
    ClientSide::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_ip_literals_or_localhost() {
        assert_eq!(
            destination("localhost", 80),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(destination("::1", 22), Some("[::1]:22".parse().unwrap()));
        assert!(destination("example.com", 80).is_none());
        assert!(destination("127.0.0.1", 0).is_none());
        assert!(destination("127.0.0.1", 70000).is_none());
    }
}
