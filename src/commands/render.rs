//! How access requests and grants read, as text lines for people and as
//! JSON for tools (`--json`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::grants::format_duration;
use crate::store::{AccessRequestRecord, ApprovalRecord, now_ms};

/// `ms` (unix milliseconds) as RFC 3339 UTC; `-` for none.
pub(super) fn time_text(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The request's state now: `pending`, `active`, `expired`, ...
pub(super) fn status_of(r: &AccessRequestRecord) -> &'static str {
    r.state_at(now_ms())
}

/// `r` as JSON: its stored fields, `state`, `approvals` (objects with
/// `approver`, `comment`, `approved_at` in unix ms, oldest first) and
/// `approval_count`.
pub(super) fn record_json(
    r: &AccessRequestRecord,
    approvals: &[ApprovalRecord],
) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_else(|_| json!({}));
    if let Some(map) = v.as_object_mut() {
        map.insert("state".into(), json!(status_of(r)));
        map.insert("approvals".into(), json!(approvals));
        map.insert("approval_count".into(), json!(approvals.len()));
    }
    v
}

/// `approvals` as people read them: `1 approval (bob)`, `2 approvals
/// (bob, carol)`; empty when there are none.
pub(super) fn approvals_text(approvals: &[ApprovalRecord]) -> String {
    if approvals.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = approvals.iter().map(|a| a.approver.as_str()).collect();
    let plural = if approvals.len() == 1 { "" } else { "s" };
    format!(
        "{} approval{plural} ({})",
        approvals.len(),
        names.join(", ")
    )
}

/// One line per request of `list`.
pub(super) fn list_text(
    list: &[AccessRequestRecord],
    approvals: &BTreeMap<String, Vec<ApprovalRecord>>,
) -> String {
    list.iter()
        .map(|r| {
            line(
                r,
                approvals.get(&r.id).map(Vec::as_slice).unwrap_or_default(),
            )
        })
        .collect()
}

/// `list` as one JSON array (and a newline).
pub(super) fn list_json(
    list: &[AccessRequestRecord],
    approvals: &BTreeMap<String, Vec<ApprovalRecord>>,
) -> String {
    let v: Vec<_> = list
        .iter()
        .map(|r| {
            record_json(
                r,
                approvals.get(&r.id).map(Vec::as_slice).unwrap_or_default(),
            )
        })
        .collect();
    json_text(&json!(v))
}

/// One request as a line: id, state, who wants what for how long, flags,
/// approvals and the reason.
pub(super) fn line(r: &AccessRequestRecord, approvals: &[ApprovalRecord]) -> String {
    let secs = u64::try_from(r.duration_seconds).unwrap_or(0);
    let until = match status_of(r) {
        "active" => format!(" until {}", time_text(r.expires_at)),
        _ => String::new(),
    };
    let flag = match (r.break_glass, r.reviewed_at) {
        (true, None) => " [BREAK-GLASS, unreviewed]",
        (true, Some(_)) => " [break-glass, reviewed]",
        _ => "",
    };
    let approved = match approvals_text(approvals) {
        t if t.is_empty() => t,
        t => format!(" [{t}]"),
    };
    format!(
        "{}  {:<8} {} wants {} for {}{}{flag}{approved}: {}\n",
        r.id,
        status_of(r),
        r.requester,
        target_text(r),
        format_duration(Duration::from_secs(secs)),
        until,
        r.reason
    )
}

/// What a request asks for: `login@container`, or `to ACTION container
/// (once)` for a lifecycle action (issue 18).
pub(super) fn target_text(r: &AccessRequestRecord) -> String {
    match &r.action {
        Some(action) => format!("to {action} {} (once)", r.container),
        None => format!("{}@{}", r.login, r.container),
    }
}

/// `v` and a newline.
pub(super) fn json_text(v: &serde_json::Value) -> String {
    format!("{v}\n")
}
