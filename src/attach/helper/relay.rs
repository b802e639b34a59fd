//! The helper's side of a running session: it passes the session process's
//! reports to the gateway (checked: nothing the container can touch is
//! trusted, review finding 3), relays its exit status, and ends the session
//! as the gateway says: kill its cgroup, or keep its processes after a
//! normal end. If the gateway goes away (the control socket hangs up) the
//! session is killed, so no session outlives its gateway.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::MsgFlags;
use nix::unistd::Pid;

use crate::attach::devpts;
use crate::attach::error::{HelperStep, WireError};
use crate::attach::helper::cgroup::SessionCgroup;
use crate::attach::helper::step::{HResult, fail, io_step};
use crate::attach::proto::{self, GatewayMsg, HelperMsg, InnerMsg, WireEnd, WireMode, WireRequest};
use crate::attach::request::ExitStatus;
use crate::attach::sys;

/// Decodes a raw `waitpid` status.
pub(crate) fn decode_wait_status(raw: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(raw) {
        ExitStatus::Signal {
            signal: libc::WTERMSIG(raw),
            core_dumped: libc::WCOREDUMP(raw),
        }
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(raw))
    }
}

/// Passes the session process's startup reports on: `started` (with its
/// pidfd and the ids it resolved), the PTY master once checked to be one,
/// the connected socket; returns the error it reported, if any. End of
/// file on `inner` means it exec'd or serves.
fn startup(
    ctl: BorrowedFd<'_>,
    inner: BorrowedFd<'_>,
    cpidfd: BorrowedFd<'_>,
    cpid: i32,
    req: &WireRequest,
) -> HResult<()> {
    let report = io_step(HelperStep::Report);
    let mut started = false;
    loop {
        let msg = proto::recv_json::<InnerMsg>(inner).map_err(&report)?;
        match msg {
            Some((InnerMsg::Ids(ids), _)) if !started => {
                started = true;
                let msg = HelperMsg::Started { pid: cpid, ids };
                proto::send_blocking(ctl, &msg, &[cpidfd.as_raw_fd()]).map_err(&report)?;
            }
            Some((InnerMsg::Pty, fds)) if started && req.pty.is_some() && fds.len() == 1 => {
                devpts::check_master(fds[0].as_fd())
                    .map_err(|e| WireError::step(HelperStep::CheckPty, &e))?;
                proto::send_blocking(ctl, &HelperMsg::Pty, &[fds[0].as_raw_fd()])
                    .map_err(&report)?;
            }
            Some((InnerMsg::Connected, fds))
                if started && matches!(req.mode, WireMode::Connect { .. }) && fds.len() == 1 =>
            {
                proto::send_blocking(ctl, &HelperMsg::Connected, &[fds[0].as_raw_fd()])
                    .map_err(&report)?;
            }
            Some((InnerMsg::Error(w), _)) => return Err(w),
            None if started => return Ok(()),
            None => return Err(fail(HelperStep::Exec, "the session process ended early")),
            Some((other, _)) => {
                return Err(fail(
                    HelperStep::Report,
                    &format!("unexpected message from the session process: {other:?}"),
                ));
            }
        }
    }
}

/// Relays the session from its start to its end; see the module docs.
pub(crate) fn serve(
    ctl: BorrowedFd<'_>,
    parent: Pid,
    inner: OwnedFd,
    cpidfd: OwnedFd,
    cpid: i32,
    req: &WireRequest,
    cgroup: &SessionCgroup,
) -> HResult<()> {
    let started = startup(ctl, inner.as_fd(), cpidfd.as_fd(), cpid, req);
    drop(inner);
    if let Err(w) = started {
        let _ = sys::pidfd_send_signal(cpidfd.as_fd(), libc::SIGKILL, 0);
        let _ = sys::wait_pid(cpid);
        return Err(w);
    }
    let _ = proto::send_blocking(ctl, &HelperMsg::Running, &[]);
    // From here the gateway's end of the control socket is the lifeline:
    // when it hangs up (the gateway died or dropped the session) the
    // session is killed, which a parent-death signal would prevent.
    nix::sys::prctl::set_pdeathsig(None).map_err(|e| WireError::errno(HelperStep::Prctl, e))?;
    if nix::unistd::getppid() != parent {
        let _ = cgroup.kill_and_remove();
        let _ = sys::wait_pid(cpid);
        return Ok(());
    }
    let mut status: Option<ExitStatus> = None;
    let reap = |status: &mut Option<ExitStatus>| -> HResult<()> {
        if status.is_none() {
            let raw = sys::wait_pid(cpid).map_err(io_step(HelperStep::Wait))?;
            let s = decode_wait_status(raw);
            *status = Some(s);
            let _ = proto::send_blocking(ctl, &HelperMsg::Exit(s), &[]);
        }
        Ok(())
    };
    loop {
        let mut fds = vec![(ctl, libc::POLLIN | libc::POLLRDHUP)];
        if status.is_none() {
            fds.push((cpidfd.as_fd(), libc::POLLIN));
        }
        let ready = sys::poll(&fds, -1).map_err(io_step(HelperStep::Wait))?;
        if ready.get(1).is_some_and(|&r| r != 0) {
            reap(&mut status)?;
        }
        if ready[0] == 0 {
            continue;
        }
        let mut buf = [0u8; 512];
        let end = match nix::sys::socket::recv(ctl.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) | Err(_) => None,
            Ok(n) => match serde_json::from_slice::<GatewayMsg>(&buf[..n]) {
                Ok(GatewayMsg::End(e)) => Some(e),
                Err(_) => None,
            },
        };
        match end {
            Some(WireEnd::Keep) => {
                // Only the session process itself ends (it should have).
                let _ = sys::pidfd_send_signal(cpidfd.as_fd(), libc::SIGKILL, 0);
                reap(&mut status)?;
                let kept = cgroup.keep().is_ok();
                let removed = !kept && cgroup.kill_and_remove().unwrap_or(false);
                let _ = proto::send_blocking(ctl, &HelperMsg::Ended { kept, removed }, &[]);
                return Ok(());
            }
            Some(WireEnd::Kill) => {
                let removed = cgroup.kill_and_remove().unwrap_or(false);
                // Also when container root moved it out of its cgroup.
                let _ = sys::pidfd_send_signal(cpidfd.as_fd(), libc::SIGKILL, 0);
                reap(&mut status)?;
                let msg = HelperMsg::Ended {
                    kept: false,
                    removed,
                };
                let _ = proto::send_blocking(ctl, &msg, &[]);
                return Ok(());
            }
            None => {
                // The gateway is gone or broke the protocol: kill.
                let _ = cgroup.kill_and_remove();
                let _ = sys::pidfd_send_signal(cpidfd.as_fd(), libc::SIGKILL, 0);
                reap(&mut status)?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn wait_status_decoding() {
        assert_eq!(decode_wait_status(7 << 8), ExitStatus::Code(7));
        assert_eq!(
            decode_wait_status(libc::SIGKILL),
            ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            decode_wait_status(libc::SIGSEGV | 0x80),
            ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            }
        );
        assert_eq!(
            decode_wait_status(40),
            ExitStatus::Signal {
                signal: 40,
                core_dumped: false
            }
        );
    }
}
