//! `[web]`: the console for reviewers and approvers (issue 17): where it
//! listens, its TLS files or the URL of the reverse proxy in front of it,
//! and the lifetimes of console logins and of the SSH login page.
//!
//! Parsing and validation only; the console itself is `crate::web`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// `[web]`: present means the console is on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address and port of the console (e.g. `127.0.0.1:8443`). Without
    /// `tls_cert`/`tls_key` it must be a loopback address: plain HTTP only
    /// behind a reverse proxy on the same host.
    pub listen: SocketAddr,
    /// PEM file of the certificate chain served (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (with `tls_cert`).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The URL browsers use to reach the console, without a trailing `/`
    /// (e.g. `https://gw.example.com`): the OpenID Connect `redirect_uri`
    /// is `{public_url}/auth/callback`, SSH login links are
    /// `{public_url}/l/CODE`, and state-changing requests must carry its
    /// origin in `Origin`. Default: `https://LISTEN` with TLS, else
    /// `http://LISTEN`. Cookies are `Secure` when it is `https://`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// How long a console login lasts at most (default 8 h).
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// A console login unused this long ends (default 30 min).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Approve, deny, revoke, review and kill need a login at the issuer at
    /// most this old (`auth_time`); an older one is sent back to the
    /// issuer with `prompt=login` and `max_age` (default 5 min).
    #[serde(default = "default_fresh_login", with = "humantime_serde")]
    pub fresh_login_max_age: Duration,
    /// Logins started per client address per minute (default 10).
    #[serde(default = "default_login_rate")]
    pub login_per_minute: u32,
    /// State-changing actions per principal per minute (default 30).
    #[serde(default = "default_action_rate")]
    pub actions_per_minute: u32,
    /// How long an SSH login link (`/l/CODE`) stays valid (default 5 min).
    #[serde(default = "default_ssh_login_ttl", with = "humantime_serde")]
    pub ssh_login_ttl: Duration,
    /// OAuth 2.0 `client_secret` for the authorization code exchange when
    /// the console uses a confidential client (default: the issuer's own
    /// `client_secret`, else none: a public client with PKCE).
    #[serde(default)]
    pub client_secret: Option<Secret>,
}

impl WebConfig {
    /// True when the console serves TLS itself.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// `public_url`, else `https://LISTEN` (TLS) or `http://LISTEN`.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if self.tls() => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }

    /// True when cookies must be `Secure` (the browser sees `https://`).
    pub fn secure_cookies(&self) -> bool {
        self.public_url().starts_with("https://")
    }

    /// Checks the section; the error names the key.
    pub(super) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("web.{key}"),
            message: message.to_string(),
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls_key", "is required with tls_cert")),
            (None, Some(_)) => return Err(invalid("tls_cert", "is required with tls_key")),
            (None, None) if !self.listen.ip().is_loopback() => {
                return Err(invalid(
                    "listen",
                    "without tls_cert and tls_key the console serves plain HTTP, so it must \
                     listen on a loopback address (behind a reverse proxy that serves TLS)",
                ));
            }
            _ => {}
        }
        let url = self.public_url();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => {}
            _ => {
                return Err(invalid(
                    "public_url",
                    "must be an http:// or https:// origin without a path (e.g. \
                     https://gw.example.com)",
                ));
            }
        }
        for (key, value) in [
            ("session_ttl", self.session_ttl),
            ("idle_timeout", self.idle_timeout),
            ("fresh_login_max_age", self.fresh_login_max_age),
            ("ssh_login_ttl", self.ssh_login_ttl),
        ] {
            if value < Duration::from_secs(1) {
                return Err(invalid(key, "must be at least 1s"));
            }
        }
        if self.login_per_minute == 0 {
            return Err(invalid("login_per_minute", "must be above zero"));
        }
        if self.actions_per_minute == 0 {
            return Err(invalid("actions_per_minute", "must be above zero"));
        }
        Ok(())
    }
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_fresh_login() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_login_rate() -> u32 {
    10
}
fn default_action_rate() -> u32 {
    30
}
fn default_ssh_login_ttl() -> Duration {
    Duration::from_secs(5 * 60)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use crate::config::Config;

    fn parse(web: &str) -> Result<Config, crate::config::ConfigError> {
        let text = format!("[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\n[web]\n{web}");
        Config::parse(&text, std::path::Path::new("t"))
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let c = parse("listen = \"127.0.0.1:8443\"\n").unwrap();
        let web = c.web.unwrap();
        assert_eq!(web.public_url(), "http://127.0.0.1:8443");
        assert!(!web.secure_cookies());
        let e = parse("listen = \"0.0.0.0:8443\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.listen"), "{e}");
        let c = parse(
            "listen = \"0.0.0.0:8443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
             public_url = \"https://gw.example.com/\"\n",
        )
        .unwrap();
        let web = c.web.unwrap();
        assert_eq!(web.public_url(), "https://gw.example.com");
        assert!(web.secure_cookies());
    }

    #[test]
    fn bad_keys_are_named() {
        let e = parse("listen = \"127.0.0.1:1\"\ntls_cert = \"c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.tls_key"), "{e}");
        let e = parse("listen = \"127.0.0.1:1\"\npublic_url = \"https://gw/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.public_url"), "{e}");
        let e = parse("listen = \"127.0.0.1:1\"\nsession_ttl = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.session_ttl"), "{e}");
        let e = parse("listen = \"127.0.0.1:1\"\nnope = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
