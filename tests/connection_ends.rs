//! A connection lives no longer than what allows it (issue 12, points 2
//! to 5), from where the user stands: the stock OpenSSH client, a real
//! busybox LXC container, the real test IdP, and the gateway in process
//! (`common::inproc`) where no container is needed.
//!
//! - A lock (on a key, a group) ends a live PTY session and closes a
//!   ControlMaster connection with no session open, within 1 s of the
//!   lock's own audit event (the gateway's timestamps), with the reason
//!   shown; on PostgreSQL, a second gateway sharing the database does
//!   the same for a lock added through the first one's broker.
//! - A connection is closed when its credential ends: a certificate's
//!   `valid_before`, a pasted ID token's `exp` (no refresh token).
//! - `auth.unused_connection_timeout` closes a connection with no channel
//!   open, not one with a channel open.
//! - After a policy reload a live session the policy now denies ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::World;
use common::gateway::{TestGateway, fingerprint_of, run_ssh};
use common::inproc::InProcess;
use serde_json::Value;

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        World::builder()
            .container("cends")
            .users(&["admin", "alice"])
            .bound_keys()
            .start()
    })
}

fn on_postgres() -> bool {
    std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() == Ok("postgres")
}

/// A running `ssh` client whose stderr goes to a file (read after it
/// exits, so nothing blocks on a full pipe).
struct Client {
    child: Child,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Client {
    fn spawn(mut cmd: std::process::Command) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Client {
            child,
            stderr,
            _dir: dir,
        }
    }

    /// Reads stdout up to the first line and returns it.
    fn first_line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    }

    /// Waits (at most 30 s) for the client to exit; its exit code, the
    /// rest of its stdout and its stderr.
    fn wait(mut self) -> (i32, String, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                let _ = self.child.stdout.as_mut().unwrap().read_to_string(&mut out);
                let err = std::fs::read_to_string(&self.stderr).unwrap();
                return (status.code().unwrap_or(-1), out, err);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ssh still runs: {}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh -tt LOGIN@container 'echo ready; sleep 600'` as `user`: a live PTY
/// session, once it printed `ready`.
fn pty_session(gw: &TestGateway, user: &str, login: &str) -> Client {
    let w = world();
    let target = format!("{login}@{}", w.container().name);
    let mut cmd = gw.ssh_batch(&target, w.key(user), Some(w.cert(user)));
    cmd.args(["-tt", "echo ready; sleep 600"]);
    let mut client = Client::spawn(cmd);
    assert_eq!(client.first_line(), "ready\r\n");
    client
}

/// A ControlMaster connection (`ssh -M -S PATH -N`) of `user` with no
/// session open, once its control socket exists.
fn control_master(gw: &TestGateway, user: &str, login: &str) -> (Client, tempfile::TempDir) {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cm");
    let target = format!("{login}@{}", w.container().name);
    let mut cmd = gw.ssh_batch(&target, w.key(user), Some(w.cert(user)));
    cmd.arg("-M").arg("-S").arg(&path).arg("-N");
    let client = Client::spawn(cmd);
    common::wait_until("the control master", Duration::from_secs(20), || {
        path.exists()
    });
    (client, dir)
}

fn detail(e: &Value) -> Value {
    serde_json::from_str(e["detail"].as_str().unwrap()).unwrap()
}

/// The audit events of `gw` of `kind` whose detail's `reason` is `reason`.
fn events_with_reason(gw: &TestGateway, kind: &str, reason: &str) -> Vec<Value> {
    gw.audit_events()
        .into_iter()
        .filter(|e| e["kind"] == kind && detail(e)["reason"] == reason)
        .collect()
}

/// When lock `id` was added (its audit event), unix ms.
fn lock_added_at(gw: &TestGateway, value: &str) -> i64 {
    gw.audit_events()
        .into_iter()
        .find(|e| e["kind"] == "lock" && detail(e)["value"] == value)
        .and_then(|e| e["at"].as_i64())
        .unwrap()
}

/// Asserts every event in `events` came at most 1 s after `since`, and
/// prints how long after.
fn within_a_second(what: &str, since: i64, events: &[Value]) {
    for e in events {
        let after = e["at"].as_i64().unwrap() - since;
        eprintln!("{what}: {after} ms after the lock");
        assert!((0..=1000).contains(&after), "{what}: {after} ms: {e}");
    }
}

#[test]
fn a_lock_on_a_key_ends_a_pty_session_and_closes_a_control_master_within_a_second() {
    let w = world();
    let gw = w.another_gateway("");
    let (master, _socket) = control_master(&gw, "admin", "app");
    let pty = pty_session(&gw, "admin", "app");
    let key = fingerprint_of(&w.key("admin").with_extension("pub"));
    let out = gw.cli(&["lock", "add", "--key", &key, "--reason", "OPS-4 key leaked"]);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let reason = format!("locked ({id}): OPS-4 key leaked");
    // The PTY session ends and its user reads why.
    let (code, stdout, stderr) = pty.wait();
    assert_ne!(code, 0);
    assert!(
        format!("{stdout}{stderr}").contains(&format!("session ended: {reason}.")),
        "{stdout:?} {stderr:?}"
    );
    // The master, with no session open, is closed and says why.
    let (_, _, master_err) = master.wait();
    assert!(
        master_err.contains(&format!("Portcullis: connection closed: {reason}.")),
        "{master_err}\n{}",
        gw.log()
    );
    // Within 1 s of the lock, by the gateway's own clock: the session's
    // end and both connections' close.
    let locked = lock_added_at(&gw, &key);
    let ended = events_with_reason(&gw, "session_control", &reason);
    assert_eq!(ended.len(), 1, "{ended:?}");
    within_a_second("the PTY session ended", locked, &ended);
    let closed = events_with_reason(&gw, "connection", &reason);
    assert_eq!(closed.len(), 2, "{closed:?}");
    within_a_second("a connection was closed", locked, &closed);
    // A new connection with that key is refused at authentication.
    let target = format!("app@{}", w.container().name);
    let mut again = gw.ssh_batch(&target, w.key("admin"), Some(w.cert("admin")));
    let again = run_ssh(again.arg("echo never"), b"");
    assert_eq!((again.code, again.stdout.as_slice()), (255, &b""[..]));
    let refused = events_with_reason(&gw, "authentication", &reason);
    assert_eq!(refused.len(), 1, "{refused:?}");
    // Listed with its kind; removed, the key logs in again.
    let listed = gw.cli(&["lock", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        (&listed[0]["target"], &listed[0]["value"]),
        (&Value::from("key"), &Value::from(key.as_str()))
    );
    let out = gw.cli(&["locks", "remove", &id]);
    assert!(out.status.success(), "{out:?}");
    let mut back = gw.ssh_batch(&target, w.key("admin"), Some(w.cert("admin")));
    let back = run_ssh(back.arg("echo back"), b"");
    assert_eq!(back.stdout, b"back\n", "{}", back.stderr);
}

#[test]
fn on_postgresql_a_second_gateway_enforces_a_group_lock_within_a_second() {
    if !on_postgres() {
        eprintln!(
            "skipped: two gateways share a database only on PostgreSQL \
             (PORTCULLIS_TEST_DATABASE=postgres)"
        );
        return;
    }
    let w = world();
    let url = common::postgres::server().new_database();
    let first = w.gateway_on_database("", Some(&url));
    let second = w.gateway_on_database("", Some(&url));
    let (master, _socket) = control_master(&second, "alice", "app");
    let pty = pty_session(&second, "alice", "app");
    // An admin locks the developers through the first gateway's broker.
    let mut cmd = first.ssh_batch("portcullis", w.key("admin"), Some(w.cert("admin")));
    cmd.arg("lock add --group developers --reason 'OPS-5 incident' --for 1h --json");
    let added = run_ssh(&mut cmd, b"");
    assert_eq!(added.code, 0, "{}", added.stderr);
    let added: Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(added["target"], "group");
    assert!(added["expires_at"].is_i64(), "{added}");
    let reason = format!("locked ({}): OPS-5 incident", added["id"].as_str().unwrap());
    let (code, stdout, stderr) = pty.wait();
    assert_ne!(code, 0);
    assert!(
        format!("{stdout}{stderr}").contains(&format!("session ended: {reason}.")),
        "{stdout:?} {stderr:?}"
    );
    let (_, _, master_err) = master.wait();
    assert!(
        master_err.contains(&format!("Portcullis: connection closed: {reason}.")),
        "{master_err}\n{}",
        second.log()
    );
    // One audit log: the lock's event (first gateway) and the ends (second).
    let locked = lock_added_at(&first, "developers");
    within_a_second(
        "the second gateway's session ended",
        locked,
        &events_with_reason(&first, "session_control", &reason),
    );
    let closed = events_with_reason(&first, "connection", &reason);
    assert_eq!(closed.len(), 2, "{closed:?}");
    within_a_second("a second gateway's connection was closed", locked, &closed);
}

#[test]
fn a_connection_is_closed_when_its_pasted_id_token_expires() {
    let w = world();
    let gw = w.another_gateway("");
    let idp = w.idp();
    let mut claims = idp.standard_claims("alice");
    let exp = common::idp::now_secs() + 4;
    claims["exp"] = Value::from(exp);
    let token = idp.mint_id_token(claims);
    let askpass = tempfile::tempdir().unwrap();
    let target = format!("app@{}", w.container().name);
    let mut cmd = gw.ssh(&target, &token, askpass.path());
    cmd.args(["-o", "PubkeyAuthentication=no", "-N"]);
    let client = Client::spawn(cmd);
    let (_, _, stderr) = client.wait();
    let reason = "your ID token expired";
    assert!(
        stderr.contains(&format!("Portcullis: connection closed: {reason}.")),
        "{stderr}\n{}",
        gw.log()
    );
    let closed = events_with_reason(&gw, "connection", reason);
    assert_eq!(closed.len(), 1, "{closed:?}");
    let after = closed[0]["at"].as_i64().unwrap() - (exp as i64) * 1000;
    eprintln!("closed {after} ms after the ID token's exp");
    assert!((0..=1000).contains(&after), "{after} ms");
}

/// Polls (at most `limit`) until `connection` is closed; how long it took.
async fn closed_within(connection: &common::inproc::Connection, limit: Duration) -> Duration {
    let started = Instant::now();
    while !connection.is_closed() {
        assert!(started.elapsed() < limit, "still open after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// The `connection` audit events of `gw`: (unix ms, reason).
async fn closes(gw: &InProcess) -> Vec<(i64, String)> {
    gw.gateway
        .store
        .audit_events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "connection")
        .map(|e| {
            let detail: Value = serde_json::from_str(&e.detail).unwrap();
            (e.at, detail["reason"].as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn a_connection_is_closed_when_its_certificate_expires() {
    let gw = InProcess::start("").await;
    let user = gw.user_valid("carol", &["developers"], &[], "-5m:+3s");
    let valid_before = i64::try_from(user.certificate().valid_before()).unwrap() * 1000;
    let connection = user.connect("app@web1").await;
    closed_within(&connection, Duration::from_secs(15)).await;
    let closed = closes(&gw).await;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].1, "the certificate expired");
    let after = closed[0].0 - valid_before;
    eprintln!("closed {after} ms after the certificate's valid_before");
    assert!((0..=1000).contains(&after), "{after} ms");
    gw.stop().await;
}

#[tokio::test]
async fn an_unused_connection_is_closed_and_one_in_use_is_not() {
    let gw = InProcess::start("[auth]\nunused_connection_timeout = \"1s\"\n").await;
    let user = gw.user("dave", &["developers"]);
    // No channel at all: closed after 1 s.
    let idle = user.connect("app@web1").await;
    let took = closed_within(&idle, Duration::from_secs(10)).await;
    eprintln!("the unused connection was closed after {took:?}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    // A channel open for 2.5 s keeps it; once closed, 1 s more ends it.
    let busy = user.connect("app@web1").await;
    let channel = busy.open_session().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!busy.is_closed());
    channel.close().await.unwrap();
    let took = closed_within(&busy, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let reason = "no channel open for 1s (auth.unused_connection_timeout)";
    let closed = closes(&gw).await;
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed.iter().all(|(_, r)| r == reason), "{closed:?}");
    gw.stop().await;
}

/// `ssh LOGIN@container 'echo ready; sleep 600'` as `user`, once it
/// printed `ready` (no PTY).
fn live_command(gw: &TestGateway, user: &str, login: &str) -> Client {
    let w = world();
    let target = format!("{login}@{}", w.container().name);
    let mut cmd = gw.ssh_batch(&target, w.key(user), Some(w.cert(user)));
    cmd.arg("echo ready; sleep 600");
    let mut client = Client::spawn(cmd);
    assert_eq!(client.first_line(), "ready\n");
    client
}

#[test]
fn a_policy_reload_ends_the_live_sessions_it_now_denies() {
    let w = world();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let gw = w.another_gateway(&format!("[policy]\ndir = \"{}\"\n", dir.path().display()));
    let alice = live_command(&gw, "alice", "app");
    let mut admin = live_command(&gw, "admin", "app");
    // Developers lose shells and commands; admins keep theirs.
    let access = dir.path().join("access.cedar");
    let good = std::fs::read_to_string(&access).unwrap();
    let without = good.replace(
        "principal in Group::\"developers\",\n  action in [Action::\"shell\", Action::\"exec\"]",
        "principal in Group::\"nobody\",\n  action in [Action::\"shell\", Action::\"exec\"]",
    );
    assert_ne!(without, good);
    std::fs::write(&access, without).unwrap();
    let reloaded = gw.cli(&["policy", "reload"]);
    assert!(reloaded.status.success(), "{reloaded:?}");
    let (code, _, stderr) = alice.wait();
    assert_ne!(code, 0);
    let reason = "the policy no longer allows it";
    assert!(
        stderr.contains(&format!("Portcullis: session ended: {reason}.")),
        "{stderr}\n{}",
        gw.log()
    );
    let ended = events_with_reason(&gw, "session_control", reason);
    assert_eq!(ended.len(), 1, "{ended:?}");
    let reload = gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "policy" && e["outcome"] == "info")
        .unwrap();
    let after = ended[0]["at"].as_i64().unwrap() - reload["at"].as_i64().unwrap();
    eprintln!("the denied session ended {after} ms after the reload's event");
    assert!((0..=1000).contains(&after), "{after} ms");
    // The admin's session, still allowed, runs on.
    assert!(admin.child.try_wait().unwrap().is_none());
    assert_eq!(
        gw.sessions()
            .iter()
            .filter(|s| s["status"] == "running")
            .count(),
        1
    );
}
