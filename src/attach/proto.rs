//! The messages between the three processes of an attach, and their
//! framing: one JSON document per `SOCK_SEQPACKET` message, fds attached
//! with `SCM_RIGHTS`. Owns the wire format only; must never trust what it
//! parses (each receiver checks the fds it gets).
//!
//! Control socket, gateway (B) <-> helper (H):
//! - B -> H: one [`WireRequest`], later at most one [`GatewayMsg`].
//! - H -> B, in this order: `started` (+ the session process's pidfd, its
//!   resolved ids), `pty` (+ master fd, only with a pty), `connected` (+
//!   the socket, connect mode only), then `running` or `error`, then
//!   `exit`, and `ended` after a [`GatewayMsg::End`].
//!
//! Inner socket, H <-> the process entering the container (I) and the
//! session process (C), which never see the control socket: I -> H
//! `forked` (+ C's pidfd); H -> C `go` (+ the AppArmor attribute fd when
//! the init has a label); C -> H `ids`, `pty` (+ master), `connected`
//! (+ socket) or `error`. End of file on it means C exec'd (or served and
//! closed it).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use crate::attach::error::WireError;
use crate::attach::request::{ExitStatus, LoginIds, UnreproducibleSeccomp};
use crate::attach::sys;

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
    /// The session process connects to `addr` as the login and hands the
    /// socket back (`connected`), then exits; nothing is exec'd.
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
    /// [`crate::attach::AttachOptions`], enforced by H and C.
    pub allow_uid0: bool,
    pub expected: Option<LoginIds>,
    pub unreproducible_seccomp: UnreproducibleSeccomp,
}

/// Messages from the helper to the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HelperMsg {
    /// C is in the container as `ids`; carries C's pidfd. `pid` is C's pid
    /// in the host pid namespace.
    Started { pid: i32, ids: LoginIds },
    /// Carries the pty master fd (checked by H to be a devpts master).
    Pty,
    /// Connect mode: carries the connected TCP socket.
    Connected,
    /// C has exec'd its shell (or serves in-process).
    Running,
    /// A step failed; C will not run.
    Error(WireError),
    /// C ended.
    Exit(ExitStatus),
    /// The session's end is done (after [`GatewayMsg::End`]).
    Ended { kept: bool, removed: bool },
}

/// Messages from the gateway to the helper after the request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GatewayMsg {
    /// End the session: kill its cgroup, or keep its processes.
    End(WireEnd),
}

/// What H does with the session's cgroup at its end.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireEnd {
    /// `cgroup.kill`, wait until empty, remove it.
    Kill,
    /// Leave its processes running; kill only C if it still runs.
    Keep,
}

/// Messages on the inner socket (H <-> I and C).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InnerMsg {
    /// I -> H: C was created; carries C's pidfd.
    Forked,
    /// H -> C: go on; carries the AppArmor attribute fd when there is a
    /// label to set.
    Go,
    /// C -> H: the login's ids as the container resolves them.
    Ids(LoginIds),
    /// C -> H: carries the pty master.
    Pty,
    /// C -> H: carries the connected socket (connect mode).
    Connected,
    /// I or C -> H: a step failed.
    Error(WireError),
}

/// Longest inner message, in bytes.
pub(crate) const MAX_INNER_BYTES: usize = 64 * 1024;

/// Sends one serializable message with optional fds (blocking; H, I, C).
pub(crate) fn send_json<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[RawFd],
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    send_bytes_blocking(sock, &bytes, fds)
}

/// Receives one message of at most [`MAX_INNER_BYTES`] (blocking); `None`
/// at end of file.
pub(crate) fn recv_json<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_INNER_BYTES];
    let (n, fds) = recv_raw(sock, &mut buf, MsgFlags::empty())?;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)?;
    Ok(Some((msg, fds)))
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
pub(crate) fn recv_raw(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;

    fn ids() -> LoginIds {
        LoginIds {
            login: "app".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 2000],
        }
    }

    #[test]
    fn json_shapes() {
        let s = serde_json::to_string(&HelperMsg::Exit(ExitStatus::Code(7))).unwrap();
        assert_eq!(s, r#"{"exit":{"code":7}}"#);
        let s = serde_json::to_string(&HelperMsg::Started { pid: 5, ids: ids() }).unwrap();
        assert_eq!(
            s,
            r#"{"started":{"pid":5,"ids":{"login":"app","uid":1000,"gid":1000,"groups":[1000,2000]}}}"#
        );
        let s = serde_json::to_string(&HelperMsg::Running).unwrap();
        assert_eq!(s, r#""running""#);
        let s = serde_json::to_string(&GatewayMsg::End(WireEnd::Kill)).unwrap();
        assert_eq!(s, r#"{"end":"kill"}"#);
        let s = serde_json::to_string(&InnerMsg::Ids(ids())).unwrap();
        assert_eq!(
            s,
            r#"{"ids":{"login":"app","uid":1000,"gid":1000,"groups":[1000,2000]}}"#
        );
    }

    #[test]
    fn inner_roundtrip_with_fd_and_eof() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let extra = sys::pidfd_open(std::process::id() as i32).unwrap();
        send_json(b.as_fd(), &InnerMsg::Forked, &[extra.as_raw_fd()]).unwrap();
        let (m, fds): (InnerMsg, _) = recv_json(a.as_fd()).unwrap().unwrap();
        assert_eq!(m, InnerMsg::Forked);
        assert_eq!(fds.len(), 1);
        drop(b);
        assert!(recv_json::<InnerMsg>(a.as_fd()).unwrap().is_none());
    }
}
