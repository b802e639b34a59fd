//! The fleet's machinery on real PostgreSQL, in process, on loopback
//! (issue 16 points 2, 3, 4 and 10): join tokens (stolen, replayed,
//! misdirected, expired), node removal, the tunnel, the relay through it
//! to a node SSH server that checks the edge's certificates, flow control
//! across the tunnel, container name claims, the edge CA shared by edges,
//! the fan-out latency and the metrics endpoint.
//!
//! The fleet needs PostgreSQL, so these tests use it whatever
//! `PORTCULLIS_TEST_DATABASE` says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::fleet::{TestEdge, node_server_acceptor, poll_until};
use portcullis::fleet::ca::{EdgeCa, new_key, now_secs};
use portcullis::fleet::locate::locate;
use portcullis::fleet::relay::{NodeHostCheck, RelayClient, RelayEvent, RelayRequest};
use portcullis::fleet::tunnel::{NodeIdentity, RelayAcceptor, TunnelStream};
use portcullis::fleet::{RelayAction, RelayGrant, join};
use portcullis::identity::Principal;
use portcullis::inventory::container_rows;
use portcullis::store::InventoryPush;
use russh::Pty;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running container without labels, owner or purpose, as a node's
/// heartbeat reports it.
fn pushed(name: &str) -> InventoryPush {
    InventoryPush {
        name: name.to_string(),
        state: "RUNNING".to_string(),
        labels: "{}".to_string(),
        owner: None,
        purpose: None,
        backend: "lxc".to_string(),
    }
}

fn grant(container: &str, action: RelayAction) -> RelayGrant {
    RelayGrant {
        session_id: uuid::Uuid::new_v4().to_string(),
        principal: Principal {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["developers".into()],
            issuer: "https://idp.example.com".into(),
        },
        login: "app".into(),
        container: container.into(),
        action,
        grant_id: None,
        client_address: Some("192.0.2.7:50022".into()),
        destination: (action == RelayAction::DirectTcpip).then(|| "127.0.0.1:8080".into()),
        edge: "edge-a".into(),
    }
}

/// An edge with node `n1` joined, whose relay streams go to the stand-in
/// node SSH server.
async fn fleet_with_node_server() -> (
    TestEdge,
    tempfile::TempDir,
    Arc<NodeIdentity>,
    Arc<Mutex<Vec<String>>>,
) {
    let edge = TestEdge::start().await;
    let dir = tempfile::tempdir().unwrap();
    let slot = Arc::new(OnceLock::new());
    let refused = Arc::new(Mutex::new(Vec::new()));
    let acceptor = node_server_acceptor(slot.clone(), refused.clone());
    let (identity, stop) = edge.join_node(dir.path(), "n1", acceptor).await;
    std::mem::forget(stop);
    slot.set(identity.clone()).unwrap();
    (edge, dir, identity, refused)
}

async fn relay(edge: &TestEdge, g: &RelayGrant) -> Result<RelayClient, String> {
    let minted = edge
        .ca
        .mint_user_certificate(g, now_secs(), Duration::from_secs(120))
        .unwrap();
    let stream = edge.tunnels.open_stream("n1", None).await.unwrap();
    let check = NodeHostCheck {
        node: "n1".into(),
        ca: edge.ca.fingerprint(),
    };
    RelayClient::connect(stream, &minted, check, None)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_one_time_named_and_expiring_and_removal_is_immediate() {
    let edge = TestEdge::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pin = edge.ca.fingerprint();
    // No CA in another fleet: the pin of another CA refuses this edge before
    // the token is shown to it (the token stays usable).
    let token = edge.token("n1", Duration::from_secs(600)).await;
    let other_ca = EdgeCa::from_key(new_key().unwrap()).fingerprint();
    let err = NodeIdentity::join(dir.path(), "n1", &edge.addr, &token, other_ca)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&edge.addr), "{err}");
    // A token stolen for another name.
    let stolen = NodeIdentity::join(dir.path(), "evil", &edge.addr, &token, pin).await;
    assert!(stolen.is_err());
    // The right name joins once.
    let joined = NodeIdentity::join(dir.path(), "n1", &edge.addr, &token, pin)
        .await
        .unwrap();
    assert_eq!(joined.certificate().unwrap().valid_principals(), ["n1"]);
    // Replayed.
    let dir2 = tempfile::tempdir().unwrap();
    assert!(
        NodeIdentity::join(dir2.path(), "n1", &edge.addr, &token, pin)
            .await
            .is_err()
    );
    // Expired.
    let expired = edge.token("n3", Duration::ZERO).await;
    assert!(
        NodeIdentity::join(dir2.path(), "n3", &edge.addr, &expired, pin)
            .await
            .is_err()
    );
    let reasons: Vec<(String, serde_json::Value)> = edge.fleet_audit().await;
    let refusals: Vec<String> = reasons
        .iter()
        .filter(|(outcome, _)| outcome == "deny")
        .map(|(_, d)| format!("{} {}", d["node"], d["reason"]).replace('"', ""))
        .collect();
    assert_eq!(
        refusals,
        [
            "evil join token issued for another node",
            "n1 join token already used",
            "n3 join token expired",
        ]
    );
    assert!(
        reasons
            .iter()
            .any(|(o, d)| o == "success" && d["node"] == "n1" && d["edge"] == "edge-a")
    );
    // The tunnel: up, listed, then removed and refused at once.
    let refused = Arc::new(Mutex::new(Vec::new()));
    let slot = Arc::new(OnceLock::new());
    let acceptor = node_server_acceptor(slot, refused);
    let dir3 = tempfile::tempdir().unwrap();
    let (_identity, _stop) = edge.join_node(dir3.path(), "n2", acceptor).await;
    let nodes = edge.store.list_fleet_nodes(10_000).await.unwrap();
    let n2 = nodes.iter().find(|n| n.name == "n2").unwrap();
    assert_eq!(
        (n2.state.as_str(), n2.edges.clone()),
        ("active", vec!["edge-a".to_string()])
    );
    // Where containers run: n2 is connected here, n1 joined but has no
    // tunnel, web7 is nowhere.
    edge.store
        .push_inventory("n2", "0.1.0", &[pushed("web9")])
        .await
        .unwrap();
    edge.store
        .push_inventory("n1", "0.1.0", &[pushed("web8")])
        .await
        .unwrap();
    // The listing (`portcullis containers list` on any role) shows the
    // fleet's containers, not this host's, and n1's as offline.
    let no_local = portcullis::inventory::Inventory::new(
        &portcullis::config::Config::parse(
            "state_dir = \"/nonexistent\"\n[oidc]\nissuer = \"https://idp.example.com\"\n\
             client_id = \"p\"\n[inventory]\nbackend = \"process\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap(),
    );
    let rows = container_rows(&no_local, &edge.store, "edge-a", Duration::from_secs(10))
        .await
        .unwrap();
    let listed: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.node.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        listed,
        [("web8", "n1", "OFFLINE"), ("web9", "n2", "RUNNING")]
    );
    let at = locate(&edge.store, &edge.tunnels, "web9").await.unwrap();
    assert_eq!((at.node.as_str(), at.state.as_str()), ("n2", "RUNNING"));
    let offline = locate(&edge.store, &edge.tunnels, "web8")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        offline.starts_with("container web8 is on node n1, which is offline (last heartbeat 20"),
        "{offline}"
    );
    let unknown = locate(&edge.store, &edge.tunnels, "web7")
        .await
        .unwrap_err();
    assert_eq!(unknown.to_string(), "no container named web7 in the fleet");
    join::remove_node(&edge.store, &edge.audit, "n2", "host:test")
        .await
        .unwrap();
    let tunnels = edge.tunnels.clone();
    poll_until(
        "the removed node's tunnel closed",
        Duration::from_secs(10),
        || {
            let up = tunnels.is_connected("n2");
            async move { !up }
        },
    )
    .await;
    // The node keeps redialling with its certificate: refused and audited.
    let store = edge.store.clone();
    poll_until(
        "a refused login of the removed node",
        Duration::from_secs(10),
        || {
            let store = store.clone();
            async move {
                store.audit_events(None).await.unwrap().iter().any(|r| {
                    r.kind == "fleet"
                        && r.detail.contains(r#""node":"n2""#)
                        && r.detail.contains("node is removed")
                })
            }
        },
    )
    .await;
    assert!(!edge.tunnels.is_connected("n2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_passes_every_request_and_the_node_refuses_what_the_certificate_does_not_name() {
    let (edge, _dir, _identity, refused) = fleet_with_node_server().await;

    // exec with pty-req and env: every request reaches the node.
    let g = grant("web1", RelayAction::Session);
    let mut s = relay(&edge, &g)
        .await
        .unwrap()
        .open_session()
        .await
        .unwrap();
    let pty = RelayRequest::Pty {
        term: "xterm-256color".into(),
        cols: 120,
        rows: 40,
        pix_width: 0,
        pix_height: 0,
        modes: vec![(Pty::ECHO, 1)],
    };
    assert!(s.request(pty).await.unwrap());
    let env = |name: &str| RelayRequest::Env {
        name: name.into(),
        value: "C.UTF-8".into(),
    };
    assert!(s.request(env("LANG")).await.unwrap());
    assert!(!s.request(env("REFUSE_ME")).await.unwrap());
    assert!(
        s.request(RelayRequest::Exec(b"uname -a".to_vec()))
            .await
            .unwrap()
    );
    let (mut out, mut events) = (Vec::new(), Vec::new());
    while let Some(e) = s.next_event().await {
        match e {
            RelayEvent::Data(d) => out.extend_from_slice(&d),
            other => events.push(other),
        }
    }
    let expected = "exec uname -a as app@web1 for alice \
         pty=Some((\"xterm-256color\", 120, 40, [(ECHO, 1)])) env=[(\"LANG\", \"C.UTF-8\")]\n";
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    assert_eq!(
        events,
        [
            RelayEvent::ExtendedData(1, "to stderr\n".into()),
            RelayEvent::ExitStatus(7),
            RelayEvent::Eof,
        ]
    );
    // The second witness: every output byte, in relay order.
    let w = s.witness();
    let all = [expected.as_bytes(), b"to stderr\n"].concat();
    assert_eq!(w.bytes(), all.len() as u64);
    assert_eq!(w.sha256(), hex::encode(Sha256::digest(&all)));
    w.record(&edge.store, &g.session_id, "edge-a", "n1")
        .await
        .unwrap();
    let stored = edge.store.witness(&g.session_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.output_bytes, stored.output_sha256, stored.node),
        (all.len() as i64, w.sha256(), "n1".to_string())
    );

    // A shell: input echoed byte-exact (1 MiB), window-change, EOF, exit 0.
    let mut s = relay(&edge, &grant("web1", RelayAction::Session))
        .await
        .unwrap()
        .open_session()
        .await
        .unwrap();
    assert!(s.request(RelayRequest::Shell).await.unwrap());
    let input: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    s.data(&input).await.unwrap();
    let winch = RelayRequest::WindowChange {
        cols: 100,
        rows: 30,
        pix_width: 0,
        pix_height: 0,
    };
    let mut echoed = Vec::new();
    while echoed.len() < input.len() {
        match s.next_event().await.unwrap() {
            RelayEvent::Data(d) => echoed.extend_from_slice(&d),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(echoed, input);
    assert!(s.request(winch).await.unwrap());
    assert_eq!(
        s.next_event().await,
        Some(RelayEvent::Data("winch 100x30\n".into()))
    );
    s.eof().await.unwrap();
    assert_eq!(s.next_event().await, Some(RelayEvent::ExitStatus(0)));

    // A signal ends it with exit-signal.
    let mut s = relay(&edge, &grant("web1", RelayAction::Session))
        .await
        .unwrap()
        .open_session()
        .await
        .unwrap();
    assert!(s.request(RelayRequest::Shell).await.unwrap());
    assert!(
        s.request(RelayRequest::Signal("TERM".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        s.next_event().await,
        Some(RelayEvent::ExitSignal {
            signal: "TERM".into(),
            core_dumped: false,
            message: "signalled".into()
        })
    );

    // The sftp subsystem.
    let mut s = relay(&edge, &grant("web1", RelayAction::Session))
        .await
        .unwrap()
        .open_session()
        .await
        .unwrap();
    assert!(
        !s.request(RelayRequest::Subsystem("nope".into()))
            .await
            .unwrap()
    );
    assert!(
        s.request(RelayRequest::Subsystem("sftp".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        s.next_event().await,
        Some(RelayEvent::Data("sftp subsystem\n".into()))
    );

    // direct-tcpip with a direct-tcpip certificate; a session certificate
    // cannot open one, nor the reverse.
    let client = relay(&edge, &grant("web1", RelayAction::DirectTcpip))
        .await
        .unwrap();
    let mut fwd = client
        .open_direct_tcpip("127.0.0.1", 8080, "192.0.2.7", 50022)
        .await
        .unwrap();
    let mut greeting = [0u8; 28];
    fwd.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"forwarded to 127.0.0.1:8080\n");
    fwd.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    fwd.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    let client = relay(&edge, &grant("web1", RelayAction::Session))
        .await
        .unwrap();
    assert!(
        client
            .open_direct_tcpip("127.0.0.1", 22, "192.0.2.7", 1)
            .await
            .is_err()
    );
    let client = relay(&edge, &grant("web1", RelayAction::DirectTcpip))
        .await
        .unwrap();
    assert!(client.open_session().await.is_err());

    // A certificate minted for web1 used for web2: refused by the node.
    let minted = edge
        .ca
        .mint_user_certificate(
            &grant("web1", RelayAction::Session),
            now_secs(),
            Duration::from_secs(60),
        )
        .unwrap();
    let stolen = portcullis::fleet::MintedCertificate {
        user: "app@web2".into(),
        ..minted
    };
    let stream = edge.tunnels.open_stream("n1", None).await.unwrap();
    let check = NodeHostCheck {
        node: "n1".into(),
        ca: edge.ca.fingerprint(),
    };
    let err = RelayClient::connect(stream, &stolen, check, None)
        .await
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "node n1 refused the relay certificate");
    // Another CA's certificate: refused too.
    let rogue = EdgeCa::from_key(new_key().unwrap())
        .mint_user_certificate(
            &grant("web1", RelayAction::Session),
            now_secs(),
            Duration::from_secs(60),
        )
        .unwrap();
    let stream = edge.tunnels.open_stream("n1", None).await.unwrap();
    let check = NodeHostCheck {
        node: "n1".into(),
        ca: edge.ca.fingerprint(),
    };
    assert!(
        RelayClient::connect(stream, &rogue, check, None)
            .await
            .is_err()
    );
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused[0].contains("target app@web1 used as user app@web2"),
        "{refused:?}"
    );
    assert!(
        refused[1].starts_with("certificate signed by an untrusted CA"),
        "{refused:?}"
    );
    // The edge checks the node's host certificate too: n1 is not n2.
    let stream = edge.tunnels.open_stream("n1", None).await.unwrap();
    let check = NodeHostCheck {
        node: "n2".into(),
        ca: edge.ca.fingerprint(),
    };
    let minted = edge
        .ca
        .mint_user_certificate(
            &grant("web1", RelayAction::Session),
            now_secs(),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(matches!(
        RelayClient::connect(stream, &minted, check, None).await,
        Err(portcullis::fleet::relay::RelayError::Handshake { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_stall_its_tunnel() {
    let edge = TestEdge::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Node side: originator port 1 floods 8 MiB (more than a stream may
    // hold); port 2 echoes.
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flooded = written.clone();
    let acceptor: Arc<dyn RelayAcceptor> = Arc::new(
        move |mut stream: TunnelStream, origin: portcullis::fleet::tunnel::RelayOrigin| {
            let flooded = flooded.clone();
            tokio::spawn(async move {
                if origin.originator.ends_with(":1") {
                    let chunk = vec![b'x'; 64 * 1024];
                    for _ in 0..128 {
                        if stream.write_all(&chunk).await.is_err() {
                            return;
                        }
                        flooded.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
                    }
                    std::future::pending::<()>().await;
                } else {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            });
        },
    );
    let (_identity, _stop) = edge.join_node(dir.path(), "n1", acceptor).await;
    let mut stalled = edge
        .tunnels
        .open_stream("n1", Some("192.0.2.1:1".parse().unwrap()))
        .await
        .unwrap();
    // Nobody reads `stalled` while the node floods it.
    poll_until("the node to flood 3 MiB", Duration::from_secs(20), || {
        let n = written.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 3 * 1024 * 1024 }
    })
    .await;
    // Its neighbour on the same tunnel still opens and round-trips 2 MiB
    // byte-exact (with a stream that waited on its reader, the tunnel's
    // loop would be stuck and this would time out).
    let neighbour = async {
        let echo = edge
            .tunnels
            .open_stream("n1", Some("192.0.2.1:2".parse().unwrap()))
            .await
            .unwrap();
        let payload: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        let (mut r, mut w) = tokio::io::split(echo);
        let sent = payload.clone();
        let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
        let mut back = vec![0u8; payload.len()];
        r.read_exact(&mut back).await.unwrap();
        assert_eq!(back, payload);
        writer.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), neighbour)
        .await
        .expect("the neighbour stream stalled behind the flooded one");
    // The flooded stream overflowed: it fails, alone.
    let mut sink = Vec::new();
    let err = stalled.read_to_end(&mut sink).await.unwrap_err();
    assert_eq!(err.to_string(), "tunnel stream overflow");
    assert!(sink.len() <= portcullis::fleet::tunnel::STREAM_BUFFER_BYTES);
    assert!(edge.tunnels.is_connected("n1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_names_are_unique_across_the_fleet() {
    let edge = TestEdge::start().await;
    for node in ["n1", "n2"] {
        edge.token(node, Duration::from_secs(60)).await;
    }
    assert!(
        edge.store
            .push_inventory("n1", "0.1.0", &[pushed("web1")])
            .await
            .unwrap()
            .is_empty()
    );
    // n2 claims web1 through its heartbeat: refused, audited once, named.
    let state = tempfile::tempdir().unwrap();
    let config = portcullis::config::Config::parse(
        &format!(
            r#"
state_dir = "{}"
[oidc]
issuer = "https://idp.example.com"
client_id = "portcullis"
[inventory]
backend = "process"
[containers.web1]
pid_file = "/nonexistent/web1.pid"
[containers.web2]
pid_file = "/nonexistent/web2.pid"
labels = {{ env = "prod" }}
owner = "alice"
purpose = "shop front"
"#,
            state.path().display()
        ),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let inventory = portcullis::inventory::Inventory::new(&config);
    let mut reported = Default::default();
    for _ in 0..2 {
        let conflicts = portcullis::fleet::heartbeat::push_once(
            &edge.store,
            &edge.audit,
            &inventory,
            "n2",
            &mut reported,
        )
        .await
        .unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            (conflicts[0].name.as_str(), conflicts[0].owner.as_str()),
            ("web1", "n1")
        );
    }
    let claims: Vec<serde_json::Value> = edge
        .fleet_audit()
        .await
        .into_iter()
        .filter(|(_, d)| d.get("owner").is_some())
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        claims,
        [serde_json::json!({"container": "web1", "node": "n2", "owner": "n1"})]
    );
    type Pushed = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
    );
    let all: Vec<Pushed> = edge
        .store
        .fleet_containers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.name, c.node, c.state, c.labels, c.owner, c.purpose, c.backend,
            )
        })
        .collect();
    // Owner, purpose and backend cross the fleet with state and labels
    // (the edge decides and lists on them).
    assert_eq!(
        all,
        [
            (
                "web1".into(),
                "n1".into(),
                "RUNNING".into(),
                "{}".into(),
                None,
                None,
                "lxc".into()
            ),
            (
                "web2".into(),
                "n2".into(),
                "STOPPED".into(),
                r#"{"env":"prod"}"#.into(),
                Some("alice".into()),
                Some("shop front".into()),
                "process".into()
            ),
        ]
    );
    // n1 no longer lists web1: the name is free, and n2 gets it.
    edge.store.push_inventory("n1", "0.1.0", &[]).await.unwrap();
    assert!(
        portcullis::fleet::heartbeat::push_once(
            &edge.store,
            &edge.audit,
            &inventory,
            "n2",
            &mut reported
        )
        .await
        .unwrap()
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_listeners_within_a_second_and_resyncs_after_reconnect() {
    use portcullis::fleet::fanout::{self, Notice, NoticeListener};
    let edge = TestEdge::start().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut notices = NoticeListener::start(edge.url.clone(), shutdown.clone());
    let first = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.notice, Notice::Resync);
    let mut latencies = Vec::new();
    for i in 0..50 {
        let notice = Notice::Kill {
            session_id: format!("s{i}"),
            reason: "killed by an admin".into(),
        };
        fanout::notify(&edge.store, &notice).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), notices.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.notice, notice);
        latencies.push(got.latency.unwrap());
    }
    latencies.sort();
    let (p50, p99, max) = (latencies[25], latencies[49 * 99 / 100], latencies[49]);
    println!("fan-out latency over 50 notices: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(max < Duration::from_secs(1), "{latencies:?}");
    // The listener's connection is killed: it reconnects and says resync.
    sqlx_terminate_listeners(&edge.url).await;
    let again = tokio::time::timeout(Duration::from_secs(15), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.notice, Notice::Resync);
    let notice = Notice::NodeRemoved { node: "n9".into() };
    fanout::notify(&edge.store, &notice).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.notice, notice);
    shutdown.cancel();
}

/// Ends every backend LISTENing on this test's database (the fan-out
/// listener; other tests' gateways listen on their own databases).
async fn sqlx_terminate_listeners(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid() \
         AND datname = current_database()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(ended, [(true,)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_edge_needs_the_first_edges_ca_file() {
    let url = common::postgres::server().new_database();
    let store = portcullis::store::Store::open(&url).await.unwrap();
    let config = |dir: &std::path::Path| {
        portcullis::config::Config::parse(
            &format!(
                "state_dir = \"{}\"\n[database]\nurl = \"{url}\"\n\
                 [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"p\"\n",
                dir.display()
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = portcullis::fleet::roles::edge_ca(&config(a.path()), &store)
        .await
        .unwrap();
    let err = portcullis::fleet::roles::edge_ca(&config(b.path()), &store)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("was created by another edge; copy its key file to"),
        "{err}"
    );
    // A different key file: refused as a second CA.
    EdgeCa::load_or_create(&b.path().join("fleet/edge_ca"), true).unwrap();
    let err = portcullis::fleet::roles::edge_ca(&config(b.path()), &store)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("edge CA mismatch"), "{err}");
    // The first edge's file, copied: the same CA.
    std::fs::copy(
        a.path().join("fleet/edge_ca"),
        b.path().join("fleet/edge_ca"),
    )
    .unwrap();
    let second = portcullis::fleet::roles::edge_ca(&config(b.path()), &store)
        .await
        .unwrap();
    assert_eq!(first.fingerprint(), second.fingerprint());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_is_scraped() {
    let metrics = portcullis::metrics::Metrics::new("edge");
    metrics.login(true);
    metrics.login(false);
    metrics.login(true);
    metrics.decision(false);
    metrics.relay_bytes(false, 4096);
    metrics.tunnel_state("n1", "edge-a", true);
    metrics.session_started();
    metrics.attach_latency(Duration::from_millis(15));
    let listener = portcullis::metrics::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(portcullis::metrics::serve(
        metrics,
        listener,
        shutdown.clone(),
    ));
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for line in [
        "# TYPE portcullis_logins_total counter",
        "portcullis_logins_total{outcome=\"success\"} 2",
        "portcullis_logins_total{outcome=\"failure\"} 1",
        "portcullis_decisions_total{outcome=\"deny\"} 1",
        "portcullis_relay_bytes_total{direction=\"from_node\"} 4096",
        "portcullis_tunnel_up{node=\"n1\",edge=\"edge-a\"} 1",
        "portcullis_tunnel_connects_total{node=\"n1\",edge=\"edge-a\"} 1",
        "portcullis_sessions_live 1",
        "portcullis_attach_latency_seconds_bucket{le=\"0.025\"} 1",
        "portcullis_attach_latency_seconds_count 1",
        "portcullis_build_info{version=\"0.1.0\",role=\"edge\"} 1",
        "portcullis_upload_queue 0",
        "portcullis_spool_bytes 0",
        "portcullis_upload_failures_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let missing = reqwest::get(format!("http://{addr}/other")).await.unwrap();
    assert_eq!(missing.status(), 404);
    shutdown.cancel();
}

#[test]
fn edge_and_node_run_as_processes_join_list_scrape_and_remove() {
    use common::fleet::RoleProcess;
    use common::gateway::free_port;
    use common::wait_until;
    let url = common::postgres::server().new_database();
    let dir = tempfile::tempdir().unwrap();
    let (fleet, metrics) = (free_port(), free_port());
    let common_config = |name: &str| {
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\ngateway_id = \"{name}\"\n\
             [database]\nurl = \"{url}\"\n\
             [oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"portcullis\"\n",
            free_port(),
            dir.path().join(name).display()
        )
    };
    let edge = RoleProcess::start(
        dir.path(),
        "edge",
        &format!(
            "{}[fleet]\nlisten = \"127.0.0.1:{fleet}\"\nheartbeat = \"1s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            common_config("edge-a")
        ),
    );
    wait_until("the fleet listener", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", fleet)).is_ok()
    });
    let ca_key = dir.path().join("edge-a/fleet/edge_ca");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ca_key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let added = edge.cli(&["nodes", "add", "n1", "--ttl", "10m"]);
    let field = |name: &str| {
        added
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let (token, pin) = (field("join token:"), field("CA pin:"));
    assert!(token.starts_with("pcj_"), "{added}");
    let node = RoleProcess::start(
        dir.path(),
        "node",
        &format!(
            "{}[fleet]\nnode_name = \"n1\"\nedges = [\"127.0.0.1:{fleet}\"]\n\
             join_token = \"{token}\"\nca_pin = \"{pin}\"\nheartbeat = \"1s\"\n\
             [inventory]\nbackend = \"process\"\n\
             [containers.web1]\npid_file = \"/nonexistent/web1.pid\"\n",
            common_config("n1")
        ),
    );
    let listed = || -> serde_json::Value {
        serde_json::from_str(&edge.cli(&["nodes", "list", "--json"])).unwrap()
    };
    wait_until(
        "n1 joined, connected and reporting",
        Duration::from_secs(60),
        || {
            let l = listed();
            l[0]["state"] == "active"
                && l[0]["edges"] == serde_json::json!(["edge-a"])
                && l[0]["containers"] == 1
        },
    );
    let l = listed();
    assert_eq!(l[0]["name"], "n1");
    assert_eq!(l[0]["version"], "0.1.0");
    // A plain HTTP/1.0 GET (no curl on a fresh CI machine).
    let scrape = || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    };
    wait_until("the tunnel in the metrics", Duration::from_secs(20), || {
        scrape().contains("portcullis_tunnel_up{node=\"n1\",edge=\"edge-a\"} 1")
    });
    assert!(scrape().contains("portcullis_build_info{version=\"0.1.0\",role=\"edge\"} 1"));
    // Removal: the tunnel closes and the node's redials are refused.
    let removed = edge.cli(&["nodes", "remove", "n1"]);
    assert_eq!(
        removed,
        "node n1 removed: its certificate is refused from now on\n"
    );
    wait_until("the tunnel closed", Duration::from_secs(20), || {
        scrape().contains("portcullis_tunnel_up{node=\"n1\",edge=\"edge-a\"} 0")
    });
    wait_until(
        "the node told it is refused",
        Duration::from_secs(30),
        || node.log().contains("the edge refused the node certificate"),
    );
    assert_eq!(listed()[0]["state"], "removed");
    assert_eq!(listed()[0]["edges"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_its_certificate_over_its_tunnel() {
    // Certificates valid 30 s before to 20 s after minting: past half
    // their life at once, so the node renews as soon as its tunnel is up.
    let edge = TestEdge::start_with_node_ttl(Duration::from_secs(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let token = edge.token("n1", Duration::from_secs(600)).await;
    let identity = NodeIdentity::join(dir.path(), "n1", &edge.addr, &token, edge.ca.fingerprint())
        .await
        .unwrap();
    let first = identity.certificate().unwrap().serial();
    let identity = Arc::new(identity);
    let settings = portcullis::fleet::tunnel::node::TunnelSettings {
        identity: identity.clone(),
        keepalive: Duration::from_secs(2),
        reconnect_max: Duration::from_millis(500),
        acceptor: node_server_acceptor(Arc::new(OnceLock::new()), Arc::new(Mutex::new(Vec::new()))),
        metrics: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    portcullis::fleet::tunnel::TunnelClient::start(
        settings,
        std::slice::from_ref(&edge.addr),
        stop.clone(),
    );
    poll_until("a renewed certificate", Duration::from_secs(20), || {
        let now = identity.certificate().unwrap().serial();
        async move { now != first }
    })
    .await;
    stop.cancel();
    // Renewed on disk too, for the same key, signed by the same CA.
    let reloaded = NodeIdentity::load(dir.path(), "n1").unwrap().unwrap();
    let cert = reloaded.certificate().unwrap();
    assert_ne!(cert.serial(), first);
    assert_eq!(cert.valid_principals(), ["n1"]);
    portcullis::fleet::verify_host_certificate(
        &cert,
        &[edge.ca.fingerprint()],
        Some("n1"),
        now_secs(),
    )
    .unwrap();
    let row = edge.store.fleet_node("n1").await.unwrap().unwrap();
    assert_eq!(row.cert_valid_before, Some(cert.valid_before() as i64));
}

/// A change reaches the fleet within about a second, not at the next
/// heartbeat (here a minute away): a container whose init appears is
/// pushed as running, and its pid file removed, as stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_pushed_before_the_next_heartbeat() {
    let edge = TestEdge::start().await;
    edge.token("n1", Duration::from_secs(60)).await;
    let container = common::container::TestContainer::start("push");
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("init.pid");
    let config = portcullis::config::Config::parse(
        &format!(
            "state_dir = \"{}\"\n[oidc]\nissuer = \"https://idp.example.com\"\n\
             client_id = \"p\"\n[inventory]\nbackend = \"process\"\n\
             [containers.pushed1]\npid_file = \"{}\"\n",
            dir.path().display(),
            pid_file.display()
        ),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(portcullis::fleet::heartbeat::run(
        edge.store.clone(),
        edge.audit.clone(),
        portcullis::inventory::Inventory::new(&config),
        "n1".into(),
        Duration::from_secs(60),
        shutdown.clone(),
    ));
    let state = |store: portcullis::store::Store| async move {
        store
            .fleet_containers()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name == "pushed1")
            .map(|c| c.state)
    };
    poll_until("the first push", Duration::from_secs(10), || {
        let s = state(edge.store.clone());
        async move { s.await.as_deref() == Some("STOPPED") }
    })
    .await;
    std::fs::write(&pid_file, container.init_pid().to_string()).unwrap();
    let started = std::time::Instant::now();
    poll_until("RUNNING pushed", Duration::from_secs(10), || {
        let s = state(edge.store.clone());
        async move { s.await.as_deref() == Some("RUNNING") }
    })
    .await;
    let up = started.elapsed();
    std::fs::remove_file(&pid_file).unwrap();
    let started = std::time::Instant::now();
    poll_until("STOPPED pushed", Duration::from_secs(10), || {
        let s = state(edge.store.clone());
        async move { s.await.as_deref() == Some("STOPPED") }
    })
    .await;
    let down = started.elapsed();
    // Each within the polls' 10 s, far from the 60 s heartbeat.
    eprintln!("pushed running after {up:?}, stopped after {down:?}");
    shutdown.cancel();
}
