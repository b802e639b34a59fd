//! Portcullis: an SSH gateway and privileged-access broker for OS containers.
//!
//! A stock OpenSSH client connects to the gateway; the gateway authenticates
//! the user against an OpenID Connect issuer, checks per-container Cedar
//! policy, enters the target container's namespaces through a single-threaded
//! helper process and records the session as an asciicast v2 transcript.
//!
//! # Layout
//!
//! Each module owns one concern; imports only go downwards (the rule, the
//! module table and the path of one session through these modules are in
//! `ARCHITECTURE.md`; `tests/architecture.rs` checks the imports).
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | the TOML config, defaults, validation |
//! | [`store`] | the sqlx pools (SQLite, PostgreSQL), migrations, queries |
//! | [`audit`] | typed audit events, one `record()` path, the signed chain |
//! | [`identity`] | OIDC, JWKS, ID tokens, device flow, key bindings, certificates, login throttling |
//! | [`inventory`] | finding containers and their init process |
//! | [`policy`] | Cedar schema, entities, decisions with reasons (pure) |
//! | [`recording`] | the asciicast v2 writer, reader and follower |
//! | [`grants`] | access requests, approvals, time-boxed grants, expiry |
//! | [`attach`] | entering a container: helper, session process, PTY, exit status |
//! | [`sftp`], [`scp`] | file transfers served inside a container, as the login |
//! | [`fleet`] | edge and node roles: CA, join, tunnel, relay, fan-out |
//! | [`metrics`] | the Prometheus registry and endpoint |
//! | [`web`] | the console for reviewers and approvers (axum, askama) |
//! | [`text`] | display-safe text: hidden characters, Slack escaping, terminal output |
//! | [`throttle`] | per-source limits before authentication |
//! | [`gateway`] | the services bag every front end and session shares |
//! | [`session`] | the life of one session, for every front end |
//! | [`commands`] | the broker's commands: parse, act, reply (no SSH) |
//! | [`ssh`] | the SSH front door: auth, channels, relaying to `session`/`commands` |
//! | [`node`] | a fleet node's front door for sessions an edge relays |
//! | [`app`] | the composition root: building, running and stopping the gateway |
//! | [`wire`] | SSH channel forms shared by `ssh` and `node`: PTY values, signals, a channel's end |
//! | [`cli`] | the `portcullis` command |

pub mod app;
pub mod attach;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod fleet;
pub mod gateway;
pub mod grants;
pub mod identity;
pub mod inventory;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod recording;
pub mod scp;
pub mod session;
pub mod sftp;
pub mod ssh;
pub mod store;
pub mod text;
pub mod throttle;
pub mod web;
pub mod wire;
