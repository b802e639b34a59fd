//! The Incus/LXD backend's lifecycle through the daemon's REST API
//! (<https://linuxcontainers.org/incus/docs/main/rest-api/>, the same
//! under LXD's `/1.0`):
//!
//! - start, stop, restart: `PUT /1.0/instances/NAME/state` with `action`,
//!   `timeout` ([`STOP_TIMEOUT_SECS`]) and `force: false`;
//! - snapshot: `POST /1.0/instances/NAME/snapshots` with the next free
//!   `snapN` name; list: `GET /1.0/instances/NAME/snapshots?recursion=1`;
//! - restore: `PUT /1.0/instances/NAME` with `restore: SNAPSHOT`.
//!
//! Each change is a background operation; the answer names it and
//! `GET /1.0/operations/ID/wait?timeout=N` waits for its end (bounded by
//! [`STEP_TIMEOUT_SECS`]). The operation's `err` is the error the user
//! sees.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::super::lifecycle::{
    Lifecycle, LifecycleError, STEP_TIMEOUT_SECS, STOP_TIMEOUT_SECS, Snapshot, must_be,
    runtime_message,
};
use super::super::{Container, ContainerState, InventoryError};
use super::{IncusInventory, MAX_INSTANCE_BYTES, MAX_LIST_BYTES, error_chain, parse};

/// The parts of an operation used here.
#[derive(Debug, Deserialize)]
struct OperationAnswer {
    id: String,
    /// `Success`, `Failure`, `Running`...
    #[serde(default)]
    status: String,
    #[serde(default)]
    err: String,
}

/// The parts of a snapshot used here.
#[derive(Debug, Deserialize)]
struct SnapshotAnswer {
    name: String,
    #[serde(default)]
    created_at: String,
}

impl IncusInventory {
    /// `method path` with `body` (JSON) on the daemon, bounded by
    /// [`STEP_TIMEOUT_SECS`]; the status and at most `limit` bytes.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        limit: usize,
    ) -> Result<(u16, Vec<u8>), InventoryError> {
        let failed = |reason: String| InventoryError::DaemonRequest {
            socket: self.socket.display().to_string(),
            path: path.to_string(),
            reason,
        };
        let client = self.client.as_ref().map_err(|e| failed(e.clone()))?;
        let mut request = client
            .request(method, format!("http://incus{path}"))
            .timeout(Duration::from_secs(STEP_TIMEOUT_SECS));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut response = request.send().await.map_err(|e| failed(error_chain(&e)))?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(error_chain(&e)))?
        {
            if bytes.len() + chunk.len() > limit {
                return Err(failed(format!("response over {limit} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, bytes))
    }

    /// Sends a change and waits for its operation to end.
    ///
    /// # Errors
    /// [`LifecycleError::Runtime`] with the daemon's error (the answer's or
    /// the operation's `err`); [`LifecycleError::Daemon`] when it cannot be
    /// asked.
    async fn operate(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(), LifecycleError> {
        let (status, bytes) = self
            .send(method, path, Some(body), MAX_INSTANCE_BYTES)
            .await?;
        let started: OperationAnswer = parse(path, status, &bytes).map_err(daemon_refusal)?;
        if started.id.is_empty()
            || !started
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(LifecycleError::Runtime {
                runtime: "Incus/LXD",
                message: "the daemon named no valid operation".into(),
            });
        }
        let wait = format!(
            "/1.0/operations/{}/wait?timeout={}",
            started.id,
            STEP_TIMEOUT_SECS - 5
        );
        let (status, bytes) = self
            .send(reqwest::Method::GET, &wait, None, MAX_INSTANCE_BYTES)
            .await?;
        let done: OperationAnswer = parse(&wait, status, &bytes).map_err(daemon_refusal)?;
        if done.status == "Success" {
            return Ok(());
        }
        Err(LifecycleError::Runtime {
            runtime: "Incus/LXD",
            message: runtime_message(&done.err, format!("operation {}", done.status)),
        })
    }

    async fn change_state(&self, name: &str, action: &str) -> Result<(), LifecycleError> {
        let body = json!({
            "action": action,
            "timeout": STOP_TIMEOUT_SECS,
            "force": false,
            "stateful": false,
        });
        self.operate(
            reqwest::Method::PUT,
            &format!("/1.0/instances/{name}/state"),
            body,
        )
        .await
    }
}

/// A daemon's error answer as the runtime's own message; anything else
/// stays a daemon error.
fn daemon_refusal(e: InventoryError) -> LifecycleError {
    match e {
        InventoryError::DaemonAnswer { answer, .. } => LifecycleError::Runtime {
            runtime: "Incus/LXD",
            message: answer,
        },
        other => LifecycleError::Daemon(other),
    }
}

impl Lifecycle for IncusInventory {
    async fn start(&self, c: &Container) -> Result<(), LifecycleError> {
        if matches!(c.state, ContainerState::Running { .. }) {
            return Err(LifecycleError::State(format!(
                "{} is already running",
                c.name
            )));
        }
        self.change_state(&c.name, "start").await
    }

    async fn stop(&self, c: &Container) -> Result<(), LifecycleError> {
        must_be(c, true, "stop")?;
        self.change_state(&c.name, "stop").await
    }

    async fn restart(&self, c: &Container) -> Result<(), LifecycleError> {
        must_be(c, true, "restart")?;
        self.change_state(&c.name, "restart").await
    }

    async fn snapshot(&self, c: &Container) -> Result<String, LifecycleError> {
        let taken = self.snapshots(c).await?;
        let next = (0..)
            .map(|n| format!("snap{n}"))
            .find(|n| !taken.iter().any(|s| &s.name == n))
            .unwrap_or_else(|| "snap".to_string());
        self.operate(
            reqwest::Method::POST,
            &format!("/1.0/instances/{}/snapshots", c.name),
            json!({ "name": next, "stateful": false }),
        )
        .await?;
        Ok(next)
    }

    async fn snapshots(&self, c: &Container) -> Result<Vec<Snapshot>, LifecycleError> {
        let path = format!("/1.0/instances/{}/snapshots?recursion=1", c.name);
        let (status, bytes) = self
            .send(reqwest::Method::GET, &path, None, MAX_LIST_BYTES)
            .await?;
        let list: Vec<SnapshotAnswer> = parse(&path, status, &bytes).map_err(daemon_refusal)?;
        let mut snapshots: Vec<Snapshot> = list
            .into_iter()
            .filter_map(|s| {
                // Some versions name a snapshot `INSTANCE/SNAP`.
                let name = s.name.rsplit('/').next().unwrap_or_default().to_string();
                crate::config::valid_name(&name).then(|| Snapshot {
                    name,
                    created: crate::audit::truncate(&s.created_at, 64),
                })
            })
            .collect();
        snapshots.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(snapshots)
    }

    async fn restore(&self, c: &Container, snapshot: &str) -> Result<(), LifecycleError> {
        if !self.snapshots(c).await?.iter().any(|s| s.name == snapshot) {
            return Err(LifecycleError::State(format!(
                "{} has no snapshot {snapshot}",
                c.name
            )));
        }
        self.operate(
            reqwest::Method::PUT,
            &format!("/1.0/instances/{}", c.name),
            json!({ "restore": snapshot }),
        )
        .await
    }
}
