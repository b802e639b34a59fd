//! Connect mode: a TCP connection opened from inside a container's network
//! namespace (for `ssh -L`). The helper joins only the network namespace,
//! connects, passes the socket to the gateway with `SCM_RIGHTS` and exits.
//! Nothing runs in the container and nothing of the container's filesystem
//! is touched.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use super::error::{AttachError, HelperStep, WireError};
use super::helper::{HResult, alive, ensure_single_threaded};
use super::proto::{self, HelperMsg, WireMode, WireRequest};
use super::{HelperBinary, PinnedInit, start_helper};

/// How long the helper tries to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Gateway side of [`super::connect_in`].
pub(crate) async fn connect_in(
    helper: &HelperBinary,
    init: &PinnedInit,
    container: &str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpStream, AttachError> {
    let (mut child, control) = start_helper(helper, init, false)?;
    let wire = WireRequest {
        mode: WireMode::Connect { addr },
        container: container.chars().take(256).collect(),
        login: String::new(),
        command: None,
        pty: None,
        env: Vec::new(),
        init_pid: init.pid,
        init_start_time: init.start_time,
        init_cgroup: init.expected_cgroup.clone(),
    };
    let exchange = async {
        control.send_request(&wire).await?;
        match control.recv().await? {
            Some((HelperMsg::Connected, mut fds)) if fds.len() == 1 => fds
                .pop()
                .ok_or_else(|| AttachError::Protocol("no socket received".into())),
            Some((HelperMsg::Error(w), _)) => Err(w.into()),
            Some((other, _)) => Err(AttachError::Protocol(format!(
                "unexpected message {other:?}"
            ))),
            None => Err(AttachError::HelperDied),
        }
    };
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(AttachError::Protocol("timed out connecting".into())));
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    let fd = outcome?;
    let std_stream = std::net::TcpStream::from(fd);
    std_stream
        .set_nonblocking(true)
        .map_err(AttachError::Control)?;
    tokio::net::TcpStream::from_std(std_stream).map_err(AttachError::Control)
}

/// Helper side: called by H after the init was verified, with the
/// namespaces that differ from H's. Joins only the network namespace.
pub(crate) fn helper_connect(
    ctl: BorrowedFd<'_>,
    pidfd: OwnedFd,
    ns_flags: CloneFlags,
    addr: SocketAddr,
) -> HResult<()> {
    let s = HelperStep::Connect;
    if !ns_flags.contains(CloneFlags::CLONE_NEWNET) {
        // Its "loopback" would be the host's: fail closed.
        return Err(WireError::step(
            s,
            &std::io::Error::other("the container shares the host's network namespace"),
        ));
    }
    alive(pidfd.as_fd())?;
    ensure_single_threaded()?;
    setns(pidfd.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| WireError::errno(HelperStep::Setns, e))?;
    drop(pidfd);
    let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| WireError::step(s, &e))?;
    let fd = OwnedFd::from(stream);
    proto::send_blocking(ctl, &HelperMsg::Connected, &[fd.as_raw_fd()])
        .map_err(|e| WireError::step(HelperStep::Report, &e))?;
    Ok(())
}
