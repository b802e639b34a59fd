//! The life of a shell or a command, top to bottom: who may
//! ([`super::access`]), its record opened ([`super::record`]), the process
//! started in the container ([`crate::attach`]), registered live
//! ([`super::live`]) and followed by its grant, the bytes pumped
//! (`pump.rs`), and its end: the process ended, the client told, the
//! record closed.
//!
//! [`run`] is the gateway's path (ssh today; the web console and the fleet
//! relay tomorrow); [`run_on_host`] is `portcullis attach`'s: host root is
//! already past every policy, so it skips the decision but not the record.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::access::{Access, Ask, authorize};
use super::io::{InputReceiver, Output};
use super::pump::{Outcome, Pump, STOP_DETECT_MIN, pump};
use super::record::{RecordError, RecordStart, SessionRecord};
use super::{Caller, EndReason, LiveSession, Refusal};
use crate::attach::{
    self, AttachError, AttachOptions, AttachRequest, ExitStatus, HelperBinary, PinnedInit,
    PtyRequest, SessionKind,
};
use crate::audit::{AuditEvent, AuditLog, truncate};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::grants::{GrantEvent, GrantWatch};
use crate::policy::Action;
use crate::store::{AccessRequestRecord, Store};

/// A shell or command as asked for.
#[derive(Debug, Clone, Default)]
pub struct ShellRequest {
    /// `None`: a login shell; `Some`: `shell -c COMMAND`.
    pub command: Option<String>,
    /// The PTY, when one was asked for.
    pub pty: Option<PtyRequest>,
    /// Client environment (only locale variables survive, see
    /// [`crate::attach::plan::build_env`]).
    pub env: Vec<(String, String)>,
}

/// Runs one shell or command for `caller` to its end, talking to the
/// client through `input` and `output`. Every outcome is audited; a
/// refusal is sent through `output`.
pub async fn run<O: Output>(
    gateway: Arc<Gateway>,
    caller: Caller,
    request: ShellRequest,
    input: InputReceiver,
    output: O,
) {
    if let Some(edge) = gateway.edge.clone() {
        // An edge runs no session itself: it relays to the node.
        let request = super::remote::RemoteShell {
            command: request.command,
            pty: request.pty,
            env: request.env,
        };
        super::remote::run(gateway, &edge, caller, request, input, output).await;
        return;
    }
    run_with_id(gateway, caller, request, input, output, None).await
}

/// [`run`] on this gateway, with the session id given when `id` is some
/// (a node running a session an edge relays, under the id the edge's
/// certificate names).
pub async fn run_with_id<O: Output>(
    gateway: Arc<Gateway>,
    caller: Caller,
    request: ShellRequest,
    input: InputReceiver,
    output: O,
    id: Option<String>,
) {
    let span = tracing::info_span!(
        "session",
        principal = %caller.principal.subject,
        target = %truncate(&caller.user, 128),
        peer = %caller.client_addr,
    );
    async {
        match start(&gateway, &caller, &request, id).await {
            Ok((access, record)) => {
                live(&gateway, &caller, request, access, record, input, output).await;
            }
            Err(refusal) => output.refuse(&refusal).await,
        }
    }
    .instrument(span)
    .await
}

/// Decides, and opens the record.
async fn start(
    gw: &Gateway,
    caller: &Caller,
    request: &ShellRequest,
    id: Option<String>,
) -> Result<(Access, SessionRecord), Refusal> {
    let (action, verb) = match request.command {
        None => (Action::Shell, "open a shell"),
        Some(_) => (Action::Exec, "run commands"),
    };
    let ask = Ask {
        action,
        command: request.command.as_deref(),
        context: &[],
        verb,
    };
    let access = authorize(gw, caller, &ask).await?;
    let start = RecordStart {
        principal: &caller.principal.subject,
        email: caller.principal.email.as_deref(),
        client_addr: &caller.client_addr,
        container: &access.container.name,
        login: &access.target.login,
        command: request.command.as_deref(),
        pty: request.pty.as_ref(),
        term_in_header: true,
        grant_id: access.grant.as_ref().map(|g| g.id.as_str()),
        record_input: gw.config.recording.record_input,
        index: true,
    };
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let record = SessionRecord::open_with_id(gw, &start, id)
        .await
        .map_err(|e| refusal_of(&e))?;
    Ok((access, record))
}

/// The refusal for a record that could not be opened.
pub(crate) fn refusal_of(e: &RecordError) -> Refusal {
    tracing::error!(error = %e, "session record unavailable; refusing");
    e.refusal()
}

/// Into the container, and on to the end.
async fn live<O: Output>(
    gw: &Arc<Gateway>,
    caller: &Caller,
    request: ShellRequest,
    access: Access,
    mut record: SessionRecord,
    input: InputReceiver,
    output: O,
) {
    let options = access.attach_options(&gw.config);
    let Access {
        target,
        container,
        init,
        grant,
        recheck,
        ..
    } = access;
    let attach_request = AttachRequest {
        container: container.name.clone(),
        login: target.login.clone(),
        command: request.command,
        pty: request.pty,
        env: request.env,
    };
    let (watch, attached, io) = match spawn(&gw.helper, &init, &attach_request, &options).await {
        Ok(started) => started,
        Err(e) => {
            record.fail(e.to_string()).await;
            let refusal = Refusal::new(format!("Access refused: {}.", e.user_message()));
            output.refuse(&refusal).await;
            return;
        }
    };
    let session_id = record.id().to_string();
    tracing::info!(%session_id, container = %container.name, login = %target.login, "session started");
    let ending = gw.live.register(LiveSession {
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
    let leftovers = super::end::normal_leftovers(&container.labels, grant.is_some());
    let (notices, notices_rx) = mpsc::channel(4);
    let grant_watch = grant.map(|g| {
        let what = format!("{}@{}", target.login, container.name);
        follow_grant(gw.clone(), session_id.clone(), g, what, notices)
    });
    let outcome = pump(Pump {
        attached,
        io,
        record: &mut record,
        input,
        output: &output,
        init: &watch,
        container: &container.name,
        ending: Some(ending),
        shutdown: Some(&gw.shutdown),
        notices: Some(notices_rx),
        kill_grace: gw.config.session.kill_grace,
        leftovers,
        stop_wait: gw.config.session.kill_grace.max(STOP_DETECT_MIN),
        idle_timeout: gw.config.session.idle_timeout,
        max_duration: gw.config.session.max_duration,
    })
    .await;
    if let Some(task) = grant_watch {
        task.abort();
    }
    end(record, outcome, &container.name, output).await;
}

/// Starts the process with what the decision allowed (`options`) and the
/// watch on the container's init.
async fn spawn(
    helper: &HelperBinary,
    init: &PinnedInit,
    request: &AttachRequest,
    options: &AttachOptions,
) -> Result<(attach::InitWatch, attach::Attached, attach::SessionIo), AttachError> {
    let watch = init.watch()?;
    let (attached, io) = attach::start(helper, init, request, &SessionKind::Shell, options).await?;
    Ok((watch, attached, io))
}

/// The end of a session that ran: a stopped container audited, then the
/// client told (why, the exit) while the record closes.
async fn end<O: Output>(
    record: SessionRecord,
    outcome: Outcome,
    container: &str,
    output: O,
) -> Option<ExitStatus> {
    if outcome.container_stopped {
        let _ = record
            .audit(AuditEvent::ContainerStopped {
                container: container.to_string(),
            })
            .await;
    }
    let exit = outcome.exit;
    let tell = async {
        if let Some(reason) = outcome.ended_by.as_ref().filter(|r| r.is_shown()) {
            output.ended(reason).await;
        }
        output.finish(exit).await;
    };
    tokio::join!(record.close(exit), tell);
    exit
}

/// Follows the grant session `session_id` depends on: sends warnings
/// (`[grants] warn_before`) to `notices` and ends the session when the
/// grant expires or is revoked. Aborted when the session ends first.
fn follow_grant(
    gw: Arc<Gateway>,
    session_id: String,
    grant: AccessRequestRecord,
    what: String,
    notices: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    let warn: Vec<std::time::Duration> = gw.config.grants.warn_before.iter().map(|d| **d).collect();
    let mut watch = GrantWatch::new(
        gw.store.clone(),
        &grant.id,
        grant.expires_at.unwrap_or(0),
        &warn,
    );
    tokio::spawn(async move {
        loop {
            match watch.next().await {
                GrantEvent::Warning { remaining } => {
                    let text = format!(
                        "\r\nPortcullis: your access to {what} (grant {}) ends in {}.\r\n",
                        grant.id,
                        crate::grants::format_duration(remaining)
                    );
                    let _ = notices.try_send(text);
                }
                GrantEvent::Ended { reason } => {
                    tracing::info!(%session_id, grant = %grant.id, %reason, "grant ended; ending its session");
                    gw.live.end(
                        &session_id,
                        EndReason::GrantEnded {
                            grant_id: grant.id.clone(),
                            reason,
                        },
                    );
                    return;
                }
            }
        }
    })
}

/// What `portcullis attach` brings to a session on the host.
pub struct HostSession<'a> {
    /// The configuration (recordings directory, recording settings).
    pub config: &'a Config,
    /// The database.
    pub store: &'a Store,
    /// The audit log.
    pub audit: &'a AuditLog,
    /// The sealed helper.
    pub helper: &'a HelperBinary,
    /// The container's init, pinned.
    pub init: &'a PinnedInit,
    /// The container.
    pub container: &'a str,
    /// Login inside it.
    pub login: &'a str,
    /// `host:uid=N`.
    pub principal: &'a str,
}

/// Why a host session did not run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Its record could not be opened.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The process could not be started (its record is closed `failed`).
    #[error("{}", .0.user_message())]
    Attach(#[from] AttachError),
}

/// Runs a shell or command for an operator on the host (`portcullis
/// attach`): recorded and audited like any session, without a policy
/// decision; returns its exit (`None` when it could not be learnt).
///
/// # Errors
/// [`HostError`] when it could not start.
pub async fn run_on_host<O: Output>(
    host: HostSession<'_>,
    request: ShellRequest,
    input: InputReceiver,
    output: O,
) -> Result<Option<ExitStatus>, HostError> {
    let start = RecordStart {
        principal: host.principal,
        email: None,
        client_addr: "local",
        container: host.container,
        login: host.login,
        command: request.command.as_deref(),
        pty: request.pty.as_ref(),
        term_in_header: false,
        grant_id: None,
        record_input: false,
        index: false,
    };
    let mut record = SessionRecord::open(host.audit, host.store, host.config, &start).await?;
    let attach_request = AttachRequest {
        container: host.container.to_string(),
        login: host.login.to_string(),
        command: request.command,
        pty: request.pty,
        env: request.env,
    };
    // Host root is past every policy: any uid, as the login's name says.
    let options = AttachOptions::name_only();
    let (watch, attached, io) = match spawn(host.helper, host.init, &attach_request, &options).await
    {
        Ok(started) => started,
        Err(e) => {
            record.fail(e.to_string()).await;
            return Err(HostError::Attach(e));
        }
    };
    let outcome = pump(Pump {
        attached,
        io,
        record: &mut record,
        input,
        output: &output,
        init: &watch,
        container: host.container,
        ending: None,
        shutdown: None,
        notices: None,
        kill_grace: host.config.session.kill_grace,
        leftovers: crate::attach::Leftovers::Kill,
        stop_wait: STOP_DETECT_MIN,
        idle_timeout: None,
        max_duration: None,
    })
    .await;
    Ok(end(record, outcome, host.container, output).await)
}
