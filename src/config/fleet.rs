//! `[fleet]` (edge and node roles, issue 16) and `[metrics]` (the
//! Prometheus endpoint): parsing and validation only. `docs/fleet.md` says
//! what each role does with them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Secret;

/// Longest lifetime of a relay user certificate the edge mints, and the
/// longest a node accepts (10 minutes).
pub const MAX_USER_CERTIFICATE_TTL: Duration = Duration::from_secs(600);

/// `[fleet]`: needed by `serve --role edge` and `--role node`; ignored by
/// the all-in-one gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Edge: where nodes' tunnels connect (separate from the user-facing
    /// `listen`; default `0.0.0.0:2223`).
    #[serde(default = "default_fleet_listen")]
    pub listen: SocketAddr,
    /// Edge: the CA private key file (default `{state_dir}/fleet/edge_ca`).
    /// Every edge needs the same file: the first edge creates it, the
    /// operator copies it to the others.
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    /// Edge: how long a relay user certificate is valid (default `2m`, at
    /// most `10m`).
    #[serde(default = "default_user_ttl", with = "humantime_serde")]
    pub user_certificate_ttl: Duration,
    /// Edge: how long a node host certificate is valid (default `24h`);
    /// nodes renew at half.
    #[serde(default = "default_node_ttl", with = "humantime_serde")]
    pub node_certificate_ttl: Duration,
    /// Node: its name in the fleet (`[A-Za-z0-9_.-]`, default: none; required
    /// for `--role node`).
    #[serde(default)]
    pub node_name: Option<String>,
    /// Node: every edge's fleet listener, `host:port` (at least one for
    /// `--role node`).
    #[serde(default)]
    pub edges: Vec<String>,
    /// Node: the one-time token of `portcullis nodes add` (only used while
    /// the node has no certificate yet).
    #[serde(default)]
    pub join_token: Option<Secret>,
    /// Node: the edge CA's `SHA256:...` fingerprint printed by `nodes add`;
    /// an edge whose host certificate another CA signed is refused.
    #[serde(default)]
    pub ca_pin: Option<String>,
    /// Both: SSH keepalive interval on tunnels (default `10s`; three missed
    /// end the tunnel).
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// Node: longest wait between reconnection attempts (default `10s`).
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Node: inventory push and heartbeat interval (default `5s`).
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            listen: default_fleet_listen(),
            ca_key: None,
            user_certificate_ttl: default_user_ttl(),
            node_certificate_ttl: default_node_ttl(),
            node_name: None,
            edges: Vec::new(),
            join_token: None,
            ca_pin: None,
            keepalive: default_keepalive(),
            reconnect_max: default_reconnect_max(),
            heartbeat: default_heartbeat(),
        }
    }
}

impl FleetConfig {
    /// Checks the values that parse but are not acceptable.
    ///
    /// # Errors
    /// `(dotted key, message)` of the first bad value.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((format!("fleet.{key}"), message.to_string()));
        if self.user_certificate_ttl < Duration::from_secs(30)
            || self.user_certificate_ttl > MAX_USER_CERTIFICATE_TTL
        {
            return bad("user_certificate_ttl", "must be between 30s and 10m");
        }
        if self.node_certificate_ttl < Duration::from_secs(600) {
            return bad("node_certificate_ttl", "must be at least 10m");
        }
        if let Some(name) = &self.node_name
            && !super::valid_name(name)
        {
            return bad(
                "node_name",
                "must be 1 to 64 bytes of [A-Za-z0-9_.-], not starting with '-' or '.'",
            );
        }
        if self.edges.iter().any(|e| e.trim().is_empty()) {
            return bad("edges", "an entry is empty");
        }
        if let Some(pin) = &self.ca_pin
            && !pin.starts_with("SHA256:")
        {
            return bad("ca_pin", "must be a SHA256:... fingerprint");
        }
        if self.keepalive < Duration::from_secs(1) {
            return bad("keepalive", "must be at least 1s");
        }
        if self.reconnect_max < Duration::from_millis(250) {
            return bad("reconnect_max", "must be at least 250ms");
        }
        if self.heartbeat < Duration::from_secs(1) {
            return bad("heartbeat", "must be at least 1s");
        }
        Ok(())
    }
}

/// `[metrics]`: the Prometheus text endpoint, on every role.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `GET /metrics` (default: none, no endpoint).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

fn default_fleet_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 2223))
}
fn default_user_ttl() -> Duration {
    Duration::from_secs(120)
}
fn default_node_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(10)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::path::Path;

    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let text =
            format!("[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"p\"\n{extra}");
        Config::parse(&text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn fleet_and_metrics_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.fleet.listen, "0.0.0.0:2223".parse().unwrap());
        assert_eq!(c.fleet.user_certificate_ttl.as_secs(), 120);
        assert_eq!(c.fleet.node_certificate_ttl.as_secs(), 86400);
        assert_eq!(c.fleet.keepalive.as_secs(), 10);
        assert_eq!(c.fleet.reconnect_max.as_secs(), 10);
        assert_eq!(c.fleet.heartbeat.as_secs(), 5);
        assert!(c.fleet.edges.is_empty() && c.fleet.node_name.is_none());
        assert_eq!(c.metrics.listen, None);
        let c = parse(
            "[fleet]\nnode_name = \"n1\"\nedges = [\"e1:2223\"]\njoin_token = \"pcj_x\"\n\
             ca_pin = \"SHA256:abc\"\n[metrics]\nlisten = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        assert_eq!(c.fleet.join_token.unwrap().expose(), "pcj_x");
        assert_eq!(format!("{:?}", c.fleet.ca_pin), "Some(\"SHA256:abc\")");
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn bad_fleet_values_name_their_key() {
        for (extra, key) in [
            (
                "[fleet]\nuser_certificate_ttl = \"1h\"",
                "fleet.user_certificate_ttl",
            ),
            (
                "[fleet]\nnode_certificate_ttl = \"1m\"",
                "fleet.node_certificate_ttl",
            ),
            ("[fleet]\nnode_name = \"-n\"", "fleet.node_name"),
            ("[fleet]\nedges = [\" \"]", "fleet.edges"),
            ("[fleet]\nca_pin = \"abc\"", "fleet.ca_pin"),
            ("[fleet]\nkeepalive = \"0s\"", "fleet.keepalive"),
            ("[fleet]\nheartbeat = \"10ms\"", "fleet.heartbeat"),
        ] {
            let err = parse(extra).unwrap_err();
            assert!(err.contains(&format!("key `{key}`")), "{extra}: {err}");
        }
        let err = parse("[fleet]\nnodes = []").unwrap_err();
        assert!(err.contains("unknown field `nodes`"), "{err}");
        assert!(
            format!(
                "{:?}",
                parse("[fleet]\njoin_token = \"pcj_secret\"").unwrap().fleet
            )
            .contains("<redacted>")
        );
    }
}
