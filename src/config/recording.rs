//! `[recording]`: how sessions are recorded (where, how large, how much
//! disk they may take, whether they go to object storage). `[audit]` is in
//! `config/audit.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Secret;

/// Smallest multipart part S3 accepts (all parts but the last), in bytes.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// What to do when a recording cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingFailure {
    /// End the session with a clear message (default).
    Terminate,
    /// Go on unrecorded; the failure is audited.
    Continue,
}

/// What to do with a new session while the local spool of recordings not
/// yet uploaded is over `recording.spool_max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolFull {
    /// Refuse it with a clear message (default).
    Refuse,
    /// Accept it: the spool grows past its bound (audited).
    Continue,
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
    /// When writing fails (disk full, permissions, `max_bytes` reached):
    /// `terminate` (default) or `continue`.
    #[serde(default = "default_on_failure")]
    pub on_failure: RecordingFailure,
    /// Directory of recordings (default `{state_dir}/recordings`). Put it
    /// on another filesystem than the database so recordings can never
    /// fill the disk the audit log needs.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Largest recording of one session, in bytes (default 1 GiB); past it
    /// the session ends (or goes on unrecorded with `on_failure =
    /// "continue"`).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Free bytes kept on the filesystems of the recordings and of the
    /// SQLite database (default 256 MiB): below it new sessions are
    /// refused; below half of it live recordings stop.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Object storage for recordings: `s3://BUCKET` or
    /// `s3://BUCKET/PREFIX` (default none: recordings stay in `dir`).
    #[serde(default)]
    pub store: Option<String>,
    /// The S3 endpoint, e.g. `http://127.0.0.1:8333` for SeaweedFS or
    /// MinIO (default: AWS, or `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub store_endpoint: Option<String>,
    /// The S3 region (default `us-east-1`, or `AWS_REGION`).
    #[serde(default)]
    pub store_region: Option<String>,
    /// Access key id (default: `AWS_ACCESS_KEY_ID` from the environment).
    #[serde(default)]
    pub store_access_key_id: Option<Secret>,
    /// Secret access key (default: `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub store_secret_access_key: Option<Secret>,
    /// Size of each multipart part, in bytes (default 8 MiB, at least
    /// 5 MiB).
    #[serde(default = "default_part_bytes")]
    pub part_bytes: u64,
    /// Bytes of local recordings not yet uploaded before `on_spool_full`
    /// applies (default 10 GiB; only with `store`).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// New sessions while the spool is full: `refuse` (default) or
    /// `continue`.
    #[serde(default = "default_on_spool_full")]
    pub on_spool_full: SpoolFull,
    /// Longest wait between two upload attempts (default 5 min; the first
    /// retry waits 1 s, each next one twice as long).
    #[serde(default = "default_upload_backoff_max", with = "humantime_serde")]
    pub upload_backoff_max: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            record_input: false,
            flush_interval: default_flush_interval(),
            on_failure: default_on_failure(),
            dir: None,
            max_bytes: default_max_bytes(),
            min_free_bytes: default_min_free_bytes(),
            store: None,
            store_endpoint: None,
            store_region: None,
            store_access_key_id: None,
            store_secret_access_key: None,
            part_bytes: default_part_bytes(),
            spool_max_bytes: default_spool_max_bytes(),
            on_spool_full: default_on_spool_full(),
            upload_backoff_max: default_upload_backoff_max(),
        }
    }
}

impl RecordingConfig {
    /// The recordings directory: `dir`, else `{state_dir}/recordings`.
    pub fn dir_in(&self, state_dir: &std::path::Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state_dir.join("recordings"))
    }

    /// Checks the values; the error names the key.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: &str| Err((format!("recording.{key}"), message.into()));
        if self.flush_interval.is_zero() {
            return invalid("flush_interval", "must be above zero");
        }
        if self.max_bytes < 4096 {
            return invalid("max_bytes", "must be at least 4096");
        }
        if self.part_bytes < MIN_PART_BYTES {
            return invalid(
                "part_bytes",
                "must be at least 5242880 (5 MiB, S3's minimum)",
            );
        }
        if self.upload_backoff_max < Duration::from_secs(1) {
            return invalid("upload_backoff_max", "must be at least 1s");
        }
        if let Some(dir) = &self.dir
            && dir.as_os_str().is_empty()
        {
            return invalid("dir", "must not be empty");
        }
        if let Some(store) = &self.store {
            let Some(rest) = store.strip_prefix("s3://") else {
                return invalid("store", "must be an s3://BUCKET[/PREFIX] URL");
            };
            let bucket = rest.split('/').next().unwrap_or_default();
            if bucket.is_empty() {
                return invalid("store", "names no bucket (s3://BUCKET[/PREFIX])");
            }
        } else if self.store_endpoint.is_some()
            || self.store_access_key_id.is_some()
            || self.store_secret_access_key.is_some()
        {
            return invalid("store", "is needed by the store_* keys that are set");
        }
        if self.store_access_key_id.is_some() != self.store_secret_access_key.is_some() {
            return invalid(
                "store_secret_access_key",
                "and store_access_key_id go together",
            );
        }
        if let Some(endpoint) = &self.store_endpoint
            && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
        {
            return invalid("store_endpoint", "must be an http:// or https:// URL");
        }
        Ok(())
    }
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_on_failure() -> RecordingFailure {
    RecordingFailure::Terminate
}

fn default_max_bytes() -> u64 {
    1 << 30
}

fn default_min_free_bytes() -> u64 {
    256 << 20
}

fn default_part_bytes() -> u64 {
    8 << 20
}

fn default_spool_max_bytes() -> u64 {
    10 << 30
}

fn default_on_spool_full() -> SpoolFull {
    SpoolFull::Refuse
}

fn default_upload_backoff_max() -> Duration {
    Duration::from_secs(300)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn parse(text: &str) -> Result<RecordingConfig, (String, String)> {
        let config: RecordingConfig =
            toml::from_str(text).map_err(|e| ("toml".into(), e.to_string()))?;
        config.validate().map(|()| config)
    }

    #[test]
    fn defaults_bound_recordings_and_keep_them_local() {
        let c = parse("").unwrap();
        assert_eq!(c.max_bytes, 1 << 30);
        assert_eq!(c.min_free_bytes, 256 << 20);
        assert_eq!(c.store, None);
        assert_eq!(c.on_spool_full, SpoolFull::Refuse);
        assert_eq!(
            c.dir_in(std::path::Path::new("/s")),
            PathBuf::from("/s/recordings")
        );
        let c = parse("dir = \"/rec\"").unwrap();
        assert_eq!(c.dir_in(std::path::Path::new("/s")), PathBuf::from("/rec"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("store = \"http://b\"", "recording.store"),
            ("store = \"s3://\"", "recording.store"),
            ("part_bytes = 1024", "recording.part_bytes"),
            ("max_bytes = 10", "recording.max_bytes"),
            ("store_endpoint = \"http://x\"", "recording.store"),
            (
                "store = \"s3://b\"\nstore_access_key_id = \"k\"",
                "recording.store_secret_access_key",
            ),
            (
                "store = \"s3://b\"\nstore_endpoint = \"ftp://x\"",
                "recording.store_endpoint",
            ),
            (
                "upload_backoff_max = \"10ms\"",
                "recording.upload_backoff_max",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().0, key, "{text}");
        }
        let c = parse(
            "store = \"s3://recordings/node1\"\nstore_endpoint = \"http://127.0.0.1:8333\"\n\
             store_access_key_id = \"k\"\nstore_secret_access_key = \"s\"\n",
        )
        .unwrap();
        assert_eq!(
            format!("{:?}", c.store_secret_access_key),
            "Some(<redacted>)"
        );
    }
}
