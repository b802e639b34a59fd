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

fn default_kill_grace() -> Duration {
    Duration::from_secs(2)
}

fn default_max_connections() -> usize {
    1024
}
