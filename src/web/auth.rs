//! Who is using the console, and whether a request may change anything:
//! the session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` and the
//! `__Host-` prefix when the console is reached over `https://`) whose
//! SHA-256 names a server-side `web_sessions` row; the browser cookie of a
//! login in progress (`SameSite=Lax`, so it comes back with the issuer's
//! redirect); the synchroniser CSRF token derived from either cookie; the
//! `Origin` check of every state-changing request; fresh-login checks.
//!
//! Never stores a cookie value, only its hash; never trusts a form field
//! without the cookie it is derived from.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{Console, WebError};
use crate::audit::{AuditEvent, AuditSubject};
use crate::identity::Principal;
use crate::store::{WebSessionRecord, now_ms};

/// Name of the session cookie over `https://` (RFC 6265bis `__Host-`:
/// Secure, Path=/, no Domain, so no other host can set it).
const SESSION_COOKIE_SECURE: &str = "__Host-portcullis";
/// Name of the session cookie over plain HTTP (loopback only).
const SESSION_COOKIE_PLAIN: &str = "portcullis_session";
/// Name of the cookie binding a login in progress to its browser.
pub(crate) const BROWSER_COOKIE: &str = "portcullis_login";
/// Name of the form field holding the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";
/// Longest form body a state-changing request may have, in bytes.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A fresh random secret: 32 bytes, base64url.
pub(crate) fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Lowercase hex SHA-256 of `value`.
pub(crate) fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The CSRF token of a cookie value: only a holder of the cookie can
/// compute it, and the database does not hold the cookie.
pub(crate) fn csrf_token(cookie: &str) -> String {
    sha256_hex(&format!("portcullis-csrf\n{cookie}"))
}

/// Constant-time comparison of two tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in `headers`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl Console {
    /// The name of the session cookie.
    pub(crate) fn session_cookie_name(&self) -> &'static str {
        if self.web.secure_cookies() {
            SESSION_COOKIE_SECURE
        } else {
            SESSION_COOKIE_PLAIN
        }
    }

    /// A `Set-Cookie` value: `HttpOnly`, `Path=/`, the given `SameSite`,
    /// `Secure` over https, `Max-Age` in seconds (0 deletes it).
    pub(crate) fn set_cookie(
        &self,
        name: &str,
        value: &str,
        same_site: &str,
        max_age: u64,
    ) -> String {
        let secure = if self.web.secure_cookies() {
            "; Secure"
        } else {
            ""
        };
        format!("{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}")
    }

    /// Writes an audit event as `principal` from `client`.
    ///
    /// # Errors
    /// [`WebError::Audit`]: the caller must not go on.
    pub(crate) async fn record(
        &self,
        principal: Option<&str>,
        client: &str,
        session_id: Option<&str>,
        event: &AuditEvent,
    ) -> Result<(), WebError> {
        let subject = AuditSubject {
            session_id,
            principal,
            client_addr: Some(client),
        };
        self.audit
            .record(&subject, event)
            .await
            .map(|_| ())
            .map_err(WebError::Audit)
    }
}

/// The logged-in principal of a request, with their console session.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    /// Who.
    pub principal: Principal,
    /// The console session row.
    pub session: WebSessionRecord,
    /// The CSRF token to put in forms.
    pub csrf: String,
    /// The client address, `ip:port`.
    pub client: String,
}

impl Viewer {
    /// Whether the last login at the issuer is recent enough for approve,
    /// deny, revoke, review and kill (`[web] fresh_login_max_age`).
    pub(crate) fn fresh(&self, console: &Console) -> bool {
        let max = i64::try_from(console.web.fresh_login_max_age.as_millis()).unwrap_or(i64::MAX);
        now_ms().saturating_sub(self.session.auth_time) <= max
    }

    /// Counts an action against the principal's rate limit.
    ///
    /// # Errors
    /// [`WebError::RateLimited`].
    pub(crate) fn count_action(&self, console: &Console) -> Result<(), WebError> {
        if console.limits.action(&self.principal.subject) {
            Ok(())
        } else {
            Err(WebError::RateLimited)
        }
    }
}

/// The client address of a request (`ip:port`), from the connection.
pub(crate) fn client_of(parts: &Parts) -> Option<std::net::SocketAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<super::tls::Peer>>()
        .map(|c| c.0.0)
}

/// Where a logged-out browser is sent: the login, then back to `path`.
pub(crate) fn login_redirect(path: &str) -> Response {
    let back = if path.starts_with('/') && !path.starts_with("//") {
        path
    } else {
        "/"
    };
    let query = reqwest::Url::parse_with_params("http://x/login", &[("return_to", back)])
        .map(|u| u.query().unwrap_or_default().to_string())
        .unwrap_or_default();
    Redirect::to(&format!("/login?{query}")).into_response()
}

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Viewer, Response> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let logged_out = || {
            if parts.method == Method::GET {
                login_redirect(&path)
            } else {
                WebError::LoggedOut.into_response()
            }
        };
        let Some(value) = cookie(&parts.headers, console.session_cookie_name()) else {
            return Err(logged_out());
        };
        let hash = sha256_hex(&value);
        let now = now_ms();
        let session = match console.store.web_session(&hash, now).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(logged_out()),
            Err(e) => return Err(WebError::Store(e).into_response()),
        };
        let idle = i64::try_from(console.web.idle_timeout.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(session.last_seen_at) > idle {
            let _ = console.store.end_web_session(&hash, now).await;
            return Err(logged_out());
        }
        if let Err(e) = console.store.touch_web_session(&hash, now).await {
            return Err(WebError::Store(e).into_response());
        }
        let client = client_of(parts)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        Ok(Viewer {
            principal: Principal {
                subject: session.principal.clone(),
                email: session.email.clone(),
                groups: session.groups.clone(),
                issuer: session.issuer.clone(),
            },
            csrf: csrf_token(&value),
            session,
            client,
        })
    }
}

/// Refuses every state-changing request (any method but GET and HEAD)
/// that does not come from a console page: its `Origin` (or, without one,
/// its `Referer`) must be `[web] public_url`, and its form field `csrf`
/// must be the token of the session cookie or of the login cookie it
/// carries. Refusals are audited as `access_decided` of action `csrf`.
pub(crate) async fn cross_site_guard(
    State(console): State<Arc<Console>>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let client = client_of(&parts)
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let origin = console.web.public_url();
    let from_origin = match parts.headers.get(header::ORIGIN) {
        Some(o) => o.to_str().is_ok_and(|o| o == origin),
        None => parts
            .headers
            .get(header::REFERER)
            .and_then(|r| r.to_str().ok())
            .is_some_and(|r| r.starts_with(&format!("{origin}/"))),
    };
    let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => return WebError::BadRequest("The form is too large.".into()).into_response(),
    };
    let token = form_field(&bytes, CSRF_FIELD).unwrap_or_default();
    let valid = [console.session_cookie_name(), BROWSER_COOKIE]
        .iter()
        .filter_map(|name| cookie(&parts.headers, name))
        .any(|value| same(&csrf_token(&value), &token));
    let problem = match (from_origin, valid) {
        (true, true) => None,
        (false, _) => Some(format!(
            "Origin {:?} is not {origin}",
            parts
                .headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .unwrap_or("(none)")
        )),
        (true, false) => Some("missing or wrong CSRF token".to_string()),
    };
    if let Some(problem) = problem {
        let event = AuditEvent::AccessDecided {
            action: "csrf".into(),
            container: String::new(),
            login: String::new(),
            allowed: false,
            reasons: vec![format!(
                "{} {}: {problem}",
                parts.method,
                crate::audit::truncate(parts.uri.path(), 200)
            )],
        };
        if let Err(e) = console.record(None, &client, None, &event).await {
            return e.into_response();
        }
        return WebError::CrossSite(problem).into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The first value of `name` in an `application/x-www-form-urlencoded`
/// body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            axum::http::HeaderValue::from_static("a=1; portcullis_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, "portcullis_session").as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        assert_ne!(csrf_token("xyz"), csrf_token("xyw"));
        assert_eq!(csrf_token("xyz").len(), 64);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert_eq!(
            form_field(b"comment=a+b&csrf=t%3D1", "csrf").as_deref(),
            Some("t=1")
        );
    }
}
