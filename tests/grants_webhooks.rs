//! Webhook notifications of the access-request workflow (issue 7, item 5)
//! end to end: the real IdP, a real LXC container, the real gateway and
//! OpenSSH client, and a small HTTP receiver in the test that checks the
//! HMAC and can play dead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::gateway::{SshResult, TestContainer, TestGateway, run_ssh};
use common::idp::TestIdp;
use serde_json::Value;

const SECRET: &str = "webhook-test-secret";

struct Fixture {
    idp: TestIdp,
    container: TestContainer,
    alice: String,
    approver: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("hooks");
            let rt = tokio::runtime::Runtime::new().unwrap();
            let alice = rt.block_on(idp.device_flow_id_token("alice"));
            let approver = rt.block_on(idp.device_flow_id_token("approver"));
            Fixture {
                idp,
                container,
                alice,
                approver,
            }
        })
        .join()
        .unwrap()
    })
}

/// A tiny HTTP/1.1 receiver: records each body whose signature header it
/// got, answers 200, or 503 while `down`.
struct Receiver {
    url: String,
    down: Arc<AtomicBool>,
    /// `(signature header, body)` of each request answered 200.
    got: Arc<Mutex<Vec<(String, String)>>>,
    /// Requests answered 503.
    refused: Arc<Mutex<usize>>,
}

impl Receiver {
    fn start(down: bool) -> Receiver {
        Receiver::start_with(down, Duration::ZERO)
    }

    /// A receiver that answers each request `delay` after reading it (each
    /// connection on its own thread, so slow answers never queue).
    fn start_with(down: bool, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let down = Arc::new(AtomicBool::new(down));
        let got = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let (d, g, r) = (down.clone(), got.clone(), refused.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (d, g, r) = (d.clone(), g.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut length = 0usize;
                    let mut signature = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if lower.starts_with("x-portcullis-signature:") {
                            signature = line.split_once(':').unwrap().1.trim().to_string();
                        }
                    }
                    let mut body = vec![0u8; length];
                    let _ = reader.read_exact(&mut body);
                    std::thread::sleep(delay);
                    let status = if d.load(Ordering::SeqCst) {
                        *r.lock().unwrap() += 1;
                        "503 Service Unavailable"
                    } else {
                        g.lock()
                            .unwrap()
                            .push((signature, String::from_utf8(body).unwrap()));
                        "200 OK"
                    };
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        Receiver {
            url,
            down,
            got,
            refused,
        }
    }

    /// The bodies received so far, each checked against its HMAC.
    fn events(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(signature, body)| {
                let mac =
                    portcullis::grants::notify::hmac_sha256(SECRET.as_bytes(), body.as_bytes());
                assert_eq!(signature, &format!("sha256={}", hex::encode(mac)), "{body}");
                serde_json::from_str(body).unwrap()
            })
            .collect()
    }

    /// Waits until `count` events of kind `event` arrived.
    fn wait_for(&self, event: &str, count: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let found: Vec<Value> = self
                .events()
                .into_iter()
                .filter(|e| e["event"] == event)
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{count} {event} events not received: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn gateway(receiver: &Receiver) -> TestGateway {
    let f = fixture();
    TestGateway::start(
        &f.idp.issuer,
        &format!(
            "[containers.{}]\nlabels = {{ env = \"dev\" }}\n\
             [grants]\nbreak_glass_group = \"developers\"\n\
             webhooks = [\"{}\"]\nwebhook_secret = \"{SECRET}\"\nwebhook_backoff_max = \"2s\"\n",
            f.container.name, receiver.url
        ),
    )
}

fn broker(gw: &TestGateway, token: &str, line: &str) -> SshResult {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh("portcullis", token, dir.path());
    cmd.arg(line);
    run_ssh(&mut cmd, b"")
}

fn request(gw: &TestGateway, duration: &str, extra: &str) -> String {
    let f = fixture();
    let r = broker(
        gw,
        &f.alice,
        &format!(
            "request {} --login root --for {duration} --reason \"OPS-5 hooks\" {extra} --json",
            f.container.name
        ),
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn ok(r: SshResult, gw: &TestGateway) {
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
}

#[test]
fn every_workflow_event_reaches_the_webhook_signed() {
    let f = fixture();
    let receiver = Receiver::start(false);
    let gw = gateway(&receiver);
    let revoked = request(&gw, "10m", "");
    ok(broker(&gw, &f.approver, &format!("approve {revoked}")), &gw);
    ok(
        broker(&gw, &f.approver, &format!("revoke {revoked} --reason done")),
        &gw,
    );
    let denied = request(&gw, "10m", "");
    ok(
        broker(
            &gw,
            &f.approver,
            &format!("deny {denied} --reason \"not now\""),
        ),
        &gw,
    );
    let expiring = request(&gw, "1s", "");
    ok(
        broker(&gw, &f.approver, &format!("approve {expiring}")),
        &gw,
    );
    let glass = request(&gw, "5m", "--break-glass");

    let created = receiver.wait_for("request_created", 3);
    let ids: Vec<&str> = created.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for id in [&revoked, &denied, &expiring] {
        assert!(ids.contains(&id.as_str()), "{ids:?}");
    }
    let approved = receiver.wait_for("approved", 2);
    assert_eq!(approved.len(), 2);
    for e in &approved {
        // One approval starts a dev grant: the event says so.
        assert_eq!(e["state"], "active", "{e}");
        assert_eq!(e["approvers"], serde_json::json!(["approver"]), "{e}");
    }
    assert_eq!(receiver.wait_for("revoked", 1)[0]["id"], revoked.as_str());
    assert_eq!(receiver.wait_for("denied", 1)[0]["id"], denied.as_str());
    assert_eq!(receiver.wait_for("expired", 1)[0]["id"], expiring.as_str());
    let bg = receiver.wait_for("break_glass", 1);
    assert_eq!(bg[0]["id"], glass.as_str());
    assert_eq!(bg[0]["break_glass"], true);
    for e in receiver.events() {
        let text = e["text"].as_str().unwrap();
        assert!(text.contains(e["id"].as_str().unwrap()), "{e}");
    }
}

#[test]
fn a_dead_webhook_loses_nothing_once_it_comes_back() {
    let f = fixture();
    let receiver = Receiver::start(true);
    let gw = gateway(&receiver);
    let started = Instant::now();
    let id = request(&gw, "10m", "");
    ok(broker(&gw, &f.approver, &format!("approve {id}")), &gw);
    // The steps did not wait for the webhook.
    assert!(started.elapsed() < Duration::from_secs(10));
    let waited = Instant::now();
    while *receiver.refused.lock().unwrap() < 3 {
        assert!(waited.elapsed() < Duration::from_secs(20), "no retries");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(receiver.events().is_empty());
    receiver.down.store(false, Ordering::SeqCst);
    assert_eq!(
        receiver.wait_for("request_created", 1)[0]["id"],
        id.as_str()
    );
    assert_eq!(receiver.wait_for("approved", 1)[0]["id"], id.as_str());
    // Delivered once each.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.events().len(), 2, "{:?}", receiver.events());
}

#[test]
fn two_gateways_on_one_database_deliver_each_event_once() {
    let f = fixture();
    // A slow receiver (0.8 s per answer), so both gateways see the same
    // rows due while one of them is still posting.
    let receiver = Receiver::start_with(false, Duration::from_millis(800));
    let shared_dir = tempfile::tempdir().unwrap();
    let url = match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
        Ok("postgres") => common::postgres::server().new_database(),
        _ => format!("sqlite://{}/shared.db", shared_dir.path().display()),
    };
    let config = |id: &str| {
        format!(
            "gateway_id = \"{id}\"\n[containers.{}]\nlabels = {{ env = \"dev\" }}\n\
             [grants]\nwebhooks = [\"{}\"]\nwebhook_secret = \"{SECRET}\"\n\
             webhook_backoff_max = \"2s\"\n",
            f.container.name, receiver.url
        )
    };
    let a = TestGateway::start_with_database(&f.idp.issuer, &config("gw-a"), Some(&url));
    let b = TestGateway::start_with_database(&f.idp.issuer, &config("gw-b"), Some(&url));
    let mut ids = Vec::new();
    for i in 0..3 {
        let (asked, approving) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let id = request(asked, "10m", "");
        ok(
            broker(approving, &f.approver, &format!("approve {id}")),
            approving,
        );
        ids.push(id);
    }
    let created = receiver.wait_for("request_created", 3);
    let approved = receiver.wait_for("approved", 3);
    // Long enough for a second delivery by the other gateway to arrive.
    std::thread::sleep(Duration::from_secs(4));
    let events = receiver.events();
    let mut bodies: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    bodies.sort();
    let total = bodies.len();
    bodies.dedup();
    assert_eq!(
        total,
        bodies.len(),
        "an event was delivered twice: {events:?}"
    );
    assert_eq!(total, 6, "{events:?}\n{}\n{}", a.log(), b.log());
    for id in &ids {
        for (kind, got) in [("request_created", &created), ("approved", &approved)] {
            let n = got.iter().filter(|e| e["id"] == id.as_str()).count();
            assert_eq!(n, 1, "{kind} {id}: {events:?}");
        }
    }
}
