//! Who sees which access requests and grants in the broker's listings
//! (issue 14 point 5, review finding M6): `requests`, `request show ID`
//! and `grants` show the caller their own, those they may decide now
//! (approve a pending request, revoke an active grant) and those the
//! policy lets them `view` ([`crate::policy::visibility`]); nobody else's.
//! A decision that cannot be made hides the row (fail closed).

use std::collections::BTreeMap;

use super::labels_of;
use crate::gateway::Gateway;
use crate::grants::Actor;
use crate::policy::Action;
use crate::policy::visibility::{ListedItem, Viewer, is_visible};
use crate::store::{AccessRequestRecord, ApprovalRecord, now_ms};

/// The rows of `list` that `actor` may see, in their order; `approvals`
/// holds each row's approvals by request id.
pub(super) async fn only_visible(
    gateway: &Gateway,
    actor: &Actor<'_>,
    list: Vec<AccessRequestRecord>,
    approvals: &BTreeMap<String, Vec<ApprovalRecord>>,
) -> Vec<AccessRequestRecord> {
    // Each container's labels, read once (the inventory's, or the config's).
    let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in &list {
        if !labels.contains_key(&r.container) {
            let found = labels_of(gateway, &r.container).await;
            labels.insert(r.container.clone(), found);
        }
    }
    let principal = actor.principal;
    let viewer = Viewer {
        principal: &principal.subject,
        groups: &principal.groups,
        issuer: Some(&principal.issuer),
    };
    let now = now_ms();
    let empty = BTreeMap::new();
    list.into_iter()
        .filter(|r| {
            let item = ListedItem {
                requester: &r.requester,
                container: &r.container,
                labels: labels.get(&r.container).unwrap_or(&empty),
                login: &r.login,
                duration_seconds: r.duration_seconds,
                reason: &r.reason,
                break_glass: r.break_glass,
                approvals: approvals.get(&r.id).map_or(0, |a| a.len() as i64),
                deciding: match r.state_at(now) {
                    "pending" => Some(Action::Approve),
                    "active" => Some(Action::Revoke),
                    _ => None,
                },
            };
            is_visible(&gateway.policy, &viewer, &item)
        })
        .collect()
}
