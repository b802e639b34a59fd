//! One OpenID Connect issuer: discovery (OpenID Connect Discovery 1.0 §4),
//! its JWKS (RFC 7517) and ID-token validation (OpenID Connect Core 1.0
//! §3.1.3.7) with jsonwebtoken.

use std::time::Instant;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::claims::{self, Claims};
use super::{IdentityError, OPENSSH_MAX_PROMPT_BYTES, Principal};
use crate::config::{OidcConfig, Secret};
use crate::store::now_ms;

/// Largest accepted token, in bytes (a JWT is rarely above 4 KiB); longer
/// ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

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
    /// The cached JWKS and when it was fetched.
    jwks: RwLock<Option<(JwkSet, Instant)>>,
    /// Held during a fetch (one at a time); holds the last fetch attempt.
    last_jwks_fetch: Mutex<Option<Instant>>,
    /// What the rest of the configuration says about this issuer.
    pub(crate) settings: IssuerSettings,
}

/// Settings of an issuer that come from outside its `[oidc]` entry
/// ([`super::Issuers::from_config`] sets them).
#[derive(Debug, Clone, Default)]
pub(crate) struct IssuerSettings {
    /// `auth.device_flow_complete_uri`: pass on `verification_uri_complete`.
    pub complete_uri: bool,
    /// Other sources' principal prefixes that this issuer's names could
    /// reach (only when its own prefix is empty): subjects there are
    /// refused, groups there dropped (review finding M1).
    pub foreign_prefixes: Vec<String>,
}

/// How an ID token reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// Pasted at the keyboard-interactive prompt.
    Pasted,
    /// From the token endpoint after a device authorization (RFC 8628).
    DeviceFlow,
    /// From the token endpoint for a refresh token (RFC 6749 §6).
    Refresh,
}

/// A validated ID token.
#[derive(Debug, Clone)]
pub struct VerifiedIdToken {
    /// Who it names.
    pub principal: Principal,
    /// Its `exp`, unix milliseconds.
    pub expires_at_ms: i64,
    /// How it reached the gateway.
    pub obtained_by: TokenSource,
}

/// What a login (device flow or refresh) got from the token endpoint.
#[derive(Debug, Clone)]
pub struct LoginTokens {
    /// The validated ID token.
    pub id_token: VerifiedIdToken,
    /// The refresh token (RFC 6749 §6), when the issuer gave one: a secret.
    pub refresh_token: Option<Secret>,
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
            settings: IssuerSettings::default(),
        })
    }

    /// Fetches the discovery document and the JWKS now, so the first login
    /// does not wait for them.
    ///
    /// # Errors
    /// [`IdentityError::Discovery`] or [`IdentityError::Jwks`].
    pub async fn warm(&self) -> Result<(), IdentityError> {
        let mut last = self.last_jwks_fetch.lock().await;
        self.fetch_jwks(&mut last).await.map(|_| ())
    }

    /// An issuer with a discovery document and JWKS already cached (and a
    /// fetch just done, so unknown `kid`s are not refetched): validator
    /// tests without any HTTP.
    #[cfg(test)]
    pub(crate) async fn seeded(config: &OidcConfig, jwks: JwkSet) -> OidcIssuer {
        #[allow(clippy::unwrap_used)]
        let issuer = OidcIssuer::new(config).unwrap();
        *issuer.discovery.write().await = Some(Discovery {
            issuer: config.issuer.clone(),
            jwks_uri: "http://127.0.0.1:9/jwks".into(),
            token_endpoint: "http://127.0.0.1:9/token".into(),
            device_authorization_endpoint: None,
        });
        *issuer.jwks.write().await = Some((jwks, Instant::now()));
        *issuer.last_jwks_fetch.lock().await = Some(Instant::now());
        issuer
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

    /// Fetches the JWKS now and caches it. Callers hold `last_jwks_fetch`.
    async fn fetch_jwks(&self, last: &mut Option<Instant>) -> Result<JwkSet, IdentityError> {
        *last = Some(Instant::now());
        let discovery = self.discovery().await?;
        let body = self
            .get_limited(&discovery.jwks_uri)
            .await
            .map_err(IdentityError::Jwks)?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| IdentityError::Jwks(e.to_string()))?;
        *self.jwks.write().await = Some((set.clone(), Instant::now()));
        tracing::info!(issuer = %self.issuer_url(), keys = set.keys.len(), "JWKS fetched");
        Ok(set)
    }

    /// The JWKS key for `kid` (RFC 7517 §4.5).
    ///
    /// From the cache while it is younger than `jwks_max_age`; an unknown
    /// `kid` causes at most one refetch per `jwks_refetch_interval` (so a
    /// flood of bad tokens cannot make the gateway hammer the issuer, and a
    /// rotated key is picked up without a restart). Fetches are serialised:
    /// concurrent callers wait for the one in flight. A failed refresh of a
    /// stale cache keeps the cached keys.
    async fn key_for(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, IdentityError> {
        let cached = self.jwks.read().await.clone();
        if let Some((set, fetched)) = &cached
            && fetched.elapsed() < self.config.jwks_max_age
            && let Some(jwk) = set.find(kid)
        {
            return Ok(jwk.clone());
        }
        let mut last = self.last_jwks_fetch.lock().await;
        // Another caller may have fetched while we waited for the lock.
        let cached = self.jwks.read().await.clone();
        let stale = cached
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= self.config.jwks_max_age);
        if let Some((set, _)) = &cached
            && !stale
            && let Some(jwk) = set.find(kid)
        {
            return Ok(jwk.clone());
        }
        let recently = last.is_some_and(|t| t.elapsed() < self.config.jwks_refetch_interval);
        let set = match (&cached, recently) {
            (Some((set, _)), true) => set.clone(),
            (None, true) => {
                return Err(IdentityError::Jwks(
                    "the last JWKS fetch failed; retrying later".into(),
                ));
            }
            (_, false) => match self.fetch_jwks(&mut last).await {
                Ok(set) => set,
                Err(e) => match &cached {
                    Some((set, _)) if set.find(kid).is_some() => {
                        tracing::warn!(error = %e, "JWKS refresh failed; using the cached keys");
                        set.clone()
                    }
                    _ => return Err(e),
                },
            },
        };
        set.find(kid)
            .cloned()
            .ok_or_else(|| IdentityError::UnknownKey(kid.to_string()))
    }

    /// Validates an ID token (JWT) and returns its principal.
    ///
    /// The key is the issuer's JWKS key named by the header's `kid`; the
    /// algorithm must be an asymmetric one that matches that key (never
    /// `none`, never HMAC); `iss` must equal the discovery document's
    /// `issuer` exactly (a trailing `/`, as Auth0 has, included); `aud`,
    /// `exp`, `nbf` are checked with the configured leeway and `iat` may
    /// not be further in the future than it (OpenID Connect Core 1.0
    /// §3.1.3.7); a header `typ` of another JWT kind (`at+jwt`, ...) or a
    /// Keycloak `typ` claim other than `ID` is refused (RFC 8725 §3.11);
    /// `sub` is required, display-safe and in this issuer's namespace;
    /// `email` is kept only when `email_verified`; groups are namespaced
    /// (review finding M1).
    ///
    /// # Errors
    /// An [`IdentityError`] naming what failed.
    pub async fn validate_id_token(&self, token: &str) -> Result<VerifiedIdToken, IdentityError> {
        let token = check_shape(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?;
        claims::check_header_type(header.typ.as_deref())?;
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
        if let Err(why) = usable_for_verifying(&jwk, header.alg) {
            return Err(IdentityError::AlgorithmRefused(format!("key {kid}: {why}")));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| IdentityError::Jwks(e.to_string()))?;
        let expected_issuer = self.discovery().await?.issuer;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[expected_issuer.as_str()]);
        validation.set_audience(&[self.config.expected_audience()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(map_jwt_error)?;
        self.check_azp(&data.claims)?;
        claims::check_claim_type(&data.claims)?;
        claims::check_issued_at(&data.claims, now_ms() / 1000, self.config.leeway.as_secs())?;
        let expires_at_ms = data
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_f64)
            .map(|e| (e * 1000.0) as i64)
            .ok_or_else(|| IdentityError::Claims("exp is not a number".into()))?;
        Ok(VerifiedIdToken {
            principal: claims::principal_from(
                &data.claims,
                &self.config,
                self.issuer_url(),
                &self.settings.foreign_prefixes,
            )?,
            expires_at_ms,
            obtained_by: TokenSource::Pasted,
        })
    }

    /// OpenID Connect Core 1.0 §3.1.3.7 (4, 5): a token for several
    /// audiences must name its authorized party, and `azp`, when present,
    /// must be an allowed client.
    fn check_azp(&self, claims: &Claims) -> Result<(), IdentityError> {
        match claims.get("azp") {
            Some(serde_json::Value::String(azp)) if self.config.azp_allowed(azp) => Ok(()),
            Some(serde_json::Value::String(azp)) => Err(IdentityError::WrongAuthorizedParty(
                crate::audit::truncate(azp, 100),
            )),
            Some(_) => Err(IdentityError::Claims("azp is not a string".into())),
            None => match claims.get("aud") {
                Some(serde_json::Value::Array(a)) if a.len() > 1 => Err(
                    IdentityError::WrongAuthorizedParty("several audiences and no azp".into()),
                ),
                _ => Ok(()),
            },
        }
    }

    /// Lifetime left of a validated token, for logs: never negative.
    pub fn remaining(token: &VerifiedIdToken) -> std::time::Duration {
        std::time::Duration::from_millis((token.expires_at_ms - now_ms()).max(0) as u64)
    }
}

/// Cheap checks before any parsing: size (the 16 KiB limit and OpenSSH's
/// prompt limit) and three dot-separated parts. Returns the trimmed token.
///
/// # Errors
/// [`IdentityError::TooLong`] or [`IdentityError::Malformed`].
pub(crate) fn check_shape(token: &str) -> Result<&str, IdentityError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(IdentityError::Malformed(format!(
            "{} bytes is over the {MAX_TOKEN_BYTES}-byte limit",
            token.len()
        )));
    }
    let token = token.trim();
    if token.len() >= OPENSSH_MAX_PROMPT_BYTES && token.len() <= OPENSSH_MAX_PROMPT_BYTES + 1 {
        return Err(IdentityError::TooLong(token.len()));
    }
    if token.split('.').count() != 3 {
        return Err(IdentityError::Malformed(
            "not three dot-separated parts".into(),
        ));
    }
    Ok(token)
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

/// Whether a JWKS key may verify a signature with `alg` (found by the
/// Wycheproof JWK/JWS vectors, issue 19): a key published for encryption
/// (`use: "enc"`, RFC 7517 §4.2) or whose `key_ops` lack `verify` (§4.3)
/// never does; an EC key's curve must be the algorithm's (RFC 7518 §3.4:
/// ES256 with P-256, ES384 with P-384); an RSA modulus with the ROCA
/// fingerprint (CVE-2017-15361: factorable) is refused.
fn usable_for_verifying(jwk: &jsonwebtoken::jwk::Jwk, alg: Algorithm) -> Result<(), String> {
    use jsonwebtoken::jwk::{EllipticCurve, KeyOperations, PublicKeyUse};
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("published for another use than signatures".into());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("its key_ops do not include verify".into());
    }
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => {
            let fits = matches!(
                (alg, &p.curve),
                (Algorithm::ES256, EllipticCurve::P256) | (Algorithm::ES384, EllipticCurve::P384)
            );
            if !fits {
                return Err(format!("curve {:?} does not fit {alg:?}", p.curve));
            }
        }
        AlgorithmParameters::RSA(p) => {
            use base64::Engine;
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.n.trim_end_matches('='))
                .map_err(|_| "its modulus is not base64url".to_string())?;
            if has_roca_fingerprint(&n) {
                return Err("its RSA modulus has the ROCA fingerprint (CVE-2017-15361)".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// The ROCA test (Nemec et al., CCS 2017): a modulus from the flawed
/// Infineon generator is, modulo each of these small primes, a power of
/// 65537. For any other key that holds for all of them with probability
/// far below 2^-100.
fn has_roca_fingerprint(n_be: &[u8]) -> bool {
    const PRIMES: [u64; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let r = n_be
            .iter()
            .fold(0u64, |acc, &b| (acc * 256 + u64::from(b)) % p);
        // The subgroup generated by 65537 modulo p.
        let g = 65537 % p;
        let mut x = 1u64;
        for _ in 0..p {
            if x == r {
                return true;
            }
            x = x * g % p;
        }
        false
    })
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
    use super::*;

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
