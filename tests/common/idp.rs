//! A real OpenID Connect provider for integration tests.
//!
//! [`TestIdp::start`] runs `node tests/idp/server.mjs` (panva `oidc-provider`,
//! see `tests/idp/`) on `127.0.0.1` with a random port. Helpers play the user
//! in a headless "browser" through the RFC 8628 device flow, and mint tokens
//! signed with the IdP's own key (or an unknown key) for negative tests.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// OAuth client id of the public client registered at the test IdP.
pub const CLIENT_ID: &str = "portcullis";
/// A second, confidential client (`client_secret_post`).
pub const CONFIDENTIAL_CLIENT_ID: &str = "portcullis-confidential";
/// Secret of [`CONFIDENTIAL_CLIENT_ID`].
pub const CONFIDENTIAL_CLIENT_SECRET: &str = "portcullis-test-secret";
/// `kid` of the IdP's signing key (`tests/idp/jwks.json`, `tests/idp/signing-key.pem`).
pub const SIGNING_KID: &str = "portcullis-test-1";
/// `kid` of the key the IdP signs with after [`TestIdp::rotate_keys`]
/// (`tests/idp/signing-key-2.pem`).
pub const ROTATED_KID: &str = "portcullis-test-2";
/// `kid` put on tokens from [`TestIdp::mint_with_unknown_key`]; never in the JWKS.
pub const UNKNOWN_KID: &str = "unknown-test-key";
/// Device grant type URN (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How long [`TestIdp::start`] waits for the IdP to report its issuer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running test IdP. Dropping it kills the Node process.
pub struct TestIdp {
    /// Issuer URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub issuer: String,
    child: Child,
    /// Held open: the server exits when its stdin closes.
    stdin: Option<ChildStdin>,
    logs: Arc<Mutex<String>>,
}

/// Response of the device authorization endpoint (RFC 8628 §3.2).
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// Secret code the client polls the token endpoint with.
    pub device_code: String,
    /// Code the user enters, e.g. `QHHJ-TCNJ`.
    pub user_code: String,
    /// `http://127.0.0.1:PORT/device`.
    pub verification_uri: String,
    /// `http://127.0.0.1:PORT/device?user_code=...`.
    pub verification_uri_complete: String,
    /// Seconds until the device code expires (300).
    pub expires_in: u64,
    /// The raw JSON response.
    pub raw: Value,
}

/// Directory holding the IdP files (`tests/idp`).
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

/// Groups of `sub` from `tests/idp/accounts.json`; unknown subjects have none.
pub fn groups_for(sub: &str) -> Vec<String> {
    let text = std::fs::read_to_string(idp_dir().join("accounts.json"))
        .expect("read tests/idp/accounts.json");
    let accounts: Value = serde_json::from_str(&text).expect("parse tests/idp/accounts.json");
    accounts
        .get(sub)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Signs `claims` with RS256 using the PKCS#8 PEM file `pem_name` in `tests/idp`.
fn sign_with(pem_name: &str, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(idp_dir().join(pem_name))
        .unwrap_or_else(|e| panic!("read tests/idp/{pem_name}: {e}"));
    let key = EncodingKey::from_rsa_pem(&pem)
        .unwrap_or_else(|e| panic!("parse tests/idp/{pem_name}: {e}"));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("sign JWT")
}

/// Value of the first `<input ... name="NAME" value="...">` in `html`.
fn hidden_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html_unescape(&html[start..end]))
}

/// The `action` of the first `<form>` in `html`.
fn form_action(html: &str) -> Option<String> {
    let form = html.find("<form")?;
    let marker = "action=\"";
    let start = html[form..].find(marker)? + form + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html_unescape(&html[start..end]))
}

/// Undoes the escaping done by oidc-provider's `htmlSafe`.
fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Resolves `location` (absolute or relative) against `base`.
fn resolve(base: &reqwest::Url, location: &str) -> reqwest::Url {
    base.join(location)
        .unwrap_or_else(|e| panic!("bad URL {location:?} relative to {base}: {e}"))
}

impl TestIdp {
    /// Starts the IdP with default lifetimes (ID token 3600 s, device code 300 s).
    ///
    /// Panics (with a hint to run `npm ci --prefix tests/idp`) if the Node
    /// dependencies are missing, or if the server does not report within 30 s.
    pub fn start() -> TestIdp {
        Self::start_with_env(&[])
    }

    /// Starts the IdP issuing ID tokens that live `secs` seconds (`IDTOKEN_TTL`).
    pub fn start_with_id_token_ttl(secs: u64) -> TestIdp {
        Self::start_with_env(&[("IDTOKEN_TTL", &secs.to_string())])
    }

    /// Starts the IdP with extra environment variables for `server.mjs`.
    pub fn start_with_env(env: &[(&str, &str)]) -> TestIdp {
        let dir = idp_dir();
        let module = dir.join("node_modules").join("oidc-provider");
        if !module.is_dir() {
            panic!(
                "test IdP dependencies missing ({} not found): run `npm ci --prefix tests/idp` \
                 in {} first",
                module.display(),
                env!("CARGO_MANIFEST_DIR"),
            );
        }
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PORT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run `node` for the test IdP (is Node installed?): {e}")
        });
        let stdin = child.stdin.take();

        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("child stderr");
        let logs_w = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("PORTCULLIS_IDP_LOG").is_some() {
                    eprintln!("[idp] {line}");
                }
                let mut l = logs_w.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });

        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let res = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
            // Drain anything else so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });

        let mut idp = TestIdp {
            issuer: String::new(),
            child,
            stdin,
            logs,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            other => {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "test IdP did not report its issuer ({other:?}); if dependencies are missing \
                     run `npm ci --prefix tests/idp`. stderr:\n{}",
                    idp.logs()
                );
            }
        };
        let v: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("bad IdP startup line {line:?}: {e}"));
        idp.issuer = v["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("no issuer in IdP startup line {line:?}"))
            .to_owned();
        idp
    }

    /// Everything the IdP has written to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A plain HTTP client (no cookies, no redirects followed).
    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build reqwest client")
    }

    /// The issuer's discovery document (`/.well-known/openid-configuration`).
    pub async fn discovery(&self) -> Value {
        Self::http()
            .get(format!("{}/.well-known/openid-configuration", self.issuer))
            .send()
            .await
            .expect("GET discovery")
            .error_for_status()
            .expect("discovery status")
            .json()
            .await
            .expect("discovery JSON")
    }

    /// The issuer's public JWKS (fetched via `jwks_uri` from discovery).
    pub async fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        let disc = self.discovery().await;
        let uri = disc["jwks_uri"].as_str().expect("jwks_uri in discovery");
        Self::http()
            .get(uri)
            .send()
            .await
            .expect("GET jwks")
            .error_for_status()
            .expect("jwks status")
            .json()
            .await
            .expect("JWKS JSON")
    }

    /// Starts a device authorization as client `client_id` with `scope`
    /// (e.g. `"openid email groups"`). Panics on an error response.
    pub async fn device_authorization(&self, client_id: &str, scope: &str) -> DeviceAuthorization {
        let disc = self.discovery().await;
        let ep = disc["device_authorization_endpoint"]
            .as_str()
            .expect("device_authorization_endpoint in discovery");
        let resp = Self::http()
            .post(ep)
            .form(&[("client_id", client_id), ("scope", scope)])
            .send()
            .await
            .expect("POST device authorization");
        let status = resp.status();
        let raw: Value = resp.json().await.expect("device authorization JSON");
        assert!(
            status.is_success(),
            "device authorization failed: {status} {raw}"
        );
        let s = |k: &str| {
            raw[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} missing in {raw}"))
                .to_owned()
        };
        DeviceAuthorization {
            device_code: s("device_code"),
            user_code: s("user_code"),
            verification_uri: s("verification_uri"),
            verification_uri_complete: s("verification_uri_complete"),
            expires_in: raw["expires_in"].as_u64().unwrap_or(0),
            raw,
        }
    }

    /// One token request for a device code as public client `client_id`.
    /// Returns the HTTP status and JSON body (success or RFC 8628 error such as
    /// `authorization_pending`), without panicking on OAuth errors.
    pub async fn device_token_request(&self, client_id: &str, device_code: &str) -> (u16, Value) {
        let disc = self.discovery().await;
        let ep = disc["token_endpoint"]
            .as_str()
            .expect("token_endpoint in discovery");
        let resp = Self::http()
            .post(ep)
            .form(&[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", device_code),
                ("client_id", client_id),
            ])
            .send()
            .await
            .expect("POST token");
        let status = resp.status().as_u16();
        let body = resp.json().await.expect("token JSON");
        (status, body)
    }

    /// Plays the user in a browser: opens `verification` and signs in as
    /// `login` (which becomes the `sub`; any password), approving consent,
    /// until the IdP shows "Sign-in Success".
    ///
    /// `verification` is either the `verification_uri_complete` URL, or a bare
    /// user code (then `{issuer}/device` is used). Panics if the IdP rejects it.
    pub async fn complete_device_login(&self, verification: &str, login: &str) {
        if verification.starts_with("http://") || verification.starts_with("https://") {
            let url = reqwest::Url::parse(verification).expect("verification URL");
            let code = url
                .query_pairs()
                .find(|(k, _)| k == "user_code")
                .map(|(_, v)| v.into_owned());
            match code {
                Some(code) => self.device_login(verification, &code, login).await,
                None => panic!(
                    "complete_device_login: {verification} has no user_code; use \
                     complete_device_login_with_code"
                ),
            }
        } else {
            let uri = format!("{}/device", self.issuer);
            self.device_login(&uri, verification, login).await;
        }
    }

    /// Like [`TestIdp::complete_device_login`] for a separately shown
    /// `verification_uri` and `user_code` (the code is typed into the form).
    pub async fn complete_device_login_with_code(
        &self,
        verification_uri: &str,
        user_code: &str,
        login: &str,
    ) {
        self.device_login(verification_uri, user_code, login).await;
    }

    /// Browser simulation behind the `complete_device_login*` helpers.
    async fn device_login(&self, page: &str, user_code: &str, login: &str) {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build browser client");

        // 1. The verification page (input form, or auto-submitting form when
        //    the URL carries user_code). Both carry the session's xsrf.
        let mut url = reqwest::Url::parse(page).expect("verification URL");
        let resp = client
            .get(url.clone())
            .send()
            .await
            .expect("GET device page");
        let status = resp.status();
        let body = resp.text().await.expect("device page body");
        assert!(status.is_success(), "device page {url}: {status}\n{body}");
        let xsrf = hidden_value(&body, "xsrf")
            .unwrap_or_else(|| panic!("no xsrf on device page {url}:\n{body}"));
        let action = form_action(&body).map_or_else(|| url.clone(), |a| resolve(&url, &a));

        // 2. Submit the code and confirm in one step.
        let mut resp = client
            .post(action.clone())
            .form(&[
                ("xsrf", xsrf.as_str()),
                ("user_code", user_code),
                ("confirm", "yes"),
            ])
            .send()
            .await
            .expect("POST device code");
        url = action;

        // 3. Follow redirects and fill login / consent until success.
        for _ in 0..20 {
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("redirect without Location from {url}"))
                    .to_owned();
                url = resolve(&url, &loc);
                resp = client
                    .get(url.clone())
                    .send()
                    .await
                    .expect("follow redirect");
                continue;
            }
            let body = resp.text().await.expect("page body");
            if body.contains("Sign-in Success") {
                return;
            }
            assert!(
                status.is_success(),
                "device login failed at {url}: {status}\n{body}"
            );
            let prompt = hidden_value(&body, "prompt").unwrap_or_else(|| {
                panic!("unexpected page at {url} (bad or expired user code?):\n{body}")
            });
            let action = form_action(&body).map_or_else(|| url.clone(), |a| resolve(&url, &a));
            let form: Vec<(&str, &str)> = match prompt.as_str() {
                "login" => vec![("prompt", "login"), ("login", login), ("password", "x")],
                "consent" => vec![("prompt", "consent")],
                other => panic!("unknown interaction prompt {other:?} at {url}"),
            };
            resp = client
                .post(action.clone())
                .form(&form)
                .send()
                .await
                .expect("POST interaction");
            url = action;
        }
        panic!("device login as {login:?} did not finish after 20 steps (last {url})");
    }

    /// POSTs to a test-only admin route of `server.mjs`; returns the JSON.
    async fn admin(&self, method: reqwest::Method, path: &str) -> Value {
        let resp = Self::http()
            .request(method, format!("{}{path}", self.issuer))
            .send()
            .await
            .expect("admin request");
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().await.expect("admin JSON")
    }

    /// Rotates the IdP's signing key to `signing-key-2.pem` (kid
    /// [`ROTATED_KID`]); the JWKS then publishes only that key.
    pub async fn rotate_keys(&self) {
        self.admin(reqwest::Method::POST, "/admin/rotate").await;
    }

    /// Makes account `sub` disappear (logins and refreshes fail).
    pub async fn disable_account(&self, sub: &str) {
        self.admin(reqwest::Method::POST, &format!("/admin/disable?sub={sub}"))
            .await;
    }

    /// How many times the JWKS has been fetched.
    pub async fn jwks_requests(&self) -> u64 {
        self.admin(reqwest::Method::GET, "/admin/stats").await["jwks_requests"]
            .as_u64()
            .expect("jwks_requests")
    }

    /// Signs `claims` with the rotated key (kid [`ROTATED_KID`]).
    pub fn mint_with_rotated_key(&self, claims: Value) -> String {
        sign_with("signing-key-2.pem", ROTATED_KID, &claims)
    }

    /// Plays a user who refuses: opens the `verification_uri_complete` page
    /// and presses "Abort" (oidc-provider's `abort` parameter of the
    /// device code verification), so the device code is denied.
    pub async fn deny_device_login(&self, verification_uri_complete: &str) {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build browser client");
        let url = reqwest::Url::parse(verification_uri_complete).expect("verification URL");
        let user_code = url
            .query_pairs()
            .find(|(k, _)| k == "user_code")
            .map(|(_, v)| v.into_owned())
            .expect("user_code in URL");
        let body = client
            .get(url.clone())
            .send()
            .await
            .expect("GET device page")
            .text()
            .await
            .expect("device page");
        let xsrf = hidden_value(&body, "xsrf").expect("xsrf");
        let action = form_action(&body).map_or_else(|| url.clone(), |a| resolve(&url, &a));
        let resp = client
            .post(action)
            .form(&[
                ("xsrf", xsrf.as_str()),
                ("user_code", user_code.as_str()),
                ("abort", "yes"),
            ])
            .send()
            .await
            .expect("POST abort");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success() || status.is_redirection() || text.contains("aborted"),
            "abort: {status} {text}"
        );
    }

    /// Runs the whole device flow as client `portcullis` with scope
    /// `openid email groups`, signing in as `login`, and returns the ID token.
    pub async fn device_flow_id_token(&self, login: &str) -> String {
        let da = self
            .device_authorization(CLIENT_ID, "openid email groups")
            .await;
        self.complete_device_login(&da.verification_uri_complete, login)
            .await;
        let (status, body) = self.device_token_request(CLIENT_ID, &da.device_code).await;
        assert_eq!(status, 200, "device token request failed: {body}");
        body["id_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no id_token in {body}"))
            .to_owned()
    }

    /// Signs `claims` with the IdP's own key (RS256, kid `portcullis-test-1`),
    /// so it verifies against the IdP's JWKS. Use for expired / wrong-issuer /
    /// wrong-audience tests. Nothing is added to `claims`.
    pub fn mint_id_token(&self, claims: Value) -> String {
        sign_with("signing-key.pem", SIGNING_KID, &claims)
    }

    /// Signs `claims` (RS256) with a key the IdP does not publish
    /// (`tests/idp/unknown-key.pem`, kid `unknown-test-key`).
    pub fn mint_with_unknown_key(&self, claims: Value) -> String {
        sign_with("unknown-key.pem", UNKNOWN_KID, &claims)
    }

    /// Claims the IdP would put in an ID token for `sub`: `iss` (this issuer),
    /// `aud` = `portcullis`, `sub`, `email` = `sub@example.com`,
    /// `email_verified`, `groups` (from accounts.json), `iat` = now,
    /// `exp` = now + 600. Edit the returned value for negative tests.
    pub fn standard_claims(&self, sub: &str) -> Value {
        let now = now_secs();
        json!({
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": sub,
            "email": format!("{sub}@example.com"),
            "email_verified": true,
            "groups": groups_for(sub),
            "iat": now,
            "exp": now + 600,
        })
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
