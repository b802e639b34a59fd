//! `[grants]`: just-in-time access (issue 7): the broker's SSH user name,
//! duration caps, the ticket pattern for reasons and the warnings before a
//! grant ends.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// `[grants]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// The SSH user name that reaches the broker's own commands instead of
    /// a container (default `portcullis`); no container can be reached by
    /// this name.
    #[serde(default = "default_broker_user")]
    pub broker_user: String,
    /// Longest grant anyone may ask for (default 8 h).
    #[serde(default = "default_max_duration", with = "humantime_serde")]
    pub max_duration: Duration,
    /// Tighter caps by container label, keyed `"NAME=VALUE"`, e.g.
    /// `{ "env=prod" = "1h" }`; the smallest matching cap applies.
    #[serde(default)]
    pub max_duration_per_label: BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// A regular expression (Rust `regex` syntax) the reason must contain
    /// a match of, e.g. `"[A-Z]+-[0-9]+"` for a ticket id (default: any
    /// non-empty reason).
    #[serde(default)]
    pub reason_pattern: Option<String>,
    /// When live sessions are warned before their grant ends (default
    /// `["5m", "1m"]`).
    #[serde(default = "default_warn_before")]
    pub warn_before: Vec<humantime_serde::Serde<Duration>>,
    /// How users reach the gateway, for the `ssh` lines the gateway prints
    /// (e.g. `gw.example.com` or `-p 2222 gw.example.com`); default
    /// `-p PORT HOSTNAME`, the port left out when it is 22.
    #[serde(default)]
    pub gateway_address: Option<String>,
    /// Members of this group may grant themselves short access with
    /// `request ... --break-glass` (default: none may). Such grants are
    /// flagged, audited and listed for review (`requests --unreviewed`)
    /// until a reviewer runs `review ID`.
    #[serde(default)]
    pub break_glass_group: Option<String>,
    /// Webhook URLs that receive a JSON body (with a Slack-compatible
    /// `text`) on request created, approved, denied, revoked, expired and
    /// break-glass (default none). Delivered from an outbox with retries.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Secret for the `X-Portcullis-Signature: sha256=HEX` header, the
    /// HMAC-SHA256 (RFC 2104) of the body (default: unsigned).
    #[serde(default)]
    pub webhook_secret: Option<super::Secret>,
    /// Longest wait between two delivery attempts (default 5 min); waits
    /// double from 1 s.
    #[serde(default = "default_webhook_backoff_max", with = "humantime_serde")]
    pub webhook_backoff_max: Duration,
    /// Longest break-glass grant (default 1 h).
    #[serde(default = "default_break_glass_max", with = "humantime_serde")]
    pub break_glass_max_duration: Duration,
    /// A request not approved or denied this long after it was made
    /// expires (issue 12; default 24 h): it can no longer be approved,
    /// and its expiry is audited.
    #[serde(default = "default_request_ttl", with = "humantime_serde")]
    pub request_ttl: Duration,
}

impl Default for GrantsConfig {
    fn default() -> Self {
        GrantsConfig {
            broker_user: default_broker_user(),
            max_duration: default_max_duration(),
            max_duration_per_label: BTreeMap::new(),
            reason_pattern: None,
            warn_before: default_warn_before(),
            gateway_address: None,
            break_glass_group: None,
            webhooks: Vec::new(),
            webhook_secret: None,
            webhook_backoff_max: default_webhook_backoff_max(),
            break_glass_max_duration: default_break_glass_max(),
            request_ttl: default_request_ttl(),
        }
    }
}

impl GrantsConfig {
    /// The longest grant allowed on a container with `labels`.
    pub fn max_duration_for(&self, labels: &BTreeMap<String, String>) -> Duration {
        self.max_duration_per_label
            .iter()
            .filter(|(key, _)| {
                key.split_once('=')
                    .is_some_and(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            })
            .map(|(_, d)| **d)
            .fold(self.max_duration, Duration::min)
    }

    /// Checks the section; `Err((key, message))` names what is wrong.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if !super::valid_name(&self.broker_user) {
            return Err((
                "grants.broker_user".into(),
                "must be [A-Za-z0-9_.-], at most 64 bytes".into(),
            ));
        }
        if self.break_glass_max_duration.is_zero() {
            return Err((
                "grants.break_glass_max_duration".into(),
                "must be above zero".into(),
            ));
        }
        for (i, url) in self.webhooks.iter().enumerate() {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err((
                    format!("grants.webhooks[{i}]"),
                    "must be an http:// or https:// URL".into(),
                ));
            }
        }
        if self.webhook_backoff_max < Duration::from_secs(1) {
            return Err((
                "grants.webhook_backoff_max".into(),
                "must be at least 1s".into(),
            ));
        }
        if self.request_ttl < Duration::from_secs(1) {
            return Err(("grants.request_ttl".into(), "must be at least 1s".into()));
        }
        if self.max_duration.is_zero() {
            return Err(("grants.max_duration".into(), "must be above zero".into()));
        }
        for key in self.max_duration_per_label.keys() {
            if !key.contains('=') {
                return Err((
                    format!("grants.max_duration_per_label.{key}"),
                    "keys are NAME=VALUE labels".into(),
                ));
            }
        }
        if let Some(p) = &self.reason_pattern
            && let Err(e) = regex::Regex::new(p)
        {
            return Err((
                "grants.reason_pattern".into(),
                format!(
                    "not a regular expression: {}",
                    super::one_line(&e.to_string())
                ),
            ));
        }
        Ok(())
    }
}

fn default_broker_user() -> String {
    "portcullis".to_string()
}
fn default_max_duration() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_webhook_backoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_break_glass_max() -> Duration {
    Duration::from_secs(3600)
}
fn default_request_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_warn_before() -> Vec<humantime_serde::Serde<Duration>> {
    vec![
        Duration::from_secs(300).into(),
        Duration::from_secs(60).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_label_caps_take_the_smallest() {
        let c: GrantsConfig = toml::from_str(
            "max_duration = \"8h\"\nmax_duration_per_label = { \"env=prod\" = \"1h\", \"tier=db\" = \"30m\" }\n",
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            c.max_duration_for(&labels(&[])),
            Duration::from_secs(8 * 3600)
        );
        assert_eq!(
            c.max_duration_for(&labels(&[("env", "prod")])),
            Duration::from_secs(3600)
        );
        assert_eq!(
            c.max_duration_for(&labels(&[("env", "prod"), ("tier", "db")])),
            Duration::from_secs(1800)
        );
        assert!(c.validate().is_ok());
        let bad: GrantsConfig = toml::from_str("reason_pattern = \"[A-Z\"\n").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "grants.reason_pattern");
    }
}
