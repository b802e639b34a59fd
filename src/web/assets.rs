//! The console's static files, embedded in the binary at build time
//! (`assets/`, see its README for their origin and pinned digests), and
//! the security headers of every response: a strict Content-Security-Policy
//! (scripts and styles only from the console itself, no inline script, no
//! other origin; `'wasm-unsafe-eval'` because the player's terminal
//! emulator is WebAssembly), no framing, no sniffing, no referrer leaks,
//! and HSTS over https.
//!
//! Serves nothing from the file system at run time.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Console, WebError};

/// The Content-Security-Policy of every response.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; \
     font-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// `(name, content type, bytes)` of every static file.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "asciinema-player-3.17.0.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/asciinema-player-3.17.0.min.js"),
    ),
    (
        "asciinema-player-3.17.0.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/asciinema-player-3.17.0.css"),
    ),
    (
        "asciinema-player-LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/asciinema-player-LICENSE"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/console.css"),
    ),
];

/// `GET /static/{file}`: one embedded file, cacheable for a day.
pub(crate) async fn serve(Path(file): Path<String>) -> Result<Response, WebError> {
    let (_, content_type, bytes) = FILES
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or(WebError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        *bytes,
    )
        .into_response())
}

/// Adds the security headers to every response; pages are not cached.
pub(crate) async fn security_headers(
    State(console): State<Arc<Console>>,
    request: Request,
    next: Next,
) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let https = console.web.secure_cookies();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    if !is_static && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
