//! File-transfer sessions (issue 5): the `sftp` subsystem and legacy
//! `scp -O` (an exec of `scp -t`/`scp -f`, recognised by
//! [`crate::scp::ScpCommand::parse`]) are served by this binary inside the
//! container ([`crate::attach::spawn_sftp`], [`crate::attach::spawn_scp`]),
//! or, with `[sftp] server = "container"`, the subsystem by the
//! container's own sftp-server ([`crate::attach::spawn_program`]). This side
//! authorises (policy action `sftp`, asked for `read` and `write`), keeps
//! a session row (with a header-only recording: the binary stream is not a
//! terminal and is not recorded), pumps the channel to the server's pipes,
//! and turns the server's per-file reports into `FileTransferred` audit
//! events (or, for a container's sftp-server, audits the stream's totals
//! as `SftpStreamEnded`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use russh::ChannelId;
use russh::server::Handle;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Gateway;
use super::forward::refuse;
use super::session::ChannelInput;
use crate::attach::{self, AttachRequest, ExitStatus, SessionIo};
use crate::audit::{AuditEvent, truncate};
use crate::config::SftpServer;
use crate::policy::{Action, ContextValue};
use crate::scp::{ScpCommand, ScpCommandError};
use crate::session::access::{Access, Ask, authorize, decide};
use crate::session::record::{RecordError, RecordStart, SessionRecord};
use crate::session::{Caller, Refusal};
use crate::sftp::{MAX_RECORD_BYTES, TransferRecord};

/// What a transfer session serves.
#[derive(Debug, Clone)]
pub enum TransferKind {
    /// The `sftp` subsystem (by the builtin server or the container's own,
    /// as `[sftp] server` says).
    Sftp,
    /// Legacy scp: the exec command `raw`, recognised as `command`, or
    /// refused with the reason when it needs a shell to mean anything.
    Scp {
        /// The exec command as the client sent it.
        raw: String,
        /// The parsed invocation, or why it is refused.
        command: Result<ScpCommand, ScpCommandError>,
    },
}

/// Everything a transfer session task starts with.
pub struct TransferStart {
    /// Shared gateway state.
    pub gateway: Arc<Gateway>,
    /// Who, from where, as which SSH user.
    pub who: Caller,
    /// Handle to send data back to the client.
    pub handle: Handle,
    /// The channel.
    pub channel: ChannelId,
    /// Channel events from the handler.
    pub input: mpsc::Receiver<ChannelInput>,
    /// SFTP or scp.
    pub kind: TransferKind,
}

/// Runs one transfer session to its end; every outcome is audited. A
/// refusal of scp goes through the rcp protocol (a `\x02` line, which
/// OpenSSH's scp prints), one of SFTP on the channel's stderr.
pub async fn run(start: TransferStart) {
    let handle = start.handle.clone();
    let channel = start.channel;
    let scp = matches!(start.kind, TransferKind::Scp { .. });
    if let Err(refusal) = run_transfer(start).await {
        if scp {
            refuse_scp(&handle, channel, &refusal).await;
        } else {
            refuse(&handle, channel, &refusal).await;
        }
    }
}

/// Sends `refusal` as an rcp fatal error (`\x02MESSAGE\n`, OpenSSH scp.c
/// `response()`/`sink()` print it and stop), exit status 1, and closes.
async fn refuse_scp(handle: &Handle, channel: ChannelId, refusal: &Refusal) {
    let text = format!("\x02{}\n", refusal.message().replace(['\r', '\n'], " "));
    let _ = handle.data(channel, text.into_bytes()).await;
    let _ = handle.exit_status_request(channel, 1).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// How the server side is started, once authorised.
enum Serve {
    Builtin { read_only: bool },
    Scp(ScpCommand),
    Container { path: String, read_only: bool },
}

async fn run_transfer(start: TransferStart) -> Result<(), Refusal> {
    let TransferStart {
        gateway,
        who,
        handle,
        channel,
        mut input,
        kind,
    } = start;
    let verb = "transfer files";
    let access = |a: &str| [("access", ContextValue::Str(a.into()))];
    let (authorized, serve, command) = match kind {
        TransferKind::Scp { raw, command } => {
            let command = match command {
                Ok(c) => c,
                Err(e) => {
                    who.audit(
                        &gateway,
                        None,
                        AuditEvent::ChannelRefused {
                            kind: "exec".into(),
                            reason: e.to_string(),
                        },
                    )
                    .await?;
                    return Err(Refusal::new(e.to_string()));
                }
            };
            let a = if command.is_upload() { "write" } else { "read" };
            let context = access(a);
            let ask = Ask {
                action: Action::Sftp,
                command: None,
                context: &context,
                verb,
            };
            let authorized = authorize(&gateway, &who, &ask).await?;
            (authorized, Serve::Scp(command), truncate(&raw, 1024))
        }
        TransferKind::Sftp => {
            let read = access("read");
            let ask = Ask {
                action: Action::Sftp,
                command: None,
                context: &read,
                verb,
            };
            let authorized = authorize(&gateway, &who, &ask).await?;
            let Access {
                target, container, ..
            } = &authorized;
            let write = access("write");
            let ask_write = Ask {
                context: &write,
                ..ask
            };
            let may_write = decide(&gateway, &who, target, container, &ask_write, None)
                .await?
                .is_some();
            let suffix = if may_write { "" } else { " (read-only)" };
            match gateway.config.sftp.server {
                SftpServer::Builtin => (
                    authorized,
                    Serve::Builtin {
                        read_only: !may_write,
                    },
                    format!("sftp{suffix}"),
                ),
                SftpServer::Container => {
                    let path = gateway.config.sftp.container_path.clone();
                    let command = format!("sftp via {path}{suffix}");
                    let serve = Serve::Container {
                        path,
                        read_only: !may_write,
                    };
                    (authorized, serve, command)
                }
            }
        }
    };
    let Access {
        target,
        container,
        init,
        ..
    } = authorized;
    let record = open_record(&gateway, &who, &container.name, &target.login, &command).await?;
    let session_id = record.id().to_string();

    let request = AttachRequest {
        container: container.name.clone(),
        login: target.login.clone(),
        command: None,
        pty: None,
        env: Vec::new(),
    };
    let spawned = match &serve {
        Serve::Builtin { read_only } => {
            attach::spawn_sftp(&gateway.helper, &init, &request, *read_only).await
        }
        Serve::Scp(c) => attach::spawn_scp(&gateway.helper, &init, &request, c).await,
        Serve::Container { path, read_only } => {
            // OpenSSH sftp-server: -R refuses every change.
            let args: Vec<String> = if *read_only {
                vec!["-R".into()]
            } else {
                Vec::new()
            };
            attach::spawn_program(&gateway.helper, &init, &request, path, &args).await
        }
    };
    let (mut attached, io) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            record.fail(e.to_string()).await;
            let hint = match (&serve, &e) {
                (Serve::Container { .. }, attach::AttachError::ProgramNotFound { .. }) => {
                    " The gateway is set to use the container's own sftp-server \
                     ([sftp] server = \"container\"); install it there or ask the \
                     operator to use server = \"builtin\"."
                }
                _ => "",
            };
            return Err(Refusal::new(format!(
                "Access refused: {}.{hint}",
                e.user_message()
            )));
        }
    };
    let SessionIo::Pipes {
        mut stdin,
        mut stdout,
        stderr,
    } = io
    else {
        return Err(Refusal::new("Access refused: internal error."));
    };
    let reports_files = !matches!(serve, Serve::Container { .. });
    tracing::info!(%session_id, container = %container.name, login = %target.login, %command, "transfer session started");

    let started = Instant::now();
    let from_client = Arc::new(AtomicU64::new(0));
    let kill = gateway.live.register(crate::session::LiveSession {
        id: session_id.clone(),
        principal: who.principal.subject.clone(),
        issuer: who.principal.issuer.clone(),
        container: container.name.clone(),
        login: target.login.clone(),
        client_addr: who.client_addr.clone(),
        key_fingerprint: None,
    });
    // Client -> server.
    let feed = {
        let from_client = from_client.clone();
        tokio::spawn(async move {
            while let Some(ev) = input.recv().await {
                let ChannelInput::Data(d) = ev else {
                    if matches!(ev, ChannelInput::Eof | ChannelInput::Close) {
                        break;
                    }
                    continue;
                };
                if stdin.write_all(&d).await.is_err() {
                    break;
                }
                from_client.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            // Dropping stdin sends EOF: the server ends.
        })
    };
    // Server reports -> audit (a container's sftp-server's stderr is its
    // own log: drained, not trusted as reports).
    let reporter = {
        let who = who.clone();
        let gateway = gateway.clone();
        let session_id = session_id.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr.take(1 << 30));
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut lines)
                    .take(MAX_RECORD_BYTES as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if !reports_files {
                    continue;
                }
                let event = match TransferRecord::parse(line.trim_ascii_end()) {
                    Some(r) => AuditEvent::FileTransferred {
                        path: truncate(&r.path, 4096),
                        direction: r.direction.as_str().into(),
                        bytes: i64::try_from(r.bytes).unwrap_or(i64::MAX),
                        sha256: r.sha256,
                        sequential: r.sequential,
                        closed: r.closed,
                    },
                    None => {
                        tracing::warn!("malformed transfer report from the transfer server");
                        continue;
                    }
                };
                if who.audit(&gateway, Some(&session_id), event).await.is_err() {
                    // Cannot audit: stop the transfers (fail closed).
                    return false;
                }
            }
            true
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut to_client = 0u64;
    let mut ended_by: Option<String> = None;
    let mut kill = kill;
    let mut reporter = reporter;
    let mut audit_ok = true;
    loop {
        tokio::select! {
            n = stdout.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if handle.data(channel, buf[..n].to_vec()).await.is_err() {
                        ended_by = Some("disconnected".into());
                        break;
                    }
                    to_client += n as u64;
                }
            },
            r = &mut reporter => {
                audit_ok = r.unwrap_or(false);
                if !audit_ok {
                    ended_by = Some("the gateway cannot write its audit log".into());
                    break;
                }
                // The server closed stderr: it is ending; keep draining stdout.
                reporter = tokio::spawn(std::future::pending());
            }
            _ = gateway.shutdown.cancelled() => {
                ended_by = Some("the gateway is shutting down".into());
                break;
            }
            reason = kill.wait() => {
                ended_by = Some(reason.to_string());
                break;
            }
        }
    }
    feed.abort();
    if let Some(reason) = &ended_by {
        let _ = record
            .audit(AuditEvent::SessionTerminated {
                reason: reason.clone(),
            })
            .await;
    }
    let exit = match ended_by {
        None => attached.wait().await.ok(),
        Some(_) => attached
            .terminate(gateway.config.session.kill_grace)
            .await
            .ok(),
    };
    if audit_ok {
        // Let the last reports (handles open at the end) reach the log.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reporter).await;
    } else {
        reporter.abort();
    }
    drop(kill);
    if let Serve::Container { path, .. } = &serve {
        let _ = record
            .audit(AuditEvent::SftpStreamEnded {
                server: path.clone(),
                bytes_from_client: i64::try_from(from_client.load(Ordering::Relaxed))
                    .unwrap_or(i64::MAX),
                bytes_to_client: i64::try_from(to_client).unwrap_or(i64::MAX),
                duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            })
            .await;
    }
    if let Some(ExitStatus::Code(c)) = exit {
        let _ = handle.exit_status_request(channel, c as u32).await;
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;

    record.close(exit).await;
    Ok(())
}

/// Opens the record of a channel that is not a terminal: its row, a
/// header-only recording (so `sessions replay`/`verify` work alike for
/// every session) and its `SessionStarted` event.
pub(super) async fn open_record(
    gateway: &Gateway,
    who: &Caller,
    container: &str,
    login: &str,
    command: &str,
) -> Result<SessionRecord, Refusal> {
    let start = RecordStart {
        principal: &who.principal.subject,
        email: who.principal.email.as_deref(),
        client_addr: &who.client_addr,
        container,
        login,
        command: Some(command),
        pty: None,
        term_in_header: false,
        grant_id: None,
        record_input: false,
        index: false,
    };
    SessionRecord::open(&gateway.audit, &gateway.store, &gateway.config, &start)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "session record unavailable; refusing");
            match e {
                RecordError::Recording(_) => Refusal::recording_unavailable(),
                RecordError::Store(_) => Refusal::audit_unavailable(),
            }
        })
}
