//! The auditor's report (`portcullis audit report`): for a period, per
//! container and per principal, every session (when, how long, login,
//! commands, files), why (reason, ticket), approved by whom and when,
//! break-glass and its review, kills and by whom, grants never used, logins
//! refused, and the verification of the chain; rendered as HTML (one
//! self-contained printable file with an SVG timeline), Markdown, CSV or
//! JSON ([`render`]).
//!
//! Facts come from the audit events of the period (chained and signed),
//! the session rows (times, grant) and the access requests (reason,
//! approvals, review); commands typed at a shell prompt are read from the
//! transcript, a heuristic (what the terminal showed, not what ran).
//!
//! Never writes the database.

mod collect;
mod html;
mod render;

use serde::Serialize;

pub use collect::collect;
pub use render::{ReportFormat, render};

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct ReportSpec {
    /// Start of the period, unix ms (included).
    pub from_ms: i64,
    /// End of the period, unix ms (included).
    pub to_ms: i64,
    /// `grants.reason_pattern`: the ticket is its first match in a reason.
    pub ticket_pattern: Option<String>,
    /// The gateway id that makes the report.
    pub gateway: String,
}

/// The whole report; every time is `YYYY-MM-DD HH:MM:SS` UTC text, every
/// duration humantime text, next to the raw unix ms where a program needs
/// it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditReport {
    /// Always `portcullis.audit-report.v1`.
    pub schema: String,
    /// When made.
    pub generated: String,
    /// By which gateway's host.
    pub gateway: String,
    /// Period start.
    pub from: String,
    /// Period end.
    pub to: String,
    /// Period start, unix ms.
    pub from_ms: i64,
    /// Period end, unix ms.
    pub to_ms: i64,
    /// Counts for the summary.
    pub totals: Totals,
    /// The verification of the chain.
    pub verification: ReportVerification,
    /// Sessions by container.
    pub containers: Vec<ContainerSection>,
    /// One line per principal.
    pub principals: Vec<PrincipalSummary>,
    /// Logins and requests refused.
    pub refused: Vec<Refusal>,
    /// Break-glass grants and their review.
    pub break_glass: Vec<GrantSummary>,
    /// Grants approved but never used.
    pub unused_grants: Vec<GrantSummary>,
    /// Sessions ended by someone else.
    pub kills: Vec<Kill>,
    /// Sessions per container and per day.
    pub timeline: Timeline,
}

/// Counts.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sessions.
    pub sessions: usize,
    /// Containers with sessions.
    pub containers: usize,
    /// Principals with sessions or refusals.
    pub principals: usize,
    /// Files transferred.
    pub files: usize,
    /// Refusals.
    pub refused: usize,
    /// Break-glass grants.
    pub break_glass: usize,
    /// Unused grants.
    pub unused_grants: usize,
    /// Kills.
    pub kills: usize,
}

/// The chain's verification, whole and for the period.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReportVerification {
    /// `OK` or `FAILED` (the whole log, recordings included).
    pub verdict: String,
    /// True when OK.
    pub ok: bool,
    /// Events written in the period.
    pub events_in_period: usize,
    /// First and last event of the period.
    pub period_events: Option<(i64, i64)>,
    /// Whether every event of the period is covered by a valid signed head.
    pub period_signed: bool,
    /// The verifier's lines (as `audit verify` prints them).
    pub lines: Vec<String>,
}

/// The sessions on one container.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ContainerSection {
    /// The container.
    pub container: String,
    /// Its sessions, oldest first.
    pub sessions: Vec<SessionEntry>,
}

/// One session.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SessionEntry {
    /// Session id.
    pub id: String,
    /// Principal.
    pub principal: String,
    /// Email, when known.
    pub email: Option<String>,
    /// Container.
    pub container: String,
    /// Login.
    pub login: String,
    /// Client address.
    pub client_addr: Option<String>,
    /// Start, unix ms.
    pub started_ms: i64,
    /// Start.
    pub started: String,
    /// End (empty while running).
    pub ended: String,
    /// Length, ms (`None` while running).
    pub duration_ms: Option<i64>,
    /// Length, e.g. `2m 3s`.
    pub duration: String,
    /// `ended`, `interrupted`, `running`, `failed`.
    pub status: String,
    /// Exit status or signal.
    pub exit: String,
    /// The exec command (`None`: a shell).
    pub command: Option<String>,
    /// For shells: commands typed at a prompt, from the transcript.
    pub typed_commands: Vec<String>,
    /// Files transferred.
    pub files: Vec<FileEntry>,
    /// The grant it used.
    pub grant: Option<GrantSummary>,
    /// Who ended it, when someone did.
    pub killed: Option<Kill>,
    /// Recording SHA-256.
    pub recording_sha256: Option<String>,
}

/// One file transferred.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct FileEntry {
    /// Path inside the container.
    pub path: String,
    /// `read` (download), `write` (upload) or `stream`.
    pub direction: String,
    /// Bytes.
    pub bytes: i64,
    /// SHA-256 (empty for a stream).
    pub sha256: String,
}

/// An approval.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct ApprovalEntry {
    /// Who approved.
    pub approver: String,
    /// When.
    pub at: String,
    /// Comment.
    pub comment: Option<String>,
}

/// An access request and its grant.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct GrantSummary {
    /// Request / grant id.
    pub id: String,
    /// Who asked.
    pub requester: String,
    /// Container.
    pub container: String,
    /// Login.
    pub login: String,
    /// Why.
    pub reason: String,
    /// The ticket in the reason.
    pub ticket: Option<String>,
    /// When asked.
    pub requested: String,
    /// Approvals, in order.
    pub approvals: Vec<ApprovalEntry>,
    /// Grant start.
    pub starts: String,
    /// Grant end.
    pub expires: String,
    /// Self-granted.
    pub break_glass: bool,
    /// Who reviewed it (break-glass).
    pub reviewed_by: Option<String>,
    /// When.
    pub reviewed: Option<String>,
    /// The review comment.
    pub review_comment: Option<String>,
    /// `active`, `expired`, `revoked` at the report's time.
    pub state: String,
    /// Sessions that used it.
    pub sessions: usize,
}

/// A refused login or request.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Refusal {
    /// When.
    pub at: String,
    /// Who (empty when unknown).
    pub principal: String,
    /// `decision`, `authentication`, `target` or `access_request`.
    pub kind: String,
    /// What was asked (`shell root@web1`, `token`, ...).
    pub what: String,
    /// Why.
    pub reason: String,
    /// Client address.
    pub client_addr: String,
}

/// A session ended by someone else.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Kill {
    /// The session.
    pub session_id: String,
    /// Its container.
    pub container: String,
    /// Its principal.
    pub principal: String,
    /// Who asked to end it.
    pub killed_by: String,
    /// When.
    pub at: String,
    /// Why.
    pub reason: String,
}

/// One line per principal.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct PrincipalSummary {
    /// Principal.
    pub principal: String,
    /// Sessions.
    pub sessions: usize,
    /// Containers entered.
    pub containers: Vec<String>,
    /// Time in sessions.
    pub total_duration: String,
    /// Refusals.
    pub refused: usize,
    /// Grants held in the period.
    pub grants: usize,
    /// Break-glass grants.
    pub break_glass: usize,
}

/// Sessions started per container and per day (UTC).
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Timeline {
    /// The days, `YYYY-MM-DD`.
    pub days: Vec<String>,
    /// One row per container.
    pub rows: Vec<TimelineRow>,
    /// True when the period had more days than the chart shows (the last
    /// ones are shown).
    pub truncated: bool,
}

/// One container's counts, one per day.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct TimelineRow {
    /// Container.
    pub container: String,
    /// Sessions started each day.
    pub counts: Vec<u32>,
}
