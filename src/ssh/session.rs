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
use super::target::Target;
use crate::attach::{self, AttachRequest, ExitStatus, PtyRequest};
use crate::audit::{AuditEvent, AuditSubject, truncate};
use crate::identity::Principal;
use crate::inventory::ContainerState;
use crate::policy::{AccessRequest, Action};
use crate::recording::{Header, Recorder, SessionMetadata};
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
    /// Who.
    pub principal: Principal,
    /// The SSH user name (the target).
    pub user: String,
    /// Client `ip:port`.
    pub client_addr: String,
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
        principal = %start.principal.subject,
        target = %truncate(&start.user, 128),
        peer = %start.client_addr,
    );
    let handle = start.handle.clone();
    let channel = start.channel;
    if let Err(refusal) = run_session(start).instrument(span).await {
        refuse(&handle, channel, &refusal).await;
    }
}

/// A refusal message for the user.
struct Refusal(String);

async fn refuse(handle: &Handle, channel: ChannelId, refusal: &Refusal) {
    let text = format!("{}\r\n", refusal.0);
    let _ = handle.extended_data(channel, 1, text.into_bytes()).await;
    let _ = handle.exit_status_request(channel, 1).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

fn denial(action: Action, target: &Target) -> Refusal {
    let verb = match action {
        Action::Shell => "open a shell",
        Action::Exec => "run commands",
        // Not started here (see transfer.rs and forward.rs).
        Action::Sftp | Action::PortForward | Action::AgentForward => "do that",
    };
    Refusal(format!(
        "Access denied: you may not {verb} as {} on {}.",
        target.login, target.container
    ))
}

async fn run_session(start: SessionStart) -> Result<(), Refusal> {
    let SessionStart {
        gateway,
        handle,
        channel,
        principal,
        user,
        client_addr,
        kind,
        pty,
        env,
        input,
    } = start;
    let audit = |session_id: Option<String>, event: AuditEvent| {
        let gateway = gateway.clone();
        let principal = principal.subject.clone();
        let client_addr = client_addr.clone();
        async move {
            let subject = AuditSubject {
                session_id: session_id.as_deref(),
                principal: Some(&principal),
                client_addr: Some(&client_addr),
            };
            gateway.audit.record(&subject, &event).await.map_err(|e| {
                tracing::error!(error = %e, "cannot write audit event; refusing");
                Refusal("Access refused: the gateway cannot write its audit log right now.".into())
            })
        }
    };
    let (action, command) = match &kind {
        SessionKind::Shell => (Action::Shell, None),
        SessionKind::Exec(c) => (Action::Exec, Some(c.clone())),
    };

    // Which container.
    let target = match Target::parse(&user, &gateway.config.default_login) {
        Ok(t) => t,
        Err(e) => {
            audit(
                None,
                AuditEvent::TargetRefused {
                    target: truncate(&user, 128),
                    reason: e.to_string(),
                },
            )
            .await?;
            return Err(Refusal(
                "Access denied: the SSH user name must be [login@]container.".into(),
            ));
        }
    };
    let container = match gateway.inventory.find(&target.container).await {
        Ok(c) => c,
        Err(e) => {
            audit(
                None,
                AuditEvent::TargetRefused {
                    target: truncate(&user, 128),
                    reason: e.to_string(),
                },
            )
            .await?;
            return Err(denial(action, &target));
        }
    };

    // May they.
    let decision = gateway.policy.decide(&AccessRequest {
        principal: &principal.subject,
        groups: &principal.groups,
        container: &container.name,
        labels: &container.labels,
        login: &target.login,
        action,
        command: command.as_deref(),
    });
    let (allowed, reasons) = match decision {
        Ok(d) => (
            d.allowed,
            d.policies.into_iter().chain(d.errors).collect::<Vec<_>>(),
        ),
        Err(e) => (false, vec![e.to_string()]),
    };
    audit(
        None,
        AuditEvent::AccessDecided {
            action: action.as_str().to_string(),
            container: container.name.clone(),
            login: target.login.clone(),
            allowed,
            reasons,
        },
    )
    .await?;
    if !allowed {
        return Err(denial(action, &target));
    }
    let init_pid = match container.state {
        ContainerState::Running { init_pid } => init_pid,
        ContainerState::NotRunning(state) => {
            audit(
                None,
                AuditEvent::TargetRefused {
                    target: truncate(&user, 128),
                    reason: format!("container is {state}"),
                },
            )
            .await?;
            // Policy allowed this principal: say why it cannot go in.
            return Err(Refusal(format!(
                "Access refused: the container {} is {} (not running).",
                container.name,
                state.to_lowercase()
            )));
        }
    };
    let init = match attach::PinnedInit::pin(init_pid, &container.cgroup, None) {
        Ok(init) => init,
        Err(e) => {
            audit(
                None,
                AuditEvent::SessionFailed {
                    container: container.name.clone(),
                    reason: e.to_string(),
                },
            )
            .await?;
            return Err(Refusal(format!("Access refused: {}.", e.user_message())));
        }
    };

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
        Refusal("Access refused: the gateway cannot record this session right now.".into())
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
            return Err(Refusal(format!("Access refused: {}.", e.user_message())));
        }
    };
    tracing::info!(%session_id, container = %container.name, login = %target.login, "session started");

    let session_audit = SessionAudit {
        gateway: gateway.clone(),
        session_id: session_id.clone(),
        principal: principal.subject.clone(),
        client_addr: client_addr.clone(),
    };
    let ends = super::pump::Ends {
        handle: &handle,
        channel,
        container: &container.name,
        init: &watch,
        audit: &session_audit,
        kill: gateway.live.register(&session_id),
    };
    let outcome = super::pump::pump(&gateway, ends, attached, io, recorder, input).await;
    gateway.live.remove(&session_id);
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

/// Adds the session's transcript text to the search index. A failure is
/// logged: the recording itself is the evidence, the index only finds it.
async fn index_transcript(gateway: &Gateway, session_id: &str, path: &std::path::Path) {
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
