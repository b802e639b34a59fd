//! Console login through the gateway's OpenID Connect issuers: the
//! authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636 S256), with
//! `state` bound to the browser and `nonce` checked in the ID token
//! (OpenID Connect Core 1.0 §3.1.2, §3.1.3.7), the ID token validated by
//! [`crate::identity::OidcIssuer::validate_id_token`]. A *fresh* login
//! (before approve, deny, revoke, review and kill) asks the issuer for
//! `prompt=login` and `max_age=0` and checks `auth_time`.
//!
//! Logins and their failures are audited (`authentication`, method
//! `web`). Never logs a code, a token or a cookie.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{BROWSER_COOKIE, Viewer, cookie, random_secret, sha256_hex};
use super::{Console, WebError, ssh_login, views};
use crate::audit::{AuditEvent, truncate};
use crate::identity::{AuthorizationParams, OidcIssuer};
use crate::store::{LoginStateRecord, WebSessionRecord, now_ms};

/// How long an authorization request may take, in seconds.
const LOGIN_STATE_SECONDS: u64 = 600;

/// The query of `/login`.
#[derive(Debug, Deserialize)]
pub(crate) struct StartQuery {
    /// Local path to come back to.
    #[serde(default)]
    return_to: Option<String>,
    /// `1` for a fresh login of the logged-in principal.
    #[serde(default)]
    fresh: Option<String>,
    /// Issuer URL, when several are configured (default: the default one).
    #[serde(default)]
    issuer: Option<String>,
}

/// `return_to` when it is a local path, else `/`.
pub(crate) fn local_path(path: Option<&str>) -> String {
    match path {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control)
                && p.len() <= 1024 =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

impl Console {
    /// The `redirect_uri` registered at the issuers.
    pub(crate) fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.web.public_url())
    }

    /// Starts an authorization request at `issuer` for `purpose`: stores
    /// its state (bound to `browser`, the login cookie) and returns the
    /// redirect to the issuer with that cookie set.
    ///
    /// # Errors
    /// [`WebError::Login`] when the issuer cannot be asked;
    /// [`WebError::Store`].
    pub(crate) async fn begin_authorization(
        &self,
        issuer: &OidcIssuer,
        browser: Option<String>,
        purpose: &str,
        ssh_code_sha256: Option<String>,
        return_to: String,
    ) -> Result<Response, WebError> {
        let browser = browser.unwrap_or_else(random_secret);
        let state = random_secret();
        let nonce = random_secret();
        let code_verifier = random_secret();
        let redirect_uri = self.redirect_uri();
        let request = issuer
            .authorization_request(&AuthorizationParams {
                redirect_uri: &redirect_uri,
                state: &state,
                nonce: &nonce,
                code_verifier: &code_verifier,
                fresh: purpose != "login",
            })
            .await
            .map_err(|e| WebError::Login(e.to_string()))?;
        let now = now_ms();
        self.store
            .insert_login_state(&LoginStateRecord {
                state_sha256: sha256_hex(&state),
                browser_sha256: sha256_hex(&browser),
                issuer: issuer.issuer_url().to_string(),
                code_verifier,
                nonce,
                purpose: purpose.to_string(),
                ssh_code_sha256,
                return_to,
                created_at: now,
                expires_at: now + (LOGIN_STATE_SECONDS as i64) * 1000,
            })
            .await?;
        let set = self.set_cookie(BROWSER_COOKIE, &browser, "Lax", LOGIN_STATE_SECONDS);
        Ok(([(header::SET_COOKIE, set)], Redirect::to(&request.url)).into_response())
    }
}

/// `GET /login`: sends the browser to the issuer.
pub(crate) async fn start(
    State(console): State<Arc<Console>>,
    ConnectInfo(super::tls::Peer(peer)): ConnectInfo<super::tls::Peer>,
    headers: HeaderMap,
    Query(query): Query<StartQuery>,
) -> Result<Response, WebError> {
    if !console.limits.login(peer.ip()) {
        return Err(WebError::RateLimited);
    }
    let return_to = local_path(query.return_to.as_deref());
    let fresh = query.fresh.as_deref() == Some("1");
    let issuer = match &query.issuer {
        Some(url) => console
            .issuers
            .by_url(url)
            .ok_or_else(|| WebError::BadRequest("No such issuer is configured.".into()))?,
        None => console.issuers.default_issuer(),
    };
    let browser = cookie(&headers, BROWSER_COOKIE);
    let purpose = if fresh { "fresh" } else { "login" };
    console
        .begin_authorization(issuer, browser, purpose, None, return_to)
        .await
}

/// The query the issuer sends back (RFC 6749 §4.1.2, §4.1.2.1).
#[derive(Debug, Deserialize)]
pub(crate) struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// `GET /auth/callback`: the issuer's answer. Takes the login state (once),
/// checks it belongs to this browser and has not expired, exchanges the
/// code, validates the ID token and its nonce, then opens a console
/// session, refreshes the login time of the open one, or goes on with an
/// SSH login.
pub(crate) async fn callback(
    State(console): State<Arc<Console>>,
    ConnectInfo(super::tls::Peer(peer)): ConnectInfo<super::tls::Peer>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, WebError> {
    let client = peer.to_string();
    let fail = |reason: String| async {
        let event = AuditEvent::AuthenticationFailed {
            method: "web".into(),
            target: "console".into(),
            reason: reason.clone(),
        };
        match console.record(None, &client, None, &event).await {
            Ok(()) => WebError::Login(reason),
            Err(e) => e,
        }
    };
    let Some(state) = query.state.as_deref() else {
        return Err(fail("callback without state".into()).await);
    };
    let Some(login) = console.store.take_login_state(&sha256_hex(state)).await? else {
        return Err(fail("unknown or used state".into()).await);
    };
    let browser = cookie(&headers, BROWSER_COOKIE).unwrap_or_default();
    if sha256_hex(&browser) != login.browser_sha256 {
        return Err(fail("the state belongs to another browser".into()).await);
    }
    if now_ms() >= login.expires_at {
        return Err(fail("the login took too long".into()).await);
    }
    if let Some(error) = &query.error {
        return Err(fail(format!("the issuer answered {}", truncate(error, 100))).await);
    }
    let Some(code) = query.code.as_deref() else {
        return Err(fail("callback without code".into()).await);
    };
    let Some(issuer) = console.issuers.by_url(&login.issuer) else {
        return Err(fail("the issuer is no longer configured".into()).await);
    };
    let done = issuer
        .exchange_code(
            code,
            &login.code_verifier,
            &console.redirect_uri(),
            &login.nonce,
            console.web.client_secret.as_ref(),
        )
        .await;
    let done = match done {
        Ok(d) => d,
        Err(e) => return Err(fail(e.to_string()).await),
    };
    let principal = done.tokens.id_token.principal.clone();
    let auth_time = done.auth_time_ms.unwrap_or_else(now_ms);
    if login.purpose != "login" {
        let leeway = i64::try_from(issuer.leeway().as_millis()).unwrap_or(0);
        if auth_time.saturating_add(leeway).saturating_add(1000) < login.created_at {
            return Err(fail(format!(
                "{}: the issuer did not log the user in again (auth_time {auth_time} before {})",
                principal.subject, login.created_at
            ))
            .await);
        }
    }
    if login.purpose == "ssh" {
        return ssh_login::authenticated(&console, &login, done, &browser, &client).await;
    }
    let event = AuditEvent::AuthenticationSucceeded {
        method: if login.purpose == "fresh" {
            "web_fresh".into()
        } else {
            "web".into()
        },
        target: "console".into(),
    };
    console
        .record(Some(&principal.subject), &client, None, &event)
        .await?;
    let clear_browser = console.set_cookie(BROWSER_COOKIE, "", "Lax", 0);
    if login.purpose == "fresh" {
        let Some(value) = cookie(&headers, console.session_cookie_name()) else {
            return Err(WebError::LoggedOut);
        };
        if !console
            .store
            .refresh_web_session_auth(&sha256_hex(&value), &principal.subject, auth_time)
            .await?
        {
            return Err(WebError::Refused(
                "confirm this console login as another principal".into(),
            ));
        }
        return Ok((
            [(header::SET_COOKIE, clear_browser)],
            views::continue_page(&login.return_to),
        )
            .into_response());
    }
    let value = random_secret();
    let now = now_ms();
    let ttl = i64::try_from(console.web.session_ttl.as_millis()).unwrap_or(i64::MAX);
    console
        .store
        .insert_web_session(&WebSessionRecord {
            cookie_sha256: sha256_hex(&value),
            principal: principal.subject.clone(),
            email: principal.email.clone(),
            groups: principal.groups.clone(),
            issuer: principal.issuer.clone(),
            auth_time,
            created_at: now,
            last_seen_at: now,
            expires_at: now.saturating_add(ttl),
            client_addr: Some(client),
        })
        .await?;
    let name = console.session_cookie_name();
    let set = console.set_cookie(name, &value, "Strict", console.web.session_ttl.as_secs());
    // A page, not a redirect: the browser arrived from the issuer's site,
    // and a SameSite=Strict cookie is sent only once it navigates from a
    // page of ours.
    let mut response = views::continue_page(&login.return_to);
    response.headers_mut().append(
        header::SET_COOKIE,
        set.parse().map_err(|_| WebError::NotFound)?,
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        clear_browser.parse().map_err(|_| WebError::NotFound)?,
    );
    Ok(response)
}

/// `POST /logout`: ends the console session and deletes the cookie.
pub(crate) async fn logout(
    State(console): State<Arc<Console>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    console
        .store
        .end_web_session(&viewer.session.cookie_sha256, now_ms())
        .await?;
    let clear = console.set_cookie(console.session_cookie_name(), "", "Strict", 0);
    Ok(([(header::SET_COOKIE, clear)], views::logged_out_page()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_come_back() {
        assert_eq!(local_path(Some("/sessions?q=x")), "/sessions?q=x");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil")), "/");
        assert_eq!(local_path(None), "/");
    }
}
