//! The byte pump of a running session: process output to the channel and
//! the recording, channel input to the process, resizes and signals, until
//! the process exits, the client leaves or the gateway shuts down.

use std::time::Duration;

use russh::ChannelId;
use russh::server::Handle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Gateway;
use super::session::ChannelInput;
use crate::attach::{Attached, ExitStatus, InitWatch, SessionIo};
use crate::audit::AuditEvent;
use crate::session::record::SessionRecord;

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
const STOP_DETECT_MIN: Duration = Duration::from_millis(500);

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// How a session ended.
pub(super) struct Outcome {
    /// The process's exit, `None` when it could not be learnt.
    pub exit: Option<ExitStatus>,
    /// True when the container's init exited during the session.
    pub container_stopped: bool,
}

/// Both ends of a session and what may end it: the client's channel, the
/// container (its name, for messages, and a watch on its init), the audit
/// trail, and the kill switch of `sessions kill`.
pub(super) struct Ends<'a> {
    /// Handle to send data back to the client.
    pub handle: &'a Handle,
    /// The channel.
    pub channel: ChannelId,
    /// Container name.
    pub container: &'a str,
    /// Resolves when the container's init exits.
    pub init: &'a InitWatch,
    /// Receives a reason when an admin ends the session.
    pub kill: crate::session::Ending<'a>,
}

enum Control {
    Resize { cols: u16, rows: u16 },
    Signal(i32),
    Closed,
}

/// Moves bytes between the channel and the process, records output, and
/// returns how the process ended. When the container stops (its init
/// exits), the session ends with a message saying so.
pub(super) async fn pump(
    gateway: &Gateway,
    ends: Ends<'_>,
    mut attached: Attached,
    io: SessionIo,
    recorder: &mut SessionRecord,
    input: mpsc::Receiver<ChannelInput>,
) -> Outcome {
    let (record_tx, mut record_input) = mpsc::unbounded_channel::<Vec<u8>>();
    let Ends {
        handle,
        channel,
        container,
        init,
        mut kill,
    } = ends;
    // Input goes to the recorder only when it records input: no copy of
    // every keystroke (or upload) otherwise.
    let mut recording_input = recorder.records_input();
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
    let stdin_task = tokio::spawn(feed_stdin(input, stdin, control_tx, record_tx));

    let mut stdout = Some(stdout);
    let mut stderr = stderr;
    let mut out_buf = vec![
        0u8;
        if stderr.is_some() {
            CHUNK_BYTES
        } else {
            PTY_CHUNK_BYTES
        }
    ];
    // A PTY session has no separate stderr: no buffer for it.
    let mut err_buf = if stderr.is_some() {
        vec![0u8; CHUNK_BYTES]
    } else {
        Vec::new()
    };
    let mut exit: Option<ExitStatus> = None;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut ended_by: Option<String> = None;
    let mut container_stopped = false;

    loop {
        if exit.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buf) => match read {
                Some(n) => {
                    if recorder.output(&out_buf[..n]).await.is_err() {
                        ended_by = Some(RECORDING_FAILED.into());
                        break;
                    }
                    if handle.data(channel, out_buf[..n].to_vec()).await.is_err() {
                        ended_by = Some(DISCONNECTED.into());
                        break;
                    }
                }
                None => stdout = None,
            },
            read = read_some(&mut stderr, &mut err_buf) => match read {
                Some(n) => {
                    if recorder.output(&err_buf[..n]).await.is_err() {
                        ended_by = Some(RECORDING_FAILED.into());
                        break;
                    }
                    if handle.extended_data(channel, 1, err_buf[..n].to_vec()).await.is_err() {
                        ended_by = Some(DISCONNECTED.into());
                        break;
                    }
                }
                None => stderr = None,
            },
            bytes = record_input.recv(), if recording_input => match bytes {
                Some(bytes) => {
                    if recorder.input(&bytes).await.is_err() {
                        ended_by = Some(RECORDING_FAILED.into());
                        break;
                    }
                }
                // The stdin task ended: nothing more to record.
                None => recording_input = false,
            },
            event = control.recv() => match event {
                Some(Control::Resize { cols, rows }) => {
                    let _ = attached.resize(cols, rows);
                    if recorder.resize(u32::from(cols), u32::from(rows)).await.is_err() {
                        ended_by = Some(RECORDING_FAILED.into());
                        break;
                    }
                }
                Some(Control::Signal(signal)) => {
                    let _ = attached.signal(signal);
                }
                Some(Control::Closed) | None => {
                    if exit.is_none() {
                        ended_by = Some(DISCONNECTED.into());
                        break;
                    }
                }
            },
            status = attached.wait(), if exit.is_none() => {
                match status {
                    Ok(status) => exit = Some(status),
                    Err(e) => {
                        tracing::error!(error = %e, "lost the session process");
                        ended_by = Some("the gateway lost the session process".into());
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
            _ = gateway.shutdown.cancelled() => {
                ended_by = Some("the gateway is shutting down".into());
                break;
            }
            reason = kill.wait() => {
                ended_by = Some(reason.to_string());
                break;
            }
        }
    }
    stdin_task.abort();

    // A stopping container kills the session before its init exits (the
    // kernel reaps the PID namespace first; a clean shutdown signals the
    // processes first): after a death by signal, wait a moment for the init.
    if !container_stopped && ended_by.is_none() && matches!(exit, Some(ExitStatus::Signal { .. })) {
        let wait = gateway.config.session.kill_grace.max(STOP_DETECT_MIN);
        container_stopped = tokio::time::timeout(wait, init.exited()).await.is_ok();
    }
    if container_stopped && ended_by.as_deref() != Some(DISCONNECTED) {
        ended_by = None;
        let text = format!("\r\nPortcullis: session ended: the container {container} stopped.\r\n");
        let _ = handle.extended_data(channel, 1, text.into_bytes()).await;
        if exit.is_none() {
            match attached.terminate(gateway.config.session.kill_grace).await {
                Ok(status) => exit = Some(status),
                Err(e) => tracing::error!(error = %e, "cannot end the session process"),
            }
        }
    }
    if let Some(reason) = ended_by {
        if reason != DISCONNECTED {
            let text = format!("\r\nPortcullis: session ended: {reason}.\r\n");
            let _ = handle.extended_data(channel, 1, text.into_bytes()).await;
        }
        if exit.is_none() {
            let _ = recorder
                .audit(AuditEvent::SessionTerminated {
                    reason: reason.clone(),
                })
                .await;
        }
        if exit.is_none() {
            match attached.terminate(gateway.config.session.kill_grace).await {
                Ok(status) => exit = Some(status),
                Err(e) => tracing::error!(error = %e, "cannot end the session process"),
            }
        }
    }
    match exit {
        Some(ExitStatus::Code(code)) => {
            let _ = handle.exit_status_request(channel, code as u32).await;
        }
        Some(ExitStatus::Signal {
            signal,
            core_dumped,
        }) => {
            let _ = handle
                .exit_signal_request(
                    channel,
                    russh_signal(signal),
                    core_dumped,
                    String::new(),
                    String::new(),
                )
                .await;
        }
        None => {}
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
    Outcome {
        exit,
        container_stopped,
    }
}

/// `ended_by` when the client went away (no message to send).
const DISCONNECTED: &str = "disconnected";

/// `ended_by` when the recording failed under `on_failure = "terminate"`.
const RECORDING_FAILED: &str = "the session recording failed";

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

/// Writes client data to the process's stdin, in its own task so a process
/// that does not read its input never stalls its output.
async fn feed_stdin(
    mut input: mpsc::Receiver<ChannelInput>,
    stdin: Writer,
    control: mpsc::UnboundedSender<Control>,
    record: Option<mpsc::UnboundedSender<Vec<u8>>>,
) {
    let mut stdin = Some(stdin);
    while let Some(event) = input.recv().await {
        match event {
            ChannelInput::Data(bytes) => {
                if let Some(w) = stdin.as_mut() {
                    if let Some(record) = &record {
                        let _ = record.send(bytes.clone());
                    }
                    if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                        stdin = None;
                    }
                }
            }
            ChannelInput::Eof => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            ChannelInput::Close => {
                let _ = control.send(Control::Closed);
                return;
            }
            ChannelInput::Resize { cols, rows } => {
                let _ = control.send(Control::Resize { cols, rows });
            }
            ChannelInput::Signal(s) => {
                let _ = control.send(Control::Signal(s));
            }
        }
    }
    // The handler is gone: the connection dropped.
    let _ = control.send(Control::Closed);
}

/// `signal` as russh sends it: the RFC 4254 name is all that goes on the
/// wire, so a custom signal of the name is the same message.
fn russh_signal(signal: i32) -> russh::Sig {
    russh::Sig::Custom(crate::session::signal::name(signal))
}
