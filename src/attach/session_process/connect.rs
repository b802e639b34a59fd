//! A forwarded TCP connection (`ssh -L`), opened by the session process as
//! the login: in the container's network and user namespaces, from the
//! session's cgroup, under the container's seccomp filter and LSM label, so
//! the container's own egress rules (`iptables -m owner`, `nft meta skuid`,
//! cgroup BPF, `socket cgroupv2`) apply to it as to anything the login runs
//! (review finding 4). The connected socket goes to the helper, which hands
//! it to the gateway; then the session process exits.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::attach::error::{HelperStep, WireError};
use crate::attach::proto::{self, InnerMsg};
use crate::attach::sys;

/// How long the connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr` and sends the socket on `inner`; never returns (exits
/// 0, or reports the failed step and exits 126).
pub(crate) fn connect_and_hand_over(inner: BorrowedFd<'_>, addr: SocketAddr) -> ! {
    let sent = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| WireError::step(HelperStep::Connect, &e))
        .and_then(|stream| {
            let fd = OwnedFd::from(stream);
            proto::send_json(inner, &InnerMsg::Connected, &[fd.as_raw_fd()])
                .map_err(|e| WireError::step(HelperStep::Report, &e))
        });
    match sent {
        Ok(()) => sys::exit_now(0),
        Err(w) => {
            let _ = proto::send_json(inner, &InnerMsg::Error(w), &[]);
            sys::exit_now(126)
        }
    }
}
