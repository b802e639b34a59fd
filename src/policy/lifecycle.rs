//! Decisions on a container's lifecycle (issue 18): `start`, `stop`,
//! `restart`, `snapshot`, `restore` and `inspect` (see it in the broker's
//! `containers list`, read its snapshots) on `Container::"NAME"`, and the
//! workflow questions of an access request that asks for one of them.
//!
//! Context of the lifecycle actions: `grant` (the principal's active
//! grant for this action on this container, as [`super::GrantContext`]),
//! `force` (the caller passed `--force`), `live_sessions` (sessions this
//! gateway serves on the container now), `reason`, `snapshot` (the
//! snapshot restored, `""` otherwise) and `principal_is_owner` (the
//! container's owner is the principal's subject or email; the gateway
//! compares, since Cedar cannot compare an entity with a string).
//!
//! Pure, like the rest of [`super`]: everything comes in the request.

use std::collections::BTreeMap;

use cedar_policy::RestrictedExpression;

use super::{
    Action, ContainerAttributes, Decision, GrantContext, PolicyEngine, PolicyError, Resource,
    WorkflowRequest, one_line,
};

/// One lifecycle question.
#[derive(Debug, Clone)]
pub struct LifecycleRequest<'a> {
    /// Principal subject.
    pub principal: &'a str,
    /// Who vouched for the principal (the `User` entity's `issuer`).
    pub issuer: &'a str,
    /// The principal's groups.
    pub groups: &'a [String],
    /// [`Action::Start`], [`Action::Stop`], [`Action::Restart`],
    /// [`Action::Snapshot`], [`Action::Restore`] or [`Action::Inspect`].
    pub action: Action,
    /// The container.
    pub container: &'a str,
    /// Its labels (tags).
    pub labels: &'a BTreeMap<String, String>,
    /// Its owner and purpose.
    pub attributes: ContainerAttributes<'a>,
    /// The principal's active grant for this action on this container.
    pub grant: Option<GrantContext<'a>>,
    /// `--force`: go ahead although sessions are live.
    pub force: bool,
    /// Sessions this gateway serves on the container now.
    pub live_sessions: i64,
    /// The reason given (`""` for `inspect`).
    pub reason: &'a str,
    /// The snapshot to restore (`""` for the other actions).
    pub snapshot: &'a str,
    /// The container's owner is the principal (subject or email).
    pub principal_is_owner: bool,
}

/// `grant` as the schema's `Grant` record (`active` false and empty
/// values when there is none).
fn grant_record(grant: Option<GrantContext<'_>>) -> Result<RestrictedExpression, PolicyError> {
    let g = grant.unwrap_or(GrantContext {
        id: "",
        approver: "",
        expires_at: 0,
    });
    RestrictedExpression::new_record([
        (
            "active".to_string(),
            RestrictedExpression::new_bool(grant.is_some()),
        ),
        (
            "id".to_string(),
            RestrictedExpression::new_string(g.id.to_string()),
        ),
        (
            "approver".to_string(),
            RestrictedExpression::new_string(g.approver.to_string()),
        ),
        (
            "expires_at".to_string(),
            RestrictedExpression::new_long(g.expires_at),
        ),
    ])
    .map_err(|e| PolicyError::Request(one_line(&e)))
}

impl PolicyEngine {
    /// Decides a lifecycle action. Anything that cannot be evaluated is a
    /// deny.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when an entity or the context cannot be
    /// built (the caller must treat it as a deny).
    pub fn decide_lifecycle(
        &self,
        request: &LifecycleRequest<'_>,
    ) -> Result<Decision, PolicyError> {
        let context = [
            ("grant".to_string(), grant_record(request.grant)?),
            (
                "force".to_string(),
                RestrictedExpression::new_bool(request.force),
            ),
            (
                "live_sessions".to_string(),
                RestrictedExpression::new_long(request.live_sessions),
            ),
            (
                "reason".to_string(),
                RestrictedExpression::new_string(request.reason.to_string()),
            ),
            (
                "snapshot".to_string(),
                RestrictedExpression::new_string(request.snapshot.to_string()),
            ),
            (
                "principal_is_owner".to_string(),
                RestrictedExpression::new_bool(request.principal_is_owner),
            ),
        ];
        self.evaluate(
            (request.principal, Some(request.issuer)),
            request.groups,
            Resource {
                name: request.container,
                labels: request.labels,
                attributes: request.attributes,
            },
            request.action,
            context,
        )
    }

    /// [`PolicyEngine::decide_workflow`] for an access request that asks
    /// for lifecycle `action` (`Some("stop")`...): the workflow context
    /// gets `action`, so a policy can ask more approvers for a restore
    /// than for a stop. `None` is exactly [`PolicyEngine::decide_workflow`].
    ///
    /// # Errors
    /// As [`PolicyEngine::decide_workflow`].
    pub fn decide_workflow_action(
        &self,
        request: &WorkflowRequest<'_>,
        action: Option<&str>,
    ) -> Result<Decision, PolicyError> {
        self.decide_workflow_for(None, request, ContainerAttributes::default(), action)
    }
}

/// True when `owner` names the principal: its subject, or its email
/// (ASCII case-insensitive).
pub fn owner_is(owner: Option<&str>, subject: &str, email: Option<&str>) -> bool {
    match owner {
        Some(o) => o == subject || email.is_some_and(|e| e.eq_ignore_ascii_case(o)),
        None => false,
    }
}
