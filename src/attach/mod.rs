//! Starting a process inside a running container (the security-critical
//! part; see DESIGN.md "Attaching to a container" and README "Security
//! model"). Knows nothing of SSH: it takes a login, a command, a PTY size
//! and gives back byte streams, an exit status and an end.
//!
//! # Layout: three processes
//!
//! - **The gateway (B)**, `gateway/`: multi-threaded; pins the init
//!   ([`PinnedInit`]), starts the helper from a sealed memfd
//!   ([`HelperBinary`]), checks every fd it is handed, holds the session
//!   ([`Attached`]) and ends it ([`Attached::end`]). Never forks itself
//!   into a container.
//! - **The helper (H)**, `helper/`: this binary re-exec'd, single-threaded
//!   from its first instruction ([`helper_main`]). Does the host side and
//!   never enters the container: checks the init again, reads what the
//!   session must get (capabilities, `no_new_privs`, seccomp filters,
//!   rlimits, `oom_score_adj`, LSM label), creates the session's own cgroup,
//!   and creates the *entering process* (I) in it, which closes every host
//!   handle, joins the init's namespaces, a fresh session keyring, the
//!   filters and the init's capabilities, and creates the session process
//!   as H's child. H relays the session and kills (or keeps) its cgroup at
//!   the end. Host handles live only in H, which nothing in the container
//!   can see.
//! - **The session process (C)**, `session_process/`: in the container
//!   from birth, with nothing but fds 0-2 and a socket to H; resolves the
//!   login in the container's own files (never NSS), refuses what the
//!   decision did not allow, takes its PTY from the container's devpts,
//!   becomes the login and execs its shell (or serves SFTP/scp, or connects
//!   a forward).
//!
//! Shared by the three: the wire protocol (`proto.rs`), the pure parsers
//! ([`procfs`], [`passwd`], [`plan`]), the account reader (`accounts.rs`),
//! the devpts checks (`devpts.rs`) and every raw syscall and `unsafe` block
//! (`sys.rs`).

mod accounts;
mod devpts;
mod error;
mod gateway;
mod helper;
pub mod passwd;
pub mod plan;
pub mod procfs;
mod proto;
mod request;
mod session_process;
mod sys;

pub use error::{AttachError, HelperStep};
pub use gateway::attached::{Attached, SessionIo};
pub use gateway::binary::{HELPER_BINARY_NAME, HelperBinary};
pub use gateway::connect::{CONNECT_TIMEOUT, ConnectRequest};
pub use gateway::login::resolve_login;
pub use gateway::pin::{InitWatch, PinnedInit};
pub use gateway::pty::{PtyMaster, terminal_size};
pub use gateway::spawn::{HELPER_ARG, SPAWN_TIMEOUT};
pub use helper::KILL_WAIT;
pub use request::{
    AttachOptions, AttachRequest, End, Ended, ExitStatus, Leftovers, LoginIds, PtyRequest,
    SessionKind, UnreproducibleSeccomp,
};

use proto::WireMode;

/// Starts a session of `kind` described by `req` inside the container whose
/// init is `init`, with what the decision allowed in `options`, using
/// `helper` as the helper executable. Returns once the session process
/// exec'd (or serves), within [`SPAWN_TIMEOUT`], with the ids it runs as
/// ([`Attached::ids`]); end it with [`Attached::end`] on every kind of end.
///
/// Must be awaited on a runtime worker thread (not inside
/// `spawn_blocking`): the helper has `PR_SET_PDEATHSIG` tied to the
/// spawning thread until the session runs.
///
/// # Errors
/// [`AttachError::InvalidRequest`] (a command or PTY with a kind that takes
/// none, a relative program path), the structured error of the step that
/// failed ([`AttachError::LoginNotFound`], [`AttachError::ShellNotFound`],
/// [`AttachError::Uid0Refused`], [`AttachError::LoginChanged`],
/// [`AttachError::LsmLabelUnsupported`],
/// [`AttachError::SeccompUnreproducible`], [`AttachError::ContainerFrozen`],
/// [`AttachError::InitChanged`], [`AttachError::Helper`]), or a protocol
/// error.
pub async fn start(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    kind: &SessionKind,
    options: &AttachOptions,
) -> Result<(Attached, SessionIo), AttachError> {
    let plain = |what: &str| {
        if req.command.is_some() || req.pty.is_some() {
            Err(AttachError::InvalidRequest(format!(
                "{what} takes no command and no pty"
            )))
        } else {
            Ok(())
        }
    };
    let mode = match kind {
        SessionKind::Shell => WireMode::Exec,
        SessionKind::Sftp { read_only } => {
            plain("an SFTP session")?;
            WireMode::Sftp {
                read_only: *read_only,
            }
        }
        SessionKind::Scp(command) => {
            plain("an scp session")?;
            WireMode::Scp {
                command: command.clone(),
            }
        }
        SessionKind::Program { path, args } => {
            plain("a program session")?;
            if !path.starts_with('/') || path.len() > 4096 || path.contains('\0') {
                return Err(AttachError::InvalidRequest(
                    "the program path must be absolute".into(),
                ));
            }
            WireMode::Program {
                path: path.clone(),
                args: args.clone(),
            }
        }
    };
    gateway::spawn::start_session(helper, init, req, mode, options).await
}

/// [`start`] of the login's shell (or `shell -c command`) with
/// [`AttachOptions::name_only`]: uid 0 allowed. Kept for callers that
/// decided on the login's name; new callers use [`start`] with the
/// decision's [`AttachOptions`].
///
/// # Errors
/// As [`start`].
pub async fn spawn(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
) -> Result<(Attached, SessionIo), AttachError> {
    let options = AttachOptions::name_only();
    start(helper, init, req, &SessionKind::Shell, &options).await
}

/// [`start`] of [`SessionKind::Sftp`] with [`AttachOptions::name_only`]:
/// the session process serves SFTP itself, inside the container's mount
/// namespace as the login, one [`crate::sftp::TransferRecord`] JSON line
/// per file on its stderr. `req.command` and `req.pty` must be `None`.
///
/// # Errors
/// As [`start`].
pub async fn spawn_sftp(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    read_only: bool,
) -> Result<(Attached, SessionIo), AttachError> {
    let kind = SessionKind::Sftp { read_only };
    start(helper, init, req, &kind, &AttachOptions::name_only()).await
}

/// [`start`] of [`SessionKind::Scp`] with [`AttachOptions::name_only`].
/// `req.command` and `req.pty` must be `None`.
///
/// # Errors
/// As [`start`].
pub async fn spawn_scp(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    command: &crate::scp::ScpCommand,
) -> Result<(Attached, SessionIo), AttachError> {
    let kind = SessionKind::Scp(command.clone());
    start(helper, init, req, &kind, &AttachOptions::name_only()).await
}

/// [`start`] of [`SessionKind::Program`] with [`AttachOptions::name_only`]:
/// execs `path` with `args` as the login (the container's own
/// `sftp-server`). Errors: [`AttachError::ProgramNotFound`] when `path` is
/// not an executable regular file in the container. `req.command` and
/// `req.pty` must be `None`.
///
/// # Errors
/// As [`start`].
pub async fn spawn_program(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &AttachRequest,
    path: &str,
    args: &[String],
) -> Result<(Attached, SessionIo), AttachError> {
    let kind = SessionKind::Program {
        path: path.to_owned(),
        args: args.to_vec(),
    };
    start(helper, init, req, &kind, &AttachOptions::name_only()).await
}

/// Opens a TCP connection for a forward (`ssh -L`) from inside the
/// container whose init is `init`, as `req.login` (its uid, gid and groups
/// in the container's user namespace, from a cgroup below the container's,
/// under its seccomp filter), so the container's own egress rules apply
/// (review finding 4). `127.0.0.1` is the container's loopback. Returns the
/// stream and the ids it was made as, within [`CONNECT_TIMEOUT`]. A
/// container that shares the host's network namespace is refused.
///
/// # Errors
/// As [`start`]; [`AttachError::Helper`] with step `connect` and the
/// errno (`ECONNREFUSED`: nothing listens, or the container's rules reject
/// the login) when the connection fails.
pub async fn connect_as(
    helper: &HelperBinary,
    init: &PinnedInit,
    req: &ConnectRequest,
    options: &AttachOptions,
) -> Result<(tokio::net::TcpStream, LoginIds), AttachError> {
    gateway::connect::connect(helper, init, req, options).await
}

/// [`connect_as`] the container's `root` with
/// [`AttachOptions::name_only`]. Kept for callers without a login; new
/// callers use [`connect_as`] with the session's login.
///
/// # Errors
/// As [`connect_as`].
pub async fn connect_in(
    helper: &HelperBinary,
    init: &PinnedInit,
    container: &str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpStream, AttachError> {
    let req = ConnectRequest {
        container: container.to_owned(),
        login: "root".to_owned(),
        addr,
    };
    let (stream, _) = connect_as(helper, init, &req, &AttachOptions::name_only()).await?;
    Ok(stream)
}

/// Entry point of the helper process: the binary's `main()` calls this
/// FIRST, before any tokio runtime or tracing is started, when
/// `argv[1] == HELPER_ARG`. Never returns. Exits 0 after relaying the
/// session's end, 1 after reporting an error, 120-126 when it could not
/// even report.
pub fn helper_main() -> ! {
    helper::main()
}
