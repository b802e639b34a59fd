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
use crate::attach::{self, AttachRequest, PtyRequest};
use crate::audit::{AuditEvent, truncate};
use crate::grants::{GrantEvent, GrantWatch};
use crate::policy::Action;
use crate::session::access::{Access, Ask, authorize};
use crate::session::record::{RecordError, RecordStart, SessionRecord};
use crate::session::{Caller, Refusal};

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

    // The record: recording, row and start event.
    let start = RecordStart {
        principal: &principal.subject,
        email: principal.email.as_deref(),
        client_addr: &client_addr,
        container: &container.name,
        login: &target.login,
        command: command.as_deref(),
        pty: pty.as_ref(),
        term_in_header: true,
        grant_id: depends_on.as_ref().map(|g| g.id.as_str()),
        record_input: gateway.config.recording.record_input,
        index: true,
    };
    let mut record = SessionRecord::open(&gateway.audit, &gateway.store, &gateway.config, &start)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "session record unavailable; refusing");
            match e {
                RecordError::Recording(_) => Refusal::recording_unavailable(),
                RecordError::Store(_) => Refusal::audit_unavailable(),
            }
        })?;
    let session_id = record.id().to_string();

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
            record.fail(e.to_string()).await;
            return Err(Refusal::new(format!(
                "Access refused: {}.",
                e.user_message()
            )));
        }
    };
    tracing::info!(%session_id, container = %container.name, login = %target.login, "session started");

    let kill = gateway.live.register(crate::session::LiveSession {
        id: session_id.clone(),
        principal: principal.subject.clone(),
        issuer: principal.issuer.clone(),
        container: container.name.clone(),
        login: target.login.clone(),
        client_addr: client_addr.clone(),
        key_fingerprint: caller.key_fingerprint.clone(),
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
        kill,
    };
    let outcome = super::pump::pump(&gateway, ends, attached, io, &mut record, input).await;
    if let Some(task) = grant_watch {
        task.abort();
    }
    if outcome.container_stopped {
        let _ = record
            .audit(AuditEvent::ContainerStopped {
                container: container.name.clone(),
            })
            .await;
    }
    record.close(outcome.exit).await;
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
