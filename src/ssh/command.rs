//! A broker command on an SSH channel (the reserved user name,
//! `[grants] broker_user`): [`crate::commands`] answers, this writes the
//! reply (stdout, stderr, exit status; lines end in CR LF under a PTY) or
//! streams `sessions watch` until the session ends or the watcher leaves.
//! Every reply is made display-safe here, line by line
//! ([`crate::text::display_safe_lines`]), so no name or reason another
//! person typed (or a database writer planted) reaches the caller's
//! terminal raw; `sessions watch` output is neutralised by the command.

use std::sync::Arc;

use super::channel::SshOutput;
use crate::attach::ExitStatus;
use crate::commands::{Outcome, Reply, WatchStep};
use crate::gateway::Gateway;
use crate::session::Caller;
use crate::session::io::Output;

/// Runs the command `line` (`None`: a shell, which gets the help) for
/// `caller` and closes the channel with its exit status.
pub(super) async fn run(
    gateway: Arc<Gateway>,
    caller: Caller,
    line: Option<String>,
    pty: bool,
    output: SshOutput,
) {
    let reply = match crate::commands::execute(&gateway, &caller, line.as_deref()).await {
        Outcome::Done(reply) => reply,
        Outcome::Watch(mut watch) => loop {
            match watch.next().await {
                WatchStep::Output(text) => {
                    if output.stdout(text.into_bytes()).await.is_err() {
                        // The watcher left.
                        break Reply::ok(String::new());
                    }
                }
                WatchStep::Done(reply) => break reply,
            }
        },
    };
    let fix = |s: String| {
        let s = crate::text::display_safe_lines(&s).into_owned();
        if pty { s.replace('\n', "\r\n") } else { s }
    };
    if !reply.stdout.is_empty() {
        let _ = output.stdout(fix(reply.stdout).into_bytes()).await;
    }
    if !reply.stderr.is_empty() {
        let _ = output.stderr(fix(reply.stderr).into_bytes()).await;
    }
    output
        .finish(Some(ExitStatus::Code(reply.code as i32)))
        .await;
}
