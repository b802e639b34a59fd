//! Several OpenID Connect issuers (`[[oidc]]`): which one a pasted token
//! belongs to (its `iss`, read before the signature is checked only to pick
//! the issuer whose keys then check it), and which one runs the device
//! flow (the `default`, else the first). Each issuer learns here what the
//! rest of the configuration says about it: whether the device prompt may
//! carry a one-click link (`auth.device_flow_complete_uri`) and the other
//! sources' prefixes its names must stay out of (review finding M1).

use std::sync::Arc;

use base64::Engine;

use super::oidc::{IssuerSettings, VerifiedIdToken, check_shape};
use super::{IdentityError, OidcIssuer};
use crate::config::Config;

/// The configured issuers, in config order.
#[derive(Debug)]
pub struct Issuers {
    list: Vec<Arc<OidcIssuer>>,
    default: usize,
}

impl Issuers {
    /// One [`OidcIssuer`] per `[[oidc]]` entry.
    ///
    /// # Errors
    /// [`IdentityError::Discovery`] when an HTTP client cannot be built, or
    /// no issuer is configured.
    pub fn from_config(config: &Config) -> Result<Issuers, IdentityError> {
        let prefixes: Vec<&str> = config
            .oidc
            .iter()
            .map(|o| o.principal_prefix.as_str())
            .chain(
                config
                    .certificates
                    .ca
                    .iter()
                    .map(|c| c.principal_prefix.as_str()),
            )
            .collect();
        let list = config
            .oidc
            .iter()
            .map(|o| {
                let mut issuer = OidcIssuer::new(o)?;
                issuer.settings = IssuerSettings {
                    complete_uri: config.auth.device_flow_complete_uri,
                    foreign_prefixes: foreign_prefixes(&o.principal_prefix, &prefixes),
                };
                Ok(Arc::new(issuer))
            })
            .collect::<Result<Vec<_>, IdentityError>>()?;
        if list.is_empty() {
            return Err(IdentityError::Discovery("no issuer configured".into()));
        }
        let default = config.oidc.iter().position(|o| o.default).unwrap_or(0);
        Ok(Issuers { list, default })
    }

    /// The issuer the device flow uses.
    pub fn default_issuer(&self) -> &Arc<OidcIssuer> {
        // `from_config` guarantees `default` is in range.
        &self.list[self.default.min(self.list.len() - 1)]
    }

    /// Every issuer.
    pub fn all(&self) -> &[Arc<OidcIssuer>] {
        &self.list
    }

    /// The issuer whose URL is `url` (trailing `/` ignored).
    pub fn by_url(&self, url: &str) -> Option<&Arc<OidcIssuer>> {
        let url = url.trim_end_matches('/');
        self.list.iter().find(|i| i.issuer_url() == url)
    }

    /// Validates `token` with the issuer its `iss` names (with a single
    /// issuer, with that one: it checks `iss` itself after the signature).
    ///
    /// # Errors
    /// [`IdentityError::TooLong`] / [`IdentityError::Malformed`] before any
    /// parsing; [`IdentityError::WrongIssuer`] when `iss` names no
    /// configured issuer; else the issuer's validation error.
    pub async fn validate_id_token(&self, token: &str) -> Result<VerifiedIdToken, IdentityError> {
        let token = check_shape(token)?;
        if let [only] = self.list.as_slice() {
            return only.validate_id_token(token).await;
        }
        let iss = peek_issuer(token)?;
        let issuer = self.by_url(&iss).ok_or(IdentityError::WrongIssuer)?;
        issuer.validate_id_token(token).await
    }
}

/// The other sources' prefixes that names under `own` could fall into:
/// non-empty, different, and starting with `own` (only an empty `own` has
/// any once the configuration is valid).
fn foreign_prefixes(own: &str, all: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = all
        .iter()
        .filter(|p| !p.is_empty() && **p != own && p.starts_with(own))
        .map(|p| (*p).to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The `iss` of an unverified JWT payload (used only to choose the keys).
fn peek_issuer(token: &str) -> Result<String, IdentityError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| IdentityError::Malformed("no payload".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| IdentityError::Malformed(format!("payload is not base64url: {e}")))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| IdentityError::Malformed(format!("payload is not JSON: {e}")))?;
    match claims.get("iss") {
        Some(serde_json::Value::String(iss)) => Ok(iss.clone()),
        _ => Err(IdentityError::WrongIssuer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuers(text: &str) -> Issuers {
        let config = Config::parse(text, std::path::Path::new("t")).unwrap();
        Issuers::from_config(&config).unwrap()
    }

    const TWO: &str = r#"
[[oidc]]
issuer = "https://corp.example.com"
client_id = "portcullis"
principal_prefix = "corp:"
[[oidc]]
issuer = "https://ci.example.com/"
client_id = "gw"
principal_prefix = "ci:"
default = true
"#;

    #[test]
    fn the_default_and_lookup_by_url() {
        let i = issuers(TWO);
        assert_eq!(i.all().len(), 2);
        assert_eq!(i.default_issuer().issuer_url(), "https://ci.example.com");
        assert!(i.by_url("https://corp.example.com/").is_some());
        assert!(i.by_url("https://other.example.com").is_none());
    }

    #[test]
    fn an_issuer_without_a_prefix_stays_out_of_the_cas_prefixes() {
        let i = issuers(
            "[oidc]\nissuer = \"https://corp.example.com\"\nclient_id = \"c\"\n\
             [[certificates.ca]]\npublic_key = \"ssh-ed25519 \
             AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n\
             principal_prefix = \"ca:\"\n",
        );
        assert_eq!(i.default_issuer().settings.foreign_prefixes, ["ca:"]);
        assert!(!i.default_issuer().settings.complete_uri);
        let two = issuers(TWO);
        assert!(
            two.all()
                .iter()
                .all(|i| i.settings.foreign_prefixes.is_empty())
        );
        assert_eq!(foreign_prefixes("", &["", "a:", "b:", "a:"]), ["a:", "b:"]);
    }

    #[tokio::test]
    async fn a_token_of_an_unknown_issuer_is_refused_without_fetching() {
        let i = issuers(TWO);
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(r#"{"iss":"https://evil.example.com","sub":"x"}"#)
        );
        assert!(matches!(
            i.validate_id_token(&token).await,
            Err(IdentityError::WrongIssuer)
        ));
        let token = format!("{}.{}.sig", b64("{}"), b64(r#"{"sub":"x"}"#));
        assert!(matches!(
            i.validate_id_token(&token).await,
            Err(IdentityError::WrongIssuer)
        ));
        assert!(matches!(
            i.validate_id_token("a.%%%.c").await,
            Err(IdentityError::Malformed(_))
        ));
    }
}
