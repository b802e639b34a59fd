//! Deciding requests: approvals (each approver once; the grant starts
//! when the policy permits `activate`), denials and revocations.

use std::collections::BTreeMap;

use super::already_approved;
use super::{AccessRequestRecord, Actor, Approval, GrantError, MAX_REASON_BYTES, Workflow};
use crate::audit::AuditEvent;
use crate::policy::{Action, WorkflowRequest};
use crate::store::now_ms;

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

    /// Asks the policy whether `actor` may take `action` on request `r`,
    /// which has `approvals` approvals so far.
    pub(super) async fn allowed(
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
            && (c.len() > MAX_REASON_BYTES || !crate::text::is_visible(c))
        {
            return Err(GrantError::Reason(format!(
                "the comment must be one line of at most {MAX_REASON_BYTES} bytes, without \
                 control, bidi or invisible characters"
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

    /// Revokes grant `r` now (policy action `revoke`). Live sessions that
    /// depend on it end within a [`super::GrantWatch`] poll.
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
