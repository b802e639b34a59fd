//! `lock add|list|remove` (issue 12; `locks` is the same command): the
//! broker's face of
//! [`crate::session::lock`], for principals the policy allows the `lock`
//! action on `Console::"console"` (admins in the shipped policies). The
//! decision is audited (`AccessDecided`, action `lock`) before anything
//! else; adding and removing are audited again by the lock itself.

use super::args::Args;
use super::{Reply, render};
use crate::audit::AuditEvent;
use crate::gateway::Gateway;
use crate::policy::Action;
use crate::session::Caller;
use crate::session::lock::{self, LockError};
use crate::store::{LockRecord, LockTarget, NewLock, now_ms};

/// Runs `lock ...` (or `locks ...`); `words` follow it.
pub(super) async fn run(gw: &Gateway, caller: &Caller, words: &[String]) -> Reply {
    let Some((verb, rest)) = words.split_first() else {
        return Reply::usage("lock needs add, list or remove");
    };
    if !matches!(verb.as_str(), "add" | "list" | "remove") {
        return Reply::usage(&format!(
            "unknown lock command {:?} (add, list, remove)",
            crate::audit::truncate(verb, 32)
        ));
    }
    if let Err(reply) = allowed(gw, caller).await {
        return reply;
    }
    let result = match verb.as_str() {
        "add" => add(gw, caller, rest).await,
        "remove" => remove(gw, caller, rest).await,
        _ => list(gw, rest).await,
    };
    result.unwrap_or_else(|reply| reply)
}

/// The audited `lock` decision; the refusal when denied.
async fn allowed(gw: &Gateway, caller: &Caller) -> Result<(), Reply> {
    let principal = &caller.principal;
    let decision = gw
        .policy
        .decide_console(&principal.subject, &principal.groups, Action::Lock);
    let (allowed, reasons) = match decision {
        Ok(d) => (d.allowed, d.policies.into_iter().chain(d.errors).collect()),
        Err(e) => (false, vec![e.to_string()]),
    };
    let event = AuditEvent::AccessDecided {
        action: Action::Lock.as_str().to_string(),
        container: String::new(),
        login: String::new(),
        allowed,
        reasons,
    };
    if caller.audit(gw, None, event).await.is_err() {
        return Err(Reply::refused("the gateway cannot write its audit log"));
    }
    if !allowed {
        return Err(Reply::refused("you may not manage locks"));
    }
    Ok(())
}

fn failed(e: LockError) -> Reply {
    match e {
        LockError::Invalid(m) => Reply::usage(&m),
        other => Reply::refused(&other.to_string()),
    }
}

async fn add(gw: &Gateway, caller: &Caller, words: &[String]) -> Result<Reply, Reply> {
    let args = Args::parse(
        words,
        &[
            "principal",
            "group",
            "key",
            "container",
            "issuer",
            "login",
            "reason",
            "for",
            "ttl",
        ],
        &["json"],
    )
    .map_err(|m| Reply::usage(&m))?;
    let mut what = LockTarget::ALL
        .into_iter()
        .filter_map(|t| args.values.get(t.as_str()).map(|v| (t, v.clone())));
    let (target, value) = match (what.next(), what.next()) {
        (Some(one), None) => one,
        _ => {
            return Err(Reply::usage(
                "lock add needs exactly one of --principal, --group, --key, --container, \
                 --issuer, --login",
            ));
        }
    };
    let reason = args
        .values
        .get("reason")
        .ok_or_else(|| Reply::usage("lock add needs --reason TEXT"))?;
    // `--ttl` is the older name of `--for`.
    let duration = match (args.values.get("for"), args.values.get("ttl")) {
        (Some(_), Some(_)) => return Err(Reply::usage("give --for or --ttl, not both")),
        (Some(d), None) | (None, Some(d)) => Some(d),
        (None, None) => None,
    };
    let expires_at = match duration {
        Some(ttl) => {
            let d =
                humantime::parse_duration(ttl).map_err(|e| Reply::usage(&format!("--for: {e}")))?;
            Some(now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
        None => None,
    };
    let new = NewLock {
        target,
        value: &value,
        reason,
        created_by: &caller.principal.subject,
        expires_at,
    };
    let added = lock::add(&gw.store, &gw.audit, &new)
        .await
        .map_err(failed)?;
    if args.flags.contains("json") {
        return Ok(Reply::ok(json(&added)));
    }
    Ok(Reply::ok(format!("{}\n", added.id)))
}

async fn list(gw: &Gateway, words: &[String]) -> Result<Reply, Reply> {
    let args = Args::parse(words, &[], &["all", "json"]).map_err(|m| Reply::usage(&m))?;
    let locks = if args.flags.contains("all") {
        gw.store.all_locks().await
    } else {
        gw.store.active_locks().await
    }
    .map_err(|e| failed(LockError::Store(e)))?;
    if args.flags.contains("json") {
        return Ok(Reply::ok(json(&locks)));
    }
    Ok(Reply::ok(table(&locks)))
}

async fn remove(gw: &Gateway, caller: &Caller, words: &[String]) -> Result<Reply, Reply> {
    let args = Args::parse(words, &[], &[]).map_err(|m| Reply::usage(&m))?;
    let [id] = args.positional.as_slice() else {
        return Err(Reply::usage("lock remove needs one lock id"));
    };
    lock::remove(&gw.store, &gw.audit, id, &caller.principal.subject)
        .await
        .map_err(failed)?;
    Ok(Reply::ok(format!("removed {id}\n")))
}

fn json<T: serde::Serialize>(value: &T) -> String {
    render::json_text(&serde_json::to_value(value).unwrap_or_default())
}

/// One line per lock (values and reasons were checked visible when added).
fn table(locks: &[LockRecord]) -> String {
    let now = now_ms();
    let mut out = String::new();
    for l in locks {
        let state = if l.is_active(now) { "holds" } else { "ended" };
        out.push_str(&format!(
            "{} {} {} {state} {}\n",
            l.id,
            l.target.as_str(),
            l.value,
            l.reason
        ));
    }
    out
}
