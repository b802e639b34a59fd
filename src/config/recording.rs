//! `[recording]`: how sessions are recorded (`[audit]` is in
//! `config/audit.rs`).

use std::time::Duration;

use serde::Deserialize;

/// What to do when a recording cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingFailure {
    /// End the session with a clear message (default).
    Terminate,
    /// Go on unrecorded; the failure is audited.
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

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_on_failure() -> RecordingFailure {
    RecordingFailure::Terminate
}
