//! Live sessions: watching one as it happens (Server-Sent Events in the
//! format of asciinema-player's `eventsource` driver, fed by the recording
//! [`Follower`]) and killing one with a reason.
//!
//! Watching is the `watch` decision and is audited (`session_watched`);
//! killing is the `kill` decision, needs a fresh login, is audited
//! (`session_kill_requested`) before the kill request is written, and ends
//! the session through the store's kill request (whichever gateway serves
//! it) and this gateway's `end_live_session` callback.

use std::convert::Infallible;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;

use super::auth::Viewer;
use super::views::{Nav, fresh_login_page, message_page};
use super::{Console, WebError};
use crate::audit::AuditEvent;
use crate::policy::Action;
use crate::recording::{Follower, Header};

/// How often the stream looks for new output.
const POLL: Duration = Duration::from_millis(200);
/// Longest wait for a killed session to end, in seconds (the serving
/// gateway looks for kill requests every second).
const KILL_WAIT_SECONDS: u64 = 10;

/// `GET /sessions/{id}/live`: the session's output so far, then what it
/// prints, as SSE `message`s (`{"cols","rows","time","init"}` first, then
/// `[time, "o", text]`), and a `done` event when it ends.
pub(crate) async fn stream(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let session = console
        .authorize_session(&viewer, Action::Watch, &id)
        .await?;
    let path = FsPath::new(&session.recording_path).to_path_buf();
    let mut follower = Follower::open(&path).await.map_err(|_| {
        WebError::BadRequest(format!(
            "Session {} is recorded on another gateway; watch it there.",
            session.id
        ))
    })?;
    console
        .record(
            Some(&viewer.principal.subject),
            &viewer.client,
            Some(&session.id),
            &AuditEvent::SessionWatched {
                reviewer: viewer.principal.subject.clone(),
            },
        )
        .await?;
    let (cols, rows) = header_size(&path).await;
    let init = follower
        .next_output()
        .await
        .map_err(|e| WebError::Render(e.to_string()))?;
    let started = tokio::time::Instant::now();
    let first = serde_json::json!({ "cols": cols, "rows": rows, "time": 0.0, "init": init });
    let state = Watch {
        console: console.clone(),
        id: session.id.clone(),
        follower,
        started,
        first: Some(first.to_string()),
        done: false,
    };
    Ok(Sse::new(events(state))
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct Watch {
    console: Arc<Console>,
    id: String,
    follower: Follower,
    started: tokio::time::Instant,
    first: Option<String>,
    done: bool,
}

fn events(state: Watch) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(state, |mut w| async move {
        if let Some(first) = w.first.take() {
            return Some((Ok(Event::default().data(first)), w));
        }
        if w.done {
            return None;
        }
        loop {
            // Asked before reading: once the session is no longer running
            // its recording is complete, so the last read takes all of it.
            let running =
                matches!(w.console.store.session(&w.id).await, Ok(s) if s.status == "running");
            let text = w.follower.next_output().await.unwrap_or_default();
            if !text.is_empty() {
                if !running {
                    w.done = true;
                }
                let time = w.started.elapsed().as_secs_f64();
                let data = serde_json::json!([time, "o", text]).to_string();
                return Some((Ok(Event::default().data(data)), w));
            }
            if !running {
                w.done = true;
                return Some((Ok(Event::default().event("done").data("ended")), w));
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

/// Terminal size from the recording's header (80×24 when unreadable).
async fn header_size(path: &FsPath) -> (u32, u32) {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    text.lines()
        .next()
        .and_then(|l| serde_json::from_str::<Header>(l).ok())
        .map(|h| (h.width, h.height))
        .unwrap_or((80, 24))
}

/// The kill form.
#[derive(Debug, Deserialize)]
pub(crate) struct KillForm {
    #[serde(default)]
    reason: String,
}

/// `POST /sessions/{id}/kill`: ends a live session with a reason shown
/// to its user (one line, at most 512 bytes, no control, bidi or invisible
/// characters: [`crate::text::check_visible`]).
pub(crate) async fn kill(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<KillForm>,
) -> Result<Response, WebError> {
    viewer.count_action(&console)?;
    let reason = form.reason.trim().to_string();
    if reason.is_empty() || reason.len() > 512 || !crate::text::is_visible(&reason) {
        return Err(WebError::BadRequest(
            "A one-line reason of at most 512 bytes, without control, bidi or invisible \
             characters, is required; the user is shown it."
                .into(),
        ));
    }
    let session = console
        .authorize_session(&viewer, Action::Kill, &id)
        .await?;
    if !viewer.fresh(&console) {
        return fresh_login_page(&viewer, &format!("/sessions/{}", session.id));
    }
    if session.status != "running" {
        return Err(WebError::BadRequest(format!(
            "Session {} is not running (status {}).",
            session.id, session.status
        )));
    }
    console
        .record(
            Some(&viewer.principal.subject),
            &viewer.client,
            Some(&session.id),
            &AuditEvent::SessionKillRequested {
                reason: reason.clone(),
            },
        )
        .await?;
    if !console.store.request_kill(&session.id, &reason).await? {
        return Err(WebError::BadRequest(format!(
            "Session {} ended before it could be killed.",
            session.id
        )));
    }
    // This gateway ends it now when it serves it; another one sees the
    // request within a second.
    (console.end_live_session)(&session.id, &reason);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(KILL_WAIT_SECONDS);
    loop {
        if console.store.session(&session.id).await?.status != "running" {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return message_page(
                Nav::of(&viewer),
                "Kill requested",
                &format!(
                    "Session {} is still running after {KILL_WAIT_SECONDS} s: is its gateway up? \
                     The request stays until it ends.",
                    session.id
                ),
                Some((
                    format!("/sessions/{}", session.id),
                    "Back to the session".into(),
                )),
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(message_page(
        Nav::of(&viewer),
        "Session killed",
        &format!("Session {} ended. Its user was told: {reason}", session.id),
        Some((
            format!("/sessions/{}", session.id),
            "Back to the session".into(),
        )),
    )?
    .into_response())
}
