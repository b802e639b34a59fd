//! One SSH channel as the session core sees it: the [`Output`] that
//! writes a session's bytes, notices and exit to the channel (RFC 4254
//! §5.2 data, §6.10 exit status and signal), and how a refusal reads on
//! it. Input reaches the core through [`crate::session::io`] queues that
//! the handler fills.

use russh::ChannelWriteHalf;
use russh::server::{Handle, Msg};

use crate::attach::ExitStatus;
use crate::session::io::{ClientGone, Output};
use crate::session::{EndReason, Refusal};
use crate::wire::ChannelEnd;

/// How long the user's "session ended: ..." notice may wait for a client
/// that does not read before it is given up.
const NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a refusal is written on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefusalStyle {
    /// A line on stderr (extended data 1).
    Stderr,
    /// An rcp fatal error (`\x02MESSAGE\n` on stdout), which OpenSSH's
    /// scp prints and stops on (scp.c `response()`/`sink()`).
    Rcp,
}

/// A session channel's output side. Data goes through the channel's
/// write half, which sends only what the client's window allows and waits
/// for more (so russh never queues data the client did not ask for, and
/// its loop keeps serving every other channel); exit status, EOF and close
/// go through the connection's handle, in the same queue, in order.
pub(super) struct SshOutput {
    writer: ChannelWriteHalf<Msg>,
    /// Exit status, EOF (once) and close, in order.
    end: ChannelEnd,
    style: RefusalStyle,
    /// Lines for the user, sent on stderr before the first output.
    notices: std::sync::Mutex<Vec<String>>,
}

impl SshOutput {
    /// The output of the channel of `writer` on the connection of
    /// `handle`; refusals read as `style` says.
    pub(super) fn new(
        writer: ChannelWriteHalf<Msg>,
        handle: Handle,
        style: RefusalStyle,
    ) -> SshOutput {
        SshOutput {
            end: ChannelEnd::new(handle, writer.id()),
            writer,
            style,
            notices: std::sync::Mutex::default(),
        }
    }

    /// This output sending `notices` (one line each, `Portcullis: ` first)
    /// on stderr before anything else it writes (key bindings announced
    /// at login).
    pub(super) fn with_notices(self, notices: Vec<String>) -> SshOutput {
        *self.notices.lock().unwrap_or_else(|p| p.into_inner()) = notices;
        self
    }

    /// Sends the pending notices, once.
    async fn send_notices(&self) -> Result<(), ClientGone> {
        let notices = std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()));
        if notices.is_empty() {
            return Ok(());
        }
        let text: String = notices
            .iter()
            .map(|n| format!("Portcullis: {}\r\n", crate::text::display_safe(n)))
            .collect();
        self.writer
            .extended_data_bytes(1, text.into_bytes())
            .await
            .map_err(|_| ClientGone)
    }
}

impl Output for SshOutput {
    async fn stdout(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        self.send_notices().await?;
        self.writer.data_bytes(bytes).await.map_err(|_| ClientGone)
    }

    async fn stderr(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        self.send_notices().await?;
        self.writer
            .extended_data_bytes(1, bytes)
            .await
            .map_err(|_| ClientGone)
    }

    async fn eof(&self) {
        self.end.eof().await;
    }

    async fn ended(&self, reason: &EndReason) {
        let text = format!("\r\nPortcullis: session ended: {reason}.\r\n");
        let _ = tokio::time::timeout(NOTICE_WAIT, self.stderr(text.into_bytes())).await;
    }

    async fn finish(self, exit: Option<ExitStatus>) {
        let _ = tokio::time::timeout(NOTICE_WAIT, self.send_notices()).await;
        self.end.close(exit).await;
    }

    async fn refuse(self, refusal: &Refusal) {
        match self.style {
            RefusalStyle::Stderr => {
                let text = format!("{}\r\n", refusal.message());
                let _ = self.stderr(text.into_bytes()).await;
            }
            RefusalStyle::Rcp => {
                let text = format!("\x02{}\n", refusal.message().replace(['\r', '\n'], " "));
                let _ = self.stdout(text.into_bytes()).await;
            }
        }
        self.end.close(Some(ExitStatus::Code(1))).await;
    }
}
