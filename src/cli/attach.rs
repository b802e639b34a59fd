//! `portcullis attach CONTAINER [--login L] [-- CMD...]`: an operator on the
//! host enters a container through the same helper as SSH sessions, without
//! SSH or policy (host root is already past every policy). The session is
//! the core's ([`crate::session::shell::run_on_host`]): audited, with a
//! session row and a recording like an SSH session, under the principal
//! `host:uid=N`. This file is only the front end: the host's terminal.
//!
//! With a terminal on stdin the session gets a pty from the container's
//! devpts (the host terminal is put in raw mode and restored); otherwise
//! plain pipes. CMD words are joined with spaces and run by the login's
//! shell with `-c`, as `ssh` does. The exit status is passed through
//! (128 + N for a death by signal N).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::attach::{self, ExitStatus, HelperBinary, PtyRequest};
use crate::audit::AuditLog;
use crate::config::{Config, valid_name};
use crate::inventory::Inventory;
use crate::session::io::{ClientGone, Input, InputSender, Output, input_queue};
use crate::session::shell::{HostSession, ShellRequest, run_on_host};
use crate::session::{EndReason, Refusal};
use crate::store::Store;

/// Bytes copied per read.
const CHUNK_BYTES: usize = 32 * 1024;

/// Bytes of terminal input held for the session.
const INPUT_LIMIT: usize = 256 * 1024;

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

/// The host's stdout and stderr as a session's output.
struct LocalOutput;

impl Output for LocalOutput {
    async fn stdout(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        let mut out = tokio::io::stdout();
        out.write_all(&bytes).await.map_err(|_| ClientGone)?;
        out.flush().await.map_err(|_| ClientGone)
    }

    async fn stderr(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        let mut err = tokio::io::stderr();
        err.write_all(&bytes).await.map_err(|_| ClientGone)
    }

    async fn eof(&self) {}

    async fn ended(&self, reason: &EndReason) {
        let text = format!("\r\nportcullis: session ended: {reason}.\r\n");
        let _ = self.stderr(text.into_bytes()).await;
    }

    async fn finish(self, _exit: Option<ExitStatus>) {}

    async fn refuse(self, refusal: &Refusal) {
        let _ = self
            .stderr(format!("portcullis: {}\n", refusal.message()).into_bytes())
            .await;
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
    // The lookup (the LXC monitor's socket), opening the store (a
    // connection, the schema check) and the sealed copy of the helper (a
    // few MB, ~1 ms, no side effect) are independent: overlap them.
    let inventory = Inventory::new(&config);
    let database_url = config.database_url();
    let (found, store, helper) = tokio::join!(
        crate::session::access::locate(&inventory, &container),
        Store::open(&database_url),
        tokio::task::spawn_blocking(HelperBinary::sealed_copy_of_helper),
    );
    let ((_, init), store) = (found?, store?);
    let helper = helper.context("helper copy task")??;
    let audit = AuditLog::new(store.clone());
    let principal = format!("host:uid={}", nix::unistd::getuid());
    let pty = std::io::stdin().is_terminal().then(|| {
        let (cols, rows) = attach::terminal_size(std::io::stdin().as_fd()).unwrap_or((80, 24));
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        PtyRequest { term, cols, rows }
    });
    let raw = match pty {
        Some(_) => Some(RawMode::enter()?),
        None => None,
    };
    let (input, receiver) = input_queue(INPUT_LIMIT, None);
    let input = Arc::new(input);
    let stdin_task = tokio::spawn(copy_stdin(input.clone()));
    let winch_task = tokio::spawn(follow_window_size(input.clone()));
    let host = HostSession {
        config: &config,
        store: &store,
        audit: &audit,
        helper: &helper,
        init: &init,
        container: &container,
        login: &login,
        principal: &principal,
    };
    let request = ShellRequest {
        command,
        pty,
        env: Vec::new(),
    };
    let ran = run_on_host(host, request, receiver, LocalOutput).await;
    stdin_task.abort();
    winch_task.abort();
    drop(raw);
    let code = match ran? {
        Some(ExitStatus::Code(c)) => c,
        Some(ExitStatus::Signal { signal, .. }) => 128 + signal,
        None => bail!("no exit status"),
    };
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

/// Our stdin to the session until EOF (then EOF to the session).
async fn copy_stdin(input: Arc<InputSender>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if input.send(Input::Data(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = input.send(Input::Eof).await;
}

/// The host terminal's size changes (SIGWINCH) to the session.
async fn follow_window_size(input: Arc<InputSender>) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((cols, rows)) = attach::terminal_size(std::io::stdin().as_fd())
            && input.send(Input::Resize { cols, rows }).await.is_err()
        {
            return;
        }
    }
}
