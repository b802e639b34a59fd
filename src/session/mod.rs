//! The life of one session, for every front end (ssh, `portcullis
//! attach`, later the web console and the fleet relay).
//!
//! - [`caller`]: who asks and where to ([`Caller`], [`Destination`]);
//! - [`access`]: target → container → audited decision → pinned init;
//! - [`refusal`]: the one [`Refusal`] every front end shows;
//! - [`record`]: row, audit events and recording, each end one transaction;
//! - [`signal`]: the one table of signal names;
//! - [`live`]: the sessions this gateway serves now, and ending them;
//! - [`end`]: why a session ends ([`EndReason`]).

pub mod access;
pub mod caller;
pub mod end;
pub mod forward;
pub mod io;
pub mod live;
mod pump;
pub mod record;
pub mod refusal;
pub mod shell;
pub mod signal;
pub mod target;
pub mod transfer;

pub use access::{Access, Ask};
pub use caller::{Caller, Destination};
pub use end::EndReason;
pub use live::{Ending, LiveSession, LiveSessions};
pub use refusal::Refusal;
pub use target::{Target, TargetError};
