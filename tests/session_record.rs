//! The record of a session (issue 11): every front end writes it through
//! one path, so it reads the same whoever started the session, and its
//! start and its end are each one transaction of row and audit event.
//!
//! - `portcullis attach` and ssh name a killing signal alike (`KILL`).
//! - A database that refuses the `session_start` event leaves no session
//!   row; one that refuses the `session_end` event leaves no row closed
//!   without its event (the attack: a database writer or a full disk
//!   that drops audit events must not leave records that say otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::World;
use common::gateway::{TestGateway, run_ssh};
use serde_json::Value;

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World::builder().container("rec").users(&["admin"]).start())
}

fn target() -> String {
    format!("root@{}", world().container().name)
}

fn detail(e: &Value) -> Value {
    serde_json::from_str(e["detail"].as_str().unwrap()).unwrap()
}

/// The session rows of `gw` whose command is `command`.
fn sessions_of(gw: &TestGateway, command: &str) -> Vec<Value> {
    gw.sessions()
        .into_iter()
        .filter(|s| s["command"] == command)
        .collect()
}

/// `ssh` as admin (certificate) to the container through `gw`.
fn ssh(gw: &TestGateway, command: &str) -> common::gateway::SshResult {
    let w = world();
    let mut cmd = gw.ssh_batch(&target(), w.key("admin"), Some(w.cert("admin")));
    cmd.arg(command);
    run_ssh(&mut cmd, b"")
}

#[test]
fn portcullis_attach_and_ssh_name_a_killing_signal_alike() {
    let w = world();
    let gw = w.gateway();
    let by_cli = "kill -9 $$ # attach";
    // `--config` before the subcommand: after `--` it would be the command.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--config")
        .arg(&gw.config_path)
        .args(["attach", &w.container().name, "--", by_cli])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let by_ssh = "kill -9 $$ # ssh";
    let r = ssh(gw, by_ssh);
    assert_eq!(r.code, 255, "{}", r.stderr);
    for command in [by_cli, by_ssh] {
        let rows = gw.wait_sessions_ended(1, |s| s["command"] == command);
        assert_eq!(rows[0]["exit_signal"], "KILL", "{command}: {:?}", rows[0]);
        assert_eq!(rows[0]["status"], "ended");
        let end = gw
            .audit_events()
            .into_iter()
            .find(|e| e["session_id"] == rows[0]["id"] && e["kind"] == "session_end")
            .unwrap();
        assert_eq!(detail(&end)["exit_signal"], "KILL", "{command}");
    }
}

/// Makes `gw`'s database refuse audit events of `kind` (a trigger), as a
/// database that fails or is tampered with would.
fn refuse_audit_events(gw: &TestGateway, kind: &str) {
    if gw.on_postgres() {
        gw.sql(&format!(
            "CREATE FUNCTION refuse_{kind}() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_{kind} BEFORE INSERT ON audit_events FOR EACH ROW \
             WHEN (NEW.kind = '{kind}') EXECUTE FUNCTION refuse_{kind}();"
        ));
    } else {
        gw.sql(&format!(
            "CREATE TRIGGER refuse_{kind} BEFORE INSERT ON audit_events \
             WHEN NEW.kind = '{kind}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
        ));
    }
}

#[test]
fn a_start_that_cannot_be_audited_leaves_no_session_row() {
    let w = world();
    let gw = w.another_gateway("");
    refuse_audit_events(&gw, "session_start");
    let command = "echo never-started";
    let r = ssh(&gw, command);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("Access refused"), "{}", r.stderr);
    // The refusal reached the client after the start was given up.
    assert_eq!(sessions_of(&gw, command), Vec::<Value>::new());
}

#[test]
fn an_end_that_cannot_be_audited_leaves_no_row_closed_without_its_event() {
    let w = world();
    let mut gw = w.another_gateway("");
    refuse_audit_events(&gw, "session_end");
    let command = "echo ended-unaudited";
    let r = ssh(&gw, command);
    assert_eq!(
        (r.code, r.stdout.as_slice()),
        (0, &b"ended-unaudited\n"[..])
    );
    // Wait until the gateway either closed the row or gave up closing it.
    common::wait_until("the close attempt", Duration::from_secs(30), || {
        sessions_of(&gw, command)
            .iter()
            .any(|s| s["status"] != "running")
            || gw.log().contains("cannot close the session record")
    });
    let rows = sessions_of(&gw, command);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["status"], "running",
        "the row was closed without its session_end event"
    );
    // A restart of the gateway marks it interrupted, with its event.
    gw.stop();
    gw.sql(if gw.on_postgres() {
        "DROP TRIGGER refuse_session_end ON audit_events"
    } else {
        "DROP TRIGGER refuse_session_end"
    });
    gw.restart();
    let rows = gw.wait_sessions_ended(1, |s| s["command"] == command);
    assert_eq!(rows[0]["status"], "interrupted");
    let kinds: Vec<String> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["session_id"] == rows[0]["id"])
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["session_start", "session_end"]);
}
