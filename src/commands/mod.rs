//! The broker's own commands (issue 7), for every front end: the reserved
//! SSH user name (`[grants] broker_user`, default `portcullis`) reaches
//! them over ssh, and the web console may call them too.
//!
//! ```text
//! request CONTAINER --login L --for 2h --reason "..."   request show ID
//! requests [--pending|--mine|--unreviewed]             approve ID [--comment ...]
//! deny ID --reason ...    revoke ID --reason ...       grants [--mine]
//! review ID               whoami                       request ... --break-glass
//! sessions watch ID       sessions kill ID --reason ...
//! keys [--all]            keys revoke FINGERPRINT
//! lock add|list|remove ...   (also `locks`)
//! containers [list] | snapshots NAME | start|stop|restart|snapshot NAME --reason ...
//! containers restore NAME SNAPSHOT --reason ... | request ACTION NAME --reason ...
//! ```
//!
//! Each command parses its words, calls [`crate::grants`] or the session
//! records, and returns a [`Reply`] (text, or JSON with `--json`): exit
//! status 0 on success, 1 when the step is refused, 2 on a usage error;
//! messages go to stderr as one line. `sessions watch` returns a [`Watch`]
//! that streams the session's output. Nothing here knows SSH: a front end
//! writes the reply.

mod args;
pub mod containers;
#[cfg(test)]
mod containers_tests;
mod keys;
mod locks;
mod render;
mod requests;
mod sessions;
#[cfg(test)]
mod tests;
mod visible;

use std::collections::BTreeMap;

use crate::gateway::Gateway;
use crate::grants::{Actor, GrantError, Workflow};
use crate::session::Caller;

pub use sessions::{Watch, WatchStep};

/// Most requests listed by `requests`.
const LIST_LIMIT: i64 = 200;

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Exit status: 0 done, 1 refused, 2 usage error.
    pub code: u32,
    /// For stdout (text or JSON).
    pub stdout: String,
    /// For stderr (one line for refusals and usage errors).
    pub stderr: String,
}

impl Reply {
    /// Success with `stdout`.
    pub fn ok(stdout: String) -> Reply {
        Reply {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }

    /// A usage error (status 2).
    pub fn usage(message: &str) -> Reply {
        Reply {
            code: 2,
            stdout: String::new(),
            stderr: format!("portcullis: {message} (try: help)\n"),
        }
    }

    /// A refusal (status 1) reading `refused: MESSAGE.`.
    pub fn refused(message: &str) -> Reply {
        Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("portcullis: refused: {message}.\n"),
        }
    }
}

/// A command's result: a reply, or a stream to follow first.
pub enum Outcome<'a> {
    /// The answer.
    Done(Reply),
    /// `sessions watch`: the session's output until it ends.
    Watch(Box<Watch<'a>>),
}

/// The help text (a shell on the broker, or `help`).
pub const HELP: &str = "Portcullis broker commands (ssh portcullis@GATEWAY COMMAND):
  request CONTAINER --login LOGIN --for DURATION --reason TEXT   ask for access
  request show ID                                                one request
  requests [--pending|--mine]                                    list requests
  approve ID [--comment TEXT]                                    approve a request
  deny ID --reason TEXT                                          deny a request
  grants [--mine]                                                active grants
  revoke ID --reason TEXT                                        end a grant now
  request CONTAINER --login LOGIN --for DURATION --reason TEXT --break-glass
                                            emergency self-granted access (break-glass group)
  requests --unreviewed                                          break-glass grants to review
  review ID [--comment TEXT]                                     mark a break-glass grant reviewed
  whoami                                                         you, your groups and grants
  sessions watch ID [--raw]                                      follow a live session read-only
  sessions kill ID --reason TEXT                                 end a live session (the user sees why)
  keys [--all]                                                   keys bound to you (by your logins)
  keys revoke FINGERPRINT                                        end one of them
  lock add (--principal P|--group G|--key SHA256:...|--container C|--issuer URL|--login L)
           --reason TEXT [--for DURATION]   refuse and end their sessions and connections (admins)
  lock list [--all]     lock remove ID                           the locks that hold; remove one
  containers [list]                                              containers you may see
  containers start|stop|restart|snapshot NAME --reason TEXT [--force]
                                            a lifecycle action (--force: despite live sessions)
  containers snapshots NAME    containers restore NAME SNAPSHOT --reason TEXT [--force]
  containers request ACTION NAME --reason TEXT [--for DURATION]  ask for approval of an action
Add --json for machine-readable output.
";

/// Runs the command line `line` (`None`: a shell was asked for, which
/// gets the help) for `caller`. The line is split like a POSIX shell
/// would (`shlex`).
pub async fn execute<'a>(
    gateway: &'a Gateway,
    caller: &'a Caller,
    line: Option<&str>,
) -> Outcome<'a> {
    let Some(line) = line else {
        return Outcome::Done(Reply::ok(HELP.to_string()));
    };
    let Some(words) = shlex::split(line) else {
        return Outcome::Done(Reply::usage(
            "cannot parse the command line (unbalanced quotes?)",
        ));
    };
    let Some((verb, rest)) = words.split_first() else {
        return Outcome::Done(Reply::ok(HELP.to_string()));
    };
    if verb == "sessions" {
        return sessions::run(gateway, caller, rest).await;
    }
    if verb == "keys" {
        return Outcome::Done(keys::run(gateway, caller, rest).await);
    }
    if verb == "lock" || verb == "locks" {
        return Outcome::Done(locks::run(gateway, caller, rest).await);
    }
    if verb == "containers" {
        return Outcome::Done(containers::run(gateway, caller, rest).await);
    }
    Outcome::Done(run(gateway, caller, verb, rest).await)
}

/// The commands that answer at once.
async fn run(gateway: &Gateway, caller: &Caller, verb: &str, rest: &[String]) -> Reply {
    let wf = Workflow {
        store: &gateway.store,
        audit: &gateway.audit,
        policy: &gateway.policy,
        config: &gateway.config.grants,
    };
    let actor = Actor {
        principal: &caller.principal,
        client_addr: &caller.client_addr,
    };
    let c = requests::Context {
        gateway,
        wf: &wf,
        actor: &actor,
    };
    let result = match verb {
        "help" | "--help" => return Reply::ok(HELP.to_string()),
        "whoami" => requests::whoami(&c, rest).await,
        "request" if rest.first().is_some_and(|w| w == "show") => {
            requests::show(&c, rest.get(1..).unwrap_or_default()).await
        }
        "request" => requests::request(&c, rest).await,
        "requests" => requests::list_requests(&c, rest).await,
        "approve" => requests::approve(&c, rest).await,
        "deny" | "revoke" | "review" => requests::decide(&c, verb, rest).await,
        "grants" => requests::list_grants(&c, rest).await,
        other => {
            return Reply::usage(&format!(
                "unknown command {:?}",
                crate::audit::truncate(other, 32)
            ));
        }
    };
    match result {
        Ok(reply) => reply,
        Err(Failure::Usage(m)) => Reply::usage(&m),
        Err(Failure::Refused(e)) => {
            tracing::info!(error = %e, command = %verb, "broker command refused");
            Reply::refused(&e.to_string())
        }
    }
}

/// Why a command did not do its step.
enum Failure {
    /// The words are wrong.
    Usage(String),
    /// The step was refused (already audited by the workflow).
    Refused(GrantError),
}

impl From<GrantError> for Failure {
    fn from(e: GrantError) -> Failure {
        Failure::Refused(e)
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Failure {
        Failure::Refused(GrantError::Store(e))
    }
}

fn usage(m: String) -> Failure {
    Failure::Usage(m)
}

/// The labels of `container` as the inventory knows them (the config's,
/// when it cannot be found right now).
async fn labels_of(gateway: &Gateway, container: &str) -> BTreeMap<String, String> {
    match gateway.inventory.find(container).await {
        Ok(c) => c.labels,
        Err(_) => gateway
            .config
            .containers
            .get(container)
            .map(|c| c.labels.clone())
            .unwrap_or_default(),
    }
}
