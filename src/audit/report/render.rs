//! Rendering an [`AuditReport`] as HTML (see `html.rs`), Markdown, CSV
//! (RFC 4180 through the `csv` crate, one header, a `record` column) or
//! JSON. Never gathers facts (that is `collect.rs`); text from the log is
//! escaped for each format (HTML by askama, Markdown cells here).

use super::{AuditReport, GrantSummary, SessionEntry};
use crate::audit::AuditError;

/// An output format of `audit report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// One self-contained HTML file, printable, with an SVG timeline.
    Html,
    /// Markdown tables.
    Markdown,
    /// CSV: one row per session, refusal, unused grant and the
    /// verification, told apart by the `record` column.
    Csv,
    /// The report as one JSON object (`portcullis.audit-report.v1`).
    Json,
}

impl ReportFormat {
    /// From `html`, `md`, `csv` or `json`.
    pub fn parse(text: &str) -> Option<ReportFormat> {
        match text {
            "html" => Some(ReportFormat::Html),
            "md" | "markdown" => Some(ReportFormat::Markdown),
            "csv" => Some(ReportFormat::Csv),
            "json" => Some(ReportFormat::Json),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ReportFormat::Html => "html",
            ReportFormat::Markdown => "md",
            ReportFormat::Csv => "csv",
            ReportFormat::Json => "json",
        }
    }
}

/// The header of the CSV form.
pub const CSV_HEADER: [&str; 22] = [
    "record",
    "container",
    "principal",
    "session_id",
    "login",
    "started",
    "ended",
    "duration_seconds",
    "status",
    "exit",
    "command",
    "typed_commands",
    "files",
    "grant_id",
    "reason",
    "ticket",
    "approved_by",
    "break_glass",
    "reviewed_by",
    "killed_by",
    "kill_reason",
    "client_addr",
];

/// `report` in `format`.
///
/// # Errors
/// [`AuditError::ReportRender`] when the template or the writer fails.
pub fn render(report: &AuditReport, format: ReportFormat) -> Result<String, AuditError> {
    let failed = |message: String| AuditError::ReportRender {
        format: format.name().to_string(),
        message,
    };
    match format {
        ReportFormat::Html => super::html::render_html(report).map_err(|e| failed(e.to_string())),
        ReportFormat::Json => {
            serde_json::to_string_pretty(report).map_err(|e| failed(e.to_string()))
        }
        ReportFormat::Markdown => Ok(markdown(report)),
        ReportFormat::Csv => csv_text(report).map_err(failed),
    }
}

fn approvers(g: &GrantSummary) -> String {
    g.approvals
        .iter()
        .map(|a| format!("{} at {}", a.approver, a.at))
        .collect::<Vec<_>>()
        .join("; ")
}

fn files(s: &SessionEntry) -> String {
    s.files
        .iter()
        .map(|f| format!("{} {} ({} bytes)", f.direction, f.path, f.bytes))
        .collect::<Vec<_>>()
        .join("; ")
}

fn csv_text(report: &AuditReport) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| e.to_string();
    w.write_record(CSV_HEADER).map_err(err)?;
    for s in report.containers.iter().flat_map(|c| &c.sessions) {
        let g = s.grant.as_ref();
        let k = s.killed.as_ref();
        let row: [String; 22] = [
            "session".into(),
            s.container.clone(),
            s.principal.clone(),
            s.id.clone(),
            s.login.clone(),
            s.started.clone(),
            s.ended.clone(),
            s.duration_ms
                .map(|d| (d / 1000).to_string())
                .unwrap_or_default(),
            s.status.clone(),
            s.exit.clone(),
            s.command.clone().unwrap_or_default(),
            s.typed_commands.join("\n"),
            files(s),
            g.map(|g| g.id.clone()).unwrap_or_default(),
            g.map(|g| g.reason.clone()).unwrap_or_default(),
            g.and_then(|g| g.ticket.clone()).unwrap_or_default(),
            g.map(approvers).unwrap_or_default(),
            g.map(|g| g.break_glass.to_string()).unwrap_or_default(),
            g.and_then(|g| g.reviewed_by.clone()).unwrap_or_default(),
            k.map(|k| k.killed_by.clone()).unwrap_or_default(),
            k.map(|k| k.reason.clone()).unwrap_or_default(),
            s.client_addr.clone().unwrap_or_default(),
        ];
        w.write_record(&row).map_err(err)?;
    }
    for r in &report.refused {
        let mut row: [String; 22] = Default::default();
        row[0] = "refused".into();
        row[2] = r.principal.clone();
        row[5] = r.at.clone();
        row[10] = r.what.clone();
        row[14] = r.reason.clone();
        row[21] = r.client_addr.clone();
        w.write_record(&row).map_err(err)?;
    }
    for g in &report.unused_grants {
        let mut row: [String; 22] = Default::default();
        row[0] = "unused_grant".into();
        row[1] = g.container.clone();
        row[2] = g.requester.clone();
        row[4] = g.login.clone();
        row[5] = g.starts.clone();
        row[6] = g.expires.clone();
        row[13] = g.id.clone();
        row[14] = g.reason.clone();
        row[15] = g.ticket.clone().unwrap_or_default();
        row[16] = approvers(g);
        row[17] = g.break_glass.to_string();
        row[18] = g.reviewed_by.clone().unwrap_or_default();
        w.write_record(&row).map_err(err)?;
    }
    let mut row: [String; 22] = Default::default();
    row[0] = "verification".into();
    row[8] = report.verification.verdict.clone();
    row[14] = report.verification.lines.join("\n");
    w.write_record(&row).map_err(err)?;
    let bytes = w.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// A Markdown table cell: `|` escaped, line breaks as `<br>`, HTML's
/// specials escaped (Markdown renderers pass HTML through).
fn cell(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace('\r', "")
        .replace('\n', "<br>")
}

fn markdown(r: &AuditReport) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("# Audit report {} .. {}", r.from, r.to));
    line(String::new());
    line(format!(
        "Made {} by {}. {} sessions on {} containers by {} principals; {} files transferred; \
         {} refusals; {} break-glass grants; {} grants never used; {} sessions killed.",
        r.generated,
        cell(&r.gateway),
        r.totals.sessions,
        r.totals.containers,
        r.totals.principals,
        r.totals.files,
        r.totals.refused,
        r.totals.break_glass,
        r.totals.unused_grants,
        r.totals.kills
    ));
    line(String::new());
    line(format!("## Verification: {}", r.verification.verdict));
    line(String::new());
    for l in &r.verification.lines {
        line(format!("    {l}"));
    }
    line(String::new());
    line("## Principals".into());
    line(String::new());
    line("| principal | sessions | containers | time | refused | grants | break-glass |".into());
    line("| --- | --- | --- | --- | --- | --- | --- |".into());
    for p in &r.principals {
        line(format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(&p.principal),
            p.sessions,
            cell(&p.containers.join(", ")),
            p.total_duration,
            p.refused,
            p.grants,
            p.break_glass
        ));
    }
    for c in &r.containers {
        line(String::new());
        line(format!("## Container {}", cell(&c.container)));
        line(String::new());
        line("| started | length | principal | login | commands | files | why | approved by | killed by |".into());
        line("| --- | --- | --- | --- | --- | --- | --- | --- | --- |".into());
        for s in &c.sessions {
            let commands = match &s.command {
                Some(c) => c.clone(),
                None => s.typed_commands.join("\n"),
            };
            line(format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.started,
                s.duration,
                cell(&s.principal),
                cell(&s.login),
                cell(&commands),
                cell(&files(s)),
                cell(
                    &s.grant
                        .as_ref()
                        .map(|g| g.reason.clone())
                        .unwrap_or_default()
                ),
                cell(&s.grant.as_ref().map(approvers).unwrap_or_default()),
                cell(
                    &s.killed
                        .as_ref()
                        .map(|k| format!("{} ({})", k.killed_by, k.reason))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    let grants = |title: &str, list: &[GrantSummary], line: &mut dyn FnMut(String)| {
        line(String::new());
        line(format!("## {title}"));
        line(String::new());
        line("| grant | requester | target | reason | approved by | reviewed by |".into());
        line("| --- | --- | --- | --- | --- | --- |".into());
        for g in list {
            line(format!(
                "| {} | {} | {}@{} | {} | {} | {} |",
                cell(&g.id),
                cell(&g.requester),
                cell(&g.login),
                cell(&g.container),
                cell(&g.reason),
                cell(&approvers(g)),
                cell(g.reviewed_by.as_deref().unwrap_or("not reviewed")),
            ));
        }
    };
    grants("Break-glass", &r.break_glass, &mut line);
    grants("Grants never used", &r.unused_grants, &mut line);
    line(String::new());
    line("## Refused".into());
    line(String::new());
    line("| at | principal | kind | what | why |".into());
    line("| --- | --- | --- | --- | --- |".into());
    for x in &r.refused {
        line(format!(
            "| {} | {} | {} | {} | {} |",
            x.at,
            cell(&x.principal),
            x.kind,
            cell(&x.what),
            cell(&x.reason)
        ));
    }
    out
}
