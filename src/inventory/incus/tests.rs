//! The Incus/LXD backend against answers recorded from a real LXD 5.0.2
//! daemon (`tests/data/lxd-5.0.2/`), served by a small stand-in on a Unix
//! socket. The stand-in replays those bytes, and is also the hostile daemon
//! for the limits (too large, too slow). `tests/inventory_lxd.rs` runs the
//! same code against a real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;

fn recorded(file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/lxd-5.0.2")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the stand-in does for one path.
#[derive(Clone)]
enum Reply {
    /// Status and body, with a `Content-Length`.
    Body(u16, Vec<u8>),
    /// `n` bytes of chunked body, no length announced.
    Endless(usize),
    /// Never answers.
    Silent,
}

/// Serves `replies` by request path on a socket in a fresh directory;
/// returns the directory (kept alive by the caller) and the socket path.
fn stand_in(replies: HashMap<String, Reply>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("unix.socket");
    let listener = UnixListener::bind(&socket).unwrap();
    let replies = Arc::new(replies);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let replies = replies.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let reply = replies
                    .get(&path)
                    .cloned()
                    .unwrap_or_else(|| Reply::Body(404, recorded("nope.json")));
                match reply {
                    Reply::Body(status, body) => {
                        let text = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(text.as_bytes()).await;
                        let _ = stream.write_all(&body).await;
                    }
                    Reply::Endless(n) => {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                  Transfer-Encoding: chunked\r\n\r\n",
                            )
                            .await;
                        let chunk = vec![b' '; 64 * 1024];
                        let mut sent = 0;
                        while sent < n {
                            let head = format!("{:x}\r\n", chunk.len());
                            if stream.write_all(head.as_bytes()).await.is_err()
                                || stream.write_all(&chunk).await.is_err()
                                || stream.write_all(b"\r\n").await.is_err()
                            {
                                return;
                            }
                            sent += chunk.len();
                        }
                        let _ = stream.write_all(b"0\r\n\r\n").await;
                    }
                    Reply::Silent => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    (dir, socket)
}

fn replies(pairs: &[(&str, Reply)]) -> HashMap<String, Reply> {
    pairs
        .iter()
        .map(|(p, r)| ((*p).to_string(), r.clone()))
        .collect()
}

#[test]
fn keys_of_the_recorded_instances() {
    let list: Vec<Instance> = parse(
        "/1.0/instances?recursion=2",
        200,
        &recorded("instances-recursion2.json"),
    )
    .unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["c1", "c2"]);
    let c1 = &list[0];
    assert_eq!(c1.kind, "container");
    assert_eq!(
        c1.keys(),
        Keys {
            owner: Some("alice".into()),
            purpose: None,
            labels: [("env".to_string(), "dev".to_string())].into(),
        }
    );
    let state = c1.state.clone().unwrap();
    assert_eq!(
        container_state("c1", &state).unwrap(),
        ContainerState::Running { init_pid: 9031 }
    );
    let c2 = &list[1];
    assert_eq!(
        c2.keys(),
        Keys {
            owner: None,
            purpose: Some("build cache".into()),
            labels: [("env".to_string(), "prod".to_string())].into(),
        }
    );
    assert_eq!(
        container_state("c2", &c2.state.clone().unwrap()).unwrap(),
        ContainerState::NotRunning("STOPPED".into())
    );
}

#[test]
fn invalid_keys_and_answers() {
    let instance: Instance = serde_json::from_value(serde_json::json!({
        "name": "x", "type": "container",
        "config": {
            "user.portcullis.owner": "bob\nroot",
            "user.portcullis.purpose": "",
            "user.portcullis.label.bad key": "v",
            "user.portcullis.label.ok": "v",
            "user.portcullis.label.long": "v".repeat(1025),
            "user.portcullis.label.num": 3,
        }
    }))
    .unwrap();
    assert_eq!(
        instance.keys(),
        Keys {
            owner: None,
            purpose: None,
            labels: [("ok".to_string(), "v".to_string())].into(),
        }
    );
    let running_without_pid = InstanceState {
        status: "Running".into(),
        pid: 0,
    };
    assert!(matches!(
        container_state("x", &running_without_pid),
        Err(InventoryError::DaemonAnswer { .. })
    ));
    let err = parse::<Instance>("/1.0/instances/nope", 404, &recorded("nope.json")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the Incus/LXD daemon answered /1.0/instances/nope with error 404: Instance not found"
    );
    let err = parse::<Instance>("/p", 200, b"<html>").unwrap_err();
    assert!(err.to_string().contains("not the daemon's JSON"), "{err}");
}

#[tokio::test]
async fn find_and_list_over_the_socket() {
    let (_dir, socket) = stand_in(replies(&[
        ("/1.0/instances/c1", Reply::Body(200, recorded("c1.json"))),
        (
            "/1.0/instances/c1/state",
            Reply::Body(200, recorded("c1-state.json")),
        ),
        ("/1.0/instances/c2", Reply::Body(200, recorded("c2.json"))),
        (
            "/1.0/instances/c2/state",
            Reply::Body(200, recorded("c2-state.json")),
        ),
        (
            "/1.0/instances?recursion=2",
            Reply::Body(200, recorded("instances-recursion2.json")),
        ),
    ]));
    let inv = IncusInventory::at(&socket, Duration::from_secs(5));
    let c2 = inv.find("c2").await.unwrap();
    assert_eq!(c2.state, ContainerState::NotRunning("STOPPED".into()));
    assert_eq!(c2.backend, Backend::Incus);
    assert_eq!(c2.purpose.as_deref(), Some("build cache"));
    assert_eq!(c2.owner, None);
    assert_eq!(c2.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(c2.init_start_time, None);
    assert_eq!(c2.cgroup, "/lxc.payload.c2");
    assert!(matches!(
        inv.find("nope").await,
        Err(InventoryError::NotFound(n)) if n == "nope"
    ));
    assert!(matches!(
        inv.find("../1.0").await,
        Err(InventoryError::InvalidName)
    ));
    // c1 is Running, with no liblxc monitor here: its PID comes from the
    // state endpoint, and the recorded PID is no live init.
    let err = inv.find("c1").await.unwrap_err();
    assert!(
        matches!(&err, InventoryError::NotAContainer(m) if m.contains("named PID 9031 as the init of c1")),
        "{err}"
    );
    // c1's recorded init PID is not a live init any more: listed, but as
    // UNKNOWN (its PID fails the init checks), with its keys.
    let list = inv.list().await.unwrap();
    let summary: Vec<(String, ContainerState, Option<String>)> = list
        .iter()
        .map(|c| (c.name.clone(), c.state.clone(), c.owner.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "c1".to_string(),
                ContainerState::NotRunning("UNKNOWN".into()),
                Some("alice".to_string())
            ),
            (
                "c2".to_string(),
                ContainerState::NotRunning("STOPPED".into()),
                None
            ),
        ]
    );
}

#[tokio::test]
async fn virtual_machines_are_refused() {
    // The recorded c2, with its type edited to what a VM instance says.
    let mut vm: serde_json::Value = serde_json::from_slice(&recorded("c2.json")).unwrap();
    vm["metadata"]["type"] = "virtual-machine".into();
    let (_dir, socket) = stand_in(replies(&[(
        "/1.0/instances/c2",
        Reply::Body(200, serde_json::to_vec(&vm).unwrap()),
    )]));
    let inv = IncusInventory::at(&socket, Duration::from_secs(5));
    let err = inv.find("c2").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "c2 is a virtual-machine instance, not a container"
    );
}

#[tokio::test]
async fn answers_are_bounded_in_size_and_time() {
    let (_dir, socket) = stand_in(replies(&[
        (
            "/1.0/instances/big",
            Reply::Body(200, vec![b' '; MAX_INSTANCE_BYTES + 1]),
        ),
        (
            "/1.0/instances/endless",
            Reply::Endless(MAX_INSTANCE_BYTES * 2),
        ),
        ("/1.0/instances/slow", Reply::Silent),
    ]));
    let inv = IncusInventory::at(&socket, Duration::from_millis(500));
    for name in ["big", "endless"] {
        let err = inv.find(name).await.unwrap_err();
        assert!(
            matches!(&err, InventoryError::DaemonRequest { reason, .. }
                if reason == &format!("response over {MAX_INSTANCE_BYTES} bytes")),
            "{name}: {err}"
        );
    }
    let started = std::time::Instant::now();
    let err = inv.find("slow").await.unwrap_err();
    assert!(
        matches!(&err, InventoryError::DaemonRequest { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    // No daemon at all.
    let inv = IncusInventory::at(&_dir.path().join("missing.socket"), Duration::from_secs(1));
    let err = inv.find("c2").await.unwrap_err();
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
}

/// The lifecycle against the stand-in: answers shaped as LXD 5.0's (an
/// async operation, then its wait), not recorded: the daemon's error is
/// what the user gets, a snapshot that does not exist is refused before
/// anything is sent, and an error envelope passes its text on.
#[tokio::test]
async fn lifecycle_steps_give_the_daemons_own_error() {
    use crate::inventory::lifecycle::{Lifecycle, LifecycleError};
    let id = "6916c8a6-9b7d-4abd-90b3-0123456789ab";
    let op = format!(
        r#"{{"type":"async","status":"Operation created","status_code":100,"operation":"/1.0/operations/{id}","error_code":0,"error":"","metadata":{{"id":"{id}","class":"task","status":"Running","status_code":103,"err":""}}}}"#
    );
    let failed = format!(
        r#"{{"type":"sync","status":"Success","status_code":200,"error_code":0,"error":"","metadata":{{"id":"{id}","class":"task","status":"Failure","status_code":400,"err":"Failed to run: forkstart: exit status 1"}}}}"#
    );
    let snaps = r#"{"type":"sync","status":"Success","status_code":200,"error_code":0,"error":"","metadata":[{"name":"snap0","created_at":"2026-12-07T18:00:00Z","stateful":false}]}"#;
    let busy = r#"{"type":"error","status":"","status_code":0,"error_code":400,"error":"The instance is already stopped","metadata":null}"#;
    let (_dir, socket) = stand_in(replies(&[
        (
            "/1.0/instances/c1/state",
            Reply::Body(202, op.clone().into_bytes()),
        ),
        (
            &format!("/1.0/operations/{id}/wait?timeout=115"),
            Reply::Body(200, failed.into_bytes()),
        ),
        (
            "/1.0/instances/c1/snapshots?recursion=1",
            Reply::Body(200, snaps.as_bytes().to_vec()),
        ),
        (
            "/1.0/instances/c2/state",
            Reply::Body(400, busy.as_bytes().to_vec()),
        ),
    ]));
    let incus = IncusInventory::at(&socket, Duration::from_secs(5));
    let c1 = Container::new(
        "c1",
        ContainerState::NotRunning("STOPPED".into()),
        "/lxc.payload.c1".into(),
        Backend::Incus,
    );
    let e = incus.start(&c1).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Incus/LXD: Failed to run: forkstart: exit status 1"
    );
    assert_eq!(
        incus.snapshots(&c1).await.unwrap(),
        vec![crate::inventory::Snapshot {
            name: "snap0".into(),
            created: "2026-12-07T18:00:00Z".into()
        }]
    );
    assert!(matches!(
        incus.restore(&c1, "snap7").await,
        Err(LifecycleError::State(m)) if m == "c1 has no snapshot snap7"
    ));
    let c2 = Container::new(
        "c2",
        ContainerState::Running { init_pid: 42 },
        "/lxc.payload.c2".into(),
        Backend::Incus,
    );
    assert_eq!(
        incus.stop(&c2).await.unwrap_err().to_string(),
        "Incus/LXD: error 400: The instance is already stopped"
    );
    // Refused before the daemon is asked.
    assert_eq!(
        incus.start(&c2).await.unwrap_err().to_string(),
        "c2 is already running"
    );
}
