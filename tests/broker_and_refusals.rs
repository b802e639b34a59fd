//! Policy, broker and refusal paths through the real SSH front door,
//! without LXC, an IdP or OpenSSH: the gateway runs in this process on
//! port 0 ([`common::inproc`]), its containers come from the `process`
//! backend (none running), and a russh client logs in with certificates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::inproc::{Answer, InProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_answers_over_ssh_and_its_steps_are_audited() {
    let gw = InProcess::start("").await;
    let alice = gw.user("alice", &["developers"]);
    let approver = gw.user("approver", &["approvers"]);
    let who = alice.exec("portcullis", "whoami").await;
    assert_eq!(who.code, Some(0), "{who:?}");
    assert_eq!(
        String::from_utf8(who.stdout).unwrap(),
        "principal: cert:alice\nemail: -\ngroups: developers\nactive grants: none\n"
    );
    let asked = alice
        .exec(
            "portcullis",
            "request web1 --login app --for 1h --reason OPS-7",
        )
        .await;
    assert_eq!(asked.code, Some(0), "{asked:?}");
    let text = String::from_utf8(asked.stdout).unwrap();
    let id = text.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(
        text,
        format!(
            "Request {id} is pending: app@web1 for 1h.\nAn approver may run: \
             ssh -p {} portcullis@gw approve {id}\n",
            gw.port
        )
    );
    let approved = approver.exec("portcullis", &format!("approve {id}")).await;
    assert_eq!(approved.code, Some(0), "{approved:?}");
    let own = alice.exec("portcullis", &format!("revoke {id}")).await;
    assert_eq!(
        (own.code, own.stderr.as_str()),
        (
            Some(2),
            "portcullis: revoke needs --reason TEXT (try: help)\n"
        )
    );
    let kinds: Vec<String> = gw.audit().await.into_iter().map(|(k, _, _)| k).collect();
    for kind in ["authentication", "access_request", "grant"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind}: {kinds:?}");
    }
    gw.stop().await;
}

/// The refusal a shell user reads: exit status 1, the message on stderr,
/// nothing on stdout.
fn refused(a: &Answer, message: &str) {
    assert_eq!(a.code, Some(1), "{a:?}");
    assert!(a.stdout.is_empty(), "{a:?}");
    assert!(a.stderr.starts_with(message), "{:?}", a.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_and_are_audited_before_they_are_sent() {
    let gw = InProcess::start("").await;
    let alice = gw.user("alice", &["developers"]);
    let admin = gw.user("admin", &["admins"]);
    // Policy: developers may not be root on dev; the refusal says how to ask.
    let a = alice.exec("root@web1", "id").await;
    refused(
        &a,
        &format!(
            "Access denied: you may not run commands as root on web1.\r\nTo ask for access: \
             ssh -p {} portcullis@gw request web1 --login root --for 1h --reason \"...\"\r\n",
            gw.port
        ),
    );
    // An unknown container reads like a denied one.
    let a = admin.exec("root@nowhere", "id").await;
    refused(
        &a,
        "Access denied: you may not run commands as root on nowhere.",
    );
    // Allowed, but not running.
    let a = admin.exec("root@web1", "id").await;
    refused(
        &a,
        "Access refused: the container web1 is stopped (not running).",
    );
    // Not a target at all.
    let a = admin.exec("a@b@c", "id").await;
    refused(
        &a,
        "Access denied: the SSH user name must be [login@]container.",
    );
    // The broker's name is not a container.
    let a = admin.exec("root@portcullis", "id").await;
    refused(
        &a,
        "Access denied: portcullis is the gateway's own commands, not a container",
    );
    let events = gw.audit().await;
    let decisions: Vec<(&str, bool)> = events
        .iter()
        .filter(|(k, _, _)| k == "decision")
        .map(|(_, _, d)| {
            (
                d["container"].as_str().unwrap(),
                d["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(decisions, [("web1", false), ("web1", true)]);
    let targets = events
        .iter()
        .filter(|(k, o, _)| k == "target" && o == "failure")
        .count();
    assert_eq!(targets, 4, "unknown, stopped, malformed, reserved");
    // No session was started for any of them.
    assert!(gw.gateway.store.list_sessions(10).await.unwrap().is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_not_offered_are_refused_and_audited() {
    let gw = InProcess::start("").await;
    let admin = gw.user("admin", &["admins"]);
    let conn = admin.connect("root@web1").await;
    assert!(!conn.subsystem("not-a-subsystem").await);
    // The refusal does not wait for its audit event (nothing happens
    // either way): poll for it.
    let audited = || async {
        gw.audit().await.iter().any(|(k, o, d)| {
            k == "channel"
                && o == "deny"
                && d["kind"] == "subsystem"
                && d["reason"] == "unknown subsystem not-a-subsystem"
        })
    };
    let started = std::time::Instant::now();
    while !audited().await {
        assert!(started.elapsed().as_secs() < 10, "{:?}", gw.audit().await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_runs_more_commands_than_it_has_channel_slots() {
    // Every broker command closes its channel first: each must give its
    // slot back ([forwarding] max_session_channels = 3 here).
    let gw = InProcess::start("[forwarding]\nmax_session_channels = 3\n").await;
    let admin = gw.user("admin", &["admins"]);
    let conn = admin.connect("portcullis").await;
    for i in 0..12 {
        let a = conn.exec("whoami --json").await;
        assert_eq!(a.code, Some(0), "command {i}: {a:?}");
    }
    // Slots still bound: three open channels, the fourth refused.
    let open: Vec<_> = futures_open(&conn, 3).await;
    assert!(
        conn.open_session().await.is_err(),
        "a fourth channel was accepted"
    );
    drop(open);
    gw.stop().await;
}

async fn futures_open(
    conn: &common::inproc::Connection,
    n: usize,
) -> Vec<russh::Channel<russh::client::Msg>> {
    let mut open = Vec::new();
    for _ in 0..n {
        open.push(conn.open_session().await.expect("a free slot"));
    }
    open
}
