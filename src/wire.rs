//! The SSH channel forms shared by every russh server of the gateway:
//! the front door ([`crate::ssh`]) and a node's acceptor of relayed
//! sessions ([`crate::node`]). Client PTY values made safe (RFC 4254
//! §6.2, §6.7), a client's signal request turned into a number (§6.9,
//! through the one table [`crate::session::signal`]), and a channel's end
//! (§6.10 exit status or signal, one EOF per §5.3, close).
//!
//! Never decides, records or audits: callers do, before they end a
//! channel.

use std::sync::atomic::{AtomicBool, Ordering};

use russh::server::Handle;
use russh::{ChannelId, Sig};

use crate::attach::ExitStatus;

/// Longest TERM value kept, in bytes.
pub const MAX_TERM_BYTES: usize = 64;

/// Largest terminal width or height kept, in cells.
pub const MAX_TERMINAL_CELLS: u16 = 1000;

/// A client's TERM value if it is 1 to [`MAX_TERM_BYTES`] bytes of
/// `[A-Za-z0-9._+-]`, else `xterm` (the value reaches the container's
/// environment and terminfo lookups).
pub fn sanitize_term(term: &str) -> String {
    let ok = !term.is_empty()
        && term.len() <= MAX_TERM_BYTES
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        term.to_string()
    } else {
        "xterm".to_string()
    }
}

/// A client's terminal dimension in cells, capped at
/// [`MAX_TERMINAL_CELLS`]; `default` for 0 (RFC 4254 §6.2: zero means
/// "use the other unit").
pub fn clamp_dim(value: u32, default: u16) -> u16 {
    if value == 0 {
        default
    } else {
        value.min(u32::from(MAX_TERMINAL_CELLS)) as u16
    }
}

/// The number of the signal a client asked for (RFC 4254 §6.9; russh's
/// variants are the RFC's names), or `None` for a name the one table
/// does not know.
pub fn signal_number(signal: &Sig) -> Option<i32> {
    let name = match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    };
    crate::session::signal::number(&name)
}

/// The end of one session channel: exit status or signal, EOF (sent at
/// most once) and close, in order on the connection's handle.
pub struct ChannelEnd {
    handle: Handle,
    channel: ChannelId,
    eof_sent: AtomicBool,
}

impl ChannelEnd {
    /// The end of `channel` on the connection of `handle`.
    pub fn new(handle: Handle, channel: ChannelId) -> ChannelEnd {
        ChannelEnd {
            handle,
            channel,
            eof_sent: AtomicBool::new(false),
        }
    }

    /// Sends EOF unless it was sent (RFC 4254 §5.3: once per channel). A
    /// client already gone is not an error here.
    pub async fn eof(&self) {
        if !self.eof_sent.swap(true, Ordering::Relaxed) {
            let _ = self.handle.eof(self.channel).await;
        }
    }

    /// Sends `exit` (exit-status, or exit-signal with the RFC name from
    /// [`crate::session::signal::name`]), EOF and close. Nothing for
    /// `None` but EOF and close.
    pub async fn close(&self, exit: Option<ExitStatus>) {
        match exit {
            Some(ExitStatus::Code(code)) => {
                let _ = self
                    .handle
                    .exit_status_request(self.channel, code as u32)
                    .await;
            }
            Some(ExitStatus::Signal {
                signal,
                core_dumped,
            }) => {
                // The RFC 4254 name is all that goes on the wire.
                let name = Sig::Custom(crate::session::signal::name(signal));
                let _ = self
                    .handle
                    .exit_signal_request(
                        self.channel,
                        name,
                        core_dumped,
                        String::new(),
                        String::new(),
                    )
                    .await;
            }
            None => {}
        }
        self.eof().await;
        let _ = self.handle.close(self.channel).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_and_dimensions_are_sanitised() {
        assert_eq!(sanitize_term("xterm-256color"), "xterm-256color");
        assert_eq!(sanitize_term("x\u{1b}]0;evil"), "xterm");
        assert_eq!(sanitize_term(""), "xterm");
        assert_eq!(sanitize_term(&"a".repeat(65)), "xterm");
        assert_eq!(clamp_dim(0, 80), 80);
        assert_eq!(clamp_dim(100_000, 80), 1000);
        assert_eq!(clamp_dim(120, 80), 120);
    }

    #[test]
    fn signals_are_numbered_by_their_rfc_names() {
        assert_eq!(signal_number(&Sig::TERM), Some(15));
        assert_eq!(signal_number(&Sig::INT), Some(2));
        assert_eq!(signal_number(&Sig::Custom("USR1".into())), Some(10));
        assert_eq!(signal_number(&Sig::Custom("NOPE".into())), None);
    }
}
