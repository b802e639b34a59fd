//! `keys` and `keys revoke FINGERPRINT` (issue 14, review finding H2): a
//! principal lists their own key bindings and ends one, e.g. a key bound
//! to them by a phished device-flow login. Only the caller's own bindings
//! are ever shown or revoked ([`crate::identity::KeyBindings::own_bindings`],
//! `revoke_own`); the revocation is audited before it is made. Refresh
//! tokens are never part of the output.

use serde_json::json;

use super::Reply;
use super::args::Args;
use super::render::{json_text, time_text};
use crate::gateway::Gateway;
use crate::session::Caller;
use crate::store::KeyBinding;

/// `keys [--all] [--json]` or `keys revoke FINGERPRINT`.
pub(super) async fn run(gateway: &Gateway, caller: &Caller, rest: &[String]) -> Reply {
    if rest.first().is_some_and(|w| w == "revoke") {
        return revoke(gateway, caller, rest.get(1..).unwrap_or_default()).await;
    }
    let args = match Args::parse(rest, &[], &["all", "json"]) {
        Ok(a) if a.positional.is_empty() => a,
        Ok(_) => return Reply::usage("usage: keys [--all] [--json] | keys revoke FINGERPRINT"),
        Err(m) => return Reply::usage(&m),
    };
    let subject = &caller.principal.subject;
    let list = match gateway
        .bindings
        .own_bindings(subject, args.flags.contains("all"))
        .await
    {
        Ok(list) => list,
        Err(e) => {
            tracing::error!(error = %e, "cannot read key bindings");
            return Reply::refused("the gateway cannot read its database right now");
        }
    };
    if args.flags.contains("json") {
        return Reply::ok(json_text(&json!(list)));
    }
    if list.is_empty() {
        return Reply::ok("No keys are bound to you.\n".into());
    }
    let mut text = String::from("FINGERPRINT  BOUND FROM  BOUND AT  BY  UNTIL  STATE\n");
    for b in &list {
        text.push_str(&line(b));
        text.push('\n');
    }
    Reply::ok(text)
}

/// One binding as a line of `keys`.
fn line(b: &KeyBinding) -> String {
    let state = match (&b.revoked_at, b.expires_at <= crate::store::now_ms()) {
        (Some(_), _) => "revoked",
        (None, true) => "expired",
        (None, false) => "live",
    };
    let from = b.bound_from.as_deref().unwrap_or("-");
    let by = b.bound_by.as_deref().unwrap_or("-");
    crate::text::display_safe(&format!(
        "{}  {from}  {}  {by}  {}  {state}",
        b.fingerprint,
        time_text(Some(b.created_at)),
        time_text(Some(b.expires_at)),
    ))
    .into_owned()
}

/// `keys revoke FINGERPRINT`: ends the caller's own binding of that key.
async fn revoke(gateway: &Gateway, caller: &Caller, rest: &[String]) -> Reply {
    let [fingerprint] = rest else {
        return Reply::usage("usage: keys revoke FINGERPRINT (SHA256:..., see: keys)");
    };
    match gateway
        .bindings
        .revoke_own(
            &gateway.audit,
            &caller.principal.subject,
            fingerprint,
            &caller.client_addr,
        )
        .await
    {
        Ok(()) => Reply::ok(format!(
            "Revoked {}: the key now needs a new login.\n",
            crate::text::display_safe(fingerprint)
        )),
        Err(e) => {
            tracing::info!(error = %e, "keys revoke refused");
            Reply::refused(&e.to_string())
        }
    }
}
