//! Evidence an auditor accepts: crash-safe recordings, a tamper-evident
//! audit log, review commands and live-session control, with real parts
//! (LXC container, test IdP, gateway binary, OpenSSH client). Runs on
//! SQLite, or on a real PostgreSQL with `PORTCULLIS_TEST_DATABASE=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{SshResult, TestContainer, TestGateway, run_ssh};
use common::idp::TestIdp;
use common::wait_until;
use serde_json::Value;

struct Fixture {
    idp: TestIdp,
    container: TestContainer,
    admin_token: String,
    /// In group `reviewers`: may watch, not kill.
    reviewer_token: String,
    /// A developer: may neither.
    alice_token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("evid");
            let rt = tokio::runtime::Runtime::new().unwrap();
            let admin_token = rt.block_on(idp.device_flow_id_token("admin"));
            let reviewer_token = rt.block_on(idp.device_flow_id_token("reviewer"));
            let alice_token = rt.block_on(idp.device_flow_id_token("alice"));
            Fixture {
                idp,
                container,
                admin_token,
                reviewer_token,
                alice_token,
            }
        })
        .join()
        .unwrap()
    })
}

fn gateway(extra: &str) -> TestGateway {
    let f = fixture();
    TestGateway::start(
        &f.idp.issuer,
        &format!(
            "{extra}\n[containers.{}]\nlabels = {{ env = \"dev\" }}\n",
            f.container.name
        ),
    )
}

fn ssh(gw: &TestGateway, args: &[&str]) -> SshResult {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh(
        &format!("root@{}", f.container.name),
        &f.admin_token,
        dir.path(),
    );
    cmd.args(args);
    run_ssh(&mut cmd, b"")
}

/// Starts `ssh ... COMMAND` in the background (stdout/stderr to files).
fn ssh_background(gw: &TestGateway, args: &[&str], dir: &std::path::Path) -> std::process::Child {
    let f = fixture();
    let mut cmd = gw.ssh(&format!("root@{}", f.container.name), &f.admin_token, dir);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(dir.join("out")).unwrap())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    cmd.spawn().unwrap()
}

fn cli(gw: &TestGateway, args: &[&str]) -> (i32, String, String) {
    let out = gw.cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True once the output events of the recording at `path` (flushed every
/// `flush_interval`, 1 s by default) hold `text`. Only output counts: the
/// header names the command, which holds the text too.
fn recording_holds(path: &str, text: &str) -> bool {
    let output: String = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<(f64, String, String)>(l).ok())
        .filter(|(_, kind, _)| kind == "o")
        .map(|(_, _, data)| data)
        .collect();
    output.contains(text)
}

/// True once `gw` audited a `session_control` event of session `id` by
/// `principal`.
fn controlled_by(gw: &TestGateway, id: &str, principal: &str) -> bool {
    gw.audit_events().iter().any(|e| {
        e["session_id"] == id && e["kind"] == "session_control" && e["principal"] == principal
    })
}

fn running_session(gw: &TestGateway, command: &str) -> Value {
    let mut found = None;
    wait_until("the running session", Duration::from_secs(20), || {
        found = gw
            .sessions()
            .into_iter()
            .find(|s| s["command"] == command && s["status"] == "running");
        found.is_some()
    });
    found.unwrap()
}

fn verify(gw: &TestGateway) -> (i32, Value) {
    let (code, out, err) = cli(gw, &["audit", "verify", "--json"]);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}")),
    )
}

/// `audit verify --json ARGS`: exit code and report.
fn verify_with(gw: &TestGateway, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["audit", "verify", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = cli(gw, &all);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}")),
    )
}

/// `portcullis audit key` of `gw`: its signing key line.
fn signing_key(gw: &TestGateway) -> String {
    let (code, out, err) = cli(gw, &["audit", "key"]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// The attacker's re-chain: recomputes `prev_hash` and `hash` of every
/// event from `from` on with the unkeyed `chain_hash`, as anyone who can
/// write the database can.
fn rechain(gw: &TestGateway, from: i64) {
    let events = gw.audit_events();
    let mut prev = events
        .iter()
        .find(|e| e["id"] == from - 1)
        .map(|e| e["hash"].as_str().unwrap().to_string())
        .unwrap_or_else(|| portcullis::store::GENESIS_HASH.to_string());
    let mut statements = String::new();
    for e in events.iter().filter(|e| e["id"].as_i64().unwrap() >= from) {
        let text = |k: &str| e[k].as_str();
        let hash = portcullis::store::chain_hash(
            e["id"].as_i64().unwrap(),
            e["at"].as_i64().unwrap(),
            text("kind").unwrap(),
            text("outcome").unwrap(),
            text("session_id"),
            text("principal"),
            text("client_addr"),
            text("detail").unwrap(),
            &prev,
        );
        statements.push_str(&format!(
            "UPDATE audit_events SET prev_hash = '{prev}', hash = '{hash}' WHERE id = {};\n",
            e["id"]
        ));
        prev = hash;
    }
    sql(gw, &statements);
}

/// Runs SQL on the gateway's database (SQLite file or PostgreSQL).
fn sql(gw: &TestGateway, statement: &str) {
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let url = config
        .lines()
        .find_map(|l| l.strip_prefix("url = \""))
        .map(|u| u.trim_end_matches('"').to_string());
    let out = match url {
        Some(url) => Command::new("psql")
            .args([&url, "-v", "ON_ERROR_STOP=1", "-c", statement])
            .output(),
        None => Command::new("sqlite3")
            .arg(gw.state_dir.join("portcullis.db"))
            .arg(statement)
            .output(),
    }
    .unwrap();
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_crashed_gateway_leaves_a_valid_recording_and_marks_the_session_interrupted() {
    let mut gw = gateway("[recording]\nflush_interval = \"200ms\"\n");
    let dir = tempfile::tempdir().unwrap();
    let command = "i=0; while [ $i -lt 100 ]; do echo busy-line-$i; i=$((i+1)); sleep 0.05; done";
    let mut client = ssh_background(&gw, &["-tt", command], dir.path());
    let session = running_session(&gw, command);
    let path = session["recording_path"].as_str().unwrap().to_string();
    // Let it print for a while, then crash the gateway mid-session.
    wait_until("output in the recording", Duration::from_secs(10), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("busy-line-10")
    });
    gw.crash();
    let _ = client.kill();
    let _ = client.wait();
    let text = std::fs::read_to_string(&path).unwrap();
    let (_, events) = portcullis::recording::parse(&text).expect("valid asciicast v2");
    let output: String = events.iter().map(|e| e.data.as_str()).collect();
    assert!(output.contains("busy-line-10"), "{output}");

    gw.restart();
    let row = gw
        .sessions()
        .into_iter()
        .find(|s| s["id"] == session["id"])
        .unwrap();
    assert_eq!(row["status"], "interrupted");
    assert_eq!(
        row["recording_sha256"].as_str().unwrap(),
        portcullis::recording::digest_file(std::path::Path::new(&path))
            .unwrap()
            .sha256
    );
    let interrupted: Vec<Value> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["session_id"] == session["id"] && e["kind"] == "session_end")
        .collect();
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert!(
        interrupted[0]["detail"]
            .as_str()
            .unwrap()
            .contains("recording_sha256")
    );
    let (code, report) = verify(&gw);
    assert_eq!(code, 0, "{report}");
}

/// A gateway with two finished sessions and a signed chain head.
fn gateway_with_history() -> TestGateway {
    let mut gw = gateway("");
    for command in ["echo first-session", "echo second-session"] {
        let r = ssh(&gw, &[command]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    gw.stop();
    let (code, report) = verify(&gw);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["recordings"], 2);
    assert!(report["signatures"].as_u64().unwrap() >= 1);
    gw
}

#[test]
fn a_flipped_byte_in_a_recording_is_reported_with_its_session() {
    let gw = gateway_with_history();
    let victim = gw
        .sessions()
        .into_iter()
        .find(|s| s["command"] == "echo first-session")
        .unwrap();
    let path = victim["recording_path"].as_str().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
    let (code, report) = verify(&gw);
    assert_eq!(code, 1);
    let bad = report["bad_recordings"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0]["session_id"], victim["id"]);
    assert!(report["first_bad_event"].is_null());
    let (_, text, _) = cli(&gw, &["audit", "verify"]);
    assert!(
        text.contains(&format!(
            "BAD recording of session {}",
            victim["id"].as_str().unwrap()
        )),
        "{text}"
    );
}

#[test]
fn a_deleted_audit_row_is_reported() {
    let gw = gateway_with_history();
    sql(&gw, "DELETE FROM audit_events WHERE id = 3");
    let (code, report) = verify(&gw);
    assert_eq!(code, 1);
    assert_eq!(report["first_bad_event"][0], 3, "{report}");
    assert!(
        report["first_bad_event"][1]
            .as_str()
            .unwrap()
            .contains("missing")
    );
}

#[test]
fn two_reordered_audit_rows_are_reported() {
    let gw = gateway_with_history();
    // Swap the contents of rows 2 and 3, keeping their ids.
    sql(
        &gw,
        "UPDATE audit_events SET id = -2 WHERE id = 2; \
         UPDATE audit_events SET id = 2 WHERE id = 3; \
         UPDATE audit_events SET id = 3 WHERE id = -2;",
    );
    let (code, report) = verify(&gw);
    assert_eq!(code, 1);
    assert_eq!(report["first_bad_event"][0], 2, "{report}");
}

#[test]
fn an_altered_audit_detail_is_reported() {
    let gw = gateway_with_history();
    sql(
        &gw,
        "UPDATE audit_events SET principal = 'mallory' WHERE id = 2",
    );
    let (code, report) = verify(&gw);
    assert_eq!(code, 1);
    assert_eq!(report["first_bad_event"][0], 2, "{report}");
    assert!(
        report["first_bad_event"][1]
            .as_str()
            .unwrap()
            .contains("altered")
    );
}

/// A gateway that signs every second and exports to a file, with two
/// sessions, each covered by its own signed head, then stopped (its final
/// head signed). Returns it with the export's directory.
fn gateway_with_anchored_history() -> (TestGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway(&format!(
        "[audit]\nsign_interval = \"1s\"\nexport = \"{}\"\n",
        dir.path().join("audit.jsonl").display()
    ));
    for command in ["echo first-session", "echo second-session"] {
        let r = ssh(&gw, &[command]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        gw.wait_sessions_ended(1, |s| s["command"] == command);
        let last = gw.audit_events().last().unwrap()["id"].as_i64().unwrap();
        wait_until("a head over the session", Duration::from_secs(20), || {
            verify(&gw).1["signed_through_event"].as_i64() >= Some(last)
        });
    }
    gw.stop();
    let (code, report) = verify(&gw);
    assert_eq!(code, 0, "{report:#}");
    (gw, dir)
}

/// The id of the last event of the session that ran `command`.
fn last_event_of(gw: &TestGateway, command: &str) -> i64 {
    let session = gw
        .sessions()
        .into_iter()
        .find(|s| s["command"] == command)
        .unwrap();
    gw.audit_events()
        .iter()
        .filter(|e| e["session_id"] == session["id"])
        .map(|e| e["id"].as_i64().unwrap())
        .max()
        .unwrap()
}

/// Starts `portcullis serve` on `gw`'s config (stopped) and returns its
/// exit code and stderr once it exits, `None` if it still runs after 20 s
/// (then it is stopped).
fn serve_exits(gw: &TestGateway) -> Option<(i32, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&gw.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return Some((status.code().unwrap_or(-1), err));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    None
}

#[test]
fn cutting_the_log_is_named_against_the_anchors_and_the_gateway_will_not_start() {
    let (gw, dir) = gateway_with_anchored_history();
    // The attacker drops the second session (its events and the heads
    // over them) and writes a forged event in its place.
    let cut = last_event_of(&gw, "echo first-session");
    sql(
        &gw,
        &format!(
            "DELETE FROM audit_signatures WHERE event_id > {cut}; \
             DELETE FROM audit_events WHERE id > {cut};"
        ),
    );
    sql(
        &gw,
        &format!(
            "INSERT INTO audit_events (id, at, kind, outcome, detail, prev_hash, hash) \
             VALUES ({}, 1, 'decision', 'info', '{{}}', '', '')",
            cut + 1
        ),
    );
    rechain(&gw, cut + 1);
    let heads = gw.state_dir.join("audit-heads");
    let export = dir.path().join("audit.jsonl");
    let (code, report) = verify_with(
        &gw,
        &[
            "--anchor",
            heads.to_str().unwrap(),
            "--anchor",
            export.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{report:#}");
    let from_heads = &report["anchors"][0]["first_divergence"];
    assert_eq!(from_heads["after_event"], cut, "{report:#}");
    let from_export = &report["anchors"][1]["first_divergence"];
    assert_eq!(from_export["event_id"], cut + 1, "{report:#}");
    let (_, text, _) = cli(
        &gw,
        &["audit", "verify", "--anchor", export.to_str().unwrap()],
    );
    assert!(
        text.contains(&format!(
            "BAD the database parts from the anchor at event {}",
            cut + 1
        )),
        "{text}"
    );
    // The gateway refuses to sign over it, so it does not start.
    let (code, stderr) = serve_exits(&gw).expect("the gateway started over a cut log");
    assert_ne!(code, 0);
    assert!(
        stderr.contains("the audit log was cut or rewritten in the database"),
        "{stderr}"
    );
}

#[test]
fn deleting_every_signature_and_editing_an_old_event_fails_verify() {
    let gw = gateway_with_history();
    sql(&gw, "DELETE FROM audit_signatures");
    sql(
        &gw,
        "UPDATE audit_events SET principal = 'nobody' WHERE id = 3",
    );
    rechain(&gw, 3);
    let (code, report) = verify(&gw);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report["first_bad_event"].is_null(),
        "re-chained: {report:#}"
    );
    assert_eq!(report["valid_signatures"], 0);
    let (_, text, _) = cli(&gw, &["audit", "verify"]);
    assert!(text.contains("BAD unsigned tail: events 1.."), "{text}");
    assert!(text.ends_with("FAILED\n"), "{text}");
}

/// The attacker replaces the recording of the session that ran `command`
/// with `bytes`, and rewrites its row and its `session_end` event to the
/// new digest, re-chains and deletes the heads.
fn rewrite_recording(gw: &TestGateway, command: &str, bytes: &[u8]) -> (String, i64) {
    let session = gw
        .sessions()
        .into_iter()
        .find(|s| s["command"] == command)
        .unwrap();
    let id = session["id"].as_str().unwrap().to_string();
    std::fs::write(session["recording_path"].as_str().unwrap(), bytes).unwrap();
    let sha = portcullis::recording::digest_file(std::path::Path::new(
        session["recording_path"].as_str().unwrap(),
    ))
    .unwrap()
    .sha256;
    let end = gw
        .audit_events()
        .into_iter()
        .find(|e| e["session_id"] == id.as_str() && e["kind"] == "session_end")
        .unwrap();
    let detail = end["detail"].as_str().unwrap();
    let old = session["recording_sha256"].as_str().unwrap();
    let forged = detail.replace(old, &sha);
    sql(
        gw,
        &format!(
            "UPDATE sessions SET recording_sha256 = '{sha}', recording_bytes = {} WHERE id = '{id}'; \
             UPDATE audit_events SET detail = '{}' WHERE id = {}; \
             DELETE FROM audit_signatures;",
            bytes.len(),
            forged.replace('\'', "''"),
            end["id"]
        ),
    );
    let event = end["id"].as_i64().unwrap();
    rechain(gw, event);
    (id, event)
}

#[test]
fn a_swapped_or_truncated_recording_with_rewritten_digests_is_caught() {
    let (gw, dir) = gateway_with_anchored_history();
    let other = gw
        .sessions()
        .into_iter()
        .find(|s| s["command"] == "echo second-session")
        .unwrap();
    let swapped = std::fs::read(other["recording_path"].as_str().unwrap()).unwrap();
    let (id, event) = rewrite_recording(&gw, "echo first-session", &swapped);
    let (code, report) = verify(&gw);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        report["bad_recordings"],
        serde_json::json!([]),
        "digests rewritten"
    );
    let export = dir.path().join("audit.jsonl");
    let (_, report) = verify_with(&gw, &["--anchor", export.to_str().unwrap()]);
    let d = &report["anchors"][0]["first_divergence"];
    assert_eq!(d["event_id"], event, "{report:#}");
    assert!(
        d["problem"]
            .as_str()
            .unwrap()
            .contains(&format!("session_end of session {id}")),
        "{report:#}"
    );

    // A truncated recording, without touching the database: named.
    let path = other["recording_path"].as_str().unwrap();
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    let (code, report) = verify(&gw);
    assert_eq!(code, 1);
    assert_eq!(
        report["bad_recordings"][0]["session_id"], other["id"],
        "{report:#}"
    );
}

#[test]
fn nothing_signed_is_not_ok_and_an_unreadable_host_key_trusts_no_key() {
    // A running gateway signs at most every 60 s: right after a session,
    // nothing is signed yet.
    let gw = gateway("");
    let r = ssh(&gw, &["echo unsigned"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (code, report) = verify(&gw);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["signatures"], 0);
    drop(gw);

    // A signed log, verified where the host key cannot be read.
    let gw = gateway_with_history();
    let key = gw.state_dir.join("host_ed25519_key");
    std::fs::rename(&key, gw.state_dir.join("elsewhere")).unwrap();
    let (code, report) = verify(&gw);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{report:#}"
    );
    assert!(
        report["bad_signatures"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("a key that is not trusted")
    );
}

#[test]
fn an_auditor_gets_a_bundle_verified_offline_and_a_report() {
    let (gw, _dir) = gateway_with_anchored_history();
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("evidence.tar");
    let today = "1d";
    let (code, text, err) = cli(
        &gw,
        &[
            "audit",
            "bundle",
            "--from",
            today,
            "--to",
            "2999-01-01",
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(", 2 sessions, 2 recordings"), "{text}");
    // Offline: no config, no database; the gateway's key given.
    let key = signing_key(&gw);
    let offline = |path: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["audit", "verify", "--bundle"])
            .arg(path)
            .args([
                "--trusted-key",
                &key,
                "--config",
                "/nonexistent/portcullis.toml",
            ])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = offline(&bundle);
    assert_eq!(code, 0, "{text}");
    assert!(text.ends_with("OK\n"), "{text}");
    // One flipped byte in a recording inside the tar: named.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let first = gw
        .sessions()
        .into_iter()
        .find(|s| s["command"] == "echo first-session")
        .unwrap();
    let cast = std::fs::read(first["recording_path"].as_str().unwrap()).unwrap();
    let at = bytes
        .windows(cast.len())
        .position(|w| w == cast.as_slice())
        .unwrap()
        + cast.len()
        - 3;
    bytes[at] ^= 1;
    let tampered = out.path().join("tampered.tar");
    std::fs::write(&tampered, bytes).unwrap();
    let (code, text) = offline(&tampered);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "BAD the recording of session {} has SHA-256",
            first["id"].as_str().unwrap()
        )),
        "{text}"
    );

    // The report, as CSV read by a CSV parser.
    let csv_path = out.path().join("report.csv");
    let (code, _, err) = cli(
        &gw,
        &[
            "audit",
            "report",
            "--from",
            today,
            "--to",
            "2999-01-01",
            "--format",
            "csv",
            "-o",
            csv_path.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let sessions: Vec<&csv::StringRecord> = rows.iter().filter(|r| &r[0] == "session").collect();
    assert_eq!(sessions.len(), 2);
    assert_eq!(&sessions[0][10], "echo first-session");
    assert_eq!(&sessions[0][2], "admin");
    let verification = rows.iter().find(|r| &r[0] == "verification").unwrap();
    assert_eq!(&verification[8], "OK");
}

#[test]
fn reviewers_list_show_search_and_export_sessions() {
    let gw = gateway("");
    let r = ssh(&gw, &["-tt", "echo needle-$((40+2)); echo other"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ssh(&gw, &["echo plain; exit 4"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let f = fixture();

    // Filters.
    let (code, out, _) = cli(
        &gw,
        &[
            "sessions",
            "list",
            "--json",
            "--principal",
            "admin",
            "--since",
            "1h",
        ],
    );
    assert_eq!(code, 0);
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(all.len(), 2);
    let (_, out, _) = cli(&gw, &["sessions", "list", "--json", "--principal", "alice"]);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 0);
    let (_, out, _) = cli(
        &gw,
        &[
            "sessions",
            "list",
            "--json",
            "--container",
            &f.container.name,
            "--login",
            "root",
            "--until",
            "2000-01-01T00:00:00Z",
        ],
    );
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 0);

    // Search finds the phrase with its time offset, after indexing.
    let needle_session = all
        .iter()
        .find(|s| s["command"].as_str().unwrap().contains("needle"))
        .unwrap();
    let mut hits: Vec<Value> = Vec::new();
    wait_until("the transcript index", Duration::from_secs(10), || {
        let (_, out, _) = cli(&gw, &["sessions", "search", "needle-42", "--json"]);
        hits = serde_json::from_str(&out).unwrap_or_default();
        !hits.is_empty()
    });
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["session_id"], needle_session["id"]);
    assert_eq!(hits[0]["text"], "needle-42");
    assert!(hits[0]["offset_seconds"].as_f64().unwrap() >= 0.0);
    let (code, _, _) = cli(&gw, &["sessions", "search", "not-in-any-transcript"]);
    assert_eq!(code, 1);

    // Show and export.
    let id = needle_session["id"].as_str().unwrap();
    let (code, out, _) = cli(&gw, &["sessions", "show", id, "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["session"]["id"], id);
    assert_eq!(shown["commands"][0], needle_session["command"]);
    let kinds: Vec<&str> = shown["audit_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["session_start", "session_end"]);
    let (code, out, _) = cli(&gw, &["sessions", "export", id, "--format", "txt"]);
    assert_eq!(code, 0);
    assert_eq!(out, "needle-42\nother\n");
    let (code, cast, _) = cli(&gw, &["sessions", "export", id, "--format", "cast"]);
    assert_eq!(code, 0);
    assert_eq!(
        cast,
        std::fs::read_to_string(needle_session["recording_path"].as_str().unwrap()).unwrap()
    );
}

#[test]
fn an_admin_kills_a_live_session_and_the_user_is_told_why() {
    let gw = gateway("");
    let dir = tempfile::tempdir().unwrap();
    let command = "echo started; sleep 60";
    let mut client = ssh_background(&gw, &["-tt", command], dir.path());
    let session = running_session(&gw, command);
    let id = session["id"].as_str().unwrap();

    // A reviewer watches read-only while it runs.
    let watcher = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["sessions", "watch", id, "--reviewer", "rita", "--config"])
        .arg(&gw.config_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill only once "started" is in the recording the watcher replays and
    // the watcher is attached (its session_control event), not after a
    // fixed pause: a loaded machine may take longer for either.
    let path = session["recording_path"].as_str().unwrap();
    wait_until(
        "\"started\" in the recording",
        Duration::from_secs(20),
        || recording_holds(path, "started"),
    );
    wait_until("the watcher to attach", Duration::from_secs(20), || {
        controlled_by(&gw, id, "rita")
    });
    let (code, out, err) = cli(
        &gw,
        &[
            "sessions",
            "kill",
            id,
            "--reason",
            "maintenance window",
            "--admin",
            "ops-admin",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ssh did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(dir.path().join("err")).unwrap();
    assert!(
        stderr.contains("session ended: maintenance window."),
        "{stderr}"
    );

    let watched = watcher.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&watched.stdout).contains("started"));

    let events: Vec<(String, String)> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["session_id"] == id)
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["principal"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        events.contains(&("session_control".into(), "rita".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&("session_control".into(), "ops-admin".into())),
        "{events:?}"
    );
    let terminated = gw.audit_events().into_iter().any(|e| {
        e["session_id"] == id
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("\"reason\":\"maintenance window\"")
            && e["principal"] == "admin"
    });
    assert!(terminated);
}

#[test]
fn a_full_recording_disk_ends_the_session_or_goes_on_as_configured() {
    for (mode, expect_complete) in [("terminate", false), ("continue", true)] {
        let gw_dir;
        let gw = {
            // Recordings on a 256 KiB tmpfs: 1 MiB of output cannot fit
            // (no free-space reserve: the disk really fills).
            let gw = gateway(&format!(
                "[recording]\non_failure = \"{mode}\"\nflush_interval = \"100ms\"\n\
                 min_free_bytes = 0\n"
            ));
            let recordings = gw.state_dir.join("recordings");
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
                .arg(&recordings)
                .status()
                .unwrap();
            assert!(ok.success(), "mount tmpfs");
            gw_dir = Some(recordings);
            gw
        };
        let r = ssh(
            &gw,
            &[
                "i=0; while [ $i -lt 20000 ]; do echo line-$i-padding-padding-padding-padding; i=$((i+1)); done; echo finished",
            ],
        );
        let out = String::from_utf8_lossy(&r.stdout);
        if expect_complete {
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert!(out.ends_with("finished\n"), "{mode}: output was cut");
        } else {
            assert_ne!(r.code, 0);
            assert!(!out.contains("finished"), "{mode}: session went on");
            assert!(
                r.stderr
                    .contains("session ended: the session recording failed."),
                "{}",
                r.stderr
            );
        }
        // The session's audit events are all written once its row is
        // closed, which comes after the client got its exit status.
        gw.wait_sessions_ended(1, |s| {
            s["command"].as_str().unwrap_or("").contains("line-$i")
        });
        let failures: Vec<Value> = gw
            .audit_events()
            .into_iter()
            .filter(|e| e["kind"] == "recording")
            .collect();
        assert_eq!(failures.len(), 1, "{mode}: {failures:?}");
        assert!(
            failures[0]["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("\"action\":\"{mode}\""))
        );
        drop(gw);
        let _ = Command::new("umount").arg(gw_dir.unwrap()).status();
    }
}

#[test]
fn two_gateways_on_one_postgres_share_sessions_and_one_unforked_chain() {
    let f = fixture();
    let url = common::postgres::server().new_database();
    let extra = format!(
        "[containers.{}]\nlabels = {{ env = \"dev\" }}\n",
        f.container.name
    );
    // Both sign every second, so both gateways' heads are in the chain.
    let extra = format!("{extra}[audit]\nsign_interval = \"1s\"\n");
    let a = TestGateway::start_with_database(
        &f.idp.issuer,
        &format!("gateway_id = \"gw-a\"\n{extra}"),
        Some(&url),
    );
    let b = TestGateway::start_with_database(
        &f.idp.issuer,
        &format!("gateway_id = \"gw-b\"\n{extra}"),
        Some(&url),
    );
    std::thread::scope(|scope| {
        for i in 0..6 {
            let gw = if i % 2 == 0 { &a } else { &b };
            scope.spawn(move || {
                let r = ssh(gw, &[&format!("echo shared-{i}")]);
                assert_eq!(r.code, 0, "{}", r.stderr);
            });
        }
    });
    // The clients are done, but their gateways close the rows (after the
    // session_end events the chain count below includes) a moment later.
    a.wait_sessions_ended(6, |s| {
        s["command"]
            .as_str()
            .unwrap_or("")
            .starts_with("echo shared-")
    });
    // Each gateway sees all six sessions.
    for gw in [&a, &b] {
        let shared = gw
            .sessions()
            .into_iter()
            .filter(|s| {
                s["command"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("echo shared-")
            })
            .count();
        assert_eq!(shared, 6);
    }
    // Verified on A with B's key listed: OK once both have signed.
    let b_key = signing_key(&b);
    let mut report = Value::Null;
    // Whichever gateway ticks first after new events signs them: add
    // events until each has signed a head.
    wait_until("heads by both gateways", Duration::from_secs(60), || {
        report = verify_with(&a, &["--trusted-key", &b_key]).1;
        let both = report["signers"].as_array().is_some_and(|s| s.len() == 2);
        if !both {
            let r = ssh(&b, &["true"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
        both
    });
    let (code, report) = verify_with(&a, &["--trusted-key", &b_key]);
    assert_eq!(code, 0, "{report:#}");
    assert!(report["events"].as_u64().unwrap() >= 6 * 4);
    // Without B's key, B's heads are named, not taken.
    let (code, alone) = verify(&a);
    assert_eq!(code, 1, "{alone:#}");
    assert!(
        alone["bad_signatures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["problem"]
                .as_str()
                .unwrap()
                .contains("(gw-b), a key that is not trusted")),
        "{alone:#}"
    );

    // A key bound through gateway A passes gateway B with no prompt at all.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("shared-key");
    common::gateway::keygen(&key);
    let user = format!("root@{}", f.container.name);
    let ask = tempfile::tempdir().unwrap();
    let mut bind = a.ssh_with_key(&user, &key, &f.admin_token, ask.path());
    bind.arg("echo bound-on-a");
    let r = run_ssh(&mut bind, b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut batch = b.ssh_batch(&user, &key, None);
    batch.arg("echo passed-on-b");
    let r = run_ssh(&mut batch, b"");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, b.log());
    assert_eq!(r.stdout, b"passed-on-b\n");

    // The same tampering as on one gateway: every head gone, an old event
    // edited and the chain recomputed. Neither gateway signs it again and
    // verify fails; A's anchor names where the database parts from it.
    sql(&a, "DELETE FROM audit_signatures");
    sql(
        &a,
        "UPDATE audit_events SET principal = 'nobody' WHERE id = 2",
    );
    rechain(&a, 2);
    let (code, report) = verify_with(&a, &["--trusted-key", &b_key]);
    assert_eq!(code, 1, "{report:#}");
    let anchor = a.state_dir.join("audit-heads");
    let (code, report) = verify_with(
        &a,
        &[
            "--trusted-key",
            &b_key,
            "--anchor",
            anchor.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        report["anchors"][0]["first_divergence"]["event_id"].is_i64(),
        "{report:#}"
    );
    for gw in [&a, &b] {
        wait_until("the refusal to sign", Duration::from_secs(20), || {
            gw.log()
                .contains("the audit log was cut or rewritten in the database")
        });
    }
}

#[test]
fn audit_events_are_exported_as_json_lines_for_the_siem() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("audit.jsonl");
    let gw = gateway(&format!("[audit]\nexport = \"{}\"\n", export.display()));
    let r = ssh(&gw, &["echo exported"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Its session_end is written after the client got the exit status.
    gw.wait_sessions_ended(1, |s| s["command"] == "echo exported");
    let rows = gw.audit_events();
    let mut lines: Vec<Value> = Vec::new();
    wait_until("the exported session_end", Duration::from_secs(10), || {
        // Signed heads go to the same file (schema portcullis.audit-head.v1).
        lines = std::fs::read_to_string(&export)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["schema"] == "portcullis.audit.v1")
            .collect();
        lines.len() == gw.audit_events().len()
    });
    let rows = if rows.len() == lines.len() {
        rows
    } else {
        gw.audit_events()
    };
    for (line, row) in lines.iter().zip(&rows) {
        assert_eq!(line["schema"], "portcullis.audit.v1");
        assert_eq!(line["id"], row["id"]);
        assert_eq!(line["hash"], row["hash"]);
        assert_eq!(line["kind"], row["kind"]);
        let detail: Value = serde_json::from_str(row["detail"].as_str().unwrap()).unwrap();
        assert_eq!(line["detail"], detail);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
    assert!(lines.iter().any(|l| l["kind"] == "session_end"));
}

/// `ssh portcullis@gw COMMAND_LINE` as the holder of `token`.
fn broker(gw: &TestGateway, token: &str, line: &str) -> SshResult {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh("portcullis", token, dir.path());
    cmd.arg(line);
    run_ssh(&mut cmd, b"")
}

#[test]
fn over_ssh_a_reviewer_watches_a_live_session_and_an_admin_kills_it() {
    let f = fixture();
    let gw = gateway("");
    let dir = tempfile::tempdir().unwrap();
    let command = "echo first-words; sleep 2; echo later-words; sleep 60";
    let mut client = ssh_background(&gw, &["-tt", command], dir.path());
    let session = running_session(&gw, command);
    let id = session["id"].as_str().unwrap();

    // A developer may not watch; an unknown id reads the same.
    let refused = broker(&gw, &f.alice_token, &format!("sessions watch {id}"));
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    // (ssh's own lines come first.)
    assert!(
        refused.stderr.ends_with(&format!(
            "\nportcullis: refused: you may not watch session {id}.\n"
        )),
        "{}",
        refused.stderr
    );
    let unknown = broker(&gw, &f.reviewer_token, "sessions watch 0000-nope");
    assert_eq!(unknown.code, 1);
    assert!(
        unknown
            .stderr
            .ends_with("\nportcullis: refused: you may not watch session 0000-nope.\n"),
        "{}",
        unknown.stderr
    );

    // The reviewer follows it from the start, read-only.
    let watch_dir = tempfile::tempdir().unwrap();
    let mut watch = gw.ssh("portcullis", &f.reviewer_token, watch_dir.path());
    watch
        .arg(format!("sessions watch {id}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let watcher = watch.spawn().unwrap();

    // A reviewer may not kill.
    let no_kill = broker(
        &gw,
        &f.reviewer_token,
        &format!("sessions kill {id} --reason \"not mine\""),
    );
    assert_eq!(no_kill.code, 1, "{}", no_kill.stderr);
    assert_eq!(
        gw.sessions()
            .iter()
            .filter(|s| s["id"] == id && s["status"] == "running")
            .count(),
        1
    );

    // Wait until the second line was written (and flushed, 1 s) and the
    // watcher is attached, however long a loaded machine takes.
    let path = session["recording_path"].as_str().unwrap();
    wait_until(
        "\"later-words\" in the recording",
        Duration::from_secs(20),
        || recording_holds(path, "later-words"),
    );
    wait_until("the watcher to attach", Duration::from_secs(20), || {
        controlled_by(&gw, id, "reviewer")
    });
    let killed = broker(
        &gw,
        &f.admin_token,
        &format!("sessions kill {id} --reason \"change freeze\""),
    );
    assert_eq!(
        (
            killed.code,
            String::from_utf8_lossy(&killed.stdout).into_owned()
        ),
        (0, format!("Session {id} ended.\n")),
        "{}",
        killed.stderr
    );
    let started = Instant::now();
    while client.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ssh did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = std::fs::read_to_string(dir.path().join("err")).unwrap();
    assert!(stderr.contains("session ended: change freeze."), "{stderr}");

    let watched = watcher.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(watched.status.code(), Some(0), "{out}");
    assert!(out.starts_with("first-words\r\nlater-words\r\n"), "{out:?}");
    let watch_err = String::from_utf8_lossy(&watched.stderr);
    assert!(
        watch_err.ends_with(&format!("\n\nportcullis: session {id} ended.\n")),
        "{watch_err}"
    );

    let events: Vec<(String, String, Value)> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["session_id"] == id)
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["principal"].as_str().unwrap_or("").to_string(),
                serde_json::from_str(e["detail"].as_str().unwrap_or("null")).unwrap_or(Value::Null),
            )
        })
        .collect();
    let decided = |who: &str, action: &str, allowed: bool| {
        events.iter().any(|(k, p, d)| {
            k == "decision" && p == who && d["action"] == action && d["allowed"] == allowed
        })
    };
    assert!(decided("alice", "watch", false), "{events:?}");
    assert!(
        gw.audit_events().iter().any(|e| e["kind"] == "decision"
            && e["principal"] == "reviewer"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("no session 0000-nope")),
        "the unknown id is audited"
    );
    assert!(decided("reviewer", "watch", true), "{events:?}");
    assert!(decided("reviewer", "kill", false), "{events:?}");
    assert!(decided("admin", "kill", true), "{events:?}");
    let control = |who: &str, key: &str| {
        events
            .iter()
            .any(|(k, p, d)| k == "session_control" && p == who && !d[key].is_null())
    };
    assert!(control("reviewer", "reviewer"), "{events:?}");
    assert!(control("admin", "reason"), "{events:?}");
}
