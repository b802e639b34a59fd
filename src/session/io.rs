//! A session's byte I/O as the core sees it, with nothing of SSH in it, so
//! every front end drives the same core: the ssh channels, `portcullis
//! attach` on the host's terminal, and later the fleet relay and the web
//! console.
//!
//! - Client → process: an [`input_queue`] bounded in bytes. A front end
//!   that must never wait (the russh connection loop, which also reads
//!   window adjusts, EOF and CLOSE) uses [`InputSender::try_send`]; one
//!   that may (a local terminal, a relay) uses [`InputSender::send`]. The
//!   session reports each chunk it delivered to the process with
//!   [`InputReceiver::consumed`], which frees room and calls the front
//!   end's [`Credit`] (an SSH front end grants window then: back-pressure
//!   goes to the client, never into the front end's loop).
//! - Process → client: the [`Output`] a front end gives the session.
//!   Writes wait for the client (its window), and the session keeps
//!   watching for its end while they do.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{EndReason, Refusal};
use crate::attach::ExitStatus;

/// An event from the client for a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the process's stdin.
    Data(Vec<u8>),
    /// The client sends no more data.
    Eof,
    /// The client's terminal changed size, in character cells.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The client asked to signal the process (a signal number).
    Signal(i32),
}

/// Bytes a control event ([`Input::Resize`], [`Input::Signal`], EOF)
/// counts for against the queue's limit, so a flood of them is bounded too.
const CONTROL_EVENT_BYTES: usize = 64;

/// Consumed bytes reported to the [`Credit`] at once (fewer, larger
/// window adjusts), unless the queue runs empty first.
const CREDIT_BATCH_BYTES: usize = 64 * 1024;

/// Told how many bytes the session consumed (delivered to the process),
/// in batches: an SSH front end grants the client that much window again.
pub type Credit = Box<dyn Fn(u32) + Send + Sync>;

/// Why [`InputSender::try_send`] did not queue an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputRefused {
    /// The queue holds its limit: a client that respected its window
    /// cannot get here (RFC 4254 §5.2 lets the receiver drop such data).
    #[error("the session's input queue is full")]
    Full,
    /// The session is over.
    #[error("the session has ended")]
    Ended,
}

struct State {
    items: VecDeque<Input>,
    /// Bytes queued or delivered but not yet reported consumed.
    held: usize,
    /// Consumed bytes not yet reported to the credit.
    unreported: usize,
    /// The front end closed the input (the client went away).
    closed: bool,
    /// The session dropped its receiver.
    ended: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the receiver: an event or the close.
    ready: Notify,
    /// Wakes senders: room, or the session ended.
    room: Notify,
    limit: usize,
    credit: Option<Credit>,
}

fn cost(input: &Input) -> usize {
    match input {
        Input::Data(d) => d.len(),
        _ => CONTROL_EVENT_BYTES,
    }
}

/// A queue of client input holding at most `limit` bytes (data, plus a
/// small count per control event) until the session reports them
/// consumed; `credit` hears of consumed bytes.
pub fn input_queue(limit: usize, credit: Option<Credit>) -> (InputSender, InputReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            held: 0,
            unreported: 0,
            closed: false,
            ended: false,
        }),
        ready: Notify::new(),
        room: Notify::new(),
        limit,
        credit,
    });
    (
        InputSender {
            shared: shared.clone(),
        },
        InputReceiver { shared },
    )
}

/// The front end's end of an [`input_queue`]. Dropping it closes the input
/// (the client went away).
pub struct InputSender {
    shared: Arc<Shared>,
}

impl InputSender {
    /// Queues `input` without ever waiting.
    ///
    /// # Errors
    /// [`InputRefused::Full`] when it does not fit (nothing is queued),
    /// [`InputRefused::Ended`] when the session is over.
    pub fn try_send(&self, input: Input) -> Result<(), InputRefused> {
        let Ok(mut state) = self.shared.state.lock() else {
            return Err(InputRefused::Ended);
        };
        if state.ended || state.closed {
            return Err(InputRefused::Ended);
        }
        let cost = cost(&input);
        if state.held.saturating_add(cost) > self.shared.limit {
            return Err(InputRefused::Full);
        }
        state.held += cost;
        state.items.push_back(input);
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Queues `input`, waiting for room.
    ///
    /// # Errors
    /// [`InputRefused::Ended`] when the session is over (or the input was
    /// closed).
    pub async fn send(&self, input: Input) -> Result<(), InputRefused> {
        let mut input = Some(input);
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let Ok(mut state) = self.shared.state.lock() else {
                    return Err(InputRefused::Ended);
                };
                if state.ended || state.closed {
                    return Err(InputRefused::Ended);
                }
                let Some(item) = input.take() else {
                    return Ok(());
                };
                let cost = cost(&item);
                // One item larger than the limit still goes in, alone.
                if state.held == 0 || state.held.saturating_add(cost) <= self.shared.limit {
                    state.held += cost;
                    state.items.push_back(item);
                    drop(state);
                    self.shared.ready.notify_one();
                    return Ok(());
                }
                input = Some(item);
            }
            room.await;
        }
    }

    /// Closes the input: the client went away (or closed the channel).
    pub fn close(&self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closed = true;
        }
        self.shared.ready.notify_one();
        self.shared.room.notify_waiters();
    }

    /// True once the session dropped its receiver (it ended).
    pub fn is_ended(&self) -> bool {
        self.shared.state.lock().map(|s| s.ended).unwrap_or(true)
    }
}

impl Drop for InputSender {
    fn drop(&mut self) {
        self.close();
    }
}

/// The session's end of an [`input_queue`]. Dropping it tells the front
/// end the session is over.
pub struct InputReceiver {
    shared: Arc<Shared>,
}

impl InputReceiver {
    /// The next event; `None` once the input is closed and drained (the
    /// client went away). Cancel-safe.
    pub async fn recv(&mut self) -> Option<Input> {
        loop {
            let ready = self.shared.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let Ok(mut state) = self.shared.state.lock() else {
                    return None;
                };
                if let Some(item) = state.items.pop_front() {
                    // Control events are consumed once taken.
                    if !matches!(item, Input::Data(_)) {
                        state.held = state.held.saturating_sub(CONTROL_EVENT_BYTES);
                        drop(state);
                        self.shared.room.notify_waiters();
                    }
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// Reports `bytes` of data (from [`Input::Data`]) delivered to the
    /// process: frees that much room and, in batches, tells the credit.
    pub fn consumed(&self, bytes: usize) {
        let report = {
            let Ok(mut state) = self.shared.state.lock() else {
                return;
            };
            state.held = state.held.saturating_sub(bytes);
            state.unreported += bytes;
            let due = state.unreported >= CREDIT_BATCH_BYTES || state.items.is_empty();
            if due {
                std::mem::take(&mut state.unreported)
            } else {
                0
            }
        };
        self.shared.room.notify_waiters();
        if report > 0
            && let Some(credit) = &self.shared.credit
        {
            credit(u32::try_from(report).unwrap_or(u32::MAX));
        }
    }
}

impl Drop for InputReceiver {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.ended = true;
            state.items.clear();
        }
        self.shared.room.notify_waiters();
    }
}

/// A write to the client in flight (one at a time per session).
pub(crate) type Sending<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(), ClientGone>> + Send + 'a>>;

/// Resolves with the in-flight write's result; never while there is none.
pub(crate) async fn sent(sending: &mut Option<Sending<'_>>) -> Result<(), ClientGone> {
    match sending {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Starts `write` and polls it once: most writes complete at once (the
/// client's window has room), and then need no turn of the session's loop.
/// Returns the write still in flight, or its result.
pub(crate) async fn start_write(mut write: Sending<'_>) -> Result<Option<Sending<'_>>, ClientGone> {
    tokio::select! {
        biased;
        done = &mut write => done.map(|()| None),
        () = std::future::ready(()) => Ok(Some(write)),
    }
}

/// The client did not take the bytes: it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client is gone")]
pub struct ClientGone;

/// Where a session's output goes, and how its client is told about its
/// end; given to the session by its front end. Writes take `&self`: the
/// session keeps one in flight while it watches for its end.
pub trait Output: Send + Sync {
    /// Sends bytes of the process's stdout; waits until the client can
    /// take them (its window). Dropping the future may lose them (only
    /// done when the session ends).
    ///
    /// # Errors
    /// [`ClientGone`].
    fn stdout(&self, bytes: Vec<u8>) -> impl Future<Output = Result<(), ClientGone>> + Send;

    /// Sends bytes of the process's stderr (or a notice for the user), as
    /// [`Output::stdout`].
    ///
    /// # Errors
    /// [`ClientGone`].
    fn stderr(&self, bytes: Vec<u8>) -> impl Future<Output = Result<(), ClientGone>> + Send;

    /// Sends a notice of the gateway's own for the user (a grant ending
    /// soon): not the session's output, never recorded. On stderr unless
    /// the front end tells notices apart (a fleet node does, for the
    /// edge's witness).
    ///
    /// # Errors
    /// [`ClientGone`].
    fn notice(&self, bytes: Vec<u8>) -> impl Future<Output = Result<(), ClientGone>> + Send {
        self.stderr(bytes)
    }

    /// No more output will follow (a forward's destination closed its
    /// side); input may still come.
    fn eof(&self) -> impl Future<Output = ()> + Send;

    /// Tells the user why the gateway ended the session ("session ended:
    /// REASON."), if the client takes it within a short while.
    fn ended(&self, reason: &EndReason) -> impl Future<Output = ()> + Send;

    /// The process's exit (when known), then end of output and close.
    /// Never waits on the client's window.
    fn finish(self, exit: Option<ExitStatus>) -> impl Future<Output = ()> + Send;

    /// The refusal to start the session, shown to the user, then exit
    /// status 1 and close.
    fn refuse(self, refusal: &Refusal) -> impl Future<Output = ()> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn try_send_never_waits_and_holds_at_most_the_limit() {
        let (tx, mut rx) = input_queue(10, None);
        tx.try_send(Input::Data(vec![1; 6])).unwrap();
        assert_eq!(
            tx.try_send(Input::Data(vec![2; 6])),
            Err(InputRefused::Full)
        );
        tx.try_send(Input::Data(vec![3; 4])).unwrap();
        assert_eq!(rx.recv().await, Some(Input::Data(vec![1; 6])));
        // Taken but not yet consumed: still held.
        assert_eq!(
            tx.try_send(Input::Data(vec![4; 6])),
            Err(InputRefused::Full)
        );
        rx.consumed(6);
        tx.try_send(Input::Data(vec![4; 6])).unwrap();
    }

    #[tokio::test]
    async fn consumed_bytes_are_credited_in_batches_or_when_drained() {
        let credited = Arc::new(AtomicU32::new(0));
        let c = credited.clone();
        let credit: Credit = Box::new(move |n| {
            c.fetch_add(n, Ordering::SeqCst);
        });
        let (tx, mut rx) = input_queue(1 << 20, Some(credit));
        for _ in 0..3 {
            tx.try_send(Input::Data(vec![0; 1000])).unwrap();
        }
        let _ = rx.recv().await;
        rx.consumed(1000);
        // Two more queued, below a batch: not reported yet.
        assert_eq!(credited.load(Ordering::SeqCst), 0);
        let _ = rx.recv().await;
        rx.consumed(1000);
        let _ = rx.recv().await;
        rx.consumed(1000);
        assert_eq!(credited.load(Ordering::SeqCst), 3000);
    }

    #[tokio::test]
    async fn send_waits_for_room_and_close_ends_the_receiver() {
        let (tx, mut rx) = input_queue(4, None);
        tx.send(Input::Data(vec![1; 4])).await.unwrap();
        let tx = Arc::new(tx);
        let t = tx.clone();
        let waiting = tokio::spawn(async move { t.send(Input::Data(vec![2; 4])).await });
        assert_eq!(rx.recv().await, Some(Input::Data(vec![1; 4])));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        rx.consumed(4);
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(Input::Data(vec![2; 4])));
        tx.close();
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn the_sender_learns_the_session_ended() {
        let (tx, rx) = input_queue(4, None);
        assert!(!tx.is_ended());
        drop(rx);
        assert!(tx.is_ended());
        assert_eq!(tx.try_send(Input::Eof), Err(InputRefused::Ended));
    }
}
