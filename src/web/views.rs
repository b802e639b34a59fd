//! Rendering: the askama templates shared by every page (layout, errors,
//! messages), and the small formatting the templates use. Templates live in
//! `templates/` and are compiled and auto-escaped at build time; a value is
//! never written into HTML without escaping, and terminal output never is.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::WebError;
use super::auth::Viewer;

/// What the layout shows of the logged-in principal.
#[derive(Debug, Clone)]
pub(crate) struct Nav {
    /// Principal subject (and email).
    pub principal: String,
    /// CSRF token for the logout form.
    pub csrf: String,
}

impl Nav {
    /// The layout's view of `viewer`.
    pub(crate) fn of(viewer: &Viewer) -> Option<Nav> {
        let principal = match &viewer.principal.email {
            Some(email) => format!("{} ({email})", viewer.principal.subject),
            None => viewer.principal.subject.clone(),
        };
        Some(Nav {
            principal,
            csrf: viewer.csrf.clone(),
        })
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    nav: Option<Nav>,
    status: String,
    message: &'a str,
}

#[derive(Template)]
#[template(path = "continue.html")]
struct ContinuePage<'a> {
    to: &'a str,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    nav: Option<Nav>,
    heading: &'a str,
    message: &'a str,
    link: Option<(String, String)>,
}

/// Renders `template` as a 200 page.
pub(crate) fn page(template: &impl Template) -> Result<Response, WebError> {
    template
        .render()
        .map(|html| Html(html).into_response())
        .map_err(|e| WebError::Render(e.to_string()))
}

/// The error page for `status` with `message` (already safe to show).
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        nav: None,
        status: status.to_string(),
        message,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, message.to_string()).into_response(),
    }
}

/// After a login: a page that goes on to `to` (a local path) by itself,
/// without script (a meta refresh), or by its link.
pub(crate) fn continue_page(to: &str) -> Response {
    match (ContinuePage { to }).render() {
        Ok(html) => Html(html).into_response(),
        Err(_) => (StatusCode::OK, "Logged in.").into_response(),
    }
}

/// A page with a heading, a message and an optional link.
pub(crate) fn message_page(
    nav: Option<Nav>,
    heading: &str,
    message: &str,
    link: Option<(String, String)>,
) -> Result<Response, WebError> {
    page(&MessagePage {
        nav,
        heading,
        message,
        link,
    })
}

/// After logout.
pub(crate) fn logged_out_page() -> Response {
    message_page(
        None,
        "Logged out",
        "Your console login has ended.",
        Some(("/login".into(), "Log in again".into())),
    )
    .unwrap_or_else(IntoResponse::into_response)
}

/// The page asking for a fresh login before an action: the action is not
/// done; the link logs in again and comes back to `back`.
pub(crate) fn fresh_login_page(viewer: &Viewer, back: &str) -> Result<Response, WebError> {
    let query = serde_urlencoded::to_string([("fresh", "1"), ("return_to", back)])
        .map_err(|e| WebError::Render(e.to_string()))?;
    let mut response = message_page(
        Nav::of(viewer),
        "Log in again to confirm",
        "This action needs a recent login at your identity provider. Nothing was done yet: log \
         in again, then repeat it.",
        Some((format!("/login?{query}"), "Log in again".into())),
    )?;
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    Ok(response)
}

/// `ms` (unix milliseconds) as `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn format_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A duration in seconds as people write it (`1h 30m`), `-` when negative.
pub(crate) fn format_seconds(seconds: i64) -> String {
    if seconds < 0 {
        return "-".into();
    }
    humantime::format_duration(std::time::Duration::from_secs(seconds.unsigned_abs())).to_string()
}

/// RFC 3339 time, a date (`2026-12-01`) or an age (`2h`, before now), as
/// unix milliseconds; `None` for an empty field.
///
/// # Errors
/// [`WebError::BadRequest`] naming the field.
pub(crate) fn parse_time(field: &str, text: &str) -> Result<Option<i64>, WebError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(age) = humantime::parse_duration(text) {
        let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        return Ok(Some(crate::store::now_ms().saturating_sub(ms)));
    }
    let rfc3339 = time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &rfc3339) {
        return Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64));
    }
    let date = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(text, &date) {
        return Ok(Some(d.midnight().assume_utc().unix_timestamp() * 1000));
    }
    Err(WebError::BadRequest(format!(
        "{field}: {:?} is neither a time (2026-12-01T08:00:00Z), a date (2026-12-01) nor an age \
         (2h)",
        crate::audit::truncate(text, 64)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(format_time(1000), "1970-01-01 00:00:01");
        assert_eq!(format_seconds(5400), "1h 30m");
        assert_eq!(format_seconds(-1), "-");
        assert_eq!(parse_time("since", "").ok(), Some(None));
        assert_eq!(
            parse_time("since", "1970-01-02").ok(),
            Some(Some(86_400_000))
        );
        assert_eq!(
            parse_time("since", "1970-01-01T00:00:01Z").ok(),
            Some(Some(1000))
        );
        assert!(parse_time("since", "yesterday").is_err());
    }
}
