//! Who sees which access requests and grants in listings (review finding
//! M6): `requests`, `request show ID` and `grants` show a caller their own,
//! those they may decide now (approve a pending request, revoke an active
//! grant) and those the policy lets them `view`; nobody else's.
//!
//! Pure, like the rest of [`crate::policy`]: the listing code describes
//! each row as a [`ListedItem`] and filters with [`visible`]. A decision
//! that cannot be evaluated hides the row (fail closed); one's own rows
//! are shown without asking.

use std::collections::BTreeMap;

use super::{Action, PolicyEngine, WorkflowRequest};

/// Who is looking.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    /// The principal's subject.
    pub principal: &'a str,
    /// Their groups.
    pub groups: &'a [String],
    /// Their issuer (the `User` entity's `issuer`), when known.
    pub issuer: Option<&'a str>,
}

/// One access request or grant as a listing shows it.
#[derive(Debug, Clone, Copy)]
pub struct ListedItem<'a> {
    /// Who asked for it.
    pub requester: &'a str,
    /// Its container.
    pub container: &'a str,
    /// The container's labels (as at request time, or now).
    pub labels: &'a BTreeMap<String, String>,
    /// The login asked for.
    pub login: &'a str,
    /// Its length, seconds.
    pub duration_seconds: i64,
    /// The reason given.
    pub reason: &'a str,
    /// Break-glass.
    pub break_glass: bool,
    /// Approvals so far.
    pub approvals: i64,
    /// The action that decides it now: [`Action::Approve`] for a pending
    /// request, [`Action::Revoke`] for an active grant, `None` for one
    /// that is over (denied, expired, revoked).
    pub deciding: Option<Action>,
}

/// True when `viewer` may see `item`: their own, one they may decide now
/// (`item.deciding`), or one the policy lets them `view`.
pub fn is_visible(engine: &PolicyEngine, viewer: &Viewer<'_>, item: &ListedItem<'_>) -> bool {
    if item.requester == viewer.principal {
        return true;
    }
    let ask = |action: Action| {
        let request = WorkflowRequest {
            principal: viewer.principal,
            groups: viewer.groups,
            action,
            container: item.container,
            labels: item.labels,
            requester: item.requester,
            login: item.login,
            duration_seconds: item.duration_seconds,
            reason: item.reason,
            break_glass: item.break_glass,
            approvals: item.approvals,
        };
        let decision = match viewer.issuer {
            Some(issuer) => engine.decide_workflow_as(issuer, &request),
            None => engine.decide_workflow(&request),
        };
        decision.is_ok_and(|d| d.allowed)
    };
    item.deciding.is_some_and(ask) || ask(Action::View)
}

/// The items of `items` that `viewer` may see (see [`is_visible`]), in
/// their order; `describe` gives each one's [`ListedItem`].
pub fn visible<T>(
    engine: &PolicyEngine,
    viewer: &Viewer<'_>,
    items: Vec<T>,
    describe: impl Fn(&T) -> ListedItem<'_>,
) -> Vec<T> {
    items
        .into_iter()
        .filter(|item| is_visible(engine, viewer, &describe(item)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::path::Path;

    use super::*;

    struct Row {
        id: &'static str,
        requester: &'static str,
        env: &'static str,
        seconds: i64,
        deciding: Option<Action>,
    }

    fn rows() -> Vec<Row> {
        vec![
            Row {
                id: "alice-dev",
                requester: "alice",
                env: "dev",
                seconds: 3600,
                deciding: Some(Action::Approve),
            },
            Row {
                id: "bob-prod",
                requester: "bob",
                env: "prod",
                seconds: 3600,
                deciding: Some(Action::Approve),
            },
            Row {
                id: "bob-prod-long",
                requester: "bob",
                env: "prod",
                seconds: 86_400,
                deciding: Some(Action::Approve),
            },
            Row {
                id: "carol-secret",
                requester: "carol",
                env: "secret",
                seconds: 600,
                deciding: Some(Action::Revoke),
            },
            Row {
                id: "dave-dev-old",
                requester: "dave",
                env: "dev",
                seconds: 600,
                deciding: None,
            },
        ]
    }

    fn seen(principal: &str, groups: &[&str]) -> Vec<&'static str> {
        let engine =
            PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let viewer = Viewer {
            principal,
            groups: &groups,
            issuer: Some("https://idp"),
        };
        let labels: Vec<BTreeMap<String, String>> = rows()
            .iter()
            .map(|r| BTreeMap::from([("env".to_string(), r.env.to_string())]))
            .collect();
        let rows = rows();
        let indexed: Vec<(usize, &Row)> = rows.iter().enumerate().collect();
        visible(&engine, &viewer, indexed, |(i, r)| ListedItem {
            requester: r.requester,
            container: "web1",
            labels: &labels[*i],
            login: "root",
            duration_seconds: r.seconds,
            reason: "OPS-1",
            break_glass: false,
            approvals: 0,
            deciding: r.deciding,
        })
        .into_iter()
        .map(|(_, r)| r.id)
        .collect()
    }

    /// M6: a principal without groups sees only their own.
    #[test]
    fn people_see_what_concerns_them() {
        assert_eq!(seen("alice", &[]), ["alice-dev"]);
        assert_eq!(seen("alice", &["developers"]), ["alice-dev"]);
        assert!(seen("mallory", &[]).is_empty());
        // Approvers: what they may decide and the history of dev/prod,
        // not the container they have no say over.
        assert_eq!(
            seen("erin", &["approvers"]),
            ["alice-dev", "bob-prod", "bob-prod-long", "dave-dev-old"]
        );
        assert_eq!(seen("rita", &["reviewers"]).len(), 5);
        assert_eq!(seen("root", &["admins"]).len(), 5);
    }
}
