//! Errors of the attach path, and the steps that can fail inside the helper
//! (H), the process it forks to enter the container (I) and the session
//! process (C). Owns the error types only; never decides anything.

use serde::{Deserialize, Serialize};

/// A step executed by the helper (H) or the session process (C). Reported
/// back to the gateway in [`AttachError::Helper`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperStep {
    /// Reading the JSON request from the control socket.
    ReadRequest,
    /// `PR_SET_DUMPABLE 0` / `PR_SET_PDEATHSIG`.
    Prctl,
    /// Closing inherited fds (`close_range`).
    CloseFds,
    /// Claiming the pidfd / control socket at fds 3 and 4.
    InheritedFds,
    /// Re-checking that the container init is alive.
    InitAlive,
    /// Reading host facts from `/proc/<init>` (status, maps, cgroup, ns).
    HostFacts,
    /// Opening the container's cgroup directories in the host cgroupfs.
    OpenCgroups,
    /// `setns(pidfd, ...)`.
    Setns,
    /// `fork()` of the session process.
    Fork,
    /// Moving the session process into the container's cgroups.
    JoinCgroup,
    /// Installing the gateway's seccomp deny-list (`helper/seccomp.rs`).
    Seccomp,
    /// Sending a message or fd to the gateway.
    Report,
    /// Resetting signal dispositions, `setsid`.
    Session,
    /// Opening and verifying the container's `/dev/pts/ptmx`.
    OpenPty,
    /// Making the pty the controlling terminal and stdio.
    SetupTty,
    /// Reading the container's `/etc/passwd` / `/etc/group`.
    ReadAccounts,
    /// Dropping capabilities from the bounding, permitted and effective sets.
    DropCaps,
    /// Opening or writing the AppArmor exec attribute.
    Apparmor,
    /// `setgroups`/`setresgid`/`setresuid`.
    SwitchUser,
    /// `chdir` to the home directory and verifying the cwd.
    Chdir,
    /// `execve` of the shell.
    Exec,
    /// Waiting for the session process.
    Wait,
    /// Connect mode: the TCP connection inside the container's network
    /// namespace.
    Connect,
    /// Creating, killing or removing the session's own cgroup.
    SessionCgroup,
    /// Copying the init's seccomp filter (`PTRACE_SECCOMP_GET_FILTER`).
    CopySeccomp,
    /// Setting the init's rlimits and `oom_score_adj` on the session.
    Limits,
    /// Joining a fresh session keyring (`KEYCTL_JOIN_SESSION_KEYRING`).
    Keyring,
    /// Reading the init's LSM labels and checking they can be reproduced.
    Lsm,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Checking the pty master received from the session process.
    CheckPty,
}

/// Everything that can go wrong while attaching. Internal variants carry the
/// cause as `#[source]`; use [`AttachError::user_message`] for text shown to
/// the ssh user.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The request itself is unusable (bad login name, NUL in the command,
    /// bad env, zero-sized pty...).
    #[error("invalid attach request: {0}")]
    InvalidRequest(String),
    /// The pid does not exist (any more): the container is not running.
    #[error("container init process does not exist")]
    ContainerNotRunning,
    /// The pinned pid is not the expected container init (other cgroup,
    /// other start time, or it died while being checked).
    #[error("process is not the expected container init: {0}")]
    InitChanged(String),
    /// `pidfd_open` failed for another reason than ESRCH.
    #[error("pidfd_open failed")]
    PidfdOpen(#[source] std::io::Error),
    /// Reading `/proc/<pid>/...` on the host failed.
    #[error("reading {path} failed")]
    Procfs {
        /// The procfs path that failed.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Making the sealed memfd copy of the helper binary failed.
    #[error("creating the sealed helper binary failed")]
    HelperBinary(#[source] std::io::Error),
    /// Creating the control socketpair or duplicating fds failed.
    #[error("creating the helper control channel failed")]
    ControlChannel(#[source] std::io::Error),
    /// Spawning the helper process failed.
    #[error("spawning the attach helper failed")]
    SpawnHelper(#[source] std::io::Error),
    /// The helper protocol was violated or the socket failed.
    #[error("attach helper protocol error: {0}")]
    Protocol(String),
    /// The helper exited before reporting what the session process did.
    #[error("attach helper exited unexpectedly")]
    HelperDied,
    /// A step inside the helper / session process failed.
    #[error("attach helper step {step:?} failed")]
    Helper {
        /// The failed step.
        step: HelperStep,
        /// The cause (errno when there was one).
        #[source]
        source: std::io::Error,
    },
    /// The container's cgroup is frozen (`lxc-freeze`, cgroup freezer).
    #[error("the container is frozen")]
    ContainerFrozen,
    /// The login does not exist in the container's `/etc/passwd`.
    #[error("login {login:?} not found in the container")]
    LoginNotFound {
        /// The requested login.
        login: String,
    },
    /// The login's shell does not exist (or is not executable) in the container.
    #[error("shell {path:?} not found in the container")]
    ShellNotFound {
        /// The shell path from `/etc/passwd`.
        path: String,
    },
    /// The program to run (e.g. the container's own `sftp-server`) does
    /// not exist or is not executable in the container.
    #[error("program {path:?} not found in the container")]
    ProgramNotFound {
        /// The path inside the container.
        path: String,
    },
    /// The login's uid or gid has no mapping in the container's user namespace.
    #[error("uid/gid {id} of the login is not mapped in the container")]
    IdNotMapped {
        /// The unmapped id.
        id: u32,
    },
    /// Signalling or resizing the session failed.
    #[error("controlling the session failed")]
    Control(#[source] std::io::Error),
    /// The login resolves to uid 0 in the container and the decision did
    /// not allow uid 0 ([`super::AttachOptions::allow_uid0`]): `root`, or
    /// an alias such as `toor:x:0:0`.
    #[error("login {login:?} is uid 0 in the container, which was not allowed")]
    Uid0Refused {
        /// The requested login.
        login: String,
    },
    /// The container's files resolve the login to other ids than those the
    /// decision was made for ([`super::AttachOptions::expected`]).
    #[error("login {login:?} changed in the container since the decision: {detail}")]
    LoginChanged {
        /// The requested login.
        login: String,
        /// Which ids differ.
        detail: String,
    },
    /// The init runs under an LSM label the gateway cannot give the session
    /// (SELinux, Smack, or an AppArmor label it cannot write): refused
    /// rather than run the session unconfined.
    #[error("the container's init has the LSM label {label:?}, which the session cannot get")]
    LsmLabelUnsupported {
        /// The init's label.
        label: String,
    },
    /// The init runs under a seccomp filter that could not be copied, and
    /// [`super::UnreproducibleSeccomp::Refuse`] applies.
    #[error("the container's seccomp filter cannot be given to the session: {reason}")]
    SeccompUnreproducible {
        /// Why it could not be copied.
        reason: String,
    },
}

impl AttachError {
    /// One line safe to show to the ssh user: names the container-side
    /// problem but no host internals (paths, errnos, pids).
    pub fn user_message(&self) -> String {
        match self {
            AttachError::InvalidRequest(_) => "invalid session request".to_owned(),
            AttachError::ContainerNotRunning => "the container is not running".to_owned(),
            AttachError::InitChanged(_) => {
                "the container was restarted or stopped; try again".to_owned()
            }
            AttachError::ContainerFrozen => {
                "the container is frozen; try again once it is thawed".to_owned()
            }
            AttachError::LoginNotFound { login } => {
                format!("user {login:?} does not exist in the container")
            }
            AttachError::ShellNotFound { path } => {
                format!("the login shell {path:?} does not exist in the container")
            }
            AttachError::ProgramNotFound { path } => {
                format!("the container has no executable {path:?}")
            }
            AttachError::IdNotMapped { .. } => {
                "the user's ids are not mapped in the container".to_owned()
            }
            AttachError::Helper {
                step: HelperStep::ReadAccounts,
                ..
            } => "the container's /etc/passwd or /etc/group is unreadable".to_owned(),
            AttachError::Helper {
                step: HelperStep::Chdir,
                ..
            } => "cannot enter a working directory in the container".to_owned(),
            AttachError::Helper {
                step: HelperStep::Exec,
                ..
            } => "the shell could not be started in the container".to_owned(),
            AttachError::Helper {
                step: HelperStep::Connect,
                source,
            } => format!("the connection inside the container failed: {source}"),
            AttachError::Uid0Refused { login } => {
                format!("{login:?} is root (uid 0) in the container, which you may not use")
            }
            AttachError::LoginChanged { login, .. } => {
                format!("the account {login:?} changed in the container; try again")
            }
            AttachError::LsmLabelUnsupported { .. } => {
                "the container's security label cannot be applied to sessions".to_owned()
            }
            AttachError::SeccompUnreproducible { .. } => {
                "the container's seccomp filter cannot be applied to sessions".to_owned()
            }
            _ => "internal error while entering the container".to_owned(),
        }
    }
}

/// What the helper reports for a failed step (the wire form).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireError {
    /// A generic step failure with errno (0 = none) and a short detail.
    Step {
        step: HelperStep,
        errno: i32,
        detail: String,
    },
    LoginNotFound {
        login: String,
    },
    ShellNotFound {
        path: String,
    },
    ProgramNotFound {
        path: String,
    },
    IdNotMapped {
        id: u32,
    },
    InitChanged {
        detail: String,
    },
    InvalidRequest {
        detail: String,
    },
    ContainerFrozen,
    Uid0Refused {
        login: String,
    },
    LoginChanged {
        login: String,
        detail: String,
    },
    LsmLabelUnsupported {
        label: String,
    },
    SeccompUnreproducible {
        reason: String,
    },
}

impl WireError {
    /// A step failure from an io error.
    pub(crate) fn step(step: HelperStep, err: &std::io::Error) -> WireError {
        WireError::Step {
            step,
            errno: err.raw_os_error().unwrap_or(0),
            detail: err.to_string(),
        }
    }

    /// A step failure from an errno.
    pub(crate) fn errno(step: HelperStep, errno: nix::errno::Errno) -> WireError {
        WireError::Step {
            step,
            errno: errno as i32,
            detail: errno.desc().to_owned(),
        }
    }
}

impl From<WireError> for AttachError {
    fn from(w: WireError) -> AttachError {
        match w {
            WireError::Step {
                step,
                errno,
                detail,
            } => {
                let source = if errno > 0 {
                    std::io::Error::from_raw_os_error(errno)
                } else {
                    std::io::Error::other(detail)
                };
                AttachError::Helper { step, source }
            }
            WireError::LoginNotFound { login } => AttachError::LoginNotFound { login },
            WireError::ShellNotFound { path } => AttachError::ShellNotFound { path },
            WireError::ProgramNotFound { path } => AttachError::ProgramNotFound { path },
            WireError::IdNotMapped { id } => AttachError::IdNotMapped { id },
            WireError::InitChanged { detail } => AttachError::InitChanged(detail),
            WireError::InvalidRequest { detail } => AttachError::InvalidRequest(detail),
            WireError::ContainerFrozen => AttachError::ContainerFrozen,
            WireError::Uid0Refused { login } => AttachError::Uid0Refused { login },
            WireError::LoginChanged { login, detail } => {
                AttachError::LoginChanged { login, detail }
            }
            WireError::LsmLabelUnsupported { label } => AttachError::LsmLabelUnsupported { label },
            WireError::SeccompUnreproducible { reason } => {
                AttachError::SeccompUnreproducible { reason }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn user_messages_hide_internals() {
        let e = AttachError::Procfs {
            path: "/proc/123/status".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!e.user_message().contains("/proc"));
        let e: AttachError = WireError::LoginNotFound {
            login: "bob".into(),
        }
        .into();
        assert!(matches!(e, AttachError::LoginNotFound { .. }));
        assert!(e.user_message().contains("bob"));
    }

    #[test]
    fn wire_error_roundtrip() {
        let w = WireError::errno(HelperStep::Setns, nix::errno::Errno::EPERM);
        let s = serde_json::to_string(&w).unwrap();
        let back: WireError = serde_json::from_str(&s).unwrap();
        assert_eq!(w, back);
        match AttachError::from(back) {
            AttachError::Helper { step, source } => {
                assert_eq!(step, HelperStep::Setns);
                assert_eq!(source.raw_os_error(), Some(libc::EPERM));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
