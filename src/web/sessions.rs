//! Session pages: the list (filtered by principal, container, login, time
//! and state), full-text search over transcripts whose hits open the player
//! at the hit's time, the session page (player, commands, transfers,
//! approvals, audit events) and the downloads (`.cast`, text).
//!
//! Each session shown is a Cedar decision (`view_sessions` on its
//! container, with its id and owner in context); its recording
//! (`view_recording`) another. Terminal output reaches the browser only as
//! the asciicast file the player renders, or as `text/plain` downloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::Viewer;
use super::views::{Nav, format_time, page, parse_time};
use super::{Console, WebError};
use crate::audit::AuditEvent;
use crate::policy::{AccessRequest, Action, ContextValue};
use crate::store::{AuditRow, SessionFilter, SessionRecord, StoreError};

/// Most sessions a list shows.
const LIST_LIMIT: i64 = 200;
/// Most hit lines shown per session in search results.
const HITS_PER_SESSION: usize = 5;

impl Console {
    /// The labels of container `name` (from `[containers.NAME]`).
    pub(crate) fn labels_of(&self, name: &str) -> BTreeMap<String, String> {
        self.config
            .containers
            .get(name)
            .map(|c| c.labels.clone())
            .unwrap_or_default()
    }

    /// Whether `viewer` may take `action` (`view_sessions`,
    /// `view_recording`, `watch`, `kill`) on `session`; errors deny.
    pub(crate) fn may(
        &self,
        viewer: &Viewer,
        action: Action,
        session: &SessionRecord,
    ) -> (bool, Vec<String>) {
        let labels = self.labels_of(&session.container);
        let decision = self.policy.decide_with(
            &AccessRequest {
                principal: &viewer.principal.subject,
                groups: &viewer.principal.groups,
                container: &session.container,
                labels: &labels,
                login: &session.login,
                action,
                command: session.command.as_deref(),
                grant: None,
            },
            &[
                ("session_id", ContextValue::Str(session.id.clone())),
                ("owner", ContextValue::Str(session.principal.clone())),
            ],
        );
        match decision {
            Ok(d) => (d.allowed, d.policies.into_iter().chain(d.errors).collect()),
            Err(e) => (false, vec![e.to_string()]),
        }
    }

    /// Audits `viewer`'s decision for `action` on `session`; returns the
    /// session when allowed, else [`WebError::Refused`] (unknown sessions
    /// and refused ones read the same).
    pub(crate) async fn authorize_session(
        &self,
        viewer: &Viewer,
        action: Action,
        id: &str,
    ) -> Result<SessionRecord, WebError> {
        let what = format!(
            "{} session {}",
            verb(action),
            crate::audit::truncate(id, 64)
        );
        let session = match self.store.session(id).await {
            Ok(s) => s,
            Err(StoreError::SessionNotFound(_)) => {
                let event = AuditEvent::AccessDecided {
                    action: action.as_str().into(),
                    container: String::new(),
                    login: String::new(),
                    allowed: false,
                    reasons: vec![format!("no session {}", crate::audit::truncate(id, 64))],
                };
                self.record(
                    Some(&viewer.principal.subject),
                    &viewer.client,
                    None,
                    &event,
                )
                .await?;
                return Err(WebError::Refused(what));
            }
            Err(e) => return Err(e.into()),
        };
        let (allowed, reasons) = self.may(viewer, action, &session);
        // Views of lists are not audited one by one; a page, a recording
        // and every refusal are.
        let event = AuditEvent::AccessDecided {
            action: action.as_str().into(),
            container: session.container.clone(),
            login: session.login.clone(),
            allowed,
            reasons,
        };
        self.record(
            Some(&viewer.principal.subject),
            &viewer.client,
            Some(&session.id),
            &event,
        )
        .await?;
        if allowed {
            Ok(session)
        } else {
            Err(WebError::Refused(what))
        }
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::ViewSessions => "see",
        Action::ViewRecording => "play",
        Action::Watch => "watch",
        Action::Kill => "kill",
        _ => "use",
    }
}

/// `GET /`: the sessions list.
pub(crate) async fn home(_viewer: Viewer) -> Redirect {
    Redirect::to("/sessions")
}

/// The filters and search of `/sessions`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    principal: String,
    #[serde(default)]
    container: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Words to find in transcripts.
    #[serde(default)]
    q: String,
}

/// A row of the list.
struct Row {
    id: String,
    started: String,
    principal: String,
    target: String,
    command: String,
    status: String,
    client: String,
    /// Search hits: `(offset seconds, formatted offset, line)`.
    hits: Vec<(f64, String, String)>,
}

impl Row {
    fn of(s: &SessionRecord) -> Row {
        Row {
            id: s.id.clone(),
            started: format_time(s.started_at),
            principal: s.principal.clone(),
            target: format!("{}@{}", s.login, s.container),
            command: s.command.clone().unwrap_or_else(|| "(shell)".into()),
            status: s.status.clone(),
            client: s.client_addr.clone().unwrap_or_default(),
            hits: Vec::new(),
        }
    }
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct ListPage {
    nav: Option<Nav>,
    query: ListQuery,
    rows: Vec<Row>,
    searched: bool,
}

/// `GET /sessions`: sessions the viewer may see, filtered, or the
/// sessions whose transcripts hold `q` as a phrase, with their hits.
pub(crate) async fn list(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Result<Response, WebError> {
    let filter = SessionFilter {
        principal: Some(query.principal.trim().to_string()).filter(|s| !s.is_empty()),
        container: Some(query.container.trim().to_string()).filter(|s| !s.is_empty()),
        login: Some(query.login.trim().to_string()).filter(|s| !s.is_empty()),
        status: Some(query.status.trim().to_string()).filter(|s| !s.is_empty()),
        since_ms: parse_time("since", &query.since)?,
        until_ms: parse_time("until", &query.until)?,
        limit: LIST_LIMIT,
    };
    let q = query.q.trim().to_string();
    let mut rows = Vec::new();
    if q.is_empty() {
        for s in console.store.find_sessions(&filter).await? {
            if console.may(&viewer, Action::ViewSessions, &s).0 {
                rows.push(Row::of(&s));
            }
        }
    } else {
        if q.len() > 200 {
            return Err(WebError::BadRequest("Search for at most 200 bytes.".into()));
        }
        let mut by_session: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
        for hit in console.store.search_transcripts(&q).await? {
            by_session
                .entry(hit.session_id)
                .or_default()
                .push((hit.offset_seconds, hit.text));
        }
        for (id, hits) in by_session {
            let s = match console.store.session(&id).await {
                Ok(s) => s,
                Err(StoreError::SessionNotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let matches =
                |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
            if !matches(&filter.principal, &s.principal)
                || !matches(&filter.container, &s.container)
                || !matches(&filter.login, &s.login)
                || !matches(&filter.status, &s.status)
                || filter.since_ms.is_some_and(|t| s.started_at < t)
                || filter.until_ms.is_some_and(|t| s.started_at >= t)
                || !console.may(&viewer, Action::ViewSessions, &s).0
            {
                continue;
            }
            let mut row = Row::of(&s);
            row.hits = hits
                .into_iter()
                .take(HITS_PER_SESSION)
                .map(|(t, line)| (t, format!("{t:.1}"), line))
                .collect();
            rows.push(row);
            if rows.len() as i64 >= LIST_LIMIT {
                break;
            }
        }
        rows.sort_by(|a, b| b.started.cmp(&a.started));
    }
    page(&ListPage {
        nav: Nav::of(&viewer),
        searched: !q.is_empty(),
        query,
        rows,
    })
}

/// Options of the session page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    /// Start the player here (seconds), e.g. from a search hit.
    #[serde(default)]
    t: Option<f64>,
    /// Playback speed.
    #[serde(default)]
    speed: Option<f64>,
    /// Longest pause played, seconds.
    #[serde(default)]
    idle: Option<f64>,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    nav: Option<Nav>,
    s: SessionRecord,
    started: String,
    ended: String,
    exit: String,
    may_play: bool,
    running: bool,
    start_at: String,
    speed: String,
    idle: String,
    markers_json: String,
    commands: Vec<(f64, String, String)>,
    transfers: Vec<String>,
    approvals: Vec<String>,
    events: Vec<AuditLine>,
    csrf: String,
}

/// An audit event as shown.
pub(crate) struct AuditLine {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub outcome: String,
    pub principal: String,
    pub session_id: String,
    pub detail: String,
}

impl AuditLine {
    /// `row` as shown.
    pub(crate) fn of(row: &AuditRow) -> AuditLine {
        AuditLine {
            id: row.id,
            at: format_time(row.at),
            kind: row.kind.clone(),
            outcome: row.outcome.clone(),
            principal: row.principal.clone().unwrap_or_default(),
            session_id: row.session_id.clone().unwrap_or_default(),
            detail: row.detail.clone(),
        }
    }
}

/// `GET /sessions/{id}`: the session, its player, commands, transfers,
/// approvals and audit events.
pub(crate) async fn page_of(
    console: &Console,
    viewer: &Viewer,
    id: &str,
    query: &PageQuery,
) -> Result<Response, WebError> {
    let s = console
        .authorize_session(viewer, Action::ViewSessions, id)
        .await?;
    let may_play = console.may(viewer, Action::ViewRecording, &s).0;
    let events = console.store.audit_events(Some(&s.id)).await?;
    let commands = if may_play {
        commands_of(console, &s).await
    } else {
        Vec::new()
    };
    let markers: Vec<(f64, String)> = commands
        .iter()
        .map(|(t, _, c)| (*t, crate::audit::truncate(c, 40)))
        .collect();
    let approvals = match console.store.grant_of_session(&s.id).await? {
        Some(grant) => {
            let mut lines = vec![format!("grant {grant}")];
            for a in console.store.approvals_of(&grant).await? {
                lines.push(format!(
                    "approved by {} at {}{}",
                    a.approver,
                    format_time(a.approved_at),
                    a.comment.map(|c| format!(": {c}")).unwrap_or_default()
                ));
            }
            lines
        }
        None => Vec::new(),
    };
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite() && *x > 0.0);
    page(&SessionPage {
        nav: Nav::of(viewer),
        started: format_time(s.started_at),
        ended: s.ended_at.map(format_time).unwrap_or_else(|| "-".into()),
        exit: match (&s.exit_status, &s.exit_signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "-".into(),
        },
        may_play,
        running: s.status == "running",
        // A millisecond past the hit: the hit's line is on screen from the
        // time of the event that completed it.
        start_at: finite(query.t)
            .map(|t| format!("{:.3}", t + 0.001))
            .unwrap_or_default(),
        speed: finite(query.speed)
            .map(|v| v.min(16.0).to_string())
            .unwrap_or_default(),
        idle: finite(query.idle)
            .map(|v| v.to_string())
            .unwrap_or_default(),
        markers_json: serde_json::to_string(&markers).unwrap_or_else(|_| "[]".into()),
        commands,
        transfers: transfers_of(&events),
        approvals,
        events: events.iter().map(AuditLine::of).collect(),
        csrf: viewer.csrf.clone(),
        s,
    })
}

/// `GET /sessions/{id}`.
pub(crate) async fn page_handler(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, WebError> {
    page_of(&console, &viewer, &id, &query).await
}

/// Commands of a session with their times: the exec command, or for a
/// shell the lines of the transcript after a prompt (`# ` or `$ `). A
/// heuristic: the transcript is what the terminal showed.
async fn commands_of(console: &Console, s: &SessionRecord) -> Vec<(f64, String, String)> {
    if let Some(c) = &s.command {
        return vec![(0.0, "0.0".into(), c.clone())];
    }
    let opened = crate::recording::open(
        &console.config.recording,
        &console.store,
        &s.id,
        &s.recording_path,
    )
    .await;
    let Ok((_, events)) = opened.and_then(|r| r.parse()) else {
        return Vec::new();
    };
    crate::recording::transcript_lines(&events)
        .into_iter()
        .filter_map(|(t, line)| {
            let at = line.find("# ").or_else(|| line.find("$ "))?;
            let command = line.get(at + 2..)?.trim().to_string();
            (at <= 80 && !command.is_empty()).then(|| (t, format!("{t:.1}"), command))
        })
        .take(500)
        .collect()
}

/// File transfers and forwarded connections, from the session's audit
/// events, one line each.
fn transfers_of(events: &[AuditRow]) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            e.kind == "file_transfer"
                || e.kind == "sftp_stream"
                || (e.kind == "forward" && e.outcome == "info")
        })
        .map(|e| {
            let d: serde_json::Value = serde_json::from_str(&e.detail).unwrap_or_default();
            let text = |k: &str| d[k].as_str().unwrap_or("-").to_string();
            let num = |k: &str| d[k].as_i64().unwrap_or(0);
            match e.kind.as_str() {
                "file_transfer" => format!(
                    "{}  {} {} ({} bytes, sha256 {})",
                    format_time(e.at),
                    text("direction"),
                    text("path"),
                    num("bytes"),
                    text("sha256")
                ),
                "sftp_stream" => format!(
                    "{}  sftp via {}: {} bytes in, {} bytes out",
                    format_time(e.at),
                    text("server"),
                    num("bytes_from_client"),
                    num("bytes_to_client")
                ),
                _ => format!(
                    "{}  forward to {}: {} bytes out, {} bytes back",
                    format_time(e.at),
                    text("destination"),
                    num("bytes_to_destination"),
                    num("bytes_from_destination")
                ),
            }
        })
        .collect()
}

/// Whether a download was asked for.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DownloadQuery {
    #[serde(default)]
    download: Option<String>,
}

/// `GET /sessions/{id}/cast`: the recording as written (asciicast v2), for
/// the player, or as an attachment with `?download=1`.
pub(crate) async fn cast(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response, WebError> {
    let s = console
        .authorize_session(&viewer, Action::ViewRecording, &id)
        .await?;
    // The local file, or the object store's copy once uploaded (checked
    // against its manifest).
    let bytes = crate::recording::open(
        &console.config.recording,
        &console.store,
        &s.id,
        &s.recording_path,
    )
    .await
    .map_err(|_| WebError::Render(format!("cannot read the recording of {}", s.id)))?
    .bytes;
    let disposition = if query.download.is_some() {
        format!("attachment; filename=\"{}.cast\"", s.id)
    } else {
        "inline".to_string()
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /sessions/{id}/txt`: the transcript as plain text lines (escape
/// sequences stripped), as an attachment.
pub(crate) async fn text(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let s = console
        .authorize_session(&viewer, Action::ViewRecording, &id)
        .await?;
    let (_, events) = crate::recording::open(
        &console.config.recording,
        &console.store,
        &s.id,
        &s.recording_path,
    )
    .await
    .and_then(|r| r.parse())
    .map_err(|e| WebError::Render(e.to_string()))?;
    let mut text = String::new();
    for (_, line) in crate::recording::transcript_lines(&events) {
        text.push_str(&line);
        text.push('\n');
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.txt\"", s.id),
            ),
        ],
        text,
    )
        .into_response())
}
