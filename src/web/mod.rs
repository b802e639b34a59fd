//! The web console for reviewers and approvers (issue 17): axum serving
//! server-rendered askama pages (auto-escaped at compile time), behind an
//! OpenID Connect login (authorization code flow with PKCE, through the
//! gateway's own issuers and ID-token validator).
//!
//! Owns the console's HTTP side only: login and console sessions
//! ([`auth`], [`login`]), the pages ([`sessions`], [`requests`],
//! [`audit_page`], [`audit_report`], [`containers`], [`locks`]), the SSH login page
//! ([`ssh_login`]) and the static assets ([`assets`]). It never decides
//! access itself (every page is a Cedar decision through
//! [`crate::policy`]) and never acts itself: every action (approve, deny,
//! revoke, review, kill, lock) is the broker command an SSH user would run
//! ([`crate::commands`], through [`broker`]), which decides, audits and
//! acts. It never imports `ssh`. Terminal output is never turned into
//! HTML: only the vendored asciinema-player renders it, in the browser.
//!
//! # Layout
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | [`Console`], [`start`], the router, [`WebError`] |
//! | `auth.rs` | cookies, the console session, CSRF and `Origin` checks, fresh logins |
//! | `login.rs` | `/login`, `/auth/callback`, `/logout` |
//! | `limits.rs` | rate limits on logins and actions |
//! | `assets.rs` | embedded static files and the security headers |
//! | `sessions.rs`, `live.rs` | session lists, search, the player page, downloads, live watching, kill |
//! | `requests.rs` | access requests, grants, break-glass reviews |
//! | `locks.rs` | locks: list, add, remove |
//! | `broker.rs` | running a broker command ([`crate::commands`]) for the logged-in principal |
//! | `audit_page.rs`, `containers.rs` | the audit log and its verification; the inventory |
//! | `audit_report.rs` | the auditor's report of a period: its summary, its downloads |
//! | `ssh_login.rs` | the SSH login page `/l/CODE` and its library API |
//! | `tls.rs` | the TLS listener |

mod assets;
mod audit_page;
mod audit_report;
mod auth;
mod broker;
mod containers;
mod limits;
mod live;
mod locks;
mod login;
mod requests;
mod sessions;
pub mod ssh_login;
mod tls;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::config::{Config, WebConfig};
use crate::gateway::Gateway;
use crate::identity::Issuers;
use crate::inventory::Inventory;
use crate::policy::PolicyEngine;
use crate::store::{Store, StoreError};

/// What the console needs from the gateway, handed over once at start.
pub struct ConsoleParts {
    /// The configuration (its `[web]` section must be present).
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// The audit log.
    pub audit: AuditLog,
    /// The OpenID Connect issuers.
    pub issuers: Arc<Issuers>,
    /// The loaded policies.
    pub policy: PolicyEngine,
    /// The container inventory.
    pub inventory: Inventory,
    /// The gateway, for the broker commands the console's actions run
    /// ([`crate::commands::execute`], as `ssh portcullis@gw` does).
    pub gateway: Arc<Gateway>,
}

/// The console's shared state: the services it needs, nothing of `ssh`.
pub struct Console {
    pub(crate) config: Arc<Config>,
    pub(crate) web: WebConfig,
    pub(crate) store: Store,
    pub(crate) audit: AuditLog,
    pub(crate) issuers: Arc<Issuers>,
    pub(crate) policy: PolicyEngine,
    pub(crate) inventory: Inventory,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) limits: limits::RateLimits,
}

/// A failed console step. Users see [`WebError::public_message`] and a
/// status; the log gets the full reason.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// `[web]` is missing from the configuration.
    #[error("the [web] section is not configured")]
    NotConfigured,
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The database failed (fail closed).
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The audit event could not be written, so the step did not happen.
    #[error("audit log: {0}")]
    Audit(#[source] StoreError),
    /// The issuer could not be reached or refused the login.
    #[error("login: {0}")]
    Login(String),
    /// A page or recording could not be read or rendered.
    #[error("cannot render: {0}")]
    Render(String),
    /// No such page, session, request or login.
    #[error("not found")]
    NotFound,
    /// Not logged in (or the console login ended).
    #[error("not logged in")]
    LoggedOut,
    /// The policy does not allow it; the text says what.
    #[error("refused: {0}")]
    Refused(String),
    /// A broker command said no (the policy, the state of what it acts
    /// on, the database or the audit log); the text is its one line,
    /// already audited by the command.
    #[error("{0}")]
    CommandRefused(String),
    /// A state-changing request without a valid CSRF token or `Origin`.
    #[error("cross-site request refused: {0}")]
    CrossSite(String),
    /// The input is not acceptable; the text says why.
    #[error("{0}")]
    BadRequest(String),
    /// Too many logins or actions in a short time.
    #[error("too many requests")]
    RateLimited,
}

impl WebError {
    /// The status and the message shown in the browser: internals hidden.
    pub fn public_message(&self) -> (StatusCode, String) {
        match self {
            WebError::NotFound => (StatusCode::NOT_FOUND, "Not found.".into()),
            WebError::LoggedOut => (
                StatusCode::UNAUTHORIZED,
                "Your console login has ended; log in again.".into(),
            ),
            WebError::Refused(what) => (
                StatusCode::FORBIDDEN,
                format!("Refused: the policy does not allow you to {what}."),
            ),
            WebError::CrossSite(_) => (
                StatusCode::FORBIDDEN,
                "Refused: this request did not come from a console page (CSRF check).".into(),
            ),
            WebError::CommandRefused(m) => (StatusCode::FORBIDDEN, capitalised(m)),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            WebError::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests; wait a minute and try again.".into(),
            ),
            WebError::Login(_) => (
                StatusCode::BAD_GATEWAY,
                "Login failed: the identity provider refused or could not be reached; try again."
                    .into(),
            ),
            WebError::Store(_) | WebError::Audit(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway cannot reach its database or audit log right now; nothing was done."
                    .into(),
            ),
            WebError::NotConfigured
            | WebError::Bind { .. }
            | WebError::Tls(_)
            | WebError::Render(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The console failed; see the gateway's log.".into(),
            ),
        }
    }
}

/// `text` with its first letter upper-case.
fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = self.public_message();
        if status.is_server_error() {
            tracing::error!(error = %self, "web console error");
        } else {
            tracing::info!(error = %self, "web console refusal");
        }
        views::error_page(status, &message)
    }
}

impl Console {
    /// The console state from `parts`.
    ///
    /// # Errors
    /// [`WebError::NotConfigured`] without a `[web]` section.
    pub fn new(parts: ConsoleParts) -> Result<Arc<Console>, WebError> {
        let web = parts.config.web.clone().ok_or(WebError::NotConfigured)?;
        Ok(Arc::new(Console {
            limits: limits::RateLimits::new(web.login_per_minute, web.actions_per_minute),
            web,
            config: parts.config,
            store: parts.store,
            audit: parts.audit,
            issuers: parts.issuers,
            policy: parts.policy,
            inventory: parts.inventory,
            gateway: parts.gateway,
        }))
    }
}

/// Every route of the console on `console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(sessions::home))
        .route("/login", get(login::start))
        .route("/auth/callback", get(login::callback))
        .route("/logout", post(login::logout))
        .route("/static/{file}", get(assets::serve))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{id}", get(sessions::page_handler))
        .route("/sessions/{id}/cast", get(sessions::cast))
        .route("/sessions/{id}/txt", get(sessions::text))
        .route("/sessions/{id}/live", get(live::stream))
        .route("/sessions/{id}/kill", post(live::kill))
        .route("/requests", get(requests::list))
        .route("/requests/{id}", get(requests::page_handler))
        .route("/requests/{id}/approve", post(requests::approve))
        .route("/requests/{id}/deny", post(requests::deny))
        .route("/requests/{id}/revoke", post(requests::revoke))
        .route("/requests/{id}/review", post(requests::review))
        .route("/locks", get(locks::list))
        .route("/locks/add", post(locks::add))
        .route("/locks/{id}/remove", post(locks::remove))
        .route("/audit", get(audit_page::list))
        .route("/audit/verify", post(audit_page::verify))
        .route("/audit/report", get(audit_report::show))
        .route("/audit/report/download", get(audit_report::download))
        .route("/containers", get(containers::list))
        .route("/l/{code}", get(ssh_login::page_handler))
        .route("/l/{code}/start", post(ssh_login::start))
        .route("/l/{code}/confirm", post(ssh_login::confirm))
        .route("/l/{code}/refuse", post(ssh_login::refuse))
        .fallback(|| async { WebError::NotFound })
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::cross_site_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            assets::security_headers,
        ))
        .with_state(console)
}

/// Starts the console on `[web] listen` (TLS when `tls_cert`/`tls_key`
/// are set) until `shutdown` is cancelled, with a task that purges ended
/// console logins every minute. Returns once the address is bound.
///
/// # Errors
/// [`WebError::NotConfigured`], [`WebError::Bind`] or [`WebError::Tls`]:
/// the gateway must not start half-configured.
pub async fn start(
    parts: ConsoleParts,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, WebError> {
    let console = Console::new(parts)?;
    let web = console.web.clone();
    let listener = tokio::net::TcpListener::bind(web.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: web.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| WebError::Bind {
        addr: web.listen,
        source,
    })?;
    let acceptor = match (&web.tls_cert, &web.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    tokio::spawn(purge(console.clone(), shutdown.clone()));
    let app = router(console).into_make_service_with_connect_info::<tls::Peer>();
    tracing::info!(listen = %local, url = %web.public_url(), tls = acceptor.is_some(), "web console listening");
    let task = tokio::spawn(async move {
        let stop = shutdown.clone();
        let result = match acceptor {
            Some(acceptor) => {
                axum::serve(
                    tls::TlsListener::new(listener, acceptor, shutdown.clone()),
                    app,
                )
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "web console stopped");
        }
    });
    Ok(task)
}

/// Every minute until shutdown: deletes ended console logins, login
/// states and SSH logins.
async fn purge(console: Arc<Console>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = console.store.purge_web_console(crate::store::now_ms()).await {
                    tracing::warn!(error = %e, "cannot purge ended console logins");
                }
                console.limits.forget_old();
            }
        }
    }
}
