//! Recordings in S3-compatible object storage (issue 16 point 5), against a
//! real SeaweedFS (`weed mini`, tests/common/s3.rs) and a real database
//! (SQLite, or PostgreSQL with `PORTCULLIS_TEST_DATABASE=postgres`).
//!
//! These tests drive the recording library directly (`Recordings`, the
//! `Recorder` a session writes through, the upload queue) and the review
//! commands through the real `portcullis` binary: the live sessions'
//! wiring into the session core lands with that branch, so no SSH session
//! or container is involved here. Everything else is real: the S3 server,
//! multipart uploads, write-once puts, the database, the host-key SSHSIG.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::s3::TestS3;
use portcullis::audit::{AuditLog, AuditSigner, check_sshsig};
use portcullis::config::Config;
use portcullis::recording::{
    Archive, Header, MANIFEST_NAMESPACE, Manifest, Marker, RecordingSource, Recordings,
    SessionMetadata, StartRefused,
};
use portcullis::store::{NewSession, Store};
use russh::keys::{Algorithm, PrivateKey};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1024 * 1024;

/// The server shared by the tests that never stop it.
fn shared_s3() -> &'static TestS3 {
    static S3: OnceLock<TestS3> = OnceLock::new();
    S3.get_or_init(TestS3::start)
}

/// One node: its config, database, audit log and recordings.
struct Node {
    /// Holds the state directory until the node is dropped.
    _dir: tempfile::TempDir,
    config: Config,
    config_path: std::path::PathBuf,
    store: Store,
    signer_key: String,
    recordings: Recordings,
    shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn database_url(dir: &Path) -> String {
    match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
        Ok("postgres") => common::postgres::server().new_database(),
        _ => format!("sqlite://{}/portcullis.db", dir.display()),
    }
}

/// A node storing recordings in `s3` under `prefix`, with `extra`
/// `[recording]` keys.
async fn node(s3: &TestS3, prefix: &str, extra: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "state_dir = \"{state}\"\ngateway_id = \"node1\"\n[database]\nurl = \"{url}\"\n\
         [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"portcullis\"\n\
         [recording]\npart_bytes = {part}\nupload_backoff_max = \"2s\"\n{store}{extra}",
        state = dir.path().display(),
        url = database_url(dir.path()),
        part = 5 * MIB,
        store = s3.recording_config(prefix),
    );
    let config_path = dir.path().join("portcullis.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::parse(&text, &config_path).unwrap();
    std::fs::create_dir_all(config.recordings_dir()).unwrap();
    let store = Store::open(&config.database_url())
        .await
        .unwrap()
        .for_gateway("node1");
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let signer = AuditSigner::new(key);
    let signer_key = signer.public_key().to_string();
    let shutdown = CancellationToken::new();
    let recordings = Recordings::start(
        &config,
        store.clone(),
        Arc::new(AuditLog::new(store.clone())),
        Arc::new(signer),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Node {
        _dir: dir,
        config,
        config_path,
        store,
        signer_key,
        recordings,
        shutdown,
    }
}

fn header(session_id: &str) -> Header {
    Header {
        version: 2,
        width: 80,
        height: 24,
        timestamp: Some(1_700_000_000),
        command: None,
        title: None,
        env: None,
        portcullis: Some(SessionMetadata {
            session_id: session_id.into(),
            principal: "alice".into(),
            container: "web1".into(),
            login: "root".into(),
            command: None,
        }),
    }
}

/// `mib` MiB of distinct output lines, in 32 KiB reads.
fn output(mib: u64) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut i = 0u64;
    while (all.len() as u64) < mib * MIB {
        all.extend_from_slice(format!("line {i:08} of the session\r\n").as_bytes());
        i += 1;
    }
    all.chunks(32 * 1024).map(<[u8]>::to_vec).collect()
}

/// Polls (async) until `check` holds.
async fn wait_for<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(kind, outcome, detail)` of the session's audit events.
async fn audit_of(store: &Store, session_id: &str) -> Vec<(String, String, serde_json::Value)> {
    store
        .audit_events(Some(session_id))
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.outcome, serde_json::from_str(&e.detail).unwrap()))
        .collect()
}

async fn state_of(store: &Store, session_id: &str) -> String {
    store.upload(session_id).await.unwrap().unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_of_several_mib_uploads_in_parts_and_review_reads_it_from_the_store() {
    let s3 = shared_s3();
    let node = node(s3, "parts", "").await;
    let id = "s-parts";
    let local = node.recordings.path_of(id);
    node.store
        .insert_session(&NewSession {
            id,
            principal: "alice",
            email: None,
            container: "web1",
            login: "root",
            command: None,
            client_addr: None,
            recording_path: &local.display().to_string(),
            grant_id: None,
        })
        .await
        .unwrap();
    node.recordings.may_start().await.unwrap();
    let mut recorder = node
        .recordings
        .create(id, &header(id), false)
        .await
        .unwrap();
    recorder
        .marker(&Marker::Exec { command: "dump" })
        .await
        .unwrap();
    let mut sent = String::new();
    for chunk in output(12) {
        recorder.output(&chunk).await.unwrap();
        sent.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // Parts go up while the session still runs.
    let streamed = wait_for(
        "a part uploaded during the session",
        Duration::from_secs(60),
        async || {
            let row = node.store.upload(id).await.unwrap().unwrap();
            (!row.parts.is_empty()).then_some(row)
        },
    )
    .await;
    assert_eq!(streamed.state, "recording");
    assert_eq!(streamed.uploaded_bytes as u64 % (5 * MIB), 0);
    let digest = recorder.finish().await.unwrap();
    assert!(digest.bytes > 12 * MIB);
    wait_for("the upload", Duration::from_secs(120), async || {
        (state_of(&node.store, id).await == "uploaded").then_some(())
    })
    .await;
    let row = node.store.upload(id).await.unwrap().unwrap();
    // Parts of exactly 5 MiB but the last.
    assert_eq!(row.parts.len() as u64, digest.bytes.div_ceil(5 * MIB));
    assert_eq!(row.uploaded_bytes as u64, digest.bytes);
    assert!(!local.exists(), "the local copy is deleted after the check");
    // What the store holds is the recording, as its manifest says, signed
    // by the node's host key.
    let archive = Archive::from_config(&node.config.recording)
        .unwrap()
        .unwrap();
    let at = archive.location(id);
    assert_eq!(at.recording, "parts/sessions/s-parts/recording.cast");
    let stored = archive.digest(&at.recording).await.unwrap();
    assert_eq!(
        (stored.bytes, &stored.sha256),
        (digest.bytes, &digest.sha256)
    );
    let manifest = Manifest::parse(id, &archive.get(&at.manifest).await.unwrap().unwrap()).unwrap();
    assert_eq!(
        (
            manifest.bytes,
            manifest.sha256.as_str(),
            manifest.finished,
            manifest.gateway.as_str()
        ),
        (digest.bytes, digest.sha256.as_str(), true, "node1")
    );
    assert_eq!(manifest.public_key, node.signer_key);
    check_sshsig(
        &node.signer_key,
        MANIFEST_NAMESPACE,
        manifest.signed_message().as_bytes(),
        &manifest.signature,
    )
    .unwrap();
    // An edited manifest no longer verifies.
    let edited = Manifest {
        bytes: manifest.bytes - 1,
        ..manifest.clone()
    };
    assert!(
        check_sshsig(
            &node.signer_key,
            MANIFEST_NAMESPACE,
            edited.signed_message().as_bytes(),
            &edited.signature
        )
        .is_err()
    );
    // Audited: the attempt before it, the upload (verified) after.
    let events = audit_of(&node.store, id).await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|(k, o, _)| (k.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("recording_upload", "info"),
            ("recording_upload", "success")
        ]
    );
    assert_eq!(events[1].2["sha256"], digest.sha256.as_str());
    assert_eq!(events[1].2["bytes"], digest.bytes);
    assert_eq!(
        events[1].2["object"],
        format!("s3://recordings/{}", at.recording).as_str()
    );
    // Review reads it from the store (the local copy is gone).
    let opened = node
        .recordings
        .open(id, &local.display().to_string())
        .await
        .unwrap();
    assert_eq!(
        opened.source,
        RecordingSource::Store(format!("s3://recordings/{}", at.recording))
    );
    let (_, events) = opened.parse().unwrap();
    let text: String = events
        .iter()
        .filter(|e| e.code == "o")
        .map(|e| e.data.as_str())
        .collect();
    assert!(text == sent, "the output read back differs");
    // The review commands, through the real binary.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("--config")
            .arg(&node.config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let exported = cli(&["sessions", "export", id, "--format", "cast"]);
    assert_eq!(
        portcullis::recording::digest_bytes(&exported).sha256,
        digest.sha256
    );
    let played = cli(&[
        "sessions",
        "play",
        id,
        "--at",
        "0",
        "--idle-time-limit",
        "0.001",
    ]);
    assert!(played == sent.as_bytes(), "play printed other bytes");
    let shown: serde_json::Value =
        serde_json::from_slice(&cli(&["sessions", "show", id, "--json"])).unwrap();
    assert_eq!(shown["markers"][0]["label"], "exec: dump");
    let offset = shown["markers"][0]["offset_seconds"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&offset), "{offset}");
    // Search finds the marker at its offset (the session core indexes
    // `search_lines` at session end; here the test indexes the markers,
    // not 12 MiB of lines).
    node.store
        .index_transcript(id, &portcullis::recording::markers(&events))
        .await
        .unwrap();
    let hits: serde_json::Value =
        serde_json::from_slice(&cli(&["sessions", "search", "exec: dump", "--json"])).unwrap();
    assert_eq!(hits[0]["session_id"], id);
    assert_eq!(hits[0]["text"], "exec: dump");
    assert_eq!(hits[0]["offset_seconds"].as_f64(), Some(offset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_is_written_once_and_a_foreign_one_is_never_replaced() {
    let s3 = shared_s3();
    let node = node(s3, "once", "").await;
    let archive = Archive::from_config(&node.config.recording)
        .unwrap()
        .unwrap();
    // A small recording: one PUT, no parts.
    let id = "s-once";
    let mut recorder = node
        .recordings
        .create(id, &header(id), false)
        .await
        .unwrap();
    recorder.output(b"hello\r\n").await.unwrap();
    let digest = recorder.finish().await.unwrap();
    wait_for("the upload", Duration::from_secs(60), async || {
        (state_of(&node.store, id).await == "uploaded").then_some(())
    })
    .await;
    let at = archive.location(id);
    let written = archive.get(&at.manifest).await.unwrap().unwrap();
    // A second write is refused; the first stays.
    assert!(
        !archive
            .put_once(&at.manifest, b"{\"forged\":1}".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(archive.get(&at.manifest).await.unwrap().unwrap(), written);
    assert_eq!(Manifest::parse(id, &written).unwrap().sha256, digest.sha256);
    // A session whose manifest key already holds another manifest (written
    // by someone else): the upload gives up, audited, and keeps the local
    // copy; the foreign manifest is not replaced.
    let id = "s-taken";
    let at = archive.location(id);
    let mut foreign = Manifest::parse("s-once", &written).unwrap();
    foreign.session_id = id.into();
    foreign.object = at.recording.clone();
    assert!(
        archive
            .put_once(&at.manifest, foreign.to_bytes())
            .await
            .unwrap()
    );
    let mut recorder = node
        .recordings
        .create(id, &header(id), false)
        .await
        .unwrap();
    recorder.output(b"mine\r\n").await.unwrap();
    recorder.finish().await.unwrap();
    wait_for("the refusal", Duration::from_secs(60), async || {
        (state_of(&node.store, id).await == "failed").then_some(())
    })
    .await;
    assert!(node.recordings.path_of(id).exists());
    assert_eq!(
        archive.get(&at.manifest).await.unwrap().unwrap(),
        foreign.to_bytes()
    );
    let events = audit_of(&node.store, id).await;
    let failed = &events.last().unwrap();
    assert_eq!(
        (failed.0.as_str(), failed.1.as_str()),
        ("recording_upload", "failure")
    );
    assert_eq!(failed.2["retry_in_ms"], serde_json::Value::Null);
    let reason = failed.2["reason"].as_str().unwrap();
    assert!(
        reason.contains("another manifest is already written"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_down_keeps_recordings_in_a_bounded_spool_until_it_returns() {
    let mut s3 = TestS3::start();
    let node = node(&s3, "down", &format!("spool_max_bytes = {}\n", MIB)).await;
    let id = "s-down";
    node.recordings.may_start().await.unwrap();
    let mut recorder = node
        .recordings
        .create(id, &header(id), false)
        .await
        .unwrap();
    for chunk in output(2) {
        recorder.output(&chunk).await.unwrap();
    }
    s3.stop();
    let digest = recorder.finish().await.unwrap();
    // The attempt fails, is audited with its retry, and the recording
    // stays in the spool.
    let failed = wait_for("a failed attempt", Duration::from_secs(60), async || {
        audit_of(&node.store, id)
            .await
            .into_iter()
            .find(|(_, outcome, _)| outcome == "failure")
    })
    .await;
    assert_eq!(failed.2["attempt"], 1);
    assert_eq!(failed.2["retry_in_ms"], 1000);
    assert!(node.recordings.path_of(id).exists());
    assert_eq!(state_of(&node.store, id).await, "pending");
    // The spool (2 MiB) is over its bound (1 MiB): new sessions refused.
    let refused = node.recordings.may_start().await.unwrap_err();
    assert!(
        matches!(refused, StartRefused::SpoolFull { spool_bytes, spool_max_bytes }
        if spool_bytes == digest.bytes && spool_max_bytes == MIB)
    );
    assert_eq!(
        refused.to_string(),
        "session recordings cannot reach object storage and the gateway's spool is full; \
         new sessions are refused until they are uploaded"
    );
    // With on_spool_full = "continue" a session may start, audited.
    let text =
        std::fs::read_to_string(&node.config_path).unwrap() + "on_spool_full = \"continue\"\n";
    let lenient = Config::parse(&text, &node.config_path).unwrap();
    let queue = node.recordings.uploads().unwrap().clone();
    let lenient = Recordings::local(&lenient, node.store.clone())
        .with_uploads(queue, Arc::new(AuditLog::new(node.store.clone())));
    lenient.may_start().await.unwrap();
    let overflow = node.store.audit_events(None).await.unwrap();
    assert!(
        overflow
            .iter()
            .any(|e| e.kind == "recording" && e.detail.contains("\"spool_max_bytes\":1048576")),
        "{overflow:?}"
    );
    // The store comes back: the retry uploads it.
    s3.start_again();
    wait_for("the retried upload", Duration::from_secs(60), async || {
        (state_of(&node.store, id).await == "uploaded").then_some(())
    })
    .await;
    assert!(!node.recordings.path_of(id).exists());
    node.recordings.may_start().await.unwrap();
    let outcomes: Vec<String> = audit_of(&node.store, id)
        .await
        .into_iter()
        .map(|(_, outcome, _)| outcome)
        .collect();
    assert_eq!(outcomes.first().map(String::as_str), Some("info"));
    assert_eq!(outcomes.last().map(String::as_str), Some("success"));
    assert!(outcomes.iter().filter(|o| *o == "failure").count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_restart_resumes_with_its_parts() {
    let s3 = shared_s3();
    let first = node(s3, "resume", "").await;
    let id = "s-resume";
    let mut recorder = first
        .recordings
        .create(id, &header(id), false)
        .await
        .unwrap();
    for chunk in output(11) {
        recorder.output(&chunk).await.unwrap();
    }
    wait_for("two parts", Duration::from_secs(60), async || {
        let row = first.store.upload(id).await.unwrap().unwrap();
        (row.parts.len() >= 2).then_some(())
    })
    .await;
    // The node stops mid-session: its worker and the session's recorder go
    // away without finishing (the writer still writes what it had).
    first.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(recorder);
    let path = first.recordings.path_of(id);
    let parts_before = first.store.upload(id).await.unwrap().unwrap().parts;
    // The next start takes it up as found.
    let config = first.config.clone();
    let store = first.store.clone();
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    // Let the writer finish writing what it had before the restart reads it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shutdown = CancellationToken::new();
    let _second = Recordings::start(
        &config,
        store.clone(),
        Arc::new(AuditLog::new(store.clone())),
        Arc::new(AuditSigner::new(key)),
        shutdown.clone(),
    )
    .await
    .unwrap();
    wait_for("the resumed upload", Duration::from_secs(60), async || {
        (state_of(&store, id).await == "uploaded").then_some(())
    })
    .await;
    shutdown.cancel();
    let row = store.upload(id).await.unwrap().unwrap();
    assert_eq!(row.parts[..parts_before.len()], parts_before[..]);
    assert!(!row.finished);
    assert!(!path.exists());
    let archive = Archive::from_config(&config.recording).unwrap().unwrap();
    let manifest = Manifest::parse(
        id,
        &archive
            .get(&archive.location(id).manifest)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(!manifest.finished);
    assert_eq!(Some(manifest.sha256), row.sha256);
}

/// Upload throughput for a 64 MiB recording (a figure for the report, not
/// a check): `cargo test --test recording_store -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn upload_throughput_of_a_64_mib_recording() {
    let s3 = shared_s3();
    let node = node(s3, "speed", "").await;
    let id = "s-speed";
    let mut recorder = node
        .recordings
        .create(id, &header(id), false)
        .await
        .unwrap();
    let started = Instant::now();
    for chunk in output(64) {
        recorder.output(&chunk).await.unwrap();
    }
    let written = started.elapsed();
    let digest = recorder.finish().await.unwrap();
    let ended = Instant::now();
    wait_for("the upload", Duration::from_secs(600), async || {
        (state_of(&node.store, id).await == "uploaded").then_some(())
    })
    .await;
    let after_end = ended.elapsed();
    let total = started.elapsed();
    println!(
        "64 MiB output -> {} byte recording: written in {:.2} s; uploaded and verified {:.2} s \
         after the session's end ({:.2} s in all, {:.1} MiB/s end to end)",
        digest.bytes,
        written.as_secs_f64(),
        after_end.as_secs_f64(),
        total.as_secs_f64(),
        digest.bytes as f64 / MIB as f64 / total.as_secs_f64()
    );
}
