//! The recording pipeline in the life of real sessions (issues 13.8, 15.3,
//! 16): a real busybox LXC container, the gateway binary, the OpenSSH
//! client, SeaweedFS for object storage (tests/common/s3.rs), SQLite or
//! PostgreSQL (`PORTCULLIS_TEST_DATABASE=postgres`).
//!
//! - A gateway low on disk refuses a session before anything of it exists,
//!   with a clear message and an audit event.
//! - A recording at `recording.max_bytes` ends its session with that
//!   reason, and is kept, finished, up to its limit's marker.
//! - Markers: the exec command, the kill, the exit; `sessions search`
//!   finds a marker and an output line at their offsets in the recording.
//! - With `recording.store`, a session's recording is uploaded and its
//!   local copy removed; `sessions play/export` and `audit verify` read it
//!   from the store; an object swapped in the bucket is caught by verify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::World;
use common::gateway::{SshResult, TestGateway, run_ssh};
use common::s3::TestS3;
use common::wait_until;
use serde_json::Value;

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World::builder().container("recw").users(&["admin"]).start())
}

fn target() -> String {
    format!("root@{}", world().container().name)
}

fn detail(e: &Value) -> Value {
    serde_json::from_str(e["detail"].as_str().unwrap()).unwrap()
}

/// `ssh` as admin (certificate) to the container through `gw`.
fn ssh(gw: &TestGateway, command: &str) -> SshResult {
    let w = world();
    let mut cmd = gw.ssh_batch(&target(), w.key("admin"), Some(w.cert("admin")));
    cmd.arg(command);
    run_ssh(&mut cmd, b"")
}

/// `portcullis ARGS` against `gw`: exit code, stdout, stderr.
fn cli(gw: &TestGateway, args: &[&str]) -> (i32, String, String) {
    let out = gw.cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `audit verify --json`: exit code and report.
fn verify(gw: &TestGateway) -> (i32, Value) {
    let (code, out, err) = cli(gw, &["audit", "verify", "--json"]);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}")),
    )
}

/// The events (`[time, code, data]`) of an asciicast v2 text, header left
/// out.
fn events_of(cast: &str) -> Vec<(f64, String, String)> {
    cast.lines()
        .skip(1)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            (
                v[0].as_f64().unwrap(),
                v[1].as_str().unwrap().to_string(),
                v[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn markers_of(cast: &str) -> Vec<(f64, String)> {
    events_of(cast)
        .into_iter()
        .filter(|(_, code, _)| code == "m")
        .map(|(t, _, label)| (t, label))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The one session row of `gw` whose command is `command`, once ended.
fn ended_session(gw: &TestGateway, command: &str) -> Value {
    let rows = gw.wait_sessions_ended(1, |s| s["command"] == command);
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].clone()
}

#[test]
fn a_gateway_low_on_disk_refuses_sessions_before_they_start() {
    let w = world();
    // More free space than any disk has: every start is refused.
    let gw = w.another_gateway("[recording]\nmin_free_bytes = 1152921504606846976\n");
    let command = "echo never-recorded";
    let r = ssh(&gw, command);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{:?}", r.stdout);
    assert!(
        r.stderr.contains(
            "Access refused: the gateway is low on disk space; new sessions are refused until \
             space is freed."
        ),
        "{}",
        r.stderr
    );
    // Nothing of the session exists: no row, no recording file.
    assert!(
        gw.sessions().iter().all(|s| s["command"] != command),
        "{:?}",
        gw.sessions()
    );
    let files: Vec<_> = std::fs::read_dir(gw.state_dir.join("recordings"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 0, "{files:?}");
    // The refusal is audited, with the full reason, after the decision.
    let events = gw.audit_events();
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "recording" && detail(e)["action"] == "refuse")
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert_eq!(refused[0]["outcome"], "failure");
    assert_eq!(refused[0]["principal"], "cert:admin");
    let reason = detail(refused[0])["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with(&format!("session to {} refused: ", w.container().name))
            && reason.ends_with("free, under recording.min_free_bytes (1073741824 GiB)"),
        "{reason}"
    );
}

#[test]
fn a_recording_at_its_limit_ends_the_session_and_is_kept_to_its_limit() {
    let w = world();
    let gw = w.another_gateway("[recording]\nmax_bytes = 8192\nflush_interval = \"100ms\"\n");
    // Still running when the limit is reached (the sleep): the gateway
    // ends it.
    let command = "i=0; while [ $i -lt 3000 ]; do echo line-$i-padding; i=$((i+1)); done; \
                   echo finished; sleep 30";
    let r = ssh(&gw, command);
    let out = String::from_utf8_lossy(&r.stdout);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        !out.contains("finished"),
        "the session went on past its limit"
    );
    assert!(
        r.stderr.contains(
            "Portcullis: session ended: the session recording reached its limit of 8 KiB."
        ),
        "{}",
        r.stderr
    );
    let row = ended_session(&gw, command);
    let path = row["recording_path"].as_str().unwrap();
    let cast = std::fs::read(path).unwrap();
    // Finished and digested as written: the row and its event say so.
    assert_eq!(row["recording_sha256"], sha256_hex(&cast), "{row:?}");
    assert_eq!(row["recording_bytes"], cast.len() as u64);
    let text = String::from_utf8(cast.clone()).unwrap();
    let events = events_of(&text);
    let last = events.last().unwrap();
    assert_eq!(
        (last.1.as_str(), last.2.as_str()),
        ("m", "recording stopped: limit of 8 KiB reached")
    );
    // Every event started below the limit (the one read that crossed it
    // is kept whole); the first output is there, byte for byte.
    let lines: Vec<&str> = text.lines().collect();
    let last_output_starts_at: usize = lines[..lines.len() - 2].iter().map(|l| l.len() + 1).sum();
    assert!(last_output_starts_at < 8192, "{last_output_starts_at}");
    assert!(text.len() > 8192, "{}", text.len());
    assert_eq!(markers_of(&text)[0].1, format!("exec: {command}"));
    assert!(text.contains("\"o\",\"line-0-padding\\n"), "{text}");
    let audit = gw.audit_events();
    let session_events: Vec<&Value> = audit
        .iter()
        .filter(|e| e["session_id"] == row["id"])
        .collect();
    let failed: Vec<Value> = session_events
        .iter()
        .filter(|e| e["kind"] == "recording")
        .map(|e| detail(e))
        .collect();
    assert_eq!(failed.len(), 1, "{session_events:?}");
    assert_eq!(failed[0]["action"], "terminate");
    assert_eq!(
        failed[0]["reason"],
        "the recording reached its limit of 8192 bytes"
    );
    let terminated = session_events
        .iter()
        .find(|e| e["kind"] == "session_control")
        .expect("SessionTerminated");
    assert_eq!(
        detail(terminated)["reason"],
        "the session recording reached its limit of 8 KiB"
    );
    let (_, report) = verify(&gw);
    assert_eq!(report["bad_recordings"], serde_json::json!([]), "{report}");
}

#[test]
fn markers_mark_the_command_the_kill_and_the_exit_and_search_finds_them_at_their_offsets() {
    let w = world();
    let gw = w.gateway();
    let command = "echo early-line; sleep 1; echo late-line-marked; sleep 60";
    let mut client = gw
        .ssh_batch(&target(), w.key("admin"), Some(w.cert("admin")))
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut session = Value::Null;
    wait_until("the session to run", Duration::from_secs(30), || {
        match gw.sessions().into_iter().find(|s| s["command"] == command) {
            Some(s) => {
                session = s;
                true
            }
            None => false,
        }
    });
    let id = session["id"].as_str().unwrap().to_string();
    let path = session["recording_path"].as_str().unwrap().to_string();
    // Kill once the late line reached the recording (flushed every 1 s).
    wait_until("the late line recorded", Duration::from_secs(30), || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("\"o\",\"late-line-marked"))
    });
    let (code, _, err) = cli(
        gw,
        &["sessions", "kill", &id, "--reason", "maintenance window 7"],
    );
    assert_eq!(code, 0, "{err}");
    let _ = client.wait();
    ended_session(gw, command);
    let cast = std::fs::read_to_string(&path).unwrap();
    let markers = markers_of(&cast);
    let labels: Vec<&str> = markers.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(labels.len(), 3, "{labels:?}");
    assert_eq!(labels[0], format!("exec: {command}"));
    assert_eq!(labels[1], "kill: maintenance window 7");
    assert!(labels[2].starts_with("exit: signal "), "{labels:?}");
    // The exit is the last event; markers are in time order with output.
    let events = events_of(&cast);
    assert_eq!(events.last().unwrap().2, labels[2]);
    let late = events
        .iter()
        .find(|(_, code, data)| code == "o" && data.contains("late-line-marked"))
        .unwrap()
        .0;
    assert!(
        markers[0].0 <= late && late <= markers[1].0,
        "{markers:?} {late}"
    );

    // Search finds the kill marker and the late line at their offsets.
    let search = |text: &str| -> Vec<Value> {
        let (code, out, err) = cli(gw, &["sessions", "search", text, "--json"]);
        assert_eq!(code, 0, "{text}: {err}");
        let hits: Vec<Value> = serde_json::from_str(&out).unwrap();
        hits.into_iter().filter(|h| h["session_id"] == id).collect()
    };
    let kill_hits = search("maintenance window 7");
    assert_eq!(kill_hits.len(), 1, "{kill_hits:?}");
    assert_eq!(kill_hits[0]["text"], "kill: maintenance window 7");
    assert_eq!(
        kill_hits[0]["offset_seconds"].as_f64().unwrap(),
        markers[1].0
    );
    // The exec marker holds the words too: the output line is the hit
    // whose text is the line.
    let late_hits: Vec<Value> = search("late-line-marked")
        .into_iter()
        .filter(|h| h["text"] == "late-line-marked")
        .collect();
    assert_eq!(late_hits.len(), 1, "{late_hits:?}");
    assert_eq!(late_hits[0]["offset_seconds"].as_f64().unwrap(), late);

    // Play from the late line's offset: the whole screen, at once up to it.
    let at = format!("{late}");
    let (code, out, err) = cli(
        gw,
        &[
            "sessions",
            "play",
            &id,
            "--at",
            &at,
            "--idle-time-limit",
            "0.01",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "early-line\nlate-line-marked\n");
}

#[test]
fn an_uploaded_recording_replays_and_verifies_and_a_swapped_object_is_caught() {
    let w = world();
    let s3 = TestS3::start();
    let gw = w.another_gateway(&format!(
        "[audit]\nsign_interval = \"1s\"\n[recording]\n{}upload_backoff_max = \"2s\"\n",
        s3.recording_config("wired")
    ));
    let command = "echo uploaded-text-42; echo second-line";
    let r = ssh(&gw, command);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, b"uploaded-text-42\nsecond-line\n");
    let row = ended_session(&gw, command);
    let id = row["id"].as_str().unwrap().to_string();
    let path = row["recording_path"].as_str().unwrap().to_string();
    // Uploaded, verified by the node, then the local copy removed.
    wait_until("the upload", Duration::from_secs(60), || {
        gw.audit_events().iter().any(|e| {
            e["session_id"] == id.as_str()
                && e["kind"] == "recording_upload"
                && e["outcome"] == "success"
        }) && !std::path::Path::new(&path).exists()
    });
    // Review reads it from the store, byte for byte as recorded.
    let (code, cast, err) = cli(&gw, &["sessions", "export", &id, "--format", "cast"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sha256_hex(cast.as_bytes()), row["recording_sha256"]);
    assert_eq!(markers_of(&cast)[0].1, format!("exec: {command}"));
    let (code, out, err) = cli(&gw, &["sessions", "play", &id, "--idle-time-limit", "0.01"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "uploaded-text-42\nsecond-line\n");
    // OK once a head signed the session's events (every second here).
    let mut report = Value::Null;
    wait_until("audit verify OK", Duration::from_secs(20), || {
        let (code, r) = verify(&gw);
        report = r;
        code == 0
    });
    assert_eq!(report["bad_recordings"], serde_json::json!([]), "{report}");
    assert_eq!(report["recordings"], 1, "{report}");

    // Swap the object in the bucket for one of the same size.
    let config = portcullis::config::Config::load(&gw.config_path).unwrap();
    let archive = portcullis::recording::Archive::from_config(&config.recording)
        .unwrap()
        .unwrap();
    let at = archive.location(&id);
    let swapped = cast.replace("uploaded-text-42", "uploaded-text-43");
    assert_eq!(swapped.len(), cast.len());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(archive.put(&at.recording, swapped.into_bytes()))
        .unwrap();
    let (code, report) = verify(&gw);
    assert_eq!(code, 1, "{report}");
    let bad = report["bad_recordings"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0]["session_id"], id.as_str());
    let problem = bad[0]["problem"].as_str().unwrap();
    assert!(
        problem.contains(&format!(
            "manifest of session {id}: the recording's SHA-256 is"
        )),
        "{problem}"
    );
    let (code, _, err) = cli(&gw, &["sessions", "play", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("the recording's SHA-256 is"), "{err}");
}

/// The gateway's `GET /metrics` text.
fn metrics_of(addr: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn with_the_store_down_failed_uploads_and_the_spool_show_in_the_metrics() {
    let w = world();
    let mut s3 = TestS3::start();
    let metrics = format!("127.0.0.1:{}", common::gateway::free_port());
    let gw = w.another_gateway(&format!(
        "[metrics]\nlisten = \"{metrics}\"\n[recording]\n{}upload_backoff_max = \"1s\"\n",
        s3.recording_config("metered")
    ));
    s3.stop();
    let command = "echo waits-for-the-store";
    let r = ssh(&gw, command);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let row = ended_session(&gw, command);
    let path = row["recording_path"].as_str().unwrap().to_string();
    let size = std::fs::metadata(&path).unwrap().len();
    // Failed attempts are counted as they happen; the spool is measured
    // every 10 s: one recording, its bytes.
    wait_until("the spool in the metrics", Duration::from_secs(30), || {
        let text = metrics_of(&metrics);
        text.lines().any(|l| {
            l.strip_prefix("portcullis_upload_failures_total ")
                .is_some_and(|n| n.parse::<u64>().unwrap() >= 1)
        }) && text.contains("portcullis_upload_queue 1\n")
            && text.contains(&format!("portcullis_spool_bytes {size}\n"))
    });
    // The local copy stays while the store is down (its return is
    // tests/recording_store.rs's).
    assert!(std::path::Path::new(&path).exists());
}
