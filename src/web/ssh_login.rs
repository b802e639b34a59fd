//! The login page for SSH users (issue 17, point 6; review H2): instead of
//! the issuer's device flow, whose link can be sent to a victim, the SSH
//! user is shown the gateway's own short link `{public_url}/l/CODE`. The
//! page says what is being approved (the SSH client's address, the key
//! fingerprint that will be bound, the target), sends the user through the
//! issuer's authorization code flow with a fresh login, and asks them to
//! confirm; the waiting SSH connection then takes the validated ID token.
//!
//! The SSH side calls [`SshWebLogins::begin`] and awaits
//! [`SshLoginWaiter::wait`]; this file imports nothing of `ssh` (and
//! nothing of the console but its HTTP handlers below), and hands over
//! through the database so the browser may reach any gateway sharing it.
//! It never binds a key itself: the SSH side does, as after any login.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::auth::{BROWSER_COOKIE, cookie, csrf_token, random_secret, sha256_hex};
use super::views::{message_page, page};
use super::{Console, WebError};
use crate::audit::AuditEvent;
use crate::config::Config;
use crate::identity::{CodeLogin, IdentityError, Issuers, LoginTokens};
use crate::store::{LoginStateRecord, SshWebLoginRecord, Store, StoreError, now_ms};

/// Letters of a code: no vowels (no words), no 0/O/1/I.
const CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ23456789";
/// Characters in a code: 28^10, about 48 bits.
const CODE_LEN: usize = 10;
/// How often a waiter looks at the database.
const POLL: Duration = Duration::from_millis(500);

/// Why an SSH web login did not end in a login.
#[derive(Debug, thiserror::Error)]
pub enum SshLoginError {
    /// `[web]` is not configured: there is no page to send users to.
    #[error("the web console is not configured")]
    NotConfigured,
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The link expired before the user confirmed.
    #[error("the login link expired")]
    Expired,
    /// The user refused the login on the page.
    #[error("the login was refused in the browser")]
    Refused,
    /// The handed-over ID token did not validate here.
    #[error("the ID token did not validate: {0}")]
    Token(#[source] IdentityError),
}

impl SshLoginError {
    /// One line for the SSH user.
    pub fn user_message(&self) -> String {
        match self {
            SshLoginError::NotConfigured | SshLoginError::Store(_) => {
                "Login failed: the gateway cannot offer browser login right now.".into()
            }
            SshLoginError::Expired => {
                "Login failed: the login link expired before it was confirmed; connect again."
                    .into()
            }
            SshLoginError::Refused => "Login failed: the login was refused in the browser.".into(),
            SshLoginError::Token(e) => e.user_message(),
        }
    }
}

/// What the SSH side needs to offer web logins.
#[derive(Debug, Clone)]
pub struct SshWebLogins {
    store: Store,
    issuers: Arc<Issuers>,
    public_url: String,
    ttl: Duration,
    gateway_id: String,
}

/// One SSH login waiting for the browser.
#[derive(Debug)]
pub struct SshLoginWaiter {
    store: Store,
    issuers: Arc<Issuers>,
    code_sha256: String,
    /// When the link stops working, unix ms.
    pub expires_at: i64,
}

impl SshWebLogins {
    /// Web logins for the gateway of `config`; `None` without `[web]`.
    pub fn from_config(
        config: &Config,
        store: Store,
        issuers: Arc<Issuers>,
    ) -> Option<SshWebLogins> {
        let web = config.web.as_ref()?;
        Some(SshWebLogins {
            store,
            issuers,
            public_url: web.public_url(),
            ttl: web.ssh_login_ttl,
            gateway_id: config.gateway_id(),
        })
    }

    /// Records an SSH login waiting for the browser and returns the link to
    /// show (`{public_url}/l/CODE`, valid `[web] ssh_login_ttl`) and the
    /// waiter. `client_addr` is the SSH client's `ip:port`, `fingerprint`
    /// the `SHA256:...` of the key that will be bound (if any), `target`
    /// the SSH user name asked for (cut to 128 bytes).
    ///
    /// # Errors
    /// [`SshLoginError::Store`].
    pub async fn begin(
        &self,
        client_addr: &str,
        fingerprint: Option<&str>,
        target: &str,
    ) -> Result<(String, SshLoginWaiter), SshLoginError> {
        let code = new_code();
        let now = now_ms();
        let expires_at = now + i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let code_sha256 = sha256_hex(&code);
        self.store
            .insert_ssh_web_login(&SshWebLoginRecord {
                code_sha256: code_sha256.clone(),
                client_addr: crate::audit::truncate(client_addr, 64),
                fingerprint: fingerprint.map(|f| crate::audit::truncate(f, 128)),
                target: crate::audit::truncate(target, 128),
                gateway: self.gateway_id.clone(),
                created_at: now,
                expires_at,
                status: "pending".into(),
                principal: None,
                browser_sha256: None,
                id_token: None,
            })
            .await?;
        Ok((
            format!("{}/l/{code}", self.public_url),
            SshLoginWaiter {
                store: self.store.clone(),
                issuers: self.issuers.clone(),
                code_sha256,
                expires_at,
            },
        ))
    }
}

impl SshLoginWaiter {
    /// Waits until the user confirmed in the browser, then takes the ID
    /// token (once: the row is marked `taken` and the token cleared) and
    /// validates it with this gateway's issuers. Looks every 500 ms.
    ///
    /// # Errors
    /// [`SshLoginError::Expired`], [`SshLoginError::Refused`],
    /// [`SshLoginError::Token`] or [`SshLoginError::Store`].
    pub async fn wait(&self) -> Result<LoginTokens, SshLoginError> {
        loop {
            if let Some(tokens) = self.poll().await? {
                return Ok(tokens);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One look: `Some` once confirmed, `None` while waiting.
    ///
    /// # Errors
    /// As [`SshLoginWaiter::wait`].
    pub async fn poll(&self) -> Result<Option<LoginTokens>, SshLoginError> {
        let now = now_ms();
        let Some(row) = self.store.ssh_web_login(&self.code_sha256).await? else {
            return Err(SshLoginError::Expired);
        };
        match row.status.as_str() {
            "refused" => return Err(SshLoginError::Refused),
            // Another waiter (or an earlier call) took it.
            "taken" => return Err(SshLoginError::Expired),
            "confirmed" => {}
            _ if now >= row.expires_at => return Err(SshLoginError::Expired),
            _ => return Ok(None),
        }
        let token = row.id_token.unwrap_or_default();
        let none = (None, None, None);
        if !self
            .store
            .advance_ssh_web_login(&self.code_sha256, "confirmed", "taken", now, none)
            .await?
        {
            return Err(SshLoginError::Expired);
        }
        let id_token = self
            .issuers
            .validate_id_token(&token)
            .await
            .map_err(SshLoginError::Token)?;
        Ok(Some(LoginTokens {
            id_token,
            refresh_token: None,
        }))
    }
}

/// A new code of [`CODE_LEN`] characters of [`CODE_ALPHABET`].
fn new_code() -> String {
    let bytes: [u8; CODE_LEN] = rand::random();
    bytes
        .iter()
        .map(|b| {
            // 252 = 9 × 28: values above it would favour some letters.
            let mut v = *b;
            while v >= 252 {
                v = rand::random();
            }
            char::from(CODE_ALPHABET[usize::from(v) % CODE_ALPHABET.len()])
        })
        .collect()
}

/// True when `code` has the shape of a code (checked before any lookup).
fn code_shaped(code: &str) -> bool {
    code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))
}

#[derive(Template)]
#[template(path = "ssh_login.html")]
struct LoginPage {
    nav: Option<super::views::Nav>,
    code: String,
    row: SshWebLoginRecord,
    csrf: String,
    expires: String,
    /// After the issuer's login: who logged in (the confirm step).
    principal: Option<String>,
}

/// The row of `code` when it can still be used, else a clear refusal.
async fn usable(console: &Console, code: &str) -> Result<SshWebLoginRecord, WebError> {
    let gone = || {
        WebError::BadRequest(
            "This login link is unknown, already used or expired. Connect with ssh again for a \
             new one."
                .into(),
        )
    };
    if !code_shaped(code) {
        return Err(gone());
    }
    let row = console
        .store
        .ssh_web_login(&sha256_hex(code))
        .await?
        .ok_or_else(gone)?;
    if now_ms() >= row.expires_at || !matches!(row.status.as_str(), "pending" | "authenticated") {
        return Err(gone());
    }
    Ok(row)
}

fn render(
    console: &Console,
    code: &str,
    row: SshWebLoginRecord,
    browser: &str,
    principal: Option<String>,
) -> Result<Response, WebError> {
    let left = (row.expires_at - now_ms()).max(0) / 1000;
    let mut response = page(&LoginPage {
        nav: None,
        code: code.to_string(),
        csrf: csrf_token(browser),
        expires: super::views::format_seconds(left),
        row,
        principal,
    })?;
    let set = console.set_cookie(
        BROWSER_COOKIE,
        browser,
        "Lax",
        console.web.ssh_login_ttl.as_secs() + 600,
    );
    if let Ok(value) = set.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `GET /l/{code}`: what is being approved, and the button that logs in.
pub(crate) async fn page_handler(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, WebError> {
    let row = usable(&console, &code).await?;
    let browser = cookie(&headers, BROWSER_COOKIE).unwrap_or_else(random_secret);
    let principal = (row.status == "authenticated"
        && row.browser_sha256.as_deref() == Some(sha256_hex(&browser).as_str()))
    .then(|| row.principal.clone())
    .flatten();
    render(&console, &code, row, &browser, principal)
}

/// `POST /l/{code}/start`: a fresh login at the default issuer.
pub(crate) async fn start(
    State(console): State<Arc<Console>>,
    ConnectInfo(super::tls::Peer(peer)): ConnectInfo<super::tls::Peer>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, WebError> {
    if !console.limits.login(peer.ip()) {
        return Err(WebError::RateLimited);
    }
    let row = usable(&console, &code).await?;
    if row.status != "pending" {
        return Err(WebError::BadRequest(
            "This login is already logged in; confirm or refuse it.".into(),
        ));
    }
    let browser = cookie(&headers, BROWSER_COOKIE);
    console
        .begin_authorization(
            console.issuers.default_issuer(),
            browser,
            "ssh",
            Some(row.code_sha256),
            format!("/l/{code}"),
        )
        .await
}

/// The callback of an SSH login: stores who logged in (and their ID token)
/// for the browser that started it, and shows the confirm step.
pub(crate) async fn authenticated(
    console: &Console,
    login: &LoginStateRecord,
    done: CodeLogin,
    browser: &str,
    client: &str,
) -> Result<Response, WebError> {
    let code = login.return_to.trim_start_matches("/l/").to_string();
    let row = usable(console, &code).await?;
    if Some(row.code_sha256.as_str()) != login.ssh_code_sha256.as_deref() {
        return Err(WebError::BadRequest(
            "This login belongs to another link.".into(),
        ));
    }
    let principal = done.tokens.id_token.principal.subject.clone();
    let browser_sha256 = sha256_hex(browser);
    let set = (
        Some(principal.as_str()),
        Some(browser_sha256.as_str()),
        Some(done.raw_id_token.expose()),
    );
    if !console
        .store
        .advance_ssh_web_login(&row.code_sha256, "pending", "authenticated", now_ms(), set)
        .await?
    {
        return Err(WebError::BadRequest(
            "This login link is unknown, already used or expired.".into(),
        ));
    }
    tracing::info!(%client, principal = %principal, "SSH web login authenticated; waiting for confirmation");
    let row = usable(console, &code).await?;
    let shown = match &done.tokens.id_token.principal.email {
        Some(e) => format!("{principal} ({e})"),
        None => principal,
    };
    render(console, &code, row, browser, Some(shown))
}

/// The row of `code` when `headers` carry the browser cookie that logged
/// it in.
async fn of_this_browser(
    console: &Console,
    headers: &HeaderMap,
    code: &str,
) -> Result<SshWebLoginRecord, WebError> {
    let row = usable(console, code).await?;
    let browser = cookie(headers, BROWSER_COOKIE).unwrap_or_default();
    if row.browser_sha256.as_deref() != Some(sha256_hex(&browser).as_str()) {
        return Err(WebError::BadRequest(
            "Log in on this page first, in the same browser.".into(),
        ));
    }
    Ok(row)
}

/// `POST /l/{code}/confirm`: the SSH connection may go on as the
/// principal who logged in.
pub(crate) async fn confirm(
    State(console): State<Arc<Console>>,
    ConnectInfo(super::tls::Peer(peer)): ConnectInfo<super::tls::Peer>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, WebError> {
    let row = of_this_browser(&console, &headers, &code).await?;
    let principal = row.principal.clone().unwrap_or_default();
    let event = AuditEvent::AuthenticationSucceeded {
        method: "ssh_web_login_confirmed".into(),
        target: row.target.clone(),
    };
    console
        .record(Some(&principal), &peer.to_string(), None, &event)
        .await?;
    let none = (None, None, None);
    if !console
        .store
        .advance_ssh_web_login(
            &row.code_sha256,
            "authenticated",
            "confirmed",
            now_ms(),
            none,
        )
        .await?
    {
        return Err(WebError::BadRequest("This login link expired.".into()));
    }
    message_page(
        None,
        "Login confirmed",
        &format!(
            "The SSH connection from {} to {} goes on as {principal}. You may close this page.",
            row.client_addr, row.target
        ),
        None,
    )
    .map(IntoResponse::into_response)
}

/// `POST /l/{code}/refuse`: the waiting SSH login fails.
pub(crate) async fn refuse(
    State(console): State<Arc<Console>>,
    ConnectInfo(super::tls::Peer(peer)): ConnectInfo<super::tls::Peer>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, WebError> {
    let row = usable(&console, &code).await?;
    let event = AuditEvent::AuthenticationFailed {
        method: "ssh_web_login".into(),
        target: row.target.clone(),
        reason: format!(
            "refused in the browser for the SSH client {}",
            row.client_addr
        ),
    };
    console
        .record(row.principal.as_deref(), &peer.to_string(), None, &event)
        .await?;
    let none = (None, None, None);
    let browser = cookie(&headers, BROWSER_COOKIE).unwrap_or_default();
    let mine = row
        .browser_sha256
        .as_deref()
        .is_none_or(|b| b == sha256_hex(&browser));
    let moved = mine
        && console
            .store
            .advance_ssh_web_login(&row.code_sha256, &row.status, "refused", now_ms(), none)
            .await?;
    if !moved {
        return Err(WebError::BadRequest(
            "This login cannot be refused from here.".into(),
        ));
    }
    message_page(
        None,
        "Login refused",
        "The SSH connection will not be logged in. If you did not start it, tell your security team.",
        None,
    )
    .map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_shaped() {
        for _ in 0..100 {
            let c = new_code();
            assert!(code_shaped(&c), "{c}");
        }
        assert!(!code_shaped("BCDFGHJKL"));
        assert!(!code_shaped("BCDFGHJKLA"));
        assert!(!code_shaped("../../etc/x"));
    }
}
