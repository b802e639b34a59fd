//! SFTP sessions (issue 5): the channel's `sftp` subsystem is served by
//! this binary inside the container ([`crate::attach::spawn_sftp`]); this
//! side authorises (policy action `sftp`, asked for `read` and `write`),
//! keeps a session row (with a header-only recording: the binary SFTP
//! stream is not a terminal and is not recorded), pumps the channel to the
//! server's pipes, and turns the server's per-file reports into
//! `FileTransferred` audit events.

use russh::ChannelId;
use russh::server::Handle;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::forward::{Authorized, Refusal, Requester, authorize, refuse};
use super::session::ChannelInput;
use crate::attach::{self, AttachRequest, ExitStatus, SessionIo};
use crate::audit::{AuditEvent, truncate};
use crate::policy::{Action, ContextValue};
use crate::recording::{Header, Recorder, SessionMetadata};
use crate::sftp::{MAX_RECORD_BYTES, TransferRecord};
use crate::store::{NewSession, SessionEnd};

/// Everything an SFTP session task starts with.
pub struct SftpStart {
    /// Who, from where, as which SSH user.
    pub who: Requester,
    /// Handle to send data back to the client.
    pub handle: Handle,
    /// The channel.
    pub channel: ChannelId,
    /// Channel events from the handler.
    pub input: mpsc::Receiver<ChannelInput>,
}

/// Runs one SFTP session to its end; every outcome is audited.
pub async fn run(start: SftpStart) {
    let handle = start.handle.clone();
    let channel = start.channel;
    if let Err(refusal) = run_sftp(start).await {
        refuse(&handle, channel, &refusal).await;
    }
}

async fn run_sftp(start: SftpStart) -> Result<(), Refusal> {
    let SftpStart {
        who,
        handle,
        channel,
        mut input,
    } = start;
    let gateway = who.gateway.clone();
    let read = [("access", ContextValue::Str("read".into()))];
    let write = [("access", ContextValue::Str("write".into()))];
    let verb = "transfer files";
    let Authorized {
        target,
        container,
        init,
    } = authorize(&who, Action::Sftp, &read, verb).await?;
    let may_write = super::forward::decide(&who, &target, &container, Action::Sftp, &write)
        .await?
        .is_ok();

    let command = if may_write {
        "sftp"
    } else {
        "sftp (read-only)"
    };
    let (session_id, recorder) = open_record(&who, &container.name, &target.login, command).await?;
    let sid = Some(session_id.as_str());

    let request = AttachRequest {
        container: container.name.clone(),
        login: target.login.clone(),
        command: None,
        pty: None,
        env: Vec::new(),
    };
    let spawned = attach::spawn_sftp(&gateway.helper, &init, &request, !may_write).await;
    let (mut attached, io) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            close_record(&who, &session_id, recorder, None).await;
            who.audit(
                sid,
                AuditEvent::SessionFailed {
                    container: container.name.clone(),
                    reason: e.to_string(),
                },
            )
            .await?;
            return Err(Refusal(format!("Access refused: {}.", e.user_message())));
        }
    };
    let SessionIo::Pipes {
        mut stdin,
        mut stdout,
        stderr,
    } = io
    else {
        return Err(Refusal("Access refused: internal error.".into()));
    };
    tracing::info!(%session_id, container = %container.name, login = %target.login, may_write, "sftp session started");

    let kill = gateway.live.register(&session_id);
    // Client -> server.
    let feed = tokio::spawn(async move {
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
        }
        // Dropping stdin sends EOF: the server ends.
    });
    // Server reports -> audit.
    let reporter = {
        let who = who.clone();
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
                        tracing::warn!("malformed transfer report from the sftp server");
                        continue;
                    }
                };
                if who.audit(Some(&session_id), event).await.is_err() {
                    // Cannot audit: stop the transfers (fail closed).
                    return false;
                }
            }
            true
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
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
            reason = &mut kill => {
                if let Ok(reason) = reason {
                    ended_by = Some(reason);
                    break;
                }
            }
        }
    }
    feed.abort();
    if let Some(reason) = &ended_by {
        let _ = who
            .audit(
                sid,
                AuditEvent::SessionTerminated {
                    reason: reason.clone(),
                },
            )
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
    gateway.live.remove(&session_id);
    if let Some(ExitStatus::Code(c)) = exit {
        let _ = handle.exit_status_request(channel, c as u32).await;
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;

    close_record(&who, &session_id, recorder, exit).await;
    tracing::info!(%session_id, ?exit, "sftp session ended");
    Ok(())
}

/// Opens the session row (and its header-only recording, so `sessions
/// replay`/`verify` work alike for every session) of a channel that is not
/// a terminal, and audits `SessionStarted`. Returns the session id.
pub(super) async fn open_record(
    who: &Requester,
    container: &str,
    login: &str,
    command: &str,
) -> Result<(String, Recorder), Refusal> {
    let gateway = &who.gateway;
    let session_id = uuid::Uuid::new_v4().to_string();
    let recording_path = gateway
        .config
        .recordings_dir()
        .join(format!("{session_id}.cast"));
    let header = Header {
        version: 2,
        width: 80,
        height: 24,
        timestamp: Some(crate::store::now_ms() / 1000),
        command: Some(command.into()),
        title: Some(format!("{login}@{container}")),
        env: None,
        portcullis: Some(SessionMetadata {
            session_id: session_id.clone(),
            principal: who.principal.subject.clone(),
            container: container.into(),
            login: login.into(),
            command: Some(command.into()),
        }),
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "session record unavailable; refusing");
        Refusal("Access refused: the gateway cannot record this session right now.".into())
    };
    let recorder = Recorder::create(
        &recording_path,
        &header,
        false,
        gateway.config.recording.flush_interval,
    )
    .await
    .map_err(|e| unavailable(&e))?;
    let recording_text = recording_path.display().to_string();
    gateway
        .store
        .insert_session(&NewSession {
            id: &session_id,
            principal: &who.principal.subject,
            email: who.principal.email.as_deref(),
            container,
            login,
            command: Some(command),
            client_addr: Some(&who.client_addr),
            recording_path: &recording_text,
        })
        .await
        .map_err(|e| unavailable(&e))?;
    who.audit(
        Some(&session_id),
        AuditEvent::SessionStarted {
            container: container.into(),
            login: login.into(),
            command: Some(command.into()),
            pty: false,
        },
    )
    .await?;
    Ok((session_id, recorder))
}

/// Finishes the recording, audits `SessionEnded` and closes the row
/// (`failed` when `exit` is `None`).
pub(super) async fn close_record(
    who: &Requester,
    session_id: &str,
    recorder: Recorder,
    exit: Option<ExitStatus>,
) {
    let digest = recorder.finish().await.ok();
    let (bytes, sha256) = match &digest {
        Some(d) => (d.bytes as i64, d.sha256.clone()),
        None => (0, String::new()),
    };
    let (status, exit_status, exit_signal) = match exit {
        Some(ExitStatus::Code(c)) => ("ended", Some(i64::from(c)), None),
        Some(ExitStatus::Signal { signal, .. }) => {
            ("ended", None, Some(super::pump::signal_name(signal)))
        }
        None => ("failed", None, None),
    };
    let _ = who
        .audit(
            Some(session_id),
            AuditEvent::SessionEnded {
                exit_status,
                exit_signal: exit_signal.clone(),
                recording_bytes: bytes,
                recording_sha256: sha256.clone(),
                output_bytes: digest.as_ref().map(|d| d.output_bytes),
            },
        )
        .await;
    if let Err(e) = who
        .gateway
        .store
        .end_session(
            session_id,
            &SessionEnd {
                status,
                exit_status,
                exit_signal: exit_signal.as_deref(),
                recording_bytes: bytes,
                recording_sha256: &sha256,
            },
        )
        .await
    {
        tracing::error!(error = %e, "cannot close the session row");
    }
}
