//! Asking for access: a new request (or a break-glass grant taken at
//! once), recorded with where its container is and how it is labelled
//! (what an approval approves, issue 12), and the webhook notifications
//! of workflow steps.

use super::{AccessRequestRecord, Actor, ApprovalRecord};
use super::{GrantError, RequestSpec, Workflow, new_id, notify};
use crate::audit::AuditEvent;
use crate::config::valid_name;
use crate::policy::{Action, WorkflowRequest};
use crate::store::{NewAccessRequest, RequestScope, now_ms};

impl Workflow<'_> {
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
        self.request_for(actor, spec, None).await
    }

    /// Creates a pending request for lifecycle `action` (`start`, `stop`,
    /// `restart`, `snapshot`, `restore`) on `spec.container` (issue 18),
    /// checked as [`Workflow::request`] with `action` in the policy's
    /// context; `spec.login` must be empty and `spec.break_glass` false.
    /// Its grant runs the action once before it expires (the caller uses
    /// it with [`crate::store::Store::use_action_grant`]).
    ///
    /// # Errors
    /// As [`Workflow::request`].
    pub async fn request_action(
        &self,
        actor: &Actor<'_>,
        spec: &RequestSpec<'_>,
        action: &str,
    ) -> Result<AccessRequestRecord, GrantError> {
        self.request_for(actor, spec, Some(action)).await
    }

    async fn request_for(
        &self,
        actor: &Actor<'_>,
        spec: &RequestSpec<'_>,
        action: Option<&str>,
    ) -> Result<AccessRequestRecord, GrantError> {
        let what = (None, spec.container, spec.login);
        let verb = if spec.break_glass {
            "break-glass"
        } else {
            "request"
        };
        let login_ok = match action {
            None => valid_name(spec.login),
            Some(_) => spec.login.is_empty() && !spec.break_glass,
        };
        if !login_ok {
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
        let question = WorkflowRequest {
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
        };
        let decision = self.policy.decide_workflow_action(&question, action);
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
                action: action.map(str::to_string),
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
        let ttl = i64::try_from(self.config.request_ttl.as_millis()).unwrap_or(i64::MAX);
        self.store
            .insert_access_request_scoped(
                &NewAccessRequest {
                    id: &id,
                    requester: &actor.principal.subject,
                    container: spec.container,
                    login: spec.login,
                    duration_seconds,
                    reason: spec.reason,
                    break_glass: spec.break_glass,
                },
                // What is approved is this: the container here, so labelled.
                &RequestScope {
                    gateway: self.store.gateway_id(),
                    labels: spec.labels,
                    pending_until: now.saturating_add(ttl),
                    action,
                },
            )
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

    pub(super) async fn notify(
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
}
