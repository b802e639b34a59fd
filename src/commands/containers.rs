//! The control plane's broker commands (issue 18), over ssh
//! (`ssh portcullis@GATEWAY containers ...`):
//!
//! ```text
//! containers [list] [--json]                                    what you may see
//! containers snapshots NAME [--json]                            its snapshots
//! containers start|stop|restart|snapshot NAME --reason TEXT [--force] [--json]
//! containers restore NAME SNAPSHOT --reason TEXT [--force] [--json]
//! containers request ACTION NAME --reason TEXT [--for DURATION] [--json]
//! ```
//!
//! Each lifecycle action is the Cedar action of its name on the container
//! (`inspect` for the listing and the snapshots), decided first without
//! and then with the caller's grant for that action; the context also
//! carries `force`, `live_sessions`, `reason`, `snapshot` and
//! `principal_is_owner` ([`crate::policy::lifecycle`]). When the policy
//! wants an approval, `containers request` files an access request for
//! the action (the `request`/`approve`/`activate` workflow of
//! [`crate::grants`], with `action` in its context); its grant runs the
//! action once before it expires ([`crate::store::Store::use_action_grant`]).
//!
//! [`perform`] is the one path that runs a step: the `ContainerActionStarted`
//! audit event first (no event, no step), the backend
//! ([`crate::inventory::Inventory::act`]), then `ContainerActionEnded` with
//! the backend's error, if any. The host's own CLI (`portcullis containers
//! start ...`) calls it too, as the operator, without policy.

use serde_json::json;

use super::Reply;
use super::args::Args;
use super::render::json_text;
use crate::audit::truncate;
use crate::audit::{AuditEvent, AuditLog, AuditSubject, ContainerAction};
use crate::gateway::Gateway;
use crate::grants::{Actor, RequestSpec, Workflow, format_duration};
use crate::inventory::{Container, ContainerRow, Inventory, Operation, container_rows};
use crate::policy::lifecycle::{LifecycleRequest, owner_is};
use crate::policy::{Action, ContainerAttributes, Decision, GrantContext};
use crate::session::Caller;
use crate::store::{AccessRequestRecord, now_ms};

/// Default length of a grant for a lifecycle action.
const DEFAULT_ACTION_GRANT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The usage line of the lifecycle commands.
const USAGE: &str = "usage: containers [list] | snapshots NAME | \
     start|stop|restart|snapshot NAME --reason TEXT [--force] | \
     restore NAME SNAPSHOT --reason TEXT [--force] | \
     request ACTION NAME --reason TEXT [--for DURATION]";

/// Why a lifecycle step did not run or failed: the user's one line (the
/// audit log has the rest).
#[derive(Debug, thiserror::Error)]
pub enum ContainerCommandError {
    /// The `ContainerActionStarted` event could not be written: nothing ran.
    #[error("the gateway cannot write its audit log right now")]
    Audit(#[source] crate::store::StoreError),
    /// The backend refused or failed; its own message.
    #[error("{action} {container} failed: {source}")]
    Backend {
        /// The action.
        action: &'static str,
        /// The container.
        container: String,
        /// The backend's error.
        #[source]
        source: crate::inventory::LifecycleError,
    },
}

/// Runs `op` on `container` for `subject`: audits `facts` as
/// `ContainerActionStarted`, asks the backend, audits
/// `ContainerActionEnded` (with the backend's error). Returns the snapshot
/// taken or restored, if any.
///
/// # Errors
/// [`ContainerCommandError::Audit`] (nothing ran),
/// [`ContainerCommandError::Backend`] (it ran and failed; audited).
pub async fn perform(
    inventory: &Inventory,
    audit: &AuditLog,
    subject: &AuditSubject<'_>,
    container: &Container,
    op: &Operation,
    facts: ContainerAction,
) -> Result<Option<String>, ContainerCommandError> {
    audit
        .record(subject, &AuditEvent::ContainerActionStarted(facts))
        .await
        .map_err(ContainerCommandError::Audit)?;
    let result = inventory.act(container, op).await;
    let (snapshot, error) = match &result {
        Ok(s) => (s.clone(), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let ended = AuditEvent::ContainerActionEnded {
        action: op.as_str().to_string(),
        container: container.name.clone(),
        snapshot,
        error,
    };
    if let Err(e) = audit.record(subject, &ended).await {
        tracing::error!(error = %e, container = %container.name, "cannot audit the end of a lifecycle action");
    }
    result.map_err(|source| ContainerCommandError::Backend {
        action: op.as_str(),
        container: container.name.clone(),
        source,
    })
}

/// `containers ...` for `caller`.
pub(super) async fn run(gateway: &Gateway, caller: &Caller, words: &[String]) -> Reply {
    let c = Ctx { gateway, caller };
    let Some((verb, rest)) = words.split_first() else {
        return c.list(&[]).await;
    };
    match verb.as_str() {
        "list" => c.list(rest).await,
        // `containers --json`: the listing's options.
        option if option.starts_with("--") => c.list(words).await,
        "snapshots" => c.snapshots(rest).await,
        "request" => c.request(rest).await,
        "start" | "stop" | "restart" | "snapshot" | "restore" => c.act(verb, rest).await,
        other => Reply::usage(&format!(
            "unknown containers command {:?}; {USAGE}",
            truncate(other, 32)
        )),
    }
}

/// The Cedar action of a lifecycle word.
fn action_of(word: &str) -> Option<Action> {
    match word {
        "start" => Some(Action::Start),
        "stop" => Some(Action::Stop),
        "restart" => Some(Action::Restart),
        "snapshot" => Some(Action::Snapshot),
        "restore" => Some(Action::Restore),
        _ => None,
    }
}

/// A reason: one non-empty line of at most
/// [`crate::grants::MAX_REASON_BYTES`] bytes.
fn check_reason(reason: Option<&String>) -> Result<&str, String> {
    match reason {
        Some(r)
            if !r.trim().is_empty()
                && r.len() <= crate::grants::MAX_REASON_BYTES
                && !r.chars().any(char::is_control) =>
        {
            Ok(r)
        }
        _ => Err(format!(
            "--reason TEXT is required: one line of at most {} bytes",
            crate::grants::MAX_REASON_BYTES
        )),
    }
}

struct Ctx<'a> {
    gateway: &'a Gateway,
    caller: &'a Caller,
}

/// The container of a decision as the policy sees it.
#[derive(Clone, Copy)]
struct Target<'a> {
    name: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
    owner: Option<&'a str>,
    purpose: Option<&'a str>,
}

impl<'a> From<&'a Container> for Target<'a> {
    fn from(c: &'a Container) -> Target<'a> {
        Target {
            name: &c.name,
            labels: &c.labels,
            owner: c.owner.as_deref(),
            purpose: c.purpose.as_deref(),
        }
    }
}

/// What one decision is about.
struct Question<'a> {
    action: Action,
    container: Target<'a>,
    force: bool,
    live_sessions: i64,
    reason: &'a str,
    snapshot: &'a str,
}

impl Ctx<'_> {
    fn subject(&self) -> AuditSubject<'_> {
        self.caller.subject(None)
    }

    /// Audits a refusal of `action` on `container` and returns the reply
    /// with `message`.
    async fn refuse(&self, action: &str, container: &str, message: &str, detail: String) -> Reply {
        let event = AuditEvent::ContainerActionRefused {
            action: action.to_string(),
            container: truncate(container, 64),
            reason: detail,
        };
        if let Err(e) = self.gateway.audit.record(&self.subject(), &event).await {
            tracing::error!(error = %e, "cannot audit a lifecycle refusal");
            return Reply::refused("the gateway cannot write its audit log right now");
        }
        Reply::refused(message)
    }

    fn decide(&self, q: &Question<'_>, grant: Option<&AccessRequestRecord>) -> Decision {
        let p = &self.caller.principal;
        let c = q.container;
        let request = LifecycleRequest {
            principal: &p.subject,
            issuer: &p.issuer,
            groups: &p.groups,
            action: q.action,
            container: c.name,
            labels: c.labels,
            attributes: ContainerAttributes {
                owner: c.owner,
                purpose: c.purpose,
            },
            grant: grant.map(|g| GrantContext {
                id: &g.id,
                approver: g.decided_by.as_deref().unwrap_or(""),
                expires_at: g.expires_at.unwrap_or(0) / 1000,
            }),
            force: q.force,
            live_sessions: q.live_sessions,
            reason: q.reason,
            snapshot: q.snapshot,
            principal_is_owner: owner_is(c.owner, &p.subject, p.email.as_deref()),
        };
        match self.gateway.policy.decide_lifecycle(&request) {
            Ok(d) => d,
            Err(e) => Decision {
                allowed: false,
                policies: Vec::new(),
                errors: vec![e.to_string()],
            },
        }
    }

    /// Finds `name`, or the refusal (audited) for `action`.
    async fn find(&self, action: &str, name: &str) -> Result<Container, Reply> {
        if name == self.gateway.config.grants.broker_user || !crate::config::valid_name(name) {
            return Err(self
                .refuse(
                    action,
                    name,
                    "no such container",
                    "invalid container name".into(),
                )
                .await);
        }
        match self.gateway.inventory.find(name).await {
            Ok(c) => Ok(c),
            Err(e) => Err(self
                .refuse(
                    action,
                    name,
                    &format!("no such container {name}"),
                    e.to_string(),
                )
                .await),
        }
    }

    /// `containers [list] [--json]`: the rows the caller may `inspect`.
    async fn list(&self, rest: &[String]) -> Reply {
        let args = match Args::parse(rest, &[], &["json"]) {
            Ok(a) if a.positional.is_empty() => a,
            Ok(_) => return Reply::usage("usage: containers list [--json]"),
            Err(m) => return Reply::usage(&m),
        };
        let g = self.gateway;
        let fresh = g.config.fleet.heartbeat.saturating_mul(3);
        let rows = match container_rows(&g.inventory, &g.store, &g.config.gateway_id(), fresh).await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                return Reply::refused("the inventory cannot be read right now");
            }
        };
        let mut visible: Vec<ContainerRow> = Vec::new();
        for row in rows {
            let q = Question {
                action: Action::Inspect,
                container: Target {
                    name: &row.name,
                    labels: &row.labels,
                    owner: row.owner.as_deref(),
                    purpose: row.purpose.as_deref(),
                },
                force: false,
                live_sessions: 0,
                reason: "",
                snapshot: "",
            };
            if self.decide(&q, None).allowed {
                visible.push(row);
            }
        }
        if args.flags.contains("json") {
            return Reply::ok(json_text(&json!(visible)));
        }
        if visible.is_empty() {
            return Reply::ok("No containers you may see.\n".into());
        }
        let mut text = String::new();
        for r in &visible {
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            text.push_str(&format!(
                "{} {} {} owner={} purpose={} {}\n",
                r.name,
                r.node,
                r.state,
                r.owner.as_deref().unwrap_or("(none)!"),
                r.purpose.as_deref().unwrap_or("-"),
                labels.join(",")
            ));
        }
        Reply::ok(text)
    }

    /// `containers snapshots NAME [--json]` (policy action `inspect`).
    async fn snapshots(&self, rest: &[String]) -> Reply {
        let args = match Args::parse(rest, &[], &["json"]) {
            Ok(a) => a,
            Err(m) => return Reply::usage(&m),
        };
        let [name] = args.positional.as_slice() else {
            return Reply::usage("usage: containers snapshots NAME [--json]");
        };
        let c = match self.find("inspect", name).await {
            Ok(c) => c,
            Err(reply) => return reply,
        };
        let q = Question {
            action: Action::Inspect,
            container: Target::from(&c),
            force: false,
            live_sessions: 0,
            reason: "",
            snapshot: "",
        };
        let d = self.decide(&q, None);
        if !d.allowed {
            let detail = format!("policy: {:?} {:?}", d.policies, d.errors);
            let message = format!("the policy does not allow you to inspect {name}");
            return self.refuse("inspect", name, &message, detail).await;
        }
        match self.gateway.inventory.snapshots(&c).await {
            Ok(list) if args.flags.contains("json") => Reply::ok(json_text(&json!(list))),
            Ok(list) if list.is_empty() => Reply::ok(format!("{name} has no snapshots.\n")),
            Ok(list) => Reply::ok(
                list.iter()
                    .map(|s| format!("{} {}\n", s.name, s.created))
                    .collect(),
            ),
            Err(e) => Reply::refused(&format!("cannot list the snapshots of {name}: {e}")),
        }
    }

    /// `containers request ACTION NAME --reason TEXT [--for DURATION]`.
    async fn request(&self, rest: &[String]) -> Reply {
        let args = match Args::parse(rest, &["reason", "for"], &["json"]) {
            Ok(a) => a,
            Err(m) => return Reply::usage(&m),
        };
        let [word, name] = args.positional.as_slice() else {
            return Reply::usage(
                "usage: containers request start|stop|restart|snapshot|restore NAME \
                 --reason TEXT [--for DURATION]",
            );
        };
        if action_of(word).is_none() {
            return Reply::usage(&format!(
                "{:?} is not a lifecycle action (start, stop, restart, snapshot, restore)",
                truncate(word, 32)
            ));
        }
        let duration = match args.values.get("for") {
            None => DEFAULT_ACTION_GRANT,
            Some(d) => match humantime::parse_duration(d) {
                Ok(d) => d,
                Err(_) => {
                    return Reply::usage(&format!("--for {d:?} is not a duration (e.g. 30m, 2h)"));
                }
            },
        };
        let c = match self.find(word, name).await {
            Ok(c) => c,
            Err(reply) => return reply,
        };
        let g = self.gateway;
        let wf = Workflow {
            store: &g.store,
            audit: &g.audit,
            policy: &g.policy,
            config: &g.config.grants,
        };
        let actor = Actor {
            principal: &self.caller.principal,
            client_addr: &self.caller.client_addr,
        };
        let spec = RequestSpec {
            container: &c.name,
            labels: &c.labels,
            login: "",
            duration,
            reason: args.values.get("reason").map(String::as_str).unwrap_or(""),
            break_glass: false,
        };
        let r = match wf.request_action(&actor, &spec, word).await {
            Ok(r) => r,
            Err(e) => return Reply::refused(&e.to_string()),
        };
        if args.flags.contains("json") {
            return Reply::ok(json_text(&json!(r)));
        }
        Reply::ok(format!(
            "Request {id} is pending: {word} {name}, once within {dur} of its approval.\n\
             An approver may run: {line}\nOnce approved, run: containers {word} {name} ...\n",
            id = r.id,
            dur = format_duration(duration),
            line = g.broker_line(&format!("approve {}", r.id)),
        ))
    }

    /// `containers start|stop|restart|snapshot NAME --reason TEXT
    /// [--force]`, `containers restore NAME SNAPSHOT --reason TEXT
    /// [--force]`.
    async fn act(&self, word: &str, rest: &[String]) -> Reply {
        let args = match Args::parse(rest, &["reason"], &["json", "force"]) {
            Ok(a) => a,
            Err(m) => return Reply::usage(&m),
        };
        let Some(action) = action_of(word) else {
            return Reply::usage(USAGE);
        };
        let (name, op) = match (action, args.positional.as_slice()) {
            (Action::Restore, [name, snapshot]) => (name, Operation::Restore(snapshot.clone())),
            (Action::Start, [name]) => (name, Operation::Start),
            (Action::Stop, [name]) => (name, Operation::Stop),
            (Action::Restart, [name]) => (name, Operation::Restart),
            (Action::Snapshot, [name]) => (name, Operation::Snapshot),
            _ => return Reply::usage(USAGE),
        };
        let reason = match check_reason(args.values.get("reason")) {
            Ok(r) => r,
            Err(m) => return Reply::usage(&m),
        };
        if let Operation::Restore(s) = &op
            && !crate::config::valid_name(s)
        {
            return self
                .refuse(
                    word,
                    name,
                    "invalid snapshot name",
                    format!("snapshot {:?}", truncate(s, 64)),
                )
                .await;
        }
        let c = match self.find(word, name).await {
            Ok(c) => c,
            Err(reply) => return reply,
        };
        let force = args.flags.contains("force");
        let live = self
            .gateway
            .live
            .list()
            .iter()
            .filter(|s| s.container == c.name)
            .count();
        let snapshot = match &op {
            Operation::Restore(s) => s.as_str(),
            _ => "",
        };
        let q = Question {
            action,
            container: Target::from(&c),
            force,
            live_sessions: i64::try_from(live).unwrap_or(i64::MAX),
            reason,
            snapshot,
        };
        let g = self.gateway;
        let p = &self.caller.principal;
        let grant = match g
            .store
            .active_action_grant_for(&p.subject, &c.name, word, now_ms())
            .await
        {
            Ok(grant) => grant,
            Err(e) => {
                return self
                    .refuse(
                        word,
                        name,
                        "the gateway cannot reach its database right now",
                        e.to_string(),
                    )
                    .await;
            }
        };
        let without = self.decide(&q, None);
        let (decision, used) = match (&grant, without.allowed) {
            (_, true) | (None, false) => (without, None),
            (Some(gr), false) => (self.decide(&q, Some(gr)), Some(gr)),
        };
        if !decision.allowed {
            return self
                .refused(&q, word, name, &decision, grant.as_ref())
                .await;
        }
        if let Some(gr) = used {
            match g.store.use_action_grant(&gr.id, &p.subject, now_ms()).await {
                Ok(true) => {}
                Ok(false) => {
                    let m = format!("grant {} was used, revoked or expired meanwhile", gr.id);
                    return self.refuse(word, name, &m, m.clone()).await;
                }
                Err(e) => {
                    return self
                        .refuse(
                            word,
                            name,
                            "the gateway cannot reach its database right now",
                            e.to_string(),
                        )
                        .await;
                }
            }
        }
        let facts = ContainerAction {
            action: word.to_string(),
            container: c.name.clone(),
            snapshot: (!snapshot.is_empty()).then(|| snapshot.to_string()),
            reason: reason.to_string(),
            force,
            live_sessions: q.live_sessions,
            grant_id: used.map(|gr| gr.id.clone()),
            policies: decision.policies.clone(),
        };
        match perform(&g.inventory, &g.audit, &self.subject(), &c, &op, facts).await {
            Ok(taken) => {
                if args.flags.contains("json") {
                    return Reply::ok(json_text(&json!({
                        "action": word,
                        "container": name,
                        "snapshot": taken,
                        "grant_id": used.map(|gr| gr.id.clone()),
                    })));
                }
                Reply::ok(match (&op, taken) {
                    (Operation::Snapshot, Some(s)) => format!("Took snapshot {s} of {name}.\n"),
                    (Operation::Restore(s), _) => format!("Restored {name} to {s}.\n"),
                    (Operation::Start, _) => format!("Started {name}.\n"),
                    (Operation::Stop, _) => format!("Stopped {name}.\n"),
                    _ => format!("Restarted {name}.\n"),
                })
            }
            Err(e) => Reply::refused(&e.to_string()),
        }
    }

    /// The refusal of `q` (audited), with what would help: `--force`, or
    /// asking for approval.
    async fn refused(
        &self,
        q: &Question<'_>,
        word: &str,
        name: &str,
        decision: &Decision,
        grant: Option<&AccessRequestRecord>,
    ) -> Reply {
        let detail = format!("policy: {:?} {:?}", decision.policies, decision.errors);
        let forced = Question { force: true, ..*q };
        let message = if !q.force && q.live_sessions > 0 && self.decide(&forced, grant).allowed {
            format!(
                "{name} has {} live session(s); add --force to {word} it anyway",
                q.live_sessions
            )
        } else if q.live_sessions > 0 && decision.policies.iter().any(|p| p.contains("force")) {
            format!(
                "{name} has {} live session(s) and the policy does not allow --force there; \
                 end them first",
                q.live_sessions
            )
        } else {
            format!(
                "the policy does not allow you to {word} {name}; to ask for approval: {}",
                self.gateway
                    .broker_line(&format!("containers request {word} {name} --reason TEXT"))
            )
        };
        self.refuse(word, name, &message, detail).await
    }
}
