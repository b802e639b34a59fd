//! The gateway's end of the control socket to the helper: nonblocking,
//! driven by tokio. Owns sending and receiving whole messages; never
//! interprets them (the caller checks every fd it gets).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{MsgFlags, sendmsg};
use tokio::io::unix::AsyncFd;

use crate::attach::error::AttachError;
use crate::attach::proto::{HelperMsg, MAX_MSG_BYTES, recv_raw};
use crate::attach::sys;

/// The gateway's end of the control socket (nonblocking, tokio-driven).
pub(crate) struct Control {
    fd: AsyncFd<OwnedFd>,
}

impl Control {
    /// Wraps a nonblocking socket.
    pub(crate) fn new(fd: OwnedFd) -> Result<Control, AttachError> {
        let fd = sys::async_fd(fd).map_err(AttachError::ControlChannel)?;
        Ok(Control { fd })
    }

    /// Sends one message (the request, or a
    /// [`crate::attach::proto::GatewayMsg`]); never blocks
    /// for long since the helper reads every message at once.
    pub(crate) async fn send<T: serde::Serialize>(&self, msg: &T) -> Result<(), AttachError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| AttachError::Protocol(e.to_string()))?;
        if bytes.len() > MAX_MSG_BYTES {
            return Err(AttachError::InvalidRequest("request too large".into()));
        }
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(AttachError::ControlChannel)?;
            let r = guard.try_io(|fd| {
                let iov = [IoSlice::new(&bytes)];
                sendmsg::<()>(
                    fd.as_raw_fd(),
                    &iov,
                    &[],
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match r {
                Ok(res) => return res.map(|_| ()).map_err(AttachError::ControlChannel),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives the next message; `Ok(None)` when the helper side closed.
    /// Cancel-safe: a message is either fully returned or left queued.
    ///
    /// The receive buffer ([`MAX_MSG_BYTES`]) is allocated only once a
    /// message is ready: a live session waits here for its whole life, and
    /// a buffer held while waiting would be 256 KiB of every session's
    /// memory.
    pub(crate) async fn recv(&self) -> Result<Option<(HelperMsg, Vec<OwnedFd>)>, AttachError> {
        let mut buf = Vec::new();
        let (n, fds) = loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(AttachError::ControlChannel)?;
            if buf.is_empty() {
                buf = vec![0u8; MAX_MSG_BYTES];
            }
            match guard
                .try_io(|fd| recv_raw(fd.get_ref().as_fd(), &mut buf, MsgFlags::MSG_DONTWAIT))
            {
                Ok(res) => break res.map_err(AttachError::ControlChannel)?,
                Err(_would_block) => continue,
            }
        };
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..n])
            .map_err(|e| AttachError::Protocol(format!("bad helper message: {e}")))?;
        Ok(Some((msg, fds)))
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::attach::proto::send_blocking;
    use crate::attach::request::LoginIds;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    #[tokio::test]
    async fn roundtrip_with_fd() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let ctl = Control::new(a).unwrap();
        let extra = sys::pidfd_open(std::process::id() as i32).unwrap();
        let ids = LoginIds {
            login: "root".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
        };
        let msg = HelperMsg::Started { pid: 2, ids };
        send_blocking(b.as_fd(), &msg, &[extra.as_raw_fd()]).unwrap();
        let (m, fds) = ctl.recv().await.unwrap().unwrap();
        assert_eq!(m, msg);
        assert_eq!(fds.len(), 1);
        drop(b);
        assert!(ctl.recv().await.unwrap().is_none());
    }
}
