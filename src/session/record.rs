//! The record of one session: its row, its `session_start` and
//! `session_end` audit events and its recording (asciicast v2), for every
//! front end alike.
//!
//! - Opening is all or nothing: the recording file is created, then the
//!   `running` row and its `SessionStarted` event are committed in one
//!   transaction ([`AuditLog::record_session_start`]); when that fails the
//!   file is removed and nothing of the session remains.
//! - Closing finishes the recording, then closes the row and appends its
//!   `SessionEnded` event (or `SessionFailed`) in one transaction
//!   ([`AuditLog::record_session_end`]). When that fails the row stays
//!   `running` (never closed without its event); the next start of the
//!   gateway marks it `interrupted`, with its event.
//! - Exit signals are named by [`super::signal`] (`KILL`), whoever started
//!   the session.
//!
//! - Before anything is created the node's [`Recordings`] are asked
//!   whether a recording may start (free space, spool bound): when not, the
//!   session is refused with a clear message and a `recording` event
//!   (`action: refuse`), fail closed.
//! - Markers (asciicast `m` events, issue 15 point 3): the start (or the
//!   exec command, or the forward's destination), each resize, signal and
//!   file transferred, the kill or lock that ended the session, its exit.
//!
//! This is the only place that calls the recorder ([`Recorder`]) and the
//! transcript reader: `recording.on_failure` (terminate or continue) is
//! applied here, a recording that reached `recording.max_bytes` ends the
//! session with that reason (kept, finished, up to its limit's marker),
//! and the transcript and markers are indexed for search after the close,
//! read through [`Recordings::open`] (the upload may already have moved
//! the recording to object storage).

use std::path::{Path, PathBuf};

use super::{EndReason, Refusal};
use crate::attach::{ExitStatus, PtyRequest};
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::config::{Config, RecordingFailure};
use crate::gateway::Gateway;
use crate::recording::{
    Digest256, Header, Marker, MarkerTap, Recorder, RecordingError, Recordings, SessionMetadata,
    StartRefused, TransferDirection,
};
use crate::store::{NewSession, SessionEnd, Store, StoreError};

/// Largest recording indexed for `sessions search`, in bytes (64 MiB).
const MAX_INDEXED_RECORDING_BYTES: u64 = 64 * 1024 * 1024;

/// A failed step of opening a session's record; nothing of it remains.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The recording file could not be created.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The row and its start event could not be committed.
    #[error("cannot write the session row and its start event: {0}")]
    Store(#[from] StoreError),
    /// No recording may start now (low disk, full spool); audited.
    #[error("no recording may start: {}", .0.detail())]
    Refused(StartRefused),
}

impl RecordError {
    /// The refusal the user reads (no paths, no internals).
    pub fn refusal(&self) -> Refusal {
        match self {
            RecordError::Recording(_) => Refusal::recording_unavailable(),
            RecordError::Store(_) => Refusal::audit_unavailable(),
            RecordError::Refused(why) => Refusal::new(format!("Access refused: {why}.")),
        }
    }
}

/// What a new session's record says.
#[derive(Debug, Clone)]
pub struct RecordStart<'a> {
    /// The principal's subject (`host:uid=N` for `portcullis attach`).
    pub principal: &'a str,
    /// The principal's email, when known.
    pub email: Option<&'a str>,
    /// Client `ip:port` (`local` for `portcullis attach`).
    pub client_addr: &'a str,
    /// The container.
    pub container: &'a str,
    /// Login inside the container.
    pub login: &'a str,
    /// The command (exec, `sftp`, `direct-tcpip HOST:PORT`); `None` for a
    /// shell.
    pub command: Option<&'a str>,
    /// The PTY: its size is the header's (80x24 without one).
    pub pty: Option<&'a PtyRequest>,
    /// Put the PTY's `TERM` in the header's `env`.
    pub term_in_header: bool,
    /// The grant the session depends on (stored on its row).
    pub grant_id: Option<&'a str>,
    /// Record input (`i` events) too, as `recording.record_input` says.
    pub record_input: bool,
    /// Index the transcript for `sessions search` once it ends (terminal
    /// sessions; transfers and forwards have header-only recordings).
    pub index: bool,
}

/// The recording stopped and `recording.on_failure = "terminate"` (or the
/// failure could not be audited): the session must end, for `reason`
/// ([`EndReason::RecordingLimit`] or [`EndReason::RecordingFailed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingStopped {
    /// Why the session ends.
    pub reason: EndReason,
}

/// Appends audit events about one session; for tasks that run beside
/// the session (the transfer server's reports).
#[derive(Clone)]
pub struct SessionAuditor {
    audit: AuditLog,
    id: String,
    principal: String,
    client_addr: String,
    markers: Option<MarkerTap>,
}

impl SessionAuditor {
    /// Appends `event` about the session; a `FileTransferred` event also
    /// marks the recording (`upload: PATH (N bytes)`), best effort.
    ///
    /// # Errors
    /// [`StoreError`]: the action it records must not go ahead.
    pub async fn record(&self, event: AuditEvent) -> Result<i64, StoreError> {
        let subject = AuditSubject {
            session_id: Some(&self.id),
            principal: Some(&self.principal),
            client_addr: Some(&self.client_addr),
        };
        let seq = self.audit.record(&subject, &event).await?;
        if let (
            Some(tap),
            AuditEvent::FileTransferred {
                path,
                direction,
                bytes,
                ..
            },
        ) = (&self.markers, &event)
        {
            let marker = Marker::FileTransferred {
                path,
                direction: match direction.as_str() {
                    "write" => TransferDirection::Upload,
                    _ => TransferDirection::Download,
                },
                bytes: u64::try_from(*bytes).unwrap_or(0),
            };
            if let Err(e) = tap.marker(&marker).await {
                tracing::warn!(error = %e, "cannot mark a file transfer in the recording");
            }
        }
        Ok(seq)
    }
}

/// The open record of a running session.
pub struct SessionRecord {
    id: String,
    principal: String,
    client_addr: String,
    container: String,
    audit: AuditLog,
    store: Store,
    recordings: Recordings,
    recorder: Option<Recorder>,
    /// The recording reached `max_bytes`: kept (and finished at the end)
    /// but given nothing more.
    limited: bool,
    path: PathBuf,
    on_failure: RecordingFailure,
    index: bool,
    /// Output bytes of the session (stdout and stderr), recorded or not.
    output_bytes: u64,
}

impl SessionRecord {
    /// Opens the record of a new session of the gateway `gw` (module
    /// docs): the start allowed by `gw.recordings`, the recording made by
    /// them (with its limits and upload), then the row and its start
    /// event.
    ///
    /// # Errors
    /// [`RecordError`]; then no file, row or event of it remains (a
    /// refusal leaves its audit event).
    pub async fn open_for(
        gw: &Gateway,
        start: &RecordStart<'_>,
    ) -> Result<SessionRecord, RecordError> {
        let id = uuid::Uuid::new_v4().to_string();
        SessionRecord::open_with_id(gw, start, id).await
    }

    /// [`SessionRecord::open_for`] with the session id given: a node uses
    /// the id the edge named in the relay certificate, so both agree on it.
    ///
    /// # Errors
    /// As [`SessionRecord::open_for`].
    pub async fn open_with_id(
        gw: &Gateway,
        start: &RecordStart<'_>,
        id: String,
    ) -> Result<SessionRecord, RecordError> {
        let on_failure = gw.config.recording.on_failure;
        SessionRecord::open_in(&gw.audit, &gw.store, &gw.recordings, on_failure, start, id).await
    }

    /// [`SessionRecord::open_for`] without a gateway (`portcullis
    /// attach`): the recordings of `config`, local only (no upload from
    /// the command's process).
    ///
    /// # Errors
    /// As [`SessionRecord::open_for`].
    pub async fn open(
        audit: &AuditLog,
        store: &Store,
        config: &Config,
        start: &RecordStart<'_>,
    ) -> Result<SessionRecord, RecordError> {
        let recordings = Recordings::local(config, store.clone());
        let on_failure = config.recording.on_failure;
        let id = uuid::Uuid::new_v4().to_string();
        SessionRecord::open_in(audit, store, &recordings, on_failure, start, id).await
    }

    async fn open_in(
        audit: &AuditLog,
        store: &Store,
        recordings: &Recordings,
        on_failure: RecordingFailure,
        start: &RecordStart<'_>,
        id: String,
    ) -> Result<SessionRecord, RecordError> {
        if let Err(refused) = recordings.may_start().await {
            tracing::error!(reason = %refused.detail(), "no recording may start; refusing");
            let subject = AuditSubject {
                session_id: None,
                principal: Some(start.principal),
                client_addr: Some(start.client_addr),
            };
            let event = AuditEvent::RecordingFailed {
                reason: format!(
                    "session to {} refused: {}",
                    start.container,
                    refused.detail()
                ),
                action: "refuse".to_string(),
            };
            audit.record(&subject, &event).await?;
            return Err(RecordError::Refused(refused));
        }
        let path = recordings.path_of(&id);
        let header = header_of(&id, start);
        let mut recorder = recordings.create(&id, &header, start.record_input).await?;
        let path_text = path.display().to_string();
        let subject = AuditSubject {
            session_id: Some(&id),
            principal: Some(start.principal),
            client_addr: Some(start.client_addr),
        };
        let started = AuditEvent::SessionStarted {
            container: start.container.to_string(),
            login: start.login.to_string(),
            command: start.command.map(str::to_string),
            pty: start.pty.is_some(),
        };
        let row = NewSession {
            id: &id,
            principal: start.principal,
            email: start.email,
            container: start.container,
            login: start.login,
            command: start.command,
            client_addr: Some(start.client_addr),
            recording_path: &path_text,
            grant_id: start.grant_id,
        };
        if let Err(e) = audit.record_session_start(&subject, &started, &row).await {
            // Nothing of the session may remain: not even its header.
            let _ = recorder.finish().await;
            let _ = tokio::fs::remove_file(&path).await;
            return Err(RecordError::Store(e));
        }
        let first = match start.command {
            Some(c) => match c.strip_prefix("direct-tcpip ") {
                Some(destination) => Marker::ForwardOpened { destination },
                None if start.index => Marker::Exec { command: c },
                None => Marker::Started { what: c },
            },
            None => Marker::Started { what: "shell" },
        };
        // The start is committed: a recording that cannot take its first
        // marker fails as any later write would (below, `check`).
        let marked = recorder.marker(&first).await;
        let mut record = SessionRecord {
            principal: start.principal.to_string(),
            client_addr: start.client_addr.to_string(),
            container: start.container.to_string(),
            audit: audit.clone(),
            store: store.clone(),
            recordings: recordings.clone(),
            recorder: Some(recorder),
            limited: false,
            path,
            on_failure,
            index: start.index,
            output_bytes: 0,
            id,
        };
        if record.check(marked).await.is_err() {
            tracing::warn!(session_id = %record.id, "the recording failed at its first marker");
        }
        Ok(record)
    }

    /// The session id (the row's).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The recording's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that audits events of this session from another task.
    pub fn auditor(&self) -> SessionAuditor {
        SessionAuditor {
            audit: self.audit.clone(),
            id: self.id.clone(),
            principal: self.principal.clone(),
            client_addr: self.client_addr.clone(),
            markers: self.live_recorder().map(Recorder::marker_tap),
        }
    }

    /// The recorder while it takes events.
    fn live_recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref().filter(|_| !self.limited)
    }

    fn live_recorder_mut(&mut self) -> Option<&mut Recorder> {
        self.recorder.as_mut().filter(|_| !self.limited)
    }

    fn subject(&self) -> AuditSubject<'_> {
        AuditSubject {
            session_id: Some(&self.id),
            principal: Some(&self.principal),
            client_addr: Some(&self.client_addr),
        }
    }

    /// Appends `event` about this session.
    ///
    /// # Errors
    /// [`StoreError`]: the action it records must not go ahead.
    pub async fn audit(&self, event: AuditEvent) -> Result<i64, StoreError> {
        self.audit.record(&self.subject(), &event).await
    }

    /// True when [`SessionRecord::input`] records anything: callers may
    /// skip handing it input otherwise.
    pub fn records_input(&self) -> bool {
        self.live_recorder().is_some_and(|r| r.records_input())
    }

    /// Records output bytes of the session.
    ///
    /// # Errors
    /// [`RecordingStopped`] when the recording failed and the session must
    /// end (`recording.on_failure`).
    pub async fn output(&mut self, bytes: &[u8]) -> Result<(), RecordingStopped> {
        self.output_bytes += bytes.len() as u64;
        let Some(r) = self.live_recorder_mut() else {
            return Ok(());
        };
        let result = r.output(bytes).await;
        self.check(result).await
    }

    /// Records input bytes (when input is recorded).
    ///
    /// # Errors
    /// As [`SessionRecord::output`].
    pub async fn input(&mut self, bytes: &[u8]) -> Result<(), RecordingStopped> {
        let Some(r) = self.live_recorder_mut() else {
            return Ok(());
        };
        let result = r.input(bytes).await;
        self.check(result).await
    }

    /// Records a terminal resize, in character cells: the `r` event and
    /// its marker (`resize: COLSxROWS`).
    ///
    /// # Errors
    /// As [`SessionRecord::output`].
    pub async fn resize(&mut self, cols: u32, rows: u32) -> Result<(), RecordingStopped> {
        let Some(r) = self.live_recorder_mut() else {
            return Ok(());
        };
        let result = match r.resize(cols, rows).await {
            Ok(()) => r.marker(&Marker::Resized { cols, rows }).await,
            Err(e) => Err(e),
        };
        self.check(result).await
    }

    /// Records `marker` at this point of the session (asciicast `m`).
    ///
    /// # Errors
    /// As [`SessionRecord::output`].
    pub async fn marker(&mut self, marker: &Marker<'_>) -> Result<(), RecordingStopped> {
        let Some(r) = self.live_recorder_mut() else {
            return Ok(());
        };
        let result = r.marker(marker).await;
        self.check(result).await
    }

    /// Marks why the gateway ended the session (`kill: REASON`, `lock:
    /// REASON`, `note: REASON`); the session ends either way.
    pub async fn mark_end(&mut self, reason: &EndReason) {
        let text = reason.to_string();
        let marker = match reason {
            EndReason::ClientGone => return,
            EndReason::Killed { reason, .. } => Marker::Killed { reason },
            EndReason::Locked { reason, .. } => Marker::Locked { reason },
            _ => Marker::Note { text: &text },
        };
        let _ = self.marker(&marker).await;
    }

    /// After a failed write: audits `RecordingFailed` and either goes on
    /// unrecorded (`continue`, when that event was written) or ends.
    async fn check(&mut self, result: Result<(), RecordingError>) -> Result<(), RecordingStopped> {
        let Err(e) = result else {
            return Ok(());
        };
        let reason = match e {
            RecordingError::LimitReached { max_bytes } => {
                // Kept to be finished at the close: it ends with the
                // limit's marker.
                self.limited = true;
                EndReason::RecordingLimit { max_bytes }
            }
            _ => {
                self.recorder = None;
                EndReason::RecordingFailed
            }
        };
        let action = match self.on_failure {
            RecordingFailure::Terminate => "terminate",
            RecordingFailure::Continue => "continue",
        };
        tracing::error!(error = %e, action, "recording failed");
        let audited = self
            .audit(AuditEvent::RecordingFailed {
                reason: e.to_string(),
                action: action.to_string(),
            })
            .await;
        match (self.on_failure, audited) {
            (RecordingFailure::Continue, Ok(_)) => Ok(()),
            _ => Err(RecordingStopped { reason }),
        }
    }

    /// Finishes the recording; after a failure, digests what reached the
    /// file so the row matches it. The output count is the session's
    /// either way.
    async fn finish_recording(&mut self) -> Option<Digest256> {
        let output_bytes = self.output_bytes;
        let digest = match self.recorder.take() {
            Some(r) => match r.finish().await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!(error = %e, "cannot finish the recording");
                    crate::recording::digest_file(&self.path).ok()
                }
            },
            None => crate::recording::digest_file(&self.path).ok(),
        };
        digest.map(|d| Digest256 { output_bytes, ..d })
    }

    /// Closes the record of a session that ran: `ended` with its exit
    /// (`failed` when `exit` is `None`: it could not be learnt), the
    /// recording's size and digest, in one transaction with its
    /// `SessionEnded` event; then indexes the transcript (terminal
    /// sessions). A failure is logged and leaves the row `running`.
    pub async fn close(mut self, exit: Option<ExitStatus>) {
        let status = match exit {
            Some(ExitStatus::Code(c)) => c.to_string(),
            Some(ExitStatus::Signal { signal, .. }) => {
                format!("signal {}", super::signal::name(signal))
            }
            None => "unknown".to_string(),
        };
        let _ = self.marker(&Marker::Exited { status: &status }).await;
        let digest = self.finish_recording().await;
        let (bytes, sha256) = match &digest {
            Some(d) => (d.bytes as i64, d.sha256.clone()),
            None => (0, String::new()),
        };
        let (status, exit_status, exit_signal) = match exit {
            Some(ExitStatus::Code(c)) => ("ended", Some(i64::from(c)), None),
            Some(ExitStatus::Signal { signal, .. }) => {
                ("ended", None, Some(super::signal::name(signal)))
            }
            None => ("failed", None, None),
        };
        let event = AuditEvent::SessionEnded {
            exit_status,
            exit_signal: exit_signal.clone(),
            recording_bytes: bytes,
            recording_sha256: sha256.clone(),
            output_bytes: digest.as_ref().map(|d| d.output_bytes),
        };
        let end = SessionEnd {
            status,
            exit_status,
            exit_signal: exit_signal.as_deref(),
            recording_bytes: bytes,
            recording_sha256: &sha256,
        };
        self.write_end(&event, &end).await;
        tracing::info!(session_id = %self.id, ?exit, "session ended");
        self.index_transcript(bytes as u64).await;
    }

    /// Closes the record of a session whose process could not be started
    /// (`reason`, the full error): `failed`, in one transaction with its
    /// `SessionFailed` event.
    pub async fn fail(mut self, reason: String) {
        let digest = self.finish_recording().await;
        let event = AuditEvent::SessionFailed {
            container: self.container.clone(),
            reason,
        };
        let end = SessionEnd {
            status: "failed",
            exit_status: None,
            exit_signal: None,
            recording_bytes: digest.as_ref().map(|d| d.bytes as i64).unwrap_or(0),
            recording_sha256: digest.as_ref().map(|d| d.sha256.as_str()).unwrap_or(""),
        };
        self.write_end(&event, &end).await;
    }

    async fn write_end(&self, event: &AuditEvent, end: &SessionEnd<'_>) {
        if let Err(e) = self
            .audit
            .record_session_end(&self.subject(), event, &self.id, end)
            .await
        {
            tracing::error!(
                session_id = %self.id,
                error = %e,
                "cannot close the session record; it stays running until the gateway restarts"
            );
        }
    }

    /// Adds the transcript's lines (terminal sessions) and the markers to
    /// the search index, each with its time offset, reading the recording
    /// wherever it is now ([`Recordings::open`]). A failure is logged: the
    /// recording itself is the evidence, the index only finds it. A
    /// recording of `bytes` over [`MAX_INDEXED_RECORDING_BYTES`] is left
    /// unindexed rather than parsed whole in memory (a 512 MiB binary dump
    /// is a 3 GiB file); `export` still reads it.
    async fn index_transcript(&self, bytes: u64) {
        if bytes > MAX_INDEXED_RECORDING_BYTES {
            tracing::warn!(
                bytes,
                limit = MAX_INDEXED_RECORDING_BYTES,
                "recording too large to index for search"
            );
            return;
        }
        let path = self.path.display().to_string();
        let opened = match self.recordings.open(&self.id, &path).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the recording to index it");
                return;
            }
        };
        let index = self.index;
        let lines = tokio::task::spawn_blocking(move || {
            opened.parse().map(|(_, events)| match index {
                true => crate::recording::search_lines(&events),
                false => crate::recording::markers(&events),
            })
        })
        .await;
        match lines {
            Ok(Ok(lines)) => {
                if let Err(e) = self.store.index_transcript(&self.id, &lines).await {
                    tracing::error!(error = %e, "cannot index the transcript");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot parse the recording to index it"),
            Err(e) => tracing::error!(error = %e, "transcript indexing failed"),
        }
    }
}

/// The asciicast v2 header of session `id`: the PTY's size (80x24
/// without one), its `TERM` when asked, the session's facts.
fn header_of(id: &str, start: &RecordStart<'_>) -> Header {
    let (cols, rows) = start.pty.map(|p| (p.cols, p.rows)).unwrap_or((80, 24));
    Header {
        version: 2,
        width: u32::from(cols),
        height: u32::from(rows),
        timestamp: Some(crate::store::now_ms() / 1000),
        command: start.command.map(str::to_string),
        title: Some(format!("{}@{}", start.login, start.container)),
        env: start
            .pty
            .filter(|_| start.term_in_header)
            .map(|p| [("TERM".to_string(), p.term.clone())].into_iter().collect()),
        portcullis: Some(SessionMetadata {
            session_id: id.to_string(),
            principal: start.principal.to_string(),
            container: start.container.to_string(),
            login: start.login.to_string(),
            command: start.command.map(str::to_string),
        }),
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
