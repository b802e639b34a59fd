//! Live sessions: watching one as it happens (Server-Sent Events in the
//! format of asciinema-player's `eventsource` driver, fed by the recording
//! [`Follower`]) and killing one with a reason.
//!
//! Watching is the `watch` decision and is audited (`session_watched`);
//! killing needs a fresh login and is the broker's `sessions kill`
//! command ([`super::broker`]): the `kill` decision, `session_kill_requested`
//! audited before the kill request is written, every gateway of the fleet
//! told, and the wait for the end.

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
use super::broker::Word;
use super::views::{Nav, fresh_login_page, message_page};
use super::{Console, WebError};
use crate::audit::AuditEvent;
use crate::policy::Action;
use crate::recording::{Follower, Header};

/// How often the stream looks for new output.
const POLL: Duration = Duration::from_millis(200);

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
    if id.is_empty() || id.starts_with('-') {
        return Err(WebError::NotFound);
    }
    // A fresh login is asked only of those the policy allows to kill this
    // session; the others go on to the command, which refuses and audits.
    let may = match console.store.session(&id).await {
        Ok(session) => console.may(&viewer, Action::Kill, &session).0,
        Err(crate::store::StoreError::SessionNotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if may && !viewer.fresh(&console) {
        return fresh_login_page(&viewer, &format!("/sessions/{id}"));
    }
    // `sessions kill ID --reason R`, as `ssh portcullis@gw` runs it: the
    // audited decision, `session_kill_requested`, the kill request (every
    // gateway of the fleet is told) and the wait for the end.
    let said = console
        .command(
            &viewer,
            &[
                Word::Plain("sessions"),
                Word::Plain("kill"),
                Word::Plain(&id),
                Word::Value("reason", &reason),
            ],
        )
        .await?;
    Ok(message_page(
        Nav::of(&viewer),
        "Session killed",
        &format!("{} Its user was told: {reason}", said.trim()),
        Some((format!("/sessions/{id}"), "Back to the session".into())),
    )?
    .into_response())
}
