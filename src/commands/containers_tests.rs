//! The `containers` commands without LXC (issue 18): parsing, refusals,
//! the listing by policy, `--force` over a live session, an action grant
//! used once, and the `process` backend's refusal, on a real SQLite store
//! with the shipped policies (`web1` is `env=dev`, `db1` `env=prod`, both
//! on the process backend). `tests/container_lifecycle.rs` runs them on a
//! real LXC container.

use serde_json::Value;

use super::tests::{caller, env, run};
use crate::session::live::LiveSession;

/// The lifecycle audit events so far: `(outcome, action, container)`.
async fn lifecycle(gw: &crate::gateway::Gateway) -> Vec<(String, String, String)> {
    gw.store
        .audit_events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "container_lifecycle")
        .map(|e| {
            let d: Value = serde_json::from_str(&e.detail).unwrap();
            (
                e.outcome,
                d["action"].as_str().unwrap().to_string(),
                d["container"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ev(o: &str, a: &str, c: &str) -> (String, String, String) {
    (o.to_string(), a.to_string(), c.to_string())
}

const PROCESS_REFUSAL: &str = "is found by the process backend (a pid file or a cgroup), \
     which cannot stop containers; its runtime's own tools do that on the host";

#[tokio::test]
async fn usage_errors_and_unknown_containers() {
    let e = env().await;
    let admin = caller("root-admin", &["admins"]);
    for line in [
        "containers bogus",
        "containers stop web1",
        "containers stop web1 --reason ''",
        "containers restore web1 --reason x",
        "containers stop web1 db1 --reason x",
        "containers request reboot web1 --reason x",
        "containers request stop web1 --reason x --for soon",
        "containers snapshots",
    ] {
        let r = run(&e.gw, &admin, line).await;
        assert_eq!(r.code, 2, "{line}: {r:?}");
        assert!(r.stderr.starts_with("portcullis: "), "{line}: {r:?}");
    }
    assert!(lifecycle(&e.gw).await.is_empty());
    let r = run(&e.gw, &admin, "containers stop nosuch --reason x").await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "portcullis: refused: no such container nosuch.\n")
    );
    let r = run(&e.gw, &admin, "containers restore web1 ../x --reason x").await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "portcullis: refused: invalid snapshot name.\n")
    );
    assert_eq!(
        lifecycle(&e.gw).await,
        vec![ev("deny", "stop", "nosuch"), ev("deny", "restore", "web1")]
    );
}

#[tokio::test]
async fn the_listing_shows_what_the_policy_lets_one_inspect() {
    let e = env().await;
    let names = |r: &super::Reply| -> Vec<String> {
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|row| row["name"].as_str().unwrap().to_string())
            .collect()
    };
    let dev = run(
        &e.gw,
        &caller("alice", &["developers"]),
        "containers list --json",
    )
    .await;
    assert_eq!(names(&dev), ["db1", "web1"]);
    let none = run(&e.gw, &caller("nobody", &[]), "containers --json").await;
    assert_eq!(names(&none), Vec::<String>::new());
    let text = run(&e.gw, &caller("nobody", &[]), "containers").await;
    assert_eq!(text.stdout, "No containers you may see.\n");
}

#[tokio::test]
async fn live_sessions_need_force_and_the_process_backend_refuses() {
    let e = env().await;
    let admin = caller("root-admin", &["admins"]);
    let _live = e.gw.live.register(LiveSession {
        id: "s1".into(),
        principal: "bob".into(),
        issuer: "https://idp.example".into(),
        container: "web1".into(),
        login: "app".into(),
        client_addr: "192.0.2.9:1".into(),
        key_fingerprint: None,
        groups: Vec::new(),
        connection: None,
        recheck: None,
    });
    let r = run(&e.gw, &admin, "containers stop web1 --reason OPS-1").await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "portcullis: refused: web1 has 1 live session(s); add --force to stop it anyway.\n"
        )
    );
    let r = run(&e.gw, &admin, "containers stop web1 --reason OPS-1 --force").await;
    assert_eq!(
        (r.code, r.stderr),
        (
            1,
            format!("portcullis: refused: stop web1 failed: web1 {PROCESS_REFUSAL}.\n")
        )
    );
    assert_eq!(
        lifecycle(&e.gw).await,
        vec![
            ev("deny", "stop", "web1"),
            ev("allow", "stop", "web1"),
            ev("failure", "stop", "web1"),
        ]
    );
}

#[tokio::test]
async fn prod_needs_a_grant_which_runs_the_action_once() {
    let e = env().await;
    let alice = caller("alice", &["developers"]);
    let carol = caller("carol", &["approvers"]);
    let r = run(&e.gw, &alice, "containers stop db1 --reason OPS-2").await;
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "portcullis: refused: the policy does not allow you to stop db1; to ask for \
             approval: ssh -p 2222 portcullis@gw containers request stop db1 --reason TEXT.\n"
        )
    );
    let asked = run(
        &e.gw,
        &alice,
        "containers request stop db1 --reason OPS-2 --for 30m --json",
    )
    .await;
    assert_eq!(asked.code, 0, "{asked:?}");
    let asked: Value = serde_json::from_str(&asked.stdout).unwrap();
    let id = asked["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            &asked["action"],
            &asked["login"],
            &asked["duration_seconds"]
        ),
        (&Value::from("stop"), &Value::from(""), &Value::from(1800))
    );
    let listed = run(&e.gw, &carol, "requests --pending").await;
    assert!(
        listed
            .stdout
            .contains("ca:alice wants to stop db1 (once) for 30m")
            || listed
                .stdout
                .contains("alice wants to stop db1 (once) for 30m"),
        "{listed:?}"
    );
    // One approver is enough for a stop on prod.
    let approved = run(&e.gw, &carol, &format!("approve {id}")).await;
    assert_eq!(approved.code, 0, "{approved:?}");
    assert!(
        approved
            .stdout
            .starts_with(&format!("Approved {id}: alice may stop db1 (once) until ")),
        "{approved:?}"
    );
    // Someone else's grant is not theirs.
    let bob = run(
        &e.gw,
        &caller("bob", &["developers"]),
        "containers stop db1 --reason x",
    )
    .await;
    assert_eq!(bob.code, 1, "{bob:?}");
    // Alice's runs once (the process backend then refuses to stop).
    let r = run(&e.gw, &alice, "containers stop db1 --reason OPS-2").await;
    assert_eq!(
        (r.code, r.stderr),
        (
            1,
            format!("portcullis: refused: stop db1 failed: db1 {PROCESS_REFUSAL}.\n")
        )
    );
    let used = e.gw.store.access_request(&id).await.unwrap().unwrap();
    assert_eq!(used.revoke_reason.as_deref(), Some("used: stop"));
    let again = run(&e.gw, &alice, "containers stop db1 --reason OPS-2").await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("does not allow you to stop db1"),
        "{again:?}"
    );
    let started =
        e.gw.store
            .audit_events(None)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "container_lifecycle" && e.outcome == "allow")
            .unwrap();
    let d: Value = serde_json::from_str(&started.detail).unwrap();
    assert_eq!(
        (&d["grant_id"], &d["policies"]),
        (
            &Value::from(id.as_str()),
            &serde_json::json!(["action-grant-holders"])
        )
    );
}
