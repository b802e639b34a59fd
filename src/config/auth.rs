//! `[auth]` (key binding, brute-force and slowloris limits) and
//! `[certificates]` (trusted SSH user CAs, OpenSSH PROTOCOL.certkeys).

use std::time::Duration;

use serde::Deserialize;

/// `[auth]`: key binding and the limits against brute force and slowloris.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a public key stays bound to a principal after an IdP login
    /// (default 8 h; `"0s"` turns key binding off). Never longer than the
    /// ID token's `exp` unless the IdP gave a refresh token.
    #[serde(default = "default_key_binding_ttl", with = "humantime_serde")]
    pub key_binding_ttl: Duration,
    /// Failed authentication attempts allowed per connection (default 6).
    #[serde(default = "default_max_auth_attempts")]
    pub max_auth_attempts: usize,
    /// Unauthenticated connections are dropped after this (default 3 min);
    /// it bounds the whole login, browser login included.
    #[serde(default = "default_login_grace_time", with = "humantime_serde")]
    pub login_grace_time: Duration,
    /// Most unauthenticated connections at once (default 64); more are
    /// closed at accept.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    /// Delay added after a failed attempt from an address that failed
    /// before; doubles with each failure (default 1 s, `"0s"` off).
    #[serde(default = "default_failure_delay", with = "humantime_serde")]
    pub failure_delay: Duration,
    /// Largest such delay (default 30 s).
    #[serde(default = "default_failure_delay_max", with = "humantime_serde")]
    pub failure_delay_max: Duration,
    /// An address's failures are forgotten after this long without one
    /// (default 15 min).
    #[serde(default = "default_failure_forget_after", with = "humantime_serde")]
    pub failure_forget_after: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_binding_ttl: default_key_binding_ttl(),
            max_auth_attempts: default_max_auth_attempts(),
            login_grace_time: default_login_grace_time(),
            max_unauthenticated: default_max_unauthenticated(),
            failure_delay: default_failure_delay(),
            failure_delay_max: default_failure_delay_max(),
            failure_forget_after: default_failure_forget_after(),
        }
    }
}

/// `[certificates]`: SSH user certificates (OpenSSH PROTOCOL.certkeys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesConfig {
    /// Name of a certificate extension whose value lists the principal's
    /// groups, comma-separated (e.g. `groups@example.com`); unset: groups
    /// come only from the CA's `groups`.
    pub groups_extension: Option<String>,
    /// Trusted user CAs (`[[certificates.ca]]`).
    #[serde(default)]
    pub ca: Vec<CertificateAuthorityConfig>,
}

/// `[[certificates.ca]]`: one trusted SSH user CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateAuthorityConfig {
    /// The CA's public key in OpenSSH format (`ssh-ed25519 AAAA... comment`).
    pub public_key: String,
    /// Prepended to the certificate's principal (default empty).
    #[serde(default)]
    pub principal_prefix: String,
    /// Certificate principals this CA may vouch for; empty means any.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Groups given to every principal this CA authenticates.
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_key_binding_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_max_auth_attempts() -> usize {
    6
}
fn default_login_grace_time() -> Duration {
    Duration::from_secs(180)
}
fn default_max_unauthenticated() -> usize {
    64
}
fn default_failure_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_failure_delay_max() -> Duration {
    Duration::from_secs(30)
}
fn default_failure_forget_after() -> Duration {
    Duration::from_secs(15 * 60)
}

impl super::Config {
    pub(super) fn validate_auth(&self, path: &std::path::Path) -> Result<(), super::ConfigError> {
        let invalid = |key: &str, message: &str| super::ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.to_string(),
        };
        let a = &self.auth;
        if a.max_auth_attempts == 0 {
            return Err(invalid("auth.max_auth_attempts", "must be above zero"));
        }
        if a.max_unauthenticated == 0 {
            return Err(invalid("auth.max_unauthenticated", "must be above zero"));
        }
        if a.login_grace_time.is_zero() {
            return Err(invalid("auth.login_grace_time", "must be above zero"));
        }
        if a.failure_delay > a.failure_delay_max {
            return Err(invalid(
                "auth.failure_delay",
                "must not be above auth.failure_delay_max",
            ));
        }
        for (i, ca) in self.certificates.ca.iter().enumerate() {
            if russh::keys::ssh_key::PublicKey::from_openssh(ca.public_key.trim()).is_err() {
                return Err(invalid(
                    &format!("certificates.ca[{i}].public_key"),
                    "is not an OpenSSH public key (`ssh-ed25519 AAAA...`)",
                ));
            }
        }
        Ok(())
    }
}
