//! Issue 5, port forwarding end to end with real parts only: the real
//! OpenSSH `ssh -L`/`-R` through the real gateway to a busybox httpd on a
//! real LXC container's own loopback (the container has its own network
//! namespace, `lxc.net.0.type = empty`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{TestContainer, TestGateway, free_port, keygen, run, run_ssh};
use common::idp::TestIdp;
use serde_json::Value;

struct Fixture {
    _idp: TestIdp,
    container: TestContainer,
    gateway: TestGateway,
    /// Keys bound (by one token login each) to admin and alice.
    admin_key: PathBuf,
    alice_key: PathBuf,
    _keys: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("fwd");
            let gateway = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[containers.{}]\nlabels = {{ env = \"dev\" }}\n[forwarding]\nmax_forwards = 2\nmax_session_channels = 2\n",
                    container.name
                ),
            );
            let rt = tokio::runtime::Runtime::new().unwrap();
            let admin_token = rt.block_on(idp.device_flow_id_token("admin"));
            let alice_token = rt.block_on(idp.device_flow_id_token("alice"));
            let keys = tempfile::tempdir().unwrap();
            let bind = |name: &str, token: &str| {
                let key = keys.path().join(name);
                keygen(&key);
                let dir = tempfile::tempdir().unwrap();
                let user = format!("root@{}", container.name);
                let mut cmd = gateway.ssh_with_key(&user, &key, token, dir.path());
                cmd.arg("true");
                let _ = run_ssh(&mut cmd, b"");
                key
            };
            Fixture {
                admin_key: bind("admin", &admin_token),
                alice_key: bind("alice", &alice_token),
                _idp: idp,
                container,
                gateway,
                _keys: keys,
            }
        })
        .join()
        .unwrap()
    })
}

/// OpenSSH in batch mode with only `key` (bound by the fixture).
fn client(user: &str, key: &Path) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-p"])
        .arg(fixture().gateway.port.to_string())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=20",
            "-i",
        ])
        .arg(key)
        .arg("-o")
        .arg(format!("User={user}"))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY");
    cmd
}

fn app() -> String {
    format!("app@{}", fixture().container.name)
}

fn detail(e: &Value) -> Value {
    match &e["detail"] {
        Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts busybox httpd on the container's loopback (test setup, with
/// the runtime's own tool) and returns its port.
fn container_httpd() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let f = fixture();
        let www = f.container.rootfs.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "hello from inside the container\n").unwrap();
        let port = 18_000 + (std::process::id() % 1000) as u16;
        let attach = |args: &[&str]| {
            Command::new("lxc-attach")
                .args(["-n", &f.container.name, "--", "/bin/busybox"])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        attach(&["ip", "link", "set", "lo", "up"]);
        run(Command::new("lxc-attach").args([
            "-n",
            &f.container.name,
            "--",
            "/bin/busybox",
            "httpd",
            "-p",
            &format!("127.0.0.1:{port}"),
            "-h",
            "/www",
        ]));
        let start = Instant::now();
        let target = format!("{port}");
        while !attach(&["nc", "-w", "1", "127.0.0.1", &target])
            .status
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "httpd did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        port
    })
}

/// `ssh -N -L local:127.0.0.1:remote` in the background.
fn forward(user: &str, key: &Path, remote: u16) -> (std::process::Child, u16) {
    let local = free_port();
    let mut cmd = client(user, key);
    cmd.args(["-N", "-L", &format!("127.0.0.1:{local}:127.0.0.1:{remote}")])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let start = Instant::now();
    // Poll the listening sockets (a probe connection would be forwarded).
    while !listening(local) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ssh -L did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, local)
}

/// True when something listens on 127.0.0.1:`port` (from /proc/net/tcp).
fn listening(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1] == needle && cols[3] == "0A"
        })
}

fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn local_forward_reaches_the_container_loopback_when_allowed() {
    let f = fixture();
    let remote = container_httpd();
    // Nothing listens there on the host: the container's loopback is its own.
    assert!(std::net::TcpStream::connect(("127.0.0.1", remote)).is_err());

    let (mut child, local) = forward(&app(), &f.admin_key, remote);
    let body = http_get(local);
    let _ = child.kill();
    let _ = child.wait();
    assert!(body.contains("hello from inside the container"), "{body}");
    let closed = wait_for("forward_closed", || {
        f.gateway.audit_events().into_iter().find(|e| {
            e["kind"] == "forward"
                && e["principal"] == "admin"
                && detail(e)["destination"] == format!("127.0.0.1:{remote}")
                && detail(e)["bytes_from_destination"].as_i64().unwrap_or(0) > 0
        })
    });
    let d = detail(&closed);
    assert!(d["bytes_from_destination"].as_i64().unwrap() > 0, "{d}");
    assert!(d["bytes_to_destination"].as_i64().unwrap() > 0, "{d}");
}

#[test]
fn local_forward_is_refused_without_policy() {
    let f = fixture();
    let remote = container_httpd();

    let (mut child, local) = forward(&app(), &f.alice_key, remote);
    let body = http_get(local);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!body.contains("hello"), "{body}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let denied = wait_for("port_forward denial", || {
        f.gateway.audit_events().into_iter().find(|e| {
            e["kind"] == "decision"
                && e["outcome"] == "deny"
                && detail(e)["action"] == "port_forward"
        })
    });
    assert_eq!(detail(&denied)["login"], "app", "{stderr}");
}

#[test]
fn remote_forwarding_is_refused() {
    let f = fixture();

    let mut cmd = client(&app(), &f.admin_key);
    cmd.args([
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:22",
    ])
    .arg("127.0.0.1")
    .arg("true");
    let r = run_ssh(&mut cmd, b"");
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("forwarding failed"), "{}", r.stderr);
}

#[test]
fn forwarded_connections_past_the_cap_are_refused() {
    let f = fixture();
    let remote = container_httpd();
    let (mut child, local) = forward(&app(), &f.admin_key, remote);
    // The fixture allows 2 at once; hold two open (httpd waits for a request).
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", local)).unwrap())
        .collect();
    let originators: Vec<String> = held
        .iter()
        .map(|s| s.local_addr().unwrap().to_string())
        .collect();
    wait_for("two forwards open", || {
        let n = f
            .gateway
            .audit_events()
            .iter()
            .filter(|e| {
                e["kind"] == "forward"
                    && e["outcome"] == "success"
                    && originators
                        .iter()
                        .any(|o| detail(e)["originator"] == o.as_str())
            })
            .count();
        (n >= 2).then_some(())
    });
    let body = http_get(local);
    assert!(!body.contains("hello"), "third forward served: {body}");
    let refused = wait_for("cap refusal", || {
        f.gateway
            .audit_events()
            .into_iter()
            .find(|e| e["kind"] == "channel" && detail(e)["kind"] == "direct-tcpip")
    });
    assert!(
        detail(&refused)["reason"]
            .as_str()
            .unwrap()
            .contains("more than 2")
    );
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn session_channels_past_the_cap_are_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mux");
    // One connection (a ControlMaster), several session channels on it.
    let mut master = client(&app(), &f.admin_key);
    master
        .args(["-o", "ControlMaster=yes", "-o"])
        .arg(format!("ControlPath={}", sock.display()))
        .args(["-N", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut master = master.spawn().unwrap();
    wait_for("control socket", || sock.exists().then_some(()));
    let session = |cmd: &str| {
        let mut c = client(&app(), &f.admin_key);
        c.args(["-o", "ControlMaster=no", "-o"])
            .arg(format!("ControlPath={}", sock.display()))
            .args(["127.0.0.1", cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let held: Vec<std::process::Child> = (0..2)
        .map(|_| session("sleep 8").spawn().unwrap())
        .collect();
    // Count session rows, not processes: one session's `sh -c "sleep 8"`
    // and its `sleep 8` both match "sleep 8", so two processes may still be
    // a single open channel.
    wait_for("two sessions running", || {
        let n = f
            .gateway
            .sessions()
            .iter()
            .filter(|s| s["command"] == "sleep 8" && s["status"] == "running")
            .count();
        (n == 2).then_some(())
    });
    let third = session("echo third").output().unwrap();
    let stderr = String::from_utf8_lossy(&third.stderr);
    // (OpenSSH then falls back to a connection of its own.)
    assert!(stderr.contains("Session open refused by peer"), "{stderr}");
    let refused = wait_for("cap refusal", || {
        f.gateway
            .audit_events()
            .into_iter()
            .find(|e| e["kind"] == "channel" && detail(e)["kind"] == "session")
    });
    assert!(
        detail(&refused)["reason"]
            .as_str()
            .unwrap()
            .contains("more than 2")
    );
    for mut h in held {
        let _ = h.kill();
        let _ = h.wait();
    }
    let _ = master.kill();
    let _ = master.wait();
}

/// Starts a busybox `nc` echo server (`-e cat`) on the container's own
/// network namespace (test setup, with the runtime's own tool) and
/// returns its port.
fn container_echo() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let f = fixture();
        container_httpd(); // brings the container's loopback up
        let port = 19_000 + (std::process::id() % 1000) as u16;
        run(Command::new("lxc-attach").args([
            "-n",
            &f.container.name,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            &format!("/bin/busybox nc -ll -p {port} -e /bin/busybox cat >/dev/null 2>&1 &"),
        ]));
        let start = Instant::now();
        let busy = |args: &[&str]| {
            Command::new("lxc-attach")
                .args(["-n", &f.container.name, "--", "/bin/busybox"])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        while !busy(&["sh", "-c", &format!("netstat -ltn | grep -q ':{port} '")])
            .status
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "echo server did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        port
    })
}

/// Regression (session 1): a forward ended by `sessions kill` recorded 0
/// bytes each way, because the totals were only known when the copy
/// finished by itself.
#[test]
fn a_killed_forward_records_the_bytes_it_carried() {
    let f = fixture();
    let echo = container_echo();
    let (mut child, local) = forward(&app(), &f.admin_key, echo);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, sent);
    let originator = s.local_addr().unwrap().to_string();
    let opened = wait_for("forward opened", || {
        f.gateway.audit_events().into_iter().find(|e| {
            e["kind"] == "forward"
                && e["outcome"] == "success"
                && detail(e)["originator"] == originator.as_str()
        })
    });
    let id = opened["session_id"].as_str().unwrap().to_string();
    let out = f.gateway.cli(&[
        "sessions",
        "kill",
        &id,
        "--reason",
        "forward kill test",
        "--admin",
        "ops-admin",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = wait_for("forward closed", || {
        f.gateway.audit_events().into_iter().find(|e| {
            e["kind"] == "forward"
                && e["session_id"] == id.as_str()
                && detail(e).get("bytes_to_destination").is_some()
        })
    });
    let d = detail(&closed);
    assert_eq!(d["destination"], format!("127.0.0.1:{echo}"), "{d}");
    assert_eq!(d["bytes_to_destination"], 3000, "{d}");
    assert_eq!(d["bytes_from_destination"], 3000, "{d}");
    assert_eq!(d["error"], "forward kill test", "{d}");
    drop(s);
    let _ = child.kill();
    let _ = child.wait();
}

/// Issue 13 point 4, end to end (the attach-level test is in
/// tests/attach_isolation.rs): `ssh -L` as `app@container` is connected
/// from inside the container as `app` (uid 1000), so the container's own
/// egress rules for that uid apply to it. Before, the gateway connected
/// as the container's root (uid 0).
#[test]
fn a_forward_is_connected_as_the_login() {
    let f = fixture();
    let echo = container_echo();
    let init = f.container.init_pid();
    let (mut child, local) = forward(&app(), &f.admin_key, echo);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    s.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping\n");
    // The container's socket to the echo server (from its /proc/net/tcp,
    // which names the owner's uid): made by app, not by root.
    let uid = std::fs::read_to_string(format!("/proc/{init}/net/tcp"))
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f[2].split(':').nth(1)?, 16).ok()?;
            (remote_port == echo && f[3] == "01").then(|| f[7].parse::<u32>().unwrap())
        });
    drop(s);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(uid, Some(1000));
}
