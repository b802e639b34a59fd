//! The OAuth 2.0 device authorization grant (RFC 8628): ask the issuer for
//! a user code (§3.1-3.2), show it, and poll the token endpoint (§3.4-3.5)
//! honouring `interval` and `slow_down` until the user logs in, refuses, or
//! the code expires.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::IdentityError;
use super::oidc::{LoginTokens, MAX_DOCUMENT_BYTES, OidcIssuer, TokenSource, read_limited};
use crate::config::Secret;

/// RFC 8628 §3.4 grant type.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628 §3.2: default polling interval when the issuer gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// RFC 8628 §3.5: `slow_down` adds 5 seconds to the interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// Longest accepted `expires_in`, whatever the issuer says.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(30 * 60);

/// What the issuer answered at the device authorization endpoint.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// Secret code the gateway polls with; never shown.
    device_code: String,
    /// Code the user types at the verification page.
    pub user_code: String,
    /// Page where the user logs in and types [`Self::user_code`].
    pub verification_uri: String,
    /// Page with the code already filled in: only when the issuer gives
    /// one *and* `auth.device_flow_complete_uri` is true. A one-click link
    /// is what a remote phisher forwards to a victim (RFC 8628 §5.4), so
    /// by default the user must type the code.
    pub verification_uri_complete: Option<String>,
    /// When the codes stop working.
    pub expires_at: Instant,
    /// How long the codes were valid when issued (`expires_in`, capped at
    /// 30 min).
    pub valid_for: Duration,
    /// Polling interval at the start.
    pub interval: Duration,
}

impl DeviceAuthorization {
    /// The URL to show: `verification_uri_complete` when given (config
    /// opted in), else `verification_uri`.
    pub fn url_to_show(&self) -> &str {
        self.verification_uri_complete
            .as_deref()
            .unwrap_or(&self.verification_uri)
    }
}

#[derive(Debug, Deserialize)]
struct DeviceAuthorizationResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// RFC 6749 §6 grant type.
const REFRESH_GRANT: &str = "refresh_token";

/// A failed device-flow step.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFlowError {
    /// The issuer advertises no device authorization endpoint.
    #[error("the issuer has no device_authorization_endpoint")]
    Unsupported,
    /// The issuer could not be reached or answered nonsense.
    #[error("device flow request failed: {0}")]
    Request(String),
    /// The user did not finish before the code expired.
    #[error("the device code expired")]
    Expired,
    /// The user refused at the issuer.
    #[error("the user denied the login")]
    Denied,
    /// The token response held no ID token.
    #[error("the token response has no id_token")]
    NoIdToken,
    /// The issuer refused the device code (`invalid_grant`, RFC 6749
    /// §5.2): already used (a replay), unknown, or for another client.
    #[error("the issuer refused the device code: {0}")]
    CodeRefused(String),
    /// The issuer refused the refresh token (RFC 6749 §5.2): the login at
    /// the issuer ended (revoked, expired, account disabled).
    #[error("the issuer refused the refresh token: {0}")]
    RefreshRefused(String),
}

impl DeviceFlowError {
    /// One line for the SSH user.
    pub fn user_message(&self) -> String {
        match self {
            DeviceFlowError::Unsupported => {
                "Login failed: the identity provider does not offer browser login; paste a token instead."
                    .into()
            }
            DeviceFlowError::Request(_) => {
                "Login failed: the identity provider cannot be reached; try again later.".into()
            }
            DeviceFlowError::Expired => {
                "Login failed: the login code expired before the browser login finished; connect again."
                    .into()
            }
            DeviceFlowError::Denied => "Login failed: the login was refused in the browser.".into(),
            DeviceFlowError::NoIdToken => {
                "Login failed: the identity provider returned no ID token.".into()
            }
            DeviceFlowError::CodeRefused(_) => {
                "Login failed: the identity provider refused the login code (already used or \
                 unknown); connect again."
                    .into()
            }
            DeviceFlowError::RefreshRefused(_) => {
                "Login failed: your login at the identity provider has ended; log in again.".into()
            }
        }
    }
}

impl OidcIssuer {
    /// Starts a device authorization (RFC 8628 §3.1).
    ///
    /// # Errors
    /// [`DeviceFlowError`] (wrapped) when the issuer has no endpoint or fails.
    pub async fn start_device_authorization(&self) -> Result<DeviceAuthorization, IdentityError> {
        let discovery = self.discovery().await?;
        let endpoint = discovery
            .device_authorization_endpoint
            .ok_or(DeviceFlowError::Unsupported)?;
        let mut form = vec![
            ("client_id", self.config.client_id.clone()),
            ("scope", self.config.scopes.clone()),
        ];
        if let Some(secret) = &self.config.client_secret {
            form.push(("client_secret", secret.expose().to_string()));
        }
        let response = self
            .http
            .post(&endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| DeviceFlowError::Request(e.to_string()))?;
        let status = response.status();
        let body = read_limited(response, MAX_DOCUMENT_BYTES)
            .await
            .map_err(DeviceFlowError::Request)?;
        if !status.is_success() {
            return Err(DeviceFlowError::Request(format!(
                "HTTP {status}: {}",
                crate::audit::truncate(&String::from_utf8_lossy(&body), 200)
            ))
            .into());
        }
        let r: DeviceAuthorizationResponse =
            serde_json::from_slice(&body).map_err(|e| DeviceFlowError::Request(e.to_string()))?;
        // Shown in the user's terminal: nothing hidden, nothing long.
        for (what, text) in [
            ("user_code", &r.user_code),
            ("verification_uri", &r.verification_uri),
        ] {
            if text.is_empty() || text.len() > 512 || !crate::text::is_visible(text) {
                return Err(DeviceFlowError::Request(format!(
                    "{what} is empty, too long or holds hidden characters"
                ))
                .into());
            }
        }
        let verification_uri_complete = r
            .verification_uri_complete
            .filter(|_| self.settings.complete_uri)
            .filter(|u| u.len() <= 512 && crate::text::is_visible(u));
        let expires_in = Duration::from_secs(r.expires_in).min(MAX_EXPIRES_IN);
        Ok(DeviceAuthorization {
            device_code: r.device_code,
            user_code: r.user_code,
            verification_uri: r.verification_uri,
            verification_uri_complete,
            expires_at: Instant::now() + expires_in,
            valid_for: expires_in,
            interval: r
                .interval
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_INTERVAL)
                .max(Duration::from_secs(1)),
        })
    }

    /// Polls the token endpoint (RFC 8628 §3.4) until the user finishes,
    /// then validates the ID token. Waits `interval` between polls, adds 5 s
    /// on `slow_down`, stops at `expires_at`.
    ///
    /// # Errors
    /// [`DeviceFlowError::Expired`], [`DeviceFlowError::Denied`],
    /// [`DeviceFlowError::CodeRefused`] (e.g. a replayed device code),
    /// request failures, or the ID token's validation error.
    pub async fn poll_device_token(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<LoginTokens, IdentityError> {
        let discovery = self.discovery().await?;
        let mut interval = authorization.interval;
        loop {
            let next = Instant::now() + interval;
            if next >= authorization.expires_at {
                return Err(DeviceFlowError::Expired.into());
            }
            tokio::time::sleep_until(next).await;
            let mut form = vec![
                ("grant_type", DEVICE_CODE_GRANT.to_string()),
                ("device_code", authorization.device_code.clone()),
                ("client_id", self.config.client_id.clone()),
            ];
            if let Some(secret) = &self.config.client_secret {
                form.push(("client_secret", secret.expose().to_string()));
            }
            let response = self
                .http
                .post(&discovery.token_endpoint)
                .form(&form)
                .send()
                .await
                .map_err(|e| DeviceFlowError::Request(e.to_string()))?;
            let body = read_limited(response, MAX_DOCUMENT_BYTES)
                .await
                .map_err(DeviceFlowError::Request)?;
            let r: TokenResponse = serde_json::from_slice(&body)
                .map_err(|e| DeviceFlowError::Request(e.to_string()))?;
            match r.error.as_deref() {
                None => return self.tokens_from(r, TokenSource::DeviceFlow).await,
                Some("authorization_pending") => {}
                Some("slow_down") => interval += SLOW_DOWN_STEP,
                Some("access_denied") => return Err(DeviceFlowError::Denied.into()),
                Some("expired_token") => return Err(DeviceFlowError::Expired.into()),
                Some("invalid_grant") => {
                    return Err(DeviceFlowError::CodeRefused("invalid_grant".into()).into());
                }
                Some(other) => {
                    return Err(DeviceFlowError::Request(format!(
                        "token endpoint error {}",
                        crate::audit::truncate(other, 100)
                    ))
                    .into());
                }
            }
        }
    }
}

impl OidcIssuer {
    async fn tokens_from(
        &self,
        r: TokenResponse,
        source: TokenSource,
    ) -> Result<LoginTokens, IdentityError> {
        let token = r.id_token.ok_or(DeviceFlowError::NoIdToken)?;
        let mut id_token = self.validate_id_token(&token).await?;
        id_token.obtained_by = source;
        Ok(LoginTokens {
            id_token,
            refresh_token: r.refresh_token.map(Secret::new),
        })
    }

    /// Uses a refresh token (RFC 6749 §6; OpenID Connect Core 1.0 §12) to
    /// get a fresh ID token, which is validated like any other; the issuer
    /// may rotate the refresh token (then the new one is returned).
    ///
    /// # Errors
    /// [`DeviceFlowError::RefreshRefused`] when the issuer refuses it (the
    /// binding must end); [`DeviceFlowError::Request`] /
    /// [`IdentityError::Discovery`] when it cannot be asked (try later);
    /// the new ID token's validation error.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<LoginTokens, IdentityError> {
        let discovery = self.discovery().await?;
        let mut form = vec![
            ("grant_type", REFRESH_GRANT.to_string()),
            ("refresh_token", refresh_token.expose().to_string()),
            ("client_id", self.config.client_id.clone()),
        ];
        if let Some(secret) = &self.config.client_secret {
            form.push(("client_secret", secret.expose().to_string()));
        }
        let response = self
            .http
            .post(&discovery.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| DeviceFlowError::Request(e.to_string()))?;
        let status = response.status();
        let body = read_limited(response, MAX_DOCUMENT_BYTES)
            .await
            .map_err(DeviceFlowError::Request)?;
        let r: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| DeviceFlowError::Request(format!("HTTP {status}: {e}")))?;
        match r.error.as_deref() {
            None if status.is_success() => {
                let mut tokens = self.tokens_from(r, TokenSource::Refresh).await?;
                if tokens.refresh_token.is_none() {
                    tokens.refresh_token = Some(refresh_token.clone());
                }
                Ok(tokens)
            }
            Some(e @ ("invalid_grant" | "unauthorized_client" | "invalid_client")) => {
                Err(DeviceFlowError::RefreshRefused(e.to_string()).into())
            }
            other => Err(DeviceFlowError::Request(format!(
                "HTTP {status}, error {}",
                crate::audit::truncate(other.unwrap_or("-"), 100)
            ))
            .into()),
        }
    }
}
