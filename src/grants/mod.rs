//! Just-in-time access (issue 7): access requests, approvals, time-boxed
//! grants and their end.
//!
//! Nobody holds privileged access by default: a principal asks for
//! `login@container` for a while with a reason ([`Workflow::request`]);
//! principals the policy allows approve or deny it ([`Workflow::approve`],
//! [`Workflow::deny`]); each approval is recorded (one per approver), and
//! once the policy permits `activate` with the approvals so far (one on
//! dev, two on prod with the shipped policies) the request becomes a grant
//! that ends at its expiry or when revoked ([`Workflow::revoke`]). Grants
//! live in the database, so a restarted gateway keeps them; [`GrantWatch`]
//! follows one grant for a live session and [`audit_expired`] audits
//! expiries (of grants, and of requests left pending past `[grants]
//! request_ttl`). A grant records where its container was and how it was
//! labelled when asked for and approved; the session core honours it
//! only there ([`crate::store::AccessRequestRecord::scope_mismatch`]).
//!
//! Every step is decided by the Cedar policy (actions `request`,
//! `approve`, `activate`, `revoke`, `review`) and audited before it takes
//! effect; a step whose audit event cannot be written does not happen.
//! Asking lives in `request.rs`, deciding in `decision.rs`. This module
//! knows nothing of SSH: the broker commands live in [`crate::commands`].

mod decision;
pub mod notify;
mod request;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::audit::{AuditEvent, AuditLog, AuditSubject, truncate};
use crate::config::GrantsConfig;
use crate::identity::Principal;
use crate::policy::PolicyEngine;
use crate::store::{AccessRequestRecord, ApprovalRecord, Store, StoreError, now_ms};

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

    /// The approvals of request `id` so far, oldest first.
    ///
    /// # Errors
    /// [`GrantError::Store`].
    pub async fn approvals(&self, id: &str) -> Result<Vec<ApprovalRecord>, GrantError> {
        Ok(self.store.approvals_of(id).await?)
    }

    /// Any reason (requests, denials, revocations): one non-empty line of
    /// at most [`MAX_REASON_BYTES`] bytes, without control, bidi or
    /// invisible characters ([`crate::text::check_visible`]: approvers
    /// must read what is stored, review L1).
    fn check_reason_plain(&self, reason: &str) -> Result<(), GrantError> {
        if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES {
            return Err(GrantError::Reason(format!(
                "a one-line reason of at most {MAX_REASON_BYTES} bytes is required (--reason)"
            )));
        }
        if let Err(e) = crate::text::check_visible(reason) {
            return Err(GrantError::Reason(format!(
                "the reason may not hold a {e} (--reason)"
            )));
        }
        Ok(())
    }
}

/// Audits every grant that reached its expiry, and every pending request
/// that reached `[grants] request_ttl` undecided (issue 12), not audited
/// yet (one gateway of several wins each). Returns how many were audited.
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
    for r in store.unaudited_expired_requests(now_ms()).await? {
        if !store.set_expiry_audited(&r.id, true).await? {
            continue;
        }
        let subject = AuditSubject {
            session_id: None,
            principal: Some(&r.requester),
            client_addr: None,
        };
        let event = AuditEvent::AccessRequestExpired {
            request_id: r.id.clone(),
            requester: r.requester.clone(),
            target: format!("{}@{}", r.login, r.container),
        };
        if let Err(e) = audit.record(&subject, &event).await {
            let _ = store.set_expiry_audited(&r.id, false).await;
            return Err(e);
        }
        notify::notify(store, config, "request_expired", &r, &[], "portcullis").await;
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
