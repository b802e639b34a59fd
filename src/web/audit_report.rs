//! The auditor's report in the console (issue 17 point 4): the report of
//! `portcullis audit report` for a period, made by the same
//! [`crate::audit::report::collect`] and [`crate::audit::report::render`]:
//! its summary and the chain's verification on a page, and the report as
//! a file (HTML, Markdown, CSV or JSON) to download.
//!
//! `view_audit` decides both. Making a report reads the whole log and
//! verifies it, so it counts against the principal's action limit. The
//! HTML report is only ever sent as a download (it carries its own
//! stylesheet, which the console's Content-Security-Policy would refuse
//! inline); the page shows the summary in console markup.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Viewer;
use super::views::{Nav, format_time, page, parse_time};
use super::{Console, WebError};
use crate::audit::VerifyOptions;
use crate::audit::report::{AuditReport, ReportFormat, ReportSpec, collect, render};
use crate::policy::Action;
use crate::store::now_ms;

/// One day, in milliseconds.
const DAY_MS: i64 = 86_400_000;
/// The period shown when none is asked for: the last week.
const DEFAULT_DAYS: i64 = 7;

/// The query of `/audit/report` and its download.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReportQuery {
    /// Start: a date (`2026-12-01`), an RFC 3339 time or an age (`7d`).
    #[serde(default)]
    from: String,
    /// End: as `from`; a date means the end of that day (UTC).
    #[serde(default)]
    to: String,
    /// `html`, `md`, `csv` or `json` (the download only).
    #[serde(default)]
    format: String,
}

/// The period of `q` in unix ms, inclusive, as `audit report --from
/// --to` reads it; the last [`DEFAULT_DAYS`] days when both are empty.
///
/// # Errors
/// [`WebError::BadRequest`] naming the field, or an end before the start.
fn period(q: &ReportQuery) -> Result<(i64, i64), WebError> {
    let now = now_ms();
    let from = parse_time("from", &q.from)?.unwrap_or(now - DEFAULT_DAYS * DAY_MS);
    let to = match parse_time("to", &q.to)? {
        // A date alone is its whole day.
        Some(start) if is_date(&q.to) => start + DAY_MS - 1,
        Some(t) => t,
        None => now,
    };
    if to < from {
        return Err(WebError::BadRequest(
            "The period ends before it starts.".into(),
        ));
    }
    Ok((from, to))
}

/// True for `YYYY-MM-DD`.
fn is_date(text: &str) -> bool {
    let text = text.trim();
    text.len() == 10
        && time::Date::parse(
            text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .is_ok()
}

/// Decides, counts and makes the report of `q`'s period.
async fn make(
    console: &Console,
    viewer: &Viewer,
    q: &ReportQuery,
) -> Result<AuditReport, WebError> {
    console
        .authorize_page(viewer, Action::ViewAudit, "read the auditor's report")
        .await?;
    let (from_ms, to_ms) = period(q)?;
    viewer.count_action(console)?;
    let spec = ReportSpec {
        from_ms,
        to_ms,
        ticket_pattern: console.config.grants.reason_pattern.clone(),
        gateway: console.config.gateway_id(),
    };
    let options = VerifyOptions::from_config(&console.config);
    collect(&console.store, &spec, &options)
        .await
        .map_err(|e| match e {
            crate::audit::AuditError::Database(e) => WebError::Store(e),
            other => WebError::Render(other.to_string()),
        })
}

#[derive(Template)]
#[template(path = "audit_report.html")]
struct ReportPage {
    nav: Option<Nav>,
    from: String,
    to: String,
    report: Option<AuditReport>,
    /// The query for the download links (`from=..&to=..`).
    download: String,
    problems: Vec<String>,
    period_signed: String,
}

/// `GET /audit/report`: the form; with `from`/`to`, the summary of that
/// period's report and its downloads.
pub(crate) async fn show(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Query<ReportQuery>,
) -> Result<Response, WebError> {
    if q.from.trim().is_empty() && q.to.trim().is_empty() {
        console
            .authorize_page(&viewer, Action::ViewAudit, "read the auditor's report")
            .await?;
        let now = now_ms();
        return page(&ReportPage {
            nav: Nav::of(&viewer),
            from: day_of(now - DEFAULT_DAYS * DAY_MS),
            to: day_of(now),
            report: None,
            download: String::new(),
            problems: Vec::new(),
            period_signed: String::new(),
        });
    }
    let report = make(&console, &viewer, &q).await?;
    let download = serde_urlencoded::to_string([("from", q.from.trim()), ("to", q.to.trim())])
        .map_err(|e| WebError::Render(e.to_string()))?;
    let problems = report
        .verification
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("BAD ").map(str::to_string))
        .collect();
    let period_signed = match report.verification.period_events {
        None => "no events in the period".into(),
        Some(_) if report.verification.period_signed => {
            "every event of the period is covered by a valid signed head".into()
        }
        Some(_) => "the newest events of the period are not signed yet".into(),
    };
    page(&ReportPage {
        nav: Nav::of(&viewer),
        from: q.from.trim().to_string(),
        to: q.to.trim().to_string(),
        report: Some(report),
        download,
        problems,
        period_signed,
    })
}

/// `GET /audit/report/download?from&to&format`: the report as a file, as
/// `portcullis audit report --format` writes it.
pub(crate) async fn download(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(q): Query<ReportQuery>,
) -> Result<Response, WebError> {
    let Some(format) = ReportFormat::parse(q.format.trim()) else {
        return Err(WebError::BadRequest(
            "format: use html, md, csv or json.".into(),
        ));
    };
    let report = make(&console, &viewer, &q).await?;
    let text = render(&report, format).map_err(|e| WebError::Render(e.to_string()))?;
    let (extension, content_type) = match format {
        ReportFormat::Html => ("html", "text/html; charset=utf-8"),
        ReportFormat::Markdown => ("md", "text/markdown; charset=utf-8"),
        ReportFormat::Csv => ("csv", "text/csv; charset=utf-8"),
        ReportFormat::Json => ("json", "application/json"),
    };
    let name = format!(
        "attachment; filename=\"portcullis-audit-{}-{}.{extension}\"",
        day_of(report.from_ms),
        day_of(report.to_ms)
    );
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, name),
        ],
        text,
    )
        .into_response())
}

/// `ms` as `YYYY-MM-DD` (UTC).
fn day_of(ms: i64) -> String {
    format_time(ms).chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_alone_is_its_whole_day() {
        let q = ReportQuery {
            from: "1970-01-02".into(),
            to: "1970-01-02".into(),
            format: String::new(),
        };
        assert_eq!(period(&q).ok(), Some((DAY_MS, 2 * DAY_MS - 1)));
        let backwards = ReportQuery {
            from: "1970-01-03".into(),
            to: "1970-01-02".into(),
            format: String::new(),
        };
        assert!(period(&backwards).is_err());
        assert!(is_date(" 2026-12-01 "));
        assert!(!is_date("2026-12-01T00:00:00Z"));
        assert_eq!(day_of(DAY_MS), "1970-01-02");
    }
}
