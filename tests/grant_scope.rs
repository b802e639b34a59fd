//! Issue 12, point 7: a grant is for what was approved. A grant records
//! where its container was (the gateway's id) and how it was labelled
//! when asked for and approved, and is not honoured elsewhere; approvals
//! are counted in one transaction per request, so concurrent approvers
//! never both count as "first"; no one approves their own request even
//! where the policy would let them; a pending request expires after
//! `grants.request_ttl`; every step that loses a race is audited.
//!
//! No container is entered, so the gateways run in this process
//! ([`common::inproc`], `process` backend, containers stopped): a grant
//! that is honoured reads "Access refused: the container ... is not
//! running" (the policy allowed it), one that is not reads "Access
//! denied". On PostgreSQL with `PORTCULLIS_TEST_DATABASE=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::inproc::{Answer, InProcess, Setup, User};

/// Runs a broker command; its stdout on success.
async fn broker(user: &User, command: &str) -> Answer {
    user.exec("portcullis", command).await
}

/// `request ...` that must succeed; the new request's id.
async fn request(user: &User, args: &str) -> String {
    let a = broker(user, &format!("request {args}")).await;
    assert_eq!(a.code, Some(0), "{a:?}");
    let text = String::from_utf8(a.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_string()
}

/// The audit events of `kind` whose detail has `key` == `value`.
async fn events(gw: &InProcess, kind: &str, key: &str, value: &str) -> Vec<serde_json::Value> {
    gw.audit()
        .await
        .into_iter()
        .filter(|(k, _, d)| k == kind && d[key] == value)
        .map(|(_, _, d)| d)
        .collect()
}

/// The answer of a session whose grant was honoured: allowed, but web1 is
/// not running.
fn stopped(a: &Answer) {
    assert_eq!(
        (a.code, a.stderr.as_str()),
        (
            Some(1),
            "Access refused: the container web1 is stopped (not running).\r\n"
        ),
        "the grant was not honoured: {a:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_not_honoured_on_another_gateway_or_after_a_relabel() {
    let gw = InProcess::start("").await;
    let alice = gw.user("alice", &["developers"]);
    let approver = gw.user("approver", &["approvers"]);
    let id = request(&alice, "web1 --login root --for 1h --reason OPS-1").await;
    let a = broker(&approver, &format!("approve {id}")).await;
    assert_eq!(a.code, Some(0), "{a:?}");
    // Where it was approved, as labelled then: honoured (the policy
    // allowed root; the container is only not running).
    stopped(&alice.exec("root@web1", "id").await);

    // The same container name on another gateway sharing the database.
    let other = InProcess::start_as(&Setup {
        gateway_id: "gw2",
        share: Some(&gw),
        ..Setup::default()
    })
    .await;
    let alice2 = other.user("alice", &["developers"]);
    let a = alice2.exec("root@web1", "id").await;
    assert_eq!(a.code, Some(1), "{a:?}");
    assert_eq!(
        a.stderr,
        format!(
            "Access denied: you may not run commands as root on web1.\r\nTo ask for access: \
             ssh -p {} portcullis@gw2 request web1 --login root --for 1h --reason \"...\"\r\n\
             Your grant is not honoured: the grant {id} was approved for web1 on gateway gw, \
             not on gw2.\r\n",
            other.port
        )
    );
    other.stop().await;

    // The same gateway restarted with web1 relabelled dev -> prod.
    let relabelled = InProcess::start_as(&Setup {
        web1_labels: "env = \"prod\"",
        share: Some(&gw),
        ..Setup::default()
    })
    .await;
    let alice3 = relabelled.user("alice", &["developers"]);
    let a = alice3.exec("root@web1", "id").await;
    assert_eq!(a.code, Some(1), "{a:?}");
    assert!(
        a.stderr.ends_with(&format!(
            "\r\nYour grant is not honoured: the grant {id} was approved for web1 labelled \
             env=dev; it is now labelled env=prod.\r\n"
        )),
        "{a:?}"
    );
    relabelled.stop().await;

    // Each refusal audited with its reason, before it was sent.
    let refused = events(&gw, "grant", "grant_id", &id).await;
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|d| d["reason"].as_str())
        .filter(|r| r.contains("approved for web1"))
        .collect();
    assert_eq!(
        reasons,
        [
            format!("the grant {id} was approved for web1 on gateway gw, not on gw2"),
            format!(
                "the grant {id} was approved for web1 labelled env=dev; it is now labelled \
                 env=prod"
            ),
        ]
    );
    // Still honoured where it was approved.
    stopped(&alice.exec("root@web1", "id").await);
    gw.stop().await;
}

/// On env=prod, a first approval may come from an approver; the second
/// must come from `security` (two distinct approvers from different
/// groups). Counted wrongly, concurrent approvers all count as "first".
const SECOND_FROM_SECURITY: &str = r#"
@id("test-security-approves-prod")
permit (principal in Group::"security", action == Action::"approve", resource)
when { resource.hasTag("env") && resource.getTag("env") == "prod" };

@id("test-second-approval-from-security")
forbid (principal, action == Action::"approve", resource)
when { resource.hasTag("env") && resource.getTag("env") == "prod" && context.approvals >= 1 }
unless { principal in Group::"security" };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_approvals_never_activate_a_grant_that_needs_two_groups() {
    let gw = InProcess::start_with_policy("", Some(SECOND_FROM_SECURITY)).await;
    let alice = gw.user("alice", &["developers"]);
    let id = request(&alice, "db1 --login app --for 1h --reason OPS-2").await;
    let approvers: Vec<User> = (0..50)
        .map(|n| gw.user(&format!("approver{n}"), &["approvers"]))
        .collect();
    // Every approver connected first, then all approve at once.
    let mut connections = Vec::new();
    for a in &approvers {
        connections.push(a.connect("portcullis").await);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(connections.len()));
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|c| {
            let (id, start) = (id.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                c.exec(&format!("approve {id}")).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.code == Some(0)).collect();
    let outcomes: Vec<(Option<u32>, &str)> = answers
        .iter()
        .map(|a| (a.code, a.stderr.as_str()))
        .collect();
    assert_eq!(ok.len(), 1, "exactly one approval counts: {outcomes:?}");
    assert!(
        String::from_utf8_lossy(&ok[0].stdout).contains("The request stays pending"),
        "{ok:?}"
    );
    for a in answers.iter().filter(|a| a.code != Some(0)) {
        assert_eq!(a.code, Some(1), "{a:?}");
        assert_eq!(
            a.stderr,
            format!(
                "portcullis: refused: the policy does not allow you to approve request {id}.\n"
            )
        );
    }
    let shown = broker(&alice, &format!("request show {id} --json")).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["approvals"].as_array().unwrap().len(), 1, "{shown}");
    assert!(
        events(&gw, "grant", "grant_id", &id).await.is_empty(),
        "no grant may start"
    );
    // Each of the 49 losers is audited: as a lost race when it was asked
    // with no approval yet and decided after the winner's, else as a
    // refusal by policy.
    let lost = events(&gw, "access_request", "request_id", &id).await;
    let race = lost
        .iter()
        .filter(|d| d["action"] == "approve" && d.get("container").is_none())
        .count();
    let refused = lost
        .iter()
        .filter(|d| d["action"] == "approve" && d.get("container").is_some())
        .count();
    assert_eq!(race + refused, 49, "{lost:#?}");
    // A second approver from security starts the grant, once.
    let security = gw.user("sec", &["security"]);
    let a = broker(&security, &format!("approve {id}")).await;
    assert_eq!(a.code, Some(0), "{a:?}");
    let started = events(&gw, "grant", "grant_id", &id).await;
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["approvers"].as_array().unwrap().len(), 2);
    gw.stop().await;
}

/// A copy of the shipped policies whose `no-self-approval` forbid is gone
/// and which permits everyone to approve and review: a site that rewrote
/// its policies.
fn permissive_policies(dir: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = match text.find("@id(\"no-self-approval\")") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        std::fs::write(dir.join(entry.file_name()), text).unwrap();
    }
    std::fs::write(
        dir.join("site.cedar"),
        "@id(\"site-anyone-approves\")\npermit (principal, action in \
         [Action::\"approve\", Action::\"review\"], resource);\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_approves_their_own_request_whatever_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    permissive_policies(dir.path());
    let gw = InProcess::start_as(&Setup {
        policy_dir: Some(dir.path()),
        extra: "[grants]\nbreak_glass_group = \"break-glass\"\n",
        ..Setup::default()
    })
    .await;
    let alice = gw.user("alice", &["developers", "approvers", "break-glass"]);
    let id = request(&alice, "web1 --login root --for 1h --reason OPS-3").await;
    let a = broker(&alice, &format!("approve {id}")).await;
    assert_eq!(
        (a.code, a.stderr.as_str()),
        (
            Some(1),
            format!(
                "portcullis: refused: the policy does not allow you to approve your own request \
                 {id}.\n"
            )
            .as_str()
        )
    );
    let refused = events(&gw, "access_request", "request_id", &id).await;
    assert!(
        refused
            .iter()
            .any(|d| d["action"] == "approve" && d["reason"] == "self-approval is never allowed"),
        "{refused:?}"
    );
    let shown = broker(&alice, &format!("request show {id} --json")).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "pending");
    // Nor reviews their own break-glass grant.
    let a = broker(
        &alice,
        "request web1 --login root --for 10m --reason OPS-4 --break-glass",
    )
    .await;
    assert_eq!(a.code, Some(0), "{a:?}");
    // "Break-glass grant ID: ..."
    let text = String::from_utf8(a.stdout).unwrap();
    let bg = text
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':');
    let a = broker(&alice, &format!("review {bg}")).await;
    assert_eq!(
        (a.code, a.stderr.as_str()),
        (
            Some(1),
            format!(
                "portcullis: refused: the policy does not allow you to review your own \
                 break-glass grant {bg}.\n"
            )
            .as_str()
        )
    );
    // Someone else may (the site's policy permits it).
    let bob = gw.user("bob", &["approvers"]);
    let a = broker(&bob, &format!("approve {id}")).await;
    assert_eq!(a.code, Some(0), "{a:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_request_expires_after_the_request_ttl() {
    let gw = InProcess::start("[grants]\nrequest_ttl = \"2s\"\n").await;
    let alice = gw.user("alice", &["developers"]);
    let approver = gw.user("approver", &["approvers"]);
    let id = request(&alice, "web1 --login app --for 1h --reason OPS-5").await;
    let asked = Instant::now();
    let pending = broker(&approver, "requests --pending --json").await;
    assert!(String::from_utf8_lossy(&pending.stdout).contains(&id));
    // The expiry is audited by the gateway's background loop.
    let expired = loop {
        let found = events(&gw, "access_request", "request_id", &id).await;
        if let Some(e) = found.iter().find(|d| d.get("target").is_some()) {
            break e.clone();
        }
        assert!(asked.elapsed() < Duration::from_secs(30), "{found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(expired["target"], "app@web1");
    assert_eq!(expired["requester"], "ca:alice");
    let row = gw.gateway.store.access_request(&id).await.unwrap().unwrap();
    assert_eq!(
        row.pending_until.unwrap() - row.created_at,
        2000,
        "pending_until is created_at + request_ttl"
    );
    let pending = broker(&approver, "requests --pending --json").await;
    assert!(!String::from_utf8_lossy(&pending.stdout).contains(&id));
    let a = broker(&approver, &format!("approve {id}")).await;
    assert_eq!(
        (a.code, a.stderr.as_str()),
        (
            Some(1),
            format!(
                "portcullis: refused: request {id} expired: it waited longer than 2s \
                 undecided (grants.request_ttl); ask again.\n"
            )
            .as_str()
        )
    );
    let shown = broker(&alice, &format!("request show {id} --json")).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["state"], "expired", "{shown}");
    assert_eq!(
        events(&gw, "access_request", "request_id", &id)
            .await
            .iter()
            .filter(|d| d.get("target").is_some())
            .count(),
        1,
        "the expiry is audited once"
    );
    gw.stop().await;
}
