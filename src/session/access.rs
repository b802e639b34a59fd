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
use crate::attach::{
    AttachError, AttachOptions, LoginIds, PinnedInit, UnreproducibleSeccomp, resolve_login,
};
use crate::audit::{AuditEvent, truncate};
use crate::config::{Config, SeccompFallback};
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
    /// The login as the container resolved it when the policy decided.
    pub ids: LoginIds,
    /// The decision allowed uid 0 (it was made on uid 0).
    pub allow_uid0: bool,
    /// The decision, to make again after a policy reload.
    pub recheck: super::live::Recheck,
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
    still_valid(gw, caller, &target).await?;
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
    let place = gw.store.gateway_id().to_string();
    let (grant, not_honoured) = honoured(gw, caller, grant, &place, &container.labels).await?;
    // Root is a uid, not a name: the login is resolved in the container's
    // own files before the decision, which sees its uid (`toor:x:0:0` is
    // root). A container that is not running, an init that cannot be
    // pinned or a login that does not resolve is decided without a uid and
    // refused after the decision, so a denied caller learns nothing of it.
    let pinned = match container.state {
        ContainerState::Running { init_pid } => Some(PinnedInit::pin(
            init_pid,
            &container.cgroup,
            container.init_start_time,
        )),
        ContainerState::NotRunning(_) => None,
    };
    let ids = match &pinned {
        Some(Ok(init)) => Some(resolve_login(init, &target.login)),
        _ => None,
    };
    let resolved = match &ids {
        Some(Ok(ids)) => {
            let event = AuditEvent::LoginResolved {
                container: container.name.clone(),
                login: target.login.clone(),
                uid: ids.uid,
                gid: ids.gid,
            };
            caller.audit(gw, None, event).await?;
            Some(ids)
        }
        _ => None,
    };
    let decided = decide(
        gw,
        caller,
        &target,
        &container,
        ask,
        grant.as_ref(),
        resolved,
    )
    .await?;
    let Some(depends_on_grant) = decided else {
        return Err(with_grant_reason(denial(gw, ask, &target), not_honoured));
    };
    let init = match pinned {
        Some(Ok(init)) => init,
        None => {
            let state = match &container.state {
                ContainerState::NotRunning(state) => state.clone(),
                ContainerState::Running { .. } => "running".into(),
            };
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
        Some(Err(e)) => return Err(start_failed(gw, caller, &container, &e).await),
    };
    let ids = match ids {
        Some(Ok(ids)) => ids,
        Some(Err(e)) => return Err(start_failed(gw, caller, &container, &e).await),
        None => {
            let e = crate::attach::AttachError::ContainerNotRunning;
            return Err(start_failed(gw, caller, &container, &e).await);
        }
    };
    // The decision was made on this uid: uid 0 only if it allowed uid 0.
    let allow_uid0 = ids.uid == 0;
    let grant = if depends_on_grant { grant } else { None };
    let recheck = recheck(caller, &target, &container, ask, grant.as_ref(), &ids);
    Ok(Access {
        target,
        container,
        init,
        grant,
        ids,
        allow_uid0,
        recheck,
    })
}

/// The decision [`decide`] made, as a [`super::live::Recheck`] for the
/// policies loaded later: the same question, owned (with the grant it
/// depended on, if any).
fn recheck(
    caller: &Caller,
    target: &Target,
    container: &Container,
    ask: &Ask<'_>,
    grant: Option<&AccessRequestRecord>,
    ids: &LoginIds,
) -> super::live::Recheck {
    let principal = caller.principal.clone();
    let container = container.clone();
    let login = target.login.clone();
    let action = ask.action;
    let command = ask.command.map(str::to_string);
    let mut context: Vec<(String, ContextValue)> = ask
        .context
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    context.push(("uid".into(), ContextValue::Long(i64::from(ids.uid))));
    context.push(("gid".into(), ContextValue::Long(i64::from(ids.gid))));
    let grant = grant.map(|g| {
        (
            g.id.clone(),
            g.decided_by.clone().unwrap_or_default(),
            g.expires_at.unwrap_or(0) / 1000,
        )
    });
    super::live::Recheck::new(move |policy| {
        let context: Vec<(&str, ContextValue)> = context
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        policy
            .decide_as_with_container(
                &principal.issuer,
                &AccessRequest {
                    principal: &principal.subject,
                    groups: &principal.groups,
                    container: &container.name,
                    labels: &container.labels,
                    login: &login,
                    action,
                    command: command.as_deref(),
                    grant: grant
                        .as_ref()
                        .map(|(id, approver, expires_at)| GrantContext {
                            id,
                            approver,
                            expires_at: *expires_at,
                        }),
                },
                ContainerAttributes::from(&container),
                &context,
            )
            .is_ok_and(|d| d.allowed)
    })
}

/// Keeps `grant` only where it was approved (issue 12): the container at
/// `place` (this gateway's id, or the fleet node) labelled `labels` as
/// when it was asked for and approved. A grant used elsewhere is audited
/// (`GrantNotHonoured`) and dropped; the second value is why, for the
/// user.
///
/// # Errors
/// [`Refusal::audit_unavailable`] when that cannot be audited.
pub(crate) async fn honoured(
    gw: &Gateway,
    caller: &Caller,
    grant: Option<AccessRequestRecord>,
    place: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(Option<AccessRequestRecord>, Option<String>), Refusal> {
    let Some(g) = grant else {
        return Ok((None, None));
    };
    let Some(why) = g.scope_mismatch(place, labels) else {
        return Ok((Some(g), None));
    };
    let event = AuditEvent::GrantNotHonoured {
        grant_id: g.id.clone(),
        target: format!("{}@{}", g.login, g.container),
        reason: why.clone(),
    };
    caller.audit(gw, None, event).await?;
    Ok((None, Some(why)))
}

/// `refusal`, with why the caller's grant was not honoured when it was not.
pub(crate) fn with_grant_reason(refusal: Refusal, why: Option<String>) -> Refusal {
    match why {
        None => refusal,
        Some(why) => Refusal::new(format!(
            "{}\r\nYour grant is not honoured: {why}.",
            refusal.message()
        )),
    }
}

/// Audits a start that failed after an allowed decision (the init could
/// not be pinned, the login did not resolve) and returns its refusal.
async fn start_failed(
    gw: &Gateway,
    caller: &Caller,
    container: &Container,
    e: &AttachError,
) -> Refusal {
    let event = AuditEvent::SessionFailed {
        container: container.name.clone(),
        reason: e.to_string(),
    };
    if let Err(refusal) = caller.audit(gw, None, event).await {
        return refusal;
    }
    Refusal::new(format!("Access refused: {}.", e.user_message()))
}

impl Access {
    /// What the decision allowed, for [`crate::attach::start`]: uid 0 only
    /// when the decision was made on uid 0, the ids it was made for (a
    /// session whose login resolves differently by its start is refused),
    /// and the configured seccomp fallback.
    pub fn attach_options(&self, config: &Config) -> AttachOptions {
        AttachOptions {
            allow_uid0: self.allow_uid0,
            expected: Some(self.ids.clone()),
            unreproducible_seccomp: match config.attach.unreproducible_seccomp {
                SeccompFallback::Refuse => UnreproducibleSeccomp::Refuse,
                SeccompFallback::DenyListOnly => UnreproducibleSeccomp::DenyListOnly,
            },
        }
    }
}

/// Re-checks what the caller logged in with, at every session (every new
/// channel of a connection, a ControlMaster's too; issue 12): the
/// credential (certificate's `valid_before`, ID token's `exp` without a
/// refresh token, key binding's end) has not ended, no lock covers the
/// principal, its groups, issuer or key, the container or the login, and
/// the key's binding (when it logged in with one) is neither revoked nor
/// expired. Audited
/// (`TargetRefused`) before the refusal; the database not answering
/// refuses (fail closed).
async fn still_valid(gw: &Gateway, caller: &Caller, target: &Target) -> Result<(), Refusal> {
    let refused = |reason: String| AuditEvent::TargetRefused {
        target: truncate(&caller.user, 128),
        reason,
    };
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "cannot read locks or key bindings; refusing");
        Refusal::database_unavailable()
    };
    if let Some(end) = caller.credential_expires_at
        && end <= crate::store::now_ms()
    {
        let reason = format!("the credential it logged in with ended at {end} (unix ms)");
        caller.audit(gw, None, refused(reason)).await?;
        return Err(Refusal::new(
            "Access denied: the credential you logged in with has expired; log in again (a new \
             connection).",
        ));
    }
    let who = crate::store::LockSubject {
        principal: &caller.principal.subject,
        groups: &caller.principal.groups,
        issuer: &caller.principal.issuer,
        key_fingerprint: caller.key_fingerprint.as_deref(),
        container: Some(&target.container),
        login: Some(&target.login),
    };
    let lock = super::lock::covering(&gw.store, &who)
        .await
        .map_err(unavailable)?;
    if let Some(lock) = lock {
        let reason = format!("locked ({}): {}", lock.id, truncate(&lock.reason, 512));
        caller.audit(gw, None, refused(reason)).await?;
        return Err(Refusal::new(super::lock::message(&lock)));
    }
    let Some(fingerprint) = &caller.key_fingerprint else {
        return Ok(());
    };
    let binding = gw
        .store
        .key_binding(fingerprint)
        .await
        .map_err(unavailable)?;
    // Only a binding of this principal is its credential (a certificate's
    // key may be bound to someone else, or not at all).
    let Some(binding) = binding.filter(|b| b.principal == caller.principal.subject) else {
        return Ok(());
    };
    let ended = match (binding.revoked_at, binding.expires_at) {
        (Some(_), _) => "revoked",
        (None, until) if until <= crate::store::now_ms() => "expired",
        _ => return Ok(()),
    };
    let reason = format!("the key binding of {fingerprint} is {ended}");
    caller.audit(gw, None, refused(reason)).await?;
    Err(Refusal::new(format!(
        "Access denied: your key's binding was {ended}; log in again (a new connection)."
    )))
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
/// `container`, with `grant` (the caller's active grant for it) and the
/// login's `uid` and `gid` (`ids`, when resolved) in context, and audits
/// the decision before anything happens. `Some(true)`:
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
    ids: Option<&LoginIds>,
) -> Result<Option<bool>, Refusal> {
    // The `User` carries its issuer and the `Container` its owner and
    // purpose (issue 14 M1), so policies can tell sources apart.
    let mut context = ask.context.to_vec();
    if let Some(ids) = ids {
        context.push(("uid", ContextValue::Long(i64::from(ids.uid))));
        context.push(("gid", ContextValue::Long(i64::from(ids.gid))));
    }
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
            &context,
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
