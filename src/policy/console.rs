//! Decisions about the web console's own pages (issue 17): `view_audit`,
//! `view_requests` and `view_containers` on the one resource
//! `Console::"console"`, with an empty context. Pages about one session
//! (`view_sessions`, `view_recording`) are decided on the session's
//! container with [`PolicyEngine::decide_with`], like `watch` and `kill`.
//!
//! Pure, like the rest of the module.

use std::collections::HashSet;

use cedar_policy::{Authorizer, Context, Decision as CedarDecision, Entities, Entity, Request};

use super::{Action, Decision, PolicyEngine, PolicyError, one_line, uid};

/// The id of the console resource: `Console::"console"`.
pub const CONSOLE_ID: &str = "console";

impl PolicyEngine {
    /// Decides whether `principal` (in `groups`) may open a console page
    /// that belongs to no container: [`Action::ViewAudit`],
    /// [`Action::ViewRequests`] or [`Action::ViewContainers`]. Anything that
    /// cannot be evaluated is a deny.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when an entity or the request cannot be
    /// built (the caller must treat it as a deny).
    pub fn decide_console(
        &self,
        principal: &str,
        groups: &[String],
        action: Action,
    ) -> Result<Decision, PolicyError> {
        let user = uid("User", principal)?;
        let console = uid("Console", CONSOLE_ID)?;
        let mut parents = HashSet::new();
        let mut entities = Vec::new();
        for g in groups {
            let group = uid("Group", g)?;
            entities.push(Entity::new_no_attrs(group.clone(), HashSet::new()));
            parents.insert(group);
        }
        entities.push(Entity::new_no_attrs(user.clone(), parents));
        entities.push(Entity::new_no_attrs(console.clone(), HashSet::new()));
        let loaded = self.loaded();
        let entities = Entities::from_entities(entities, Some(&loaded.schema))
            .map_err(|e| PolicyError::Request(one_line(&e)))?;
        let request = Request::new(
            user,
            uid("Action", action.as_str())?,
            console,
            Context::empty(),
            Some(&loaded.schema),
        )
        .map_err(|e| PolicyError::Request(one_line(&e)))?;
        let response = Authorizer::new().is_authorized(&request, &loaded.policies, &entities);
        let diagnostics = response.diagnostics();
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies: diagnostics.reason().map(ToString::to_string).collect(),
            errors: diagnostics.errors().map(|e| one_line(e)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::{AccessRequest, ContextValue};

    fn shipped() -> PolicyEngine {
        PolicyEngine::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .unwrap()
    }

    fn console(engine: &PolicyEngine, group: &str, action: Action) -> bool {
        engine
            .decide_console("u", &[group.to_string()], action)
            .unwrap()
            .allowed
    }

    fn session(engine: &PolicyEngine, group: &str, action: Action) -> bool {
        engine
            .decide_with(
                &AccessRequest {
                    principal: "u",
                    groups: &[group.to_string()],
                    container: "web1",
                    labels: &BTreeMap::new(),
                    login: "root",
                    action,
                    command: None,
                    grant: None,
                },
                &[
                    ("session_id", ContextValue::Str("s1".into())),
                    ("owner", ContextValue::Str("alice".into())),
                ],
            )
            .unwrap()
            .allowed
    }

    #[test]
    fn reviewers_review_and_approvers_approve() {
        let e = shipped();
        assert!(console(&e, "reviewers", Action::ViewAudit));
        assert!(console(&e, "reviewers", Action::ViewContainers));
        assert!(console(&e, "reviewers", Action::ViewRequests));
        assert!(session(&e, "reviewers", Action::ViewSessions));
        assert!(session(&e, "reviewers", Action::ViewRecording));
        assert!(console(&e, "approvers", Action::ViewRequests));
        assert!(console(&e, "approvers", Action::ViewContainers));
        assert!(!console(&e, "approvers", Action::ViewAudit));
        assert!(!session(&e, "approvers", Action::ViewRecording));
        assert!(console(&e, "admins", Action::ViewAudit));
        assert!(session(&e, "admins", Action::ViewRecording));
        for action in [
            Action::ViewAudit,
            Action::ViewRequests,
            Action::ViewContainers,
        ] {
            assert!(!console(&e, "developers", action), "{action:?}");
        }
        assert!(!session(&e, "developers", Action::ViewSessions));
    }
}
