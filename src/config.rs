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
    #[serde(deserialize_with = "one_or_many")]
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
}

/// What to do when a recording cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingFailure {
    /// End the session with a clear message (default).
    Terminate,
    /// Go on unrecorded; the failure is audited.
    Continue,
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain head is signed (default 60 s; also at shutdown).
    #[serde(default = "default_sign_interval", with = "humantime_serde")]
    pub sign_interval: Duration,
    /// Where audit events also go as JSON lines: a file path, `"-"` for
    /// stdout, or unset for nowhere (default).
    #[serde(default)]
    pub export: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sign_interval: default_sign_interval(),
            export: None,
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`; default:
    /// `portcullis.db` (SQLite) in `state_dir`.
    pub url: Option<Secret>,
}

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
fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<OidcConfig>, D::Error>
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

mod auth;
mod grants;

pub use auth::{AuthConfig, CertificateAuthorityConfig, CertificatesConfig};
pub use grants::GrantsConfig;

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory holding `*.cedar` policies and `portcullis.cedarschema`
    /// (default `./policies`).
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: default_policy_dir(),
        }
    }
}

/// Which inventory backend finds containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InventoryBackend {
    /// LXC containers under `lxcpath`, found with `lxc-info`; a
    /// `[containers.NAME]` with `pid_file` or `cgroup` is still found by the
    /// process backend (mixing).
    Lxc,
    /// Only the `[containers.NAME]` sections, each with `pid_file` or
    /// `cgroup` (any runtime: systemd-nspawn, runc, podman...).
    Process,
}

/// `[inventory]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// Backend (default `lxc`).
    #[serde(default = "default_backend")]
    pub backend: InventoryBackend,
    /// LXC's container directory (default `/var/lib/lxc`).
    #[serde(default = "default_lxcpath")]
    pub lxcpath: PathBuf,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            backend: default_backend(),
            lxcpath: default_lxcpath(),
        }
    }
}

/// `[containers.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// Labels the policy sees as the container's tags, e.g. `env = "dev"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Process backend: a file holding the host PID of the container's init
    /// (decimal, at most 64 bytes), e.g. `/run/web1.pid`. Absolute.
    pub pid_file: Option<PathBuf>,
    /// Process backend: the container's cgroup directory on the host, e.g.
    /// `/sys/fs/cgroup/unified/machine.slice/web1`; the init is the lowest
    /// PID of its `cgroup.procs` that is PID 1 of its own PID namespace.
    /// Absolute, no `..`.
    pub cgroup: Option<PathBuf>,
}

impl ContainerConfig {
    /// True when this container is found by the process backend.
    pub fn is_process(&self) -> bool {
        self.pid_file.is_some() || self.cgroup.is_some()
    }
}

/// `[recording]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Record keystrokes as asciicast `i` events (default false: input can
    /// hold passwords typed at no-echo prompts).
    #[serde(default)]
    pub record_input: bool,
    /// Longest time output waits in memory before it is written to the file
    /// (default 1 s).
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// When writing fails (disk full, permissions): `terminate` (default)
    /// or `continue`.
    #[serde(default = "default_on_failure")]
    pub on_failure: RecordingFailure,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            record_input: false,
            flush_interval: default_flush_interval(),
            on_failure: default_on_failure(),
        }
    }
}

/// `[session]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// After a disconnect, time between SIGHUP and SIGKILL of the session's
    /// processes (default 2 s).
    #[serde(default = "default_kill_grace", with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Most connections served at once (default 1024).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            kill_grace: default_kill_grace(),
            max_connections: default_max_connections(),
        }
    }
}

/// `[forwarding]`: per-connection caps on channels and forwarded TCP
/// connections (`ssh -L`). Whether a forward is allowed at all is policy's
/// `port_forward` action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    /// Most session channels (shell, exec, sftp) one connection may have
    /// open at once (default 10).
    #[serde(default = "default_max_session_channels")]
    pub max_session_channels: usize,
    /// Most forwarded TCP connections one connection may have open at once
    /// (default 8).
    #[serde(default = "default_max_forwards")]
    pub max_forwards: usize,
}

fn default_max_session_channels() -> usize {
    10
}

fn default_max_forwards() -> usize {
    8
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            max_session_channels: default_max_session_channels(),
            max_forwards: default_max_forwards(),
        }
    }
}

/// Who serves the `sftp` subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SftpServer {
    /// The gateway's own server, run inside the container as the login
    /// (default): works in containers without an sftp-server, and audits
    /// every file with its SHA-256.
    Builtin,
    /// The container's own `sftp-server` at `container_path`, exec'd as the
    /// login. The gateway sees only the SFTP byte stream: it audits the
    /// session's start and end with the bytes each way, not each file. A
    /// container without that program is refused with a clear message (no
    /// fallback to `builtin`).
    Container,
}

/// `[sftp]`: who serves the `sftp` subsystem. Whether SFTP (and legacy
/// `scp -O`, always served by the gateway) is allowed at all is policy's
/// `sftp` action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// `builtin` (default) or `container`.
    #[serde(default = "default_sftp_server")]
    pub server: SftpServer,
    /// The sftp-server inside the container, for `server = "container"`
    /// (an absolute path without `..`; default
    /// `/usr/lib/openssh/sftp-server`, Debian's and Ubuntu's). A read-only
    /// decision runs it with `-R`.
    #[serde(default = "default_sftp_container_path")]
    pub container_path: String,
}

fn default_sftp_server() -> SftpServer {
    SftpServer::Builtin
}

fn default_sftp_container_path() -> String {
    "/usr/lib/openssh/sftp-server".into()
}

impl Default for SftpConfig {
    fn default() -> Self {
        SftpConfig {
            server: default_sftp_server(),
            container_path: default_sftp_container_path(),
        }
    }
}

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
        for (name, c) in &self.containers {
            if !valid_name(name) {
                return Err(invalid(
                    &format!("containers.{name}"),
                    "container names are [A-Za-z0-9_.-], at most 64 bytes",
                ));
            }
            if c.pid_file.is_some() && c.cgroup.is_some() {
                return Err(invalid(
                    &format!("containers.{name}"),
                    "set pid_file or cgroup, not both",
                ));
            }
            for (key, p) in [("pid_file", &c.pid_file), ("cgroup", &c.cgroup)] {
                if let Some(p) = p
                    && (!p.is_absolute()
                        || p.components().any(|c| c == std::path::Component::ParentDir))
                {
                    return Err(invalid(
                        &format!("containers.{name}.{key}"),
                        "must be an absolute path without '..'",
                    ));
                }
            }
            if self.inventory.backend == InventoryBackend::Process && !c.is_process() {
                return Err(invalid(
                    &format!("containers.{name}"),
                    "the process backend needs pid_file or cgroup",
                ));
            }
        }
        if let Err((key, message)) = self.grants.validate() {
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
        if self.recording.flush_interval.is_zero() {
            return Err(invalid("recording.flush_interval", "must be above zero"));
        }
        if self.audit.sign_interval < Duration::from_secs(1) {
            return Err(invalid("audit.sign_interval", "must be at least 1s"));
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

    fn validate_oidc(&self, path: &Path) -> Result<(), ConfigError> {
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

    fn validate_auth(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
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

    /// Directory of session recordings: `{state_dir}/recordings`.
    pub fn recordings_dir(&self) -> PathBuf {
        self.state_dir.join("recordings")
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
fn default_policy_dir() -> PathBuf {
    PathBuf::from("./policies")
}
fn default_backend() -> InventoryBackend {
    InventoryBackend::Lxc
}
fn default_lxcpath() -> PathBuf {
    PathBuf::from("/var/lib/lxc")
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_on_failure() -> RecordingFailure {
    RecordingFailure::Terminate
}
fn default_sign_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_kill_grace() -> Duration {
    Duration::from_secs(2)
}
fn default_max_connections() -> usize {
    1024
}

#[cfg(test)]
mod tests;
