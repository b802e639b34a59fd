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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn shipped() -> PolicyEngine {
        PolicyEngine::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .unwrap()
    }

    /// What varies between the questions of these tests.
    #[derive(Clone, Copy)]
    struct Ask<'a> {
        groups: &'a [&'a str],
        env: &'a str,
        action: Action,
        owner: bool,
        grant: bool,
        force: bool,
        live: i64,
    }

    const DEV_OWNER: Ask<'static> = Ask {
        groups: &[],
        env: "dev",
        action: Action::Restart,
        owner: true,
        grant: false,
        force: false,
        live: 0,
    };

    fn ask(engine: &PolicyEngine, a: Ask<'_>) -> Decision {
        let groups: Vec<String> = a.groups.iter().map(|g| g.to_string()).collect();
        let labels = BTreeMap::from([("env".to_string(), a.env.to_string())]);
        engine
            .decide_lifecycle(&LifecycleRequest {
                principal: "alice",
                issuer: "https://idp.example",
                groups: &groups,
                action: a.action,
                container: "web1",
                labels: &labels,
                attributes: ContainerAttributes {
                    owner: Some(if a.owner { "alice" } else { "bob" }),
                    purpose: None,
                },
                grant: a.grant.then_some(GrantContext {
                    id: "g1",
                    approver: "carol",
                    expires_at: 1,
                }),
                force: a.force,
                live_sessions: a.live,
                reason: "OPS-1",
                snapshot: "",
                principal_is_owner: a.owner,
            })
            .unwrap()
    }

    #[test]
    fn owners_restart_their_own_dev_containers_and_nothing_more() {
        let e = shipped();
        let d = ask(&e, DEV_OWNER);
        assert_eq!(
            (d.allowed, d.policies),
            (true, vec!["owners-lifecycle-own-dev".to_string()])
        );
        for action in [
            Action::Start,
            Action::Stop,
            Action::Snapshot,
            Action::Inspect,
        ] {
            assert!(
                ask(
                    &e,
                    Ask {
                        action,
                        ..DEV_OWNER
                    }
                )
                .allowed
            );
        }
        // Not someone else's, not prod, not a restore without a grant.
        assert!(
            !ask(
                &e,
                Ask {
                    owner: false,
                    ..DEV_OWNER
                }
            )
            .allowed
        );
        assert!(
            !ask(
                &e,
                Ask {
                    env: "prod",
                    ..DEV_OWNER
                }
            )
            .allowed
        );
        assert!(
            !ask(
                &e,
                Ask {
                    action: Action::Restore,
                    ..DEV_OWNER
                }
            )
            .allowed
        );
        // Developers see dev and prod containers, do nothing else.
        let dev = Ask {
            groups: &["developers"],
            owner: false,
            action: Action::Inspect,
            ..DEV_OWNER
        };
        assert!(ask(&e, dev).allowed);
        assert!(
            !ask(
                &e,
                Ask {
                    action: Action::Stop,
                    ..dev
                }
            )
            .allowed
        );
    }

    #[test]
    fn prod_and_restore_need_a_grant_admins_included() {
        let e = shipped();
        let admin = Ask {
            groups: &["admins"],
            owner: false,
            ..DEV_OWNER
        };
        assert!(
            ask(
                &e,
                Ask {
                    action: Action::Stop,
                    ..admin
                }
            )
            .allowed
        );
        let d = ask(
            &e,
            Ask {
                env: "prod",
                action: Action::Stop,
                ..admin
            },
        );
        assert_eq!(
            (d.allowed, d.policies),
            (false, vec!["prod-lifecycle-needs-approval".to_string()])
        );
        let d = ask(
            &e,
            Ask {
                action: Action::Restore,
                ..admin
            },
        );
        assert_eq!(
            (d.allowed, d.policies),
            (false, vec!["restore-needs-approval".to_string()])
        );
        // With a grant for the action anyone may take it.
        let holder = Ask {
            owner: false,
            grant: true,
            ..DEV_OWNER
        };
        for (env, action) in [("prod", Action::Stop), ("dev", Action::Restore)] {
            let d = ask(
                &e,
                Ask {
                    env,
                    action,
                    ..holder
                },
            );
            assert_eq!(
                (d.allowed, d.policies),
                (true, vec!["action-grant-holders".to_string()])
            );
        }
    }

    #[test]
    fn live_sessions_need_force_and_prod_forbids_it() {
        let e = shipped();
        let busy = Ask {
            action: Action::Stop,
            live: 1,
            ..DEV_OWNER
        };
        let d = ask(&e, busy);
        assert_eq!(
            (d.allowed, d.policies),
            (false, vec!["live-sessions-need-force".to_string()])
        );
        assert!(
            ask(
                &e,
                Ask {
                    force: true,
                    ..busy
                }
            )
            .allowed
        );
        // Starting and snapshotting do not end sessions.
        assert!(
            ask(
                &e,
                Ask {
                    action: Action::Snapshot,
                    ..busy
                }
            )
            .allowed
        );
        let prod = Ask {
            env: "prod",
            grant: true,
            force: true,
            ..busy
        };
        let d = ask(&e, prod);
        assert_eq!(
            (d.allowed, d.policies),
            (false, vec!["no-force-on-prod".to_string()])
        );
        assert!(ask(&e, Ask { live: 0, ..prod }).allowed);
    }

    #[test]
    fn action_requests_need_one_approver_on_prod_and_two_for_a_restore() {
        let e = shipped();
        let labels = |env: &str| BTreeMap::from([("env".to_string(), env.to_string())]);
        let groups = vec!["approvers".to_string()];
        let activate = |env: &str, action: Option<&str>, approvals: i64| {
            let labels = labels(env);
            e.decide_workflow_action(
                &WorkflowRequest {
                    principal: "carol",
                    groups: &groups,
                    action: Action::Activate,
                    container: "web1",
                    labels: &labels,
                    requester: "alice",
                    login: if action.is_some() { "" } else { "root" },
                    duration_seconds: 3600,
                    reason: "OPS-1",
                    break_glass: false,
                    approvals,
                },
                action,
            )
            .unwrap()
            .allowed
        };
        assert!(activate("prod", Some("stop"), 1));
        assert!(!activate("prod", None, 1));
        assert!(activate("prod", None, 2));
        assert!(!activate("prod", Some("restore"), 1));
        assert!(!activate("dev", Some("restore"), 1));
        assert!(activate("dev", Some("restore"), 2));
        assert!(activate("dev", Some("restart"), 1));
    }

    #[test]
    fn owners_are_matched_by_subject_or_email() {
        assert!(owner_is(Some("alice"), "alice", None));
        assert!(owner_is(
            Some("Alice@Example.com"),
            "oidc:1",
            Some("alice@example.com")
        ));
        assert!(!owner_is(Some("alice"), "bob", Some("bob@example.com")));
        assert!(!owner_is(None, "alice", Some("alice")));
    }
}
