//! Access that really ends (issue 12), from where the attacker stands:
//! real busybox LXC containers, the real gateway binary and the stock
//! OpenSSH client, certificate logins (alice = developers, admin = admins).
//!
//! - Root is a uid: `toor:x:0:0` in the container's `/etc/passwd` is root
//!   for the shipped "never as root" policy (review M2, attach finding 8).
//! - Every process of a session ends with it: `setsid`, `nohup` and a
//!   double fork are gone after the session exits and after `sessions
//!   kill` (review H4, attach finding 12).
//! - Live access ends: a lock ends live sessions and refuses the next
//!   session of a ControlMaster connection; so does a revoked key binding
//!   (review H5).
//! - Time limits: `session.idle_timeout` (keepalives do not count; input
//!   does) and `session.max_duration` end a session with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::World;
use common::gateway::{SshResult, TestGateway, run_ssh};
use serde_json::Value;

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let world = World::builder()
            .container("ends")
            .users(&["admin", "alice", "approver"])
            .bound_keys()
            .start();
        // A uid-0 alias, as anyone who once held root could leave behind.
        let passwd = world.container().rootfs.join("etc/passwd");
        let mut text = std::fs::read_to_string(&passwd).unwrap();
        text.push_str("toor:x:0:0::/root:/bin/sh\n");
        std::fs::write(&passwd, text).unwrap();
        world
    })
}

/// `ssh LOGIN@container COMMAND` as `user` (certificate) through `gw`.
fn ssh_as(gw: &TestGateway, user: &str, login: &str, command: &str) -> SshResult {
    let w = world();
    let target = format!("{login}@{}", w.container().name);
    let mut cmd = gw.ssh_batch(&target, w.key(user), Some(w.cert(user)));
    cmd.arg(command);
    run_ssh(&mut cmd, b"")
}

fn detail(e: &Value) -> Value {
    serde_json::from_str(e["detail"].as_str().unwrap()).unwrap()
}

/// The `decision` events of `gw` for `login` (the login resolved, the
/// decision), details parsed, oldest first.
fn decisions(gw: &TestGateway, login: &str) -> Vec<Value> {
    let mut events = gw.audit_events();
    events.sort_by_key(|e| e["id"].as_i64());
    events
        .into_iter()
        .filter(|e| e["kind"] == "decision")
        .map(|e| detail(&e))
        .filter(|d| d["login"] == login)
        .collect()
}

#[test]
fn a_uid_0_alias_is_root_for_the_policy() {
    let w = world();
    let gw = w.gateway();
    // alice (developers) may be a plain user on env=dev...
    let app = ssh_as(gw, "alice", "app", "id -u");
    assert_eq!(
        (app.code, String::from_utf8_lossy(&app.stdout).as_ref()),
        (0, "1000\n"),
        "{}",
        app.stderr
    );
    // ...but never root, whatever the name of the account.
    let toor = ssh_as(gw, "alice", "toor", "id -u");
    assert_eq!(toor.code, 1, "toor got in: {:?}\n{}", toor, gw.log());
    assert!(toor.stdout.is_empty(), "{:?}", toor.stdout);
    assert!(
        toor.stderr.contains(&format!(
            "Access denied: you may not run commands as toor on {}.",
            w.container().name
        )),
        "{}",
        toor.stderr
    );
    // Audited: the uid the login resolved to, then the denial.
    let decided = decisions(gw, "toor");
    assert_eq!(decided.len(), 2, "{decided:?}");
    assert_eq!(
        (&decided[0]["uid"], &decided[0]["gid"]),
        (&Value::from(0), &Value::from(0)),
        "{decided:?}"
    );
    assert_eq!(decided[1]["allowed"], false, "{decided:?}");
    assert_eq!(decided[1]["action"], "exec", "{decided:?}");
    // Admins may be root under either name; the decision records the uid.
    let admin = ssh_as(gw, "admin", "toor", "id -u");
    assert_eq!(
        (admin.code, String::from_utf8_lossy(&admin.stdout).as_ref()),
        (0, "0\n"),
        "{}",
        admin.stderr
    );
}

/// Host pids of processes in the test container whose command line holds
/// `needle`.
fn running(needle: &str) -> Vec<i32> {
    world().container().processes_matching(needle)
}

/// Asserts that nothing in the container matches any of `needles` now:
/// a session's processes are gone by the time its client is told it ended
/// (not some time later).
fn all_gone(needles: &[String]) {
    let left: Vec<(&String, Vec<i32>)> = needles
        .iter()
        .map(|n| (n, running(n)))
        .filter(|(_, pids)| !pids.is_empty())
        .collect();
    assert!(
        left.is_empty(),
        "still running after the session ended: {left:?}"
    );
}

/// Three ways to outlive a shell: a new session (`setsid`), ignoring
/// SIGHUP (what `nohup` does; busybox has no `nohup`) and a double fork;
/// they sleep `base`1, `base`2 and `base`3 seconds. The script returns once
/// all three run, and never names them itself (so that the session's own
/// shell does not match them).
fn escapes(base: u32) -> (String, [String; 3]) {
    let names = [1, 2, 3].map(|i| format!("sleep {base}{i}"));
    let script = format!(
        "export b={base}; \
         setsid sleep ${{b}}1 </dev/null >/dev/null 2>&1 & \
         (trap '' HUP; exec sleep ${{b}}2) </dev/null >/dev/null 2>&1 & \
         (sh -c 'sleep ${{b}}3 </dev/null >/dev/null 2>&1 &' &) ; \
         until [ \"$(ps -o args | grep -c \"^sleep ${{b}}[123]$\")\" = 3 ]; do sleep 0.05; done; "
    );
    (script, names)
}

#[test]
fn processes_started_by_a_session_end_when_it_exits() {
    let gw = world().gateway();
    let (script, names) = escapes(77);
    let r = ssh_as(gw, "admin", "app", &format!("{script} echo started"));
    assert_eq!(
        (r.code, r.stdout.as_slice()),
        (0, &b"started\n"[..]),
        "{}",
        r.stderr
    );
    all_gone(&names);
}

/// A running `ssh` whose remote command printed its first line.
struct Live {
    child: Child,
}

impl Live {
    fn start(gw: &TestGateway, user: &str, login: &str, command: &str) -> Live {
        let w = world();
        let target = format!("{login}@{}", w.container().name);
        let mut cmd = gw.ssh_batch(&target, w.key(user), Some(w.cert(user)));
        let mut child = cmd
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        Live { child }
    }

    /// Waits for the client to exit (at most 30 s); its exit code and stderr.
    fn wait(mut self) -> (i32, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err)
                    .unwrap();
                return (status.code().unwrap_or(-1), err);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ssh still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The id of `gw`'s running session whose command is `command`.
fn running_session(gw: &TestGateway, command: &str) -> String {
    let mut id = None;
    common::wait_until("the session row", Duration::from_secs(10), || {
        id = gw
            .sessions()
            .into_iter()
            .find(|s| s["command"] == command && s["status"] == "running")
            .and_then(|s| s["id"].as_str().map(str::to_owned));
        id.is_some()
    });
    id.unwrap()
}

#[test]
fn processes_started_by_a_session_end_when_it_is_killed() {
    let gw = world().gateway();
    let (script, names) = escapes(78);
    let command = format!("{script} echo ready; sleep 600");
    let live = Live::start(gw, "admin", "app", &command);
    for name in &names {
        common::wait_until(name, Duration::from_secs(10), || !running(name).is_empty());
    }
    let id = running_session(gw, &command);
    let out = gw.cli(&["sessions", "kill", &id, "--reason", "OPS-1 test"]);
    assert!(out.status.success(), "{out:?}");
    // `sessions kill` returns once the session's row is closed.
    all_gone(&names);
    let (code, stderr) = live.wait();
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("OPS-1 test"), "{stderr}");
}

#[test]
fn processes_started_under_a_grant_end_at_its_expiry() {
    let w = world();
    let gw = w.another_gateway("");
    let container = &w.container().name;
    let broker = |user: &str, line: &str| {
        let mut cmd = gw.ssh_batch("portcullis", w.key(user), Some(w.cert(user)));
        cmd.arg(line);
        let r = run_ssh(&mut cmd, b"");
        assert_eq!(r.code, 0, "{line}: {}\n{}", r.stderr, gw.log());
        serde_json::from_slice::<Value>(&r.stdout).unwrap()
    };
    let line =
        format!("request {container} --login root --for 4s --reason \"OPS-7 on call\" --json");
    let id = broker("alice", &line)["id"].as_str().unwrap().to_string();
    let grant = broker("approver", &format!("approve {id} --json"));
    let expires_at = grant["expires_at"].as_i64().unwrap();
    let (script, names) = escapes(79);
    let command = format!("{script} echo ready; sleep 600");
    let live = Live::start(&gw, "alice", "root", &command);
    let (code, stderr) = live.wait();
    // The client is told once every process of the session is gone.
    all_gone(&names);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("the grant {id} expired")),
        "{stderr}"
    );
    let row = gw.wait_sessions_ended(1, |s| s["command"] == command.as_str());
    let ended_at = row[0]["ended_at"].as_i64().unwrap();
    eprintln!(
        "the granted session ended {} ms after the grant's expiry",
        ended_at - expires_at
    );
    assert!(ended_at >= expires_at, "{row:?} {grant}");
}

/// A ControlMaster connection (`ssh -M -S PATH -N`) of `user` to `login@`
/// the container through `gw`, with `user`'s certificate (or its bound key
/// when `cert` is false); stops with the value.
struct Master {
    child: Child,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Master {
    fn open(gw: &TestGateway, user: &str, login: &str, cert: bool) -> Master {
        let w = world();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm");
        let target = format!("{login}@{}", w.container().name);
        let mut cmd = gw.ssh_batch(&target, w.key(user), cert.then(|| w.cert(user)));
        let child = cmd
            .arg("-M")
            .arg("-S")
            .arg(&path)
            .arg("-N")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let master = Master {
            child,
            path,
            _dir: dir,
        };
        common::wait_until("the control master", Duration::from_secs(20), || {
            master.path.exists()
        });
        master
    }

    /// `ssh -S PATH target COMMAND` through the master: no new
    /// authentication, a new channel on the same connection.
    fn ssh(&self, gw: &TestGateway, login: &str, command: &str) -> SshResult {
        let w = world();
        let target = format!("{login}@{}", w.container().name);
        let mut cmd = gw.ssh_batch(&target, w.key("admin"), None);
        cmd.arg("-S").arg(&self.path).arg(command);
        run_ssh(&mut cmd, b"")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events of `gw` of `kind`, details parsed.
fn events(gw: &TestGateway, kind: &str) -> Vec<Value> {
    gw.audit_events()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| detail(&e))
        .collect()
}

#[test]
fn a_lock_ends_live_sessions_and_refuses_a_control_masters_next_one() {
    let w = world();
    let gw = w.another_gateway("");
    let master = Master::open(&gw, "admin", "app", true);
    let first = master.ssh(&gw, "app", "echo through-the-master");
    assert_eq!(first.stdout, b"through-the-master\n", "{}", first.stderr);
    let principal = gw.sessions()[0]["principal"].as_str().unwrap().to_string();
    // A live session on the same connection, and one on a connection of
    // its own.
    let command = "echo ready; sleep 600";
    let live = Live::start(&gw, "admin", "app", command);
    let out = gw.cli(&[
        "locks",
        "add",
        "--principal",
        &principal,
        "--reason",
        "OPS-2 offboarded",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lock_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(lock_id.len(), 12, "{lock_id}");
    let locked = Instant::now();
    let (code, stderr) = live.wait();
    eprintln!(
        "the live session ended {:?} after the lock was added",
        locked.elapsed()
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!(
            "session ended: locked ({lock_id}): OPS-2 offboarded"
        )),
        "{stderr}"
    );
    // The master's connection stays up, but it opens nothing more.
    let refused = master.ssh(&gw, "app", "echo never");
    assert_eq!(
        (refused.code, refused.stdout.as_slice()),
        (1, &b""[..]),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(&format!(
            "Access denied: locked ({lock_id}): OPS-2 offboarded."
        )),
        "{}",
        refused.stderr
    );
    // A new connection is refused at authentication.
    let fresh = ssh_as(&gw, "admin", "app", "echo never");
    assert_eq!(
        (fresh.code, fresh.stdout.as_slice()),
        (255, &b""[..]),
        "{}",
        fresh.stderr
    );
    let added = events(&gw, "lock");
    assert_eq!(added[0]["value"], principal.as_str(), "{added:?}");
    let terminated = events(&gw, "session_control");
    assert!(
        terminated
            .iter()
            .any(|d| d["reason"] == format!("locked ({lock_id}): OPS-2 offboarded")),
        "{terminated:?}"
    );
    let refusals = events(&gw, "target");
    assert!(
        refusals
            .iter()
            .any(|d| d["reason"] == format!("locked ({lock_id}): OPS-2 offboarded")),
        "{refusals:?}"
    );
    // Removed: the master opens sessions again.
    let out = gw.cli(&["locks", "remove", &lock_id]);
    assert!(out.status.success(), "{out:?}");
    let again = master.ssh(&gw, "app", "echo again");
    assert_eq!(again.stdout, b"again\n", "{}", again.stderr);
    let listed = gw.cli(&["locks", "list", "--all", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], lock_id.as_str());
    assert!(listed[0]["removed_at"].is_i64(), "{listed}");
    assert_eq!(events(&gw, "lock").len(), 2);
}

#[test]
fn a_revoked_key_binding_refuses_a_control_masters_next_session() {
    let w = world();
    let gw = w.gateway();
    let master = Master::open(gw, "alice", "app", false);
    let first = master.ssh(gw, "app", "echo bound");
    assert_eq!(first.stdout, b"bound\n", "{}", first.stderr);
    let fingerprint = common::gateway::fingerprint_of(&w.key("alice").with_extension("pub"));
    let out = gw.cli(&[
        "keys",
        "revoke",
        "--fingerprint",
        &fingerprint,
        "--reason",
        "OPS-3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let refused = master.ssh(gw, "app", "echo never");
    assert_eq!(
        (refused.code, refused.stdout.as_slice()),
        (1, &b""[..]),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("Access denied: your key's binding was revoked; log in again"),
        "{}",
        refused.stderr
    );
    let refusals = events(gw, "target");
    assert!(
        refusals
            .iter()
            .any(|d| d["reason"] == format!("the key binding of {fingerprint} is revoked")),
        "{refusals:?}"
    );
}

#[test]
fn idle_and_long_sessions_end_with_a_message() {
    let w = world();
    let gw = w.another_gateway(
        "[session]\nkill_grace = \"1s\"\nidle_timeout = \"2s\"\nmax_duration = \"5s\"\n",
    );
    // Idle: no output, no input; keepalives every second do not count.
    let mut cmd = gw.ssh_batch(
        &format!("app@{}", w.container().name),
        w.key("admin"),
        Some(w.cert("admin")),
    );
    cmd.args(["-o", "ServerAliveInterval=1", "sleep 600"]);
    let idle = run_ssh(&mut cmd, b"");
    assert_ne!(idle.code, 0);
    assert!(
        idle.stderr.contains("session ended: idle for 2s"),
        "{}",
        idle.stderr
    );
    // Busy: output every 0.2 s; ended at its longest allowed length.
    let busy = ssh_as(
        &gw,
        "admin",
        "app",
        "while true; do echo .; sleep 0.2; done",
    );
    assert!(
        busy.stderr
            .contains("session ended: it reached the longest allowed session (5s)"),
        "{}",
        busy.stderr
    );
    let rows = gw.wait_sessions_ended(2, |_| true);
    for row in &rows {
        let length = row["ended_at"].as_i64().unwrap() - row["started_at"].as_i64().unwrap();
        let limit = if row["command"] == "sleep 600" {
            2000
        } else {
            5000
        };
        eprintln!(
            "{}: ended {length} ms after it started (limit {limit} ms)",
            row["command"]
        );
        assert!(length >= limit, "{row:?}");
    }
    let reasons: Vec<Value> = events(&gw, "session_control")
        .into_iter()
        .map(|d| d["reason"].clone())
        .collect();
    assert!(reasons.contains(&Value::from("idle for 2s")), "{reasons:?}");
    assert!(
        reasons.contains(&Value::from("it reached the longest allowed session (5s)")),
        "{reasons:?}"
    );
}

/// Input is activity: a session that reads its input, fed a line every
/// 0.4 s for 3.2 s (longer than the 2 s idle timeout), is not idle while
/// the lines come, and ends idle 2 s after the last one.
#[test]
fn input_keeps_a_session_from_idling() {
    use std::io::Write;
    let w = world();
    let gw = w.another_gateway("[session]\nkill_grace = \"1s\"\nidle_timeout = \"2s\"\n");
    let mut cmd = gw.ssh_batch(
        &format!("app@{}", w.container().name),
        w.key("admin"),
        Some(w.cert("admin")),
    );
    cmd.arg("cat >/dev/null");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The input's pace, not a wait for something to happen.
    for _ in 0..8 {
        stdin.write_all(b"typing\n").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("session ended: idle for 2s"), "{stderr}");
    let rows = gw.wait_sessions_ended(1, |r| r["command"] == "cat >/dev/null");
    let length = rows[0]["ended_at"].as_i64().unwrap() - rows[0]["started_at"].as_i64().unwrap();
    eprintln!("ended {length} ms after it started (input for 3200 ms, idle 2000 ms)");
    // The last line went at about 2.8 s after the start: never idle before
    // 4.8 s (the session starts a little after ssh does, so 4.5 s bounds it).
    assert!(length >= 4500, "ended after {length} ms: {rows:?}");
}

#[test]
fn policies_reload_on_request_and_a_bad_set_keeps_the_old_one() {
    let w = world();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let gw = w.another_gateway(&format!("[policy]\ndir = \"{}\"\n", dir.path().display()));
    let allowed = |gw: &TestGateway| ssh_as(gw, "alice", "app", "echo in").stdout == b"in\n";
    assert!(allowed(&gw));
    // A set that does not parse: refused by the CLI, the gateway keeps its
    // policies.
    let access = dir.path().join("access.cedar");
    let good = std::fs::read_to_string(&access).unwrap();
    std::fs::write(
        &access,
        format!("{good}\npermit (principal, action, resource"),
    )
    .unwrap();
    let refused = gw.cli(&["policy", "reload"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(allowed(&gw));
    // A signal anyway: refused and audited, the old set stays.
    let pid = gw.pid().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    common::wait_until("the refused reload", Duration::from_secs(10), || {
        gw.audit_events()
            .iter()
            .any(|e| e["kind"] == "policy" && e["outcome"] == "failure")
    });
    assert!(allowed(&gw));
    // Developers no longer allowed: reloaded, the next session is denied.
    let without = good.replace(
        "principal in Group::\"developers\",\n  action in [Action::\"shell\", Action::\"exec\"]",
        "principal in Group::\"nobody\",\n  action in [Action::\"shell\", Action::\"exec\"]",
    );
    assert_ne!(without, good);
    std::fs::write(&access, without).unwrap();
    let reloaded = gw.cli(&["policy", "reload"]);
    assert!(reloaded.status.success(), "{reloaded:?}");
    common::wait_until("the reload", Duration::from_secs(10), || !allowed(&gw));
    let events: Vec<Value> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "policy")
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
}
