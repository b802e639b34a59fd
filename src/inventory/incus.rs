//! The Incus/LXD backend: the containers of an Incus or LXD daemon, asked
//! of its REST API (<https://linuxcontainers.org/incus/docs/main/rest-api/>;
//! LXD's is the same under `/1.0`) on its Unix socket with reqwest.
//!
//! - `GET /1.0/instances/NAME`: the instance's `type` (only `container`s
//!   are served; a virtual machine is refused) and `expanded_config`
//!   (its own keys and its profiles'): `user.portcullis.owner`,
//!   `user.portcullis.purpose`, and `user.portcullis.label.KEY` for each
//!   label the policy sees as a tag;
//! - the init's host PID: from the instance's liblxc monitor (the same
//!   answer the daemon gets from it, in ~0.2 ms; [`super::lxc_monitor`]),
//!   else from `GET /1.0/instances/NAME/state` (`status` and `pid`; the
//!   daemon gathers memory, disk and network usage first: 40-140 ms on a
//!   loaded host);
//! - `GET /1.0/instances?recursion=2`: all instances with their state, for
//!   the listing.
//!
//! The daemon only names the PID. The attach path stays Portcullis's own
//! (pinned init, setns), exactly as for LXC: Incus and LXD run containers
//! with liblxc, so the PID must pass the rule of [`super::init`], its
//! parent must be the instance's liblxc monitor (`[lxc monitor]
//! DAEMON_DIR/containers NAME`, where `DAEMON_DIR` is the socket's
//! directory), and its cgroup is the payload cgroup
//! (`/lxc.payload.NAME`). Only the `default` project is served.
//!
//! Every request has a timeout (`inventory.incus_timeout`, connecting
//! included) and a response limit ([`MAX_INSTANCE_BYTES`],
//! [`MAX_LIST_BYTES`]); a daemon that does not answer in time, closes the
//! connection or sends more is an error, never a guess.

mod lifecycle;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Backend, Container, ContainerState, InventoryError};
use crate::config::{Config, MAX_OWNER_PURPOSE_BYTES, valid_name};

/// Largest answer about one instance or its state, in bytes.
pub const MAX_INSTANCE_BYTES: usize = 1024 * 1024;
/// Largest answer to the list of all instances, in bytes.
pub const MAX_LIST_BYTES: usize = 32 * 1024 * 1024;
/// The config key prefix of Portcullis's instance keys.
const KEY_PREFIX: &str = "user.portcullis.";
/// Longest label key and value taken from an instance, in bytes.
const MAX_LABEL_KEY_BYTES: usize = 64;
const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// The Incus/LXD inventory.
#[derive(Debug, Clone)]
pub struct IncusInventory {
    socket: PathBuf,
    /// liblxc's container directory of this daemon: `DAEMON_DIR/containers`.
    lxcpath: PathBuf,
    /// The client, or why it could not be built (reported on each lookup).
    client: Result<reqwest::Client, String>,
}

/// The daemon's answer envelope (`type` is `sync` or `error`).
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    error: String,
    metadata: Option<T>,
}

/// The parts of an instance used here.
#[derive(Debug, Clone, Deserialize)]
struct Instance {
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    /// `Running`, `Stopped`, `Frozen`...
    #[serde(default)]
    status: String,
    #[serde(default)]
    config: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    expanded_config: Option<BTreeMap<String, serde_json::Value>>,
    /// Present with `recursion=2`.
    #[serde(default)]
    state: Option<InstanceState>,
}

/// The parts of an instance's state used here.
#[derive(Debug, Clone, Deserialize)]
struct InstanceState {
    status: String,
    #[serde(default)]
    pid: i64,
}

/// Owner, purpose and labels from an instance's `user.portcullis.*` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Keys {
    owner: Option<String>,
    purpose: Option<String>,
    labels: BTreeMap<String, String>,
}

fn fit(value: &str, max: usize) -> bool {
    !value.trim().is_empty() && value.len() <= max && !value.chars().any(char::is_control)
}

impl Instance {
    /// Owner, purpose and labels; keys that break the limits (owner and
    /// purpose as in `[containers.NAME]`, label keys `[A-Za-z0-9_.-]` up to
    /// 64 bytes, values up to 1024 bytes without control characters) are
    /// left out with a warning.
    fn keys(&self) -> Keys {
        let config = self.expanded_config.as_ref().unwrap_or(&self.config);
        let mut keys = Keys::default();
        for (key, value) in config {
            let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
                continue;
            };
            let Some(value) = value.as_str() else {
                continue;
            };
            let taken = match rest {
                "owner" if fit(value, MAX_OWNER_PURPOSE_BYTES) => {
                    keys.owner = Some(value.to_string());
                    true
                }
                "purpose" if fit(value, MAX_OWNER_PURPOSE_BYTES) => {
                    keys.purpose = Some(value.to_string());
                    true
                }
                _ => match rest.strip_prefix("label.") {
                    Some(label)
                        if label.len() <= MAX_LABEL_KEY_BYTES
                            && valid_name(label)
                            && fit(value, MAX_LABEL_VALUE_BYTES) =>
                    {
                        keys.labels.insert(label.to_string(), value.to_string());
                        true
                    }
                    _ => false,
                },
            };
            if !taken {
                tracing::warn!(instance = %self.name, key = %key, "ignoring an invalid user.portcullis key");
            }
        }
        keys
    }
}

/// The container state of an instance state: `Running` with a PID above 1
/// is running; any other status is reported upper-case (`STOPPED`,
/// `FROZEN`, ...).
fn container_state(name: &str, state: &InstanceState) -> Result<ContainerState, InventoryError> {
    if state.status == "Running" {
        let pid = i32::try_from(state.pid)
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| InventoryError::DaemonAnswer {
                path: format!("/1.0/instances/{name}/state"),
                answer: format!("status Running with pid {}", state.pid),
            })?;
        return Ok(ContainerState::Running { init_pid: pid });
    }
    let status: String = state
        .status
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect::<String>()
        .to_ascii_uppercase();
    Ok(ContainerState::NotRunning(if status.is_empty() {
        "UNKNOWN".to_string()
    } else {
        status
    }))
}

/// Parses the envelope of `body` (the answer to `path`) into its metadata.
fn parse<T: serde::de::DeserializeOwned>(
    path: &str,
    status: u16,
    body: &[u8],
) -> Result<T, InventoryError> {
    let answer = |what: String| InventoryError::DaemonAnswer {
        path: path.to_string(),
        answer: crate::audit::truncate(&what, 200),
    };
    let envelope: Envelope<T> = serde_json::from_slice(body).map_err(|e| {
        answer(format!(
            "HTTP {status} and a body that is not the daemon's JSON ({e})"
        ))
    })?;
    if envelope.kind == "error" || !(200..300).contains(&status) {
        let code = if envelope.error_code == 0 {
            status
        } else {
            envelope.error_code
        };
        return Err(answer(format!("error {code}: {}", envelope.error)));
    }
    envelope
        .metadata
        .ok_or_else(|| answer(format!("HTTP {status} without metadata")))
}

impl IncusInventory {
    /// An inventory over the daemon at `config.inventory.incus_socket()`,
    /// each request bounded by `config.inventory.incus_timeout`.
    pub fn new(config: &Config) -> IncusInventory {
        IncusInventory::at(
            &config.inventory.incus_socket(),
            config.inventory.incus_timeout,
        )
    }

    /// An inventory over the daemon listening on `socket`, each request
    /// bounded by `timeout` (connecting included).
    pub fn at(socket: &Path, timeout: Duration) -> IncusInventory {
        // No connection pool: LXD 5.0's socket listener peeks at the first
        // bytes of each new connection inside its accept loop, so one
        // connection that stays silent (a pooled spare, which hyper opens
        // when a request races an idle connection) stops the daemon from
        // accepting anything until it closes (90 s, the pool's idle
        // timeout). A fresh connection per request costs ~0.1 ms here.
        let client = reqwest::Client::builder()
            .unix_socket(socket)
            .pool_max_idle_per_host(0)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string());
        let dir = socket.parent().unwrap_or_else(|| Path::new("/"));
        IncusInventory {
            socket: socket.to_path_buf(),
            lxcpath: dir.join("containers"),
            client,
        }
    }

    /// `GET path` on the daemon; the status and at most `limit` bytes of
    /// body.
    async fn get(&self, path: &str, limit: usize) -> Result<(u16, Vec<u8>), InventoryError> {
        let failed = |reason: String| InventoryError::DaemonRequest {
            socket: self.socket.display().to_string(),
            path: path.to_string(),
            reason,
        };
        let client = self.client.as_ref().map_err(|e| failed(e.clone()))?;
        let mut response = client
            .get(format!("http://incus{path}"))
            .send()
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let status = response.status().as_u16();
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(failed(format!("response over {limit} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(error_chain(&e)))?
        {
            if body.len() + chunk.len() > limit {
                return Err(failed(format!("response over {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    /// Looks up `name`: the instance (it must be a container), its state
    /// and, when running, its init checked as the module docs say.
    ///
    /// # Errors
    /// [`InventoryError::InvalidName`]; [`InventoryError::NotFound`] (the
    /// daemon answers 404); [`InventoryError::NotAContainer`] (a virtual
    /// machine, or a PID that is not the instance's init);
    /// [`InventoryError::DaemonRequest`] / [`InventoryError::DaemonAnswer`].
    pub async fn find(&self, name: &str) -> Result<Container, InventoryError> {
        if !valid_name(name) {
            return Err(InventoryError::InvalidName);
        }
        let path = format!("/1.0/instances/{name}");
        let (status, body) = self.get(&path, MAX_INSTANCE_BYTES).await?;
        if status == 404 {
            return Err(InventoryError::NotFound(name.to_string()));
        }
        let instance: Instance = parse(&path, status, &body)?;
        if instance.kind != "container" {
            return Err(InventoryError::NotAContainer(format!(
                "{name} is a {} instance, not a container",
                crate::audit::truncate(&instance.kind, 32)
            )));
        }
        if instance.status == "Running"
            && let Some(state @ ContainerState::Running { .. }) =
                super::lxc_monitor::query(&self.lxcpath, name).await
        {
            tracing::debug!(container = %name, "init PID from the instance's liblxc monitor");
            return self.container(name, &instance, state);
        }
        let path = format!("/1.0/instances/{name}/state");
        let (status, body) = self.get(&path, MAX_INSTANCE_BYTES).await?;
        if status == 404 {
            return Err(InventoryError::NotFound(name.to_string()));
        }
        let state: InstanceState = parse(&path, status, &body)?;
        self.container(name, &instance, container_state(name, &state)?)
    }

    /// The container of `instance` in `state`, its init checked.
    fn container(
        &self,
        name: &str,
        instance: &Instance,
        state: ContainerState,
    ) -> Result<Container, InventoryError> {
        let start_time = super::lxc::verify_init("Incus/LXD", name, &state)?;
        let cgroup = match &state {
            ContainerState::Running { init_pid } => {
                self.check_monitor(name, *init_pid)?;
                super::lxc::payload_cgroup(&self.lxcpath, name, *init_pid)
            }
            ContainerState::NotRunning(_) => None,
        }
        .unwrap_or_else(|| format!("/lxc.payload.{name}"));
        let keys = instance.keys();
        Ok(Container {
            labels: keys.labels,
            owner: keys.owner,
            purpose: keys.purpose,
            init_start_time: start_time,
            ..Container::new(name, state, cgroup, Backend::Incus)
        })
    }

    /// Checks that `pid`'s parent is this daemon's liblxc monitor of
    /// `name`.
    fn check_monitor(&self, name: &str, pid: i32) -> Result<(), InventoryError> {
        let monitor = format!("[lxc monitor] {} {name}", self.lxcpath.display());
        let parent_cmdline = super::init::facts(pid).ok().and_then(|f| {
            std::fs::read(format!("/proc/{}/cmdline", f.ppid))
                .ok()
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .trim_end_matches('\0')
                        .to_string()
                })
        });
        match parent_cmdline {
            Some(c) if c == monitor => Ok(()),
            other => Err(InventoryError::NotAContainer(format!(
                "the daemon named PID {pid} as the init of {name}, but its parent is {:?}, \
                 not {monitor:?} (is incus_socket the daemon's own socket?)",
                crate::audit::truncate(other.as_deref().unwrap_or("unreadable"), 120)
            ))),
        }
    }

    /// Every container instance (virtual machines are left out), sorted by
    /// name, with its state (`UNKNOWN` for one whose init does not pass the
    /// checks; the reason is logged).
    ///
    /// # Errors
    /// [`InventoryError::DaemonRequest`] / [`InventoryError::DaemonAnswer`]
    /// when the list cannot be had.
    pub async fn list(&self) -> Result<Vec<Container>, InventoryError> {
        let path = "/1.0/instances?recursion=2";
        let (status, body) = self.get(path, MAX_LIST_BYTES).await?;
        let instances: Vec<Instance> = parse(path, status, &body)?;
        let mut containers = Vec::new();
        for instance in instances {
            if instance.kind != "container" || !valid_name(&instance.name) {
                continue;
            }
            let name = instance.name.clone();
            let state = instance.state.clone().unwrap_or(InstanceState {
                status: "Unknown".into(),
                pid: 0,
            });
            let checked =
                container_state(&name, &state).and_then(|s| self.container(&name, &instance, s));
            let c = checked.unwrap_or_else(|e| {
                tracing::warn!(container = %name, error = %e, "cannot look up instance");
                let keys = instance.keys();
                Container {
                    labels: keys.labels,
                    owner: keys.owner,
                    purpose: keys.purpose,
                    ..Container::new(
                        &name,
                        ContainerState::NotRunning("UNKNOWN".into()),
                        format!("/lxc.payload.{name}"),
                        Backend::Incus,
                    )
                }
            });
            containers.push(c);
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }
}

/// An error and its causes on one line (reqwest's own message hides the
/// I/O error, e.g. "No such file or directory").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
