//! The gateway <-> helper control protocol: one JSON document per
//! `SOCK_SEQPACKET` message, fds attached with `SCM_RIGHTS`.
//!
//! Gateway -> helper: one [`WireRequest`]. Helper (and session process) ->
//! gateway, in this order: `started` (+ pidfd of C), `pty` (+ master fd, only
//! with a pty), then `running` or `error`, then `exit`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::ExitStatus;
use super::error::{AttachError, WireError};
use super::sys;

/// Largest control message, in bytes.
pub(crate) const MAX_MSG_BYTES: usize = 256 * 1024;

/// The pty part of a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct WirePty {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

/// What the session process does once it is the login inside the
/// container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireMode {
    /// Exec the login's shell (or `shell -c command`).
    #[default]
    Exec,
    /// Serve SFTP on stdin/stdout ([`crate::sftp::serve_stdio`]); transfer
    /// events go to stderr as JSON lines.
    Sftp {
        /// Refuse every request that would change the filesystem.
        read_only: bool,
    },
    /// Serve legacy scp (`scp -t`/`scp -f`, [`crate::scp::serve`]) on
    /// stdin/stdout; transfer events go to stderr as JSON lines.
    Scp {
        /// The parsed invocation.
        command: crate::scp::ScpCommand,
    },
    /// Exec `path` itself (argv `[path, args...]`) as the login, not
    /// through the login's shell; refused with `program_not_found` when
    /// it is not an executable regular file in the container.
    Program {
        /// Absolute path inside the container.
        path: String,
        /// Arguments after argv[0].
        args: Vec<String>,
    },
    /// No session process: H joins only the container's network namespace,
    /// connects to `addr` and sends the connected socket back (`connected`).
    Connect {
        /// Destination, as seen from inside the container.
        addr: std::net::SocketAddr,
    },
}

/// What the gateway asks the helper to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct WireRequest {
    /// What to run (default: exec).
    #[serde(default)]
    pub mode: WireMode,
    pub container: String,
    pub login: String,
    pub command: Option<String>,
    pub pty: Option<WirePty>,
    pub env: Vec<(String, String)>,
    /// The pinned init's pid, start time and cgroup, re-verified by H.
    pub init_pid: i32,
    pub init_start_time: u64,
    pub init_cgroup: String,
}

/// Messages from the helper side to the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HelperMsg {
    /// C was forked and placed in the cgroups; carries C's pidfd. `pid` is
    /// C's pid in the host pid namespace.
    Started { pid: i32 },
    /// Carries the pty master fd.
    Pty,
    /// C has exec'd its shell.
    Running,
    /// A step failed; C will not run.
    Error(WireError),
    /// C ended.
    Exit(ExitStatus),
    /// Connect mode: carries the connected TCP socket.
    Connected,
}

/// Sends one message with optional fds (blocking; helper side).
pub(crate) fn send_blocking(
    sock: BorrowedFd<'_>,
    msg: &HelperMsg,
    fds: &[RawFd],
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    send_bytes_blocking(sock, &bytes, fds)
}

/// Receives one raw message of at most `buf.len()` bytes with its fds
/// (blocking; used between the helper and the session process).
pub(crate) fn recv_bytes_blocking(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    recv_raw(sock, buf, MsgFlags::empty())
}

/// Sends raw bytes with optional fds in one message (blocking).
pub(crate) fn send_bytes_blocking(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[RawFd],
) -> std::io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives the request (blocking; helper side). Fds sent along are closed.
pub(crate) fn recv_request_blocking(sock: BorrowedFd<'_>) -> Result<WireRequest, String> {
    let mut buf = vec![0u8; MAX_MSG_BYTES];
    let (n, _fds) = recv_raw(sock, &mut buf, MsgFlags::empty()).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("control socket closed".to_owned());
    }
    serde_json::from_slice(&buf[..n]).map_err(|e| format!("bad request: {e}"))
}

/// One `recvmsg`: returns the length and the received fds (close-on-exec).
/// Truncated messages are errors (EMSGSIZE).
fn recv_raw(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(sys::own_received_fds(&raw));
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Err(std::io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((msg.bytes, fds))
}

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

    /// Sends the request (a single message; never blocks for long since
    /// the socket buffer is empty).
    pub(crate) async fn send_request(&self, req: &WireRequest) -> Result<(), AttachError> {
        let bytes = serde_json::to_vec(req).map_err(|e| AttachError::Protocol(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;

    #[test]
    fn json_shapes() {
        let s = serde_json::to_string(&HelperMsg::Exit(ExitStatus::Code(7))).unwrap();
        assert_eq!(s, r#"{"exit":{"code":7}}"#);
        let s = serde_json::to_string(&HelperMsg::Started { pid: 5 }).unwrap();
        assert_eq!(s, r#"{"started":{"pid":5}}"#);
        let s = serde_json::to_string(&HelperMsg::Running).unwrap();
        assert_eq!(s, r#""running""#);
    }

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
        send_blocking(
            b.as_fd(),
            &HelperMsg::Started { pid: 1 },
            &[extra.as_raw_fd()],
        )
        .unwrap();
        let (m, fds) = ctl.recv().await.unwrap().unwrap();
        assert_eq!(m, HelperMsg::Started { pid: 1 });
        assert_eq!(fds.len(), 1);
        drop(b);
        assert!(ctl.recv().await.unwrap().is_none());
    }
}
