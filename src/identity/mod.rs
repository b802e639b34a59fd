//! Who the user is: OpenID Connect discovery, the issuers' JWKS (RFC 7517),
//! ID-token validation, the OAuth 2.0 device authorization grant (RFC
//! 8628), refresh tokens, key bindings and SSH user certificates (OpenSSH
//! PROTOCOL.certkeys).
//!
//! Owns talking to the issuers and turning a valid ID token, a bound key or
//! a certificate into a [`Principal`]: the claim checks of RFC 8725 and
//! OpenID Connect Core (`claims.rs`), groups namespaced per source, refresh
//! tokens sealed at rest (`sealing.rs`), what a principal sees of their own
//! key bindings (`own_keys.rs`, `announce.rs`) and revoked keys (OpenSSH
//! PROTOCOL.krl, `krl.rs`). It never decides access (that is
//! [`crate::policy`]) and never logs tokens.

mod announce;
mod binding;
mod certificate;
mod claims;
mod code_flow;
mod device;
#[cfg(test)]
mod hostile_tests;
mod issuers;
mod krl;
mod oidc;
mod own_keys;
mod sealing;

/// The failure throttle of every front end's logins: one per source
/// ([`crate::throttle`]), evicting the least recently failed source when
/// full (review M4: the old table forgot everyone at once).
pub use crate::throttle::FailureThrottle;
pub use announce::BindingNotice;
pub use binding::{
    BindingCheck, BindingError, BindingOrigin, KeyBindings, REFRESH_CLAIM, REFRESH_WAIT,
    key_fingerprint,
};
pub use certificate::{
    CertificateAuthorities, CertificateError, CertificatePermits, CertifiedPrincipal,
};
pub use code_flow::{AuthorizationParams, AuthorizationRequest, CodeLogin, pkce_challenge};
pub use device::{DeviceAuthorization, DeviceFlowError};
pub use issuers::Issuers;
pub use krl::{Krl, KrlError, RevokedKeys};
pub use oidc::{LoginTokens, MAX_TOKEN_BYTES, OidcIssuer, TokenSource, VerifiedIdToken};
pub use sealing::{RefreshTokenKey, SealedFor, SealingError};

/// OpenSSH reads at most this many bytes per keyboard-interactive prompt
/// (`readpassphrase` with a 1024-byte buffer); an answer this long was
/// probably cut.
pub const OPENSSH_MAX_PROMPT_BYTES: usize = 1023;

/// The authenticated person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The ID token's `sub`.
    pub subject: String,
    /// The `email` claim, when present.
    pub email: Option<String>,
    /// The groups claim (configurable name), namespaced per source (an
    /// issuer's or CA's `principal_prefix` unless in its `allowed_groups`);
    /// empty when absent.
    pub groups: Vec<String>,
    /// Who vouched: the issuer URL, or `ssh-ca:SHA256:...` for a
    /// certificate (the Cedar `User` entity's `issuer`, via
    /// [`crate::policy::PolicyEngine::decide_as`]).
    pub issuer: String,
}

/// Why a token or login was refused. [`IdentityError::user_message`] is safe
/// to show the user; `Display` holds the full reason for the audit log.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The issuer's discovery document could not be fetched or parsed.
    #[error("OIDC discovery failed: {0}")]
    Discovery(String),
    /// The issuer's JWKS could not be fetched or parsed.
    #[error("JWKS fetch failed: {0}")]
    Jwks(String),
    /// The token is not a JWT (bad base64, JSON, or shape).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token is as long as OpenSSH's prompt limit: probably cut.
    #[error("token of {0} bytes reaches OpenSSH's 1023-byte prompt limit")]
    TooLong(usize),
    /// The header names an algorithm we do not accept (`none`, HMAC, ...).
    #[error("algorithm not accepted: {0}")]
    AlgorithmRefused(String),
    /// The header has no `kid`, or the JWKS has no key with it.
    #[error("unknown signing key: {0}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not hold the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// `azp` names a client that is not allowed (or is missing while `aud`
    /// has several values).
    #[error("wrong authorized party (azp): {0}")]
    WrongAuthorizedParty(String),
    /// A required claim is missing or has the wrong type.
    #[error("bad claims: {0}")]
    Claims(String),
    /// The token is typed as another kind of JWT (an access token, RFC
    /// 9068 `at+jwt`; Keycloak's `typ` claim other than `ID`), RFC 8725
    /// §3.11.
    #[error("not an ID token: {0}")]
    NotAnIdToken(String),
    /// `iat` is further in the future than the leeway (OpenID Connect
    /// Core 1.0 §3.1.3.7).
    #[error("token issued in the future")]
    IssuedInTheFuture,
    /// The device flow failed.
    #[error(transparent)]
    DeviceFlow(#[from] DeviceFlowError),
}

impl IdentityError {
    /// One line for the SSH user: what failed and what to do.
    pub fn user_message(&self) -> String {
        match self {
            IdentityError::Discovery(_) | IdentityError::Jwks(_) => {
                "Login failed: the identity provider cannot be reached; try again later.".into()
            }
            IdentityError::TooLong(_) => format!(
                "Login failed: OpenSSH sends at most {OPENSSH_MAX_PROMPT_BYTES} bytes per prompt, so \
                 this token was cut; press Enter at the prompt to log in with your browser instead."
            ),
            IdentityError::Expired => "Login failed: the token has expired.".into(),
            IdentityError::NotYetValid | IdentityError::IssuedInTheFuture => {
                "Login failed: the token is not valid yet (check the clocks).".into()
            }
            IdentityError::NotAnIdToken(_) => {
                "Login failed: this is not an ID token (an access token?); paste the ID token."
                    .into()
            }
            IdentityError::WrongIssuer => {
                "Login failed: the token was issued by another identity provider.".into()
            }
            IdentityError::WrongAudience => {
                "Login failed: the token was not issued for this gateway.".into()
            }
            IdentityError::WrongAuthorizedParty(_) => {
                "Login failed: the token was issued to another application.".into()
            }
            IdentityError::UnknownKey(_) => {
                "Login failed: the token is signed with a key the identity provider does not publish."
                    .into()
            }
            IdentityError::DeviceFlow(e) => e.user_message(),
            IdentityError::Malformed(_)
            | IdentityError::AlgorithmRefused(_)
            | IdentityError::BadSignature
            | IdentityError::Claims(_) => "Login failed: the token is not valid.".into(),
        }
    }
}
