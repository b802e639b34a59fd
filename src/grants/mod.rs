//! Just-in-time access (issue 7): access requests, approvals, time-boxed
//! grants and their end.
//!
//! Nobody holds privileged access by default: a principal asks for
//! `login@container` for a while with a reason ([`Workflow::request`]);
//! principals the policy allows approve or deny it ([`Workflow::approve`],
//! [`Workflow::deny`]); each approval is recorded (one per approver), and
//! once the policy permits `activate` with the approvals so far (one on
//! dev, two on prod with the shipped policies) the request becomes a grant
//! that ends at its expiry or when revoked ([`Workflow::revoke`]). Grants live in the database, so
//! a restarted gateway keeps them; [`GrantWatch`] follows one grant for a
//! live session and [`audit_expired`] audits expiries.
//!
//! Every step is decided by the Cedar policy (actions `request`,
//! `approve`, `activate`, `revoke`, `review`) and audited before it takes effect; a step whose
//! audit event cannot be written does not happen. This module knows
//! nothing of SSH: the broker commands live in `ssh::broker`.

pub mod notify;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::audit::{AuditEvent, AuditLog, AuditSubject, truncate};
use crate::config::{GrantsConfig, valid_name};
use crate::identity::Principal;
use crate::policy::{Action, PolicyEngine, WorkflowRequest};
use crate::store::{
    AccessRequestRecord, ApprovalRecord, NewAccessRequest, Store, StoreError, now_ms,
};

pub use watch::{GrantEvent, GrantWatch};

/// Longest accepted reason or comment, in bytes.
pub const MAX_REASON_BYTES: usize = 1000;

/// Why a workflow step was refused. `Display` is one line fit for the user.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The database failed; nothing was changed (fail closed).
    #[error("the gateway cannot reach its database right now")]
    Store(#[from] StoreError),
    /// The audit event could not be written, so the step did not happen.
    #[error("the gateway cannot write its audit log right now")]
    Audit(#[source] StoreError),
    /// No request has this id.
    #[error("no access request {0}")]
    NotFound(String),
    /// The login is not a valid account name.
    #[error("invalid login name")]
    Login,
    /// The duration is zero or above the cap.
    #[error("the duration must be above zero and at most {}", humantime::format_duration(*.0))]
    Duration(Duration),
    /// The reason is empty, too long or does not match the ticket pattern.
    #[error("{0}")]
    Reason(String),
    /// The policy does not allow this step.
    #[error("the policy does not allow you to {0}")]
    Denied(String),
    /// The request is not in a state this step applies to.
    #[error("{0}")]
    State(String),
}

/// What [`Workflow::approve`] did: the request as it is now (`status`
/// `approved` once it became a grant, still `pending` when the policy
/// wants more approvals) and its approvals so far, oldest first.
#[derive(Debug, Clone)]
pub struct Approval {
    /// The request (and grant) now.
    pub request: AccessRequestRecord,
    /// Its approvals so far, this one included.
    pub approvals: Vec<ApprovalRecord>,
}

impl Approval {
    /// True when the request became (or already was) a grant.
    pub fn activated(&self) -> bool {
        self.request.status == "approved"
    }
}

/// The refusal of a second approval by the same approver; `so_far` is
/// the request's approvals count, theirs included.
fn already_approved(id: &str, so_far: usize) -> GrantError {
    GrantError::State(format!(
        "you already approved request {id}; each approver counts once \
         (approvals so far: {so_far}), another approver must approve it"
    ))
}

/// Who acts, and from where.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// The authenticated principal.
    pub principal: &'a Principal,
    /// Client `ip:port`.
    pub client_addr: &'a str,
}

/// What a new request asks for.
#[derive(Debug, Clone)]
pub struct RequestSpec<'a> {
    /// Target container.
    pub container: &'a str,
    /// Its labels (from the inventory).
    pub labels: &'a BTreeMap<String, String>,
    /// Login inside the container.
    pub login: &'a str,
    /// Length of the grant.
    pub duration: Duration,
    /// Why.
    pub reason: &'a str,
    /// Break-glass: the requester (in `[grants] break_glass_group`) grants
    /// it to themselves at once, capped by `break_glass_max_duration`.
    pub break_glass: bool,
}

/// The workflow's dependencies, borrowed from the gateway.
#[derive(Clone, Copy)]
pub struct Workflow<'a> {
    /// The database.
    pub store: &'a Store,
    /// The audit log.
    pub audit: &'a AuditLog,
    /// The loaded policies.
    pub policy: &'a PolicyEngine,
    /// `[grants]`.
    pub config: &'a GrantsConfig,
}

impl Workflow<'_> {
    async fn record(&self, actor: &Actor<'_>, event: AuditEvent) -> Result<(), GrantError> {
        let subject = AuditSubject {
            session_id: None,
            principal: Some(&actor.principal.subject),
            client_addr: Some(actor.client_addr),
        };
        self.audit
            .record(&subject, &event)
            .await
            .map(|_| ())
            .map_err(GrantError::Audit)
    }

    /// Audits a refusal and returns it.
    async fn refuse(
        &self,
        actor: &Actor<'_>,
        action: &str,
        request: (Option<&str>, &str, &str),
        error: GrantError,
        detail: String,
    ) -> GrantError {
        let event = AuditEvent::AccessRequestRefused {
            action: action.to_string(),
            request_id: request.0.map(str::to_string),
            container: request.1.to_string(),
            login: request.2.to_string(),
            reason: detail,
        };
        match self.record(actor, event).await {
            Ok(()) => error,
            Err(e) => e,
        }
    }

    /// Audits and returns the refusal of a request for `container`, which
    /// the inventory does not know.
    pub async fn refuse_unknown_container(
        &self,
        actor: &Actor<'_>,
        container: &str,
        login: &str,
        detail: String,
    ) -> GrantError {
        let e = GrantError::NotFound(format!("for an unknown container ({container})"));
        self.refuse(actor, "request", (None, container, login), e, detail)
            .await
    }

    /// A request's reason: [`Workflow::check_reason_plain`], and the
    /// configured ticket pattern.
    fn check_reason(&self, reason: &str) -> Result<(), GrantError> {
        self.check_reason_plain(reason)?;
        if let Some(pattern) = &self.config.reason_pattern {
            let ok = regex::Regex::new(pattern).is_ok_and(|re| re.is_match(reason));
            if !ok {
                return Err(GrantError::Reason(format!(
                    "the reason must name a ticket matching {pattern}"
                )));
            }
        }
        Ok(())
    }

    /// Creates a pending request after checking the login, the duration
    /// cap (`[grants] max_duration`, per label), the reason pattern and the
    /// policy (action `request`).
    ///
    /// # Errors
    /// [`GrantError`]; every refusal is audited.
    pub async fn request(
        &self,
        actor: &Actor<'_>,
        spec: &RequestSpec<'_>,
    ) -> Result<AccessRequestRecord, GrantError> {
        let what = (None, spec.container, spec.login);
        let verb = if spec.break_glass {
            "break-glass"
        } else {
            "request"
        };
        if !valid_name(spec.login) {
            return Err(self
                .refuse(actor, verb, what, GrantError::Login, "invalid login".into())
                .await);
        }
        let mut max = self.config.max_duration_for(spec.labels);
        if spec.break_glass {
            let member = self
                .config
                .break_glass_group
                .as_ref()
                .is_some_and(|g| actor.principal.groups.contains(g));
            if !member {
                let e = GrantError::Denied("use break-glass (not in the break-glass group)".into());
                return Err(self
                    .refuse(actor, verb, what, e, "not in the break-glass group".into())
                    .await);
            }
            max = max.min(self.config.break_glass_max_duration);
        }
        if spec.duration.is_zero() || spec.duration > max {
            let detail = format!("duration {}s above the cap", spec.duration.as_secs());
            return Err(self
                .refuse(actor, verb, what, GrantError::Duration(max), detail)
                .await);
        }
        if let Err(e) = self.check_reason(spec.reason) {
            let detail = e.to_string();
            return Err(self.refuse(actor, verb, what, e, detail).await);
        }
        let duration_seconds = i64::try_from(spec.duration.as_secs()).unwrap_or(i64::MAX);
        let decision = self.policy.decide_workflow(&WorkflowRequest {
            principal: &actor.principal.subject,
            groups: &actor.principal.groups,
            action: Action::Request,
            container: spec.container,
            labels: spec.labels,
            requester: &actor.principal.subject,
            login: spec.login,
            duration_seconds,
            reason: spec.reason,
            break_glass: spec.break_glass,
            approvals: 0,
        });
        let policies = match decision {
            Ok(d) if d.allowed => d.policies,
            Ok(d) => {
                let detail = format!("policy: {:?} {:?}", d.policies, d.errors);
                let e = GrantError::Denied(format!("ask for {}@{}", spec.login, spec.container));
                return Err(self.refuse(actor, verb, what, e, detail).await);
            }
            Err(e) => {
                let detail = e.to_string();
                let e = GrantError::Denied("ask for this".into());
                return Err(self.refuse(actor, verb, what, e, detail).await);
            }
        };
        let id = new_id();
        self.record(
            actor,
            AuditEvent::AccessRequested {
                request_id: id.clone(),
                container: spec.container.to_string(),
                login: spec.login.to_string(),
                duration_seconds,
                reason: spec.reason.to_string(),
                policies,
            },
        )
        .await?;
        let now = now_ms();
        if spec.break_glass {
            tracing::warn!(
                principal = %actor.principal.subject,
                container = spec.container,
                login = spec.login,
                reason = spec.reason,
                "break-glass access taken"
            );
            self.record(
                actor,
                AuditEvent::BreakGlassGranted {
                    grant_id: id.clone(),
                    container: spec.container.to_string(),
                    login: spec.login.to_string(),
                    expires_at: now.saturating_add(duration_seconds.saturating_mul(1000)),
                    reason: spec.reason.to_string(),
                },
            )
            .await?;
        }
        self.store
            .insert_access_request(&NewAccessRequest {
                id: &id,
                requester: &actor.principal.subject,
                container: spec.container,
                login: spec.login,
                duration_seconds,
                reason: spec.reason,
                break_glass: spec.break_glass,
            })
            .await?;
        if spec.break_glass {
            self.store
                .approve_access_request(&id, &actor.principal.subject, Some("break-glass"), now)
                .await?;
        }
        let r = self.get(&id).await?;
        let event = if spec.break_glass {
            "break_glass"
        } else {
            "request_created"
        };
        self.notify(event, &r, &[], actor).await;
        Ok(r)
    }

    async fn notify(
        &self,
        event: &str,
        r: &AccessRequestRecord,
        approvals: &[ApprovalRecord],
        actor: &Actor<'_>,
    ) {
        notify::notify(
            self.store,
            self.config,
            event,
            r,
            approvals,
            &actor.principal.subject,
        )
        .await;
    }

    /// Marks break-glass grant `r` reviewed (policy action `review`).
    ///
    /// # Errors
    /// [`GrantError`]; every refusal is audited.
    pub async fn review(
        &self,
        actor: &Actor<'_>,
        r: &AccessRequestRecord,
        labels: &BTreeMap<String, String>,
        comment: Option<&str>,
    ) -> Result<(), GrantError> {
        if !r.break_glass || r.reviewed_at.is_some() {
            let what = (Some(r.id.as_str()), r.container.as_str(), r.login.as_str());
            let e = GrantError::State(format!("{} is not an unreviewed break-glass grant", r.id));
            return Err(self
                .refuse(actor, "review", what, e, "nothing to review".into())
                .await);
        }
        let approvals = self.approvals(&r.id).await?.len();
        self.allowed(actor, "review", Action::Review, r, labels, approvals)
            .await?;
        self.record(
            actor,
            AuditEvent::BreakGlassReviewed {
                grant_id: r.id.clone(),
                requester: r.requester.clone(),
                comment: comment.map(str::to_string),
            },
        )
        .await?;
        if !self
            .store
            .review_break_glass(&r.id, &actor.principal.subject, comment)
            .await?
        {
            return Err(GrantError::State(format!(
                "{} was reviewed meanwhile",
                r.id
            )));
        }
        Ok(())
    }

    /// The request `id`.
    ///
    /// # Errors
    /// [`GrantError::NotFound`] or [`GrantError::Store`].
    pub async fn get(&self, id: &str) -> Result<AccessRequestRecord, GrantError> {
        self.store
            .access_request(id)
            .await?
            .ok_or_else(|| GrantError::NotFound(truncate(id, 64)))
    }

    /// The workflow question for `actor` taking `action` on request `r`,
    /// with `approvals` approvals so far.
    fn question<'q>(
        actor: &'q Actor<'_>,
        action: Action,
        r: &'q AccessRequestRecord,
        labels: &'q BTreeMap<String, String>,
        approvals: usize,
    ) -> WorkflowRequest<'q> {
        WorkflowRequest {
            principal: &actor.principal.subject,
            groups: &actor.principal.groups,
            action,
            container: &r.container,
            labels,
            requester: &r.requester,
            login: &r.login,
            duration_seconds: r.duration_seconds,
            reason: &r.reason,
            break_glass: r.break_glass,
            approvals: i64::try_from(approvals).unwrap_or(i64::MAX),
        }
    }

    /// Asks the policy whether `actor` may take `action` on request `r`,
    /// which has `approvals` approvals so far.
    async fn allowed(
        &self,
        actor: &Actor<'_>,
        verb: &str,
        action: Action,
        r: &AccessRequestRecord,
        labels: &BTreeMap<String, String>,
        approvals: usize,
    ) -> Result<Vec<String>, GrantError> {
        let decision = self
            .policy
            .decide_workflow(&Self::question(actor, action, r, labels, approvals));
        let what = (Some(r.id.as_str()), r.container.as_str(), r.login.as_str());
        let detail = match decision {
            Ok(d) if d.allowed => return Ok(d.policies),
            Ok(d) => format!("policy: {:?} {:?}", d.policies, d.errors),
            Err(e) => e.to_string(),
        };
        let own = r.requester == actor.principal.subject;
        let e = GrantError::Denied(if own && action == Action::Approve {
            format!("{verb} your own request {}", r.id)
        } else {
            format!("{verb} request {}", r.id)
        });
        Err(self.refuse(actor, verb, what, e, detail).await)
    }

    /// The approvals of request `id` so far, oldest first.
    ///
    /// # Errors
    /// [`GrantError::Store`].
    pub async fn approvals(&self, id: &str) -> Result<Vec<ApprovalRecord>, GrantError> {
        Ok(self.store.approvals_of(id).await?)
    }

    async fn pending(
        &self,
        actor: &Actor<'_>,
        verb: &str,
        r: &AccessRequestRecord,
    ) -> Result<(), GrantError> {
        if r.status == "pending" {
            return Ok(());
        }
        let what = (Some(r.id.as_str()), r.container.as_str(), r.login.as_str());
        let e = GrantError::State(format!("request {} is already {}", r.id, r.status));
        let detail = format!("status {}", r.status);
        Err(self.refuse(actor, verb, what, e, detail).await)
    }

    /// Records `actor`'s approval of pending request `r` (policy action
    /// `approve`, context `approvals` = the approvals before this one),
    /// then asks the policy whether the request may become a grant (action
    /// `activate`, context `approvals` counting this one). When it may,
    /// the grant starts now and lasts the asked-for duration; else the
    /// request stays pending for more approvers. Each approver counts
    /// once: approving twice is refused. The approval and the activation
    /// are audited, each before it takes effect.
    ///
    /// # Errors
    /// [`GrantError`]; every refusal is audited.
    pub async fn approve(
        &self,
        actor: &Actor<'_>,
        r: &AccessRequestRecord,
        labels: &BTreeMap<String, String>,
        comment: Option<&str>,
    ) -> Result<Approval, GrantError> {
        self.pending(actor, "approve", r).await?;
        if let Some(c) = comment
            && (c.len() > MAX_REASON_BYTES || c.chars().any(char::is_control))
        {
            return Err(GrantError::Reason(format!(
                "the comment must be one line of at most {MAX_REASON_BYTES} bytes"
            )));
        }
        let what = (Some(r.id.as_str()), r.container.as_str(), r.login.as_str());
        let me = actor.principal.subject.as_str();
        let before = self.approvals(&r.id).await?;
        if before.iter().any(|a| a.approver == me) {
            let e = already_approved(&r.id, before.len());
            return Err(self
                .refuse(actor, "approve", what, e, "already approved by them".into())
                .await);
        }
        let policies = self
            .allowed(actor, "approve", Action::Approve, r, labels, before.len())
            .await?;
        let now = now_ms();
        self.record(
            actor,
            AuditEvent::AccessRequestApproved {
                request_id: r.id.clone(),
                requester: r.requester.clone(),
                container: r.container.clone(),
                login: r.login.clone(),
                approvals: i64::try_from(before.len().saturating_add(1)).unwrap_or(i64::MAX),
                comment: comment.map(str::to_string),
                policies,
            },
        )
        .await?;
        if !self.store.add_approval(&r.id, me, comment, now).await? {
            // A concurrent approval of theirs (another gateway) came first.
            let count = self.approvals(&r.id).await?.len();
            let e = already_approved(&r.id, count);
            let detail = "already approved by them (concurrently)".to_string();
            return Err(self.refuse(actor, "approve", what, e, detail).await);
        }
        let approvals = self.approvals(&r.id).await?;
        let activate = self.policy.decide_workflow(&Self::question(
            actor,
            Action::Activate,
            r,
            labels,
            approvals.len(),
        ));
        let activation = match activate {
            Ok(d) if d.allowed => Some(d.policies),
            Ok(d) => {
                tracing::debug!(
                    id = %r.id,
                    approvals = approvals.len(),
                    policies = ?d.policies,
                    "approval recorded; activate not permitted yet"
                );
                None
            }
            Err(e) => {
                let detail = format!("activate: {e}");
                let e = GrantError::Denied(format!(
                    "start grant {} (the policy cannot decide `activate`; your approval \
                     is recorded)",
                    r.id
                ));
                return Err(self.refuse(actor, "activate", what, e, detail).await);
            }
        };
        if let Some(policies) = activation {
            self.record(
                actor,
                AuditEvent::GrantApproved {
                    grant_id: r.id.clone(),
                    requester: r.requester.clone(),
                    container: r.container.clone(),
                    login: r.login.clone(),
                    expires_at: now.saturating_add(r.duration_seconds.saturating_mul(1000)),
                    comment: comment.map(str::to_string),
                    approvers: approvals.iter().map(|a| a.approver.clone()).collect(),
                    policies,
                },
            )
            .await?;
            let won = self
                .store
                .approve_access_request(&r.id, me, comment, now)
                .await?;
            if !won {
                // Another approver's activation (or a denial) came first.
                let current = self.get(&r.id).await?;
                if current.status != "approved" {
                    return Err(GrantError::State(format!(
                        "request {} was decided meanwhile",
                        r.id
                    )));
                }
            }
        }
        let request = self.get(&r.id).await?;
        self.notify("approved", &request, &approvals, actor).await;
        Ok(Approval { request, approvals })
    }

    /// Denies pending request `r` (policy action `approve`).
    ///
    /// # Errors
    /// [`GrantError`]; every refusal is audited.
    pub async fn deny(
        &self,
        actor: &Actor<'_>,
        r: &AccessRequestRecord,
        labels: &BTreeMap<String, String>,
        reason: &str,
    ) -> Result<(), GrantError> {
        self.pending(actor, "deny", r).await?;
        self.check_reason_plain(reason)?;
        let approvals = self.approvals(&r.id).await?.len();
        self.allowed(actor, "deny", Action::Approve, r, labels, approvals)
            .await?;
        self.record(
            actor,
            AuditEvent::AccessRequestDenied {
                request_id: r.id.clone(),
                requester: r.requester.clone(),
                reason: reason.to_string(),
            },
        )
        .await?;
        if !self
            .store
            .deny_access_request(&r.id, &actor.principal.subject, reason)
            .await?
        {
            return Err(GrantError::State(format!(
                "request {} was decided meanwhile",
                r.id
            )));
        }
        self.notify("denied", r, &[], actor).await;
        Ok(())
    }

    /// Any reason (requests, denials, revocations): one non-empty line of
    /// at most [`MAX_REASON_BYTES`] bytes.
    fn check_reason_plain(&self, reason: &str) -> Result<(), GrantError> {
        if reason.trim().is_empty()
            || reason.len() > MAX_REASON_BYTES
            || reason.chars().any(char::is_control)
        {
            return Err(GrantError::Reason(format!(
                "a one-line reason of at most {MAX_REASON_BYTES} bytes is required (--reason)"
            )));
        }
        Ok(())
    }

    /// Revokes grant `r` now (policy action `revoke`). Live sessions that
    /// depend on it end within a [`GrantWatch`] poll.
    ///
    /// # Errors
    /// [`GrantError`]; every refusal is audited.
    pub async fn revoke(
        &self,
        actor: &Actor<'_>,
        r: &AccessRequestRecord,
        labels: &BTreeMap<String, String>,
        reason: &str,
    ) -> Result<(), GrantError> {
        let now = now_ms();
        if !r.active_at(now) {
            let what = (Some(r.id.as_str()), r.container.as_str(), r.login.as_str());
            let e = GrantError::State(format!("{} is not an active grant", r.id));
            return Err(self
                .refuse(actor, "revoke", what, e, "not active".into())
                .await);
        }
        self.check_reason_plain(reason)?;
        let approvals = self.approvals(&r.id).await?;
        self.allowed(actor, "revoke", Action::Revoke, r, labels, approvals.len())
            .await?;
        self.record(
            actor,
            AuditEvent::GrantRevoked {
                grant_id: r.id.clone(),
                requester: r.requester.clone(),
                container: r.container.clone(),
                login: r.login.clone(),
                reason: reason.to_string(),
            },
        )
        .await?;
        if !self
            .store
            .revoke_grant(&r.id, &actor.principal.subject, reason, now)
            .await?
        {
            return Err(GrantError::State(format!("{} ended meanwhile", r.id)));
        }
        self.notify("revoked", r, &approvals, actor).await;
        Ok(())
    }
}

/// Audits every grant that reached its expiry and is not audited yet (one
/// gateway of several wins each). Returns how many were audited.
///
/// # Errors
/// [`StoreError`] when the database cannot be read or written.
pub async fn audit_expired(
    store: &Store,
    audit: &AuditLog,
    config: &GrantsConfig,
) -> Result<usize, StoreError> {
    let mut done = 0;
    for g in store.unaudited_expired_grants(now_ms()).await? {
        if !store.set_expiry_audited(&g.id, true).await? {
            continue;
        }
        let subject = AuditSubject {
            session_id: None,
            principal: Some(&g.requester),
            client_addr: None,
        };
        let event = AuditEvent::GrantExpired {
            grant_id: g.id.clone(),
            requester: g.requester.clone(),
            container: g.container.clone(),
            login: g.login.clone(),
            expired_at: g.expires_at.unwrap_or_default(),
        };
        if let Err(e) = audit.record(&subject, &event).await {
            // Give the claim back so the next round audits it.
            let _ = store.set_expiry_audited(&g.id, false).await;
            return Err(e);
        }
        notify::notify(store, config, "expired", &g, &[], "portcullis").await;
        done += 1;
    }
    Ok(done)
}

/// A new request id: 12 lowercase hex digits (48 random bits).
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// `d` as people write it: `2h`, `90m`, `1h 30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests;
