//! The byte pump of a running shell or command: process output to the
//! record and the client, client input to the process, resizes and
//! signals, until the process exits, the client leaves, or something ends
//! the session ([`EndReason`]).
//!
//! The pump never stops watching for its end: a write to a client that
//! stopped reading is one of the things it waits on, not a wait that
//! blinds it, so a kill ends the session within its grace either way.
//! Input is written to the process by a task of its own, so a process that
//! does not read its input never stalls its output.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::EndReason;
use super::io::{Input, InputReceiver, Output, Sending, sent, start_write};
use super::live::Ending;
use super::record::SessionRecord;
use crate::attach::{Attached, End, ExitStatus, InitWatch, Leftovers, SessionIo};
use crate::audit::AuditEvent;
use crate::recording::Marker;

/// Bytes read from the process's pipes per chunk.
const CHUNK_BYTES: usize = 32 * 1024;

/// Bytes read from a PTY master per chunk: Linux's line discipline hands
/// out at most its 4 KiB buffer (`N_TTY_BUF_SIZE`) per read, so a larger
/// buffer would only hold idle memory in every interactive session.
const PTY_CHUNK_BYTES: usize = 4 * 1024;

/// After the process exits, how long to keep reading output that
/// background processes may still write.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Shortest time waited, after a session died by a signal, for the init to
/// exit before deciding the container did not stop.
pub(crate) const STOP_DETECT_MIN: Duration = Duration::from_millis(500);

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Everything a pump runs with.
pub(crate) struct Pump<'a, O> {
    /// The session process.
    pub attached: Attached,
    /// Its PTY or pipes.
    pub io: SessionIo,
    /// The session's record (output, input, resizes; audit events).
    pub record: &'a mut SessionRecord,
    /// Client input.
    pub input: InputReceiver,
    /// Where output goes.
    pub output: &'a O,
    /// Resolves when the container's init exits.
    pub init: &'a InitWatch,
    /// The container, for the reason shown when it stops.
    pub container: &'a str,
    /// Ends the session when something asks (live registry).
    pub ending: Option<Ending<'a>>,
    /// Cancelled when the gateway shuts down.
    pub shutdown: Option<&'a CancellationToken>,
    /// Lines to show the user on stderr (grant warnings).
    pub notices: Option<mpsc::Receiver<String>>,
    /// How long an ended process gets between SIGHUP and SIGKILL.
    pub kill_grace: Duration,
    /// What a normal end (the process exited, the client went away) does
    /// with the session's other processes ([`super::end::normal_leftovers`]).
    pub leftovers: Leftovers,
    /// After a death by signal, how long to wait for the init to exit
    /// before deciding the container did not stop.
    pub stop_wait: Duration,
    /// Ends the session after this long without client input or process
    /// output (`session.idle_timeout`); SSH keepalives are neither.
    pub idle_timeout: Option<Duration>,
    /// Ends the session this long after it started
    /// (`session.max_duration`).
    pub max_duration: Option<Duration>,
}

/// How the session ended.
pub(crate) struct Outcome {
    /// The process's exit, `None` when it could not be learnt.
    pub exit: Option<ExitStatus>,
    /// Why the gateway ended it, when it did.
    pub ended_by: Option<EndReason>,
    /// True when the container's init exited during the session.
    pub container_stopped: bool,
}

/// When client input last reached the process, in milliseconds since the
/// pump started: written by the stdin task on every chunk, read by the
/// pump only when its idle deadline passes (a message per chunk would wake
/// the pump once per input packet).
#[derive(Clone)]
struct InputClock {
    started: tokio::time::Instant,
    last_ms: Arc<AtomicU64>,
}

impl InputClock {
    fn new(started: tokio::time::Instant) -> Self {
        Self {
            started,
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Notes input now.
    fn tick(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When input last arrived (the pump's start if none has).
    fn last(&self) -> tokio::time::Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

enum Control {
    Resize { cols: u16, rows: u16 },
    Signal(i32),
    Closed,
}

/// Moves bytes until the session ends; then ends the process (after
/// auditing why, when the gateway ended it) and returns how it ended.
/// Telling the client is left to the caller.
pub(crate) async fn pump<O: Output>(p: Pump<'_, O>) -> Outcome {
    let Pump {
        mut attached,
        io,
        record,
        input,
        output,
        init,
        container,
        mut ending,
        shutdown,
        mut notices,
        kill_grace,
        leftovers,
        stop_wait,
        idle_timeout,
        max_duration,
    } = p;
    let started = tokio::time::Instant::now();
    let max_at = max_duration.map(|d| started + d);
    let mut active_at = started;
    let (record_tx, mut record_input) = mpsc::unbounded_channel::<Vec<u8>>();
    // Input goes to the record only when it records input: no copy of
    // every keystroke (or upload) otherwise.
    let mut recording_input = record.records_input();
    let record_tx = recording_input.then_some(record_tx);
    let (stdout, stderr, stdin): (Reader, Option<Reader>, Writer) = match io {
        SessionIo::Pty(master) => {
            let (r, w) = tokio::io::split(master);
            (Box::new(r), None, Box::new(w))
        }
        SessionIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => (Box::new(stdout), Some(Box::new(stderr)), Box::new(stdin)),
    };
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let input_clock = InputClock::new(started);
    let stdin_task = tokio::spawn(feed_stdin(
        input,
        stdin,
        control_tx,
        record_tx,
        input_clock.clone(),
    ));

    let mut stdout = Some(stdout);
    let mut stderr = stderr;
    let chunk = if stderr.is_some() {
        CHUNK_BYTES
    } else {
        PTY_CHUNK_BYTES
    };
    let mut out_buf = vec![0u8; chunk];
    // A PTY session has no separate stderr: no buffer for it.
    let mut err_buf = if stderr.is_some() {
        vec![0u8; CHUNK_BYTES]
    } else {
        Vec::new()
    };
    let mut exit: Option<ExitStatus> = None;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut ended_by: Option<EndReason> = None;
    let mut container_stopped = false;
    // The one write to the client in flight; reads wait while it is.
    let mut sending: Option<Sending<'_>> = None;
    let mut pending_notices: Vec<String> = Vec::new();

    loop {
        if sending.is_none()
            && let Some(text) = pending_notices.pop()
        {
            sending = Some(Box::pin(output.notice(text.into_bytes())));
        }
        if exit.is_some() && stdout.is_none() && stderr.is_none() && sending.is_none() {
            break;
        }
        let idle = sending.is_none();
        let idle_at = idle_timeout
            .filter(|_| exit.is_none())
            .map(|d| active_at + d);
        tokio::select! {
            result = sent(&mut sending) => {
                sending = None;
                if result.is_err() {
                    ended_by = Some(EndReason::ClientGone);
                    break;
                }
            }
            read = read_some(&mut stdout, &mut out_buf), if idle => match read {
                Some(n) => {
                    active_at = tokio::time::Instant::now();
                    if let Err(stopped) = record.output(&out_buf[..n]).await {
                        ended_by = Some(stopped.reason);
                        break;
                    }
                    match start_write(Box::pin(output.stdout(out_buf[..n].to_vec()))).await {
                        Ok(in_flight) => sending = in_flight,
                        Err(_) => {
                            ended_by = Some(EndReason::ClientGone);
                            break;
                        }
                    }
                }
                None => stdout = None,
            },
            read = read_some(&mut stderr, &mut err_buf), if idle => match read {
                Some(n) => {
                    active_at = tokio::time::Instant::now();
                    if let Err(stopped) = record.output(&err_buf[..n]).await {
                        ended_by = Some(stopped.reason);
                        break;
                    }
                    match start_write(Box::pin(output.stderr(err_buf[..n].to_vec()))).await {
                        Ok(in_flight) => sending = in_flight,
                        Err(_) => {
                            ended_by = Some(EndReason::ClientGone);
                            break;
                        }
                    }
                }
                None => stderr = None,
            },
            bytes = record_input.recv(), if recording_input => match bytes {
                Some(bytes) => {
                    if let Err(stopped) = record.input(&bytes).await {
                        ended_by = Some(stopped.reason);
                        break;
                    }
                }
                // The stdin task ended: nothing more to record.
                None => recording_input = false,
            },
            event = control.recv() => match event {
                Some(Control::Resize { cols, rows }) => {
                    let _ = attached.resize(cols, rows);
                    if let Err(stopped) = record.resize(u32::from(cols), u32::from(rows)).await {
                        ended_by = Some(stopped.reason);
                        break;
                    }
                }
                Some(Control::Signal(signal)) => {
                    let name = super::signal::name(signal);
                    if let Err(stopped) = record.marker(&Marker::Signal { name: &name }).await {
                        ended_by = Some(stopped.reason);
                        break;
                    }
                    let _ = attached.signal(signal);
                }
                Some(Control::Closed) | None => {
                    if exit.is_none() {
                        ended_by = Some(EndReason::ClientGone);
                        break;
                    }
                }
            },
            status = attached.wait(), if exit.is_none() => {
                match status {
                    Ok(status) => exit = Some(status),
                    Err(e) => {
                        tracing::error!(error = %e, "lost the session process");
                        ended_by = Some(EndReason::ProcessLost);
                        break;
                    }
                }
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = init.exited(), if !container_stopped => {
                container_stopped = true;
                if exit.is_none() {
                    break;
                }
            }
            _ = sleep_until(drain_deadline) => break,
            _ = sleep_until(idle_at) => {
                // Input since the deadline was set moves it on.
                let input_at = input_clock.last();
                if input_at > active_at {
                    active_at = input_at;
                    continue;
                }
                ended_by = idle_timeout.map(EndReason::IdleTimeout);
                break;
            }
            _ = sleep_until(max_at.filter(|_| exit.is_none())) => {
                ended_by = max_duration.map(EndReason::MaxDuration);
                break;
            }
            _ = cancelled(shutdown) => {
                ended_by = Some(EndReason::Shutdown);
                break;
            }
            reason = wait_ending(&mut ending) => {
                ended_by = Some(reason);
                break;
            }
            text = next_notice(&mut notices) => match text {
                Some(text) => pending_notices.insert(0, text),
                None => notices = None,
            },
        }
    }
    drop(sending);
    stdin_task.abort();

    // A stopping container kills the session before its init exits (the
    // kernel reaps the PID namespace first; a clean shutdown signals the
    // processes first): after a death by signal, wait a moment for the init.
    if !container_stopped && ended_by.is_none() && matches!(exit, Some(ExitStatus::Signal { .. })) {
        container_stopped = tokio::time::timeout(stop_wait, init.exited()).await.is_ok();
    }
    if container_stopped && ended_by != Some(EndReason::ClientGone) {
        ended_by = Some(EndReason::ContainerStopped {
            container: container.to_string(),
        });
    }
    if let Some(reason) = &ended_by
        && exit.is_none()
    {
        // Audited before the action; a stopped container is audited as
        // such by the caller.
        if !matches!(reason, EndReason::ContainerStopped { .. }) {
            let _ = record
                .audit(AuditEvent::SessionTerminated {
                    reason: reason.to_string(),
                })
                .await;
        }
        record.mark_end(reason).await;
    }
    // Every end ends every process the session started (its cgroup):
    // `setsid`, `nohup` and double forks included (issue 12), but for a
    // normal end in a container that keeps them.
    let end = match &ended_by {
        Some(reason) => super::end::attach_end(reason, kill_grace, leftovers),
        None => End::Normal {
            grace: kill_grace,
            leftovers,
        },
    };
    match attached.end(end).await {
        Ok(ended) => {
            if ended.kept {
                tracing::info!(container, "the session's other processes were kept");
            }
            exit = exit.or(Some(ended.status));
        }
        Err(e) => tracing::error!(error = %e, "cannot end the session's processes"),
    }
    Outcome {
        exit,
        ended_by,
        container_stopped,
    }
}

async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn wait_ending(ending: &mut Option<Ending<'_>>) -> EndReason {
    match ending {
        Some(e) => e.wait().await,
        None => std::future::pending().await,
    }
}

async fn next_notice(notices: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match notices {
        Some(n) => n.recv().await,
        None => std::future::pending().await,
    }
}

async fn read_some(reader: &mut Option<Reader>, buf: &mut [u8]) -> Option<usize> {
    match reader {
        // EIO on a PTY master means every slave fd is closed: end of output.
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes client data to the process's stdin and reports it consumed
/// (which lets the client send more); forwards resizes and signals.
async fn feed_stdin(
    mut input: InputReceiver,
    stdin: Writer,
    control: mpsc::UnboundedSender<Control>,
    record: Option<mpsc::UnboundedSender<Vec<u8>>>,
    clock: InputClock,
) {
    let mut stdin = Some(stdin);
    while let Some(event) = input.recv().await {
        match event {
            Input::Data(bytes) => {
                let n = bytes.len();
                clock.tick();
                if let Some(w) = stdin.as_mut() {
                    if let Some(record) = &record {
                        let _ = record.send(bytes.clone());
                    }
                    if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                        stdin = None;
                    }
                }
                input.consumed(n);
            }
            Input::Eof => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            Input::Resize { cols, rows } => {
                let _ = control.send(Control::Resize { cols, rows });
            }
            Input::Signal(s) => {
                let _ = control.send(Control::Signal(s));
            }
        }
    }
    // The input is closed: the client went away.
    let _ = control.send(Control::Closed);
}
