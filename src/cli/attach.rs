//! `portcullis attach CONTAINER [--login L] [-- CMD...]`: an operator on the
//! host enters a container through the same helper as SSH sessions, without
//! SSH or policy (host root is already past every policy). The session is
//! audited, gets a session row and a recording like an SSH session, with
//! the principal `host:uid=N`.
//!
//! With a terminal on stdin the session gets a pty from the container's
//! devpts (the host terminal is put in raw mode and restored); otherwise
//! plain pipes. CMD words are joined with spaces and run by the login's
//! shell with `-c`, as `ssh` does. The exit status is passed through
//! (128 + N for a death by signal N).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{Context, bail};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::attach::{
    self, AttachRequest, Attached, ExitStatus, HelperBinary, InitWatch, PinnedInit, PtyRequest,
    SessionIo,
};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::{Config, valid_name};
use crate::inventory::{ContainerState, Inventory};
use crate::session::record::{RecordStart, SessionRecord};
use crate::store::Store;

/// Bytes copied per read.
const CHUNK_BYTES: usize = 32 * 1024;

/// Restores the host terminal's mode when dropped.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).context("cannot read the terminal mode")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("cannot set raw mode")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// Runs the subcommand. Ends the process itself (see below) and only
/// returns on errors before the session started.
pub(crate) async fn attach(
    config: Config,
    container: String,
    login: Option<String>,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let login = login.unwrap_or_else(|| config.default_login.clone());
    if !valid_name(&container) || !valid_name(&login) {
        bail!("invalid container or login name");
    }
    let command = (!command.is_empty()).then(|| command.join(" "));
    crate::app::create_private_dir(&config.state_dir)?;
    crate::app::create_private_dir(&config.recordings_dir())?;
    // The lookup (the LXC monitor's socket) and opening the store (a
    // connection, the schema check) are independent: overlap them.
    let inventory = Inventory::new(&config);
    let database_url = config.database_url();
    let (found, store) = tokio::join!(inventory.find(&container), Store::open(&database_url));
    let (found, store) = (found?, store?);
    let init_pid = match found.state {
        ContainerState::Running { init_pid } => init_pid,
        ContainerState::NotRunning(s) => {
            bail!(
                "the container {container} is {} (not running)",
                s.to_lowercase()
            )
        }
    };
    let init = PinnedInit::pin(init_pid, &found.cgroup, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.user_message()))?;

    let audit = AuditLog::new(store.clone());
    let principal = format!("host:uid={}", nix::unistd::getuid());
    let pty = std::io::stdin().is_terminal().then(|| {
        let (cols, rows) = attach::terminal_size(std::io::stdin().as_fd()).unwrap_or((80, 24));
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        PtyRequest { term, cols, rows }
    });
    // The sealed copy of the helper (a few MB, ~1 ms) has no side effect:
    // make it on a blocking thread while the record is opened.
    let helper = tokio::task::spawn_blocking(HelperBinary::sealed_copy_of_helper);
    // Audit before the action: the recording, the session row and its
    // start event exist before the helper does.
    let start = RecordStart {
        principal: &principal,
        email: None,
        client_addr: "local",
        container: &container,
        login: &login,
        command: command.as_deref(),
        pty: pty.as_ref(),
        term_in_header: false,
        grant_id: None,
        record_input: false,
        index: false,
    };
    let mut record = SessionRecord::open(&audit, &store, &config, &start).await?;
    let helper = match helper.await.context("helper copy task")? {
        Ok(h) => h,
        Err(e) => {
            record.fail(e.to_string()).await;
            bail!("{}", e.user_message());
        }
    };
    let request = AttachRequest {
        container: container.clone(),
        login,
        command,
        pty,
        env: Vec::new(),
    };
    let started = match init.watch() {
        Ok(w) => attach::spawn(&helper, &init, &request)
            .await
            .map(|(a, io)| (w, a, io)),
        Err(e) => Err(e),
    };
    let (watch, attached, io) = match started {
        Ok(s) => s,
        Err(e) => {
            record.fail(e.to_string()).await;
            bail!("{}", e.user_message());
        }
    };

    let (exit, stopped) = run_io(attached, io, &mut record, &watch).await?;
    if stopped {
        eprintln!("\r\nportcullis: session ended: the container {container} stopped.\r");
        record
            .audit(AuditEvent::ContainerStopped {
                container: container.clone(),
            })
            .await?;
    }
    let code = match exit {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal { signal, .. } => 128 + signal,
    };
    record.close(Some(exit)).await;
    // No `store.close()`: every write above is committed (SQLite WAL), and
    // closing the last connection would checkpoint the WAL into the
    // database file and delete it (two fsyncs now, and a fresh WAL with
    // another fsync on the next run: ~10 ms per run). The WAL is
    // checkpointed by later writers (automatically at 1000 pages) and by
    // the gateway.
    drop(store);
    // tokio's stdin reader is a blocking thread that a runtime shutdown
    // would wait for (until the operator presses a key): leave now, with
    // everything recorded and the terminal restored.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code & 0xff)
}

/// Copies the terminal or pipes to and from the session until it exits;
/// returns its status and whether the container stopped.
async fn run_io(
    mut attached: Attached,
    io: SessionIo,
    recorder: &mut SessionRecord,
    init: &InitWatch,
) -> anyhow::Result<(ExitStatus, bool)> {
    let mut stdout = tokio::io::stdout();
    let mut stderr_out = tokio::io::stderr();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut err_buf = vec![0u8; CHUNK_BYTES];
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let (mut out, mut err, _raw, stdin_task): (Reader, Reader, Option<RawMode>, _) = match io {
        SessionIo::Pty(master) => {
            let raw = RawMode::enter()?;
            let (r, w) = tokio::io::split(master);
            let task = tokio::spawn(copy_stdin(w));
            (Some(Box::new(r)), None, Some(raw), task)
        }
        SessionIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let task = tokio::spawn(copy_stdin(stdin));
            (Some(Box::new(stdout)), Some(Box::new(stderr)), None, task)
        }
    };
    let mut exit = None;
    let mut stopped = false;
    while exit.is_none() || out.is_some() || err.is_some() {
        tokio::select! {
            n = read_opt(&mut out, &mut buf) => match n {
                Some(n) => {
                    recorder.output(&buf[..n]).await.map_err(|_| anyhow::anyhow!("the session recording failed"))?;
                    stdout.write_all(&buf[..n]).await?;
                    stdout.flush().await?;
                }
                None => out = None,
            },
            n = read_opt(&mut err, &mut err_buf) => match n {
                Some(n) => {
                    recorder.output(&err_buf[..n]).await.map_err(|_| anyhow::anyhow!("the session recording failed"))?;
                    stderr_out.write_all(&err_buf[..n]).await?;
                }
                None => err = None,
            },
            status = attached.wait(), if exit.is_none() => exit = Some(status?),
            _ = winch.recv() => {
                if let Some((c, r)) = attach::terminal_size(std::io::stdin().as_fd()) {
                    let _ = attached.resize(c, r);
                    recorder.resize(u32::from(c), u32::from(r)).await.map_err(|_| anyhow::anyhow!("the session recording failed"))?;
                }
            }
            _ = init.exited(), if !stopped => stopped = true,
        }
    }
    stdin_task.abort();
    let exit = exit.context("no exit status")?;
    if !stopped && matches!(exit, ExitStatus::Signal { .. }) {
        stopped = tokio::time::timeout(std::time::Duration::from_millis(500), init.exited())
            .await
            .is_ok();
    }
    Ok((exit, stopped))
}

type Reader = Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>;

async fn read_opt(r: &mut Reader, buf: &mut [u8]) -> Option<usize> {
    match r {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// Our stdin to the session until EOF (then EOF to the session).
async fn copy_stdin<W: tokio::io::AsyncWrite + Unpin>(mut w: W) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = w.shutdown().await;
}
