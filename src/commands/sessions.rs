//! `sessions watch ID` and `sessions kill ID --reason TEXT` (issue 6): a
//! reviewer follows a live session read-only, an admin ends one, each when
//! the policy allows it (Cedar actions `watch` and `kill` on the session's
//! container, with `session_id` and `owner`, the session's principal, in
//! context). Both are audited before they act; every decision is an
//! `access_decided` event. Unknown sessions and denied ones read the same,
//! so ids cannot be probed.

use std::path::Path;
use std::time::Duration;

use super::args::Args;
use super::{Outcome, Reply, labels_of};
use crate::audit::AuditEvent;
use crate::gateway::Gateway;
use crate::policy::{AccessRequest, Action, ContextValue};
use crate::recording::Follower;
use crate::session::Caller;
use crate::store::SessionRecord;

/// How often a watcher looks for new output, and a killer for the end.
const POLL: Duration = Duration::from_millis(200);

/// Longest wait for a killed session to end, in seconds: the serving
/// gateway looks for kill requests every second.
const KILL_WAIT_SECONDS: u64 = 10;

/// Runs `sessions watch|kill ...`; `words` follow `sessions`.
pub(super) async fn run<'a>(gw: &'a Gateway, caller: &'a Caller, words: &[String]) -> Outcome<'a> {
    let Some((verb, rest)) = words.split_first() else {
        return Outcome::Done(Reply::usage(
            "sessions needs watch ID or kill ID --reason TEXT",
        ));
    };
    match verb.as_str() {
        "watch" => match watch(gw, caller, rest).await {
            Ok(w) => Outcome::Watch(Box::new(w)),
            Err(reply) => Outcome::Done(reply),
        },
        "kill" => Outcome::Done(kill(gw, caller, rest).await),
        other => Outcome::Done(Reply::usage(&format!(
            "unknown sessions command {:?} (watch, kill)",
            crate::audit::truncate(other, 32)
        ))),
    }
}

/// The session `id` when the caller may do `action` to it, else the
/// refusal.
async fn authorized(
    gw: &Gateway,
    caller: &Caller,
    action: Action,
    id: &str,
) -> Result<SessionRecord, Reply> {
    let refused = || {
        Reply::refused(&format!(
            "you may not {} session {}",
            action.as_str(),
            crate::audit::truncate(id, 64)
        ))
    };
    let session = match gw.store.session(id).await {
        Ok(s) => s,
        Err(crate::store::StoreError::SessionNotFound(_)) => {
            // Audited like a denial (the id, cut to 64 bytes, in reasons).
            let event = AuditEvent::AccessDecided {
                action: action.as_str().to_string(),
                container: String::new(),
                login: String::new(),
                allowed: false,
                reasons: vec![format!("no session {}", crate::audit::truncate(id, 64))],
            };
            let _ = caller.audit(gw, None, event).await;
            return Err(refused());
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the session; refusing");
            return Err(Reply::refused(
                "the gateway cannot reach its database right now",
            ));
        }
    };
    let labels = labels_of(gw, &session.container).await;
    let decision = gw.policy.decide_as(
        &caller.principal.issuer,
        &AccessRequest {
            principal: &caller.principal.subject,
            groups: &caller.principal.groups,
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
    let (allowed, reasons) = match decision {
        Ok(d) => (d.allowed, d.policies.into_iter().chain(d.errors).collect()),
        Err(e) => (false, vec![e.to_string()]),
    };
    let event = AuditEvent::AccessDecided {
        action: action.as_str().to_string(),
        container: session.container.clone(),
        login: session.login.clone(),
        allowed,
        reasons,
    };
    if caller.audit(gw, Some(&session.id), event).await.is_err() || !allowed {
        return Err(refused());
    }
    Ok(session)
}

/// A live session being watched; [`Watch::next`] until it ends.
pub struct Watch<'a> {
    gateway: &'a Gateway,
    session: SessionRecord,
    follower: Follower,
    first: bool,
    /// Neutralises the output for the watcher's terminal; `None` with
    /// `--raw`.
    filter: Option<crate::text::TerminalFilter>,
}

/// What a watcher sees next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchStep {
    /// More of the session's output (text; the recording's).
    Output(String),
    /// The watch is over (the session ended, or it cannot go on).
    Done(Reply),
}

impl Watch<'_> {
    /// Waits for the next output, or the end. The front end writes the
    /// output to its watcher, and stops early if the watcher leaves.
    pub async fn next(&mut self) -> WatchStep {
        loop {
            if !std::mem::take(&mut self.first) {
                tokio::time::sleep(POLL).await;
            }
            // Asked before reading: once the session is no longer running
            // its recording is complete, so the last read takes all of it.
            let running = match self.gateway.store.session(&self.session.id).await {
                Ok(s) => s.status == "running",
                Err(e) => {
                    return WatchStep::Done(Reply::refused(&format!("watching stopped: {e}")));
                }
            };
            let text = match self.follower.next_output().await {
                Ok(t) => match &mut self.filter {
                    Some(f) => f.filter(&t),
                    None => t,
                },
                Err(e) => {
                    return WatchStep::Done(Reply::refused(&format!("watching stopped: {e}")));
                }
            };
            if !running {
                if !text.is_empty() {
                    // The rest first; the end on the next call.
                    return WatchStep::Output(text);
                }
                return WatchStep::Done(Reply {
                    code: 0,
                    stdout: String::new(),
                    stderr: format!("\nportcullis: session {} ended.\n", self.session.id),
                });
            }
            if !text.is_empty() {
                return WatchStep::Output(text);
            }
        }
    }
}

/// `sessions watch ID [--raw]`: authorised and audited (`SessionWatched`)
/// before the first byte. The output is neutralised
/// ([`crate::text::TerminalFilter`]: no OSC 52, titles, DCS or terminal
/// reports reach the watcher) unless `--raw`.
async fn watch<'a>(gw: &'a Gateway, caller: &Caller, words: &[String]) -> Result<Watch<'a>, Reply> {
    let args = Args::parse(words, &[], &["raw"]).map_err(|m| Reply::usage(&m))?;
    let [id] = args.positional.as_slice() else {
        return Err(Reply::usage("usage: sessions watch ID [--raw]"));
    };
    let session = authorized(gw, caller, Action::Watch, id).await?;
    if session.status != "running" {
        return Err(Reply::refused(&format!(
            "session {} is not running (status {}); replay it with `portcullis sessions play {}`",
            session.id, session.status, session.id
        )));
    }
    let follower = match Follower::open(Path::new(&session.recording_path)).await {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(error = %e, "cannot open the recording to watch");
            return Err(Reply::refused(&format!(
                "session {} is recorded on another gateway ({}); watch it there",
                session.id,
                gw.config.gateway_id()
            )));
        }
    };
    let event = AuditEvent::SessionWatched {
        reviewer: caller.principal.subject.clone(),
    };
    if let Err(e) = caller.audit(gw, Some(&session.id), event).await {
        tracing::error!(error = %e, "cannot write the audit event; not watching");
        return Err(Reply::refused(
            "the gateway cannot write its audit log right now",
        ));
    }
    Ok(Watch {
        gateway: gw,
        session,
        follower,
        first: true,
        filter: (!args.flags.contains("raw")).then(crate::text::TerminalFilter::new),
    })
}

/// `sessions kill ID --reason TEXT`: audited (`SessionKillRequested`),
/// asked through the database (whichever gateway serves the session sees
/// it within a second), then followed to the end for at most
/// [`KILL_WAIT_SECONDS`].
async fn kill(gw: &Gateway, caller: &Caller, words: &[String]) -> Reply {
    let args = match Args::parse(words, &["reason"], &[]) {
        Ok(a) => a,
        Err(m) => return Reply::usage(&m),
    };
    let [id] = args.positional.as_slice() else {
        return Reply::usage("usage: sessions kill ID --reason TEXT");
    };
    let Some(reason) = args.values.get("reason").filter(|r| !r.trim().is_empty()) else {
        return Reply::usage("sessions kill needs --reason TEXT (the user is shown it)");
    };
    let reason = crate::audit::truncate(reason.trim(), 512).to_string();
    // Shown in the user's terminal: no control, bidi or invisible
    // characters (review L1).
    if let Err(e) = crate::text::check_visible(&reason) {
        let event = AuditEvent::AccessDecided {
            action: Action::Kill.as_str().to_string(),
            container: String::new(),
            login: String::new(),
            allowed: false,
            reasons: vec![format!("kill reason: {e}")],
        };
        let _ = caller.audit(gw, None, event).await;
        return Reply::usage(&format!("the --reason may not hold a {e}"));
    }
    let session = match authorized(gw, caller, Action::Kill, id).await {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    if session.status != "running" {
        return Reply::refused(&format!(
            "session {} is not running (status {})",
            session.id, session.status
        ));
    }
    let event = AuditEvent::SessionKillRequested {
        reason: reason.clone(),
    };
    if let Err(e) = caller.audit(gw, Some(&session.id), event).await {
        tracing::error!(error = %e, "cannot write the audit event; not killing");
        return Reply::refused("the gateway cannot write its audit log right now");
    }
    match gw.store.request_kill(&session.id, &reason).await {
        Ok(true) => {}
        Ok(false) => {
            return Reply::refused(&format!(
                "session {} ended before it could be killed",
                session.id
            ));
        }
        Err(e) => return Reply::refused(&format!("cannot ask for the kill: {e}")),
    }
    // The gateway running it (a fleet node) hears at once; its poll of
    // kill requests is the fallback.
    gw.notify_kill(&session.id, &reason).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(KILL_WAIT_SECONDS);
    loop {
        match gw.store.session(&session.id).await {
            Ok(s) if s.status != "running" => {
                return Reply::ok(format!("Session {} ended.\n", session.id));
            }
            Ok(_) => {}
            Err(e) => return Reply::refused(&format!("cannot follow the kill: {e}")),
        }
        if tokio::time::Instant::now() > deadline {
            return Reply::refused(&format!(
                "session {} is still running after {KILL_WAIT_SECONDS} s: is its gateway up?",
                session.id
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
