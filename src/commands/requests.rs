//! The access-request commands: `request`, `request show`, `requests`,
//! `approve`, `deny`, `revoke`, `review`, `grants`, `whoami`. Each parses
//! its words, calls the workflow ([`crate::grants::Workflow`], which
//! decides and audits every step) and renders the result.

use serde_json::json;

use super::args::Args;
use super::render::{
    approvals_text, json_text, line, list_json, list_text, record_json, target_text, time_text,
};
use super::{Failure, LIST_LIMIT, Reply, labels_of, usage};
use crate::gateway::Gateway;
use crate::grants::{Actor, RequestSpec, Workflow, format_duration};
use crate::store::{AccessRequestRecord, ApprovalRecord, now_ms};

/// What every command of this file works with.
pub(super) struct Context<'a> {
    /// Shared gateway state.
    pub gateway: &'a Gateway,
    /// The access-request workflow.
    pub wf: &'a Workflow<'a>,
    /// Who acts.
    pub actor: &'a Actor<'a>,
}

/// The approvals of each request of `list`, by request id.
async fn with_approvals(
    wf: &Workflow<'_>,
    list: &[AccessRequestRecord],
) -> Result<std::collections::BTreeMap<String, Vec<ApprovalRecord>>, Failure> {
    let ids: Vec<String> = list.iter().map(|r| r.id.clone()).collect();
    Ok(wf.store.approvals_of_many(&ids).await?)
}

/// `request CONTAINER --login L --for DURATION --reason TEXT
/// [--break-glass] [--json]`.
pub(super) async fn request(c: &Context<'_>, rest: &[String]) -> Result<Reply, Failure> {
    let (gateway, wf, actor) = (c.gateway, c.wf, c.actor);
    let args =
        Args::parse(rest, &["login", "for", "reason"], &["json", "break-glass"]).map_err(usage)?;
    let break_glass = args.flags.contains("break-glass");
    let [container] = args.positional.as_slice() else {
        return Err(usage(
            "usage: request CONTAINER --login LOGIN --for DURATION --reason TEXT".into(),
        ));
    };
    let login = args
        .values
        .get("login")
        .cloned()
        .unwrap_or_else(|| gateway.config.default_login.clone());
    let duration = match args.values.get("for") {
        Some(d) => humantime::parse_duration(d)
            .map_err(|_| usage(format!("--for {d:?} is not a duration (e.g. 30m, 2h)")))?,
        None => return Err(usage("--for DURATION is required (e.g. 2h)".into())),
    };
    let reason = args.values.get("reason").cloned().unwrap_or_default();
    if container == &gateway.config.grants.broker_user || !crate::config::valid_name(container) {
        return Err(usage(format!(
            "{:?} is not a container",
            crate::audit::truncate(container, 64)
        )));
    }
    let labels = match gateway.inventory.find(container).await {
        Ok(c) => c.labels,
        Err(e) => {
            let e = wf
                .refuse_unknown_container(actor, container, &login, e.to_string())
                .await;
            return Err(Failure::Refused(e));
        }
    };
    let r = wf
        .request(
            actor,
            &RequestSpec {
                container,
                labels: &labels,
                login: &login,
                duration,
                reason: &reason,
                break_glass,
            },
        )
        .await?;
    if args.flags.contains("json") {
        return Ok(Reply::ok(json_text(&record_json(&r, &[]))));
    }
    if break_glass {
        return Ok(Reply::ok(format!(
            "Break-glass grant {id}: {login}@{container} for {dur}, from now. It is flagged \
             and will be reviewed.\n",
            id = r.id,
            dur = format_duration(duration),
        )));
    }
    Ok(Reply::ok(format!(
        "Request {id} is pending: {login}@{container} for {dur}.\nAn approver may run: {line}\n",
        id = r.id,
        dur = format_duration(duration),
        line = gateway.broker_line(&format!("approve {}", r.id)),
    )))
}

/// `request show ID [--json]`: one request, its approvals and sessions.
pub(super) async fn show(c: &Context<'_>, rest: &[String]) -> Result<Reply, Failure> {
    let wf = c.wf;
    let args = Args::parse(rest, &[], &["json"]).map_err(usage)?;
    let id = args.one_id().map_err(usage)?;
    let r = wf.get(id).await?;
    let approvals = wf.approvals(&r.id).await?;
    // One the caller may not see reads as one that does not exist.
    let by_id = std::collections::BTreeMap::from([(r.id.clone(), approvals.clone())]);
    let Some(r) = super::visible::only_visible(c.gateway, c.actor, vec![r], &by_id)
        .await
        .pop()
    else {
        return Err(Failure::Refused(crate::grants::GrantError::NotFound(
            crate::text::display_safe(&crate::audit::truncate(id, 64)).into_owned(),
        )));
    };
    let sessions = wf.store.sessions_of_grant(&r.id).await?;
    if args.flags.contains("json") {
        let mut v = record_json(&r, &approvals);
        if let Some(map) = v.as_object_mut() {
            map.insert("sessions".into(), json!(sessions));
        }
        return Ok(Reply::ok(json_text(&v)));
    }
    let mut text = line(&r, &approvals);
    for a in &approvals {
        text.push_str(&format!(
            "  approved by {} at {}{}\n",
            a.approver,
            time_text(Some(a.approved_at)),
            a.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ));
    }
    text.push_str(&format!(
        "  asked {}; decided by {} at {} ({}); grant {} to {}\n",
        time_text(Some(r.created_at)),
        r.decided_by.as_deref().unwrap_or("-"),
        time_text(r.decided_at),
        r.decision_comment.as_deref().unwrap_or(""),
        time_text(r.starts_at),
        time_text(r.expires_at),
    ));
    if let Some(by) = &r.revoked_by {
        text.push_str(&format!(
            "  revoked by {by} at {}: {}\n",
            time_text(r.revoked_at),
            r.revoke_reason.as_deref().unwrap_or("")
        ));
    }
    if !sessions.is_empty() {
        text.push_str(&format!("  sessions: {}\n", sessions.join(", ")));
    }
    Ok(Reply::ok(text))
}

/// `requests [--pending|--mine|--unreviewed] [--json]`.
pub(super) async fn list_requests(c: &Context<'_>, rest: &[String]) -> Result<Reply, Failure> {
    let (wf, actor) = (c.wf, c.actor);
    let args = Args::parse(rest, &[], &["pending", "mine", "unreviewed", "json"]).map_err(usage)?;
    if !args.positional.is_empty() {
        return Err(usage(
            "usage: requests [--pending|--mine|--unreviewed] [--json]".into(),
        ));
    }
    let status = args.flags.contains("pending").then_some("pending");
    let mine = args
        .flags
        .contains("mine")
        .then_some(actor.principal.subject.as_str());
    let list = if args.flags.contains("unreviewed") {
        wf.store.unreviewed_break_glass().await?
    } else {
        wf.store.access_requests(status, mine, LIST_LIMIT).await?
    };
    let approvals = with_approvals(wf, &list).await?;
    let list = super::visible::only_visible(c.gateway, actor, list, &approvals).await;
    if args.flags.contains("json") {
        return Ok(Reply::ok(list_json(&list, &approvals)));
    }
    if list.is_empty() {
        return Ok(Reply::ok("No access requests.\n".into()));
    }
    Ok(Reply::ok(list_text(&list, &approvals)))
}

/// `grants [--mine] [--json]`: active grants.
pub(super) async fn list_grants(c: &Context<'_>, rest: &[String]) -> Result<Reply, Failure> {
    let (wf, actor) = (c.wf, c.actor);
    let args = Args::parse(rest, &[], &["mine", "json"]).map_err(usage)?;
    if !args.positional.is_empty() {
        return Err(usage("usage: grants [--mine] [--json]".into()));
    }
    let mine = args
        .flags
        .contains("mine")
        .then_some(actor.principal.subject.as_str());
    let list = wf.store.active_grants(mine, now_ms()).await?;
    let approvals = with_approvals(wf, &list).await?;
    let list = super::visible::only_visible(c.gateway, actor, list, &approvals).await;
    if args.flags.contains("json") {
        return Ok(Reply::ok(list_json(&list, &approvals)));
    }
    if list.is_empty() {
        return Ok(Reply::ok("No active grants.\n".into()));
    }
    Ok(Reply::ok(list_text(&list, &approvals)))
}

/// `approve ID [--comment TEXT] [--json]`: one approval; the grant starts
/// once the policy permits `activate` with the approvals so far.
pub(super) async fn approve(c: &Context<'_>, rest: &[String]) -> Result<Reply, Failure> {
    let (gateway, wf, actor) = (c.gateway, c.wf, c.actor);
    let args = Args::parse(rest, &["comment", "reason"], &["json"]).map_err(usage)?;
    let id = args.one_id().map_err(usage)?;
    let r = wf.get(id).await?;
    let labels = labels_of(gateway, &r.container).await;
    let comment = args.values.get("comment").map(String::as_str);
    let done = wf.approve(actor, &r, &labels, comment).await?;
    let r = &done.request;
    if args.flags.contains("json") {
        return Ok(Reply::ok(json_text(&record_json(r, &done.approvals))));
    }
    let so_far = approvals_text(&done.approvals);
    let text = if done.activated() {
        let names: Vec<&str> = done.approvals.iter().map(|a| a.approver.as_str()).collect();
        format!(
            "Approved {}: {} may {} until {} (approved by {}).\n",
            r.id,
            r.requester,
            match &r.action {
                Some(_) => target_text(r).replacen("to ", "", 1),
                None => format!("use {}", target_text(r)),
            },
            time_text(r.expires_at),
            names.join(", ")
        )
    } else {
        format!(
            "Approval recorded for {}: {so_far} so far. The request stays pending: \
             the policy wants another approver before the grant starts.\n",
            r.id
        )
    };
    Ok(Reply::ok(text))
}

/// `deny ID --reason TEXT`, `revoke ID --reason TEXT`, `review ID
/// [--comment TEXT]` (each with `--json`).
pub(super) async fn decide(c: &Context<'_>, verb: &str, rest: &[String]) -> Result<Reply, Failure> {
    let (gateway, wf, actor) = (c.gateway, c.wf, c.actor);
    let args = Args::parse(rest, &["comment", "reason"], &["json"]).map_err(usage)?;
    let id = args.one_id().map_err(usage)?;
    let r = wf.get(id).await?;
    let labels = labels_of(gateway, &r.container).await;
    let reason = args.values.get("reason").map(String::as_str);
    match verb {
        "review" => {
            let comment = args.values.get("comment").map(String::as_str);
            wf.review(actor, &r, &labels, comment).await?;
        }
        "deny" => {
            let reason = reason.ok_or_else(|| usage("deny needs --reason TEXT".into()))?;
            wf.deny(actor, &r, &labels, reason).await?;
        }
        _ => {
            let reason = reason.ok_or_else(|| usage("revoke needs --reason TEXT".into()))?;
            wf.revoke(actor, &r, &labels, reason).await?;
        }
    }
    let r = wf.get(id).await?;
    if args.flags.contains("json") {
        let approvals = wf.approvals(id).await?;
        return Ok(Reply::ok(json_text(&record_json(&r, &approvals))));
    }
    let text = match verb {
        "deny" => format!("Denied {}.\n", r.id),
        "review" => format!("Reviewed break-glass grant {}.\n", r.id),
        _ => format!("Revoked {}; its sessions end now.\n", r.id),
    };
    Ok(Reply::ok(text))
}

/// `whoami [--json]`: the principal, their groups and active grants.
pub(super) async fn whoami(c: &Context<'_>, rest: &[String]) -> Result<Reply, Failure> {
    let (wf, actor) = (c.wf, c.actor);
    let args = Args::parse(rest, &[], &["json"]).map_err(usage)?;
    let p = actor.principal;
    let grants = wf.store.active_grants(Some(&p.subject), now_ms()).await?;
    if args.flags.contains("json") {
        let approvals = with_approvals(wf, &grants).await?;
        let v: Vec<_> = grants
            .iter()
            .map(|r| {
                record_json(
                    r,
                    approvals.get(&r.id).map(Vec::as_slice).unwrap_or_default(),
                )
            })
            .collect();
        return Ok(Reply::ok(json_text(&json!({
            "principal": p.subject,
            "email": p.email,
            "groups": p.groups,
            "issuer": p.issuer,
            "grants": v,
        }))));
    }
    let mut text = format!(
        "principal: {}\nemail: {}\ngroups: {}\n",
        p.subject,
        p.email.as_deref().unwrap_or("-"),
        if p.groups.is_empty() {
            "-".to_string()
        } else {
            p.groups.join(", ")
        }
    );
    if grants.is_empty() {
        text.push_str("active grants: none\n");
    } else {
        text.push_str("active grants:\n");
        for g in &grants {
            text.push_str(&format!(
                "  {} {}@{} until {}\n",
                g.id,
                g.login,
                g.container,
                time_text(g.expires_at)
            ));
        }
    }
    Ok(Reply::ok(text))
}
