//! A client of the LXC monitor's command socket: the container's state and
//! init PID without running `lxc-info` (which asks the same socket, after
//! loading liblxc and parsing the container's config: 3-5 ms per lookup).
//!
//! The monitor (`[lxc monitor] LXCPATH NAME`, one per running container)
//! listens on the abstract unix socket `@LXCPATH/NAME/command` (or
//! `@lxc/<fnv64 of "LXCPATH/NAME">/command` when that does not fit in
//! `sun_path`). A request is `struct lxc_cmd_req { int cmd; int datalen;
//! const void *data; }` (16 bytes on 64-bit Linux), the reply `struct
//! lxc_cmd_rsp { int ret; int datalen; void *data; }`; for the two commands
//! used here the answer is in `data`: `LXC_CMD_GET_STATE = 3` (the `lxc_state_t`
//! number) and `LXC_CMD_GET_INIT_PID = 4` (the init's host PID). LXC numbers
//! its commands explicitly (`src/lxc/commands.h`) so that clients of one
//! release can talk to monitors of another; the exchange was checked against
//! LXC 5.0.2 with `strace lxc-info` (the same 16-byte messages).
//!
//! Every deviation (no socket, a peer that is not root, a short or odd
//! reply, an unknown state) gives `None`, and the caller asks `lxc-info`
//! instead: this is a fast path, never a second source of truth. The PID is
//! then pinned and checked (cgroup, liveness) by the attach path as before,
//! so a forged answer could at worst name a process that the pin refuses.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket, sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ContainerState;

/// `LXC_CMD_GET_STATE` in LXC's `lxc_cmd_t`.
const CMD_GET_STATE: i32 = 3;
/// `LXC_CMD_GET_INIT_PID` in LXC's `lxc_cmd_t`.
const CMD_GET_INIT_PID: i32 = 4;
/// Longest abstract name LXC uses unhashed (`sizeof(sun_path) - 2`).
const MAX_NAME_BYTES: usize = 106;
/// How long one command may take before the caller falls back to `lxc-info`.
const TIMEOUT: Duration = Duration::from_secs(2);

/// LXC's `lxc_state_t` names, as `lxc-info -s` prints them.
const STATES: [&str; 8] = [
    "STOPPED", "STARTING", "RUNNING", "STOPPING", "ABORTING", "FREEZING", "FROZEN", "THAWED",
];

/// FNV-1a, 64 bits (LXC's `fnv_64a_buf` with `FNV1A_64_INIT`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The abstract socket name (without the leading NUL) of the monitor of
/// `name` under `lxcpath`, as LXC's `lxc_make_abstract_socket_name` builds it.
pub(crate) fn socket_name(lxcpath: &Path, name: &str) -> Vec<u8> {
    let base = format!("{}/{name}", lxcpath.display());
    let plain = format!("{base}/command");
    if plain.len() <= MAX_NAME_BYTES {
        return plain.into_bytes();
    }
    format!("lxc/{:016x}/command", fnv1a64(base.as_bytes())).into_bytes()
}

/// Sends one command and returns the reply's `data` field (`None` on any
/// failure or anomaly).
async fn command(lxcpath: &Path, name: &str, cmd: i32) -> Option<u64> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .ok()?;
    let addr = UnixAddr::new_abstract(&socket_name(lxcpath, name)).ok()?;
    // A unix stream connect completes at once or fails (no monitor:
    // ECONNREFUSED; a full backlog: EAGAIN, also a reason to fall back).
    connect(fd.as_raw_fd(), &addr).ok()?;
    // Only the monitor, which runs as host root, may answer for a container.
    if getsockopt(&fd, sockopt::PeerCredentials).ok()?.uid() != 0 {
        return None;
    }
    let mut stream =
        tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).ok()?;
    let mut req = [0u8; 16];
    req[..4].copy_from_slice(&cmd.to_ne_bytes());
    let exchange = async {
        stream.write_all(&req).await.ok()?;
        let mut rsp = [0u8; 16];
        stream.read_exact(&mut rsp).await.ok()?;
        Some(rsp)
    };
    let rsp = tokio::time::timeout(TIMEOUT, exchange).await.ok()??;
    let int = |at: usize| {
        rsp.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
    };
    let ret = i32::from_ne_bytes(int(0)?);
    let datalen = i32::from_ne_bytes(int(4)?);
    let data = u64::from_ne_bytes(<[u8; 8]>::try_from(rsp.get(8..16)?).ok()?);
    (ret == 0 && datalen == 0).then_some(data)
}

/// The state (and, when running, the init PID) of `name` as its monitor
/// reports it; `None` when the monitor cannot be asked or answers
/// something unexpected (the caller then runs `lxc-info`).
pub(crate) async fn query(lxcpath: &Path, name: &str) -> Option<ContainerState> {
    let state = command(lxcpath, name, CMD_GET_STATE).await?;
    let state = *STATES.get(usize::try_from(state).ok()?)?;
    match state {
        "RUNNING" => {
            let pid = command(lxcpath, name, CMD_GET_INIT_PID).await?;
            let pid = i32::try_from(pid).ok().filter(|p| *p > 1)?;
            Some(ContainerState::Running { init_pid: pid })
        }
        // Not states a live monitor reports for long; let lxc-info decide.
        "STOPPED" | "THAWED" => None,
        other => Some(ContainerState::NotRunning(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names() {
        assert_eq!(
            socket_name(Path::new("/var/lib/lxc"), "web1"),
            b"/var/lib/lxc/web1/command".to_vec()
        );
        let long = "x".repeat(100);
        let n =
            String::from_utf8(socket_name(Path::new("/var/lib/lxc"), &long)).unwrap_or_default();
        assert!(n.starts_with("lxc/") && n.ends_with("/command") && n.len() == 4 + 16 + 8);
        // FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
