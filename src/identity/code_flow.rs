//! The OAuth 2.0 authorization code flow (RFC 6749 §4.1) with PKCE (RFC
//! 7636, `S256`) for browser logins (the web console, issue 17): the
//! authorization URL with `state`, `nonce`, and for a fresh login
//! `prompt=login` and `max_age` (OpenID Connect Core 1.0 §3.1.2.1), and
//! the exchange of the code at the token endpoint (§3.1.3).
//!
//! The ID token is validated by [`OidcIssuer::validate_id_token`], the
//! same validator every other login uses; this file only adds what the
//! code flow needs on top: the `nonce` must be the one sent, and
//! `auth_time` is read for fresh-login checks. It never keeps tokens.

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::device::DeviceFlowError;
use super::oidc::{LoginTokens, MAX_DOCUMENT_BYTES, OidcIssuer, read_limited};
use super::{IdentityError, VerifiedIdToken};
use crate::config::Secret;

/// What the browser is sent to the issuer with.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    /// The URL of the issuer's authorization endpoint with every parameter.
    pub url: String,
}

/// What [`OidcIssuer::authorization_request`] needs.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizationParams<'a> {
    /// Where the issuer sends the browser back (registered at the issuer).
    pub redirect_uri: &'a str,
    /// Opaque value checked at the callback (CSRF of the login itself).
    pub state: &'a str,
    /// Value the ID token must carry back (replay protection).
    pub nonce: &'a str,
    /// PKCE `code_verifier`; only its S256 challenge is sent here.
    pub code_verifier: &'a str,
    /// Ask for a new login at the issuer (`prompt=login`, `max_age=0`).
    pub fresh: bool,
}

/// A code-flow login: the validated ID token and what it says about the
/// login itself.
#[derive(Debug, Clone)]
pub struct CodeLogin {
    /// The ID token, validated, and the refresh token when given.
    pub tokens: LoginTokens,
    /// The ID token as issued (for a hand-over that validates it again).
    pub raw_id_token: Secret,
    /// `auth_time` (unix ms) when present, else `iat`.
    pub auth_time_ms: Option<i64>,
}

#[derive(Deserialize)]
struct AuthorizationDiscovery {
    authorization_endpoint: String,
}

#[derive(Deserialize)]
struct CodeTokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The PKCE `S256` code challenge of `verifier` (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl OidcIssuer {
    /// The clock leeway configured for this issuer (`leeway`).
    pub fn leeway(&self) -> std::time::Duration {
        self.config.leeway
    }

    /// The authorization URL for a browser login (OpenID Connect Core 1.0
    /// §3.1.2.1): `response_type=code`, this issuer's `client_id` and
    /// `scopes`, `state`, `nonce`, the PKCE S256 challenge, and for a fresh
    /// login `prompt=login&max_age=0`.
    ///
    /// # Errors
    /// [`IdentityError::Discovery`] when the discovery document cannot be
    /// fetched or names no `authorization_endpoint`.
    pub async fn authorization_request(
        &self,
        params: &AuthorizationParams<'_>,
    ) -> Result<AuthorizationRequest, IdentityError> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer_url());
        let body = self
            .get_limited(&url)
            .await
            .map_err(IdentityError::Discovery)?;
        let doc: AuthorizationDiscovery = serde_json::from_slice(&body)
            .map_err(|e| IdentityError::Discovery(format!("{url}: {e}")))?;
        let mut endpoint = reqwest::Url::parse(&doc.authorization_endpoint).map_err(|e| {
            IdentityError::Discovery(format!("authorization_endpoint is not a URL: {e}"))
        })?;
        {
            let mut query = endpoint.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", params.redirect_uri)
                .append_pair("scope", &self.config.scopes)
                .append_pair("state", params.state)
                .append_pair("nonce", params.nonce)
                .append_pair("code_challenge", &pkce_challenge(params.code_verifier))
                .append_pair("code_challenge_method", "S256");
            if params.fresh {
                query
                    .append_pair("prompt", "login")
                    .append_pair("max_age", "0");
            }
        }
        Ok(AuthorizationRequest {
            url: endpoint.to_string(),
        })
    }

    /// Exchanges an authorization `code` at the token endpoint (RFC 6749
    /// §4.1.3, with the PKCE `code_verifier`), validates the ID token with
    /// [`OidcIssuer::validate_id_token`] and checks that its `nonce` is
    /// `nonce`. `client_secret` overrides the issuer's own.
    ///
    /// # Errors
    /// [`DeviceFlowError::CodeRefused`] when the issuer refuses the code,
    /// [`DeviceFlowError::Request`] when it cannot be asked,
    /// [`DeviceFlowError::NoIdToken`], the ID token's validation error, or
    /// [`IdentityError::Claims`] for a missing or different `nonce`.
    pub async fn exchange_code(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
        nonce: &str,
        client_secret: Option<&Secret>,
    ) -> Result<CodeLogin, IdentityError> {
        let discovery = self.discovery().await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", redirect_uri.to_string()),
            ("client_id", self.config.client_id.clone()),
            ("code_verifier", code_verifier.to_string()),
        ];
        if let Some(secret) = client_secret.or(self.config.client_secret.as_ref()) {
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
        let r: CodeTokenResponse = serde_json::from_slice(&body)
            .map_err(|e| DeviceFlowError::Request(format!("HTTP {status}: {e}")))?;
        if let Some(error) = r.error {
            return Err(DeviceFlowError::CodeRefused(crate::audit::truncate(&error, 100)).into());
        }
        let raw = r.id_token.ok_or(DeviceFlowError::NoIdToken)?;
        let id_token = self.validate_id_token(&raw).await?;
        let claims = verified_claims(&raw)?;
        match claims.get("nonce") {
            Some(serde_json::Value::String(n)) if n == nonce => {}
            Some(_) => return Err(IdentityError::Claims("nonce does not match".into())),
            None => return Err(IdentityError::Claims("the ID token has no nonce".into())),
        }
        let auth_time_ms = ["auth_time", "iat"]
            .iter()
            .find_map(|k| claims.get(*k).and_then(serde_json::Value::as_f64))
            .map(|s| (s * 1000.0) as i64);
        Ok(CodeLogin {
            tokens: LoginTokens {
                id_token,
                refresh_token: r.refresh_token.map(Secret::new),
            },
            raw_id_token: Secret::new(raw),
            auth_time_ms,
        })
    }

    /// Validates `token` as [`OidcIssuer::validate_id_token`] does and
    /// also requires its `nonce` to be `nonce` (a hand-over from another
    /// gateway validates again with its own keys).
    ///
    /// # Errors
    /// The validation error, or [`IdentityError::Claims`] for the nonce.
    pub async fn validate_id_token_with_nonce(
        &self,
        token: &str,
        nonce: &str,
    ) -> Result<VerifiedIdToken, IdentityError> {
        let verified = self.validate_id_token(token).await?;
        match verified_claims(token)?.get("nonce") {
            Some(serde_json::Value::String(n)) if n == nonce => Ok(verified),
            _ => Err(IdentityError::Claims("nonce does not match".into())),
        }
    }
}

/// The claims of a token that [`OidcIssuer::validate_id_token`] has just
/// accepted (its signature is checked, so its payload can be read).
fn verified_claims(
    token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, IdentityError> {
    let payload = token
        .trim()
        .split('.')
        .nth(1)
        .ok_or_else(|| IdentityError::Malformed("no payload".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| IdentityError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_example() {
        // RFC 7636 Appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
