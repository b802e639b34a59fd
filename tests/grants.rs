//! Just-in-time access end to end (issue 7), with real parts only: the real
//! test OpenID provider (principals alice = developers, approver and
//! carol = approvers), a real busybox LXC container labelled env=dev (or
//! env=prod, where the shipped policies want two approvals), the real
//! `portcullis` binary and the real OpenSSH client, talking to the broker
//! as `ssh portcullis@gw COMMAND`.
//!
//! The IdP, the container and the tokens are shared; every test starts its
//! own gateway (and so its own database), so grants of one test never
//! enter another's decisions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::gateway::{SshResult, TestContainer, TestGateway, run_ssh};
use common::idp::TestIdp;
use serde_json::Value;

struct Fixture {
    idp: TestIdp,
    container: TestContainer,
    alice: String,
    approver: String,
    carol: String,
    admin: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("grants");
            let rt = tokio::runtime::Runtime::new().unwrap();
            let alice = rt.block_on(idp.device_flow_id_token("alice"));
            let approver = rt.block_on(idp.device_flow_id_token("approver"));
            let carol = rt.block_on(idp.device_flow_id_token("carol"));
            let admin = rt.block_on(idp.device_flow_id_token("admin"));
            Fixture {
                idp,
                container,
                alice,
                approver,
                carol,
                admin,
            }
        })
        .join()
        .unwrap()
    })
}

/// A gateway of its own for one test: the container labelled env=dev,
/// tickets required in reasons, a warning 1 s before a grant ends.
fn gateway() -> TestGateway {
    gateway_with("")
}

/// As [`gateway`], with `grants` added to its `[grants]` section.
fn gateway_with(grants: &str) -> TestGateway {
    gateway_labelled("dev", grants)
}

/// As [`gateway_with`], the container labelled env=`env`.
fn gateway_labelled(env: &str, grants: &str) -> TestGateway {
    let f = fixture();
    TestGateway::start(
        &f.idp.issuer,
        &format!(
            "[containers.{}]\nlabels = {{ env = \"{env}\" }}\n\
             [grants]\nreason_pattern = \"[A-Z]+-[0-9]+\"\nwarn_before = [\"1s\"]\n{grants}",
            f.container.name
        ),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `ssh portcullis@gw COMMAND_LINE` as the holder of `token`.
fn broker(gw: &TestGateway, token: &str, line: &str) -> SshResult {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh("portcullis", token, dir.path());
    cmd.arg(line);
    run_ssh(&mut cmd, b"")
}

/// `ssh USER@gw ARGS...` as the holder of `token`.
fn ssh(gw: &TestGateway, user: &str, token: &str, args: &[&str]) -> SshResult {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh(user, token, dir.path());
    cmd.args(args);
    run_ssh(&mut cmd, b"")
}

fn json(r: &SshResult, gw: &TestGateway) -> Value {
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    serde_json::from_slice(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.stdout)))
}

/// Alice asks for root on the test container for `duration`; the approver
/// approves. Returns the grant as `approve --json` prints it.
fn granted_root(gw: &TestGateway, duration: &str) -> Value {
    let f = fixture();
    let line = format!(
        "request {} --login root --for {duration} --reason \"OPS-7 on call\" --json",
        f.container.name
    );
    let id = json(&broker(gw, &f.alice, &line), gw)["id"]
        .as_str()
        .unwrap()
        .to_string();
    json(
        &broker(gw, &f.approver, &format!("approve {id} --json")),
        gw,
    )
}

/// A live `ssh -tt root@container "echo READY; sleep 60"` of alice's, with
/// its output collected as it comes.
struct LiveSession {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl LiveSession {
    fn start(gw: &TestGateway, dir: &std::path::Path) -> LiveSession {
        let f = fixture();
        let mut cmd = gw.ssh(&format!("root@{}", f.container.name), &f.alice, dir);
        let mut child = cmd
            .args(["-tt", "echo READY; sleep 60"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut pipe: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        LiveSession {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn wait_ready(&self, gw: &TestGateway) {
        let started = Instant::now();
        while !self.stdout().contains("READY") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "session not ready: {}\n{}\n{}",
                self.stdout(),
                self.stderr(),
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// When (unix ms) this session had ended at the latest: the earlier of
    /// `seen` (when the test thread saw the client exit) and the `at` of its
    /// `session_end` audit event (the gateway's clock, written right after
    /// it sent the exit status and closed the channel). Both are observed
    /// after the end; either alone can come late on a loaded machine (a
    /// test thread woken late, a slow database write) by more than the
    /// margin being checked.
    fn ended_by(gw: &TestGateway, seen: i64) -> i64 {
        let session = gw.wait_sessions_ended(1, |s| s["command"] == "echo READY; sleep 60");
        assert_eq!(session.len(), 1, "{session:?}");
        let end = gw
            .audit_events()
            .into_iter()
            .find(|e| e["session_id"] == session[0]["id"] && e["kind"] == "session_end")
            .unwrap_or_else(|| panic!("no session_end for {}", session[0]));
        seen.min(end["at"].as_i64().unwrap())
    }

    /// Waits for the ssh client to exit; returns when (unix ms).
    fn wait_exit(&mut self) -> i64 {
        let started = Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return now_ms();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "session did not end"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn refused_then_requested_approved_and_used() {
    let f = fixture();
    let gw = gateway();
    let target = format!("root@{}", f.container.name);
    // Refused, with the exact line to ask.
    let r = ssh(&gw, &target, &f.alice, &["id -u"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let expected = format!(
        "request {} --login root --for 1h --reason \"...\"",
        f.container.name
    );
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);
    assert!(r.stderr.contains("ssh "), "{}", r.stderr);
    assert!(r.stderr.contains("portcullis@"), "{}", r.stderr);
    assert!(r.stderr.contains(&expected), "{}", r.stderr);

    // A reason without a ticket, a too long grant and an unknown container
    // are refused with a message and a non-zero status.
    let no_ticket = broker(
        &gw,
        &f.alice,
        &format!(
            "request {} --login root --for 1h --reason \"because\"",
            f.container.name
        ),
    );
    assert_eq!(no_ticket.code, 1, "{}", no_ticket.stderr);
    assert!(no_ticket.stderr.contains("ticket"), "{}", no_ticket.stderr);
    let too_long = broker(
        &gw,
        &f.alice,
        &format!(
            "request {} --login root --for 9h --reason OPS-1",
            f.container.name
        ),
    );
    assert_eq!(too_long.code, 1, "{}", too_long.stderr);
    assert!(
        too_long.stderr.contains("at most 8h"),
        "{}",
        too_long.stderr
    );
    let unknown = broker(
        &gw,
        &f.alice,
        "request nosuch --login root --for 1h --reason OPS-1",
    );
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    let usage = broker(&gw, &f.alice, "frobnicate");
    assert_eq!(usage.code, 2, "{}", usage.stderr);

    // Request; alice cannot approve it herself.
    let line = format!(
        "request {} --login root --for 10m --reason \"OPS-42 disk full\" --json",
        f.container.name
    );
    let req = json(&broker(&gw, &f.alice, &line), &gw);
    let id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["status"], "pending");
    let pending = json(&broker(&gw, &f.approver, "requests --pending --json"), &gw);
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    let own = broker(&gw, &f.alice, &format!("approve {id}"));
    assert_eq!(own.code, 1, "{}", own.stderr);
    assert!(own.stderr.contains("your own request"), "{}", own.stderr);
    // Still refused before the approval.
    assert_eq!(ssh(&gw, &target, &f.alice, &["id -u"]).code, 1);

    // The approver approves; alice's root shell works.
    let ok = broker(
        &gw,
        &f.approver,
        &format!("approve {id} --comment \"go ahead\""),
    );
    assert_eq!(ok.code, 0, "{}\n{}", ok.stderr, gw.log());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Approved"));
    let r = ssh(&gw, &target, &f.alice, &["id -u"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    assert_eq!(r.stdout, b"0\n");
    let dir = tempfile::tempdir().unwrap();
    let mut shell = gw.ssh(&target, &f.alice, dir.path());
    shell.arg("-tt");
    let r = run_ssh(&mut shell, b"id -u\nexit 0\n");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    assert!(String::from_utf8_lossy(&r.stdout).contains('0'));

    // The grant is listed, names its sessions, and alice sees it.
    let grants = json(&broker(&gw, &f.alice, "grants --mine --json"), &gw);
    let g = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id.as_str())
        .expect("grant listed")
        .clone();
    assert_eq!(g["decided_by"], "approver");
    assert_eq!(g["state"], "active");
    let shown = json(
        &broker(&gw, &f.alice, &format!("request show {id} --json")),
        &gw,
    );
    assert_eq!(shown["sessions"].as_array().unwrap().len(), 2, "{shown}");
    let who = broker(&gw, &f.alice, "whoami");
    let who_text = String::from_utf8_lossy(&who.stdout);
    assert!(who_text.contains("principal: alice"), "{who_text}");
    assert!(who_text.contains("developers"), "{who_text}");
    assert!(who_text.contains(&id), "{who_text}");

    // Audit: request, refusal of the self-approval, approval.
    let events = gw.audit_events();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        kinds.contains(&"access_request:success".into()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"access_request:deny".into()), "{kinds:?}");
    assert!(kinds.contains(&"grant:allow".into()), "{kinds:?}");
    assert!(
        events.iter().any(|e| e["kind"] == "access_request"
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("\"container\":\"nosuch\"")),
        "the request for an unknown container is audited"
    );
}

#[test]
fn a_two_second_grant_ends_a_live_pty_session_on_time() {
    let gw = gateway();
    let grant = granted_root(&gw, "2s");
    let id = grant["id"].as_str().unwrap();
    let expires_at = grant["expires_at"].as_i64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut live = LiveSession::start(&gw, dir.path());
    live.wait_ready(&gw);
    let seen = live.wait_exit();
    let late = LiveSession::ended_by(&gw, seen) - expires_at;
    eprintln!(
        "2 s grant: the session ended {late} ms after the expiry (the client's exit seen {} ms after)",
        seen - expires_at
    );
    assert!(
        (0..=1000).contains(&late),
        "ended {late} ms after the expiry\n{}",
        live.stderr()
    );
    let stderr = live.stderr();
    assert!(
        stderr.contains(&format!(
            "Portcullis: session ended: the grant {id} expired."
        )),
        "{stderr}"
    );
    // The session row names the grant; the expiry is audited.
    let shown = json(
        &broker(&gw, &fixture().alice, &format!("request show {id} --json")),
        &gw,
    );
    assert_eq!(shown["sessions"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["state"], "expired");
    wait_for_audit(&gw, "grant", id);
}

#[test]
fn warnings_come_before_the_end() {
    let gw = gateway();
    let grant = granted_root(&gw, "4s");
    let id = grant["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut live = LiveSession::start(&gw, dir.path());
    live.wait_ready(&gw);
    live.wait_exit();
    let stderr = live.stderr();
    let warning = format!("(grant {id}) ends in 1s.");
    let warned = stderr.find(&warning).unwrap_or_else(|| panic!("{stderr}"));
    let ended = stderr
        .find("session ended")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(warned < ended, "{stderr}");
}

#[test]
fn revocation_ends_a_live_session_with_the_reason() {
    let f = fixture();
    let gw = gateway();
    let grant = granted_root(&gw, "10m");
    let id = grant["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut live = LiveSession::start(&gw, dir.path());
    live.wait_ready(&gw);
    let r = broker(
        &gw,
        &f.approver,
        &format!("revoke {id} --reason \"incident over\" --json"),
    );
    let revoked = json(&r, &gw)["revoked_at"].as_i64().unwrap();
    let seen = live.wait_exit();
    let ended = LiveSession::ended_by(&gw, seen);
    eprintln!(
        "revocation: the session ended {} ms after (the client's exit seen {} ms after)",
        ended - revoked,
        seen - revoked
    );
    assert!(
        ended - revoked <= 1000,
        "ended {} ms after",
        ended - revoked
    );
    let stderr = live.stderr();
    assert!(
        stderr.contains(&format!(
            "Portcullis: session ended: the grant {id} was revoked by approver (incident over)."
        )),
        "{stderr}"
    );
    // No longer usable; the revocation is audited.
    let target = format!("root@{}", f.container.name);
    assert_eq!(ssh(&gw, &target, &f.alice, &["true"]).code, 1);
    wait_for_audit(&gw, "grant", id);
}

#[test]
fn a_restarted_gateway_keeps_grants_and_ends_sessions_on_time() {
    let mut gw = gateway();
    let grant = granted_root(&gw, "8s");
    let id = grant["id"].as_str().unwrap();
    let expires_at = grant["expires_at"].as_i64().unwrap();
    gw.stop();
    gw.restart();
    let dir = tempfile::tempdir().unwrap();
    let mut live = LiveSession::start(&gw, dir.path());
    live.wait_ready(&gw);
    let seen = live.wait_exit();
    let late = LiveSession::ended_by(&gw, seen) - expires_at;
    eprintln!(
        "after a restart: the session ended {late} ms after the expiry (the client's exit seen {} ms after)",
        seen - expires_at
    );
    assert!(
        (0..=1000).contains(&late),
        "ended {late} ms after the expiry\n{}\n{}",
        live.stderr(),
        gw.log()
    );
    assert!(live.stderr().contains("expired"), "{}", live.stderr());
    let expired = wait_for_audit(&gw, "grant", id);
    assert!(
        expired.iter().any(|d| d["expired_at"] == expires_at),
        "{expired:?}"
    );
}

#[test]
fn the_broker_name_is_not_a_container() {
    let f = fixture();
    let gw = gateway();
    let r = ssh(&gw, "root@portcullis", &f.alice, &["true"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not a container"), "{}", r.stderr);
    let help = broker(&gw, &f.alice, "help");
    assert_eq!(help.code, 0);
    assert!(String::from_utf8_lossy(&help.stdout).contains("request CONTAINER"));
}

#[test]
fn break_glass_is_self_granted_capped_and_listed_until_reviewed() {
    let f = fixture();
    let gw =
        gateway_with("break_glass_group = \"developers\"\nbreak_glass_max_duration = \"30m\"\n");
    let c = &f.container.name;
    // Capped, and only for the break-glass group.
    let long = broker(
        &gw,
        &f.alice,
        &format!("request {c} --login root --for 1h --reason OPS-9 --break-glass"),
    );
    assert_eq!(long.code, 1, "{}", long.stderr);
    assert!(long.stderr.contains("at most 30m"), "{}", long.stderr);
    let outsider = broker(
        &gw,
        &f.approver,
        &format!("request {c} --login root --for 5m --reason OPS-9 --break-glass"),
    );
    assert_eq!(outsider.code, 1, "{}", outsider.stderr);
    assert!(
        outsider.stderr.contains("break-glass group"),
        "{}",
        outsider.stderr
    );
    // Self-granted at once; root works without an approver.
    let g = json(
        &broker(
            &gw,
            &f.alice,
            &format!(
                "request {c} --login root --for 5m --reason \"OPS-9 outage\" --break-glass --json"
            ),
        ),
        &gw,
    );
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["state"], "active");
    assert_eq!(g["break_glass"], true);
    let r = ssh(&gw, &format!("root@{c}"), &f.alice, &["id -u"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    assert_eq!(r.stdout, b"0\n");
    // Listed for review until a reviewer (not alice) marks it reviewed.
    let unreviewed = json(&broker(&gw, &f.admin, "requests --unreviewed --json"), &gw);
    assert!(
        unreviewed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    let own = broker(&gw, &f.alice, &format!("review {id}"));
    assert_eq!(own.code, 1, "{}", own.stderr);
    let ok = broker(
        &gw,
        &f.admin,
        &format!("review {id} --comment \"outage confirmed\""),
    );
    assert_eq!(ok.code, 0, "{}\n{}", ok.stderr, gw.log());
    let unreviewed = json(&broker(&gw, &f.admin, "requests --unreviewed --json"), &gw);
    assert!(unreviewed.as_array().unwrap().is_empty(), "{unreviewed}");
    let kinds: Vec<String> = gw
        .audit_events()
        .iter()
        .filter(|e| e["kind"] == "grant")
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds
            .iter()
            .any(|d| d.contains(&id) && d.contains("OPS-9 outage")),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|d| d.contains(&id) && d.contains("outage confirmed")),
        "{kinds:?}"
    );
}

#[test]
fn prod_needs_two_approvers_and_each_counts_once() {
    let f = fixture();
    let gw = gateway_labelled("prod", "");
    let c = &f.container.name;
    let target = format!("root@{c}");
    let req = json(
        &broker(
            &gw,
            &f.alice,
            &format!("request {c} --login root --for 10m --reason \"OPS-77 prod fix\" --json"),
        ),
        &gw,
    );
    let id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["status"], "pending");
    assert_eq!(req["approval_count"], 0);

    // The first approval is recorded; the request stays pending and
    // alice's root shell is still refused.
    let first = broker(
        &gw,
        &f.approver,
        &format!("approve {id} --comment \"first look\""),
    );
    assert_eq!(first.code, 0, "{}\n{}", first.stderr, gw.log());
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        format!(
            "Approval recorded for {id}: 1 approval (approver) so far. The request stays \
             pending: the policy wants another approver before the grant starts.\n"
        )
    );
    let shown = json(
        &broker(&gw, &f.alice, &format!("request show {id} --json")),
        &gw,
    );
    assert_eq!(shown["state"], "pending");
    assert_eq!(shown["approval_count"], 1);
    assert_eq!(shown["approvals"][0]["approver"], "approver");
    assert_eq!(shown["approvals"][0]["comment"], "first look");
    let text = broker(&gw, &f.alice, &format!("request show {id}"));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("pending"), "{text}");
    assert!(text.contains("[1 approval (approver)]"), "{text}");
    assert!(text.contains("  approved by approver at "), "{text}");
    let pending = json(&broker(&gw, &f.carol, "requests --pending --json"), &gw);
    let listed = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(listed["approval_count"], 1);
    let r = ssh(&gw, &target, &f.alice, &["id -u"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);

    // The same approver again: refused, not counted.
    let again = broker(&gw, &f.approver, &format!("approve {id}"));
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert_eq!(
        refusal(&again),
        format!(
            "portcullis: refused: you already approved request {id}; each approver counts \
             once (approvals so far: 1), another approver must approve it.\n"
        )
    );
    assert_eq!(ssh(&gw, &target, &f.alice, &["id -u"]).code, 1);

    // A second approver: the grant starts and alice's shell works.
    let second = json(&broker(&gw, &f.carol, &format!("approve {id} --json")), &gw);
    assert_eq!(second["state"], "active");
    assert_eq!(second["decided_by"], "carol");
    assert_eq!(second["approval_count"], 2);
    let names: Vec<&str> = second["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["approver", "carol"]);
    let r = ssh(&gw, &target, &f.alice, &["id -u"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    assert_eq!(r.stdout, b"0\n");

    // Audit: both approvals (who, how many, why), the refused repeat, and
    // the activation naming both approvers, in that order.
    let events: Vec<(String, Option<String>, Value)> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "access_request" || e["kind"] == "grant")
        .map(|e| {
            (
                format!(
                    "{}:{}",
                    e["kind"].as_str().unwrap(),
                    e["outcome"].as_str().unwrap()
                ),
                e["principal"].as_str().map(str::to_string),
                serde_json::from_str::<Value>(e["detail"].as_str().unwrap()).unwrap(),
            )
        })
        .filter(|(_, _, d)| d["request_id"] == id.as_str() || d["grant_id"] == id.as_str())
        .collect();
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|(k, p, _)| (k.as_str(), p.as_deref().unwrap_or("-")))
        .collect();
    assert_eq!(
        summary,
        [
            ("access_request:success", "alice"),
            ("access_request:allow", "approver"),
            ("access_request:deny", "approver"),
            ("access_request:allow", "carol"),
            ("grant:allow", "carol"),
        ]
    );
    assert_eq!(events[1].2["approvals"], 1);
    assert_eq!(events[1].2["comment"], "first look");
    assert_eq!(events[2].2["action"], "approve");
    assert_eq!(events[3].2["approvals"], 2);
    assert_eq!(
        events[4].2["approvers"],
        serde_json::json!(["approver", "carol"])
    );
    assert_eq!(
        events[4].2["policies"],
        serde_json::json!(["one-approval-activates"])
    );

    // An operator can ask the same question with `policy check`.
    let check = |approvals: &str| {
        gw.cli(&[
            "policy",
            "check",
            "--principal",
            "carol",
            "--group",
            "approvers",
            "--container",
            c,
            "--login",
            "root",
            "--action",
            "activate",
            "--requester",
            "alice",
            "--for",
            "10m",
            "--approvals",
            approvals,
        ])
    };
    let one = check("1");
    assert_eq!(one.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        format!("DENY: carol activate as root on {c}\ndecided by: prod-two-approvals\n")
    );
    let two = check("2");
    assert_eq!(two.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&two.stdout),
        format!("ALLOW: carol activate as root on {c}\ndecided by: one-approval-activates\n")
    );
}

#[test]
fn a_prod_request_denied_after_one_approval_stays_denied() {
    let f = fixture();
    let gw = gateway_labelled("prod", "");
    let c = &f.container.name;
    let req = json(
        &broker(
            &gw,
            &f.alice,
            &format!("request {c} --login root --for 10m --reason OPS-78 --json"),
        ),
        &gw,
    );
    let id = req["id"].as_str().unwrap().to_string();
    let first = json(
        &broker(&gw, &f.approver, &format!("approve {id} --json")),
        &gw,
    );
    assert_eq!(first["state"], "pending");
    let denied = json(
        &broker(
            &gw,
            &f.carol,
            &format!("deny {id} --reason \"not today\" --json"),
        ),
        &gw,
    );
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["decision_comment"], "not today");
    assert_eq!(denied["approval_count"], 1);
    let late = broker(&gw, &f.carol, &format!("approve {id}"));
    assert_eq!(late.code, 1, "{}", late.stderr);
    assert_eq!(
        refusal(&late),
        format!("portcullis: refused: request {id} is already denied.\n")
    );
    assert_eq!(ssh(&gw, &format!("root@{c}"), &f.alice, &["true"]).code, 1);
}

/// The broker's refusal: the last line of stderr (ssh prints its own
/// lines before it), with its newline.
fn refusal(r: &SshResult) -> String {
    let line = r.stderr.trim_end().rsplit('\n').next().unwrap_or("");
    format!("{line}\n")
}

/// Waits until `info` audit events of `kind` name grant `id`; returns
/// their details.
fn wait_for_audit(gw: &TestGateway, kind: &str, id: &str) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let events: Vec<Value> = gw
            .audit_events()
            .into_iter()
            .filter(|e| e["kind"] == kind && e["outcome"] == "info")
            .map(|e| serde_json::from_str::<Value>(e["detail"].as_str().unwrap()).unwrap())
            .filter(|d| d["grant_id"] == id)
            .collect();
        if !events.is_empty() {
            return events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no {kind} event for {id}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
