//! `[oidc]` / `[[oidc]]`: the OpenID Connect issuers that authenticate
//! users, and their validation (prefixes, audiences, claims).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError, Secret};

/// `[oidc]` or one `[[oidc]]` entry: an OpenID Connect issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// OAuth 2.0 client id used for the device authorization grant.
    pub client_id: String,
    /// Client secret, for confidential clients (optional).
    pub client_secret: Option<Secret>,
    /// Expected `aud` of ID tokens; defaults to `client_id`.
    pub audience: Option<String>,
    /// Claim that holds the principal's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Scopes asked for in the device flow (default `openid email groups`).
    #[serde(default = "default_scopes")]
    pub scopes: String,
    /// Clock leeway for `exp`/`nbf`/`iat`, e.g. `"30s"` (default 30 s).
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Timeout of each HTTP request to the issuer (default 10 s).
    #[serde(default = "default_http_timeout", with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Prepended to the subject to make the principal, e.g. `"ci:"`, so
    /// two issuers' subjects never collide (default empty; required and
    /// prefix-free when several issuers are configured).
    #[serde(default)]
    pub principal_prefix: String,
    /// Claim that holds the subject (default `sub`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim that holds the email (default `email`).
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Accepted values of the `azp` (authorized party) claim; a token that
    /// names another party is refused (OpenID Connect Core 1.0 §2). Default:
    /// `client_id` only.
    #[serde(default)]
    pub allowed_azp: Vec<String>,
    /// True for the issuer the device flow uses (default: the first one).
    #[serde(default)]
    pub default: bool,
    /// Least time between two JWKS fetches caused by an unknown `kid`
    /// (default 30 s), so bad tokens cannot make the gateway hammer the
    /// issuer.
    #[serde(default = "default_jwks_refetch_interval", with = "humantime_serde")]
    pub jwks_refetch_interval: Duration,
    /// The cached JWKS is fetched again when older than this (default 1 h);
    /// a failed fetch keeps the cached keys.
    #[serde(default = "default_jwks_max_age", with = "humantime_serde")]
    pub jwks_max_age: Duration,
}

impl OidcConfig {
    /// The audience ID tokens must carry: `audience`, else `client_id`.
    pub fn expected_audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(&self.client_id)
    }

    /// True when a token whose `azp` is `azp` may be used here:
    /// `allowed_azp`, else only `client_id`.
    pub fn azp_allowed(&self, azp: &str) -> bool {
        if self.allowed_azp.is_empty() {
            azp == self.client_id
        } else {
            self.allowed_azp.iter().any(|a| a == azp)
        }
    }
}

/// Reads `[oidc]` (one table) or `[[oidc]]` (an array of tables).
pub(super) fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<OidcConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    match toml::Value::deserialize(deserializer)? {
        v @ toml::Value::Table(_) => Ok(vec![v.try_into().map_err(D::Error::custom)?]),
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| v.try_into().map_err(D::Error::custom))
            .collect(),
        _ => Err(D::Error::custom(
            "`oidc` must be a table or an array of tables",
        )),
    }
}

impl Config {
    pub(super) fn validate_oidc(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.to_string(),
        };
        if self.oidc.is_empty() {
            return Err(invalid("oidc", "at least one issuer is required"));
        }
        let several = self.oidc.len() > 1;
        for (i, o) in self.oidc.iter().enumerate() {
            let key = |k: &str| {
                if several {
                    format!("oidc[{i}].{k}")
                } else {
                    format!("oidc.{k}")
                }
            };
            let issuer = o.issuer.trim_end_matches('/');
            if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                return Err(invalid(
                    &key("issuer"),
                    "must be an http:// or https:// URL",
                ));
            }
            if o.client_id.is_empty() {
                return Err(invalid(&key("client_id"), "must not be empty"));
            }
            for (k, v) in [
                ("groups_claim", &o.groups_claim),
                ("subject_claim", &o.subject_claim),
                ("email_claim", &o.email_claim),
            ] {
                if v.is_empty() {
                    return Err(invalid(&key(k), "must not be empty"));
                }
            }
            if o.jwks_refetch_interval.is_zero() {
                return Err(invalid(&key("jwks_refetch_interval"), "must be above zero"));
            }
            for (j, other) in self.oidc.iter().enumerate().skip(i + 1) {
                if other.issuer.trim_end_matches('/') == issuer {
                    return Err(invalid(
                        &format!("oidc[{j}].issuer"),
                        "the same issuer is configured twice",
                    ));
                }
                if several
                    && (o.principal_prefix.starts_with(&other.principal_prefix)
                        || other.principal_prefix.starts_with(&o.principal_prefix))
                {
                    return Err(invalid(
                        &format!("oidc[{j}].principal_prefix"),
                        "with several issuers every principal_prefix must be non-empty and none \
                         may start another, so subjects never collide",
                    ));
                }
            }
        }
        if self.oidc.iter().filter(|o| o.default).count() > 1 {
            return Err(invalid(
                "oidc.default",
                "at most one issuer may be the default",
            ));
        }
        Ok(())
    }
}

fn default_groups_claim() -> String {
    "groups".to_string()
}

fn default_scopes() -> String {
    "openid email groups".to_string()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_subject_claim() -> String {
    "sub".to_string()
}

fn default_email_claim() -> String {
    "email".to_string()
}

fn default_jwks_refetch_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_max_age() -> Duration {
    Duration::from_secs(3600)
}
