//! The audit log in the console: events filterable by kind, outcome,
//! principal, session and time, newest first and paged; and the chain's
//! verification, as [`crate::audit::verify`] reports it (the evidence
//! module owns what is checked; this page shows its report).
//!
//! `view_audit` decides both. Verification reads the whole log and every
//! recording, so it runs on request (a POST, rate-limited), not on every
//! page view.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::auth::Viewer;
use super::sessions::AuditLine;
use super::views::{Nav, page, parse_time};
use super::{Console, WebError};
use crate::audit::VerifyReport;
use crate::policy::Action;
use crate::store::AuditFilter;

/// Events per page.
const PAGE: i64 = 100;

/// The filters of `/audit`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Older than this event id (the next page).
    #[serde(default)]
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    csrf: String,
    query: AuditQuery,
    events: Vec<AuditLine>,
    next: Option<String>,
    report: Option<Report>,
}

/// A verification report as shown.
struct Report {
    ok: bool,
    summary: String,
    problems: Vec<String>,
}

impl Report {
    fn of(r: &VerifyReport) -> Report {
        // Every failure the verifier names (chain, heads, gaps, the
        // unsigned tail, recordings), as `portcullis audit verify` prints it.
        let problems = r
            .lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("BAD ").map(str::to_string))
            .collect();
        Report {
            ok: r.ok(),
            summary: format!(
                "{} events, {} signed heads, {} recordings checked",
                r.events, r.signatures, r.recordings
            ),
            problems,
        }
    }
}

async fn render(
    console: &Console,
    viewer: &Viewer,
    query: AuditQuery,
    report: Option<Report>,
) -> Result<Response, WebError> {
    let filter = AuditFilter {
        kind: query.kind.trim().to_string(),
        outcome: query.outcome.trim().to_string(),
        principal: query.principal.trim().to_string(),
        session_id: query.session.trim().to_string(),
        since_ms: parse_time("since", &query.since)?,
        until_ms: parse_time("until", &query.until)?,
        before_id: query.before,
        limit: PAGE,
    };
    let rows = console.store.audit_page(&filter).await?;
    let next = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|r| r.id))
        .flatten()
        .map(|before| {
            serde_urlencoded::to_string([
                ("kind", filter.kind.as_str()),
                ("outcome", filter.outcome.as_str()),
                ("principal", filter.principal.as_str()),
                ("session", filter.session_id.as_str()),
                ("since", query.since.as_str()),
                ("until", query.until.as_str()),
                ("before", before.to_string().as_str()),
            ])
            .unwrap_or_default()
        });
    page(&AuditPage {
        nav: Nav::of(viewer),
        csrf: viewer.csrf.clone(),
        query,
        events: rows.iter().map(AuditLine::of).collect(),
        next,
        report,
    })
}

/// `GET /audit`.
pub(crate) async fn list(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Result<Response, WebError> {
    console
        .authorize_page(&viewer, Action::ViewAudit, "read the audit log")
        .await?;
    render(&console, &viewer, query, None).await
}

/// `POST /audit/verify`: runs the verification now and shows its report
/// above the newest events.
pub(crate) async fn verify(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    console
        .authorize_page(&viewer, Action::ViewAudit, "verify the audit log")
        .await?;
    viewer.count_action(&console)?;
    // This host's key and `audit.trusted_keys`, as `portcullis audit
    // verify` trusts them.
    let options = crate::audit::VerifyOptions::from_config(&console.config);
    let report =
        crate::audit::verify_with_recordings(&console.store, &options, &console.config.recording)
            .await
            .map_err(|e| match e {
                crate::audit::AuditError::Database(e) => WebError::Store(e),
                other => WebError::Render(other.to_string()),
            })?;
    render(
        &console,
        &viewer,
        AuditQuery::default(),
        Some(Report::of(&report)),
    )
    .await
}
