//! Deciding requests: approvals (each approver once; the grant starts
//! when the policy permits `activate`), denials, revocations and reviews.
//!
//! Each decision runs in one transaction that holds the audit append lock
//! ([`crate::store::RequestDecision`], issue 12): the request and its
//! approvals are read under it, the policy asked with what is really
//! there, and the step written with its audit events, so two approvers
//! never both count as "first" and a step that lost a race is refused
//! with an `AccessRequestRaceLost` event naming what it found. No one
//! approves their own request or reviews their own break-glass grant,
//! whatever the policy says.

use std::collections::BTreeMap;

use super::already_approved;
use super::{AccessRequestRecord, Actor, Approval, GrantError, MAX_REASON_BYTES, Workflow};
use crate::audit::{AuditEvent, AuditSubject, truncate};
use crate::policy::{Action, WorkflowRequest};
use crate::store::{RequestDecision, now_ms};

/// Why a step found the request in a state it does not apply to.
struct Stale {
    /// For the user.
    error: GrantError,
    /// For the audit event.
    detail: String,
    /// The caller saw another state: another decision came first.
    race: bool,
}

impl Workflow<'_> {
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

    /// Asks the policy whether `actor` may take `action` on request `r`
    /// with `approvals` approvals so far: the policies that allowed it, or
    /// the refusal and its audit detail.
    fn ask(
        &self,
        actor: &Actor<'_>,
        verb: &str,
        action: Action,
        r: &AccessRequestRecord,
        labels: &BTreeMap<String, String>,
        approvals: usize,
    ) -> Result<Vec<String>, (GrantError, String)> {
        let decision = self.policy.decide_workflow_action(
            &Self::question(actor, action, r, labels, approvals),
            r.action.as_deref(),
        );
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
        Err((e, detail))
    }

    /// The labels a request is decided on: those recorded when it was
    /// asked for (what the approvers approve is what was asked), else
    /// (rows from before migration 0017) `current`.
    fn decided_labels<'l>(
        r: &'l AccessRequestRecord,
        current: &'l BTreeMap<String, String>,
    ) -> &'l BTreeMap<String, String> {
        r.labels.as_ref().unwrap_or(current)
    }

    /// Opens the decision on request `r` (the audit append lock held).
    async fn begin(&self, r: &AccessRequestRecord) -> Result<RequestDecision, GrantError> {
        self.store
            .begin_request_decision(&r.id)
            .await?
            .ok_or_else(|| GrantError::NotFound(truncate(&r.id, 64)))
    }

    /// Appends `event` inside `d`.
    async fn record_in(
        &self,
        d: &mut RequestDecision,
        actor: &Actor<'_>,
        event: AuditEvent,
    ) -> Result<(), GrantError> {
        let subject = AuditSubject {
            session_id: None,
            principal: Some(&actor.principal.subject),
            client_addr: Some(actor.client_addr),
        };
        self.audit
            .record_in(d, &subject, &event)
            .await
            .map_err(GrantError::Audit)
    }

    /// Commits `d` and publishes its audit events.
    async fn commit(&self, d: RequestDecision) -> Result<(), GrantError> {
        let rows = d.commit().await.map_err(GrantError::Audit)?;
        self.audit.published_rows(&rows);
        Ok(())
    }

    /// Audits the refusal of `verb` inside `d` (an `AccessRequestRaceLost`
    /// when `race`), commits and returns `error`.
    async fn refuse_in(
        &self,
        mut d: RequestDecision,
        actor: &Actor<'_>,
        verb: &str,
        stale: Stale,
    ) -> GrantError {
        let r = &d.request;
        let event = if stale.race {
            AuditEvent::AccessRequestRaceLost {
                action: verb.to_string(),
                request_id: r.id.clone(),
                reason: stale.detail,
            }
        } else {
            AuditEvent::AccessRequestRefused {
                action: verb.to_string(),
                request_id: Some(r.id.clone()),
                container: r.container.clone(),
                login: r.login.clone(),
                reason: stale.detail,
            }
        };
        if let Err(e) = self.record_in(&mut d, actor, event).await {
            return e;
        }
        match self.commit(d).await {
            Ok(()) => stale.error,
            Err(e) => e,
        }
    }

    /// `None` when the request in `d` is still pending and not expired at
    /// `now`; else why not, a lost race when the caller saw it pending
    /// (`seen`).
    fn not_pending(
        &self,
        d: &RequestDecision,
        seen: &AccessRequestRecord,
        now: i64,
    ) -> Option<Stale> {
        let r = &d.request;
        if r.status == "pending" && !r.pending_expired_at(now) {
            return None;
        }
        let state = r.state_at(now);
        let error = if r.status == "pending" {
            GrantError::State(format!(
                "request {} expired: it waited longer than {} undecided (grants.request_ttl); \
                 ask again",
                r.id,
                super::format_duration(self.config.request_ttl)
            ))
        } else {
            GrantError::State(format!("request {} is already {}", r.id, r.status))
        };
        let by = r.decided_by.as_deref().unwrap_or("-");
        Some(Stale {
            error,
            detail: format!("status {state} (decided by {by})"),
            race: seen.status == "pending" && r.status != "pending",
        })
    }

    /// Records `actor`'s approval of pending request `r` (policy action
    /// `approve`, context `approvals` = the approvals before this one, as
    /// counted under the lock), then asks the policy whether the request
    /// may become a grant (action `activate`, context `approvals` counting
    /// this one). When it may, the grant starts now and lasts the
    /// asked-for duration; else the request stays pending for more
    /// approvers. Each approver counts once; the requester never approves
    /// (whatever the policy says); an expired request is refused. The
    /// decision is made on the labels recorded with the request (`labels`
    /// only for rows that have none). The approval, the activation and
    /// every refusal are audited in the same transaction.
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
        if let Some(c) = comment
            && (c.len() > MAX_REASON_BYTES || !crate::text::is_visible(c))
        {
            return Err(GrantError::Reason(format!(
                "the comment must be one line of at most {MAX_REASON_BYTES} bytes, without \
                 control, bidi or invisible characters"
            )));
        }
        let what = (Some(r.id.as_str()), r.container.as_str(), r.login.as_str());
        let me = actor.principal.subject.as_str();
        if r.requester == me {
            // A hard ban in the broker: a site's policy cannot lift it.
            let e = GrantError::Denied(format!("approve your own request {}", r.id));
            let detail = "self-approval is never allowed".to_string();
            return Err(self.refuse(actor, "approve", what, e, detail).await);
        }
        let seen = self.approvals(&r.id).await?.len();
        let labels = Self::decided_labels(r, labels);
        let now = now_ms();
        let mut d = self.begin(r).await?;
        if let Some(stale) = self.not_pending(&d, r, now) {
            return Err(self.refuse_in(d, actor, "approve", stale).await);
        }
        let before = d.approvals.len();
        if d.approvals.iter().any(|a| a.approver == me) {
            let stale = Stale {
                error: already_approved(&r.id, before),
                detail: "already approved by them".into(),
                race: before != seen,
            };
            return Err(self.refuse_in(d, actor, "approve", stale).await);
        }
        let current = d.request.clone();
        let policies = match self.ask(actor, "approve", Action::Approve, &current, labels, before) {
            Ok(p) => p,
            Err((error, detail)) => {
                // Counted as the first (with `seen`) it may have been
                // allowed: another approval came first.
                let race = before != seen;
                let detail = if race {
                    format!("{before} approvals when decided, {seen} when asked: {detail}")
                } else {
                    detail
                };
                let stale = Stale {
                    error,
                    detail,
                    race,
                };
                return Err(self.refuse_in(d, actor, "approve", stale).await);
            }
        };
        let event = AuditEvent::AccessRequestApproved {
            request_id: current.id.clone(),
            requester: current.requester.clone(),
            container: current.container.clone(),
            login: current.login.clone(),
            approvals: i64::try_from(before.saturating_add(1)).unwrap_or(i64::MAX),
            comment: comment.map(str::to_string),
            policies,
        };
        self.record_in(&mut d, actor, event).await?;
        d.add_approval(me, comment, now).await?;
        let count = d.approvals.len();
        match self.policy.decide_workflow_action(
            &Self::question(actor, Action::Activate, &current, labels, count),
            current.action.as_deref(),
        ) {
            Ok(a) if a.allowed => {
                let event = AuditEvent::GrantApproved {
                    grant_id: current.id.clone(),
                    requester: current.requester.clone(),
                    container: current.container.clone(),
                    login: current.login.clone(),
                    expires_at: now.saturating_add(current.duration_seconds.saturating_mul(1000)),
                    comment: comment.map(str::to_string),
                    approvers: d.approvals.iter().map(|a| a.approver.clone()).collect(),
                    policies: a.policies,
                };
                self.record_in(&mut d, actor, event).await?;
                d.activate(me, comment, now).await?;
            }
            Ok(a) => tracing::debug!(
                id = %current.id,
                approvals = count,
                policies = ?a.policies,
                "approval recorded; activate not permitted yet"
            ),
            Err(e) => {
                // The approval stays recorded; the refusal with it.
                let stale = Stale {
                    error: GrantError::Denied(format!(
                        "start grant {} (the policy cannot decide `activate`; your approval \
                         is recorded)",
                        current.id
                    )),
                    detail: format!("activate: {e}"),
                    race: false,
                };
                return Err(self.refuse_in(d, actor, "activate", stale).await);
            }
        }
        let approvals = d.approvals.clone();
        self.commit(d).await?;
        let request = self.get(&r.id).await?;
        self.notify("approved", &request, &approvals, actor).await;
        Ok(Approval { request, approvals })
    }

    /// Denies pending request `r` (policy action `approve`), in one
    /// transaction with its audit event.
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
        self.check_reason_plain(reason)?;
        let labels = Self::decided_labels(r, labels);
        let now = now_ms();
        let mut d = self.begin(r).await?;
        if let Some(stale) = self.not_pending(&d, r, now) {
            return Err(self.refuse_in(d, actor, "deny", stale).await);
        }
        let current = d.request.clone();
        let count = d.approvals.len();
        if let Err((error, detail)) =
            self.ask(actor, "deny", Action::Approve, &current, labels, count)
        {
            let stale = Stale {
                error,
                detail,
                race: false,
            };
            return Err(self.refuse_in(d, actor, "deny", stale).await);
        }
        let event = AuditEvent::AccessRequestDenied {
            request_id: current.id.clone(),
            requester: current.requester.clone(),
            reason: reason.to_string(),
        };
        self.record_in(&mut d, actor, event).await?;
        d.deny(&actor.principal.subject, reason, now).await?;
        self.commit(d).await?;
        self.notify("denied", &current, &[], actor).await;
        Ok(())
    }

    /// Revokes grant `r` now (policy action `revoke`), in one transaction
    /// with its audit event. Live sessions that depend on it end within a
    /// [`super::GrantWatch`] poll.
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
        let labels = Self::decided_labels(r, labels);
        let mut d = self.begin(r).await?;
        if !d.request.active_at(now) {
            let state = d.request.state_at(now);
            let stale = Stale {
                error: GrantError::State(format!("{} ended meanwhile ({state})", r.id)),
                detail: format!("grant {state} meanwhile"),
                race: true,
            };
            return Err(self.refuse_in(d, actor, "revoke", stale).await);
        }
        let current = d.request.clone();
        let count = d.approvals.len();
        if let Err((error, detail)) =
            self.ask(actor, "revoke", Action::Revoke, &current, labels, count)
        {
            let stale = Stale {
                error,
                detail,
                race: false,
            };
            return Err(self.refuse_in(d, actor, "revoke", stale).await);
        }
        let event = AuditEvent::GrantRevoked {
            grant_id: current.id.clone(),
            requester: current.requester.clone(),
            container: current.container.clone(),
            login: current.login.clone(),
            reason: reason.to_string(),
        };
        self.record_in(&mut d, actor, event).await?;
        d.revoke(&actor.principal.subject, reason, now).await?;
        let approvals = d.approvals.clone();
        self.commit(d).await?;
        self.notify("revoked", &current, &approvals, actor).await;
        Ok(())
    }

    /// Marks break-glass grant `r` reviewed (policy action `review`), in
    /// one transaction with its audit event. No one reviews their own
    /// break-glass grant, whatever the policy says.
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
        let what = (Some(r.id.as_str()), r.container.as_str(), r.login.as_str());
        if !r.break_glass || r.reviewed_at.is_some() {
            let e = GrantError::State(format!("{} is not an unreviewed break-glass grant", r.id));
            return Err(self
                .refuse(actor, "review", what, e, "nothing to review".into())
                .await);
        }
        if r.requester == actor.principal.subject {
            let e = GrantError::Denied(format!("review your own break-glass grant {}", r.id));
            let detail = "self-review is never allowed".to_string();
            return Err(self.refuse(actor, "review", what, e, detail).await);
        }
        let labels = Self::decided_labels(r, labels);
        let mut d = self.begin(r).await?;
        if d.request.reviewed_at.is_some() {
            let by = d.request.reviewed_by.clone().unwrap_or_default();
            let stale = Stale {
                error: GrantError::State(format!("{} was reviewed meanwhile by {by}", r.id)),
                detail: format!("reviewed meanwhile by {by}"),
                race: true,
            };
            return Err(self.refuse_in(d, actor, "review", stale).await);
        }
        let current = d.request.clone();
        let count = d.approvals.len();
        if let Err((error, detail)) =
            self.ask(actor, "review", Action::Review, &current, labels, count)
        {
            let stale = Stale {
                error,
                detail,
                race: false,
            };
            return Err(self.refuse_in(d, actor, "review", stale).await);
        }
        let event = AuditEvent::BreakGlassReviewed {
            grant_id: current.id.clone(),
            requester: current.requester.clone(),
            comment: comment.map(str::to_string),
        };
        self.record_in(&mut d, actor, event).await?;
        d.review(&actor.principal.subject, comment, now_ms())
            .await?;
        self.commit(d).await
    }
}
