//! Portcullis: an SSH gateway and privileged-access broker for OS containers.
//!
//! A stock OpenSSH client connects to the gateway; the gateway authenticates
//! the user against an OpenID Connect issuer, checks per-container Cedar
//! policy, enters the target container's namespaces through a single-threaded
//! helper process and records the session as an asciicast v2 transcript.
//!
//! # Layout
//!
//! Each module owns one concern (see `DESIGN.md`); imports only go downwards.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the TOML config, defaults, validation |
//! | [`store`] | the sqlx pool (SQLite), migrations, queries |
//! | [`audit`] | typed audit events, one `record()` path |
//! | [`identity`] | OIDC discovery, JWKS, ID-token validation, device flow |
//! | [`inventory`] | finding containers and their init process |
//! | [`policy`] | Cedar schema, entities, decisions with reasons |
//! | [`recording`] | the asciicast v2 writer and player |
//! | [`grants`] | access requests, approvals, time-boxed grants, expiry |
//! | [`attach`] | the helper that enters a container; PTY; exit status |
//! | [`sftp`], [`scp`] | file transfers served inside a container, as the login |
//! | [`ssh`] | the russh server: auth, channels, wiring the above |
//! | [`fleet`] | edge and node roles: CA, join, tunnel, relay, fan-out |
//! | [`metrics`] | the Prometheus registry and endpoint |
//! | [`web`] | the console for reviewers and approvers (axum, askama) |
//! | [`text`] | display-safe text: hidden characters, Slack escaping, terminal output |
//! | [`throttle`] | per-source limits before authentication |
//! | [`cli`] | the `portcullis` command |

pub mod attach;
pub mod audit;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod grants;
pub mod identity;
pub mod inventory;
pub mod metrics;
pub mod policy;
pub mod recording;
pub mod scp;
pub mod sftp;
pub mod ssh;
pub mod store;
pub mod text;
pub mod throttle;
pub mod web;
