//! A relayed session channel as the session core sees it: the [`Output`]
//! that writes a session's bytes, notices and exit back to the edge (RFC
//! 4254 §5.2 data, §6.10 exit status and signal), which passes them on to
//! the user as they are. The node's own notices (session ended, grant
//! warnings, refusals) go as extended data of type [`NOTICE_DATA_TYPE`],
//! so the edge's witness counts only the session's output.

use russh::ChannelWriteHalf;
use russh::server::{Handle, Msg};

use crate::attach::ExitStatus;
use crate::fleet::relay::NOTICE_DATA_TYPE;
use crate::session::io::{ClientGone, Output};
use crate::session::{EndReason, Refusal};
use crate::wire::ChannelEnd;

/// How long the user's "session ended: ..." notice may wait for a client
/// that does not read before it is given up.
const NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A relayed channel's output side. Data goes through the channel's write
/// half, which sends only what the edge's window allows; exit status, EOF
/// and close go through the connection's handle, in order.
pub(super) struct RelayedOutput {
    writer: ChannelWriteHalf<Msg>,
    /// Exit status, EOF (once) and close, in order.
    end: ChannelEnd,
    /// Refusals are rcp fatal errors (`\x02MESSAGE\n` on stdout, which
    /// OpenSSH's scp prints and stops on), not stderr lines.
    rcp: bool,
}

impl RelayedOutput {
    /// The output of the channel of `writer` on the connection of `handle`.
    pub(super) fn new(writer: ChannelWriteHalf<Msg>, handle: Handle) -> RelayedOutput {
        RelayedOutput {
            end: ChannelEnd::new(handle, writer.id()),
            writer,
            rcp: false,
        }
    }

    /// This output, its refusals written as rcp fatal errors (legacy scp).
    pub(super) fn rcp_refusals(self) -> RelayedOutput {
        RelayedOutput { rcp: true, ..self }
    }
}

impl Output for RelayedOutput {
    async fn stdout(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        self.writer.data_bytes(bytes).await.map_err(|_| ClientGone)
    }

    async fn stderr(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        self.writer
            .extended_data_bytes(1, bytes)
            .await
            .map_err(|_| ClientGone)
    }

    async fn notice(&self, bytes: Vec<u8>) -> Result<(), ClientGone> {
        self.writer
            .extended_data_bytes(NOTICE_DATA_TYPE, bytes)
            .await
            .map_err(|_| ClientGone)
    }

    async fn eof(&self) {
        self.end.eof().await;
    }

    async fn ended(&self, reason: &EndReason) {
        let text = format!("\r\nPortcullis: session ended: {reason}.\r\n");
        let _ = tokio::time::timeout(NOTICE_WAIT, self.notice(text.into_bytes())).await;
    }

    async fn finish(self, exit: Option<ExitStatus>) {
        self.end.close(exit).await;
    }

    async fn refuse(self, refusal: &Refusal) {
        if self.rcp {
            let text = format!("\x02{}\n", refusal.message().replace(['\r', '\n'], " "));
            let _ = self.stdout(text.into_bytes()).await;
        } else {
            let text = format!("{}\r\n", refusal.message());
            let _ = self.notice(text.into_bytes()).await;
        }
        self.end.close(Some(ExitStatus::Code(1))).await;
    }
}
