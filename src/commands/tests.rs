//! Each broker command's parsing, refusals and output, on a real SQLite
//! store and the shipped policies, without LXC or an IdP: the containers
//! come from the `process` inventory backend (stopped ones: a command
//! needs their labels, never their processes).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::{HELP, Outcome, Reply, WatchStep, execute};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::identity::{CertificateAuthorities, FailureThrottle, Issuers, KeyBindings, Principal};
use crate::inventory::Inventory;
use crate::policy::PolicyEngine;
use crate::session::{Caller, Destination};
use crate::store::{NewSession, Store};

pub(super) struct Env {
    pub(super) gw: Gateway,
    _dir: tempfile::TempDir,
}

pub(super) async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let text = format!(
        "listen = \"127.0.0.1:2222\"\nstate_dir = \"{state}\"\ngateway_id = \"gw\"\n\
         [oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"portcullis\"\n\
         [policy]\ndir = \"{policies}\"\n[inventory]\nbackend = \"process\"\n\
         [containers.web1]\npid_file = \"{root}/web1.pid\"\nlabels = {{ env = \"dev\" }}\n\
         [containers.db1]\npid_file = \"{root}/db1.pid\"\nlabels = {{ env = \"prod\" }}\n\
         [grants]\nbreak_glass_group = \"oncall\"\n",
        state = root.join("state").display(),
        policies = policies.display(),
        root = root.display(),
    );
    let config = Arc::new(Config::parse(&text, Path::new("test.toml")).unwrap());
    let store = Store::open(&format!("sqlite://{}/t.db", root.display()))
        .await
        .unwrap()
        .for_gateway("gw");
    let gw = Gateway {
        inventory: Inventory::new(&config),
        recordings: crate::recording::Recordings::local(&config, store.clone()),
        audit: AuditLog::new(store.clone()),
        bindings: KeyBindings::new(store.clone(), config.auth.key_binding_ttl),
        cas: CertificateAuthorities::from_config(&config.certificates).unwrap(),
        throttle: FailureThrottle::new(&config.auth),
        issuers: Arc::new(Issuers::from_config(&config).unwrap()),
        policy: PolicyEngine::load(&policies).unwrap(),
        // Never run by these tests; any small executable will do.
        helper: crate::attach::HelperBinary::from_path("/bin/true").unwrap(),
        shutdown: Default::default(),
        tasks: Default::default(),
        live: Default::default(),
        connections: Default::default(),
        edge: None,
        store,
        config,
    };
    Env { gw, _dir: dir }
}

pub(super) fn caller(name: &str, groups: &[&str]) -> Caller {
    Caller {
        principal: Principal {
            subject: name.into(),
            email: Some(format!("{name}@example.com")),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            issuer: "https://idp.example".into(),
        },
        client_addr: "192.0.2.1:2200".into(),
        user: "portcullis".into(),
        destination: Destination::Broker,
        key_fingerprint: None,
        credential_expires_at: None,
        connection: None,
    }
}

pub(super) async fn run(gw: &Gateway, who: &Caller, line: &str) -> Reply {
    match execute(gw, who, Some(line)).await {
        Outcome::Done(r) => r,
        Outcome::Watch(_) => panic!("{line}: a watch, not a reply"),
    }
}

fn json(r: &Reply) -> Value {
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

/// The kinds and outcomes of every audit event so far.
async fn audited(gw: &Gateway) -> Vec<(String, String)> {
    gw.store
        .audit_events(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.outcome))
        .collect()
}

#[tokio::test]
async fn help_for_a_shell_an_empty_line_and_help() {
    let e = env().await;
    let alice = caller("alice", &["developers"]);
    for line in [None, Some(""), Some("help"), Some("--help")] {
        match execute(&e.gw, &alice, line).await {
            Outcome::Done(r) => assert_eq!(r, Reply::ok(HELP.to_string()), "{line:?}"),
            Outcome::Watch(_) => panic!("help is not a watch"),
        }
    }
}

#[tokio::test]
async fn usage_errors_exit_2_with_one_line() {
    let e = env().await;
    let alice = caller("alice", &["developers"]);
    let cases = [
        (
            "bogus",
            "portcullis: unknown command \"bogus\" (try: help)\n",
        ),
        (
            "request web1 \"unbalanced",
            "portcullis: cannot parse the command line (unbalanced quotes?) (try: help)\n",
        ),
        (
            "request web1 --reason x",
            "portcullis: --for DURATION is required (e.g. 2h) (try: help)\n",
        ),
        (
            "request web1 --for soon --reason x",
            "portcullis: --for \"soon\" is not a duration (e.g. 30m, 2h) (try: help)\n",
        ),
        (
            "request --for 1h",
            "portcullis: usage: request CONTAINER --login LOGIN --for DURATION --reason TEXT (try: help)\n",
        ),
        (
            "request portcullis --for 1h --reason x",
            "portcullis: \"portcullis\" is not a container (try: help)\n",
        ),
        (
            "requests --everything",
            "portcullis: unknown option --everything (try: help)\n",
        ),
        (
            "approve",
            "portcullis: expected one request id (try: help)\n",
        ),
        (
            "sessions",
            "portcullis: sessions needs watch ID or kill ID --reason TEXT (try: help)\n",
        ),
        (
            "sessions kill abc",
            "portcullis: sessions kill needs --reason TEXT (the user is shown it) (try: help)\n",
        ),
        (
            "sessions peek abc",
            "portcullis: unknown sessions command \"peek\" (watch, kill) (try: help)\n",
        ),
    ];
    for (line, stderr) in cases {
        let r = run(&e.gw, &alice, line).await;
        assert_eq!((r.code, r.stderr.as_str()), (2, stderr), "{line}");
        assert!(r.stdout.is_empty());
    }
    // Usage errors change nothing and are not audited.
    assert!(audited(&e.gw).await.is_empty());
}

#[tokio::test]
async fn a_request_is_created_then_approved_and_shows_up_everywhere() {
    let e = env().await;
    let alice = caller("alice", &["developers"]);
    let approver = caller("approver", &["approvers"]);
    let r = run(
        &e.gw,
        &alice,
        "request web1 --login app --for 2h --reason \"OPS-1 fix it\" --json",
    )
    .await;
    let v = json(&r);
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            &v["state"],
            &v["container"],
            &v["login"],
            &v["approval_count"]
        ),
        (
            &Value::from("pending"),
            &Value::from("web1"),
            &Value::from("app"),
            &Value::from(0)
        )
    );
    // Text: the exact line an approver may run.
    let r = run(&e.gw, &alice, "request web1 --for 30m --reason \"OPS-2\"").await;
    assert_eq!(r.code, 0);
    let second = r.stdout.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(
        r.stdout,
        format!(
            "Request {second} is pending: root@web1 for 30m.\nAn approver may run: \
             ssh -p 2222 portcullis@gw approve {second}\n"
        )
    );
    let pending = json(&run(&e.gw, &approver, "requests --pending --json").await);
    assert_eq!(pending.as_array().unwrap().len(), 2);

    // Alice may not approve her own request; the refusal is audited.
    let r = run(&e.gw, &alice, &format!("approve {id}")).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!(
            "portcullis: refused: the policy does not allow you to approve your own request {id}.\n"
        )
    );
    let r = run(&e.gw, &approver, &format!("approve {id} --comment ok")).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with(&format!("Approved {id}: alice may use app@web1 until ")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.ends_with(" (approved by approver).\n"),
        "{}",
        r.stdout
    );
    // Approved once is approved.
    let r = run(&e.gw, &approver, &format!("approve {id}")).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .ends_with(&format!("refused: request {id} is already approved.\n")),
        "{}",
        r.stderr
    );

    let grants = json(&run(&e.gw, &alice, "grants --mine --json").await);
    assert_eq!(grants.as_array().unwrap().len(), 1);
    assert_eq!(grants[0]["id"], id.as_str());
    assert_eq!(grants[0]["state"], "active");
    assert_eq!(grants[0]["approvals"][0]["approver"], "approver");
    let text = run(&e.gw, &alice, "grants").await.stdout;
    assert!(
        text.starts_with(&format!(
            "{id}  active   alice wants app@web1 for 2h until "
        )),
        "{text}"
    );
    assert!(
        text.ends_with(" [1 approval (approver)]: OPS-1 fix it\n"),
        "{text}"
    );

    let show = run(&e.gw, &approver, &format!("request show {id}"))
        .await
        .stdout;
    assert!(show.contains("  approved by approver at "), "{show}");
    assert!(show.contains(": ok\n"), "{show}");

    let who = json(&run(&e.gw, &alice, "whoami --json").await);
    assert_eq!(who["principal"], "alice");
    assert_eq!(who["groups"], serde_json::json!(["developers"]));
    assert_eq!(who["grants"][0]["id"], id.as_str());
    let who = run(&e.gw, &alice, "whoami").await.stdout;
    assert!(
        who.starts_with(
            "principal: alice\nemail: alice@example.com\ngroups: developers\nactive grants:\n"
        ),
        "{who}"
    );

    // Revoked by its holder, with a reason.
    let r = run(&e.gw, &alice, &format!("revoke {id} --reason done")).await;
    assert_eq!(r.stdout, format!("Revoked {id}; its sessions end now.\n"));
    assert_eq!(
        run(&e.gw, &alice, "grants --mine").await.stdout,
        "No active grants.\n"
    );
    let kinds = audited(&e.gw).await;
    assert!(
        kinds.contains(&("grant".into(), "allow".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("access_request".into(), "deny".into())),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn refusals_exit_1_and_are_audited() {
    let e = env().await;
    let bob = caller("bob", &[]);
    let r = run(&e.gw, &bob, "request web1 --for 1h --reason x").await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "portcullis: refused: the policy does not allow you to ask for root@web1.\n"
        )
    );
    let r = run(&e.gw, &bob, "request nowhere --for 1h --reason x").await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("unknown container (nowhere)"),
        "{}",
        r.stderr
    );
    let r = run(&e.gw, &bob, "approve 000000000000").await;
    assert_eq!(
        r.stderr,
        "portcullis: refused: no access request 000000000000.\n"
    );
    // Break-glass outside the break-glass group.
    let r = run(&e.gw, &bob, "request db1 --for 1h --reason x --break-glass").await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("break-glass group"), "{}", r.stderr);
    let refused = audited(&e.gw)
        .await
        .into_iter()
        .filter(|(k, o)| k == "access_request" && o == "deny")
        .count();
    assert_eq!(refused, 3);
}

#[tokio::test]
async fn break_glass_is_granted_at_once_and_listed_for_review() {
    let e = env().await;
    let oncall = caller("olga", &["oncall"]);
    let reviewer = caller("rita", &["reviewers"]);
    let r = run(
        &e.gw,
        &oncall,
        "request db1 --for 30m --reason \"INC-9 db down\" --break-glass",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let id = r
        .stdout
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    assert_eq!(
        r.stdout,
        format!(
            "Break-glass grant {id}: root@db1 for 30m, from now. It is flagged and will be reviewed.\n"
        )
    );
    let unreviewed = run(&e.gw, &reviewer, "requests --unreviewed").await.stdout;
    assert!(
        unreviewed.contains("[BREAK-GLASS, unreviewed]"),
        "{unreviewed}"
    );
    let r = run(&e.gw, &reviewer, &format!("review {id} --comment seen")).await;
    assert_eq!(r.stdout, format!("Reviewed break-glass grant {id}.\n"));
    assert_eq!(
        run(&e.gw, &reviewer, "requests --unreviewed").await.stdout,
        "No access requests.\n"
    );
}

/// Inserts a session row of `owner` on web1 with `status`.
async fn session_row(gw: &Gateway, id: &str, owner: &str, recording: &Path) {
    gw.store
        .insert_session(&NewSession {
            id,
            principal: owner,
            email: None,
            container: "web1",
            login: "root",
            command: Some("top"),
            client_addr: None,
            recording_path: &recording.display().to_string(),
            grant_id: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn sessions_watch_and_kill_are_decided_and_audited() {
    let e = env().await;
    let admin = caller("admin", &["admins"]);
    let alice = caller("alice", &["developers"]);
    let reviewer = caller("rita", &["reviewers"]);
    // Unknown and denied read the same.
    let unknown = run(&e.gw, &admin, "sessions kill nope --reason x").await;
    assert_eq!(
        unknown.stderr,
        "portcullis: refused: you may not kill session nope.\n"
    );
    let path = e._dir.path().join("s1.cast");
    std::fs::write(
        &path,
        "{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"hello\"]\n",
    )
    .unwrap();
    session_row(&e.gw, "s1", "bob", &path).await;
    let denied = run(&e.gw, &alice, "sessions kill s1 --reason x").await;
    assert_eq!(
        denied.stderr,
        "portcullis: refused: you may not kill session s1.\n"
    );
    let denied = run(&e.gw, &reviewer, "sessions kill s1 --reason x").await;
    assert_eq!(denied.code, 1);
    // A reviewer watches: the output so far, then (once it ends) the end.
    let Outcome::Watch(mut watch) = execute(&e.gw, &reviewer, Some("sessions watch s1")).await
    else {
        panic!("not a watch");
    };
    assert_eq!(watch.next().await, WatchStep::Output("hello".into()));
    e.gw.store.mark_interrupted("s1", 0, "").await.unwrap();
    assert_eq!(
        watch.next().await,
        WatchStep::Done(Reply {
            code: 0,
            stdout: String::new(),
            stderr: "\nportcullis: session s1 ended.\n".into(),
        })
    );
    // Not running any more: nothing to kill or watch.
    let r = run(&e.gw, &admin, "sessions kill s1 --reason maintenance").await;
    assert_eq!(
        r.stderr,
        "portcullis: refused: session s1 is not running (status interrupted).\n"
    );
    let decisions: Vec<(String, String)> = audited(&e.gw)
        .await
        .into_iter()
        .filter(|(k, _)| k == "decision")
        .collect();
    assert_eq!(
        decisions
            .iter()
            .map(|(_, o)| o.as_str())
            .collect::<Vec<_>>(),
        ["deny", "deny", "deny", "allow", "allow"]
    );
    assert!(
        audited(&e.gw)
            .await
            .contains(&("session_control".into(), "info".into())),
        "the watch is audited"
    );
}

#[tokio::test]
async fn admins_add_list_and_remove_locks_and_nobody_else_may() {
    let e = env().await;
    let alice = caller("alice", &["developers"]);
    let admin = caller("root-admin", &["admins"]);
    let denied = run(&e.gw, &alice, "locks add --principal bob --reason x").await;
    assert_eq!(
        denied,
        Reply::refused("you may not manage locks"),
        "{denied:?}"
    );
    assert!(e.gw.store.active_locks().await.unwrap().is_empty());
    let usage = run(
        &e.gw,
        &admin,
        "locks add --principal bob --login app --reason x",
    )
    .await;
    assert_eq!(usage.code, 2, "{usage:?}");
    let added = json(
        &run(
            &e.gw,
            &admin,
            "locks add --principal bob --reason 'OPS-9 left' --ttl 1h --json",
        )
        .await,
    );
    assert_eq!(added["target"], "principal");
    assert_eq!(added["value"], "bob");
    assert_eq!(added["created_by"], "root-admin");
    let id = added["id"].as_str().unwrap().to_string();
    let listed = json(&run(&e.gw, &admin, "locks list --json").await);
    assert_eq!(listed[0]["id"], id.as_str());
    let hidden = run(&e.gw, &admin, "locks add --login app --reason 'a\u{202e}b'").await;
    assert_eq!(hidden.code, 2, "{hidden:?}");
    let removed = run(&e.gw, &admin, &format!("locks remove {id}")).await;
    assert_eq!(removed, Reply::ok(format!("removed {id}\n")));
    let again = run(&e.gw, &admin, &format!("locks remove {id}")).await;
    assert_eq!(again.code, 1, "{again:?}");
    let kinds = audited(&e.gw).await;
    assert_eq!(
        kinds.iter().filter(|(k, _)| k == "lock").count(),
        2,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("decision".into(), "deny".into())),
        "{kinds:?}"
    );
}
