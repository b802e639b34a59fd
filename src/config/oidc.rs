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
    /// Groups this issuer may assert under their own names (default none).
    /// Every other group it asserts is namespaced: prefixed with
    /// `principal_prefix` (so `admins` from an issuer with prefix `ci:` is
    /// the group `ci:admins`), and a group of an issuer without a prefix
    /// that falls in another source's prefix is dropped. A group from one
    /// source never satisfies a rule written for another's.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
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
            if let Some(rest) = issuer.strip_prefix("http://")
                && !is_loopback_authority(rest)
            {
                return Err(invalid(
                    &key("issuer"),
                    "http:// is allowed only for a loopback issuer (127.0.0.0/8, [::1], \
                     localhost): anyone on the path could swap the JWKS; use https://",
                ));
            }
            for (j, g) in o.allowed_groups.iter().enumerate() {
                if g.is_empty() || !crate::text::is_visible(g) || g.len() > 255 {
                    return Err(invalid(
                        &key(&format!("allowed_groups[{j}]")),
                        "must be 1 to 255 bytes without control, bidi or invisible characters",
                    ));
                }
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

/// True when the `host[:port]/path` after `http://` names a loopback host:
/// `localhost`, an IPv4 address in 127.0.0.0/8 or `[::1]` (RFC 6890).
pub(crate) fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, _)) => h,
            None => return false,
        }
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn http_issuers_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3/realms/x/",
            "http://localhost:9000",
            "http://[::1]:9000/",
            "https://idp.example.com/",
        ] {
            parse(&format!("[oidc]\nissuer = \"{ok}\"\nclient_id = \"c\"\n")).unwrap();
        }
        for bad in [
            "http://idp.example.com",
            "http://10.0.0.1:8080",
            "http://127.0.0.1.evil.com",
            "http://localhost.evil.com/",
            "http://evil.com@127.0.0.1/",
            "http://[::2]:80",
        ] {
            let err = parse(&format!("[oidc]\nissuer = \"{bad}\"\nclient_id = \"c\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`oidc.issuer`") && err.contains("loopback"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn allowed_groups_are_checked() {
        let err = parse(
            "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\nallowed_groups = [\"ok\", \"a\\u202Eb\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`oidc.allowed_groups[1]`"), "{err}");
    }
}
