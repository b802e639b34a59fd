//! The LXC backend's lifecycle: `lxc-start`, `lxc-stop`, `lxc-wait` and
//! `lxc-snapshot`, each with `-P LXCPATH -n NAME`, a clean environment and
//! a time limit ([`STEP_TIMEOUT_SECS`]). The tools' own stderr is the
//! error the user sees.
//!
//! LXC snapshots a directory-backed container only while it is stopped
//! (`lxc-snapshot` exits 1 and prints nothing otherwise), and restores
//! only a stopped one: both are refused up front on a running container,
//! with that reason.

use std::process::Output;
use std::time::Duration;

use super::super::lifecycle::{
    Lifecycle, LifecycleError, STEP_TIMEOUT_SECS, STOP_TIMEOUT_SECS, Snapshot, must_be,
    runtime_message,
};
use super::super::{Container, ContainerState};
use super::LxcInventory;

/// How long `lxc-start` waits for the container to run, seconds.
const START_WAIT_SECS: u64 = 20;

impl LxcInventory {
    /// Runs `tool -P LXCPATH -n NAME ARGS...`; its output, whatever its
    /// exit status.
    async fn tool(
        &self,
        tool: &'static str,
        name: &str,
        args: &[&str],
    ) -> Result<Output, LifecycleError> {
        let run = tokio::process::Command::new(tool)
            .arg("-P")
            .arg(&self.lxcpath)
            .args(["-n", name])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(STEP_TIMEOUT_SECS), run).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(LifecycleError::Tool { tool, source }),
            Err(_) => Err(LifecycleError::Runtime {
                runtime: tool,
                message: format!("no answer within {STEP_TIMEOUT_SECS} s"),
            }),
        }
    }

    /// [`LxcInventory::tool`], failing with its stderr unless it exits 0.
    async fn tool_ok(
        &self,
        tool: &'static str,
        name: &str,
        args: &[&str],
    ) -> Result<Output, LifecycleError> {
        let output = self.tool(tool, name, args).await?;
        if output.status.success() {
            return Ok(output);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(LifecycleError::Runtime {
            runtime: tool,
            message: runtime_message(
                &stderr,
                format!("exited with {} and said nothing", output.status),
            ),
        })
    }

    async fn start_now(&self, name: &str) -> Result<(), LifecycleError> {
        let output = self.tool_ok("lxc-start", name, &[]).await?;
        // lxc-start exits 0 when the container is already running, but says
        // so on stderr.
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("already running") {
            return Err(LifecycleError::State(format!("{name} is already running")));
        }
        self.tool_ok(
            "lxc-wait",
            name,
            &["-s", "RUNNING", "-t", &START_WAIT_SECS.to_string()],
        )
        .await
        .map(|_| ())
    }

    async fn stop_now(&self, name: &str) -> Result<(), LifecycleError> {
        self.tool_ok("lxc-stop", name, &["-t", &STOP_TIMEOUT_SECS.to_string()])
            .await
            .map(|_| ())
    }
}

impl Lifecycle for LxcInventory {
    async fn start(&self, c: &Container) -> Result<(), LifecycleError> {
        if matches!(c.state, ContainerState::Running { .. }) {
            return Err(LifecycleError::State(format!(
                "{} is already running",
                c.name
            )));
        }
        self.start_now(&c.name).await
    }

    async fn stop(&self, c: &Container) -> Result<(), LifecycleError> {
        must_be(c, true, "stop")?;
        self.stop_now(&c.name).await
    }

    async fn restart(&self, c: &Container) -> Result<(), LifecycleError> {
        must_be(c, true, "restart")?;
        self.stop_now(&c.name).await?;
        self.start_now(&c.name).await
    }

    async fn snapshot(&self, c: &Container) -> Result<String, LifecycleError> {
        must_be(
            c,
            false,
            "an LXC snapshot (of a directory-backed container)",
        )?;
        let before = self.snapshots(c).await?;
        self.tool_ok("lxc-snapshot", &c.name, &[]).await?;
        let after = self.snapshots(c).await?;
        after
            .into_iter()
            .map(|s| s.name)
            .find(|n| !before.iter().any(|b| &b.name == n))
            .ok_or_else(|| LifecycleError::Runtime {
                runtime: "lxc-snapshot",
                message: "exited 0 but no new snapshot is listed".into(),
            })
    }

    async fn snapshots(&self, c: &Container) -> Result<Vec<Snapshot>, LifecycleError> {
        let output = self.tool_ok("lxc-snapshot", &c.name, &["-L"]).await?;
        Ok(parse_snapshots(&String::from_utf8_lossy(&output.stdout)))
    }

    async fn restore(&self, c: &Container, snapshot: &str) -> Result<(), LifecycleError> {
        must_be(c, false, "an LXC restore")?;
        if !self.snapshots(c).await?.iter().any(|s| s.name == snapshot) {
            return Err(LifecycleError::State(format!(
                "{} has no snapshot {snapshot}",
                c.name
            )));
        }
        self.tool_ok("lxc-snapshot", &c.name, &["-r", snapshot])
            .await
            .map(|_| ())
    }
}

/// Parses `lxc-snapshot -L`: `snap0 (/var/lib/lxc/web1/snaps) 2026:12:07
/// 18:45:13` per snapshot, or `No snapshots`.
fn parse_snapshots(text: &str) -> Vec<Snapshot> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(' ')?;
            let created = rest.rsplit_once(") ").map(|(_, t)| t.trim())?;
            crate::config::valid_name(name).then(|| Snapshot {
                name: name.to_string(),
                created: created.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_snapshot_list() {
        let text = "snap0 (/var/lib/lxc/web1/snaps) 2026:12:07 18:45:13\n\
                    snap1 (/var/lib/lxc/web1/snaps) 2026:12:07 18:46:01\n";
        assert_eq!(
            parse_snapshots(text),
            vec![
                Snapshot {
                    name: "snap0".into(),
                    created: "2026:12:07 18:45:13".into()
                },
                Snapshot {
                    name: "snap1".into(),
                    created: "2026:12:07 18:46:01".into()
                },
            ]
        );
        assert_eq!(parse_snapshots("No snapshots\n"), vec![]);
        assert_eq!(parse_snapshots(""), vec![]);
    }
}
