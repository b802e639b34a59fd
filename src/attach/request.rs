//! What the gateway asks of an attach and what it gets back: the request
//! (login, command, PTY), what the access decision allowed (uid 0, the ids
//! it was made for), how the session ended. Plain data: no I/O here, and
//! nothing that knows SSH.

use serde::{Deserialize, Serialize};

/// A pty requested by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtyRequest {
    /// `TERM` for the session (1..=64 bytes of `[A-Za-z0-9._+-]`; otherwise
    /// `TERM` is left unset).
    pub term: String,
    /// Width in character cells (must be > 0).
    pub cols: u16,
    /// Height in character cells (must be > 0).
    pub rows: u16,
}

/// What to start inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// Container name, for messages and logs only.
    pub container: String,
    /// Unix account inside the container, resolved in its `/etc/passwd`.
    pub login: String,
    /// `None` = login shell; `Some(cmd)` = `shell -c cmd` (at most
    /// [`super::plan::MAX_COMMAND_BYTES`], no NUL).
    pub command: Option<String>,
    /// `Some` = allocate a pty from the container's own devpts.
    pub pty: Option<PtyRequest>,
    /// Client variables; only `LANG`, `LANGUAGE`, `LC_*` with printable
    /// values survive ([`super::plan::build_env`]).
    pub env: Vec<(String, String)>,
}

/// What the session process does once it is the login inside the
/// container (see [`super::start`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// The login's shell, or `shell -c command` ([`AttachRequest::command`]).
    Shell,
    /// This crate's SFTP server ([`crate::sftp`]) on stdin/stdout, served
    /// by the session process itself (no exec); one
    /// [`crate::sftp::TransferRecord`] JSON line per file on stderr.
    /// `read_only` refuses every change. No command, no pty.
    Sftp {
        /// Refuse every request that would change the filesystem.
        read_only: bool,
    },
    /// Legacy scp (`scp -t`/`scp -f`, [`crate::scp`]) served the same way.
    /// No command, no pty.
    Scp(crate::scp::ScpCommand),
    /// Exec `path` (absolute, inside the container) with `args` directly,
    /// not through the login's shell (the container's own `sftp-server`).
    /// No command, no pty.
    Program {
        /// Absolute path inside the container (at most 4096 bytes).
        path: String,
        /// Arguments after argv\[0\].
        args: Vec<String>,
    },
}

/// A login as the container's `/etc/passwd` and `/etc/group` resolve it
/// ([`super::resolve_login`]); the kernel runs uids, so policy and audit
/// should see these numbers, not only the name (issue 12 point 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginIds {
    /// The login name that was resolved.
    pub login: String,
    /// Its uid, in the container's user namespace.
    pub uid: u32,
    /// Its primary gid, in the container's user namespace.
    pub gid: u32,
    /// Every group the session gets: the primary gid first, then each
    /// group of `/etc/group` listing the login (at most
    /// [`super::passwd::MAX_GROUPS`]).
    pub groups: Vec<u32>,
}

/// What to do when the container's init runs under a seccomp filter that
/// cannot be copied to the session (the gateway itself runs under seccomp,
/// ptrace of the init is refused, the kernel lacks
/// `PTRACE_SECCOMP_GET_FILTER`). Config `attach.unreproducible_seccomp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreproducibleSeccomp {
    /// Refuse the session (default): it could make calls the init cannot.
    #[default]
    Refuse,
    /// Run it under the gateway's deny-list only (`helper/seccomp.rs`).
    DenyListOnly,
}

/// What the access decision allowed, enforced again by the session process
/// itself (defence in depth) and the confinement choices of the gateway's
/// configuration. `Default` is the strict choice: uid 0 refused, copying
/// the init's seccomp filter required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// The decision allowed uid 0. When `false`, a login that the
    /// container resolves to uid 0 (`root`, or an alias such as
    /// `toor:x:0:0`) is refused with [`super::AttachError::Uid0Refused`].
    pub allow_uid0: bool,
    /// The ids the decision was made for ([`super::resolve_login`]). When
    /// set, the session is refused with [`super::AttachError::LoginChanged`]
    /// if the container's files resolve the login differently by the time
    /// the session starts (a rewrite between decision and start).
    pub expected: Option<LoginIds>,
    /// See [`UnreproducibleSeccomp`].
    pub unreproducible_seccomp: UnreproducibleSeccomp,
}

impl AttachOptions {
    /// The options behind [`super::spawn`] and the other calls that take
    /// none: uid 0 allowed (those callers decided on the name alone), the
    /// init's seccomp filter copied or the session refused.
    pub fn name_only() -> AttachOptions {
        AttachOptions {
            allow_uid0: true,
            expected: None,
            unreproducible_seccomp: UnreproducibleSeccomp::Refuse,
        }
    }
}

/// How a session process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code (0..=255).
    Code(i32),
    /// Killed by a signal.
    Signal {
        /// The signal number.
        signal: i32,
        /// True when a core dump was written.
        core_dumped: bool,
    },
}

/// What happens to the processes a session started once its session
/// process has ended normally ([`End::Normal`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Leftovers {
    /// Killed with the session's cgroup (default; logind's
    /// `KillUserProcesses=yes`).
    #[default]
    Kill,
    /// Left running in the session's cgroup (`nohup ./job &` habits), which
    /// a later session into the same container removes once it is empty. Only ever for a normal
    /// end: a kill, lock, expiry or revocation always kills.
    Keep,
}

/// How a session is ended ([`super::Attached::end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A normal end (the client went away, or the session process already
    /// exited): SIGHUP and SIGCONT to the session process, up to `grace`
    /// for it to exit, then SIGKILL to it; then the session's other
    /// processes are killed, or kept with [`Leftovers::Keep`].
    Normal {
        /// How long the session process may take to exit after SIGHUP.
        grace: std::time::Duration,
        /// What happens to the rest.
        leftovers: Leftovers,
    },
    /// Kill, lock, expiry, revocation: every process of the session is
    /// killed at once (`cgroup.kill`).
    Kill,
}

/// What [`super::Attached::end`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// How the session process ended.
    pub status: ExitStatus,
    /// Processes were left running on purpose ([`Leftovers::Keep`]).
    pub kept: bool,
    /// The session's cgroup is gone. `false` when kept, or when a process
    /// would not die within [`super::KILL_WAIT`] (a later session removes
    /// the cgroup once it is empty).
    pub cgroup_removed: bool,
}
