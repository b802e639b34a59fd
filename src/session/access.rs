//! May this caller do this here? Target → container → audited policy
//! decision (for shells and commands with and without the caller's active
//! grant) → the container's init pinned, so a recycled PID is never
//! entered.
//!
//! Every step that refuses is audited before the refusal is sent, and a
//! step whose audit event cannot be written does not happen. An unknown
//! container reads like a denied one, so names cannot be probed.

use super::caller::{Caller, Destination};
use super::refusal::Refusal;
use super::target::Target;
use crate::attach::PinnedInit;
use crate::audit::{AuditEvent, truncate};
use crate::gateway::Gateway;
use crate::inventory::{Container, ContainerState, Inventory, InventoryError};
use crate::policy::{AccessRequest, Action, ContainerAttributes, ContextValue, GrantContext};
use crate::store::AccessRequestRecord;

/// What the caller asks to do.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The Cedar action: `shell`, `exec`, `sftp`, `port_forward`.
    pub action: Action,
    /// The command, for `exec`.
    pub command: Option<&'a str>,
    /// Extra policy context (`access` for sftp, `host`/`port` for
    /// forwards).
    pub context: &'a [(&'a str, ContextValue)],
    /// Completes "you may not ..." in the denial: `transfer files`.
    pub verb: &'a str,
}

impl Ask<'_> {
    /// Shells and commands: an active grant enters their decision, their
    /// denial says how to ask for access, and the broker's reserved name
    /// is refused as a container.
    fn interactive(&self) -> bool {
        matches!(self.action, Action::Shell | Action::Exec)
    }

    /// The `action` of the `AccessDecided` event: `sftp_read`,
    /// `sftp_write`, else the action's name.
    fn label(&self) -> String {
        match self.context.iter().find(|(k, _)| *k == "access") {
            Some((_, ContextValue::Str(a))) => format!("{}_{a}", self.action.as_str()),
            _ => self.action.as_str().to_string(),
        }
    }
}

/// An allowed request: where, and the pinned init to enter.
#[derive(Debug)]
pub struct Access {
    /// Login and container.
    pub target: Target,
    /// The container as the inventory found it.
    pub container: Container,
    /// Its init, pinned.
    pub init: PinnedInit,
    /// The grant the decision depended on (allowed with it, denied
    /// without): the session ends when it does.
    pub grant: Option<AccessRequestRecord>,
}

/// Resolves the caller's destination, asks the policy and pins the
/// container's init.
///
/// # Errors
/// The [`Refusal`] to send, after its audit event was written.
pub async fn authorize(gw: &Gateway, caller: &Caller, ask: &Ask<'_>) -> Result<Access, Refusal> {
    let refused = |reason: String| AuditEvent::TargetRefused {
        target: truncate(&caller.user, 128),
        reason,
    };
    let target = match &caller.destination {
        Destination::Container(t) => t.clone(),
        // The broker's name reaches here only for transfers and forwards.
        Destination::Broker => Target {
            login: gw.config.default_login.clone(),
            container: gw.config.grants.broker_user.clone(),
        },
        Destination::Invalid(e) => {
            caller.audit(gw, None, refused(e.to_string())).await?;
            return Err(Refusal::new(
                "Access denied: the SSH user name must be [login@]container.",
            ));
        }
    };
    if ask.interactive() && target.container == gw.config.grants.broker_user {
        let reason = "the broker's reserved name is not a container";
        caller.audit(gw, None, refused(reason.into())).await?;
        return Err(Refusal::new(format!(
            "Access denied: {c} is the gateway's own commands, not a container (ssh {c}@GATEWAY help).",
            c = target.container
        )));
    }
    let container = match gw.inventory.find(&target.container).await {
        Ok(c) => c,
        Err(e) => {
            caller.audit(gw, None, refused(e.to_string())).await?;
            return Err(denial(gw, ask, &target));
        }
    };
    let grant = if ask.interactive() {
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
        // Grants (issue 7) are for shells and commands; transfers and
        // forwards are decided on their own.
        None
    };
    let decided = decide(gw, caller, &target, &container, ask, grant.as_ref()).await?;
    let Some(depends_on_grant) = decided else {
        return Err(denial(gw, ask, &target));
    };
    let init_pid = match container.state {
        ContainerState::Running { init_pid } => init_pid,
        ContainerState::NotRunning(ref state) => {
            caller
                .audit(gw, None, refused(format!("container is {state}")))
                .await?;
            // Policy allowed this principal: say why it cannot go in.
            return Err(Refusal::new(format!(
                "Access refused: the container {} is {} (not running).",
                container.name,
                state.to_lowercase()
            )));
        }
    };
    // With the init's start time, a recycled init pid is refused.
    let init = match PinnedInit::pin(init_pid, &container.cgroup, container.init_start_time) {
        Ok(init) => init,
        Err(e) => {
            let event = AuditEvent::SessionFailed {
                container: container.name.clone(),
                reason: e.to_string(),
            };
            caller.audit(gw, None, event).await?;
            return Err(Refusal::new(format!(
                "Access refused: {}.",
                e.user_message()
            )));
        }
    };
    Ok(Access {
        target,
        container,
        init,
        grant: if depends_on_grant { grant } else { None },
    })
}

/// Why [`locate`] found nothing to enter.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The inventory does not know the container (or cannot answer).
    #[error(transparent)]
    NotFound(#[from] InventoryError),
    /// It is not running.
    #[error("the container {container} is {state} (not running)")]
    NotRunning {
        /// The container.
        container: String,
        /// Its state, lower case.
        state: String,
    },
    /// Its init could not be pinned.
    #[error("{}: {}", .0.user_message(), .0)]
    Pin(#[from] crate::attach::AttachError),
}

/// Finds running `container` and pins its init, without a decision: for
/// `portcullis attach`, whose caller (host root) is past every policy.
///
/// # Errors
/// [`LocateError`].
pub async fn locate(
    inventory: &Inventory,
    container: &str,
) -> Result<(Container, PinnedInit), LocateError> {
    let found = inventory.find(container).await?;
    let init_pid = match found.state {
        ContainerState::Running { init_pid } => init_pid,
        ContainerState::NotRunning(ref s) => {
            return Err(LocateError::NotRunning {
                container: container.to_string(),
                state: s.to_lowercase(),
            });
        }
    };
    let init = PinnedInit::pin(init_pid, &found.cgroup, found.init_start_time)?;
    Ok((found, init))
}

/// Asks the policy whether `caller` may do `ask` as `target.login` on
/// `container`, with `grant` (the caller's active grant for it) in
/// context, and audits the decision before anything happens. `Some(true)`:
/// allowed only thanks to the grant; `Some(false)`: allowed on its own;
/// `None`: denied.
///
/// # Errors
/// [`Refusal::audit_unavailable`] when the decision cannot be audited.
pub async fn decide(
    gw: &Gateway,
    caller: &Caller,
    target: &Target,
    container: &Container,
    ask: &Ask<'_>,
    grant: Option<&AccessRequestRecord>,
) -> Result<Option<bool>, Refusal> {
    // The `User` carries its issuer and the `Container` its owner and
    // purpose (issue 14 M1), so policies can tell sources apart.
    let question = |grant: Option<GrantContext<'_>>| {
        gw.policy.decide_as_with_container(
            &caller.principal.issuer,
            &AccessRequest {
                principal: &caller.principal.subject,
                groups: &caller.principal.groups,
                container: &container.name,
                labels: &container.labels,
                login: &target.login,
                action: ask.action,
                command: ask.command,
                grant,
            },
            ContainerAttributes::from(container),
            ask.context,
        )
    };
    let decision = question(grant.map(|g| GrantContext {
        id: &g.id,
        approver: g.decided_by.as_deref().unwrap_or(""),
        expires_at: g.expires_at.unwrap_or(0) / 1000,
    }));
    // The session depends on the grant when the policy would refuse
    // without it.
    let needs_grant = match (&decision, grant) {
        (Ok(d), Some(_)) if d.allowed => !question(None).is_ok_and(|d| d.allowed),
        _ => false,
    };
    let (allowed, reasons) = match decision {
        Ok(d) => (
            d.allowed,
            d.policies.into_iter().chain(d.errors).collect::<Vec<_>>(),
        ),
        Err(e) => (false, vec![e.to_string()]),
    };
    let event = AuditEvent::AccessDecided {
        action: ask.label(),
        container: container.name.clone(),
        login: target.login.clone(),
        allowed,
        reasons,
    };
    caller.audit(gw, None, event).await?;
    Ok(allowed.then_some(needs_grant))
}

/// The denial of `ask` on `target`; for shells and commands with the
/// exact broker line that asks for access (issue 7).
pub(crate) fn denial(gw: &Gateway, ask: &Ask<'_>, target: &Target) -> Refusal {
    let head = format!(
        "Access denied: you may not {} as {} on {}.",
        ask.verb, target.login, target.container
    );
    if !ask.interactive() {
        return Refusal::new(head);
    }
    let line = gw.broker_line(&format!(
        "request {} --login {} --for 1h --reason \"...\"",
        target.container, target.login
    ));
    Refusal::new(format!("{head}\r\nTo ask for access: {line}"))
}
