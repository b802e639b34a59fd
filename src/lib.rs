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
//! | [`cli`] | the `portcullis` command |

pub mod app;
pub mod attach;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod grants;
pub mod identity;
pub mod inventory;
pub mod policy;
pub mod recording;
pub mod scp;
pub mod session;
pub mod sftp;
pub mod ssh;
pub mod store;
