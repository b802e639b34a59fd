//! A started session as the gateway holds it: its I/O, its exit status, and
//! the one place every kind of end goes through ([`Attached::end`]): a
//! normal end hangs up the session process and then kills (or, opted in,
//! keeps) everything else the session started; a kill ends all of it at
//! once. The gateway never signals a pid it was told: it signals the
//! session process through its checked pidfd, and the helper kills the
//! session's cgroup (review finding 3, issue 12 point 1).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use crate::attach::error::AttachError;
use crate::attach::gateway::control::Control;
use crate::attach::gateway::pty::{PtyMaster, WeakMaster};
use crate::attach::proto::{GatewayMsg, HelperMsg, WireEnd};
use crate::attach::request::{End, Ended, ExitStatus, Leftovers, LoginIds};
use crate::attach::sys;

/// What the helper reported of the session's start.
pub(crate) struct Started {
    /// The session process's pidfd, checked.
    pub pidfd: OwnedFd,
    /// Its host pid.
    pub pid: i32,
    /// The ids it resolved the login to.
    pub ids: LoginIds,
    /// The PTY master, with a PTY.
    pub master: Option<PtyMaster>,
    /// The connected socket, in connect mode.
    pub socket: Option<OwnedFd>,
}

/// The session's I/O, returned by [`crate::attach::start`].
#[derive(Debug)]
pub enum SessionIo {
    /// The pty master from the container's devpts (nonblocking). Dropping
    /// it hangs up the session.
    Pty(PtyMaster),
    /// Pipes for a session without a pty (stdin, stdout, stderr of C).
    Pipes {
        /// C's stdin; drop it to send EOF.
        stdin: ChildStdin,
        /// C's stdout.
        stdout: ChildStdout,
        /// C's stderr.
        stderr: ChildStderr,
    },
}

/// A started session inside the container. Dropping it kills every process
/// of the session (the helper kills the session's cgroup when the control
/// socket closes) and reaps the helper in the background.
#[derive(Debug)]
pub struct Attached {
    /// Always `Some` until dropped.
    helper: Option<Child>,
    control: Control,
    pidfd: OwnedFd,
    pid: i32,
    ids: LoginIds,
    master: Option<WeakMaster>,
    status: Option<ExitStatus>,
    ended: Option<Ended>,
}

/// How long a dropped [`Attached`] lets its helper kill and remove the
/// session's cgroup before the helper is killed.
const DROP_REAP_GRACE: Duration = Duration::from_secs(15);

fn ok_if_gone(r: std::io::Result<()>) -> Result<(), AttachError> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r.map_err(AttachError::Control),
    }
}

impl Attached {
    /// Wraps a started session; with pipes, takes the helper's stdio.
    pub(crate) fn new(
        mut child: Child,
        control: Control,
        started: Started,
    ) -> Result<(Attached, SessionIo), AttachError> {
        let weak = started.master.as_ref().map(PtyMaster::downgrade);
        let io = match started.master {
            Some(m) => SessionIo::Pty(m),
            None => {
                let missing = || AttachError::Protocol("helper stdio missing".into());
                SessionIo::Pipes {
                    stdin: child.stdin.take().ok_or_else(missing)?,
                    stdout: child.stdout.take().ok_or_else(missing)?,
                    stderr: child.stderr.take().ok_or_else(missing)?,
                }
            }
        };
        let attached = Attached {
            helper: Some(child),
            control,
            pidfd: started.pidfd,
            pid: started.pid,
            ids: started.ids,
            master: weak,
            status: None,
            ended: None,
        };
        Ok((attached, io))
    }

    /// The session process's pid in the host pid namespace (for logs; use
    /// [`Attached::signal`] to signal it race-free).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The ids the login resolved to in the container when the session
    /// started (issue 12 point 6: audit these, not only the name).
    pub fn ids(&self) -> &LoginIds {
        &self.ids
    }

    /// Waits for the session process to end; returns its exit status.
    /// Cancel-safe; returns the cached status when called again. Errors:
    /// [`AttachError::HelperDied`], [`AttachError::Protocol`].
    pub async fn wait(&mut self) -> Result<ExitStatus, AttachError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        loop {
            match self.control.recv().await? {
                // Keep the status before the next await: a caller's
                // select! may drop this future at any await point.
                Some((HelperMsg::Exit(s), _)) => {
                    self.status = Some(s);
                    return Ok(s);
                }
                Some((HelperMsg::Ended { kept, removed }, _)) => {
                    self.note_ended(kept, removed);
                }
                Some(_) => continue,
                None => return Err(AttachError::HelperDied),
            }
        }
    }

    fn note_ended(&mut self, kept: bool, removed: bool) {
        if let Some(status) = self.status {
            self.ended = Some(Ended {
                status,
                kept,
                cgroup_removed: removed,
            });
        }
    }

    /// Sets the pty window size in character cells (`TIOCSWINSZ`); a no-op
    /// without a pty or once the [`PtyMaster`] is dropped.
    /// Errors: [`AttachError::Control`].
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), AttachError> {
        match &self.master {
            Some(m) => m.resize(cols, rows),
            None => Ok(()),
        }
    }

    /// Sends `signal` (1..=64) to the session process via its pidfd. Ok when
    /// it has already exited. Errors: [`AttachError::InvalidRequest`],
    /// [`AttachError::Control`].
    pub fn signal(&self, signal: i32) -> Result<(), AttachError> {
        if !(1..=64).contains(&signal) {
            return Err(AttachError::InvalidRequest(format!("bad signal {signal}")));
        }
        ok_if_gone(sys::pidfd_send_signal(self.pidfd.as_fd(), signal, 0))
    }

    /// Ends the session, whatever ended it; call it on every end (the
    /// session process exited, the client went away, `sessions kill`, a
    /// lock, a grant's expiry or revocation, a time limit):
    ///
    /// - [`End::Normal`]: SIGHUP and SIGCONT to the session process, up to
    ///   `grace` for it to exit, then SIGKILL to it; then every other
    ///   process of the session is killed with its cgroup, or, with
    ///   [`Leftovers::Keep`], left running.
    /// - [`End::Kill`]: every process of the session is killed at once.
    ///
    /// Returns when the processes are gone (at most
    /// [`crate::attach::KILL_WAIT`] after the kill) and the cgroup removed,
    /// or kept. Called again, returns the first result.
    ///
    /// # Errors
    /// [`AttachError::HelperDied`] or [`AttachError::Protocol`] when the
    /// helper did not report the end (the session's processes then die
    /// with the helper's control socket, as on drop).
    pub async fn end(&mut self, end: End) -> Result<Ended, AttachError> {
        if let Some(e) = self.ended {
            return Ok(e);
        }
        let wire = match end {
            End::Kill => WireEnd::Kill,
            End::Normal { grace, leftovers } => {
                if self.status.is_none() {
                    self.signal(libc::SIGHUP)?;
                    self.signal(libc::SIGCONT)?;
                    if tokio::time::timeout(grace, self.wait()).await.is_err() {
                        self.signal(libc::SIGKILL)?;
                    }
                }
                match leftovers {
                    Leftovers::Kill => WireEnd::Kill,
                    Leftovers::Keep => WireEnd::Keep,
                }
            }
        };
        self.control.send(&GatewayMsg::End(wire)).await?;
        loop {
            match self.control.recv().await? {
                Some((HelperMsg::Exit(s), _)) => self.status = Some(s),
                Some((HelperMsg::Ended { kept, removed }, _)) => {
                    self.note_ended(kept, removed);
                    break;
                }
                Some(_) => continue,
                None => return Err(AttachError::HelperDied),
            }
        }
        if let Some(h) = self.helper.as_mut() {
            let _ = h.wait().await;
        }
        self.ended
            .ok_or_else(|| AttachError::Protocol("ended without an exit status".into()))
    }

    /// [`End::Kill`]: every process of the session, at once.
    ///
    /// # Errors
    /// As [`Attached::end`].
    pub async fn kill(&mut self) -> Result<Ended, AttachError> {
        self.end(End::Kill).await
    }

    /// A normal end that kills everything the session started:
    /// [`End::Normal`] with `grace` and [`Leftovers::Kill`]. Returns the
    /// session process's exit status.
    ///
    /// # Errors
    /// As [`Attached::end`].
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, AttachError> {
        let ended = self
            .end(End::Normal {
                grace,
                leftovers: Leftovers::Kill,
            })
            .await?;
        Ok(ended.status)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Closing the control socket (a field, dropped after this) makes
        // the helper kill the session's cgroup; it must outlive the session
        // process to reap it (a process whose parent dies is re-parented to
        // the host's init), so reap it in the background and kill it only if
        // it hangs.
        if let (Some(mut child), Ok(rt)) =
            (self.helper.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move {
                let _ = tokio::time::timeout(DROP_REAP_GRACE, child.wait()).await;
                // Dropping `child` here SIGKILLs it if it is still running.
            });
        }
    }
}
