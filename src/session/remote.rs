//! A shell or command on a fleet edge (issue 16): the "remote attach".
//! The edge decides the policy as the local path does ([`super::access`]:
//! the target, the caller's grant, the audited decision), on the container
//! the fleet reports ([`EdgeRelay::find`]: its node and labels), then
//! relays the session to the container's node ([`EdgeRelay::open_session`]:
//! a user certificate naming this session's id, a tunnel stream, SSH) and
//! passes requests, input, output, window changes, signals and the exit
//! through, 1:1. The node's session core decides again, attaches and
//! records under the same session id; the edge keeps its second witness
//! of the output (`fleet_witness`).
//!
//! Fails closed with one message: an unknown container reads like a
//! denied one; a node that cannot be reached is named ("node n1
//! unreachable"), audited before the refusal is sent; a node lost during
//! the session ends it with that reason. It never attaches, records or
//! writes a session row itself (the node does), and never speaks SSH.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::access::{Ask, authorize, decide, denial, honoured, with_grant_reason};
use super::io::{Input, InputReceiver, Output};
use super::{Caller, Destination, EndReason, Refusal};
use crate::attach::{ExitStatus, PtyRequest};
use crate::audit::{AuditEvent, truncate};
use crate::fleet::edge_relay::EdgeRelay;
use crate::fleet::locate::LocateError;
use crate::fleet::relay::{RelayClient, RelayEvent, RelayRequest, RelaySession};
use crate::fleet::{RelayAction, RelayGrant};
use crate::gateway::Gateway;
use crate::inventory::{Backend, Container, ContainerState};
use crate::policy::{Action, ContextValue};
use crate::store::FleetContainer;

/// A shell or command as the user asked for it (`shell::ShellRequest`'s
/// fields, passed on to the node as they are).
pub(crate) struct RemoteShell {
    /// `None`: a login shell; `Some`: the command.
    pub command: Option<String>,
    /// The PTY, when one was asked for.
    pub pty: Option<PtyRequest>,
    /// Client environment (the node keeps only locale variables).
    pub env: Vec<(String, String)>,
}

/// Relays one shell or command for `caller` through `edge` to its end.
/// Every refusal is audited before it is sent through `output`.
pub(crate) async fn run<O: Output>(
    gw: Arc<Gateway>,
    edge: &EdgeRelay,
    caller: Caller,
    request: RemoteShell,
    input: InputReceiver,
    output: O,
) {
    match open(&gw, edge, &caller, &request).await {
        Ok((relay, session_id)) => {
            let relayed = Relayed {
                relay,
                session_id,
                witnessed: true,
            };
            relay_until_end(&gw, edge, &caller, relayed, input, output).await
        }
        Err(refusal) => output.refuse(&refusal).await,
    }
}

/// A file transfer as the user asked for it, for the edge to decide and
/// pass on: the `sftp` subsystem, or legacy scp's exec command.
pub(crate) struct RemoteTransfer {
    /// `read` or `write`: the policy's `access` for `sftp` (the subsystem
    /// is decided for `read`; the node decides `write` again and serves
    /// read-only when refused).
    pub access: &'static str,
    /// `None`: the `sftp` subsystem; `Some`: the scp exec command.
    pub scp_command: Option<String>,
}

/// Relays one file transfer for `caller` through `edge` to its end:
/// decided on the edge as [`super::transfer`] decides (the policy action
/// `sftp` with `access`), then served by the node's own transfer session
/// under the same id. Every refusal is audited before it is sent through
/// `output`.
pub(crate) async fn run_transfer<O: Output>(
    gw: Arc<Gateway>,
    edge: &EdgeRelay,
    caller: Caller,
    transfer: RemoteTransfer,
    input: InputReceiver,
    output: O,
) {
    match open_transfer(&gw, edge, &caller, transfer).await {
        Ok((relay, session_id)) => {
            let relayed = Relayed {
                relay,
                session_id,
                // Its recording is header-only: nothing to compare.
                witnessed: false,
            };
            relay_until_end(&gw, edge, &caller, relayed, input, output).await
        }
        Err(refusal) => output.refuse(&refusal).await,
    }
}

/// The transfer's decision, then its relayed channel with the subsystem
/// or exec accepted by the node.
async fn open_transfer(
    gw: &Gateway,
    edge: &EdgeRelay,
    caller: &Caller,
    transfer: RemoteTransfer,
) -> Result<(RelaySession, String), Refusal> {
    let RemoteTransfer {
        access,
        scp_command,
    } = transfer;
    let start = match scp_command {
        None => RelayRequest::Subsystem("sftp".into()),
        Some(command) => RelayRequest::Exec(command.into_bytes()),
    };
    let context = [("access", ContextValue::Str(access.into()))];
    let ask = Ask {
        action: Action::Sftp,
        command: None,
        context: &context,
        verb: "transfer files",
    };
    let admitted = admit(gw, edge, caller, &ask, None).await?;
    let session_id = admitted.session_id.clone();
    let relay = admitted.open_session(gw, caller).await?;
    let lost = |_| {
        Refusal::new(format!(
            "Access refused: node {} unreachable.",
            relay.node()
        ))
    };
    if !relay.request(start).await.map_err(lost)? {
        let refusal = Refusal::new(format!(
            "Access refused: node {} refused the transfer.",
            relay.node()
        ));
        relay.close().await;
        return Err(refusal);
    }
    tracing::info!(%session_id, node = %relay.node(), "transfer relayed");
    Ok((relay, session_id))
}

/// The decision, then the relayed channel with its requests accepted.
async fn open(
    gw: &Gateway,
    edge: &EdgeRelay,
    caller: &Caller,
    request: &RemoteShell,
) -> Result<(RelaySession, String), Refusal> {
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
    let admitted = admit(gw, edge, caller, &ask, None).await?;
    let session_id = admitted.session_id.clone();
    let relay = admitted.open_session(gw, caller).await?;
    if let Err(refusal) = pass_requests(&relay, request).await {
        relay.close().await;
        return Err(refusal);
    }
    tracing::info!(%session_id, node = %relay.node(), "session relayed");
    Ok((relay, session_id))
}

/// A decision the edge allowed, logged in to the container's node with a
/// relay certificate naming it; no channel open yet.
pub(super) struct Admitted {
    /// The SSH connection to the node.
    pub(super) client: RelayClient,
    /// The session id the certificate names (the node uses it too).
    pub(super) session_id: String,
    /// The node.
    pub(super) node: String,
    /// The container.
    pub(super) container: String,
}

impl Admitted {
    /// Opens the session channel; a failure is audited as the node
    /// unreachable.
    async fn open_session(self, gw: &Gateway, caller: &Caller) -> Result<RelaySession, Refusal> {
        let Admitted {
            client,
            session_id,
            node,
            container,
        } = self;
        match client.open_session().await {
            Ok(relay) => Ok(relay),
            Err(e) => {
                tracing::warn!(%node, error = %e, "relay failed");
                let reason = e.to_string();
                Err(unreachable(gw, caller, &session_id, &container, &node, &reason).await)
            }
        }
    }
}

/// The edge's part of every relayed session: the target, the fleet's row
/// of its container, the caller's grant (shells and commands only, as on
/// a gateway), the audited decision of `ask` on the labels the node
/// reported, the node reachable, then a login to it with a certificate
/// naming the session (and, for a forward, its one `destination`).
/// Every refusal is audited before it is returned.
pub(super) async fn admit(
    gw: &Gateway,
    edge: &EdgeRelay,
    caller: &Caller,
    ask: &Ask<'_>,
    destination: Option<std::net::SocketAddr>,
) -> Result<Admitted, Refusal> {
    let interactive = matches!(ask.action, Action::Shell | Action::Exec);
    let target = match &caller.destination {
        Destination::Container(t) if t.container != gw.config.grants.broker_user => t.clone(),
        // A name that is no target, or the broker's reserved name: the
        // local path refuses (and audits) these before any lookup.
        _ => {
            return Err(match authorize(gw, caller, ask).await {
                Err(refusal) => refusal,
                Ok(_) => Refusal::new("Access denied."),
            });
        }
    };
    let found = match edge.find(&target.container).await {
        Ok(found) => found,
        Err(e @ LocateError::Unknown(_)) => {
            let event = AuditEvent::TargetRefused {
                target: truncate(&caller.user, 128),
                reason: e.to_string(),
            };
            caller.audit(gw, None, event).await?;
            return Err(denial(gw, ask, &target));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the fleet's containers; refusing");
            return Err(Refusal::database_unavailable());
        }
    };
    let container = container_of(&found);
    // Grants (issue 7) are for shells and commands; transfers and
    // forwards are decided on their own (as `access::authorize` does).
    let grant = if interactive {
        gw.store
            .active_grant_for(
                &caller.principal.subject,
                &container.name,
                &target.login,
                crate::store::now_ms(),
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read grants; refusing");
                Refusal::database_unavailable()
            })?
    } else {
        None
    };
    // The labels the fleet reports must be those approved (issue 12);
    // where the grant was approved is checked by the node, whose own
    // session core decides again under its own gateway id.
    let place = grant
        .as_ref()
        .and_then(|g| g.gateway.clone())
        .unwrap_or_default();
    let (grant, not_honoured) = honoured(gw, caller, grant, &place, &container.labels).await?;
    // No uid here: the login lives in the node's container; the node
    // resolves it and decides again on it before it attaches.
    let Some(depends_on_grant) =
        decide(gw, caller, &target, &container, ask, grant.as_ref(), None).await?
    else {
        return Err(with_grant_reason(denial(gw, ask, &target), not_honoured));
    };
    let session_id = uuid::Uuid::new_v4().to_string();
    let location = match edge.reachable(found).await {
        Ok(location) => location,
        Err(LocateError::Store(e)) => {
            tracing::error!(error = %e, "cannot read the fleet's nodes; refusing");
            return Err(Refusal::database_unavailable());
        }
        Err(e) => {
            let node = match &e {
                LocateError::Offline { node, .. } | LocateError::Removed { node, .. } => {
                    node.clone()
                }
                _ => String::new(),
            };
            return Err(unreachable(
                gw,
                caller,
                &session_id,
                &container.name,
                &node,
                &e.to_string(),
            )
            .await);
        }
    };
    let node = location.node;
    let relay_grant = RelayGrant {
        session_id: session_id.clone(),
        principal: caller.principal.clone(),
        login: target.login.clone(),
        container: container.name.clone(),
        action: match destination {
            None => RelayAction::Session,
            Some(_) => RelayAction::DirectTcpip,
        },
        grant_id: grant.filter(|_| depends_on_grant).map(|g| g.id),
        client_address: Some(caller.client_addr.clone()),
        edge: edge.edge_id.clone(),
        destination: destination.map(|d| d.to_string()),
    };
    let originator = caller.client_addr.parse().ok();
    match edge.connect(&node, &relay_grant, originator).await {
        Ok(client) => Ok(Admitted {
            client,
            session_id,
            node,
            container: container.name,
        }),
        Err(e) => {
            tracing::warn!(%node, error = %e, "relay failed");
            Err(unreachable(
                gw,
                caller,
                &session_id,
                &container.name,
                &node,
                &e.to_string(),
            )
            .await)
        }
    }
}

/// Audits that `node` could not be reached for `session_id` (why:
/// `reason`), and the refusal to send: that audit's own refusal when it
/// cannot be written.
pub(super) async fn unreachable(
    gw: &Gateway,
    caller: &Caller,
    session_id: &str,
    container: &str,
    node: &str,
    reason: &str,
) -> Refusal {
    let event = AuditEvent::SessionFailed {
        container: container.to_string(),
        reason: format!("node {node} unreachable: {reason}"),
    };
    match caller.audit(gw, Some(session_id), event).await {
        Ok(_) => Refusal::new(format!(
            "Access refused: node {node} unreachable ({reason})."
        )),
        Err(refusal) => refusal,
    }
}

/// Passes env, pty-req and shell/exec on; the node's "no" to the last one
/// is a refusal.
async fn pass_requests(relay: &RelaySession, request: &RemoteShell) -> Result<(), Refusal> {
    let lost = |_| {
        Refusal::new(format!(
            "Access refused: node {} unreachable.",
            relay.node()
        ))
    };
    for (name, value) in &request.env {
        let env = RelayRequest::Env {
            name: name.clone(),
            value: value.clone(),
        };
        relay.request(env).await.map_err(lost)?;
    }
    if let Some(pty) = &request.pty {
        let pty = RelayRequest::Pty {
            term: pty.term.clone(),
            cols: u32::from(pty.cols),
            rows: u32::from(pty.rows),
            pix_width: 0,
            pix_height: 0,
            modes: Vec::new(),
        };
        relay.request(pty).await.map_err(lost)?;
    }
    let start = match &request.command {
        None => RelayRequest::Shell,
        Some(command) => RelayRequest::Exec(command.clone().into_bytes()),
    };
    if relay.request(start).await.map_err(lost)? {
        Ok(())
    } else {
        Err(Refusal::new(format!(
            "Access refused: node {} refused the session.",
            relay.node()
        )))
    }
}

/// The container as the fleet reports it, for the decision: name, labels,
/// owner, purpose and the node's backend.
fn container_of(found: &FleetContainer) -> Container {
    let state = match found.state.as_str() {
        // The init lives on the node: the edge never pins or enters it.
        "RUNNING" => ContainerState::Running { init_pid: 0 },
        other => ContainerState::NotRunning(other.to_string()),
    };
    let backend = Backend::parse(&found.backend).unwrap_or(Backend::Lxc);
    let mut container = Container::new(&found.name, state, String::new(), backend);
    container.labels =
        serde_json::from_str::<BTreeMap<String, String>>(&found.labels).unwrap_or_default();
    container.owner = found.owner.clone();
    container.purpose = found.purpose.clone();
    container
}

/// A relayed channel whose session runs on the node.
struct Relayed {
    relay: RelaySession,
    session_id: String,
    /// The edge's witness of the output goes to `fleet_witness` at the end
    /// (shells and commands: their recordings hold the output).
    witnessed: bool,
}

/// Input to the node (window credit once the node took it), output and
/// the exit to the user, until the node ends the session, the user leaves,
/// the node is lost or the edge shuts down; then the edge's witness.
async fn relay_until_end<O: Output>(
    gw: &Gateway,
    edge: &EdgeRelay,
    caller: &Caller,
    relayed: Relayed,
    mut input: InputReceiver,
    output: O,
) {
    let Relayed {
        mut relay,
        session_id,
        witnessed,
    } = relayed;
    let node = relay.node().to_string();
    let mut events = relay.take_events();
    // The input side borrows the relay: it ends with this block.
    let (ended_by, exit) = {
        let feed = async {
            while let Some(event) = input.recv().await {
                let sent = match event {
                    Input::Data(bytes) => {
                        let n = bytes.len();
                        let sent = relay.data(&bytes).await;
                        input.consumed(n);
                        sent
                    }
                    Input::Eof => relay.eof().await,
                    Input::Resize { cols, rows } => relay
                        .request(RelayRequest::WindowChange {
                            cols: u32::from(cols),
                            rows: u32::from(rows),
                            pix_width: 0,
                            pix_height: 0,
                        })
                        .await
                        .map(|_| ()),
                    Input::Signal(number) => relay
                        .request(RelayRequest::Signal(super::signal::name(number)))
                        .await
                        .map(|_| ()),
                };
                if sent.is_err() {
                    // The node is gone: the output side says so.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::pin!(feed);
        let mut exit: Option<ExitStatus> = None;
        let ended_by = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(RelayEvent::Data(bytes)) => {
                        if output.stdout(bytes.to_vec()).await.is_err() {
                            break Some(EndReason::ClientGone);
                        }
                    }
                    Some(RelayEvent::ExtendedData(_, bytes)) => {
                        if output.stderr(bytes.to_vec()).await.is_err() {
                            break Some(EndReason::ClientGone);
                        }
                    }
                    Some(RelayEvent::Eof) => output.eof().await,
                    Some(RelayEvent::ExitStatus(code)) => {
                        exit = Some(ExitStatus::Code(i32::try_from(code).unwrap_or(255)));
                    }
                    Some(RelayEvent::ExitSignal { signal, core_dumped, .. }) => {
                        exit = super::signal::number(&signal)
                            .map(|signal| ExitStatus::Signal { signal, core_dumped });
                    }
                    // Closed: after its exit, the session's end; before, the
                    // node (or its tunnel) went away.
                    None if exit.is_some() => break None,
                    None => break Some(EndReason::NodeLost { node: node.clone() }),
                },
                () = &mut feed => break Some(EndReason::ClientGone),
                () = gw.shutdown.cancelled() => break Some(EndReason::Shutdown),
            }
        };
        (ended_by, exit)
    };
    if let Some(reason) = &ended_by
        && !matches!(reason, EndReason::ClientGone)
    {
        let event = AuditEvent::SessionTerminated {
            reason: reason.to_string(),
        };
        let _ = caller.audit(gw, Some(&session_id), event).await;
    }
    let witness = relay.witness();
    relay.close().await;
    if let Some(reason) = ended_by.as_ref().filter(|r| r.is_shown()) {
        output.ended(reason).await;
    }
    output.finish(exit).await;
    if witnessed
        && let Err(e) = witness
            .record(&edge.store, &session_id, &edge.edge_id, &node)
            .await
    {
        tracing::error!(%session_id, error = %e, "cannot record the edge's witness");
    }
    tracing::info!(%session_id, %node, reason = ?ended_by.map(|r| r.kind()), "relayed session ended");
}
