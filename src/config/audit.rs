//! `[audit]`: how the audit chain's head is signed, where the signed heads
//! are anchored outside the database, and which gateways' keys
//! `audit verify` trusts. Parsing and validation only; never opens the
//! anchors or reads keys from disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain head is signed (default 60 s; also at start and
    /// at shutdown).
    #[serde(default = "default_sign_interval", with = "humantime_serde")]
    pub sign_interval: Duration,
    /// How late a signature may come beyond `sign_interval` before `audit
    /// verify` calls the unsigned stretch a gap (default 60 s): a loaded
    /// database, clocks of several gateways.
    #[serde(default = "default_sign_slack", with = "humantime_serde")]
    pub sign_slack: Duration,
    /// Where audit events (and signed heads) also go as JSON lines: a file
    /// path, `"-"` for stdout, or unset for nowhere (default).
    #[serde(default)]
    pub export: Option<String>,
    /// Directory that receives every signed head as a new write-once file
    /// (default `{state_dir}/audit-heads`). Put it where the database's
    /// writers cannot write (another mount, `chattr +a`, WORM storage).
    #[serde(default)]
    pub anchor_dir: Option<PathBuf>,
    /// Object store URL that receives every signed head as a new object
    /// written with `PutMode::Create` (default none). Schemes: `file://`
    /// (and those of the `object_store` features built in).
    #[serde(default)]
    pub anchor_url: Option<String>,
    /// Signing keys of the other gateways sharing this database, OpenSSH
    /// public key lines (`ssh-ed25519 AAAA... gw-b`); this host's own key
    /// is always trusted when it can be read.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sign_interval: default_sign_interval(),
            sign_slack: default_sign_slack(),
            export: None,
            anchor_dir: None,
            anchor_url: None,
            trusted_keys: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// The anchor directory: `anchor_dir`, else `{state_dir}/audit-heads`.
    pub fn anchor_dir_in(&self, state_dir: &Path) -> PathBuf {
        self.anchor_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("audit-heads"))
    }

    /// Checks the section; `Err((key, message))` names what is wrong.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.sign_slack.is_zero() {
            return Err(("audit.sign_slack".into(), "must be above zero".into()));
        }
        for (i, line) in self.trusted_keys.iter().enumerate() {
            if let Err(e) = russh::keys::PublicKey::from_openssh(line.trim()) {
                return Err((
                    format!("audit.trusted_keys[{i}]"),
                    format!("not an OpenSSH public key line: {e}"),
                ));
            }
        }
        if let Some(url) = &self.anchor_url
            && !url.contains("://")
        {
            return Err((
                "audit.anchor_url".into(),
                "must be an object store URL such as file:///var/lib/anchor".into(),
            ));
        }
        Ok(())
    }
}

fn default_sign_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_sign_slack() -> Duration {
    Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn trusted_keys_must_parse_and_the_error_names_the_entry() {
        let good = AuditConfig {
            trusted_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBot30V982nddkciWHf6QZW3KxJwrjr6aDs8ZuhWhzXA gw-b"
                    .into(),
            ],
            ..AuditConfig::default()
        };
        assert!(good.validate().is_ok());
        let bad = AuditConfig {
            trusted_keys: vec![good.trusted_keys[0].clone(), "ssh-ed25519 nope".into()],
            ..AuditConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "audit.trusted_keys[1]");
        let url = AuditConfig {
            anchor_url: Some("/var/anchor".into()),
            ..AuditConfig::default()
        };
        assert_eq!(url.validate().unwrap_err().0, "audit.anchor_url");
        assert_eq!(
            AuditConfig::default().anchor_dir_in(Path::new("/s")),
            PathBuf::from("/s/audit-heads")
        );
    }
}
