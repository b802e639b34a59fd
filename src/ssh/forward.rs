//! What SFTP sessions and forwarded connections share (who asks, policy
//! with extra context, refusals), and local port forwarding (`ssh -L`,
//! issue 5): a `direct-tcpip` channel allowed by the policy action
//! `port_forward` is connected from inside the container's network
//! namespace ([`crate::attach::connect_in`]) and pumped both ways; each
//! connection is a session (row, header-only recording) whose audit
//! events say where it goes before it is opened and, when it ends, the
//! bytes each way and the duration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Gateway;
use crate::attach;
use crate::audit::{AuditEvent, truncate};
use crate::policy::{Action, ContextValue};
use crate::session::access::{Access, Ask, authorize};
use crate::session::{Caller, Refusal};

/// Sends `refusal` on a session channel and closes it.
pub(super) async fn refuse(handle: &Handle, channel: ChannelId, refusal: &Refusal) {
    let text = format!("{}\r\n", refusal.message());
    let _ = handle.extended_data(channel, 1, text.into_bytes()).await;
    let _ = handle.exit_status_request(channel, 1).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// The destination of a forward: an IP literal, or `localhost` (the
/// container's loopback). Names are refused: resolving them would read the
/// host's resolver configuration, not the container's.
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

/// What a `direct-tcpip` channel asks for.
pub struct ForwardStart {
    /// Shared gateway state.
    pub gateway: Arc<Gateway>,
    /// Who.
    pub who: Caller,
    /// The channel (still to be accepted or rejected).
    pub channel: Channel<Msg>,
    /// Accepts or rejects the channel.
    pub reply: russh::server::ChannelOpenHandle,
    /// Host to connect to, as the client sent it.
    pub host: String,
    /// Port to connect to.
    pub port: u32,
    /// The client's originator `address:port`.
    pub originator: String,
    /// Held while the forward runs (the per-connection cap).
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// Authorises, connects inside the container, then pumps until either
/// side closes. The channel is accepted only once connected.
pub async fn run(start: ForwardStart) {
    let ForwardStart {
        gateway,
        who,
        channel,
        reply,
        host,
        port,
        originator,
        permit,
    } = start;
    let reject = russh::ChannelOpenFailure::AdministrativelyProhibited;
    let Some(addr) = destination(&host, port) else {
        let _ = who
            .audit(
                &gateway,
                None,
                AuditEvent::ChannelRefused {
                    kind: "direct-tcpip".into(),
                    reason: format!(
                        "destination {}:{port} is not an IP address or localhost",
                        truncate(&host, 128)
                    ),
                },
            )
            .await;
        reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
        return;
    };
    let extra = [
        ("host", ContextValue::Str(addr.ip().to_string())),
        ("port", ContextValue::Long(i64::from(addr.port()))),
    ];
    let ask = Ask {
        action: Action::PortForward,
        command: None,
        context: &extra,
        verb: "forward ports",
    };
    let auth = authorize(&gateway, &who, &ask).await;
    let Ok(Access {
        target,
        container,
        init,
        ..
    }) = auth
    else {
        reply.reject(reject).await;
        return;
    };
    let destination_text = addr.to_string();
    let command = format!("direct-tcpip {destination_text}");
    let Ok(record) =
        super::transfer::open_record(&gateway, &who, &container.name, &target.login, &command)
            .await
    else {
        reply.reject(reject).await;
        return;
    };
    let opened = AuditEvent::ForwardOpened {
        container: container.name.clone(),
        host: addr.ip().to_string(),
        port: i64::from(addr.port()),
        originator: truncate(&originator, 128),
    };
    let forward_id = record.id().to_string();
    if record.audit(opened).await.is_err() {
        reply.reject(reject).await;
        record.close(None).await;
        return;
    }
    let closed = |to: u64, from: u64, ms: u128, error: Option<String>| AuditEvent::ForwardClosed {
        destination: destination_text.clone(),
        bytes_to_destination: i64::try_from(to).unwrap_or(i64::MAX),
        bytes_from_destination: i64::try_from(from).unwrap_or(i64::MAX),
        duration_ms: i64::try_from(ms).unwrap_or(i64::MAX),
        error,
    };
    let stream = match attach::connect_in(&gateway.helper, &init, &container.name, addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = ?e, %addr, "forward: connect inside the container failed");
            let _ = record.audit(closed(0, 0, 0, Some(e.user_message()))).await;
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            record.close(None).await;
            return;
        }
    };
    reply.accept().await;
    let mut kill = gateway.live.register(crate::session::LiveSession {
        id: forward_id.clone(),
        principal: who.principal.subject.clone(),
        issuer: who.principal.issuer.clone(),
        container: container.name.clone(),
        login: target.login.clone(),
        client_addr: who.client_addr.clone(),
        key_fingerprint: who.key_fingerprint.clone(),
    });
    let started = Instant::now();
    // Bytes are counted as they are written on each side, so a forward
    // cut short (kill, shutdown, an error) still reports what crossed:
    // `copy_bidirectional` only returns its totals when it finishes.
    let mut tcp = Counted::new(stream);
    let mut chan = Counted::new(channel.into_stream());
    let (to_destination, from_destination) = (tcp.written.clone(), chan.written.clone());
    let error = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut chan, &mut tcp) => r.err().map(|e| e.to_string()),
        _ = gateway.shutdown.cancelled() => Some("the gateway is shutting down".into()),
        reason = kill.wait() => Some(reason.to_string()),
    };
    let (to, from) = (
        to_destination.load(Ordering::Relaxed),
        from_destination.load(Ordering::Relaxed),
    );
    drop(kill);
    drop(chan);
    drop(tcp);
    let _ = record
        .audit(closed(to, from, started.elapsed().as_millis(), error))
        .await;
    record.close(Some(crate::attach::ExitStatus::Code(0))).await;
    drop(permit);
}

/// A stream that counts the bytes written into it (shared, so they can be
/// read after the copy using it was dropped mid-way).
struct Counted<S> {
    inner: S,
    written: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    fn new(inner: S) -> Counted<S> {
        Counted {
            inner,
            written: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
