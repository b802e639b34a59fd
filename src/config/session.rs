//! `[session]`, `[forwarding]` and `[sftp]`: how live sessions, forwarded
//! connections and file transfers behave.

use std::time::Duration;

use serde::Deserialize;

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
    /// A shell or command with no input from its client and no output for
    /// this long is ended (humantime, e.g. `15m`; default: never). SSH
    /// keepalives are neither: `ServerAliveInterval` does not keep a
    /// session alive.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// A shell or command is ended this long after it started, whatever it
    /// does (humantime, e.g. `8h`; default: never).
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            kill_grace: default_kill_grace(),
            max_connections: default_max_connections(),
            idle_timeout: None,
            max_duration: None,
        }
    }
}

impl SessionConfig {
    /// A time limit, when set, is at least a second.
    ///
    /// # Errors
    /// The key and what is wrong with it.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        for (key, value) in [
            ("session.idle_timeout", self.idle_timeout),
            ("session.max_duration", self.max_duration),
        ] {
            if value.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err((key.into(), "must be at least 1s".into()));
            }
        }
        Ok(())
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

fn default_kill_grace() -> Duration {
    Duration::from_secs(2)
}

fn default_max_connections() -> usize {
    1024
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn time_limits_are_off_by_default_and_at_least_a_second() {
        let c: SessionConfig = toml::from_str("").unwrap();
        assert_eq!((c.idle_timeout, c.max_duration), (None, None));
        let c: SessionConfig =
            toml::from_str("idle_timeout = \"15m\"\nmax_duration = \"8h\"").unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(900)));
        assert_eq!(c.max_duration, Some(Duration::from_secs(8 * 3600)));
        assert!(c.validate().is_ok());
        let bad: SessionConfig = toml::from_str("idle_timeout = \"500ms\"").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "session.idle_timeout");
        assert!(toml::from_str::<SessionConfig>("idle = \"1s\"").is_err());
    }
}
