//! A real browser for end-to-end tests of the web console: Debian's
//! headless `chromium` driven through `chromedriver` with the W3C
//! WebDriver protocol (<https://www.w3.org/TR/webdriver2/>), spoken here
//! over plain HTTP with the test's own `reqwest` (a few JSON calls; no
//! WebDriver crate to build).
//!
//! Each [`Browser`] is one chromedriver process in its own process group
//! (free loopback port) and one Chromium session with a fresh profile
//! directory. Dropping it ends the WebDriver session (Chromium quits) and
//! kills the group; a reaper kills the group when the test process exits
//! without dropping (statics), so no Chromium outlives its test.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// The W3C WebDriver element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session.
pub struct Browser {
    base: String,
    session: String,
    http: reqwest::Client,
    driver: Child,
    _reaper: std::process::ChildStdin,
    _profile: tempfile::TempDir,
}

/// A page element.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// The profile directory this browser's Chromium runs with (its
    /// processes name it on their command line).
    pub fn profile_dir(&self) -> std::path::PathBuf {
        self._profile.path().to_path_buf()
    }

    /// Starts chromedriver and a headless Chromium (as root: no sandbox)
    /// with a fresh profile, 1280×900.
    pub async fn start() -> Browser {
        let port = super::gateway::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)");
        // Statics are never dropped: a reaper kills chromedriver (and so
        // its Chromium) when the test process exits and the pipe closes.
        #[allow(clippy::zombie_processes)]
        let reaper = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "read _ignored; kill -KILL -{} 2>/dev/null",
                driver.id()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn reaper")
            .stdin
            .take()
            .expect("reaper stdin");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                        "--window-size=1280,900",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}
        });
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Browser {
            base,
            session,
            http,
            driver,
            _reaper: reaper,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("WebDriver call")
            .json()
            .await
            .unwrap();
        v["value"].clone()
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let v = self.call(method, path, body).await;
        assert!(
            v.get("error").is_none(),
            "WebDriver {path}: {v}\npage: {}",
            self.url().await
        );
        v
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.ok(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching the CSS `selector`, if any.
    pub async fn find(&self, selector: &str) -> Option<Element> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": selector })),
            )
            .await;
        v[ELEMENT].as_str().map(|id| Element(id.to_string()))
    }

    /// Waits (at most `limit`) for an element matching `selector`.
    pub async fn wait_for(&self, selector: &str, limit: Duration) -> Element {
        let started = Instant::now();
        loop {
            if let Some(e) = self.find(selector).await {
                return e;
            }
            assert!(
                started.elapsed() < limit,
                "no {selector} at {} after {limit:?}; page:\n{}",
                self.url().await,
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `element`.
    pub async fn click(&self, element: &Element) {
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .await;
    }

    /// Clicks the element matching `selector` (waiting up to 20 s for it).
    pub async fn click_on(&self, selector: &str) {
        let e = self.wait_for(selector, Duration::from_secs(20)).await;
        self.click(&e).await;
    }

    /// Types `text` into `element`.
    pub async fn type_into(&self, element: &Element, text: &str) {
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Types `text` into the element matching `selector`.
    pub async fn fill(&self, selector: &str, text: &str) {
        let e = self.wait_for(selector, Duration::from_secs(20)).await;
        self.type_into(&e, text).await;
    }

    /// The rendered text of `element`.
    pub async fn text(&self, element: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", element.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The page source.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body) with `args`; its return value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.ok(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Polls `script` until it returns true (at most `limit`).
    pub async fn wait_script(&self, what: &str, script: &str, limit: Duration) {
        let started = Instant::now();
        while self.script(script, json!([])).await != Value::Bool(true) {
            assert!(
                started.elapsed() < limit,
                "timed out waiting for {what} at {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every cookie the browser holds for the current page, as WebDriver
    /// reports them (name, value, httpOnly, secure, sameSite, ...).
    pub async fn cookies(&self) -> Vec<Value> {
        self.ok(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let b64 = self.ok(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// At the test IdP's login page (devInteractions): signs in as `login`
    /// and gives consent when asked, until the browser is back at `back`
    /// (a URL prefix).
    pub async fn idp_login(&self, login: &str, back: &str) {
        let started = Instant::now();
        loop {
            let url = self.url().await;
            if url.starts_with(back) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "IdP login did not come back to {back}; at {url}:\n{}",
                self.source().await
            );
            if let Some(field) = self.find("input[name=login]").await {
                self.type_into(&field, login).await;
                if let Some(p) = self.find("input[name=password]").await {
                    self.type_into(&p, "x").await;
                }
                self.click_on("button[type=submit]").await;
            } else if url.contains("/interaction/")
                && let Some(b) = self.find("button[type=submit]").await
            {
                // The consent page.
                self.click(&b).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    /// Ends the WebDriver session (`DELETE /session/{id}`: Chromium quits),
    /// then kills chromedriver's process group (anything left of Chromium
    /// with it). Blocking std I/O: `Drop` cannot await.
    fn drop(&mut self) {
        let addr = self.base.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}
