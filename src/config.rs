//! The gateway's TOML configuration: typed, defaulted and validated before
//! anything listens.
//!
//! Owns parsing and validation only; it never opens sockets or files other
//! than the config file itself. Unknown keys are an error
//! (`deny_unknown_fields`), and every error names the key that is wrong.
//! README.md documents every key with its default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Longest accepted container name or login, in bytes. Longer SSH user names
/// are refused before any lookup.
pub const MAX_NAME_LEN: usize = 64;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port the SSH server listens on (default `0.0.0.0:2222`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the host key, the SQLite file and recordings (default
    /// `./portcullis-data`); created with mode 0700 when missing.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// This gateway's name in shared databases (default: the host name).
    /// Several gateways on one PostgreSQL need distinct ids.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// Login used when the SSH user name names only a container (default `root`).
    #[serde(default = "default_login")]
    pub default_login: String,
    /// Database settings.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The OpenID Connect issuers that authenticate users (required): one
    /// `[oidc]` table or several `[[oidc]]` entries.
    #[serde(deserialize_with = "oidc::one_or_many")]
    pub oidc: Vec<OidcConfig>,
    /// Authentication limits and key binding.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Trusted SSH user certificate authorities.
    #[serde(default)]
    pub certificates: CertificatesConfig,
    /// Where the Cedar policies live.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// How containers are found.
    #[serde(default)]
    pub inventory: InventoryConfig,
    /// Per-container settings, keyed by container name.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerConfig>,
    /// Session recording.
    #[serde(default)]
    pub recording: RecordingConfig,
    /// Session behaviour.
    #[serde(default)]
    pub session: SessionConfig,
    /// `[forwarding]`: channel and forwarded-connection caps (issue 5).
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    /// `[sftp]`: who serves the `sftp` subsystem (issue 5).
    #[serde(default)]
    pub sftp: SftpConfig,
    /// Audit log signing and export.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Just-in-time access: access requests and grants.
    #[serde(default)]
    pub grants: GrantsConfig,
    /// `[fleet]`: edge and node roles (issue 16).
    #[serde(default)]
    pub fleet: FleetConfig,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[web]`: the console for reviewers and approvers (issue 17); off
    /// when absent.
    #[serde(default)]
    pub web: Option<WebConfig>,
    /// `[attach]`: confinement the gateway cannot reproduce.
    #[serde(default)]
    pub attach: AttachConfig,
}

/// `[database]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`; default:
    /// `portcullis.db` (SQLite) in `state_dir`.
    pub url: Option<Secret>,
}

mod attach;
mod audit;
mod auth;
mod fleet;
mod grants;
mod inventory;
mod oidc;
mod recording;
mod session;
mod web;

pub use attach::{AttachConfig, SeccompFallback};
pub use audit::AuditConfig;
pub use auth::{AuthConfig, CertificateAuthorityConfig, CertificatesConfig};
pub use fleet::{FleetConfig, MAX_USER_CERTIFICATE_TTL, MetricsConfig};
pub use grants::GrantsConfig;
pub use inventory::{
    ContainerConfig, INCUS_SOCKET, InventoryBackend, InventoryConfig, LXD_SOCKET,
    MAX_OWNER_PURPOSE_BYTES, PolicyConfig,
};
pub use oidc::OidcConfig;
pub use recording::{MIN_PART_BYTES, RecordingConfig, RecordingFailure, SpoolFull};
pub use session::{ForwardingConfig, SessionConfig, SftpConfig, SftpServer};
pub use web::WebConfig;

/// A secret string (client secret, database URL with password): its `Debug`
/// is redacted so it never reaches a log.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` (a token, a password) so it is never logged.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret value; do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the configuration was refused. The message is one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given with `--config`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The path given with `--config`.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        /// The path given with `--config`.
        path: PathBuf,
        /// Dotted key, e.g. `oidc.issuer`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key when the file is unreadable, malformed,
    /// holds unknown keys or invalid values.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.to_string(),
        };
        if !valid_name(&self.default_login) {
            return Err(invalid(
                "default_login",
                "must be a Unix account name ([A-Za-z0-9_.-], at most 64 bytes, not starting with '-')",
            ));
        }
        self.validate_oidc(path)?;
        self.validate_auth(path)?;
        self.validate_containers(path)?;
        if let Err((key, message)) = self.fleet.validate() {
            return Err(invalid(&key, &message));
        }
        if let Some(web) = &self.web {
            web.validate(path)?;
        }
        if let Err((key, message)) = self.grants.validate() {
            return Err(invalid(&key, &message));
        }
        if let Err((key, message)) = self.session.validate() {
            return Err(invalid(&key, &message));
        }
        if self.containers.contains_key(&self.grants.broker_user) {
            return Err(invalid(
                &format!("containers.{}", self.grants.broker_user),
                "this name is grants.broker_user (the broker's own commands); no container can use it",
            ));
        }
        let sftp_path = Path::new(&self.sftp.container_path);
        if !sftp_path.is_absolute()
            || sftp_path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            || self.sftp.container_path.len() > 4096
        {
            return Err(invalid(
                "sftp.container_path",
                "must be an absolute path without '..'",
            ));
        }
        if let Err((key, message)) = self.recording.validate() {
            return Err(invalid(&key, &message));
        }
        if self.audit.sign_interval < Duration::from_secs(1) {
            return Err(invalid("audit.sign_interval", "must be at least 1s"));
        }
        if let Err((key, message)) = self.audit.validate() {
            return Err(invalid(&key, &message));
        }
        if self.session.max_connections == 0 {
            return Err(invalid("session.max_connections", "must be above zero"));
        }
        if let Some(url) = &self.database.url
            && !["sqlite:", "postgres:", "postgresql:"]
                .iter()
                .any(|p| url.expose().starts_with(p))
        {
            return Err(invalid(
                "database.url",
                "must be a sqlite:// or postgres:// URL",
            ));
        }
        Ok(())
    }

    /// The issuer the device flow uses: the one marked `default`, else the
    /// first.
    pub fn default_oidc(&self) -> Option<&OidcConfig> {
        self.oidc
            .iter()
            .find(|o| o.default)
            .or_else(|| self.oidc.first())
    }

    /// The database URL: `database.url`, else `sqlite://{state_dir}/portcullis.db`.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose().to_string(),
            None => format!(
                "sqlite://{}",
                self.state_dir.join("portcullis.db").display()
            ),
        }
    }

    /// Directory of session recordings: `recording.dir`, else
    /// `{state_dir}/recordings`.
    pub fn recordings_dir(&self) -> PathBuf {
        self.recording.dir_in(&self.state_dir)
    }

    /// `gateway_id`, else the host name, else `portcullis`.
    pub fn gateway_id(&self) -> String {
        self.gateway_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "portcullis".to_string())
        })
    }

    /// Path of the ed25519 host key: `{state_dir}/host_ed25519_key`.
    pub fn host_key_path(&self) -> PathBuf {
        self.state_dir.join("host_ed25519_key")
    }
}

/// True when `name` is usable as a login or container name: 1 to
/// [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`, not starting with `-` or `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '|' || c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 2222))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("./portcullis-data")
}
fn default_login() -> String {
    "root".to_string()
}

#[cfg(test)]
mod tests;
