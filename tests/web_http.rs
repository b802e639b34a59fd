//! The web console's protocol-level guarantees (issue 17), checked with
//! plain HTTP requests against the real `portcullis` binary and the real
//! test OpenID provider (no browser, no container): cookie flags, the
//! security headers, CSRF and `Origin` checks on every state-changing
//! request, single-use login state bound to its browser, TLS, and the SSH
//! login page's library API with its hand-over through the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::gateway::{TestGateway, free_port};
use common::idp::TestIdp;
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::{Client, Response, StatusCode, Url};

struct Fixture {
    idp: TestIdp,
    gw: TestGateway,
    web: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let port = free_port();
            let gw = TestGateway::start(
                &idp.issuer,
                &format!("[web]\nlisten = \"127.0.0.1:{port}\"\nlogin_per_minute = 1000\n"),
            );
            Fixture {
                idp,
                gw,
                web: format!("http://127.0.0.1:{port}"),
            }
        })
        .join()
        .unwrap()
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A browser-like client: cookies kept, redirects not followed.
fn client() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The `Set-Cookie` line of cookie `name`.
fn set_cookie(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(
        html[start..end]
            .replace("&amp;", "&")
            .replace("&quot;", "\""),
    )
}

fn action(html: &str, base: &Url) -> Url {
    let form = html.find("<form").unwrap_or(0);
    let start = html[form..].find("action=\"").map(|i| i + form + 8);
    match start {
        Some(s) => {
            let end = html[s..].find('"').unwrap() + s;
            base.join(&html[s..end].replace("&amp;", "&")).unwrap()
        }
        None => base.clone(),
    }
}

/// Plays the user at the test IdP from `first` (a redirect to it) until
/// it sends the browser back to the console's callback; returns that URL.
async fn through_idp(c: &Client, first: Response, login: &str) -> Url {
    through_idp_at(c, first, login, &fixture().web).await
}

/// [`through_idp`] for the console at `web`.
async fn through_idp_at(c: &Client, first: Response, login: &str, web: &str) -> Url {
    let mut resp = first;
    let mut url: Url = web.parse().unwrap();
    for _ in 0..20 {
        if resp.status().is_redirection() {
            let loc = resp.headers()[LOCATION].to_str().unwrap().to_string();
            url = url.join(&loc).unwrap();
            if url.as_str().starts_with(&format!("{web}/auth/callback")) {
                return url;
            }
            resp = c.get(url.clone()).send().await.unwrap();
            continue;
        }
        let body = resp.text().await.unwrap();
        let prompt = hidden(&body, "prompt")
            .unwrap_or_else(|| panic!("unexpected IdP page at {url}:\n{body}"));
        let to = action(&body, &url);
        let form: Vec<(&str, &str)> = match prompt.as_str() {
            "login" => vec![("prompt", "login"), ("login", login), ("password", "x")],
            _ => vec![("prompt", "consent")],
        };
        resp = c.post(to.clone()).form(&form).send().await.unwrap();
        url = to;
    }
    panic!("the IdP did not send the browser back");
}

/// Logs `c` in to the console as `login`; returns the callback response.
async fn log_in(c: &Client, login: &str) -> Response {
    let f = fixture();
    let start = c
        .get(format!("{}/login?return_to=/audit", f.web))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let back = through_idp(c, start, login).await;
    c.get(back).send().await.unwrap()
}

/// The CSRF token of the console page at `path`.
async fn csrf_of(c: &Client, path: &str) -> String {
    let f = fixture();
    let body = c
        .get(format!("{}{path}", f.web))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    hidden(&body, "csrf").unwrap_or_else(|| panic!("no csrf on {path}:\n{body}"))
}

#[test]
fn login_sets_strict_http_only_cookies_and_pages_send_the_security_headers() {
    let f = fixture();
    rt().block_on(async {
        let c = client();
        let start = c
            .get(format!("{}/login?return_to=/audit", f.web))
            .send()
            .await
            .unwrap();
        let browser = set_cookie(&start, "portcullis_login").unwrap();
        assert!(browser.contains("; HttpOnly"), "{browser}");
        assert!(browser.contains("; SameSite=Lax"), "{browser}");
        assert!(!browser.contains("Secure"), "plain HTTP: {browser}");
        let to = start.headers()[LOCATION].to_str().unwrap().to_string();
        let to: Url = to.parse().unwrap();
        let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert_eq!(q["redirect_uri"], format!("{}/auth/callback", f.web));
        assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
        let back = through_idp(&c, start, "reviewer").await;
        let done = c.get(back).send().await.unwrap();
        assert_eq!(done.status(), StatusCode::OK);
        let session = set_cookie(&done, "portcullis_session").unwrap();
        for flag in ["; HttpOnly", "; SameSite=Strict", "; Path=/"] {
            assert!(session.contains(flag), "{flag} missing: {session}");
        }
        assert!(!session.contains("Secure"), "plain HTTP: {session}");
        let csp = done.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(done.headers()["x-frame-options"], "DENY");
        let page = done.text().await.unwrap();
        assert!(
            page.contains("url=/audit"),
            "continues to return_to: {page}"
        );
        // The console session now works; the cookie value is nowhere in
        // the database, only its hash.
        let audit = c.get(format!("{}/audit", f.web)).send().await.unwrap();
        assert_eq!(audit.status(), StatusCode::OK);
        let value = session
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("portcullis_session=")
            .to_string();
        let db = std::fs::read(f.gw.state_dir.join("portcullis.db")).unwrap_or_default();
        assert!(
            !db.windows(value.len()).any(|w| w == value.as_bytes()),
            "the cookie value is stored in the database"
        );
        // Logout ends it on the server, not only in this client.
        let csrf = csrf_of(&c, "/audit").await;
        let out = c
            .post(format!("{}/logout", f.web))
            .header("origin", &f.web)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), StatusCode::OK);
        let replay = client()
            .get(format!("{}/audit", f.web))
            .header("cookie", format!("portcullis_session={value}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            replay.status(),
            StatusCode::SEE_OTHER,
            "a logged-out cookie still works"
        );
    });
}

#[test]
fn state_changing_requests_need_the_csrf_token_and_the_console_origin() {
    let f = fixture();
    rt().block_on(async {
        let c = client();
        assert_eq!(log_in(&c, "reviewer").await.status(), StatusCode::OK);
        let csrf = csrf_of(&c, "/audit").await;
        let verify = format!("{}/audit/verify", f.web);
        // No token (a cross-site form post carrying the cookie).
        let r = c
            .post(&verify)
            .header("origin", &f.web)
            .form(&[("x", "1")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // A wrong token.
        let r = c
            .post(&verify)
            .header("origin", &f.web)
            .form(&[("csrf", "0".repeat(64).as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // The right token from another origin.
        let r = c
            .post(&verify)
            .header("origin", "http://evil.example")
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // Neither Origin nor Referer.
        let r = c
            .post(&verify)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // Token and origin: done.
        let r = c
            .post(&verify)
            .header("origin", &f.web)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page = r.text().await.unwrap();
        assert!(page.contains("id=\"verification\""), "{page}");
    });
    let refusals =
        f.gw.audit_events()
            .into_iter()
            .filter(|e| {
                e["kind"] == "decision"
                    && e["outcome"] == "deny"
                    && e["detail"].as_str().is_some_and(|d| d.contains("\"csrf\""))
            })
            .count();
    assert!(refusals >= 4, "{refusals} CSRF refusals audited");
}

#[test]
fn a_login_state_works_once_and_only_in_the_browser_that_started_it() {
    let f = fixture();
    rt().block_on(async {
        let victim = client();
        let start = victim.get(format!("{}/login", f.web)).send().await.unwrap();
        let back = through_idp(&victim, start, "reviewer").await;
        // Another browser (without the login cookie) cannot use it.
        let other = client().get(back.clone()).send().await.unwrap();
        assert_eq!(other.status(), StatusCode::BAD_GATEWAY);
        assert!(set_cookie(&other, "portcullis_session").is_none());
        // ...and the state is spent: the right browser cannot either now.
        let late = victim.get(back).send().await.unwrap();
        assert_eq!(late.status(), StatusCode::BAD_GATEWAY);
        // A good login, replayed, fails the second time.
        let start = victim.get(format!("{}/login", f.web)).send().await.unwrap();
        let back = through_idp(&victim, start, "reviewer").await;
        assert_eq!(
            victim.get(back.clone()).send().await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            victim.get(back).send().await.unwrap().status(),
            StatusCode::BAD_GATEWAY
        );
    });
    let failures: Vec<String> =
        f.gw.audit_events()
            .into_iter()
            .filter(|e| e["kind"] == "authentication" && e["outcome"] == "failure")
            .filter_map(|e| e["detail"].as_str().map(str::to_string))
            .collect();
    assert!(
        failures.iter().any(|d| d.contains("another browser")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|d| d.contains("unknown or used state")),
        "{failures:?}"
    );
}

#[test]
fn the_ssh_login_page_shows_what_is_approved_and_hands_the_token_to_the_waiting_login() {
    let f = fixture();
    let config = portcullis::config::Config::load(&f.gw.config_path).unwrap();
    rt().block_on(async {
        let store = portcullis::store::Store::open(&config.database_url())
            .await
            .unwrap();
        let issuers =
            std::sync::Arc::new(portcullis::identity::Issuers::from_config(&config).unwrap());
        let logins =
            portcullis::web::ssh_login::SshWebLogins::from_config(&config, store, issuers).unwrap();
        let (url, waiter) = logins
            .begin("192.0.2.7:50022", Some("SHA256:abcdefTESTKEY"), "root@web1")
            .await
            .unwrap();
        assert!(url.starts_with(&format!("{}/l/", f.web)), "{url}");
        assert!(waiter.poll().await.unwrap().is_none());
        let c = client();
        let page = c.get(&url).send().await.unwrap().text().await.unwrap();
        for shown in ["192.0.2.7:50022", "SHA256:abcdefTESTKEY", "root@web1"] {
            assert!(page.contains(shown), "{shown} not shown:\n{page}");
        }
        let csrf = hidden(&page, "csrf").unwrap();
        // A link sent to someone else: their browser logs in, but only the
        // person who logs in confirms, on the page that shows all of this.
        let start = c
            .post(format!("{url}/start"))
            .header("origin", &f.web)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), StatusCode::SEE_OTHER);
        let to: Url = start.headers()[LOCATION].to_str().unwrap().parse().unwrap();
        assert!(to.query_pairs().any(|(k, v)| k == "prompt" && v == "login"));
        let back = through_idp(&c, start, "alice").await;
        let confirm_page = c.get(back).send().await.unwrap().text().await.unwrap();
        assert!(confirm_page.contains("id=\"confirm\""), "{confirm_page}");
        assert!(confirm_page.contains("alice"), "{confirm_page}");
        // Not confirmed yet: the SSH side still waits.
        assert!(waiter.poll().await.unwrap().is_none());
        // Another browser cannot confirm it.
        let stranger = client();
        let spage = stranger
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let scsrf = hidden(&spage, "csrf").unwrap();
        let r = stranger
            .post(format!("{url}/confirm"))
            .header("origin", &f.web)
            .form(&[("csrf", scsrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = c
            .post(format!("{url}/confirm"))
            .header("origin", &f.web)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let tokens = waiter.poll().await.unwrap().expect("confirmed");
        assert_eq!(tokens.id_token.principal.subject, "alice");
        // Taken once.
        assert!(waiter.poll().await.is_err());
        let again = c.get(&url).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    });
}

#[test]
fn the_console_serves_tls_with_secure_cookies_and_hsts() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let _gw = TestGateway::start(
        &f.idp.issuer,
        &format!(
            "[web]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    rt().block_on(async {
        let c = Client::builder()
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = c
            .get(format!("https://127.0.0.1:{port}/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let browser = set_cookie(&r, "portcullis_login").unwrap();
        assert!(browser.ends_with("; Secure"), "{browser}");
        assert!(r.headers().contains_key("strict-transport-security"));
        let to: Url = r.headers()[LOCATION].to_str().unwrap().parse().unwrap();
        assert!(
            to.query_pairs().any(|(k, v)| k == "redirect_uri"
                && v == format!("https://127.0.0.1:{port}/auth/callback"))
        );
        // Plain HTTP on the TLS port gets no page.
        let plain = client()
            .get(format!("http://127.0.0.1:{port}/login"))
            .send()
            .await;
        assert!(plain.is_err() || !plain.unwrap().status().is_redirection());
    });
}

#[test]
fn approving_needs_a_fresh_login_at_the_issuer() {
    let f = fixture();
    let port = free_port();
    let web = format!("http://127.0.0.1:{port}");
    let gw = TestGateway::start(
        &f.idp.issuer,
        &format!(
            "[containers.webfresh]\nlabels = {{ env = \"dev\" }}\n\
             [web]\nlisten = \"127.0.0.1:{port}\"\nfresh_login_max_age = \"1s\"\n"
        ),
    );
    let config = portcullis::config::Config::load(&gw.config_path).unwrap();
    rt().block_on(async {
        // A pending request, as `ssh portcullis@gw request` leaves it.
        let store = portcullis::store::Store::open(&config.database_url())
            .await
            .unwrap();
        store
            .insert_access_request(&portcullis::store::NewAccessRequest {
                id: "f00dfacef00d",
                requester: "alice",
                container: "webfresh",
                login: "root",
                duration_seconds: 600,
                reason: "OPS-9 fresh login test",
                break_glass: false,
            })
            .await
            .unwrap();
        let c = client();
        let start = c
            .get(format!("{web}/login?return_to=/requests/f00dfacef00d"))
            .send()
            .await
            .unwrap();
        let logged_in_at = std::time::Instant::now();
        let back = through_idp_at(&c, start, "approver", &web).await;
        assert_eq!(c.get(back).send().await.unwrap().status(), StatusCode::OK);
        let page = c
            .get(format!("{web}/requests/f00dfacef00d"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = hidden(&page, "csrf").unwrap();
        // An admin logged in at the same time, for the locks.
        let admin = client();
        let start = admin
            .get(format!("{web}/login?return_to=/locks"))
            .send()
            .await
            .unwrap();
        let back = through_idp_at(&admin, start, "admin", &web).await;
        assert_eq!(
            admin.get(back).send().await.unwrap().status(),
            StatusCode::OK
        );
        let locks_page = admin
            .get(format!("{web}/locks"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let admin_csrf = hidden(&locks_page, "csrf").unwrap();
        // Wait out fresh_login_max_age (a fixed threshold, not an event).
        tokio::time::sleep(Duration::from_millis(1500).saturating_sub(logged_in_at.elapsed()))
            .await;
        let approve = format!("{web}/requests/f00dfacef00d/approve");
        let stale = c
            .post(&approve)
            .header("origin", &web)
            .form(&[("csrf", csrf.as_str()), ("comment", "ok")])
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
        let body = stale.text().await.unwrap();
        let link = body
            .split("href=\"")
            .find(|s| s.starts_with("/login?fresh=1"))
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no fresh-login link:\n{body}"))
            .replace("&amp;", "&");
        assert_eq!(
            store
                .access_request("f00dfacef00d")
                .await
                .unwrap()
                .unwrap()
                .status,
            "pending",
            "nothing was done before the fresh login"
        );
        // Adding a lock asks for the fresh login too, and adds nothing.
        let stale_lock = admin
            .post(format!("{web}/locks/add"))
            .header("origin", &web)
            .form(&[
                ("csrf", admin_csrf.as_str()),
                ("kind", "login"),
                ("value", "postgres"),
                ("reason", "OPS-9 fresh lock"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(stale_lock.status(), StatusCode::UNAUTHORIZED);
        assert!(
            stale_lock
                .text()
                .await
                .unwrap()
                .contains("return_to=%2Flocks"),
            "the fresh login comes back to the locks"
        );
        assert!(store.all_locks().await.unwrap().is_empty());
        let again = c.get(format!("{web}{link}")).send().await.unwrap();
        let to: Url = again.headers()[LOCATION].to_str().unwrap().parse().unwrap();
        let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
        assert_eq!(q["prompt"], "login");
        assert_eq!(q["max_age"], "0");
        let back = through_idp_at(&c, again, "approver", &web).await;
        assert_eq!(c.get(back).send().await.unwrap().status(), StatusCode::OK);
        let done = c
            .post(&approve)
            .header("origin", &web)
            .form(&[("csrf", csrf.as_str()), ("comment", "ok")])
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::OK);
        assert!(
            done.text()
                .await
                .unwrap()
                .contains("Approved f00dfacef00d: alice may use root@webfresh until")
        );
        assert_eq!(
            store
                .access_request("f00dfacef00d")
                .await
                .unwrap()
                .unwrap()
                .status,
            "approved"
        );
    });
    let fresh = gw
        .audit_events()
        .into_iter()
        .filter(|e| {
            e["kind"] == "authentication"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("web_fresh"))
        })
        .count();
    assert_eq!(fresh, 1);
}

/// The fixture's database, as the gateway opened it.
async fn store_of(gw: &TestGateway) -> portcullis::store::Store {
    let config = portcullis::config::Config::load(&gw.config_path).unwrap();
    portcullis::store::Store::open(&config.database_url())
        .await
        .unwrap()
}

/// Posts `form` (with the console's `Origin`) to `path`.
async fn post(c: &Client, path: &str, form: &[(&str, &str)]) -> Response {
    let f = fixture();
    c.post(format!("{}{path}", f.web))
        .header("origin", &f.web)
        .form(form)
        .send()
        .await
        .unwrap()
}

#[test]
fn an_admin_adds_and_removes_a_lock_through_the_broker_command_and_others_are_refused() {
    let f = fixture();
    let value = format!("mallory-{}", std::process::id());
    let lock_id = rt().block_on(async {
        let store = store_of(&f.gw).await;
        let admin = client();
        assert_eq!(log_in(&admin, "admin").await.status(), StatusCode::OK);
        let page = admin.get(format!("{}/locks", f.web)).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.unwrap();
        for kind in ["principal", "container", "login"] {
            assert!(
                page.contains(&format!("<option value=\"{kind}\">")),
                "{kind} offered: {page}"
            );
        }
        let csrf = hidden(&page, "csrf").unwrap();
        let form = |csrf: &str| {
            vec![
                ("csrf", csrf.to_string()),
                ("kind", "principal".to_string()),
                ("value", value.clone()),
                ("reason", "OPS-3 <b>stolen</b> laptop".to_string()),
                ("ttl", "1h".to_string()),
            ]
        };
        // Without the token (a cross-site form carrying the cookie): refused,
        // nothing added.
        let no_token: Vec<_> = form("").into_iter().filter(|(k, _)| *k != "csrf").collect();
        let r = admin
            .post(format!("{}/locks/add", f.web))
            .header("origin", &f.web)
            .form(&no_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let mine =
            |locks: Vec<portcullis::store::LockRecord>| -> Vec<portcullis::store::LockRecord> {
                locks.into_iter().filter(|l| l.value == value).collect()
            };
        assert!(mine(store.all_locks().await.unwrap()).is_empty());
        // A principal the policy does not let manage locks: the page and the
        // add are refused by the `locks` command, and audited.
        let alice = client();
        assert_eq!(log_in(&alice, "alice").await.status(), StatusCode::OK);
        let r = alice.get(format!("{}/locks", f.web)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.text().await.unwrap().contains("you may not manage locks"));
        let alice_csrf = csrf_of(&alice, "/sessions").await;
        let r = alice
            .post(format!("{}/locks/add", f.web))
            .header("origin", &f.web)
            .form(&form(&alice_csrf))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(mine(store.all_locks().await.unwrap()).is_empty());
        // The admin adds it.
        let r = admin
            .post(format!("{}/locks/add", f.web))
            .header("origin", &f.web)
            .form(&form(&csrf))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.text().await.unwrap();
        assert!(body.contains("Lock added"), "{body}");
        let added = mine(store.active_locks().await.unwrap());
        assert_eq!(added.len(), 1, "{added:?}");
        let lock = &added[0];
        assert_eq!(lock.target, portcullis::store::LockTarget::Principal);
        assert_eq!(lock.reason, "OPS-3 <b>stolen</b> laptop");
        assert_eq!(lock.created_by, "admin");
        let ttl = lock.expires_at.unwrap() - lock.created_at;
        assert!((3_595_000..=3_600_000).contains(&ttl), "ttl {ttl} ms");
        // Listed, escaped, with its remove button.
        let page = admin
            .get(format!("{}/locks", f.web))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains(&format!("id=\"remove-{}\"", lock.id)),
            "{page}"
        );
        assert!(
            page.contains("OPS-3 &#60;b&#62;stolen&#60;/b&#62; laptop")
                || page.contains("OPS-3 &lt;b&gt;stolen&lt;/b&gt; laptop"),
            "{page}"
        );
        assert!(!page.contains("<b>stolen"));
        // Alice cannot remove it either.
        let r = alice
            .post(format!("{}/locks/{}/remove", f.web, lock.id))
            .header("origin", &f.web)
            .form(&[("csrf", alice_csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(mine(store.active_locks().await.unwrap()).len(), 1);
        // The admin removes it.
        let r = post(
            &admin,
            &format!("/locks/{}/remove", lock.id),
            &[("csrf", csrf.as_str())],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(mine(store.active_locks().await.unwrap()).is_empty());
        let all = mine(store.all_locks().await.unwrap());
        assert_eq!(all[0].removed_by.as_deref(), Some("admin"));
        lock.id.clone()
    });
    let events = f.gw.audit_events();
    let lock_events: Vec<_> = events
        .iter()
        .filter(|e| {
            e["kind"] == "lock"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&value) || d.contains(&lock_id))
        })
        .collect();
    assert_eq!(lock_events.len(), 2, "added and removed: {lock_events:?}");
    assert!(lock_events.iter().all(|e| e["principal"] == "admin"));
    let refused = events
        .iter()
        .filter(|e| {
            e["kind"] == "decision"
                && e["outcome"] == "deny"
                && e["principal"] == "alice"
                && e["detail"].as_str().is_some_and(|d| d.contains("\"lock\""))
        })
        .count();
    assert_eq!(
        refused, 3,
        "the page, the add and the remove refused and audited"
    );
}

#[test]
fn the_auditors_report_of_a_period_is_the_one_the_cli_makes_and_downloads_as_a_file() {
    let f = fixture();
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let (page, json, disposition) = rt().block_on(async {
        let c = client();
        assert_eq!(log_in(&c, "reviewer").await.status(), StatusCode::OK);
        let form = c
            .get(format!("{}/audit/report", f.web))
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), StatusCode::OK);
        assert!(form.text().await.unwrap().contains("id=\"report-form\""));
        let page = c
            .get(format!("{}/audit/report?from={today}&to={today}", f.web))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.unwrap();
        let bad = c
            .get(format!(
                "{}/audit/report/download?from={today}&to={today}&format=exe",
                f.web
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let file = c
            .get(format!(
                "{}/audit/report/download?from={today}&to={today}&format=json",
                f.web
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(file.status(), StatusCode::OK);
        assert_eq!(file.headers()["content-type"], "application/json");
        let disposition = file.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_string();
        let json: serde_json::Value = serde_json::from_str(&file.text().await.unwrap()).unwrap();
        // Someone the policy does not let read the audit log.
        let alice = client();
        assert_eq!(log_in(&alice, "alice").await.status(), StatusCode::OK);
        let refused = alice
            .get(format!(
                "{}/audit/report/download?from={today}&to={today}&format=json",
                f.web
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        (page, json, disposition)
    });
    assert_eq!(
        disposition,
        format!("attachment; filename=\"portcullis-audit-{today}-{today}.json\"")
    );
    // The same report as `portcullis audit report` (but when it was made
    // and what happened in between: the log grew by the alice refusal).
    let out = f.gw.cli(&[
        "audit", "report", "--from", &today, "--to", &today, "--format", "json", "--output", "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["schema"], "portcullis.audit-report.v1");
    // (Not the sessions: other tests of this file add some meanwhile.)
    for key in ["from", "to", "from_ms", "to_ms", "gateway"] {
        assert_eq!(json[key], cli[key], "{key}");
    }
    assert_eq!(
        json["to_ms"].as_i64().unwrap() - json["from_ms"].as_i64().unwrap(),
        86_400_000 - 1
    );
    let verdict = json["verification"]["verdict"].as_str().unwrap();
    assert!(
        page.contains(&format!(
            "<span class=\"badge {}\">{verdict}</span>",
            if verdict == "OK" { "ok" } else { "bad" }
        )),
        "{page}"
    );
    assert!(page.contains(&format!(
        "<dd id=\"report-sessions\">{}</dd>",
        json["totals"]["sessions"]
    )));
    assert!(page.contains("id=\"download-html\""));
}

#[test]
fn the_containers_page_shows_each_containers_node_and_who_used_it_last() {
    let f = fixture();
    let name = format!("webfleet{}", std::process::id());
    let page = rt().block_on(async {
        // A node's heartbeat, as the edge stores it, and a session that
        // node recorded.
        let store = store_of(&f.gw).await.for_gateway("node-7");
        store
            .push_inventory(
                "node-7",
                "test",
                &[portcullis::store::InventoryPush {
                    name: name.clone(),
                    state: "RUNNING".into(),
                    labels: r#"{"env":"prod"}"#.into(),
                    owner: None,
                    purpose: None,
                    backend: "lxc".into(),
                }],
            )
            .await
            .unwrap();
        store
            .insert_session(&portcullis::store::NewSession {
                id: &format!("{name}s1"),
                principal: "bob",
                email: None,
                container: &name,
                login: "root",
                command: None,
                client_addr: Some("192.0.2.7:50000"),
                recording_path: "/nonexistent.cast",
                grant_id: None,
            })
            .await
            .unwrap();
        let c = client();
        assert_eq!(log_in(&c, "reviewer").await.status(), StatusCode::OK);
        let r = c.get(format!("{}/containers", f.web)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    });
    let row = page
        .split(&format!("<tr id=\"container-{name}\">"))
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for {name}:\n{page}"));
    let cells: Vec<String> = row
        .split("<td")
        .skip(1)
        .map(|c| {
            let inner = &c[c.find('>').unwrap() + 1..];
            let mut text = String::new();
            let mut tag = false;
            for ch in inner.chars() {
                match ch {
                    '<' => tag = true,
                    '>' => tag = false,
                    _ if !tag => text.push(ch),
                    _ => {}
                }
            }
            text
        })
        .collect();
    assert_eq!(cells[0], name);
    assert_eq!(cells[1], "env=prod");
    // node-7 has no tunnel to an edge: the page says so, as `containers
    // list` does.
    assert_eq!(cells[2], "offline");
    assert_eq!(cells[3], "lxc");
    assert_eq!(cells[4], "node-7");
    assert_eq!(cells[5], "bob");
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert!(cells[6].starts_with(&today), "{cells:?}");
}
