//! [`TunnelStream`]: one tunnel channel as a byte stream (AsyncRead +
//! AsyncWrite) that never lets its reader block the tunnel's connection
//! loop.
//!
//! russh refills a receive window when a packet arrives, and its only
//! back-pressure is its connection loop waiting on a full per-channel
//! queue, which would stall every session of the tunnel behind one slow
//! reader. So a small task drains the channel at once into this stream's
//! own buffer, and never waits: the SSH connection carried inside the
//! stream bounds what is in flight by its own window
//! ([`RELAY_WINDOW_BYTES`]), so the buffer stays below
//! [`STREAM_BUFFER_BYTES`] unless the peer breaks SSH flow control; then
//! this one stream fails ("tunnel stream overflow") and the tunnel goes on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// Receive window of the SSH connections carried inside tunnel streams
/// (the relay client's and the node's relay server's `window_size`), bytes.
pub const RELAY_WINDOW_BYTES: u32 = 2 * 1024 * 1024;

/// Largest data packet either end of a tunnel accepts on a tunnel channel
/// (its `maximum_packet_size`, RFC 4254 §5.1), bytes: one inner SSH packet
/// of 32 KiB of session data with its framing fits in one tunnel packet
/// (at russh's default of 32 KiB every inner packet took two, doubling the
/// messages, wake-ups and cipher calls per byte on both ends). The most
/// russh allows without warning (a TCP segment's 65,535).
pub const TUNNEL_PACKET_BYTES: u32 = 65_535;

/// Most bytes a tunnel stream holds for its reader: two inner windows and
/// 1 MiB for packet framing and control messages.
pub const STREAM_BUFFER_BYTES: usize = 2 * RELAY_WINDOW_BYTES as usize + 1024 * 1024;

/// One tunnel channel as a byte stream. Dropping it closes the channel.
pub struct TunnelStream {
    rx: mpsc::UnboundedReceiver<Bytes>,
    pending: Bytes,
    buffered: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    close: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("buffered", &self.buffered.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TunnelStream {
    /// Wraps `channel` (either end of a tunnel): starts its drain task.
    pub fn new<S>(channel: Channel<S>) -> TunnelStream
    where
        S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    {
        TunnelStream::with_cap(channel, STREAM_BUFFER_BYTES)
    }

    /// As [`TunnelStream::new`] with a buffer of `cap` bytes (tests).
    pub fn with_cap<S>(channel: Channel<S>, cap: usize) -> TunnelStream
    where
        S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    {
        let (mut read, write) = channel.split();
        let writer = Box::pin(write.make_writer());
        let write = Arc::new(write);
        let closer = write.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let overflowed = Arc::new(AtomicBool::new(false));
        let (count, flag) = (buffered.clone(), overflowed.clone());
        tokio::spawn(async move {
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        let now = count.fetch_add(data.len(), Ordering::AcqRel) + data.len();
                        if now > cap {
                            tracing::warn!(
                                buffered = now,
                                cap,
                                "tunnel stream overflow: the peer ignored SSH flow control; \
                                 closing this stream"
                            );
                            flag.store(true, Ordering::Release);
                            let _ = write.close().await;
                            break;
                        }
                        if tx.send(data).is_err() {
                            break;
                        }
                    }
                    ChannelMsg::Eof | ChannelMsg::Close => break,
                    _ => {}
                }
            }
        });
        TunnelStream {
            rx,
            pending: Bytes::new(),
            buffered,
            overflowed,
            writer,
            close: Some(Box::new(move || {
                tokio::spawn(async move {
                    let _ = closer.close().await;
                });
            })),
        }
    }

    /// Bytes received and not read yet.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(bytes)) => self.pending = bytes,
                Poll::Ready(None) => {
                    if self.overflowed.load(Ordering::Acquire) {
                        return Poll::Ready(Err(io::Error::other("tunnel stream overflow")));
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(self.pending.len());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        self.buffered.fetch_sub(n, Ordering::AcqRel);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if let Some(close) = self.close.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            close();
        }
    }
}
