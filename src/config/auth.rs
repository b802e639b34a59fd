//! `[auth]` (key binding, the device flow, brute-force, slowloris and
//! per-source limits) and `[certificates]` (trusted SSH user CAs, OpenSSH
//! PROTOCOL.certkeys, and their revocation list, PROTOCOL.krl).

use std::path::PathBuf;
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
    /// Show the IdP's `verification_uri_complete` (the one-click link with
    /// the code filled in) and its QR code at the device prompt (default
    /// false: the prompt shows the verification URL and the code to type,
    /// so a link forwarded to a victim is not one click from binding the
    /// sender's key to them; RFC 8628 §5.4).
    #[serde(default)]
    pub device_flow_complete_uri: bool,
    /// Bind the connection's public key after a device-flow login (default
    /// true). False: only a pasted token binds a key; a device-flow login
    /// admits that one connection.
    #[serde(default = "default_true")]
    pub bind_keys_from_device_flow: bool,
    /// File holding the key that encrypts refresh tokens at rest
    /// (AES-256-GCM); default `{state_dir}/refresh-token.key`, created
    /// (mode 0600) at first start. Gateways sharing a database need the
    /// same key file. It must not be readable by group or others.
    #[serde(default)]
    pub refresh_token_key_file: Option<PathBuf>,
    /// Most unauthenticated connections at once from one source address
    /// (an IPv4 address or an IPv6 /64; default 8), like OpenSSH's
    /// `PerSourceMaxStartups`.
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
    /// Penalty a source earns for a failed authentication (default 5 s),
    /// like OpenSSH's `PerSourcePenalties authfail`.
    #[serde(default = "default_penalty_authfail", with = "humantime_serde")]
    pub penalty_authfail: Duration,
    /// Penalty for a connection closed before any authentication attempt
    /// (default 1 s; OpenSSH `noauth`).
    #[serde(default = "default_penalty_noauth", with = "humantime_serde")]
    pub penalty_noauth: Duration,
    /// Penalty for a connection dropped at `login_grace_time` (default
    /// 10 s; OpenSSH `grace-exceeded`).
    #[serde(default = "default_penalty_grace_exceeded", with = "humantime_serde")]
    pub penalty_grace_exceeded: Duration,
    /// A source whose accumulated penalty reaches this is refused new
    /// connections until the penalty runs out (default 15 s; OpenSSH
    /// `min`; `"0s"` turns penalties off).
    #[serde(default = "default_penalty_min", with = "humantime_serde")]
    pub penalty_min: Duration,
    /// Largest accumulated penalty (default 10 min; OpenSSH `max`).
    #[serde(default = "default_penalty_max", with = "humantime_serde")]
    pub penalty_max: Duration,
    /// Device authorizations one connection may start (default 1; 0 turns
    /// the device flow off).
    #[serde(default = "default_device_authorizations_per_connection")]
    pub device_authorizations_per_connection: u32,
    /// Device authorizations one source address (IPv4 address or IPv6
    /// /64) may start per `device_authorization_window` (default 10).
    #[serde(default = "default_device_authorizations_per_source")]
    pub device_authorizations_per_source: u32,
    /// The window of `device_authorizations_per_source` (default 10 min).
    #[serde(
        default = "default_device_authorization_window",
        with = "humantime_serde"
    )]
    pub device_authorization_window: Duration,
    /// An authenticated connection with no channel open for this long is
    /// closed, audited (OpenSSH `UnusedConnectionTimeout`; humantime, e.g.
    /// `10m`; default: never). A ControlMaster left with no session is
    /// such a connection.
    #[serde(default, with = "humantime_serde")]
    pub unused_connection_timeout: Option<Duration>,
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
            device_flow_complete_uri: false,
            bind_keys_from_device_flow: true,
            refresh_token_key_file: None,
            max_unauthenticated_per_source: default_max_unauthenticated_per_source(),
            penalty_authfail: default_penalty_authfail(),
            penalty_noauth: default_penalty_noauth(),
            penalty_grace_exceeded: default_penalty_grace_exceeded(),
            penalty_min: default_penalty_min(),
            penalty_max: default_penalty_max(),
            device_authorizations_per_connection: default_device_authorizations_per_connection(),
            device_authorizations_per_source: default_device_authorizations_per_source(),
            device_authorization_window: default_device_authorization_window(),
            unused_connection_timeout: None,
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
    /// A key revocation list in OpenSSH's format (PROTOCOL.krl, as written
    /// by `ssh-keygen -k`), like sshd's `RevokedKeys`: certificates (by
    /// serial, key id or CA) and keys (explicit or by SHA-1/SHA-256 hash)
    /// it lists are refused, bound keys included. Read again when the file
    /// changes (checked at most once a second); while it is missing or
    /// unreadable every certificate and bound key is refused.
    #[serde(default)]
    pub revoked_keys: Option<PathBuf>,
}

/// `[[certificates.ca]]`: one trusted SSH user CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateAuthorityConfig {
    /// The CA's public key in OpenSSH format (`ssh-ed25519 AAAA... comment`).
    pub public_key: String,
    /// Prepended to the certificate's principal (required, e.g. `"ca:"`):
    /// it must not overlap any `oidc.principal_prefix` (neither may start
    /// with the other), so a certificate never names an IdP user.
    #[serde(default)]
    pub principal_prefix: String,
    /// Certificate principals this CA may vouch for; empty means any.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Groups given to every principal this CA authenticates.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Groups certificates of this CA may assert (in
    /// `certificates.groups_extension`) under their own names (default
    /// none); any other asserted group is prefixed with `principal_prefix`.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
}

fn default_true() -> bool {
    true
}
fn default_max_unauthenticated_per_source() -> usize {
    8
}
fn default_penalty_authfail() -> Duration {
    Duration::from_secs(5)
}
fn default_penalty_noauth() -> Duration {
    Duration::from_secs(1)
}
fn default_penalty_grace_exceeded() -> Duration {
    Duration::from_secs(10)
}
fn default_penalty_min() -> Duration {
    Duration::from_secs(15)
}
fn default_penalty_max() -> Duration {
    Duration::from_secs(600)
}
fn default_device_authorizations_per_connection() -> u32 {
    1
}
fn default_device_authorizations_per_source() -> u32 {
    10
}
fn default_device_authorization_window() -> Duration {
    Duration::from_secs(600)
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
        if a.max_unauthenticated_per_source == 0 {
            return Err(invalid(
                "auth.max_unauthenticated_per_source",
                "must be above zero",
            ));
        }
        if a.penalty_min > a.penalty_max {
            return Err(invalid(
                "auth.penalty_min",
                "must not be above auth.penalty_max",
            ));
        }
        if a.device_authorization_window.is_zero() {
            return Err(invalid(
                "auth.device_authorization_window",
                "must be above zero",
            ));
        }
        for (i, ca) in self.certificates.ca.iter().enumerate() {
            if russh::keys::ssh_key::PublicKey::from_openssh(ca.public_key.trim()).is_err() {
                return Err(invalid(
                    &format!("certificates.ca[{i}].public_key"),
                    "is not an OpenSSH public key (`ssh-ed25519 AAAA...`)",
                ));
            }
            for (j, g) in ca.allowed_groups.iter().chain(&ca.groups).enumerate() {
                if g.is_empty() || !crate::text::is_visible(g) || g.len() > 255 {
                    return Err(invalid(
                        &format!("certificates.ca[{i}].groups"),
                        &format!(
                            "group {j} must be 1 to 255 bytes without control, bidi or \
                             invisible characters"
                        ),
                    ));
                }
            }
            self.check_ca_prefix(i, path)?;
        }
        Ok(())
    }

    /// M1: a CA's `principal_prefix` is not empty and overlaps (equals,
    /// starts or is started by) no OIDC issuer's `principal_prefix` and no
    /// other CA's (two CAs may share one prefix: a CA and its successor).
    fn check_ca_prefix(&self, i: usize, path: &std::path::Path) -> Result<(), super::ConfigError> {
        let ca = &self.certificates.ca[i];
        let overlap = |a: &str, b: &str| a.starts_with(b) || b.starts_with(a);
        let mine = format!("certificates.ca[{i}].principal_prefix");
        let clash = |other: String, other_prefix: &str| super::ConfigError::Invalid {
            path: path.to_path_buf(),
            key: mine.clone(),
            message: format!(
                "{:?} overlaps {other} {other_prefix:?}: a certificate principal could name \
                 the same principal as another source; give each source its own prefix \
                 (e.g. \"ca:\") that neither starts nor is started by another",
                ca.principal_prefix
            ),
        };
        let several = self.oidc.len() > 1;
        for (j, o) in self.oidc.iter().enumerate() {
            // An issuer without a prefix owns what no other source's prefix
            // claims: it may sit beside a CA with one (its names are kept
            // out of the CA's prefix when tokens are validated).
            let beside = o.principal_prefix.is_empty() && !ca.principal_prefix.is_empty();
            if !beside && overlap(&ca.principal_prefix, &o.principal_prefix) {
                let key = if several {
                    format!("oidc[{j}].principal_prefix")
                } else {
                    "oidc.principal_prefix".to_string()
                };
                return Err(clash(key, &o.principal_prefix));
            }
        }
        if ca.principal_prefix.is_empty() {
            return Err(clash(
                "every source's prefix, e.g. oidc.principal_prefix".into(),
                "",
            ));
        }
        for (j, other) in self.certificates.ca.iter().enumerate().take(i) {
            if other.principal_prefix != ca.principal_prefix
                && overlap(&ca.principal_prefix, &other.principal_prefix)
            {
                return Err(clash(
                    format!("certificates.ca[{j}].principal_prefix"),
                    &other.principal_prefix,
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use crate::config::{Config, ConfigError};

    const CA: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, std::path::Path::new("t.toml"))
    }

    fn with_ca(oidc_prefix: &str, ca_prefixes: &[&str]) -> Result<Config, ConfigError> {
        let mut text = format!(
            "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\nprincipal_prefix = \"{oidc_prefix}\"\n"
        );
        for p in ca_prefixes {
            text.push_str(&format!(
                "[[certificates.ca]]\npublic_key = \"{CA}\"\nprincipal_prefix = \"{p}\"\n"
            ));
        }
        parse(&text)
    }

    #[test]
    fn defaults_of_the_new_keys() {
        let c = with_ca("", &[]).unwrap();
        assert!(!c.auth.device_flow_complete_uri);
        assert!(c.auth.bind_keys_from_device_flow);
        assert_eq!(c.auth.max_unauthenticated_per_source, 8);
        assert_eq!(c.auth.device_authorizations_per_connection, 1);
        assert_eq!(c.auth.device_authorizations_per_source, 10);
        assert!(c.auth.refresh_token_key_file.is_none());
        assert!(c.certificates.revoked_keys.is_none());
    }

    #[test]
    fn ca_prefixes_may_not_overlap_oidc_prefixes() {
        with_ca("", &["ca:"]).unwrap();
        with_ca("corp:", &["ca:", "ca:"]).unwrap();
        for (oidc, ca, named) in [
            ("", "", "oidc.principal_prefix"),
            ("corp:", "", "oidc.principal_prefix"),
            ("corp:", "corp:", "oidc.principal_prefix"),
            ("corp:", "corp:ci:", "oidc.principal_prefix"),
            ("corp:ci:", "corp:", "oidc.principal_prefix"),
        ] {
            let err = with_ca(oidc, &[ca]).unwrap_err().to_string();
            assert!(
                err.contains("`certificates.ca[0].principal_prefix`") && err.contains(named),
                "{oidc:?} {ca:?}: {err}"
            );
        }
        let err = with_ca("corp:", &["ca:", "ca:x:"]).unwrap_err().to_string();
        assert!(
            err.contains("certificates.ca[1].principal_prefix")
                && err.contains("certificates.ca[0].principal_prefix"),
            "{err}"
        );
    }

    #[test]
    fn penalties_and_budgets_are_checked() {
        let base = "[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\n";
        let err = parse(&format!(
            "{base}[auth]\nmax_unauthenticated_per_source = 0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("auth.max_unauthenticated_per_source"), "{err}");
        let err = parse(&format!(
            "{base}[auth]\npenalty_min = \"20m\"\npenalty_max = \"10m\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("auth.penalty_min"), "{err}");
    }
}
