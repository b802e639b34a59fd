//! The console's way into the broker's commands ([`crate::commands`]):
//! a console action (kill, approve, deny, revoke, review, lock) is the
//! same command an SSH user runs as `ssh portcullis@gw ...`, run for the
//! logged-in principal as its [`Caller`]. The command decides with the
//! policy, audits and acts; this file only builds the command line (every
//! value quoted, options as `--name=value` so a value never reads as an
//! option) and turns the [`Reply`] into a page's result.
//!
//! Never acts itself and never parses a command's text output: what a
//! page shows of the result comes from `--json` or from the reply's one
//! line.

use crate::commands::{Outcome, Reply, execute};
use crate::session::{Caller, Destination};

use super::auth::Viewer;
use super::{Console, WebError};

/// One word of a command line: a positional word or `--name=value`.
pub(crate) enum Word<'a> {
    /// A positional word (an id, a verb).
    Plain(&'a str),
    /// `--name=value`.
    Value(&'a str, &'a str),
    /// `--flag`.
    Flag(&'a str),
}

/// The broker's line for `words`, each quoted as a POSIX shell would
/// (the commands split it with `shlex`).
///
/// # Errors
/// [`WebError::BadRequest`] when a value cannot be quoted (a NUL byte).
pub(crate) fn command_line(words: &[Word<'_>]) -> Result<String, WebError> {
    let texts: Vec<String> = words
        .iter()
        .map(|w| match w {
            Word::Plain(p) => (*p).to_string(),
            Word::Value(name, value) => format!("--{name}={value}"),
            Word::Flag(name) => format!("--{name}"),
        })
        .collect();
    shlex::try_join(texts.iter().map(String::as_str))
        .map_err(|_| WebError::BadRequest("A field holds a character that is not allowed.".into()))
}

/// The message of a refused or misused command: its one stderr line
/// without the `portcullis: ` prefix.
fn message_of(reply: &Reply) -> String {
    let line = reply.stderr.trim();
    line.strip_prefix("portcullis: ")
        .unwrap_or(line)
        .trim_end_matches(" (try: help)")
        .to_string()
}

impl Console {
    /// The broker caller of `viewer`: their principal, from the browser's
    /// address, at the broker.
    fn caller(&self, viewer: &Viewer) -> Caller {
        Caller {
            principal: viewer.principal.clone(),
            client_addr: viewer.client.clone(),
            user: self.config.grants.broker_user.clone(),
            destination: Destination::Broker,
            key_fingerprint: None,
            credential_expires_at: None,
            // The browser's login has no SSH connection to close.
            connection: None,
        }
    }

    /// Runs the broker command `words` for `viewer`; its stdout when it
    /// succeeded.
    ///
    /// # Errors
    /// [`WebError::CommandRefused`] (exit status 1: the policy, the state
    /// of the request or session, the database or the audit log said no;
    /// the command audited it), [`WebError::BadRequest`] (status 2).
    pub(crate) async fn command(
        &self,
        viewer: &Viewer,
        words: &[Word<'_>],
    ) -> Result<String, WebError> {
        let line = command_line(words)?;
        let caller = self.caller(viewer);
        let reply = match execute(&self.gateway, &caller, Some(&line)).await {
            Outcome::Done(reply) => reply,
            // Only `sessions watch` streams; the console watches through
            // its own page.
            Outcome::Watch(_) => {
                return Err(WebError::BadRequest(
                    "This command streams; it is not a console action.".into(),
                ));
            }
        };
        match reply.code {
            0 => Ok(reply.stdout),
            1 => Err(WebError::CommandRefused(message_of(&reply))),
            _ => Err(WebError::BadRequest(message_of(&reply))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_one_word_and_never_read_as_options() {
        let line = command_line(&[
            Word::Plain("locks"),
            Word::Plain("add"),
            Word::Value("principal", "--json"),
            Word::Value("reason", "it's \"bad\"; rm -rf /"),
        ])
        .unwrap_or_default();
        assert_eq!(
            shlex::split(&line),
            Some(vec![
                "locks".to_string(),
                "add".into(),
                "--principal=--json".into(),
                "--reason=it's \"bad\"; rm -rf /".into(),
            ])
        );
        assert!(command_line(&[Word::Value("reason", "a\0b")]).is_err());
        let refused = Reply::refused("you may not manage locks");
        assert_eq!(message_of(&refused), "refused: you may not manage locks.");
        assert_eq!(
            message_of(&Reply::usage("locks add needs --reason TEXT")),
            "locks add needs --reason TEXT"
        );
    }
}
