//! The web console (issue 17) end to end, with real parts only: the real
//! `portcullis` binary serving SSH and the console, the real test OpenID
//! provider (principals: admin = admins, approver = approvers, reviewer =
//! reviewers, alice = developers, bob = no group), a real busybox LXC
//! container labelled env=dev, the stock OpenSSH client, and Debian's
//! headless Chromium driven through chromedriver (WebDriver).
//!
//! One fixture for the file: the IdP, the container and one gateway with
//! `[web]` on a free loopback port (plain HTTP, as behind a reverse
//! proxy). Screenshots of the main pages are written to `docs/` when
//! `PORTCULLIS_SCREENSHOTS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::browser::Browser;
use common::gateway::{SshResult, TestContainer, TestGateway, free_port, run_ssh};
use common::idp::TestIdp;
use serde_json::{Value, json};

struct Fixture {
    _idp: TestIdp,
    container: TestContainer,
    gw: TestGateway,
    web: String,
    alice: String,
    admin: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let container = TestContainer::start("web");
            let port = free_port();
            let gw = TestGateway::start(
                &idp.issuer,
                &format!(
                    "[containers.{}]\nlabels = {{ env = \"dev\" }}\n\
                     [web]\nlisten = \"127.0.0.1:{port}\"\nactions_per_minute = 1000\n\
                     login_per_minute = 1000\n",
                    container.name
                ),
            );
            let rt = tokio::runtime::Runtime::new().unwrap();
            let alice = rt.block_on(idp.device_flow_id_token("alice"));
            let admin = rt.block_on(idp.device_flow_id_token("admin"));
            Fixture {
                _idp: idp,
                container,
                gw,
                web: format!("http://127.0.0.1:{port}"),
                alice,
                admin,
            }
        })
        .join()
        .unwrap()
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// `ssh USER@gw ARGS...` as the holder of `token`.
fn ssh(user: &str, token: &str, args: &[&str]) -> SshResult {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = f.gw.ssh(user, token, dir.path());
    cmd.args(args);
    run_ssh(&mut cmd, b"")
}

/// A browser logged in to the console as `login`.
async fn logged_in(login: &str) -> Browser {
    let f = fixture();
    let b = Browser::start().await;
    b.goto(&format!("{}/sessions", f.web)).await;
    b.idp_login(login, &f.web).await;
    b.wait_for("#principal", Duration::from_secs(20)).await;
    let who = b.text(&b.find("#principal").await.unwrap()).await;
    assert!(who.starts_with(login), "logged in as {who:?}, not {login}");
    b
}

fn screenshot(name: &str) -> Option<std::path::PathBuf> {
    (std::env::var("PORTCULLIS_SCREENSHOTS").as_deref() == Ok("1")).then(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    })
}

/// The text the player's terminal shows now.
async fn terminal_text(b: &Browser) -> String {
    b.script(
        "const t = document.querySelector('.ap-term, .ap-terminal'); \
         return t ? t.innerText : '';",
        json!([]),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

#[test]
fn a_reviewer_finds_a_session_by_a_word_and_the_player_shows_it_at_the_hit() {
    let f = fixture();
    let needle = format!("needle{}", std::process::id());
    // The word, then a cleared screen: only at the hit's time does the
    // terminal show it.
    let script = format!("echo {needle}; sleep 1; printf '\\033[2J\\033[H'; echo later-screen");
    let r = ssh(&format!("root@{}", f.container.name), &f.admin, &[&script]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    rt().block_on(async {
        let b = logged_in("reviewer").await;
        // The transcript is indexed just after the session ends.
        let search = format!("{}/sessions?q={needle}", f.web);
        let started = std::time::Instant::now();
        loop {
            b.goto(&search).await;
            if b.find("a.hit-link").await.is_some() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no hit for {needle}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(p) = screenshot("console-search.png") {
            b.screenshot(&p).await;
        }
        // The exec command's marker holds the word too (at the start, before
        // the output): the last hit is the output line.
        let href = b
            .script(
                "const hits = document.querySelectorAll('a.hit-link'); \
                 return hits[hits.length - 1].getAttribute('href');",
                json!([]),
            )
            .await;
        let t: f64 = href
            .as_str()
            .unwrap()
            .rsplit("t=")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(t < 1.0, "the hit is at {t} s, before the sleep");
        let page = match href.as_str().unwrap() {
            h if h.starts_with("http") => h.to_string(),
            h => format!("{}/{}", f.web, h.trim_start_matches('/')),
        };
        b.goto(&page).await;
        b.wait_for("#player .ap-player", Duration::from_secs(20))
            .await;
        b.wait_script(
            "the player to show the word",
            &format!(
                "const t = document.querySelector('#player'); \
                 return !!t && t.innerText.includes('{needle}');"
            ),
            Duration::from_secs(20),
        )
        .await;
        let text = terminal_text(&b).await;
        assert!(
            !text.contains("later-screen"),
            "the player is past the hit: {text}"
        );
        if let Some(p) = screenshot("console-session.png") {
            b.screenshot(&p).await;
        }
        // The same recording at its end shows the cleared screen only.
        let url = b.url().await;
        let end = url.replace(&format!("t={t}"), "t=1.5");
        b.goto(&end).await;
        b.wait_script(
            "the player to show the end",
            "const t = document.querySelector('#player'); \
             return !!t && t.innerText.includes('later-screen');",
            Duration::from_secs(20),
        )
        .await;
        assert!(!terminal_text(&b).await.contains(&needle));
    });
}

/// `ssh portcullis@gw request ...` as alice; the request id.
fn alice_requests_root() -> String {
    let f = fixture();
    let line = format!(
        "request {} --login root --for 1h --reason \"OPS-17 console test\" --json",
        f.container.name
    );
    let r = ssh("portcullis", &f.alice, &[&line]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn an_approver_approves_in_the_browser_and_the_users_ssh_gets_in() {
    let f = fixture();
    let target = format!("root@{}", f.container.name);
    let id = alice_requests_root();
    let before = ssh(&target, &f.alice, &["id -u"]);
    assert_ne!(before.code, 0, "alice got in before the approval");
    rt().block_on(async {
        let b = logged_in("approver").await;
        b.goto(&format!("{}/requests", f.web)).await;
        let row = b
            .wait_for(
                &format!("tr.request[data-id='{id}']"),
                Duration::from_secs(10),
            )
            .await;
        let text = b.text(&row).await;
        assert!(text.contains("OPS-17 console test"), "{text}");
        assert!(text.contains("env=dev"), "labels shown: {text}");
        assert!(text.contains("0 of 1 approvals"), "progress shown: {text}");
        if let Some(p) = screenshot("console-requests.png") {
            b.screenshot(&p).await;
        }
        b.goto(&format!("{}/requests/{id}", f.web)).await;
        b.fill("form[action$='/approve'] input[name=comment]", "looks fine")
            .await;
        b.click_on("#approve").await;
        let msg = b.wait_for("#message", Duration::from_secs(20)).await;
        let msg = b.text(&msg).await;
        assert!(
            msg.contains("Approved ") && msg.contains("may use root@"),
            "{msg}"
        );
    });
    let after = ssh(&target, &f.alice, &["id -u"]);
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert_eq!(after.stdout, b"0\n");
}

#[test]
fn an_admin_watches_and_kills_a_live_session_from_the_browser() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd =
        f.gw.ssh(&format!("root@{}", f.container.name), &f.admin, dir.path());
    cmd.args(["-tt", "echo LIVE-READY; sleep 600"]);
    let child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    common::wait_until("the live session", Duration::from_secs(30), || {
        id =
            f.gw.sessions()
                .into_iter()
                .find(|s| {
                    s["status"] == "running"
                        && s["command"]
                            .as_str()
                            .is_some_and(|c| c.contains("LIVE-READY"))
                })
                .and_then(|s| s["id"].as_str().map(str::to_string))
                .unwrap_or_default();
        !id.is_empty()
    });
    rt().block_on(async {
        let b = logged_in("admin").await;
        b.goto(&format!("{}/sessions/{id}", f.web)).await;
        // Watched live: the player's eventsource driver shows the output.
        b.wait_script(
            "the live player to show the output",
            "const t = document.querySelector('#player'); \
             return !!t && t.innerText.includes('LIVE-READY');",
            Duration::from_secs(30),
        )
        .await;
        if let Some(p) = screenshot("console-live.png") {
            b.screenshot(&p).await;
        }
        b.fill("input[name=reason]", "console test kill").await;
        b.click_on("#kill").await;
        let msg = b.wait_for("#message", Duration::from_secs(30)).await;
        let msg = b.text(&msg).await;
        assert!(msg.contains("ended"), "{msg}");
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("console test kill") || stderr.contains("console test kill"),
        "the user was told the reason: {stdout} {stderr}"
    );
    let s =
        f.gw.sessions()
            .into_iter()
            .find(|s| s["id"] == id.as_str())
            .unwrap();
    assert_ne!(s["status"], "running");
    assert_eq!(s["kill_reason"], "console test kill");
    let events = f.gw.audit_events();
    assert!(
        events.iter().any(|e| e["kind"] == "session_control"
            && e["session_id"] == id.as_str()
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("\"reviewer\":\"admin\""))),
        "the live watch is audited"
    );
}

#[test]
fn a_principal_the_policy_does_not_allow_is_refused() {
    let f = fixture();
    let id = alice_requests_root();
    rt().block_on(async {
        let b = logged_in("bob").await;
        // No session is visible to bob.
        b.goto(&format!("{}/sessions", f.web)).await;
        b.wait_for("#empty", Duration::from_secs(10)).await;
        // The CSRF token of his console session (the logout form).
        let csrf = b
            .script(
                "const i = document.querySelector('input[name=csrf]'); return i ? i.value : '';",
                json!([]),
            )
            .await;
        // The audit log is not for bob.
        b.goto(&format!("{}/audit", f.web)).await;
        let m = b.wait_for("#message", Duration::from_secs(10)).await;
        assert!(b.text(&m).await.contains("Refused"));
        // Nor are access requests; an approval he sends anyway (a form
        // post from a console page) is refused and audited.
        b.goto(&format!("{}/requests/{id}", f.web)).await;
        let m = b.wait_for("#message", Duration::from_secs(10)).await;
        assert!(b.text(&m).await.contains("Refused"));
        let posted = b
            .script(
                "const f = document.createElement('form'); f.method = 'post'; \
                 f.action = '/requests/' + arguments[0] + '/approve'; \
                 const i = document.createElement('input'); i.name = 'csrf'; i.value = arguments[1]; \
                 f.appendChild(i); document.body.appendChild(f); f.submit(); return true;",
                json!([id, csrf]),
            )
            .await;
        assert_eq!(posted, Value::Bool(true));
        b.wait_script(
            "the refusal",
            "return location.pathname.endsWith('/approve') && \
             document.body.innerText.includes('Refused');",
            Duration::from_secs(20),
        )
        .await;
    });
    let events = f.gw.audit_events();
    assert!(
        events.iter().any(|e| e["kind"] == "access_request"
            && e["outcome"] == "deny"
            && e["principal"] == "bob"
            && e["detail"].as_str().is_some_and(|d| d.contains(&id))),
        "the refused approval is audited"
    );
}

#[test]
fn an_admin_locks_a_principal_in_the_browser_and_their_next_login_is_refused() {
    let f = fixture();
    let carol = rt().block_on(f._idp.device_flow_id_token("carol"));
    let reason = "OPS-21 laptop lost";
    let lock_id = rt().block_on(async {
        let b = logged_in("admin").await;
        b.goto(&format!("{}/locks", f.web)).await;
        b.wait_for("#add-lock", Duration::from_secs(10)).await;
        b.script(
            "document.querySelector('#lock-kind').value = 'principal'; return true;",
            json!([]),
        )
        .await;
        b.fill("#lock-value", "carol").await;
        b.fill("#lock-reason", reason).await;
        b.fill("#lock-ttl", "1h").await;
        b.click_on("#lock").await;
        let m = b.wait_for("#message", Duration::from_secs(20)).await;
        let text = b.text(&m).await;
        assert!(text.contains("on principal carol holds"), "{text}");
        let id = text
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        b.goto(&format!("{}/locks", f.web)).await;
        b.wait_for(&format!("#remove-{id}"), Duration::from_secs(10))
            .await;
        if let Some(p) = screenshot("console-locks.png") {
            b.screenshot(&p).await;
        }
        id
    });
    // Carol's next login is refused by the lock (and audited with it).
    let r = ssh(&format!("root@{}", f.container.name), &carol, &["true"]);
    assert_eq!(r.code, 255, "{}", r.stderr);
    let events = f.gw.audit_events();
    assert!(
        events.iter().any(|e| e["kind"] == "authentication"
            && e["outcome"] == "failure"
            && e["principal"] == "carol"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("locked ({lock_id})")))),
        "carol's refused login names the lock"
    );
    rt().block_on(async {
        let b = logged_in("admin").await;
        b.goto(&format!("{}/locks", f.web)).await;
        b.click_on(&format!("#remove-{lock_id}")).await;
        let m = b.wait_for("#message", Duration::from_secs(20)).await;
        assert!(b.text(&m).await.contains("no longer holds"));
        b.goto(&format!("{}/locks", f.web)).await;
        b.wait_for("#no-locks", Duration::from_secs(10)).await;
        // The other pages of the README, while a browser is at hand.
        for (path, wait, name) in [
            ("/containers", "#containers", "console-containers.png"),
            ("/audit/report?from=1d&to=", "#report", "console-report.png"),
        ] {
            b.goto(&format!("{}{path}", f.web)).await;
            b.wait_for(wait, Duration::from_secs(20)).await;
            if let Some(p) = screenshot(name) {
                b.screenshot(&p).await;
            }
        }
    });
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

/// A dropped browser leaves no Chromium behind (before the fix each test
/// left one Chromium tree running after chromedriver was killed).
#[test]
fn a_dropped_browser_leaves_no_chromium_running() {
    let profile = rt().block_on(async {
        let b = Browser::start().await;
        b.goto("about:blank").await;
        let profile = b.profile_dir().display().to_string();
        assert!(
            !processes_naming(&profile).is_empty(),
            "no Chromium runs with {profile}"
        );
        profile
    });
    common::wait_until("Chromium to exit", Duration::from_secs(10), || {
        processes_naming(&profile).is_empty()
    });
}
