//! Starting an attach from the gateway (B): the helper is spawned from the
//! sealed binary with the pinned init's pidfd and a control socket, gets
//! the request, and reports the session's start. Everything it reports is
//! checked before use (review finding 3): the session's pidfd must be a
//! pidfd of the pid it names, the PTY a devpts master. Never forks the
//! gateway itself (a multi-threaded tokio process) into anything.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::process::Child;

use crate::attach::error::AttachError;
use crate::attach::gateway::attached::{Attached, SessionIo, Started};
use crate::attach::gateway::binary::HelperBinary;
use crate::attach::gateway::control::Control;
use crate::attach::gateway::pin::PinnedInit;
use crate::attach::gateway::pty::PtyMaster;
use crate::attach::proto::{HelperMsg, WireMode, WirePty, WireRequest};
use crate::attach::request::{AttachOptions, AttachRequest, LoginIds};
use crate::attach::{passwd, plan, procfs, sys};

/// argv\[1\] that makes the binary run [`crate::attach::helper_main`].
pub const HELPER_ARG: &str = "__attach-helper";

/// How long [`crate::attach::start`] waits for the session to start
/// (namespace entry, account lookup, exec) before killing the helper.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks what the gateway can check of a request before any helper runs.
pub(crate) fn validate(req: &AttachRequest) -> Result<(), AttachError> {
    let bad = |m: &str| Err(AttachError::InvalidRequest(m.to_owned()));
    if !passwd::valid_login(&req.login) {
        return bad("invalid login name");
    }
    if let Some(c) = &req.command
        && (c.len() > plan::MAX_COMMAND_BYTES || c.contains('\0'))
    {
        return bad("command too long or contains NUL");
    }
    if let Some(p) = &req.pty
        && (p.cols == 0 || p.rows == 0)
    {
        return bad("zero-sized pty");
    }
    if req.container.len() > 256 {
        return bad("container name too long");
    }
    Ok(())
}

/// Starts the helper with the pinned init's pidfd as fd 3 and the control
/// socket as fd 4; `piped` gives it stdio pipes (else /dev/null).
pub(crate) fn start_helper(
    helper: &HelperBinary,
    init: &PinnedInit,
    piped: bool,
) -> Result<(Child, Control), AttachError> {
    if !init.is_alive() {
        return Err(AttachError::InitChanged("init exited".into()));
    }
    let cc = AttachError::ControlChannel;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| cc(e.into()))?;
    // The helper's end must block.
    fcntl(theirs.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| cc(e.into()))?;
    let pidfd_src = sys::dup_at_least(init.pidfd.as_fd(), 10).map_err(cc)?;
    let ctl_src = sys::dup_at_least(theirs.as_fd(), 10).map_err(cc)?;
    drop(theirs);

    let mut cmd = tokio::process::Command::new(helper.exec_path());
    cmd.arg0("portcullis")
        .arg(HELPER_ARG)
        .env_clear()
        .current_dir("/")
        .kill_on_drop(true);
    let stdio = || {
        if piped {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    cmd.stdin(stdio()).stdout(stdio()).stderr(stdio());
    sys::install_fixed_fds(&mut cmd, pidfd_src.as_raw_fd(), ctl_src.as_raw_fd());
    let child = cmd.spawn().map_err(AttachError::SpawnHelper)?;
    drop(pidfd_src);
    drop(ctl_src);
    let control = Control::new(ours)?;
    Ok((child, control))
}

/// The wire request for `req` in `mode` on `init`.
pub(crate) fn wire_request(
    init: &PinnedInit,
    req: &AttachRequest,
    mode: WireMode,
    options: &AttachOptions,
) -> WireRequest {
    WireRequest {
        mode,
        container: req.container.chars().take(256).collect(),
        login: req.login.clone(),
        command: req.command.clone(),
        pty: req.pty.as_ref().map(|p| WirePty {
            term: p.term.clone(),
            cols: p.cols,
            rows: p.rows,
        }),
        env: req
            .env
            .iter()
            .filter(|(k, v)| plan::client_var_allowed(k) && plan::client_value_allowed(v))
            .cloned()
            .collect(),
        init_pid: init.pid,
        init_start_time: init.start_time,
        init_cgroup: init.expected_cgroup.clone(),
        allow_uid0: options.allow_uid0,
        expected: options.expected.clone(),
        unreproducible_seccomp: options.unreproducible_seccomp,
    }
}

/// The session's pidfd must be a pidfd (its fdinfo names a pid) of the very
/// pid reported, which is no PID 1, or of a process already gone (`-1`: a
/// short command the helper reaped already; signals to it do nothing).
fn check_pidfd(fd: &OwnedFd, pid: i32) -> Result<(), AttachError> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .map_err(AttachError::Control)?;
    let named = procfs::status_field(&info, "Pid");
    if pid <= 1 || (named != Some(pid.to_string().as_str()) && named != Some("-1")) {
        return Err(AttachError::Protocol(format!(
            "the session's pidfd is not a pidfd of pid {pid}"
        )));
    }
    Ok(())
}

/// Sends the request and collects the helper's reports until `running`.
pub(crate) async fn startup(control: &Control, wire: &WireRequest) -> Result<Started, AttachError> {
    control.send(wire).await?;
    let mut c: Option<(OwnedFd, i32, LoginIds)> = None;
    let mut master = None;
    let mut socket = None;
    let connect = matches!(wire.mode, WireMode::Connect { .. });
    loop {
        let Some((msg, mut fds)) = control.recv().await? else {
            return Err(AttachError::HelperDied);
        };
        match msg {
            HelperMsg::Started { pid, ids } if c.is_none() && fds.len() == 1 => {
                let fd = fds.pop().ok_or(AttachError::HelperDied)?;
                check_pidfd(&fd, pid)?;
                c = Some((fd, pid, ids));
            }
            HelperMsg::Pty if wire.pty.is_some() && master.is_none() && fds.len() == 1 => {
                if let Some(fd) = fds.pop() {
                    master = Some(PtyMaster::new(fd)?);
                }
            }
            HelperMsg::Connected if connect && socket.is_none() && fds.len() == 1 => {
                socket = fds.pop();
            }
            HelperMsg::Running => {
                let (pidfd, pid, ids) =
                    c.ok_or_else(|| AttachError::Protocol("running before started".into()))?;
                if wire.pty.is_some() && master.is_none() {
                    return Err(AttachError::Protocol("no pty received".into()));
                }
                if connect && socket.is_none() {
                    return Err(AttachError::Protocol("no socket received".into()));
                }
                return Ok(Started {
                    pidfd,
                    pid,
                    ids,
                    master,
                    socket,
                });
            }
            HelperMsg::Error(w) => return Err(w.into()),
            other => {
                return Err(AttachError::Protocol(format!(
                    "unexpected message {other:?}"
                )));
            }
        }
    }
}

/// [`crate::attach::start`] for every kind of session.
pub(crate) async fn start_session(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    mode: WireMode,
    options: &AttachOptions,
) -> Result<(Attached, SessionIo), AttachError> {
    validate(req)?;
    let (mut child, control) = start_helper(helper, init, req.pty.is_none())?;
    let wire = wire_request(init, req, mode, options);
    let outcome = tokio::time::timeout(SPAWN_TIMEOUT, startup(&control, &wire))
        .await
        .unwrap_or_else(|_| {
            Err(AttachError::Protocol(
                "timed out waiting for the session to start".into(),
            ))
        });
    match outcome {
        Ok(started) => Attached::new(child, control, started),
        Err(e) => {
            // The helper exits by itself after an error (having killed and
            // removed what it made); make sure and reap it.
            drop(control);
            if tokio::time::timeout(crate::attach::KILL_WAIT * 2, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::attach::proto::send_blocking;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    fn wire(pty: bool) -> WireRequest {
        WireRequest {
            mode: WireMode::Exec,
            container: "c".into(),
            login: "root".into(),
            command: None,
            pty: pty.then(|| WirePty {
                term: "xterm".into(),
                cols: 80,
                rows: 24,
            }),
            env: Vec::new(),
            init_pid: 2,
            init_start_time: 0,
            init_cgroup: "/x".into(),
            allow_uid0: true,
            expected: None,
            unreproducible_seccomp: Default::default(),
        }
    }

    fn ids() -> LoginIds {
        LoginIds {
            login: "root".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
        }
    }

    /// What a forged helper (or anything that got hold of the control
    /// socket) reports, against `startup`: review finding 3.
    async fn against(pty: bool, msgs: Vec<(HelperMsg, Option<OwnedFd>)>) -> AttachError {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        fcntl(theirs.as_fd(), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        let control = Control::new(ours).unwrap();
        for (m, fd) in &msgs {
            let fds: Vec<i32> = fd.iter().map(AsRawFd::as_raw_fd).collect();
            send_blocking(theirs.as_fd(), m, &fds).unwrap();
        }
        match startup(&control, &wire(pty)).await {
            Ok(_) => panic!("accepted {msgs:?}"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn forged_reports_are_refused() {
        let mut dummy = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = dummy.id() as i32;
        let pidfd = || Some(sys::pidfd_open(pid).unwrap());
        // PID 1, the gateway's own group (0), another pid than the pidfd's.
        for claimed in [1, 0, -1, pid + 1] {
            let e = against(
                false,
                vec![(
                    HelperMsg::Started {
                        pid: claimed,
                        ids: ids(),
                    },
                    pidfd(),
                )],
            )
            .await;
            assert!(matches!(e, AttachError::Protocol(_)), "{claimed}: {e:?}");
        }
        // A non-pidfd fd.
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = against(
            false,
            vec![(HelperMsg::Started { pid, ids: ids() }, Some(r))],
        )
        .await;
        assert!(
            matches!(e, AttachError::Control(_) | AttachError::Protocol(_)),
            "{e:?}"
        );
        // A "pty master" that is a pipe, or /dev/null.
        let (r, _w) = nix::unistd::pipe().unwrap();
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        for fake in [r, null] {
            let e = against(
                true,
                vec![
                    (HelperMsg::Started { pid, ids: ids() }, pidfd()),
                    (HelperMsg::Pty, Some(fake)),
                ],
            )
            .await;
            assert!(
                matches!(e, AttachError::Protocol(ref m) if m.contains("not a pty master")),
                "{e:?}"
            );
        }
        // Nothing was signalled.
        assert!(dummy.try_wait().unwrap().is_none());
        dummy.kill().unwrap();
        dummy.wait().unwrap();
    }
}
