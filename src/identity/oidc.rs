//! One OpenID Connect issuer: discovery (OpenID Connect Discovery 1.0 §4),
//! its JWKS (RFC 7517) and ID-token validation (OpenID Connect Core 1.0
//! §3.1.3.7) with jsonwebtoken.

use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::{IdentityError, OPENSSH_MAX_PROMPT_BYTES, Principal};
use crate::config::OidcConfig;

/// Least time between two JWKS fetches caused by unknown `kid`s, so bad
/// tokens cannot make the gateway hammer the issuer.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Largest accepted token, in bytes (a JWT is rarely above 4 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Largest accepted discovery or JWKS document, in bytes.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The parts of the discovery document we use.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: String,
    pub device_authorization_endpoint: Option<String>,
}

/// An issuer with its cached discovery document and JWKS.
#[derive(Debug)]
pub struct OidcIssuer {
    pub(crate) config: OidcConfig,
    pub(crate) http: reqwest::Client,
    discovery: RwLock<Option<Discovery>>,
    jwks: RwLock<Option<JwkSet>>,
    last_jwks_fetch: Mutex<Option<Instant>>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl OidcIssuer {
    /// An issuer for `config`; nothing is fetched until first use.
    ///
    /// # Errors
    /// [`IdentityError::Discovery`] when the HTTP client cannot be built.
    pub fn new(config: &OidcConfig) -> Result<OidcIssuer, IdentityError> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| IdentityError::Discovery(e.to_string()))?;
        Ok(OidcIssuer {
            config: config.clone(),
            http,
            discovery: RwLock::new(None),
            jwks: RwLock::new(None),
            last_jwks_fetch: Mutex::new(None),
        })
    }

    /// The issuer URL as configured, without a trailing `/`.
    pub fn issuer_url(&self) -> &str {
        self.config.issuer.trim_end_matches('/')
    }

    /// The discovery document, fetched once and cached.
    pub(crate) async fn discovery(&self) -> Result<Discovery, IdentityError> {
        if let Some(d) = self.discovery.read().await.as_ref() {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer_url());
        let body = self
            .get_limited(&url)
            .await
            .map_err(IdentityError::Discovery)?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| IdentityError::Discovery(format!("{url}: {e}")))?;
        if doc.issuer.trim_end_matches('/') != self.issuer_url() {
            return Err(IdentityError::Discovery(format!(
                "discovery document names issuer {:?}, expected {:?}",
                doc.issuer,
                self.issuer_url()
            )));
        }
        *self.discovery.write().await = Some(doc.clone());
        Ok(doc)
    }

    /// GETs `url` with a size limit; the error is a one-line reason.
    pub(crate) async fn get_limited(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        read_limited(response, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| format!("{url}: {e}"))
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, IdentityError> {
        let discovery = self.discovery().await?;
        *self.last_jwks_fetch.lock().await = Some(Instant::now());
        let body = self
            .get_limited(&discovery.jwks_uri)
            .await
            .map_err(IdentityError::Jwks)?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| IdentityError::Jwks(e.to_string()))?;
        *self.jwks.write().await = Some(set.clone());
        Ok(set)
    }

    /// The JWKS key for `kid`: from the cache, else after one refetch (at
    /// most one per [`JWKS_REFETCH_INTERVAL`]).
    async fn key_for(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, IdentityError> {
        let cached = self.jwks.read().await.clone();
        let set = match cached {
            Some(set) => {
                if let Some(jwk) = set.find(kid) {
                    return Ok(jwk.clone());
                }
                let recently = self
                    .last_jwks_fetch
                    .lock()
                    .await
                    .is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL);
                if recently {
                    return Err(IdentityError::UnknownKey(kid.to_string()));
                }
                self.fetch_jwks().await?
            }
            None => self.fetch_jwks().await?,
        };
        set.find(kid)
            .cloned()
            .ok_or_else(|| IdentityError::UnknownKey(kid.to_string()))
    }

    /// Validates an ID token (JWT) and returns its principal.
    ///
    /// The key is the issuer's JWKS key named by the header's `kid`; the
    /// algorithm must be an asymmetric one that matches that key (never
    /// `none`, never HMAC); `iss`, `aud`, `exp`, `nbf` are checked with the
    /// configured leeway; `sub` is required.
    ///
    /// # Errors
    /// An [`IdentityError`] naming what failed.
    pub async fn validate_id_token(&self, token: &str) -> Result<Principal, IdentityError> {
        let token = token.trim();
        if token.len() >= OPENSSH_MAX_PROMPT_BYTES && token.len() <= OPENSSH_MAX_PROMPT_BYTES + 1 {
            return Err(IdentityError::TooLong(token.len()));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::Malformed(format!(
                "{} bytes is over the {MAX_TOKEN_BYTES}-byte limit",
                token.len()
            )));
        }
        if token.split('.').count() != 3 {
            return Err(IdentityError::Malformed(
                "not three dot-separated parts".into(),
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?;
        if !is_asymmetric(header.alg) {
            return Err(IdentityError::AlgorithmRefused(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| IdentityError::UnknownKey("token header has no kid".into()))?;
        let jwk = self.key_for(kid).await?;
        if let Some(key_alg) = jwk.common.key_algorithm {
            let key_alg = format!("{key_alg:?}");
            if key_alg != format!("{:?}", header.alg) {
                return Err(IdentityError::AlgorithmRefused(format!(
                    "token says {:?}, key {kid} is for {key_alg}",
                    header.alg
                )));
            }
        }
        if !key_fits(&jwk.algorithm, header.alg) {
            return Err(IdentityError::AlgorithmRefused(format!(
                "{:?} does not fit the type of key {kid}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| IdentityError::Jwks(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.issuer_url()]);
        validation.set_audience(&[self.config.expected_audience()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(map_jwt_error)?;
        principal_from(data.claims, &self.config.groups_claim)
    }
}

fn principal_from(claims: Claims, groups_claim: &str) -> Result<Principal, IdentityError> {
    if claims.sub.is_empty() || claims.sub.len() > 255 {
        return Err(IdentityError::Claims("sub must be 1 to 255 bytes".into()));
    }
    let groups = match claims.rest.get(groups_claim) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(g)) => vec![g.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    IdentityError::Claims(format!("{groups_claim} holds a non-string"))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(IdentityError::Claims(format!(
                "{groups_claim} is neither a string nor a list"
            )));
        }
    };
    Ok(Principal {
        subject: claims.sub,
        email: claims.email,
        groups,
    })
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn key_fits(key: &AlgorithmParameters, alg: Algorithm) -> bool {
    use Algorithm::*;
    match key {
        AlgorithmParameters::RSA(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, ES256 | ES384),
        AlgorithmParameters::OctetKeyPair(_) => matches!(alg, EdDSA),
        _ => false,
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> IdentityError {
    match e.kind() {
        ErrorKind::ExpiredSignature => IdentityError::Expired,
        ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer,
        ErrorKind::InvalidAudience => IdentityError::WrongAudience,
        ErrorKind::InvalidSignature => IdentityError::BadSignature,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => IdentityError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => IdentityError::Claims(format!("missing {c}")),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            IdentityError::AlgorithmRefused(e.to_string())
        }
        ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => IdentityError::Malformed(e.to_string()),
        _ => IdentityError::Claims(e.to_string()),
    }
}

/// Reads a response body of at most `limit` bytes.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("response over {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn claims(v: serde_json::Value) -> Claims {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn groups_claim_shapes() {
        let p = principal_from(
            claims(serde_json::json!({"sub":"a","groups":["x","y"]})),
            "groups",
        )
        .unwrap();
        assert_eq!(p.groups, ["x", "y"]);
        let p =
            principal_from(claims(serde_json::json!({"sub":"a","roles":"x"})), "roles").unwrap();
        assert_eq!(p.groups, ["x"]);
        let p = principal_from(claims(serde_json::json!({"sub":"a"})), "groups").unwrap();
        assert!(p.groups.is_empty());
        assert!(
            principal_from(
                claims(serde_json::json!({"sub":"a","groups":[1]})),
                "groups"
            )
            .is_err()
        );
        assert!(principal_from(claims(serde_json::json!({"sub":""})), "groups").is_err());
    }

    #[test]
    fn hmac_and_key_mismatch_are_refused() {
        assert!(!is_asymmetric(Algorithm::HS256));
        assert!(is_asymmetric(Algorithm::RS256));
        let rsa: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::json!({
            "kty":"RSA","n":"AQAB","e":"AQAB","kid":"k"
        }))
        .unwrap();
        assert!(key_fits(&rsa.algorithm, Algorithm::RS256));
        assert!(!key_fits(&rsa.algorithm, Algorithm::ES256));
        assert!(!key_fits(&rsa.algorithm, Algorithm::HS256));
    }
}
