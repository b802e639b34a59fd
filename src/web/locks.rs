//! Locks in the console (issue 17 point 3, locks of issue 12): the list
//! (those that hold, then those that ended), a form that adds one and a
//! button that removes one.
//!
//! Every step is the broker's `locks list|add|remove` command run for the
//! logged-in principal ([`super::broker`]): the command makes the audited
//! Cedar `lock` decision and adds or removes through
//! [`crate::session::lock`], as `ssh portcullis@gw locks ...` does. The
//! console adds the CSRF check (every POST), the rate limit and a fresh
//! login before adding or removing. It stays generic over what a lock
//! covers: the kinds offered are those the store knows
//! ([`crate::store::LockTarget::parse`]) and a listed lock's kind is shown
//! as the command reports it.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::auth::Viewer;
use super::broker::Word;
use super::views::{Nav, format_time, fresh_login_page, message_page, page};
use super::{Console, WebError};
use crate::policy::Action;
use crate::store::{LockTarget, now_ms};

/// What a lock may cover, in the order the form offers them; only those
/// the store knows are offered (a kind the store does not know yet is
/// left out by [`kinds`]).
const KIND_NAMES: &[&str] = &["principal", "group", "issuer", "key", "container", "login"];

/// Most ended locks listed.
const ENDED_SHOWN: usize = 100;

/// The lock kinds the store knows.
fn kinds() -> Vec<&'static str> {
    KIND_NAMES
        .iter()
        .copied()
        .filter(|k| LockTarget::parse(k).is_some())
        .collect()
}

/// A lock as `locks list --json` reports it (unknown fields ignored).
#[derive(Debug, Deserialize)]
struct LockJson {
    id: String,
    target: String,
    value: String,
    reason: String,
    created_by: String,
    created_at: i64,
    expires_at: Option<i64>,
    removed_at: Option<i64>,
    removed_by: Option<String>,
}

/// A lock as listed.
struct Row {
    id: String,
    target: String,
    value: String,
    reason: String,
    added: String,
    ends: String,
    holds: bool,
    ended: String,
}

impl Row {
    fn of(l: LockJson, now: i64) -> Row {
        let holds = l.removed_at.is_none() && l.expires_at.is_none_or(|end| now < end);
        let ended = match (&l.removed_at, &l.removed_by, l.expires_at) {
            (Some(at), by, _) => format!(
                "removed by {} at {}",
                by.as_deref().unwrap_or("?"),
                format_time(*at)
            ),
            (None, _, Some(end)) if end <= now => format!("expired at {}", format_time(end)),
            _ => String::new(),
        };
        Row {
            added: format!("by {} at {}", l.created_by, format_time(l.created_at)),
            ends: l
                .expires_at
                .map(format_time)
                .unwrap_or_else(|| "when removed".into()),
            holds,
            ended,
            id: l.id,
            target: l.target,
            value: l.value,
            reason: l.reason,
        }
    }
}

#[derive(Template)]
#[template(path = "locks.html")]
struct LocksPage {
    nav: Option<Nav>,
    csrf: String,
    kinds: Vec<&'static str>,
    holding: Vec<Row>,
    ended: Vec<Row>,
}

/// `GET /locks`: `locks list --all --json` for the viewer.
pub(crate) async fn list(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    let json = console
        .command(
            &viewer,
            &[
                Word::Plain("locks"),
                Word::Plain("list"),
                Word::Flag("all"),
                Word::Flag("json"),
            ],
        )
        .await?;
    let locks: Vec<LockJson> = serde_json::from_str(&json)
        .map_err(|e| WebError::Render(format!("locks list --json: {e}")))?;
    let now = now_ms();
    let (holding, mut ended): (Vec<Row>, Vec<Row>) = locks
        .into_iter()
        .map(|l| Row::of(l, now))
        .partition(|r| r.holds);
    ended.truncate(ENDED_SHOWN);
    page(&LocksPage {
        nav: Nav::of(&viewer),
        csrf: viewer.csrf.clone(),
        kinds: kinds(),
        holding,
        ended,
    })
}

/// Rate limit, then a fresh login when the policy lets the viewer manage
/// locks at all (the others go on to the command, which refuses and
/// audits); `Some(page)` when the fresh login is needed first.
fn before_change(console: &Console, viewer: &Viewer) -> Result<Option<Response>, WebError> {
    viewer.count_action(console)?;
    let may = console
        .policy
        .decide_console(
            &viewer.principal.subject,
            &viewer.principal.groups,
            Action::Lock,
        )
        .is_ok_and(|d| d.allowed);
    if may && !viewer.fresh(console) {
        return fresh_login_page(viewer, "/locks").map(Some);
    }
    Ok(None)
}

/// The form of `POST /locks/add`.
#[derive(Debug, Deserialize)]
pub(crate) struct AddForm {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    reason: String,
    /// Optional end, as a duration (`2h`).
    #[serde(default)]
    ttl: String,
}

/// `POST /locks/add`: `locks add --KIND=VALUE --reason=... [--ttl=...]`.
pub(crate) async fn add(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Form(form): Form<AddForm>,
) -> Result<Response, WebError> {
    if let Some(fresh) = before_change(&console, &viewer)? {
        return Ok(fresh);
    }
    let kind = form.kind.trim();
    let Some(kind) = kinds().into_iter().find(|k| *k == kind) else {
        return Err(WebError::BadRequest(format!(
            "A lock covers one of: {}.",
            kinds().join(", ")
        )));
    };
    let (value, reason, ttl) = (form.value.trim(), form.reason.trim(), form.ttl.trim());
    let mut words = vec![
        Word::Plain("locks"),
        Word::Plain("add"),
        Word::Value(kind, value),
        Word::Value("reason", reason),
        Word::Flag("json"),
    ];
    if !ttl.is_empty() {
        words.push(Word::Value("ttl", ttl));
    }
    let json = console.command(&viewer, &words).await?;
    let added: LockJson = serde_json::from_str(&json)
        .map_err(|e| WebError::Render(format!("locks add --json: {e}")))?;
    message_page(
        Nav::of(&viewer),
        "Lock added",
        &format!(
            "Lock {} on {} {} holds: new sessions it covers are refused and live ones end \
             within seconds.",
            added.id, added.target, added.value
        ),
        Some(("/locks".into(), "Back to the locks".into())),
    )
}

/// `POST /locks/{id}/remove`: `locks remove ID`.
pub(crate) async fn remove(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    if let Some(fresh) = before_change(&console, &viewer)? {
        return Ok(fresh);
    }
    if id.is_empty() || id.starts_with('-') {
        return Err(WebError::NotFound);
    }
    console
        .command(
            &viewer,
            &[
                Word::Plain("locks"),
                Word::Plain("remove"),
                Word::Plain(&id),
            ],
        )
        .await?;
    message_page(
        Nav::of(&viewer),
        "Lock removed",
        &format!("Lock {id} no longer holds."),
        Some(("/locks".into(), "Back to the locks".into())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_offers_the_kinds_the_store_knows() {
        let k = kinds();
        for known in ["principal", "container", "login"] {
            assert!(k.contains(&known), "{known} missing from {k:?}");
        }
        assert!(k.iter().all(|n| LockTarget::parse(n).is_some()));
    }

    #[test]
    fn a_lock_holds_until_removed_or_past_its_end() {
        let lock = |expires_at, removed_at: Option<i64>| LockJson {
            id: "abc".into(),
            target: "group".into(),
            value: "contractors".into(),
            reason: "r".into(),
            created_by: "admin".into(),
            created_at: 0,
            expires_at,
            removed_at,
            removed_by: removed_at.map(|_| "root".into()),
        };
        assert!(Row::of(lock(None, None), 10).holds);
        assert!(Row::of(lock(Some(11), None), 10).holds);
        let expired = Row::of(lock(Some(10), None), 10);
        assert!(!expired.holds);
        assert_eq!(expired.ended, "expired at 1970-01-01 00:00:00");
        let removed = Row::of(lock(None, Some(5000)), 10);
        assert_eq!(removed.ended, "removed by root at 1970-01-01 00:00:05");
        assert_eq!(removed.target, "group");
    }
}
