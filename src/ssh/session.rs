//! One session channel's life: target lookup, policy decision, recording,
//! attach, the byte pump, and the closing records.
//!
//! Order matters for audit: each audit event is written before the step it
//! records, and a step whose event cannot be written does not happen.

use std::sync::Arc;

use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::Gateway;
use crate::attach::{self, AttachRequest, ExitStatus, PtyRequest};
use crate::audit::{AuditEvent, AuditSubject, truncate};
use crate::grants::{GrantEvent, GrantWatch};
use crate::policy::Action;
use crate::recording::{Header, Recorder, SessionMetadata};
use crate::session::access::{Access, Ask, authorize};
use crate::session::{Caller, Refusal};
use crate::store::{NewSession, SessionEnd};

/// A channel event for a running session.
#[derive(Debug)]
pub enum ChannelInput {
    /// Bytes from the client (stdin).
    Data(Vec<u8>),
    /// The client will send no more data.
    Eof,
    /// The client closed the channel.
    Close,
    /// The client's terminal changed size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The client asked to signal the process.
    Signal(i32),
}

/// Shell or command.
#[derive(Debug, Clone)]
pub enum SessionKind {
    /// A login shell.
    Shell,
    /// `shell -c COMMAND`.
    Exec(String),
}

/// Everything a session task starts with.
pub struct SessionStart {
    /// Shared gateway state.
    pub gateway: Arc<Gateway>,
    /// Handle to send data back to the client.
    pub handle: Handle,
    /// The channel.
    pub channel: ChannelId,
    /// Who, from where, to which destination.
    pub caller: Caller,
    /// Shell or exec.
    pub kind: SessionKind,
    /// The PTY request, when one was made.
    pub pty: Option<PtyRequest>,
    /// Allow-listed environment from the client.
    pub env: Vec<(String, String)>,
    /// Channel events from the handler.
    pub input: mpsc::Receiver<ChannelInput>,
}

/// Runs one session to its end. Never panics; every outcome is audited.
pub async fn run(start: SessionStart) {
    let span = tracing::info_span!(
        "session",
        principal = %start.caller.principal.subject,
        target = %truncate(&start.caller.user, 128),
        peer = %start.caller.client_addr,
    );
    let handle = start.handle.clone();
    let channel = start.channel;
    if let Err(refusal) = run_session(start).instrument(span).await {
        refuse(&handle, channel, &refusal).await;
    }
}

async fn refuse(handle: &Handle, channel: ChannelId, refusal: &Refusal) {
    super::forward::refuse(handle, channel, refusal).await;
}

async fn run_session(start: SessionStart) -> Result<(), Refusal> {
    let SessionStart {
        gateway,
        handle,
        channel,
        caller,
        kind,
        pty,
        env,
        input,
    } = start;
    let principal = caller.principal.clone();
    let client_addr = caller.client_addr.clone();
    let audit = |session_id: Option<String>, event: AuditEvent| {
        let gateway = gateway.clone();
        let caller = caller.clone();
        async move { caller.audit(&gateway, session_id.as_deref(), event).await }
    };
    let (action, command, verb) = match &kind {
        SessionKind::Shell => (Action::Shell, None, "open a shell"),
        SessionKind::Exec(c) => (Action::Exec, Some(c.clone()), "run commands"),
    };
    let ask = Ask {
        action,
        command: command.as_deref(),
        context: &[],
        verb,
    };
    let Access {
        target,
        container,
        init,
        grant: depends_on,
    } = authorize(&gateway, &caller, &ask).await?;

    // The recording and the session row.
    let session_id = uuid::Uuid::new_v4().to_string();
    let recording_path = gateway
        .config
        .recordings_dir()
        .join(format!("{session_id}.cast"));
    let (cols, rows) = pty.as_ref().map(|p| (p.cols, p.rows)).unwrap_or((80, 24));
    let header = Header {
        version: 2,
        width: u32::from(cols),
        height: u32::from(rows),
        timestamp: Some(crate::store::now_ms() / 1000),
        command: command.clone(),
        title: Some(format!("{}@{}", target.login, container.name)),
        env: pty
            .as_ref()
            .map(|p| [("TERM".to_string(), p.term.clone())].into_iter().collect()),
        portcullis: Some(SessionMetadata {
            session_id: session_id.clone(),
            principal: principal.subject.clone(),
            container: container.name.clone(),
            login: target.login.clone(),
            command: command.clone(),
        }),
    };
    let recording_failed = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "recording unavailable; refusing");
        Refusal::recording_unavailable()
    };
    let recorder = Recorder::create(
        &recording_path,
        &header,
        gateway.config.recording.record_input,
        gateway.config.recording.flush_interval,
    )
    .await
    .map_err(|e| recording_failed(&e))?;
    let recording_text = recording_path.display().to_string();
    gateway
        .store
        .insert_session(&NewSession {
            id: &session_id,
            principal: &principal.subject,
            email: principal.email.as_deref(),
            container: &container.name,
            login: &target.login,
            command: command.as_deref(),
            client_addr: Some(&client_addr),
            recording_path: &recording_text,
        })
        .await
        .map_err(|e| recording_failed(&e))?;
    if let Some(g) = &depends_on {
        gateway
            .store
            .set_session_grant(&session_id, &g.id)
            .await
            .map_err(|e| recording_failed(&e))?;
    }
    audit(
        Some(session_id.clone()),
        AuditEvent::SessionStarted {
            container: container.name.clone(),
            login: target.login.clone(),
            command: command.clone(),
            pty: pty.is_some(),
        },
    )
    .await?;

    // Into the container.
    let request = AttachRequest {
        container: container.name.clone(),
        login: target.login.clone(),
        command: command.clone(),
        pty: pty.clone(),
        env,
    };
    let spawned = match init.watch() {
        Ok(w) => attach::spawn(&gateway.helper, &init, &request)
            .await
            .map(|(a, io)| (w, a, io)),
        Err(e) => Err(e),
    };
    let (watch, attached, io) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            let digest = recorder.finish().await.ok();
            let _ = gateway
                .store
                .end_session(
                    &session_id,
                    &SessionEnd {
                        status: "failed",
                        exit_status: None,
                        exit_signal: None,
                        recording_bytes: digest.as_ref().map(|d| d.bytes as i64).unwrap_or(0),
                        recording_sha256: digest.as_ref().map(|d| d.sha256.as_str()).unwrap_or(""),
                    },
                )
                .await;
            audit(
                Some(session_id.clone()),
                AuditEvent::SessionFailed {
                    container: container.name.clone(),
                    reason: e.to_string(),
                },
            )
            .await?;
            return Err(Refusal::new(format!(
                "Access refused: {}.",
                e.user_message()
            )));
        }
    };
    tracing::info!(%session_id, container = %container.name, login = %target.login, "session started");

    let session_audit = SessionAudit {
        gateway: gateway.clone(),
        session_id: session_id.clone(),
        principal: principal.subject.clone(),
        client_addr: client_addr.clone(),
    };
    let kill = gateway.live.register(crate::session::LiveSession {
        id: session_id.clone(),
        principal: principal.subject.clone(),
        issuer: principal.issuer.clone(),
        container: container.name.clone(),
        login: target.login.clone(),
        client_addr: client_addr.clone(),
        key_fingerprint: None,
    });
    let grant_watch = depends_on.as_ref().map(|g| {
        let what = format!("{}@{}", target.login, container.name);
        watch_grant(&gateway, &handle, channel, &session_id, g, what)
    });
    let ends = super::pump::Ends {
        handle: &handle,
        channel,
        container: &container.name,
        init: &watch,
        audit: &session_audit,
        kill,
    };
    let outcome = super::pump::pump(&gateway, ends, attached, io, recorder, input).await;
    if let Some(task) = grant_watch {
        task.abort();
    }
    if outcome.container_stopped {
        let _ = audit(
            Some(session_id.clone()),
            AuditEvent::ContainerStopped {
                container: container.name.clone(),
            },
        )
        .await;
    }

    // Closing records.
    let (status, exit_status, exit_signal) = match &outcome.exit {
        Some(ExitStatus::Code(c)) => ("ended", Some(i64::from(*c)), None),
        Some(ExitStatus::Signal { signal, .. }) => {
            ("ended", None, Some(super::pump::signal_name(*signal)))
        }
        None => ("failed", None, None),
    };
    let (bytes, sha256) = match &outcome.digest {
        Some(d) => (d.bytes as i64, d.sha256.clone()),
        None => (0, String::new()),
    };
    // The audit event first: a reader who sees the row ended also finds it.
    let _ = audit(
        Some(session_id.clone()),
        AuditEvent::SessionEnded {
            exit_status,
            exit_signal: exit_signal.clone(),
            recording_bytes: bytes,
            recording_sha256: sha256.clone(),
            output_bytes: outcome.digest.as_ref().map(|d| d.output_bytes),
        },
    )
    .await;
    if let Err(e) = gateway
        .store
        .end_session(
            &session_id,
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
    tracing::info!(%session_id, ?outcome.exit, "session ended");
    index_transcript(&gateway, &session_id, &recording_path).await;
    Ok(())
}

/// Follows the grant session `session_id` depends on: warns on the
/// client's stderr (`[grants] warn_before`) and ends the session with the
/// reason when the grant expires or is revoked. Aborted when the session
/// ends first.
fn watch_grant(
    gateway: &Arc<Gateway>,
    handle: &Handle,
    channel: ChannelId,
    session_id: &str,
    grant: &crate::store::AccessRequestRecord,
    what: String,
) -> tokio::task::JoinHandle<()> {
    let warn: Vec<std::time::Duration> = gateway
        .config
        .grants
        .warn_before
        .iter()
        .map(|d| **d)
        .collect();
    let mut watch = GrantWatch::new(
        gateway.store.clone(),
        &grant.id,
        grant.expires_at.unwrap_or(0),
        &warn,
    );
    let (gateway, handle, session_id, id) = (
        gateway.clone(),
        handle.clone(),
        session_id.to_string(),
        grant.id.clone(),
    );
    tokio::spawn(async move {
        loop {
            match watch.next().await {
                GrantEvent::Warning { remaining } => {
                    let text = format!(
                        "\r\nPortcullis: your access to {what} (grant {id}) ends in {}.\r\n",
                        crate::grants::format_duration(remaining)
                    );
                    let _ = handle.extended_data(channel, 1, text.into_bytes()).await;
                }
                GrantEvent::Ended { reason } => {
                    tracing::info!(%session_id, grant = %id, %reason, "grant ended; ending its session");
                    gateway.live.end(
                        &session_id,
                        crate::session::EndReason::GrantEnded {
                            grant_id: id.clone(),
                            reason,
                        },
                    );
                    return;
                }
            }
        }
    })
}

/// Largest recording indexed for `sessions search`, in bytes (64 MiB).
const MAX_INDEXED_RECORDING_BYTES: u64 = 64 * 1024 * 1024;

/// Adds the session's transcript text to the search index. A failure is
/// logged: the recording itself is the evidence, the index only finds it.
async fn index_transcript(gateway: &Gateway, session_id: &str, path: &std::path::Path) {
    // Indexing parses the whole recording in memory: a huge one (a 512 MiB
    // binary dump is a 3 GiB file) is left unindexed rather than risk the
    // gateway's memory. It is still the evidence, and `export` reads it.
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if size > MAX_INDEXED_RECORDING_BYTES {
        tracing::warn!(
            bytes = size,
            limit = MAX_INDEXED_RECORDING_BYTES,
            "recording too large to index for search"
        );
        return;
    }
    let path = path.to_path_buf();
    let lines = tokio::task::spawn_blocking(move || {
        crate::recording::read(&path).map(|(_, events)| crate::recording::transcript_lines(&events))
    })
    .await;
    match lines {
        Ok(Ok(lines)) => {
            if let Err(e) = gateway.store.index_transcript(session_id, &lines).await {
                tracing::error!(error = %e, "cannot index the transcript");
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot read the recording to index it"),
        Err(e) => tracing::error!(error = %e, "transcript indexing failed"),
    }
}

/// Writes audit events about one running session.
pub(super) struct SessionAudit {
    gateway: Arc<Gateway>,
    session_id: String,
    principal: String,
    client_addr: String,
}

impl SessionAudit {
    /// Appends `event` for this session.
    pub(super) async fn record(&self, event: AuditEvent) -> Result<i64, crate::store::StoreError> {
        let subject = AuditSubject {
            session_id: Some(&self.session_id),
            principal: Some(&self.principal),
            client_addr: Some(&self.client_addr),
        };
        self.gateway.audit.record(&subject, &event).await
    }
}
