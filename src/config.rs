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
    /// Login used when the SSH user name names only a container (default `root`).
    #[serde(default = "default_login")]
    pub default_login: String,
    /// Database settings.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The OpenID Connect issuer that authenticates users (required).
    pub oidc: OidcConfig,
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
}

/// `[database]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` URL; default: `portcullis.db` in `state_dir`.
    pub url: Option<Secret>,
}

/// `[oidc]`: one OpenID Connect issuer.
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
}

impl OidcConfig {
    /// The audience ID tokens must carry: `audience`, else `client_id`.
    pub fn expected_audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(&self.client_id)
    }
}

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
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            record_input: false,
            flush_interval: default_flush_interval(),
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
    /// Longest time a device-flow login may take before it is abandoned, on
    /// top of the issuer's own `expires_in` (default 10 min).
    #[serde(default = "default_login_timeout", with = "humantime_serde")]
    pub login_timeout: Duration,
    /// Most connections served at once (default 1024).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            kill_grace: default_kill_grace(),
            login_timeout: default_login_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

/// A secret string (client secret, database URL with password): its `Debug`
/// is redacted so it never reaches a log.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
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
        let issuer = self.oidc.issuer.trim_end_matches('/');
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(invalid("oidc.issuer", "must be an http:// or https:// URL"));
        }
        if self.oidc.client_id.is_empty() {
            return Err(invalid("oidc.client_id", "must not be empty"));
        }
        if self.oidc.groups_claim.is_empty() {
            return Err(invalid("oidc.groups_claim", "must not be empty"));
        }
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
        if self.recording.flush_interval.is_zero() {
            return Err(invalid("recording.flush_interval", "must be above zero"));
        }
        if self.session.max_connections == 0 {
            return Err(invalid("session.max_connections", "must be above zero"));
        }
        if let Some(url) = &self.database.url
            && !url.expose().starts_with("sqlite:")
        {
            return Err(invalid(
                "database.url",
                "only sqlite: URLs are supported by this build",
            ));
        }
        Ok(())
    }

    /// The database URL: `database.url`, else `sqlite://{state_dir}/portcullis.db`.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose().to_string(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.state_dir.join("portcullis.db").display()
            ),
        }
    }

    /// Directory of session recordings: `{state_dir}/recordings`.
    pub fn recordings_dir(&self) -> PathBuf {
        self.state_dir.join("recordings")
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
fn default_kill_grace() -> Duration {
    Duration::from_secs(2)
}
fn default_login_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_connections() -> usize {
    1024
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const MINIMAL: &str = r#"
[oidc]
issuer = "https://idp.example.com"
client_id = "portcullis"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen, "0.0.0.0:2222".parse().unwrap());
        assert_eq!(c.default_login, "root");
        assert_eq!(c.oidc.expected_audience(), "portcullis");
        assert_eq!(c.oidc.groups_claim, "groups");
        assert_eq!(c.recording.flush_interval, Duration::from_secs(1));
        assert!(!c.recording.record_input);
        assert_eq!(
            c.database_url(),
            "sqlite://./portcullis-data/portcullis.db?mode=rwc"
        );
    }

    #[test]
    fn issue_example_parses() {
        let text = r#"
listen = "0.0.0.0:2222"
state_dir = "./portcullis-data"
default_login = "root"
[database]
[oidc]
issuer = "https://idp.example.com"
client_id = "portcullis"
groups_claim = "groups"
[policy]
dir = "./policies"
[inventory]
backend = "lxc"
lxcpath = "/var/lib/lxc"
[containers.web1]
labels = { env = "dev", owner = "payments" }
[recording]
record_input = false
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.containers["web1"].labels["env"], "dev");
    }

    #[test]
    fn process_backend_keys() {
        let c = parse(&format!(
            "{MINIMAL}[inventory]\nbackend = \"process\"\n\
             [containers.a]\npid_file = \"/run/a.pid\"\n\
             [containers.b]\ncgroup = \"/sys/fs/cgroup/unified/b\"\n"
        ))
        .unwrap();
        assert_eq!(c.inventory.backend, InventoryBackend::Process);
        assert!(c.containers["a"].is_process() && c.containers["b"].is_process());
        let bad = [
            "[inventory]\nbackend = \"process\"\n[containers.a]\nlabels = {}\n",
            "[containers.a]\npid_file = \"/x\"\ncgroup = \"/y\"\n",
            "[containers.a]\npid_file = \"rel.pid\"\n",
            "[containers.a]\ncgroup = \"/sys/../etc\"\n",
        ];
        for b in bad {
            let err = parse(&format!("{MINIMAL}{b}")).unwrap_err().to_string();
            assert!(err.contains("containers.a"), "{err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}\n[recording]\nrecord_inptu = true\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("record_inptu"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn missing_oidc_is_named() {
        let err = parse("listen = \"127.0.0.1:2222\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("oidc"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse(&format!("listen = 22\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn bad_issuer_is_named() {
        let err = parse("[oidc]\nissuer = \"idp\"\nclient_id = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`oidc.issuer`"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = parse(&format!("{MINIMAL}client_secret = \"hunter2\"\n")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("web1"));
        assert!(valid_name("a.b_c-d"));
        assert!(!valid_name(""));
        assert!(!valid_name("-rf"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a@b"));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
