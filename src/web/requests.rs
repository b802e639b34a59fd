//! Access requests and grants: pending requests with their reason,
//! duration and the container's labels; approve or deny with a comment;
//! the multi-approval progress (derived from the policy's answer to
//! `activate`); active grants with their time left and revoke; break-glass
//! grants awaiting review.
//!
//! The handlers are thin: every step is the broker's command
//! (`approve`, `deny`, `revoke`, `review`, through [`super::broker`]),
//! which decides with the policy, audits and acts through
//! [`crate::grants::Workflow`]; the console adds the page-level
//! `view_requests` decision, the fresh login and the rate limit.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Viewer;
use super::broker::Word;
use super::views::{Nav, format_seconds, format_time, fresh_login_page, message_page, page};
use super::{Console, WebError};
use crate::audit::AuditEvent;
use crate::grants::{GrantError, Workflow};
use crate::policy::{Action, WorkflowRequest};
use crate::store::{AccessRequestRecord, ApprovalRecord, now_ms};

/// Most decided requests listed.
const RECENT: i64 = 50;
/// How many more approvals the progress looks ahead for.
const LOOK_AHEAD: i64 = 5;

impl Console {
    /// The workflow on the console's services.
    pub(crate) fn workflow(&self) -> Workflow<'_> {
        Workflow {
            store: &self.store,
            audit: &self.audit,
            policy: &self.policy,
            config: &self.config.grants,
        }
    }

    /// Decides (and on refusal audits) a console page that belongs to no
    /// container.
    ///
    /// # Errors
    /// [`WebError::Refused`] naming `what`; [`WebError::Audit`].
    pub(crate) async fn authorize_page(
        &self,
        viewer: &Viewer,
        action: Action,
        what: &str,
    ) -> Result<(), WebError> {
        let decision =
            self.policy
                .decide_console(&viewer.principal.subject, &viewer.principal.groups, action);
        let (allowed, reasons) = match decision {
            Ok(d) => (d.allowed, d.policies.into_iter().chain(d.errors).collect()),
            Err(e) => (false, vec![e.to_string()]),
        };
        if allowed {
            return Ok(());
        }
        let event = AuditEvent::AccessDecided {
            action: action.as_str().into(),
            container: String::new(),
            login: String::new(),
            allowed,
            reasons,
        };
        self.record(
            Some(&viewer.principal.subject),
            &viewer.client,
            None,
            &event,
        )
        .await?;
        Err(WebError::Refused(what.to_string()))
    }

    /// Whether `viewer` may take workflow `action` on `r` with `approvals`
    /// approvals so far (no audit: for showing buttons and progress).
    fn workflow_allows(
        &self,
        viewer: &Viewer,
        action: Action,
        r: &AccessRequestRecord,
        approvals: i64,
    ) -> bool {
        let labels = self.labels_of(&r.container);
        self.policy
            .decide_workflow(&WorkflowRequest {
                principal: &viewer.principal.subject,
                groups: &viewer.principal.groups,
                action,
                container: &r.container,
                labels: &labels,
                requester: &r.requester,
                login: &r.login,
                duration_seconds: r.duration_seconds,
                reason: &r.reason,
                break_glass: r.break_glass,
                approvals,
            })
            .is_ok_and(|d| d.allowed)
    }

    /// "N of M approvals": the smallest count at which the policy permits
    /// `activate`, asked with the viewer as the approver.
    fn progress(&self, viewer: &Viewer, r: &AccessRequestRecord, have: i64) -> String {
        let needed = (have + 1..=have + LOOK_AHEAD)
            .find(|k| self.workflow_allows(viewer, Action::Activate, r, *k));
        match needed {
            Some(k) if k == have + 1 => {
                format!("{have} of {k} approvals: one more approval starts the grant")
            }
            Some(k) => format!(
                "{have} of {k} approvals: needs {} more, each from a different approver",
                k - have
            ),
            None => format!(
                "{have} approvals: the policy does not start this grant with {LOOK_AHEAD} more"
            ),
        }
    }
}

/// `e` as a console error: refusals stay refusals, the rest a clear
/// message.
fn from_grant(e: GrantError) -> WebError {
    match e {
        GrantError::Denied(what) => WebError::Refused(what),
        GrantError::Store(e) => WebError::Store(e),
        GrantError::Audit(e) => WebError::Audit(e),
        other => WebError::BadRequest(other.to_string()),
    }
}

/// A request as listed.
struct RequestRow {
    id: String,
    requester: String,
    target: String,
    labels: String,
    duration: String,
    reason: String,
    state: String,
    created: String,
    progress: String,
    approvers: String,
    time_left: String,
    break_glass: bool,
    may_approve: bool,
    may_revoke: bool,
    may_review: bool,
}

impl Console {
    fn row(
        &self,
        viewer: &Viewer,
        r: &AccessRequestRecord,
        approvals: &[ApprovalRecord],
    ) -> RequestRow {
        let now = now_ms();
        let have = i64::try_from(approvals.len()).unwrap_or(i64::MAX);
        let state = r.state_at(now).to_string();
        let labels = self
            .labels_of(&r.container)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        RequestRow {
            id: r.id.clone(),
            requester: r.requester.clone(),
            target: format!("{}@{}", r.login, r.container),
            labels,
            duration: format_seconds(r.duration_seconds),
            reason: r.reason.clone(),
            created: format_time(r.created_at),
            progress: if state == "pending" {
                self.progress(viewer, r, have)
            } else {
                String::new()
            },
            approvers: approvals
                .iter()
                .map(|a| a.approver.clone())
                .collect::<Vec<_>>()
                .join(", "),
            time_left: match r.expires_at {
                Some(end) if state == "active" => format_seconds((end - now) / 1000),
                _ => String::new(),
            },
            break_glass: r.break_glass,
            may_approve: state == "pending"
                && !approvals
                    .iter()
                    .any(|a| a.approver == viewer.principal.subject)
                && self.workflow_allows(viewer, Action::Approve, r, have),
            may_revoke: state == "active" && self.workflow_allows(viewer, Action::Revoke, r, have),
            may_review: r.break_glass
                && r.reviewed_at.is_none()
                && self.workflow_allows(viewer, Action::Review, r, have),
            state,
        }
    }
}

#[derive(Template)]
#[template(path = "requests.html")]
struct ListPage {
    nav: Option<Nav>,
    pending: Vec<RequestRow>,
    active: Vec<RequestRow>,
    unreviewed: Vec<RequestRow>,
    recent: Vec<RequestRow>,
}

/// `GET /requests`.
pub(crate) async fn list(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    console
        .authorize_page(&viewer, Action::ViewRequests, "see access requests")
        .await?;
    let store = &console.store;
    let pending = store.access_requests(Some("pending"), None, 500).await?;
    let active = store.active_grants(None, now_ms()).await?;
    let unreviewed = store.unreviewed_break_glass().await?;
    let recent: Vec<AccessRequestRecord> = store
        .access_requests(None, None, RECENT)
        .await?
        .into_iter()
        .filter(|r| r.status != "pending")
        .collect();
    let ids: Vec<String> = pending
        .iter()
        .chain(&active)
        .chain(&unreviewed)
        .chain(&recent)
        .map(|r| r.id.clone())
        .collect();
    let approvals = store.approvals_of_many(&ids).await?;
    let rows = |list: &[AccessRequestRecord]| -> Vec<RequestRow> {
        list.iter()
            .map(|r| {
                let a = approvals.get(&r.id).map(Vec::as_slice).unwrap_or(&[]);
                console.row(&viewer, r, a)
            })
            .collect()
    };
    page(&ListPage {
        nav: Nav::of(&viewer),
        pending: rows(&pending),
        active: rows(&active),
        unreviewed: rows(&unreviewed),
        recent: rows(&recent),
    })
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    nav: Option<Nav>,
    csrf: String,
    r: RequestRow,
    approvals: Vec<(String, String, String)>,
    decision: String,
}

/// `GET /requests/{id}`.
pub(crate) async fn page_handler(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    console
        .authorize_page(&viewer, Action::ViewRequests, "see access requests")
        .await?;
    let r = console.workflow().get(&id).await.map_err(from_grant)?;
    let approvals = console.store.approvals_of(&r.id).await?;
    let decision = match (&r.decided_by, r.decided_at) {
        (Some(by), Some(at)) => format!(
            "{} by {by} at {}{}",
            r.status,
            format_time(at),
            r.decision_comment
                .as_ref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ),
        _ => String::new(),
    };
    page(&RequestPage {
        nav: Nav::of(&viewer),
        csrf: viewer.csrf.clone(),
        r: console.row(&viewer, &r, &approvals),
        approvals: approvals
            .iter()
            .map(|a| {
                (
                    a.approver.clone(),
                    format_time(a.approved_at),
                    a.comment.clone().unwrap_or_default(),
                )
            })
            .collect(),
        decision,
    })
}

/// The forms of approve, deny, revoke and review.
#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    comment: String,
}

/// What a POST on a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Approve,
    Deny,
    Revoke,
    Review,
}

impl Step {
    fn action(self) -> Action {
        match self {
            Step::Approve | Step::Deny => Action::Approve,
            Step::Revoke => Action::Revoke,
            Step::Review => Action::Review,
        }
    }
}

/// Runs the broker's command for `step` on request `id` (`approve ID
/// [--comment C]`, `deny ID --reason C`, `revoke ID --reason C`, `review
/// ID [--comment C]`), as `ssh portcullis@gw` would: the command decides,
/// audits and acts through [`crate::grants::Workflow`]. The console adds
/// the rate limit and, for those the policy allows, a fresh login first.
async fn act(
    console: &Console,
    viewer: &Viewer,
    id: &str,
    step: Step,
    comment: &str,
) -> Result<Response, WebError> {
    viewer.count_action(console)?;
    let wf = console.workflow();
    let r = wf.get(id).await.map_err(from_grant)?;
    let have =
        i64::try_from(wf.approvals(&r.id).await.map_err(from_grant)?.len()).unwrap_or(i64::MAX);
    // A fresh login is asked only of those the policy allows; the others
    // go on to the command, which refuses and audits.
    if !viewer.fresh(console) && console.workflow_allows(viewer, step.action(), &r, have) {
        return fresh_login_page(viewer, &format!("/requests/{}", r.id));
    }
    let comment = comment.trim();
    let (verb, field, required) = match step {
        Step::Approve => ("approve", "comment", false),
        Step::Deny => ("deny", "reason", true),
        Step::Revoke => ("revoke", "reason", true),
        Step::Review => ("review", "comment", false),
    };
    if required && comment.is_empty() {
        return Err(WebError::BadRequest(format!(
            "To {verb}, say why in the comment (the requester is shown it)."
        )));
    }
    let mut words = vec![Word::Plain(verb), Word::Plain(&r.id)];
    if !comment.is_empty() {
        words.push(Word::Value(field, comment));
    }
    let said = console.command(viewer, &words).await?;
    let mut message = said.trim().to_string();
    if step == Step::Approve {
        // Still pending: how far the approvals are.
        let now = wf.get(&r.id).await.map_err(from_grant)?;
        if now.status == "pending" {
            let have = i64::try_from(wf.approvals(&r.id).await.map_err(from_grant)?.len())
                .unwrap_or(i64::MAX);
            message = format!(
                "Your approval of request {} is recorded; {}.",
                r.id,
                console.progress(viewer, &now, have)
            );
        }
    }
    Ok(message_page(
        Nav::of(viewer),
        "Done",
        &message,
        Some((format!("/requests/{}", r.id), "Back to the request".into())),
    )?
    .into_response())
}

/// `POST /requests/{id}/approve`.
pub(crate) async fn approve(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    act(&console, &viewer, &id, Step::Approve, &form.comment).await
}

/// `POST /requests/{id}/deny`.
pub(crate) async fn deny(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    act(&console, &viewer, &id, Step::Deny, &form.comment).await
}

/// `POST /requests/{id}/revoke`.
pub(crate) async fn revoke(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    act(&console, &viewer, &id, Step::Revoke, &form.comment).await
}

/// `POST /requests/{id}/review`.
pub(crate) async fn review(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    act(&console, &viewer, &id, Step::Review, &form.comment).await
}
