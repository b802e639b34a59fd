//! [`super::SessionRecord`] on a real SQLite store and a real recording
//! file, without LXC: the markers it writes (resize, signal, a file
//! transferred reported by another task, the exit), their search offsets,
//! and the end a recording at its limit asks for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use super::{RecordStart, RecordingStopped, SessionRecord};
use crate::attach::{ExitStatus, PtyRequest};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::recording::Marker;
use crate::session::EndReason;
use crate::store::Store;

struct Env {
    config: Config,
    store: Store,
    audit: AuditLog,
    _dir: tempfile::TempDir,
}

async fn env(recording: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = \"{state}\"\ngateway_id = \"gw\"\n\
         [oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"portcullis\"\n\
         [recording]\nmin_free_bytes = 0\nflush_interval = \"50ms\"\n{recording}",
        state = dir.path().display(),
    );
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    std::fs::create_dir_all(config.recordings_dir()).unwrap();
    let store = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap()
        .for_gateway("gw");
    Env {
        config,
        audit: AuditLog::new(store.clone()),
        store,
        _dir: dir,
    }
}

fn pty() -> PtyRequest {
    PtyRequest {
        term: "xterm".into(),
        cols: 80,
        rows: 24,
    }
}

fn start<'a>(pty: Option<&'a PtyRequest>) -> RecordStart<'a> {
    RecordStart {
        principal: "alice",
        email: None,
        client_addr: "192.0.2.1:2200",
        container: "web1",
        login: "root",
        command: None,
        pty,
        term_in_header: true,
        grant_id: None,
        record_input: false,
        index: true,
    }
}

/// `(time, label)` of the `m` events of the recording at `path`.
fn markers(path: &Path) -> Vec<(f64, String)> {
    let (_, events) = crate::recording::read(path).unwrap();
    crate::recording::markers(&events)
}

#[tokio::test]
async fn resizes_signals_transfers_and_the_exit_are_marked_and_found_at_their_offsets() {
    let e = env("").await;
    let pty = pty();
    let mut record = SessionRecord::open(&e.audit, &e.store, &e.config, &start(Some(&pty)))
        .await
        .unwrap();
    let id = record.id().to_string();
    let path = record.path().to_path_buf();
    record.output(b"$ ").await.unwrap();
    record.resize(120, 40).await.unwrap();
    record
        .marker(&Marker::Signal { name: "INT" })
        .await
        .unwrap();
    // The transfer server's reports come from another task.
    let auditor = record.auditor();
    auditor
        .record(AuditEvent::FileTransferred {
            path: "/srv/report.csv".into(),
            direction: "write".into(),
            bytes: 5,
            sha256: "ab".into(),
            sequential: true,
            closed: true,
        })
        .await
        .unwrap();
    record.close(Some(ExitStatus::Code(0))).await;

    let found = markers(&path);
    let labels: Vec<&str> = found.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        labels,
        [
            "start: shell",
            "resize: 120x40",
            "signal: INT",
            "upload: /srv/report.csv (5 bytes)",
            "exit: 0"
        ]
    );
    let (_, events) = crate::recording::read(&path).unwrap();
    let resize = events.iter().find(|ev| ev.code == "r").unwrap();
    assert_eq!(resize.data, "120x40");
    // Each marker is found by search at its own offset.
    let hits = e.store.search_transcripts("report.csv").await.unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].session_id, id);
    assert_eq!(hits[0].text, "upload: /srv/report.csv (5 bytes)");
    assert_eq!(hits[0].offset_seconds, found[3].0);
}

#[tokio::test]
async fn a_recording_at_its_limit_asks_for_the_end_with_that_reason_and_is_finished() {
    let e = env("max_bytes = 4096\n").await;
    let mut record = SessionRecord::open(&e.audit, &e.store, &e.config, &start(None))
        .await
        .unwrap();
    let path = record.path().to_path_buf();
    let line = [b'x'; 1000];
    let mut stopped = None;
    for _ in 0..10 {
        if let Err(s) = record.output(&line).await {
            stopped = Some(s);
            break;
        }
    }
    assert_eq!(
        stopped,
        Some(RecordingStopped {
            reason: EndReason::RecordingLimit { max_bytes: 4096 }
        })
    );
    assert_eq!(
        EndReason::RecordingLimit { max_bytes: 4096 }.to_string(),
        "the session recording reached its limit of 4 KiB"
    );
    // Nothing more is recorded, and the end marks nothing after the limit.
    record.output(&line).await.unwrap();
    record.close(Some(ExitStatus::Code(0))).await;
    let found = markers(&path);
    let labels: Vec<&str> = found.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        labels,
        ["start: shell", "recording stopped: limit of 4 KiB reached"]
    );
    let bytes = std::fs::read(&path).unwrap();
    let digest = crate::recording::digest_bytes(&bytes);
    let row = e.store.session(record_id(&e).await.as_str()).await.unwrap();
    assert_eq!(
        row.recording_sha256.as_deref(),
        Some(digest.sha256.as_str())
    );
}

/// The one session of `e`.
async fn record_id(e: &Env) -> String {
    let sessions = e.store.list_sessions(10).await.unwrap();
    assert_eq!(sessions.len(), 1);
    sessions[0].id.clone()
}
