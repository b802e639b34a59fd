//! Starting a process inside a running container (the security-critical
//! part; see DESIGN.md "Attaching to a container").
//!
//! The gateway (B) never forks itself into a container. [`spawn`] starts a
//! helper (H): this binary re-exec'd from a sealed memfd ([`HelperBinary`]),
//! which enters its [`helper_main`] before any runtime exists, so it is
//! single-threaded. H makes itself non-dumpable, reads the host facts
//! (CapBnd, id maps, cgroups, namespaces), joins the namespaces of the
//! pinned init ([`PinnedInit`]) with one `setns(pidfd)`, forks the session
//! process (C), moves C into the container's cgroup in every hierarchy and
//! relays C's exit status; before the fork it installs the gateway's
//! seccomp deny-list ([`seccomp`]), which C inherits. C allocates its pty
//! from the container's devpts, resolves the login with a bounded parser
//! (never NSS), drops the bounding set and its ids, builds the environment
//! from nothing, closes every fd above 2 and execs the login's shell.
//!
//! All raw syscalls live in `sys.rs`.

mod connect;
mod error;
mod helper;
mod lsm;
pub mod passwd;
mod pin;
pub mod plan;
pub mod procfs;
mod proto;
mod pty;
pub mod seccomp;
mod session;
mod sys;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

pub use error::{AttachError, HelperStep};
pub use pin::{InitWatch, PinnedInit};
pub use pty::{PtyMaster, terminal_size};

use proto::{Control, HelperMsg, WireMode, WirePty, WireRequest};

/// argv[1] that makes the binary run [`helper_main`].
pub const HELPER_ARG: &str = "__attach-helper";

/// How long [`spawn`] waits for the session to start (namespace entry,
/// account lookup, exec) before killing the helper.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// [`plan::MAX_COMMAND_BYTES`], no NUL).
    pub command: Option<String>,
    /// `Some` = allocate a pty from the container's own devpts.
    pub pty: Option<PtyRequest>,
    /// Client variables; only `LANG`, `LANGUAGE`, `LC_*` with printable
    /// values survive ([`plan::build_env`]).
    pub env: Vec<(String, String)>,
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

/// File name of the helper-only binary that [`HelperBinary::sealed_copy_of_helper`]
/// looks for next to the running executable (`src/bin/portcullis-helper.rs`).
pub const HELPER_BINARY_NAME: &str = "portcullis-helper";

/// The helper executable: a sealed memfd copy of a binary (CVE-2019-5736: a
/// container can never reach or overwrite the gateway's binary on disk).
///
/// The attack: container root opens `/proc/<pid>/exe` of a host process
/// that has joined the container (or of its child), and later writes the
/// host binary through that handle. Here that handle can only ever name the
/// memfd: H and C run from it, never from a file on disk, and its seals
/// (`F_SEAL_WRITE|GROW|SHRINK|SEAL`) make every write fail, for root too.
/// runc's `exeseal` and LXC's "rexec" do the same. The copy is made per
/// process that spawns helpers: once per gateway start, once per
/// `portcullis attach` run; [`HelperBinary::sealed_copy_of_helper`] copies
/// the small helper-only binary (about 4 MB, not the 33 MB gateway) to keep
/// that cheap.
///
/// The fd is close-on-exec and numbered >= 10; the helper is exec'd through
/// `/proc/self/fd/<n>` (checked: works for ELF binaries; scripts would not).
#[derive(Debug)]
pub struct HelperBinary {
    memfd: OwnedFd,
}

impl HelperBinary {
    /// Copies `/proc/self/exe` into a sealed memfd. Errors:
    /// [`AttachError::HelperBinary`].
    pub fn sealed_copy_of_current_exe() -> Result<HelperBinary, AttachError> {
        Self::from_path("/proc/self/exe")
    }

    /// The helper for this process: a sealed copy of [`HELPER_BINARY_NAME`]
    /// in the running executable's directory (as `cargo build` and an
    /// install put it), or of the running executable itself (which also
    /// contains the helper) when that file does not exist. The helper file
    /// must be a regular file (not a symlink) with the running executable's
    /// owner and no write permission for group or others; anything else is
    /// refused rather than skipped, since it means the installation was
    /// tampered with. Call once per process (gateway start, CLI run).
    ///
    /// # Errors
    /// [`AttachError::HelperBinary`].
    pub fn sealed_copy_of_helper() -> Result<HelperBinary, AttachError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let err = AttachError::HelperBinary;
        let exe = std::fs::read_link("/proc/self/exe").map_err(err)?;
        let path = exe.with_file_name(HELPER_BINARY_NAME);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::sealed_copy_of_current_exe();
            }
            Err(e) => return Err(err(e)),
        };
        let meta = file.metadata().map_err(err)?;
        let owner = std::fs::metadata("/proc/self/exe").map_err(err)?.uid();
        if !meta.file_type().is_file() || meta.mode() & 0o022 != 0 || meta.uid() != owner {
            return Err(err(std::io::Error::other(format!(
                "{} is not a regular file of uid {owner} without group/other write permission",
                path.display()
            ))));
        }
        Self::from_file(file)
    }

    /// Copies the ELF binary at `path` (which must be this crate's
    /// `portcullis` or `portcullis-helper` binary, whose `main` calls
    /// [`helper_main`]) into a sealed memfd (`F_SEAL_SEAL|SHRINK|GROW|WRITE`,
    /// plus `F_SEAL_EXEC` when the kernel has it). Errors:
    /// [`AttachError::HelperBinary`].
    pub fn from_path(path: impl AsRef<Path>) -> Result<HelperBinary, AttachError> {
        let src = std::fs::File::open(path.as_ref()).map_err(AttachError::HelperBinary)?;
        Self::from_file(src)
    }

    fn from_file(mut src: std::fs::File) -> Result<HelperBinary, AttachError> {
        let err = AttachError::HelperBinary;
        let base = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        let memfd = memfd_create(
            "portcullis-helper",
            base | MFdFlags::from_bits_retain(libc::MFD_EXEC),
        )
        .or_else(|_| memfd_create("portcullis-helper", base))
        .map_err(|e| err(e.into()))?;
        let mut dst = std::fs::File::from(memfd);
        std::io::copy(&mut src, &mut dst).map_err(err)?;
        let memfd = OwnedFd::from(dst);
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        let exec = SealFlag::from_bits_retain(libc::F_SEAL_EXEC);
        if fcntl(
            memfd.as_fd(),
            FcntlArg::F_ADD_SEALS(seals | exec | SealFlag::F_SEAL_SEAL),
        )
        .is_err()
        {
            fcntl(
                memfd.as_fd(),
                FcntlArg::F_ADD_SEALS(seals | SealFlag::F_SEAL_SEAL),
            )
            .map_err(|e| err(e.into()))?;
        }
        let memfd = sys::dup_at_least(memfd.as_fd(), 10).map_err(err)?;
        Ok(HelperBinary { memfd })
    }

    fn exec_path(&self) -> String {
        format!("/proc/self/fd/{}", self.memfd.as_raw_fd())
    }
}

/// The session's I/O, returned by [`spawn`].
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

/// A started session process inside the container. Dropping it kills the
/// session's whole process group and the helper.
#[derive(Debug)]
pub struct Attached {
    /// Always `Some` until dropped.
    helper: Option<Child>,
    control: Control,
    pidfd: OwnedFd,
    pid: i32,
    master: Option<pty::WeakMaster>,
    status: Option<ExitStatus>,
}

// Attached owns non-Debug-friendly types; keep Debug derivable.
impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

fn validate(req: &AttachRequest) -> Result<(), AttachError> {
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

/// Starts the session described by `req` inside the container whose init is
/// `init`, using `helper` as the helper executable. Returns once the shell
/// has been exec'd (or with the structured error of the failed step, e.g.
/// [`AttachError::LoginNotFound`], [`AttachError::ShellNotFound`]), within
/// [`SPAWN_TIMEOUT`].
///
/// Must be awaited on a runtime worker thread (not inside `spawn_blocking`):
/// the helper has `PR_SET_PDEATHSIG` tied to the spawning thread.
pub async fn spawn(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
) -> Result<(Attached, SessionIo), AttachError> {
    spawn_mode(helper, init, req, WireMode::Exec).await
}

/// Like [`spawn`] without a pty, but the session process does not exec:
/// after the same attach sequence (namespaces, cgroups, the login's ids,
/// its home) it serves SFTP on its stdin/stdout with this crate's server
/// ([`crate::sftp`]), inside the container's mount namespace, so paths and
/// symlinks resolve in the container and files belong to the login. Each
/// file transfer is reported as one JSON line
/// ([`crate::sftp::TransferRecord`]) on its stderr. `read_only` refuses
/// every change to the filesystem. `req.command` and `req.pty` must be
/// `None`; the login's shell is not needed.
pub async fn spawn_sftp(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    read_only: bool,
) -> Result<(Attached, SessionIo), AttachError> {
    if req.command.is_some() || req.pty.is_some() {
        return Err(AttachError::InvalidRequest(
            "an SFTP session takes no command and no pty".into(),
        ));
    }
    spawn_mode(helper, init, req, WireMode::Sftp { read_only }).await
}

/// Like [`spawn_sftp`], but the session process serves legacy scp
/// (`scp -t`/`scp -f`, [`crate::scp`]) for `command` on its stdin/stdout,
/// with the same confinement, and reports each file as one
/// [`crate::sftp::TransferRecord`] JSON line on its stderr. `req.command`
/// and `req.pty` must be `None`.
pub async fn spawn_scp(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    command: &crate::scp::ScpCommand,
) -> Result<(Attached, SessionIo), AttachError> {
    if req.command.is_some() || req.pty.is_some() {
        return Err(AttachError::InvalidRequest(
            "an scp session takes no command and no pty".into(),
        ));
    }
    let mode = WireMode::Scp {
        command: command.clone(),
    };
    spawn_mode(helper, init, req, mode).await
}

/// Like [`spawn`] without a pty, but execs the program at `path` (an
/// absolute path inside the container) with `args` directly as the login,
/// not through the login's shell: used for the container's own
/// `sftp-server`. Errors: [`AttachError::ProgramNotFound`] when `path` is
/// not an executable regular file in the container. `req.command` and
/// `req.pty` must be `None`.
pub async fn spawn_program(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    path: &str,
    args: &[String],
) -> Result<(Attached, SessionIo), AttachError> {
    if req.command.is_some() || req.pty.is_some() {
        return Err(AttachError::InvalidRequest(
            "a program session takes no command and no pty".into(),
        ));
    }
    if !path.starts_with('/') || path.len() > 4096 || path.contains('\0') {
        return Err(AttachError::InvalidRequest(
            "the program path must be absolute".into(),
        ));
    }
    let mode = WireMode::Program {
        path: path.to_owned(),
        args: args.to_vec(),
    };
    spawn_mode(helper, init, req, mode).await
}

/// Opens a TCP connection to `addr` from inside the network namespace of
/// the container whose init is `init` (so `127.0.0.1` is the container's
/// loopback), within [`connect::CONNECT_TIMEOUT`]. The helper joins only the
/// network namespace, connects, hands the socket back over `SCM_RIGHTS`
/// and exits; no process runs in the container. A container that shares
/// the host's network namespace is refused. Errors: the helper's step, e.g.
/// [`AttachError::Step`] with `ECONNREFUSED`.
pub async fn connect_in(
    helper: &HelperBinary,
    init: &PinnedInit,
    container: &str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpStream, AttachError> {
    connect::connect_in(helper, init, container, addr).await
}

/// Starts the helper with the pinned init's pidfd as fd 3 and the control
/// socket as fd 4; `piped` gives it stdio pipes (else /dev/null).
fn start_helper(
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
    if !piped {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    } else {
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    }
    sys::install_fixed_fds(&mut cmd, pidfd_src.as_raw_fd(), ctl_src.as_raw_fd());
    let child = cmd.spawn().map_err(AttachError::SpawnHelper)?;
    drop(pidfd_src);
    drop(ctl_src);
    let control = Control::new(ours)?;
    Ok((child, control))
}

async fn spawn_mode(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    mode: WireMode,
) -> Result<(Attached, SessionIo), AttachError> {
    validate(req)?;
    let (mut child, control) = start_helper(helper, init, req.pty.is_none())?;
    let wire = WireRequest {
        mode,
        container: req.container.clone(),
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
    };
    let started = tokio::time::timeout(SPAWN_TIMEOUT, startup(&control, &wire)).await;
    let outcome = match started {
        Ok(r) => r,
        Err(_) => Err(AttachError::Protocol(
            "timed out waiting for the session to start".into(),
        )),
    };
    match outcome {
        Ok((pidfd, pid, master)) => {
            let weak = master.as_ref().map(PtyMaster::downgrade);
            let io = match master {
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
                pidfd,
                pid,
                master: weak,
                status: None,
            };
            Ok((attached, io))
        }
        Err(e) => {
            // The helper exits by itself after an error; make sure and reap it.
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            Err(e)
        }
    }
}

type Started = (OwnedFd, i32, Option<PtyMaster>);

async fn startup(control: &Control, wire: &WireRequest) -> Result<Started, AttachError> {
    control.send_request(wire).await?;
    let mut c: Option<(OwnedFd, i32)> = None;
    let mut master = None;
    loop {
        let Some((msg, mut fds)) = control.recv().await? else {
            return Err(AttachError::HelperDied);
        };
        match msg {
            HelperMsg::Started { pid } if c.is_none() && fds.len() == 1 => {
                c = fds.pop().map(|fd| (fd, pid));
            }
            HelperMsg::Pty if wire.pty.is_some() && master.is_none() && fds.len() == 1 => {
                if let Some(fd) = fds.pop() {
                    master = Some(PtyMaster::new(fd)?);
                }
            }
            HelperMsg::Running => {
                let (pidfd, pid) =
                    c.ok_or_else(|| AttachError::Protocol("running before started".into()))?;
                if wire.pty.is_some() && master.is_none() {
                    return Err(AttachError::Protocol("no pty received".into()));
                }
                return Ok((pidfd, pid, master));
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

impl Attached {
    /// C's pid in the host pid namespace (for logs; use [`Attached::signal`]
    /// to signal it race-free).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the session process and reaps the helper; returns C's exit
    /// status. Cancel-safe; returns the cached status when called again.
    /// Errors: [`AttachError::HelperDied`], [`AttachError::Protocol`].
    pub async fn wait(&mut self) -> Result<ExitStatus, AttachError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let status = loop {
            match self.control.recv().await? {
                Some((HelperMsg::Exit(s), _)) => break Some(s),
                Some(_) => continue,
                None => break None,
            }
        };
        // Keep the status before the next await: if the caller's select!
        // drops this future while the helper is reaped, the status is not
        // lost (the message was already consumed).
        self.status = status;
        if let Some(h) = self.helper.as_mut() {
            let _ = h.wait().await;
        }
        status.ok_or(AttachError::HelperDied)
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

    /// Sends `signal` to C's process group (C is a session leader). Uses
    /// `PIDFD_SIGNAL_PROCESS_GROUP` (race-free; Linux 6.9+), falling back to
    /// `kill(-pid)` while C is known to be unreaped.
    fn signal_group(&self, signal: i32) -> Result<(), AttachError> {
        match sys::pidfd_send_signal(self.pidfd.as_fd(), signal, sys::PIDFD_SIGNAL_PROCESS_GROUP) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.status.is_none() => {
                ok_if_gone(sys::kill(-self.pid, signal))
            }
            r => ok_if_gone(r),
        }
    }

    /// SIGHUP (and SIGCONT) to the session's process group, waits up to
    /// `grace` for C to exit, then SIGKILLs the group (also after a timely
    /// exit, for stragglers) and reaps. Returns C's exit status.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, AttachError> {
        if self.status.is_none() {
            self.signal_group(libc::SIGHUP)?;
            self.signal_group(libc::SIGCONT)?;
        }
        let r = tokio::time::timeout(grace, self.wait()).await;
        self.signal_group(libc::SIGKILL)?;
        match r {
            Ok(r) => r,
            Err(_) => self.wait().await,
        }
    }
}

fn ok_if_gone(r: std::io::Result<()>) -> Result<(), AttachError> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r.map_err(AttachError::Control),
    }
}

/// How long a dropped [`Attached`] lets its helper reap the session before
/// the helper is killed.
const DROP_REAP_GRACE: Duration = Duration::from_secs(5);

impl Drop for Attached {
    fn drop(&mut self) {
        // Kill the session's whole process group now. The helper must outlive
        // C to reap it: a process whose parent dies is re-parented to the
        // *parent's* pid-namespace reaper, i.e. the host's init. So let the
        // helper finish (it also kills the group when the control socket
        // closes) and reap it in the background; kill it only if it hangs.
        let _ = self.signal_group(libc::SIGKILL);
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

/// Entry point of the helper process: the binary's `main()` calls this
/// FIRST, before any tokio runtime or tracing is started, when
/// `argv[1] == HELPER_ARG`. Never returns. Exits 0 after relaying the
/// session's status, 1 after reporting an error, 120-126 when it could not
/// even report.
pub fn helper_main() -> ! {
    helper::main()
}

#[cfg(test)]
mod tests;
