//! `[attach]`: how sessions are confined inside containers where the
//! gateway cannot give them exactly what the container's init has. Parsing
//! only; the session core passes the choice to the attach
//! (`crate::attach::AttachOptions::unreproducible_seccomp`).

use serde::Deserialize;

/// What to do when a container's init runs under a seccomp filter that
/// cannot be copied to the session (the gateway itself runs under a
/// seccomp filter, e.g. systemd's `SystemCallFilter=`; ptrace of the init
/// is refused; the kernel lacks `PTRACE_SECCOMP_GET_FILTER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompFallback {
    /// Refuse the session with a clear message (default): it could make
    /// system calls the init cannot.
    #[default]
    Refuse,
    /// Run the session under the gateway's deny-list only.
    DenyListOnly,
}

/// `[attach]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachConfig {
    /// `unreproducible_seccomp = "refuse"` (default) or `"deny_list_only"`:
    /// see [`SeccompFallback`].
    #[serde(default)]
    pub unreproducible_seccomp: SeccompFallback,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c: AttachConfig = toml::from_str("").unwrap();
        assert_eq!(c.unreproducible_seccomp, SeccompFallback::Refuse);
        let c: AttachConfig =
            toml::from_str("unreproducible_seccomp = \"deny_list_only\"").unwrap();
        assert_eq!(c.unreproducible_seccomp, SeccompFallback::DenyListOnly);
        assert!(toml::from_str::<AttachConfig>("unreproducible_seccomp = \"allow\"").is_err());
        assert!(toml::from_str::<AttachConfig>("other = 1").is_err());
    }
}
