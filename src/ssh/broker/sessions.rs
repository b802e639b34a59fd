//! `ssh portcullis@gw sessions watch ID` and `sessions kill ID --reason
//! TEXT` (issue 6): a reviewer follows a live session read-only, an admin
//! ends one, each when the policy allows it (Cedar actions `watch` and
//! `kill` on the session's container, with `session_id` and `owner`, the
//! session's principal, in context). Both are audited before they act;
//! every decision is an `access_decided` event.

use std::path::Path;
use std::time::Duration;

use super::args::Args;
use super::{BrokerStart, Reply};
use crate::audit::{AuditEvent, AuditSubject};
use crate::policy::{AccessRequest, Action, ContextValue};
use crate::recording::Follower;
use crate::store::SessionRecord;

/// How often a watcher looks for new output, and a killer for the end.
const POLL: Duration = Duration::from_millis(200);

/// Longest wait for a killed session to end, in seconds: the serving
/// gateway looks for kill requests every second.
const KILL_WAIT_SECONDS: u64 = 10;

/// Runs `sessions watch|kill ...`; `words` follow `sessions`. Watch
/// streams the session's output to the channel until the session ends
/// or the watcher leaves, then returns an empty reply with its status.
pub(super) async fn run(start: &BrokerStart, words: &[String]) -> Reply {
    let Some((verb, rest)) = words.split_first() else {
        return Reply::usage("sessions needs watch ID or kill ID --reason TEXT");
    };
    match verb.as_str() {
        "watch" => watch(start, rest).await,
        "kill" => kill(start, rest).await,
        other => Reply::usage(&format!(
            "unknown sessions command {:?} (watch, kill)",
            crate::audit::truncate(other, 32)
        )),
    }
}

/// The session `id` when the principal may do `action` to it, else the
/// refusal (unknown sessions and denied ones read the same, so ids cannot
/// be probed).
async fn authorized(start: &BrokerStart, action: Action, id: &str) -> Result<SessionRecord, Reply> {
    let gateway = &start.gateway;
    let refused = || Reply {
        code: 1,
        stdout: String::new(),
        stderr: format!(
            "portcullis: refused: you may not {} session {}.\n",
            action.as_str(),
            crate::audit::truncate(id, 64)
        ),
    };
    let session = match gateway.store.session(id).await {
        Ok(s) => s,
        Err(crate::store::StoreError::SessionNotFound(_)) => {
            // Audited like a denial (the id, cut to 64 bytes, in reasons).
            let _ = gateway
                .audit
                .record(
                    &AuditSubject {
                        session_id: None,
                        principal: Some(&start.principal.subject),
                        client_addr: Some(&start.client_addr),
                    },
                    &AuditEvent::AccessDecided {
                        action: action.as_str().to_string(),
                        container: String::new(),
                        login: String::new(),
                        allowed: false,
                        reasons: vec![format!("no session {}", crate::audit::truncate(id, 64))],
                    },
                )
                .await;
            return Err(refused());
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the session; refusing");
            return Err(Reply {
                code: 1,
                stdout: String::new(),
                stderr: "portcullis: refused: the gateway cannot reach its database right now.\n"
                    .into(),
            });
        }
    };
    let labels = super::labels_of(gateway, &session.container).await;
    let decision = gateway.policy.decide_with(
        &AccessRequest {
            principal: &start.principal.subject,
            groups: &start.principal.groups,
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
    let recorded = gateway
        .audit
        .record(
            &subject(start, &session.id),
            &AuditEvent::AccessDecided {
                action: action.as_str().to_string(),
                container: session.container.clone(),
                login: session.login.clone(),
                allowed,
                reasons,
            },
        )
        .await;
    if let Err(e) = recorded {
        tracing::error!(error = %e, "cannot write the audit event; refusing");
        return Err(refused());
    }
    if !allowed {
        return Err(refused());
    }
    Ok(session)
}

fn subject<'a>(start: &'a BrokerStart, session_id: &'a str) -> AuditSubject<'a> {
    AuditSubject {
        session_id: Some(session_id),
        principal: Some(&start.principal.subject),
        client_addr: Some(&start.client_addr),
    }
}

async fn watch(start: &BrokerStart, words: &[String]) -> Reply {
    let args = match Args::parse(words, &[], &[]) {
        Ok(a) => a,
        Err(m) => return Reply::usage(&m),
    };
    let [id] = args.positional.as_slice() else {
        return Reply::usage("usage: sessions watch ID");
    };
    let session = match authorized(start, Action::Watch, id).await {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    if session.status != "running" {
        return Reply::refused_text(&format!(
            "session {} is not running (status {}); replay it with `portcullis sessions play {}`",
            session.id, session.status, session.id
        ));
    }
    let gateway = &start.gateway;
    let mut follower = match Follower::open(Path::new(&session.recording_path)).await {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(error = %e, "cannot open the recording to watch");
            return Reply::refused_text(&format!(
                "session {} is recorded on another gateway ({}); watch it there",
                session.id,
                gateway.config.gateway_id()
            ));
        }
    };
    let watched = gateway
        .audit
        .record(
            &subject(start, &session.id),
            &AuditEvent::SessionWatched {
                reviewer: start.principal.subject.clone(),
            },
        )
        .await;
    if let Err(e) = watched {
        tracing::error!(error = %e, "cannot write the audit event; not watching");
        return Reply::refused_text("the gateway cannot write its audit log right now");
    }
    loop {
        // Asked before reading: once the session is no longer running its
        // recording is complete, so the last read takes all of it.
        let running = match gateway.store.session(&session.id).await {
            Ok(s) => s.status == "running",
            Err(e) => {
                return Reply::refused_text(&format!("watching stopped: {e}"));
            }
        };
        let text = match follower.next_output().await {
            Ok(t) => t,
            Err(e) => return Reply::refused_text(&format!("watching stopped: {e}")),
        };
        if !text.is_empty()
            && start
                .handle
                .data(start.channel, text.into_bytes())
                .await
                .is_err()
        {
            // The watcher left.
            return Reply::ok(String::new());
        }
        if !running {
            return Reply {
                code: 0,
                stdout: String::new(),
                stderr: format!("\nportcullis: session {} ended.\n", session.id),
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn kill(start: &BrokerStart, words: &[String]) -> Reply {
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
    let session = match authorized(start, Action::Kill, id).await {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    if session.status != "running" {
        return Reply::refused_text(&format!(
            "session {} is not running (status {})",
            session.id, session.status
        ));
    }
    let gateway = &start.gateway;
    let requested = gateway
        .audit
        .record(
            &subject(start, &session.id),
            &AuditEvent::SessionKillRequested {
                reason: reason.clone(),
            },
        )
        .await;
    if let Err(e) = requested {
        tracing::error!(error = %e, "cannot write the audit event; not killing");
        return Reply::refused_text("the gateway cannot write its audit log right now");
    }
    match gateway.store.request_kill(&session.id, &reason).await {
        Ok(true) => {}
        Ok(false) => {
            return Reply::refused_text(&format!(
                "session {} ended before it could be killed",
                session.id
            ));
        }
        Err(e) => return Reply::refused_text(&format!("cannot ask for the kill: {e}")),
    }
    // Whichever gateway serves the session sees the request within a
    // second (it may be another one sharing the database).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(KILL_WAIT_SECONDS);
    loop {
        match gateway.store.session(&session.id).await {
            Ok(s) if s.status != "running" => {
                return Reply::ok(format!("Session {} ended.\n", session.id));
            }
            Ok(_) => {}
            Err(e) => return Reply::refused_text(&format!("cannot follow the kill: {e}")),
        }
        if tokio::time::Instant::now() > deadline {
            return Reply::refused_text(&format!(
                "session {} is still running after {KILL_WAIT_SECONDS} s: is its gateway up?",
                session.id
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
