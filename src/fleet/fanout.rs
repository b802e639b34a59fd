//! Fan-out of kills, locks, grant revocations and node removals to every
//! gateway of a fleet through PostgreSQL `LISTEN`/`NOTIFY` (issue 16
//! point 4), so the gateway holding a session acts within a second.
//!
//! A writer sends a [`Notice`] with [`notify`] (or
//! [`crate::store::Store::notify_fleet`] inside the transaction that writes
//! the row, so the notice is delivered at commit and never precedes its
//! row). Each gateway runs one [`NoticeListener`] and gets typed
//! [`Delivered`] notices. NOTIFY is not durable: after every (re)connect
//! the listener first yields [`Notice::Resync`] and the consumer must
//! re-read the tables (pending kills, locks, revoked grants), so a notice
//! sent while it was disconnected is acted on all the same.
//!
//! Owns the channel name, the payload format and the listener's
//! connection; it never acts on a notice itself (the session core does).
//! On SQLite there is no fan-out: the all-in-one gateway polls as before.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{Backend, Store, StoreError};

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "portcullis_fleet";

/// Longest payload PostgreSQL accepts is 8000 bytes; ours stay far below
/// (ids and a reason cut to [`MAX_REASON_BYTES`]).
pub const MAX_REASON_BYTES: usize = 1000;

/// A failed fan-out step.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The notice could not be sent.
    #[error("cannot send a fleet notice: {0}")]
    Notify(#[from] StoreError),
    /// The payload could not be encoded.
    #[error("cannot encode a fleet notice: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What changed. Notices carry ids; the consumer re-reads the row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A live session is to end (the kill request is in `sessions`).
    Kill {
        /// The session.
        session_id: String,
        /// The reason shown to the user.
        reason: String,
    },
    /// A lock was placed or lifted; sessions it covers end.
    Lock {
        /// The lock.
        lock_id: String,
    },
    /// A grant was revoked; sessions that depend on it end.
    GrantRevoked {
        /// The grant.
        grant_id: String,
    },
    /// A node was removed; edges close its tunnels.
    NodeRemoved {
        /// The node.
        node: String,
    },
    /// The listener (re)connected: notices may have been missed, re-read
    /// the tables. Never sent by a writer.
    Resync,
}

impl Notice {
    /// `kill`, `lock`, `grant_revoked`, `node_removed` or `resync` (the
    /// metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Kill { .. } => "kill",
            Notice::Lock { .. } => "lock",
            Notice::GrantRevoked { .. } => "grant_revoked",
            Notice::NodeRemoved { .. } => "node_removed",
            Notice::Resync => "resync",
        }
    }
}

/// The JSON payload on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    #[serde(flatten)]
    notice: Notice,
    /// Sender's clock when sent, unix microseconds.
    sent_at_us: i64,
}

/// A notice as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The notice.
    pub notice: Notice,
    /// From the sender's timestamp to receipt (sender's and receiver's
    /// clocks; exact on one host); `None` for [`Notice::Resync`].
    pub latency: Option<Duration>,
    /// Receipt, unix microseconds (this process's clock).
    pub received_at_us: i64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The payload text of `notice`, stamped now.
///
/// # Errors
/// [`FanoutError::Encode`].
pub fn payload(notice: &Notice) -> Result<String, FanoutError> {
    let notice = match notice {
        Notice::Kill { session_id, reason } => Notice::Kill {
            session_id: session_id.clone(),
            reason: crate::audit::truncate(reason, MAX_REASON_BYTES),
        },
        other => other.clone(),
    };
    Ok(serde_json::to_string(&Envelope {
        notice,
        sent_at_us: now_us(),
    })?)
}

/// Sends `notice` to every listening gateway (PostgreSQL); does nothing on
/// SQLite. Prefer sending it in the transaction that writes the row
/// ([`crate::store::Store::notify_fleet`] on that transaction's backend).
///
/// # Errors
/// [`FanoutError`].
pub async fn notify(store: &Store, notice: &Notice) -> Result<(), FanoutError> {
    if store.backend() != Backend::Postgres {
        return Ok(());
    }
    store.notify_fleet(CHANNEL, &payload(notice)?).await?;
    Ok(())
}

/// Decodes one payload; `None` (logged) for one this version does not
/// know.
fn decode(payload: &str) -> Option<Delivered> {
    let received_at_us = now_us();
    match serde_json::from_str::<Envelope>(payload) {
        Ok(envelope) => Some(Delivered {
            latency: Some(Duration::from_micros(
                received_at_us.saturating_sub(envelope.sent_at_us).max(0) as u64,
            )),
            notice: envelope.notice,
            received_at_us,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "ignored a fleet notice this version cannot read");
            None
        }
    }
}

/// The listener: one PostgreSQL connection doing `LISTEN portcullis_fleet`,
/// reconnecting with backoff (250 ms doubling to 5 s) until shutdown.
#[derive(Debug)]
pub struct NoticeListener;

impl NoticeListener {
    /// Starts listening on the PostgreSQL database at `url`; returns the
    /// notices in order, [`Notice::Resync`] first and after every
    /// reconnect. The task ends at `shutdown` or when the receiver is
    /// dropped. At most 1024 notices wait in the queue; when it is full
    /// the oldest are not dropped, the listener waits (PostgreSQL queues
    /// them server-side, up to 8 GB).
    pub fn start(url: String, shutdown: CancellationToken) -> mpsc::Receiver<Delivered> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let connected = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    c = connect(&url) => c,
                };
                let mut listener = match connected {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet notices: cannot listen; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                backoff = Duration::from_millis(250);
                let resync = Delivered {
                    notice: Notice::Resync,
                    latency: None,
                    received_at_us: now_us(),
                };
                if tx.send(resync).await.is_err() {
                    return;
                }
                loop {
                    let received = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = listener.try_recv() => r,
                    };
                    match received {
                        Ok(Some(n)) => {
                            if let Some(d) = decode(n.payload())
                                && tx.send(d).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("fleet notices: connection lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "fleet notices: error; reconnecting");
                            break;
                        }
                    }
                }
            }
        });
        rx
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn payloads_round_trip_and_unknown_kinds_are_ignored() {
        let notice = Notice::Kill {
            session_id: "s1".into(),
            reason: "x".repeat(5000),
        };
        let text = payload(&notice).unwrap();
        assert!(text.len() < 1200, "{}", text.len());
        let d = decode(&text).unwrap();
        assert_eq!(
            d.notice,
            Notice::Kill {
                session_id: "s1".into(),
                reason: crate::audit::truncate(&"x".repeat(5000), MAX_REASON_BYTES),
            }
        );
        assert!(d.latency.unwrap() < Duration::from_secs(5));
        let text = payload(&Notice::GrantRevoked {
            grant_id: "g".into(),
        })
        .unwrap();
        assert!(text.starts_with(r#"{"kind":"grant_revoked","grant_id":"g","sent_at_us":"#));
        assert_eq!(decode(r#"{"kind":"teleport","sent_at_us":1}"#), None);
        assert_eq!(decode("not json"), None);
    }
}
