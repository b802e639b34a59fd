//! The life of a file-transfer session (issue 5): the `sftp` subsystem
//! and legacy `scp -O` (an exec of `scp -t`/`scp -f`, recognised by
//! [`crate::scp::ScpCommand::parse`]), served by this binary inside the
//! container ([`crate::attach::spawn_sftp`], [`crate::attach::spawn_scp`]),
//! or, with `[sftp] server = "container"`, the subsystem by the
//! container's own sftp-server ([`crate::attach::spawn_program`]).
//!
//! Authorised by the policy action `sftp` (asked for `read` and `write`),
//! recorded as a session whose recording is header-only (the binary
//! stream is not a terminal), pumped between the client and the server's
//! pipes; the server's per-file reports become `FileTransferred` audit
//! events (a container's sftp-server is audited by its stream's totals,
//! `SftpStreamEnded`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::access::{Access, Ask, authorize, decide};
use super::io::{Input, InputReceiver, Output, Sending, sent, start_write};
use super::record::{RecordStart, SessionRecord};
use super::remote::RemoteTransfer;
use super::shell::refusal_of;
use super::{Caller, EndReason, LiveSession, Refusal};
use crate::attach::{self, AttachRequest, End, ExitStatus, Leftovers, SessionIo, SessionKind};
use crate::audit::{AuditEvent, truncate};
use crate::config::SftpServer;
use crate::gateway::Gateway;
use crate::policy::{Action, ContextValue};
use crate::scp::{ScpCommand, ScpCommandError};
use crate::sftp::{MAX_RECORD_BYTES, TransferRecord};

/// Bytes read from the server's stdout per chunk.
const CHUNK_BYTES: usize = 64 * 1024;

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

/// How the server side is started, once authorised.
enum Serve {
    Builtin { read_only: bool },
    Scp(ScpCommand),
    Container { path: String, read_only: bool },
}

/// Runs one transfer session for `caller` to its end; every outcome is
/// audited, a refusal is sent through `output`.
pub async fn run<O: Output>(
    gateway: Arc<Gateway>,
    caller: Caller,
    kind: TransferKind,
    input: InputReceiver,
    output: O,
) {
    if let Some(edge) = gateway.edge.clone() {
        // An edge serves no transfer itself: it relays it to the node.
        let transfer = match kind {
            TransferKind::Sftp => RemoteTransfer {
                access: "read",
                scp_command: None,
            },
            TransferKind::Scp {
                raw,
                command: Ok(command),
            } => RemoteTransfer {
                access: if command.is_upload() { "write" } else { "read" },
                scp_command: Some(raw),
            },
            TransferKind::Scp {
                command: Err(e), ..
            } => {
                let refusal = refuse_scp(&gateway, &caller, &e).await;
                output.refuse(&refusal).await;
                return;
            }
        };
        super::remote::run_transfer(gateway, &edge, caller, transfer, input, output).await;
        return;
    }
    run_with_id(gateway, caller, kind, input, output, None).await
}

/// [`run`] on this gateway, with the session id given when `id` is some
/// (a node serving a transfer an edge relays, under the id the edge's
/// certificate names).
pub async fn run_with_id<O: Output>(
    gateway: Arc<Gateway>,
    caller: Caller,
    kind: TransferKind,
    input: InputReceiver,
    output: O,
    id: Option<String>,
) {
    match start(&gateway, &caller, kind, id).await {
        Ok(started) => started.run(&gateway, &caller, input, output).await,
        Err(refusal) => output.refuse(&refusal).await,
    }
}

/// Audits an scp command refused because it needs a shell to mean
/// anything; the refusal to send (that audit's own when it cannot be
/// written).
async fn refuse_scp(gw: &Gateway, caller: &Caller, e: &ScpCommandError) -> Refusal {
    let event = AuditEvent::ChannelRefused {
        kind: "exec".into(),
        reason: e.to_string(),
    };
    match caller.audit(gw, None, event).await {
        Ok(_) => Refusal::new(e.to_string()),
        Err(refusal) => refusal,
    }
}

/// A transfer allowed and recorded, its server not started yet.
struct Started {
    access: Access,
    serve: Serve,
    record: SessionRecord,
    command: String,
}

async fn start(
    gw: &Gateway,
    caller: &Caller,
    kind: TransferKind,
    id: Option<String>,
) -> Result<Started, Refusal> {
    let verb = "transfer files";
    let access = |a: &str| [("access", ContextValue::Str(a.into()))];
    let ask = |context| Ask {
        action: Action::Sftp,
        command: None,
        context,
        verb,
    };
    let (access, serve, command) = match kind {
        TransferKind::Scp { raw, command } => {
            let command = match command {
                Ok(c) => c,
                Err(e) => return Err(refuse_scp(gw, caller, &e).await),
            };
            let context = access(if command.is_upload() { "write" } else { "read" });
            let allowed = authorize(gw, caller, &ask(&context)).await?;
            (allowed, Serve::Scp(command), truncate(&raw, 1024))
        }
        TransferKind::Sftp => {
            let read = access("read");
            let allowed = authorize(gw, caller, &ask(&read)).await?;
            let write = access("write");
            let may_write = decide(
                gw,
                caller,
                &allowed.target,
                &allowed.container,
                &ask(&write),
                None,
                Some(&allowed.ids),
            )
            .await?
            .is_some();
            let suffix = if may_write { "" } else { " (read-only)" };
            let read_only = !may_write;
            match gw.config.sftp.server {
                SftpServer::Builtin => (
                    allowed,
                    Serve::Builtin { read_only },
                    format!("sftp{suffix}"),
                ),
                SftpServer::Container => {
                    let path = gw.config.sftp.container_path.clone();
                    let command = format!("sftp via {path}{suffix}");
                    (allowed, Serve::Container { path, read_only }, command)
                }
            }
        }
    };
    let start = RecordStart {
        principal: &caller.principal.subject,
        email: caller.principal.email.as_deref(),
        client_addr: &caller.client_addr,
        container: &access.container.name,
        login: &access.target.login,
        command: Some(&command),
        pty: None,
        term_in_header: false,
        grant_id: None,
        record_input: false,
        index: false,
    };
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let record = SessionRecord::open_with_id(gw, &start, id)
        .await
        .map_err(|e| refusal_of(&e))?;
    Ok(Started {
        access,
        serve,
        record,
        command,
    })
}

impl Started {
    async fn run<O: Output>(
        self,
        gw: &Gateway,
        caller: &Caller,
        mut input: InputReceiver,
        output: O,
    ) {
        let Started {
            access,
            serve,
            record,
            command,
        } = self;
        let options = access.attach_options(&gw.config);
        let Access {
            target,
            container,
            init,
            recheck,
            ..
        } = access;
        let request = AttachRequest {
            container: container.name.clone(),
            login: target.login.clone(),
            command: None,
            pty: None,
            env: Vec::new(),
        };
        let kind = match &serve {
            Serve::Builtin { read_only } => SessionKind::Sftp {
                read_only: *read_only,
            },
            Serve::Scp(c) => SessionKind::Scp(c.clone()),
            Serve::Container { path, read_only } => SessionKind::Program {
                path: path.clone(),
                // OpenSSH sftp-server: -R refuses every change.
                args: if *read_only {
                    vec!["-R".into()]
                } else {
                    Vec::new()
                },
            },
        };
        let spawned = attach::start(&gw.helper, &init, &request, &kind, &options).await;
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
                let refusal = Refusal::new(format!("Access refused: {}.{hint}", e.user_message()));
                output.refuse(&refusal).await;
                return;
            }
        };
        let SessionIo::Pipes {
            mut stdin,
            mut stdout,
            stderr,
        } = io
        else {
            record.close(None).await;
            output
                .refuse(&Refusal::new("Access refused: internal error."))
                .await;
            return;
        };
        let reports_files = !matches!(serve, Serve::Container { .. });
        let session_id = record.id().to_string();
        tracing::info!(%session_id, container = %container.name, login = %target.login, %command, "transfer session started");

        let started = Instant::now();
        let from_client = Arc::new(AtomicU64::new(0));
        let mut ending = gw.live.register(LiveSession {
            id: session_id.clone(),
            principal: caller.principal.subject.clone(),
            groups: caller.principal.groups.clone(),
            connection: caller.connection,
            issuer: caller.principal.issuer.clone(),
            container: container.name.clone(),
            login: target.login.clone(),
            client_addr: caller.client_addr.clone(),
            key_fingerprint: caller.key_fingerprint.clone(),
            recheck: Some(recheck),
        });
        // Client -> server; dropping stdin sends EOF and the server ends.
        let feed = {
            let from_client = from_client.clone();
            tokio::spawn(async move {
                while let Some(event) = input.recv().await {
                    match event {
                        Input::Data(d) => {
                            if stdin.write_all(&d).await.is_err() {
                                break;
                            }
                            from_client.fetch_add(d.len() as u64, Ordering::Relaxed);
                            input.consumed(d.len());
                        }
                        Input::Eof => break,
                        Input::Resize { .. } | Input::Signal(_) => {}
                    }
                }
            })
        };
        let mut reporter = report_files(&record, stderr, reports_files);
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut to_client = 0u64;
        let mut ended_by: Option<EndReason> = None;
        let mut audit_ok = true;
        let mut sending: Option<Sending<'_>> = None;
        let mut reading = true;
        loop {
            if !reading && sending.is_none() {
                break;
            }
            let idle = sending.is_none();
            tokio::select! {
                sent = sent(&mut sending) => {
                    sending = None;
                    if sent.is_err() {
                        ended_by = Some(EndReason::ClientGone);
                        break;
                    }
                }
                n = stdout.read(&mut buf), if idle && reading => match n {
                    Ok(0) | Err(_) => reading = false,
                    Ok(n) => {
                        to_client += n as u64;
                        match start_write(Box::pin(output.stdout(buf[..n].to_vec()))).await {
                            Ok(in_flight) => sending = in_flight,
                            Err(_) => {
                                ended_by = Some(EndReason::ClientGone);
                                break;
                            }
                        }
                    }
                },
                r = &mut reporter => {
                    audit_ok = r.unwrap_or(false);
                    if !audit_ok {
                        ended_by = Some(EndReason::AuditUnavailable);
                        break;
                    }
                    // The server closed stderr: it is ending; keep draining stdout.
                    reporter = tokio::spawn(std::future::pending());
                }
                _ = gw.shutdown.cancelled() => {
                    ended_by = Some(EndReason::Shutdown);
                    break;
                }
                reason = ending.wait() => {
                    ended_by = Some(reason);
                    break;
                }
            }
        }
        drop(sending);
        feed.abort();
        if let Some(reason) = &ended_by {
            let _ = record
                .audit(AuditEvent::SessionTerminated {
                    reason: reason.to_string(),
                })
                .await;
        }
        // Every end ends every process of the session (its cgroup): the
        // server's exit, the client gone, a kill, a lock, shutdown.
        let end = match &ended_by {
            None => {
                let _ = attached.wait().await;
                End::Normal {
                    grace: gw.config.session.kill_grace,
                    leftovers: Leftovers::Kill,
                }
            }
            Some(reason) => {
                super::end::attach_end(reason, gw.config.session.kill_grace, Leftovers::Kill)
            }
        };
        let exit = match attached.end(end).await {
            Ok(ended) => Some(ended.status),
            Err(e) => {
                tracing::error!(error = %e, "cannot end the transfer session");
                None
            }
        };
        if audit_ok {
            // Let the last reports (handles open at the end) reach the log.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reporter).await;
        } else {
            reporter.abort();
        }
        drop(ending);
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
        // The client gets an exit code only (a signal means nothing to it).
        let told = exit.filter(|e| matches!(e, ExitStatus::Code(_)));
        tokio::join!(record.close(exit), output.finish(told));
    }
}

/// Turns the transfer server's reports (JSON lines on its stderr) into
/// `FileTransferred` events; a container's sftp-server's stderr is its own
/// log, drained and not trusted as reports. Resolves `false` when an
/// event could not be written (the transfers must stop: fail closed).
fn report_files(
    record: &SessionRecord,
    stderr: tokio::process::ChildStderr,
    reports_files: bool,
) -> tokio::task::JoinHandle<bool> {
    let auditor = record.auditor();
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
            if auditor.record(event).await.is_err() {
                return false;
            }
        }
        true
    })
}
