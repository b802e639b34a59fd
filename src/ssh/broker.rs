//! The broker's own commands over ssh (issue 7): the reserved SSH user
//! name (`[grants] broker_user`, default `portcullis`) reaches these
//! instead of a container, authenticated like any session:
//!
//! ```text
//! ssh portcullis@gw request CONTAINER --login L --for 2h --reason "..."
//! ssh portcullis@gw requests [--pending|--mine]   ssh portcullis@gw request show ID
//! ssh portcullis@gw approve ID [--comment ...]    ssh portcullis@gw deny ID --reason ...
//! ssh portcullis@gw grants [--mine]               ssh portcullis@gw revoke ID --reason ...
//! ssh portcullis@gw whoami
//! ssh portcullis@gw request CONTAINER ... --break-glass   ssh portcullis@gw review ID
//! ssh portcullis@gw sessions watch ID             ssh portcullis@gw sessions kill ID --reason ...
//! ```
//!
//! The exec command line is split like a POSIX shell would (`shlex`).
//! `--json` prints JSON for tools. Exit status 0 on success, 1 when the
//! step is refused, 2 on a usage error; messages go to stderr as one line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelId;
use russh::server::Handle;
use serde_json::json;

use super::Gateway;
use crate::grants::{Actor, GrantError, RequestSpec, Workflow, format_duration};
use crate::identity::Principal;
use crate::store::{AccessRequestRecord, ApprovalRecord, now_ms};
use args::Args;

mod args;
mod sessions;

/// Most requests listed by `requests`.
const LIST_LIMIT: i64 = 200;

/// Everything a broker command starts with.
pub(super) struct BrokerStart {
    /// Shared gateway state.
    pub gateway: Arc<Gateway>,
    /// Handle to answer on.
    pub handle: Handle,
    /// The channel.
    pub channel: ChannelId,
    /// Who.
    pub principal: Principal,
    /// Client `ip:port`.
    pub client_addr: String,
    /// The exec command line; `None` for a shell request (help).
    pub command: Option<String>,
    /// True when a PTY was asked for (lines then end in CR LF).
    pub pty: bool,
}

/// What a command answers.
struct Reply {
    code: u32,
    stdout: String,
    stderr: String,
}

impl Reply {
    fn ok(stdout: String) -> Reply {
        Reply {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }
    fn usage(message: &str) -> Reply {
        Reply {
            code: 2,
            stdout: String::new(),
            stderr: format!("portcullis: {message} (try: help)\n"),
        }
    }
    fn refused_text(message: &str) -> Reply {
        Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("portcullis: refused: {message}.\n"),
        }
    }
    fn refused(e: &GrantError) -> Reply {
        Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("portcullis: refused: {e}.\n"),
        }
    }
}

/// Runs one broker command and closes the channel with its exit status.
pub(super) async fn run(start: BrokerStart) {
    let reply = execute(&start).await;
    let fix = |s: String| {
        if start.pty {
            s.replace('\n', "\r\n")
        } else {
            s
        }
    };
    let (handle, channel) = (&start.handle, start.channel);
    if !reply.stdout.is_empty() {
        let _ = handle.data(channel, fix(reply.stdout).into_bytes()).await;
    }
    if !reply.stderr.is_empty() {
        let _ = handle
            .extended_data(channel, 1, fix(reply.stderr).into_bytes())
            .await;
    }
    let _ = handle.exit_status_request(channel, reply.code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// How users reach the gateway in printed `ssh` lines.
pub(super) fn ssh_line(gateway: &Gateway, rest: &str) -> String {
    gateway.broker_line(rest)
}

const HELP: &str = "Portcullis broker commands (ssh portcullis@GATEWAY COMMAND):
  request CONTAINER --login LOGIN --for DURATION --reason TEXT   ask for access
  request show ID                                                one request
  requests [--pending|--mine]                                    list requests
  approve ID [--comment TEXT]                                    approve a request
  deny ID --reason TEXT                                          deny a request
  grants [--mine]                                                active grants
  revoke ID --reason TEXT                                        end a grant now
  request CONTAINER --login LOGIN --for DURATION --reason TEXT --break-glass
                                            emergency self-granted access (break-glass group)
  requests --unreviewed                                          break-glass grants to review
  review ID [--comment TEXT]                                     mark a break-glass grant reviewed
  whoami                                                         you, your groups and grants
  sessions watch ID                                              follow a live session read-only
  sessions kill ID --reason TEXT                                 end a live session (the user sees why)
Add --json for machine-readable output.
";

async fn execute(start: &BrokerStart) -> Reply {
    let Some(command) = &start.command else {
        return Reply::ok(HELP.to_string());
    };
    let Some(words) = shlex::split(command) else {
        return Reply::usage("cannot parse the command line (unbalanced quotes?)");
    };
    let Some((verb, rest)) = words.split_first() else {
        return Reply::ok(HELP.to_string());
    };
    let gateway = &start.gateway;
    let wf = Workflow {
        store: &gateway.store,
        audit: &gateway.audit,
        policy: &gateway.policy,
        config: &gateway.config.grants,
    };
    let actor = Actor {
        principal: &start.principal,
        client_addr: &start.client_addr,
    };
    let result = match verb.as_str() {
        "help" | "--help" => return Reply::ok(HELP.to_string()),
        "sessions" => return sessions::run(start, rest).await,
        "whoami" => whoami(gateway, &wf, &actor, rest).await,
        "request" if rest.first().is_some_and(|w| w == "show") => {
            show(&wf, rest.get(1..).unwrap_or_default()).await
        }
        "request" => request(gateway, &wf, &actor, rest).await,
        "requests" => list_requests(&wf, &actor, rest).await,
        "approve" | "deny" | "revoke" | "review" => decide(gateway, &wf, &actor, verb, rest).await,
        "grants" => list_grants(&wf, &actor, rest).await,
        other => {
            return Reply::usage(&format!(
                "unknown command {:?}",
                crate::audit::truncate(other, 32)
            ));
        }
    };
    match result {
        Ok(reply) => reply,
        Err(Failure::Usage(m)) => Reply::usage(&m),
        Err(Failure::Refused(e)) => {
            tracing::info!(error = %e, command = %verb, "broker command refused");
            Reply::refused(&e)
        }
    }
}

enum Failure {
    Usage(String),
    Refused(GrantError),
}

impl From<GrantError> for Failure {
    fn from(e: GrantError) -> Failure {
        Failure::Refused(e)
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Failure {
        Failure::Refused(GrantError::Store(e))
    }
}

fn usage(m: String) -> Failure {
    Failure::Usage(m)
}

/// The labels of `container` as the inventory knows them (the config's,
/// when it cannot be found right now).
async fn labels_of(gateway: &Gateway, container: &str) -> BTreeMap<String, String> {
    match gateway.inventory.find(container).await {
        Ok(c) => c.labels,
        Err(_) => gateway
            .config
            .containers
            .get(container)
            .map(|c| c.labels.clone())
            .unwrap_or_default(),
    }
}

fn time_text(ms: Option<i64>) -> String {
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

fn status_of(r: &AccessRequestRecord) -> &'static str {
    r.state_at(now_ms())
}

/// `r` as JSON: its stored fields, `state`, `approvals` (objects with
/// `approver`, `comment`, `approved_at` in unix ms, oldest first) and
/// `approval_count`.
fn record_json(r: &AccessRequestRecord, approvals: &[ApprovalRecord]) -> serde_json::Value {
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
fn approvals_text(approvals: &[ApprovalRecord]) -> String {
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

/// The approvals of each request of `list`, by request id.
async fn with_approvals(
    wf: &Workflow<'_>,
    list: &[AccessRequestRecord],
) -> Result<BTreeMap<String, Vec<ApprovalRecord>>, Failure> {
    let ids: Vec<String> = list.iter().map(|r| r.id.clone()).collect();
    Ok(wf.store.approvals_of_many(&ids).await?)
}

fn list_text(
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

fn list_json(
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

fn line(r: &AccessRequestRecord, approvals: &[ApprovalRecord]) -> String {
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
        "{}  {:<8} {} wants {}@{} for {}{}{flag}{approved}: {}\n",
        r.id,
        status_of(r),
        r.requester,
        r.login,
        r.container,
        format_duration(Duration::from_secs(secs)),
        until,
        r.reason
    )
}

fn json_text(v: &serde_json::Value) -> String {
    format!("{v}\n")
}

async fn request(
    gateway: &Gateway,
    wf: &Workflow<'_>,
    actor: &Actor<'_>,
    rest: &[String],
) -> Result<Reply, Failure> {
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
        line = ssh_line(gateway, &format!("approve {}", r.id)),
    )))
}

async fn show(wf: &Workflow<'_>, rest: &[String]) -> Result<Reply, Failure> {
    let args = Args::parse(rest, &[], &["json"]).map_err(usage)?;
    let r = wf.get(args.one_id().map_err(usage)?).await?;
    let sessions = wf.store.sessions_of_grant(&r.id).await?;
    let approvals = wf.approvals(&r.id).await?;
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

async fn list_requests(
    wf: &Workflow<'_>,
    actor: &Actor<'_>,
    rest: &[String],
) -> Result<Reply, Failure> {
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
    if args.flags.contains("json") {
        return Ok(Reply::ok(list_json(&list, &approvals)));
    }
    if list.is_empty() {
        return Ok(Reply::ok("No access requests.\n".into()));
    }
    Ok(Reply::ok(list_text(&list, &approvals)))
}

async fn list_grants(
    wf: &Workflow<'_>,
    actor: &Actor<'_>,
    rest: &[String],
) -> Result<Reply, Failure> {
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
    if args.flags.contains("json") {
        return Ok(Reply::ok(list_json(&list, &approvals)));
    }
    if list.is_empty() {
        return Ok(Reply::ok("No active grants.\n".into()));
    }
    Ok(Reply::ok(list_text(&list, &approvals)))
}

async fn decide(
    gateway: &Gateway,
    wf: &Workflow<'_>,
    actor: &Actor<'_>,
    verb: &str,
    rest: &[String],
) -> Result<Reply, Failure> {
    let args = Args::parse(rest, &["comment", "reason"], &["json"]).map_err(usage)?;
    let id = args.one_id().map_err(usage)?;
    let r = wf.get(id).await?;
    let labels = labels_of(gateway, &r.container).await;
    let reason = args.values.get("reason").map(String::as_str);
    if verb == "approve" {
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
                "Approved {}: {} may use {}@{} until {} (approved by {}).\n",
                r.id,
                r.requester,
                r.login,
                r.container,
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
        return Ok(Reply::ok(text));
    }
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

async fn whoami(
    _gateway: &Gateway,
    wf: &Workflow<'_>,
    actor: &Actor<'_>,
    rest: &[String],
) -> Result<Reply, Failure> {
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
