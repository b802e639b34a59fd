//! The control plane end to end (issue 18): a busybox LXC container of
//! this test's own, the gateway in this process on the LXC backend
//! ([`common::inproc`], a russh client with certificates), and the
//! lifecycle commands over ssh: refusals by policy, an owner restarting
//! their dev container, a live session that needs `--force`, LXC's own
//! refusal (a snapshot of a running container) passed to the user,
//! snapshot and restore (restore needs a grant with two approvals), the
//! grant used once, and the `process` backend's refusal. Every step's
//! audit events are checked. On PostgreSQL with
//! `PORTCULLIS_TEST_DATABASE=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::container::{TestContainer, reaper};
use common::inproc::{Answer, InProcess};

fn text(a: &Answer) -> String {
    String::from_utf8_lossy(&a.stdout).into_owned()
}

/// The container's state as `lxc-info` reports it.
fn state(name: &str) -> String {
    let out = Command::new("lxc-info")
        .args(["-n", name, "-s", "-H"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lifecycle audit events so far: `(outcome, detail)`.
async fn lifecycle_events(gw: &InProcess) -> Vec<(String, serde_json::Value)> {
    gw.audit()
        .await
        .into_iter()
        .filter(|(kind, _, _)| kind == "container_lifecycle")
        .map(|(_, outcome, detail)| (outcome, detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_actions_under_policy_approval_and_audit() {
    let c = TestContainer::start("life");
    let name = c.name.clone();
    // Snapshots keep `lxc-destroy -f` from destroying the container; this
    // reaper destroys them too when the test process exits.
    let _snapshots_reaper = reaper(&format!(
        "lxc-stop -k -n {name} >/dev/null 2>&1; lxc-destroy -f -s -n {name} >/dev/null 2>&1"
    ));
    let extra = format!(
        "[containers.{name}]\nowner = \"ca:alice\"\npurpose = \"lifecycle test\"\n\
         labels = {{ env = \"dev\" }}\n"
    );
    let gw = InProcess::start_on("lxc", &extra, None).await;
    let alice = gw.user("alice", &["developers"]);
    let bob = gw.user("bob", &["developers"]);
    let nobody = gw.user("nobody", &[]);
    let carol = gw.user("carol", &["approvers"]);
    let dave = gw.user("dave", &["approvers"]);
    let admin = gw.user("root-admin", &["admins"]);

    // The listing shows what the policy lets one inspect.
    let listed = bob.exec("portcullis", "containers list --json").await;
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&name.as_str()), "{names:?}");
    let ours = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap();
    assert_eq!(
        (&ours["owner"], &ours["state"], &ours["backend"]),
        (
            &serde_json::json!("ca:alice"),
            &serde_json::json!("RUNNING"),
            &serde_json::json!("lxc")
        )
    );
    let hidden = nobody.exec("portcullis", "containers list").await;
    assert_eq!(
        (hidden.code, text(&hidden)),
        (Some(0), "No containers you may see.\n".to_string())
    );

    // Bob is no owner: refused, with the way to ask.
    let refused = bob
        .exec(
            "portcullis",
            &format!("containers stop {name} --reason OPS-1"),
        )
        .await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert_eq!(
        refused.stderr,
        format!(
            "portcullis: refused: the policy does not allow you to stop {name}; to ask for \
             approval: ssh -p {} portcullis@gw containers request stop {name} --reason TEXT.\n",
            gw.port
        )
    );
    assert_eq!(state(&name), "RUNNING");
    // No reason: a usage error, nothing audited.
    let usage = alice
        .exec("portcullis", &format!("containers stop {name}"))
        .await;
    assert_eq!(usage.code, Some(2), "{usage:?}");

    // Alice, the owner, has a live session: restart needs --force.
    let conn = alice.connect(&format!("app@{name}")).await;
    let session = conn.open_session().await.unwrap();
    session.exec(true, "sleep 600").await.unwrap();
    poll("the live session", || live_on(&gw, &name) == 1).await;
    let busy = alice
        .exec(
            "portcullis",
            &format!("containers restart {name} --reason OPS-2"),
        )
        .await;
    assert_eq!(busy.code, Some(1), "{busy:?}");
    assert_eq!(
        busy.stderr,
        format!(
            "portcullis: refused: {name} has 1 live session(s); add --force to restart it \
             anyway.\n"
        )
    );
    let first_init = c.init_pid();
    let forced = alice
        .exec(
            "portcullis",
            &format!("containers restart {name} --reason OPS-2 --force"),
        )
        .await;
    assert_eq!(
        (forced.code, text(&forced)),
        (Some(0), format!("Restarted {name}.\n")),
        "{forced:?}"
    );
    assert_eq!(state(&name), "RUNNING");
    assert_ne!(c.init_pid(), first_init);
    // The session ended with its container.
    poll("the session's end", || live_on(&gw, &name) == 0).await;
    drop(session);

    // LXC snapshots a directory-backed container only while stopped: the
    // backend's refusal reaches the user.
    let running = alice
        .exec(
            "portcullis",
            &format!("containers snapshot {name} --reason OPS-3"),
        )
        .await;
    assert_eq!(running.code, Some(1), "{running:?}");
    assert_eq!(
        running.stderr,
        format!(
            "portcullis: refused: snapshot {name} failed: {name} is running; an LXC snapshot \
             (of a directory-backed container) needs it stopped.\n"
        )
    );
    let stopped = alice
        .exec(
            "portcullis",
            &format!("containers stop {name} --reason OPS-3"),
        )
        .await;
    assert_eq!(
        (stopped.code, text(&stopped)),
        (Some(0), format!("Stopped {name}.\n")),
        "{stopped:?}"
    );
    assert_eq!(state(&name), "STOPPED");
    let marker = c.rootfs.join("marker");
    std::fs::write(&marker, "before\n").unwrap();
    let snap = alice
        .exec(
            "portcullis",
            &format!("containers snapshot {name} --reason OPS-3 --json"),
        )
        .await;
    assert_eq!(snap.code, Some(0), "{snap:?}");
    let snap: serde_json::Value = serde_json::from_slice(&snap.stdout).unwrap();
    assert_eq!(
        snap,
        serde_json::json!({"action": "snapshot", "container": name, "snapshot": "snap0", "grant_id": null})
    );
    std::fs::write(&marker, "after\n").unwrap();
    let listed = bob
        .exec("portcullis", &format!("containers snapshots {name} --json"))
        .await;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "snap0");

    // A restore needs a grant, and the grant two approvers.
    let restore = format!("containers restore {name} snap0 --reason OPS-4");
    let no_grant = alice.exec("portcullis", &restore).await;
    assert_eq!(no_grant.code, Some(1), "{no_grant:?}");
    assert!(
        no_grant
            .stderr
            .contains(&format!("containers request restore {name} --reason TEXT")),
        "{no_grant:?}"
    );
    let asked = alice
        .exec(
            "portcullis",
            &format!("containers request restore {name} --reason OPS-4 --json"),
        )
        .await;
    assert_eq!(asked.code, Some(0), "{asked:?}");
    let asked: serde_json::Value = serde_json::from_slice(&asked.stdout).unwrap();
    let id = asked["id"].as_str().unwrap().to_string();
    assert_eq!(
        (&asked["action"], &asked["login"], &asked["status"]),
        (
            &serde_json::json!("restore"),
            &serde_json::json!(""),
            &serde_json::json!("pending")
        )
    );
    let one = carol.exec("portcullis", &format!("approve {id}")).await;
    assert_eq!(one.code, Some(0), "{one:?}");
    assert!(text(&one).contains("stays pending"), "{one:?}");
    let still = alice.exec("portcullis", &restore).await;
    assert_eq!(still.code, Some(1), "{still:?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "after\n");
    let two = dave.exec("portcullis", &format!("approve {id}")).await;
    assert_eq!(two.code, Some(0), "{two:?}");
    let restored = alice.exec("portcullis", &restore).await;
    assert_eq!(
        (restored.code, text(&restored)),
        (Some(0), format!("Restored {name} to snap0.\n")),
        "{restored:?}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "before\n");
    // Used once.
    let again = alice.exec("portcullis", &restore).await;
    assert_eq!(again.code, Some(1), "{again:?}");
    let started = alice
        .exec(
            "portcullis",
            &format!("containers start {name} --reason OPS-5"),
        )
        .await;
    assert_eq!(
        (started.code, text(&started)),
        (Some(0), format!("Started {name}.\n")),
        "{started:?}"
    );
    assert_eq!(state(&name), "RUNNING");

    // The process backend refuses, with why.
    let process = admin
        .exec("portcullis", "containers start web1 --reason OPS-6")
        .await;
    assert_eq!(process.code, Some(1), "{process:?}");
    assert_eq!(
        process.stderr,
        "portcullis: refused: start web1 failed: web1 is found by the process backend (a pid \
         file or a cgroup), which cannot start containers; its runtime's own tools do that on \
         the host.\n"
    );

    // Every step audited: refusals, and each action before and after.
    let events = lifecycle_events(&gw).await;
    let summary: Vec<(String, String, String)> = events
        .iter()
        .filter(|(_, d)| d["container"] == name.as_str() || d["container"] == "web1")
        .map(|(outcome, d)| {
            (
                outcome.clone(),
                d["action"].as_str().unwrap().to_string(),
                d["error"]
                    .as_str()
                    .map(|_| "error")
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let s = |o: &str, a: &str, e: &str| (o.to_string(), a.to_string(), e.to_string());
    assert_eq!(
        summary,
        vec![
            s("deny", "stop", ""),
            s("deny", "restart", ""),
            s("allow", "restart", ""),
            s("success", "restart", ""),
            s("allow", "snapshot", ""),
            s("failure", "snapshot", "error"),
            s("allow", "stop", ""),
            s("success", "stop", ""),
            s("allow", "snapshot", ""),
            s("success", "snapshot", ""),
            s("deny", "restore", ""),
            s("deny", "restore", ""),
            s("allow", "restore", ""),
            s("success", "restore", ""),
            s("deny", "restore", ""),
            s("allow", "start", ""),
            s("success", "start", ""),
            s("allow", "start", ""),
            s("failure", "start", "error"),
        ]
    );
    let forced = events
        .iter()
        .find(|(o, d)| o == "allow" && d["action"] == "restart")
        .unwrap();
    assert_eq!(
        (
            &forced.1["force"],
            &forced.1["live_sessions"],
            &forced.1["reason"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(1),
            &serde_json::json!("OPS-2")
        )
    );
    let restore = events
        .iter()
        .find(|(o, d)| o == "allow" && d["action"] == "restore")
        .unwrap();
    assert_eq!(
        (
            &restore.1["grant_id"],
            &restore.1["snapshot"],
            &restore.1["policies"]
        ),
        (
            &serde_json::json!(id),
            &serde_json::json!("snap0"),
            &serde_json::json!(["action-grant-holders"])
        )
    );
    run_quiet(&["lxc-snapshot", "-n", &name, "-d", "ALL"]);
    gw.stop().await;
}

/// Sessions the gateway serves on `name` now.
fn live_on(gw: &InProcess, name: &str) -> usize {
    gw.gateway
        .live
        .list()
        .iter()
        .filter(|s| s.container == name)
        .count()
}

/// Polls `check` every 20 ms until it holds, for at most 20 s.
async fn poll(what: &str, check: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}
